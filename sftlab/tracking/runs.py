"""MLflow plumbing shared by every stage: experiments, sweep/trial/cache runs, batched logging.

Run layout: one experiment per spec; the sweep is a parent run (``sftlab.stage=sweep``); each
trial a nested child (``stage=trial``, tagged with its ``sftlab.trial_key``); data profiles and
base-model evaluations are runs of their own (``stage=profile`` / ``baseline``) found again by
``sftlab.cache_key`` and linked from trials by tags; parallel trials compute each of those once
through the lease protocol in ``sftlab.tracking.claims``. Any tracking URI works unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftlab.errors import SftlabError
from sftlab.tracking.claims import Claims
from sftlab.tracking.tags import TAG_CACHE_KEY, TAG_ERROR, TAG_PARENT, TAG_STAGE, TAG_SWEEP_KEY, TAG_TRIAL_KEY

if TYPE_CHECKING:
    from mlflow.entities import Run

    from sftlab.spec.grid import Trial
    from sftlab.spec.job import RunContext

# MLflow's log_batch limits (per call).
_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS, _MAX_PARAM_LEN = 1000, 100, 100, 6000


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def trial_params(trial: Trial) -> dict[str, Any]:
    """The trial's flattened configuration, as MLflow params."""
    return flatten(
        {
            "base_model": trial.base_model.model_dump(),
            "dataset": trial.dataset.model_dump(),
            "training": trial.training.model_dump(),
            "benchmarks": ",".join(b.name for b in trial.benchmarks),
            "prompt_template": trial.dataset_template,
        }
    )


def trial_tags(trial: Trial) -> dict[str, str]:
    return {
        TAG_STAGE: "trial",
        TAG_TRIAL_KEY: trial.key,
        "sftlab.base_model": trial.base_model.name,
        "sftlab.dataset": trial.dataset.name,
        "sftlab.method": trial.training.method,
        "sftlab.label": trial.label,
        # the task family of each benchmark, so the report can compare methods per family
        **{f"sftlab.benchmark_kind.{b.name}": b.kind for b in trial.benchmarks},
    }


