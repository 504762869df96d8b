"""The KFP layer: pipelines, launchers and their entry points.

``trial`` (one trial's stages) and ``sweep`` (plan -> launch -> report on a cluster) build the
pipelines; ``compile`` compiles them (``trial_pipeline.yaml``, ``sweep_pipeline.yaml``) and submits
sweeps; ``launchers`` runs trials locally through ``kfp.local`` or as KFP runs; ``local_trial`` and
``kfp_launch`` are the child processes those launchers need.
"""
