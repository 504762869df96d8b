"""Training a trial: TRL SFT in one process, resumable checkpoints, in-pod multi-GPU configs and multi-node jobs."""