class Tracker:
    """A thin, typed layer over ``MlflowClient`` for one experiment."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: str | Path | None = None):
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.claims = Claims(self)  # the cache runs this tracker claims: see sftlab.tracking.claims
        self.experiment_id = self._experiment_id(experiment, artifact_root)

    @classmethod
    def for_context(cls, ctx: RunContext) -> Tracker:
        return cls(ctx.tracking_uri, ctx.experiment, Path(ctx.root) / "artifacts")

    def _experiment_id(self, name: str, artifact_root: str | Path | None) -> str:
        try:
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            # Only the embedded sqlite store needs an explicit artifact folder; servers have their own.
            location = None
            if artifact_root and self.tracking_uri.startswith("sqlite:"):
                location = Path(artifact_root).resolve().as_uri()
            return self.client.create_experiment(name, artifact_location=location)
        except Exception as exc:  # noqa: BLE001 - any client error becomes one readable line
            raise SftlabError(f"MLflow at {self.tracking_uri}: cannot open experiment {name!r}: {exc}") from exc

    # -- runs -------------------------------------------------------------------------------

    def create_run(
        self,
        stage: str,
        name: str,
        tags: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
    ) -> str:
        all_tags = {TAG_STAGE: stage, **(tags or {})}
        if parent_run_id:
            all_tags[TAG_PARENT] = parent_run_id
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def create_trial_run(self, trial: Trial, sweep_run_id: str | None) -> str:
        return self.create_run("trial", trial.label, trial_tags(trial), trial_params(trial), sweep_run_id)

    def get_or_create_sweep_run(self, name: str, sweep_key: str, params: Mapping[str, Any]) -> str:
        """The sweep's parent run: re-running the same spec continues the same parent."""
        existing = self.latest(f"tags.`{TAG_STAGE}` = 'sweep' AND tags.`{TAG_SWEEP_KEY}` = '{sweep_key}'")
        if existing is not None:
            self.client.update_run(existing.info.run_id, status="RUNNING")
            return existing.info.run_id
        return self.create_run("sweep", name, {TAG_SWEEP_KEY: sweep_key}, params)

    def finish(self, run_id: str, ok: bool = True, error: str | None = None) -> None:
        self.claims.stop_heartbeat(run_id)
        if error:
            self.set_tags(run_id, {TAG_ERROR: error[:5000]})
        self.client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")

    # -- logging ----------------------------------------------------------------------------

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        self.log_metric_steps(run_id, [(step, {k: v for k, v in metrics.items() if v is not None})])

    def log_metric_steps(self, run_id: str, steps: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        """Many steps of metrics in as few requests as MLflow allows."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for step, metrics in steps for k, v in metrics.items()]
        for i in range(0, len(items), _MAX_METRICS):
            self.client.log_batch(run_id, metrics=items[i : i + _MAX_METRICS], synchronous=True)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_MAX_PARAM_LEN]) for k, v in params.items()]
        for i in range(0, len(items), _MAX_PARAMS):
            self.client.log_batch(run_id, params=items[i : i + _MAX_PARAMS], synchronous=True)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        for i in range(0, len(items), _MAX_TAGS):
            self.client.log_batch(run_id, tags=items[i : i + _MAX_TAGS], synchronous=True)

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_artifact(self, run_id: str, local_file: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local_file), artifact_path)

    def download(self, run_id: str, artifact_path: str, dst: str | Path) -> Path:
        Path(dst).mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, artifact_path, str(dst)))

    # -- search -----------------------------------------------------------------------------

    def search(self, filter_string: str, order_by: list[str] | None = None, page_size: int = 1000) -> Iterator[Run]:
        """All matching runs of the experiment, fetched page by page."""
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string, max_results=page_size, order_by=order_by, page_token=token
            )
            yield from page
            token = page.token
            if not token:
                return

    def latest(self, filter_string: str) -> Run | None:
        page = self.client.search_runs(
            [self.experiment_id], filter_string, max_results=1, order_by=["attributes.start_time DESC"]
        )
        return page[0] if page else None

    def cached(self, stage: str, cache_key: str) -> Run | None:
        """The newest FINISHED run of a cacheable stage with this key."""
        return self.latest(
            f"tags.`{TAG_STAGE}` = '{stage}' AND tags.`{TAG_CACHE_KEY}` = '{cache_key}' "
            "AND attributes.status = 'FINISHED'"
        )

    def claim(
        self, stage: str, cache_key: str, name: str, tags: Mapping[str, str], **options: float
    ) -> tuple[Run | None, str | None]:
        """Reuse a cached result, or own the computation of it: ``(finished_run, None)`` or ``(None, run_id)``.

        ``Claims.claim`` (``options``: its waits and limits); the owner must ``finish`` its run.
        """
        return self.claims.claim(stage, cache_key, name, tags, **options)

    @contextmanager
    def owning(self, run_ids: Iterable[str]) -> Iterator[None]:
        """Close runs this caller claimed: FINISHED when the block succeeds, else FAILED with the cause.

        ``run_ids`` is read on exit, so a live view (``dict.values()``) also covers claims taken
        inside the block. A claimed cache run must never stay RUNNING: waiters would hold until
        its heartbeat goes stale.
        """
        try:
            yield
        except BaseException as exc:
            for run_id in run_ids:
                self.finish(run_id, ok=False, error=f"{type(exc).__name__}: {exc}")
            raise
        for run_id in run_ids:
            self.finish(run_id)

    def release_claims(self, error: str) -> None:
        """Close as FAILED every claim this tracker still holds (``Claims.release``)."""
        self.claims.release(error)

    def finished_trials(self) -> dict[str, Run]:
        """Newest FINISHED run per trial key: what a re-run skips and what the report counts."""
        found: dict[str, Run] = {}
        query = f"tags.`{TAG_STAGE}` = 'trial' AND attributes.status = 'FINISHED'"
        for run in self.search(query, order_by=["attributes.start_time DESC"]):
            found.setdefault(run.data.tags.get(TAG_TRIAL_KEY, ""), run)
        found.pop("", None)
        return found
