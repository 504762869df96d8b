"""Kubernetes objects sftlab creates and watches: shared object lifecycles (``objects``), trial pods
(``pods``) and the multi-node engines (``engines``: TrainJob, PyTorchJob)."""
