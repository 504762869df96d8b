"""Resumable checkpoints of a trial: where they live, how a killed trial resumes, and epoch models.

Transformers writes ``checkpoint-<step>/`` (weights, optimizer, scheduler, RNG, trainer state) into
a local folder after every epoch. With ``training.checkpoint_uri`` (``s3://bucket/prefix`` or a
PVC path) each one is also copied to ``<uri>/<trial key>/checkpoint-<step>/``, and a ``.complete``
marker is written last: an upload cut short by preemption never reads as complete. A new pod
resumes from the newest complete remote copy; without a remote store, from the newest complete
local one (a re-run on the same machine).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from sftlab.errors import SftlabError
from sftlab.spec.grid import Trial
from sftlab.spec.job import TrialJob
from sftlab.spec.schema import StorageConfig

log = logging.getLogger(__name__)

MARKER = ".complete"
STATE_FILE = "trainer_state.json"  # transformers writes it last into a checkpoint
# A file another process is still writing (atomic writes go through a temporary name). Where two
# nodes share one checkpoint folder, the first to finish its save must not copy the other's
# temporaries, which vanish under it; the other uploads its files itself once its save is done.
IN_FLIGHT = ".tmp"
_STEP = re.compile(r"^checkpoint-(\d+)$")
# What only resuming needs (optimizer, scheduler, RNG, trainer state; DeepSpeed's and FSDP's
# optimizer files); the rest of a checkpoint's top level is the epoch's model (weights or adapter).
_RESUME_ONLY = re.compile(
    r"^(optimizer.*\.(pt|bin)|scheduler\.pt|scaler\.pt|trainer_state\.json|training_args\.bin|rng_state(_\d+)?\.pth"
    r"|latest|zero_to_fp32\.py)$"
)


def is_model_file(relative: str) -> bool:
    """Top-level files except resume state; subfolders hold sharded resume state (DeepSpeed, FSDP)."""
    return "/" not in relative and not _RESUME_ONLY.match(relative) and relative != MARKER


def _complete_local(folder: Path) -> dict[int, Path]:
    """Local checkpoints whose trainer state was written; a kill can land mid-save."""
    found = {}
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        match = _STEP.match(path.name)
        try:
            json.loads((path / STATE_FILE).read_text())
        except (OSError, ValueError):
            continue
        if match:
            found[int(match.group(1))] = path
    return found


def epoch_of(state_text: str) -> int:
    """The epoch a checkpoint ends (trainer_state.json's ``epoch`` is N.0 at the end of epoch N)."""
    return round(float(json.loads(state_text)["epoch"]))


# ------------------------------------------------------------------------------------ stores


class CheckpointStore(Protocol):
    """A trial's remote checkpoint folder: ``checkpoint-<step>/`` entries, each with a marker when complete."""

    uri: str

    def complete_steps(self) -> list[int]: ...
    def upload(self, local: Path, step: int) -> None: ...
    def mark_complete(self, step: int) -> None: ...
    def read_text(self, step: int, name: str) -> str: ...
    def download(self, step: int, dst: Path, keep: Callable[[str], bool] = lambda name: True) -> None: ...
    def delete(self) -> None: ...


class FolderStore:
    """Checkpoints on a mounted volume (a PVC that outlives the pod)."""

    def __init__(self, root: Path):
        self.root = root
        self.uri = str(root)

    def complete_steps(self) -> list[int]:
        return sorted(
            int(m.group(1)) for p in self.root.glob(f"checkpoint-*/{MARKER}") if (m := _STEP.match(p.parent.name))
        )

    def upload(self, local: Path, step: int) -> None:
        ignore = shutil.ignore_patterns(f"{IN_FLIGHT}*")
        shutil.copytree(local, self.root / f"checkpoint-{step}", ignore=ignore, dirs_exist_ok=True)

    def mark_complete(self, step: int) -> None:
        (self.root / f"checkpoint-{step}" / MARKER).write_text("")

    def read_text(self, step: int, name: str) -> str:
        return (self.root / f"checkpoint-{step}" / name).read_text()

    def download(self, step: int, dst: Path, keep: Callable[[str], bool] = lambda name: True) -> None:
        source = self.root / f"checkpoint-{step}"

        def skip(folder: str, names: list[str]) -> list[str]:
            under = Path(folder).relative_to(source)
            return [n for n in names if n == MARKER or (Path(folder, n).is_file() and not keep((under / n).as_posix()))]

        shutil.copytree(source, dst, ignore=skip, dirs_exist_ok=True)

    def delete(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class S3Store:
    """Checkpoints under an S3 prefix (boto3, the endpoint and credentials of ``sftlab.sources.uris``)."""

    def __init__(self, uri: str, storage: StorageConfig):
        from sftlab.sources.uris import s3_client, split_s3

        self.uri, self.storage = uri.rstrip("/"), storage
        self.bucket, self.prefix = split_s3(self.uri)
        self.client = s3_client(storage, self.bucket)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        from sftlab.sources.uris import s3_error

        try:
            yield
        except SftlabError:
            raise
        except Exception as exc:  # noqa: BLE001 - boto errors become one line
            raise s3_error(self.uri, exc) from None

    def _keys(self, under: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/{under}"
        )
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def complete_steps(self) -> list[int]:
        with self._errors():
            keys = self._keys("")
        names = (k[len(self.prefix) + 1 :].split("/") for k in keys)
        return sorted(
            int(m.group(1))
            for parts in names
            if parts[-1:] == [MARKER] and len(parts) == 2 and (m := _STEP.match(parts[0]))
        )

    def upload(self, local: Path, step: int) -> None:
        from sftlab.sources.uris import upload_dir

        upload_dir(local, f"{self.uri}/checkpoint-{step}", self.storage, skip_prefix=IN_FLIGHT)

    def mark_complete(self, step: int) -> None:
        with self._errors():
            self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/checkpoint-{step}/{MARKER}", Body=b"")

    def read_text(self, step: int, name: str) -> str:
        with self._errors():
            return (
                self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/checkpoint-{step}/{name}")["Body"]
                .read()
                .decode()
            )

    def download(self, step: int, dst: Path, keep: Callable[[str], bool] = lambda name: True) -> None:
        folder = f"{self.prefix}/checkpoint-{step}/"
        with self._errors():
            for key in self._keys(f"checkpoint-{step}/"):
                relative = key[len(folder) :]
                if relative == MARKER or not keep(relative):
                    continue
                target = dst / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.bucket, key, str(target))

    def delete(self) -> None:
        with self._errors():
            keys = self._keys("")
            for i in range(0, len(keys), 1000):  # S3's DeleteObjects limit
                batch = [{"Key": k} for k in keys[i : i + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})


def remote_store(job: TrialJob) -> CheckpointStore | None:
    """The trial's folder under ``training.checkpoint_uri``, or None when checkpoints stay local."""
    uri = job.trial.training.checkpoint_uri
    if uri is None:
        return None
    scheme = urlsplit(uri).scheme
    if scheme == "s3":
        return S3Store(f"{uri.rstrip('/')}/{job.trial.key}", job.context.storage)
    if scheme in ("", "file"):
        return FolderStore(Path(uri.removeprefix("file://")).expanduser() / job.trial.key)
    raise SftlabError(f"training.checkpoint_uri: expected s3://bucket/prefix or a path, got {uri!r}")


# ------------------------------------------------------------------------------------ resume


def resume_point(local: Path, store: CheckpointStore | None) -> str | None:
    """The checkpoint every rank resumes from, made present on every node; None to start afresh.

    Rank 0 picks the step so all ranks agree: with a store the newest complete remote copy (a
    local one may exist on one node only), else the newest complete local one. Each node's first
    process fetches it from the store unless its local copy is complete.
    """
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    choice: list[int | None] = [None]
    if state.is_main_process:
        steps = store.complete_steps() if store else sorted(_complete_local(local))
        choice[0] = steps[-1] if steps else None
    step = broadcast_object_list(choice)[0]
    if step is None:
        return None
    path = local / f"checkpoint-{step}"
    if state.is_local_main_process and not (path / STATE_FILE).exists():
        if store is None:
            raise SftlabError(
                f"checkpoint-{step} is on another node only: resuming a multi-node trial needs training.checkpoint_uri"
            )
        shutil.rmtree(path, ignore_errors=True)  # a partial local copy: replace it
        store.download(step, path)
    state.wait_for_everyone()
    return str(path)


def upload_callback(store: CheckpointStore) -> Any:
    """After each save: every node's first process uploads what it wrote (rank 0 the model and
    optimizer, the others their RNG or optimizer shards); once all succeeded, rank 0 marks it complete.

    A failed upload does not stop training: that checkpoint stays unmarked, and the next one is
    uploaded whole.
    """
    from accelerate.utils import gather_object
    from transformers import TrainerCallback

    class UploadCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001 - transformers' signature
            step, ok = state.global_step, True
            if state.is_local_process_zero:
                try:
                    store.upload(Path(args.output_dir) / f"checkpoint-{step}", step)
                except (SftlabError, OSError) as exc:
                    log.warning("checkpoint-%d: upload to %s failed, training goes on: %s", step, store.uri, exc)
                    ok = False
            if all(gather_object([ok])) and state.is_world_process_zero:  # gather: every node is done
                store.mark_complete(step)

    return UploadCheckpoint()


# ------------------------------------------------------------------------------------ epoch models


def requested_epochs(trial: Trial) -> list[int]:
    """Epochs whose models the evaluation wants (``evaluation.epochs``), within this trial's epochs."""
    wanted, last = trial.evaluation.epochs, trial.training.epochs
    if wanted == "last":
        return []
    return list(range(1, last + 1)) if wanted == "all" else sorted(e for e in wanted if e <= last)


def store_epoch_models(
    tracker: Any, run_id: str, local: Path, store: CheckpointStore | None, epochs: list[int]
) -> dict[str, str]:
    """Log each epoch's model (checkpoint files minus optimizer/RNG/trainer state) to ``checkpoints/epoch-<N>``.

    A checkpoint no longer on local disk (a new pod after preemption) is fetched from the store.
    """
    if not epochs:
        return {}
    here = {epoch_of((path / STATE_FILE).read_text()): path for path in _complete_local(local).values()}
    there = {epoch_of(store.read_text(step, STATE_FILE)): step for step in store.complete_steps()} if store else {}
    paths = {}
    with tempfile.TemporaryDirectory() as tmp:
        for epoch in epochs:
            folder = here.get(epoch)
            if folder is None and store is not None and epoch in there:
                folder = Path(tmp) / f"epoch-{epoch}"
                store.download(there[epoch], folder, keep=is_model_file)
            if folder is None:
                raise SftlabError(
                    f"evaluation.epochs: the checkpoint of epoch {epoch} is gone "
                    "(set training.checkpoint_uri to keep it)"
                )
            artifact = f"checkpoints/epoch-{epoch}"
            for file in sorted(folder.iterdir()):
                if file.is_file() and is_model_file(file.name):
                    tracker.log_artifact(run_id, file, artifact)
            paths[str(epoch)] = artifact
    return paths
