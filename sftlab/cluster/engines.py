"""The multi-node training engines, by the name ``training.distributed.launcher`` gives.

A Kubeflow Trainer TrainJob (``sftlab.cluster.trainjob``) or a training-operator v1 PyTorchJob
(``sftlab.cluster.pytorchjob``); a third engine is one more module and one more entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

from sftlab.cluster import pytorchjob
from sftlab.cluster.objects import JobRunner
from sftlab.cluster.trainjob import TrainJobRunner, trainjob_manifest
from sftlab.spec.schema import DistributedConfig


class TrainingEngine(NamedTuple):
    """A multi-node engine: its manifest builder (bound to the node count) and its runner class.

    ``manifest(job, resources, *, image, namespace, secrets=(), cache_pvc=None)`` builds the job;
    ``runner(api_client, namespace, timeout_s=...)`` runs it.
    """

    kind: str
    manifest: Callable[..., dict[str, Any]]
    runner: type[JobRunner]


def engine_for(distributed: DistributedConfig) -> TrainingEngine:
    """The engine ``distributed.launcher`` names: a Kubeflow Trainer TrainJob or a training-operator PyTorchJob."""
    if distributed.launcher == "pytorchjob":
        return TrainingEngine(
            "pytorchjob", partial(pytorchjob.pytorchjob_manifest, nodes=distributed.nodes), pytorchjob.PyTorchJobRunner
        )
    return TrainingEngine(
        "trainjob", partial(trainjob_manifest, nodes=distributed.nodes, runtime=distributed.runtime), TrainJobRunner
    )
