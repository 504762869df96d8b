"""Training rows one at a time, so profiling a 1M-row dataset never holds the dataset in memory.

JSONL is read line by line; Parquet/CSV files and hub datasets go through ``datasets``, whose
Arrow tables are memory-mapped (a ``.json`` list file has to be parsed whole). Rows are numbered
as ``sftlab.data.load_examples`` numbers them (blank JSONL lines skipped), so a row id in the
profile names the same row everywhere. Unlike training, a line that is not a JSON object is a
reported bad row here, not a fatal error: the profile's job is to find such rows.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from sftlab.data import Example, to_example
from sftlab.errors import SftlabError
from sftlab.job import RunContext
from sftlab.spec import DatasetSpec, classify_uri

T = TypeVar("T")
MAX_LISTED = 1000  # bad rows listed by id in the profile; all are counted
_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def _files(path: Path, split: str) -> list[Path]:
    """A file, or a folder's data files (those named after the split if any are)."""
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix in _SUFFIXES)
    if not files:
        raise SftlabError(f"{path}: no .jsonl/.json/.parquet/.csv files in this folder")
    return [p for p in files if p.stem.startswith(split)] or files


def _jsonl(path: Path) -> Iterator[dict[str, Any] | str]:
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                yield f"not valid JSON ({type(exc).__name__})"
                continue
            yield row if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}"


def _file_rows(path: Path) -> Iterator[dict[str, Any] | str]:
    if path.suffix == ".jsonl":
        yield from _jsonl(path)
    elif path.suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise SftlabError(f"{path}: expected a JSON list of rows")
        yield from (r if isinstance(r, dict) else f"expected a JSON object, got {type(r).__name__}" for r in rows)
    elif path.suffix in (".parquet", ".csv"):
        from datasets import load_dataset

        yield from load_dataset(path.suffix[1:], data_files=str(path), split="train")
    else:
        raise SftlabError(f"{path}: unsupported data file type {path.suffix!r} (expected .jsonl, .json, .parquet, .csv)")


def iter_rows(ds: DatasetSpec, ctx: RunContext) -> Iterator[dict[str, Any] | str]:
    """Each row of the dataset as a dict, or a one-line reason where a row is unreadable."""
    kind = classify_uri(ds.uri)
    if kind == "hub":
        from datasets import load_dataset

        try:
            yield from load_dataset(ds.uri, split=ds.split)
        except Exception as exc:  # noqa: BLE001 - hub errors vary; one line for the user
            raise SftlabError(f"{ds.uri}: cannot load dataset from the hub ({str(exc).splitlines()[0]})") from None
        return
    if kind == "s3":
        from sftlab.uris import download

        path = download(ds.uri, ctx.cache_dir, ctx.storage)
    elif kind == "local":
        path = Path(ds.uri.removeprefix("file://"))
    else:
        raise SftlabError(f"{ds.uri}: not a dataset source")
    for file in _files(path, ds.split):
        yield from _file_rows(file)


def empty_response(row: dict[str, Any], ds: DatasetSpec) -> bool:
    """Whether a row's response exists as text but is blank (a format problem worth its own share)."""
    if ds.format == "messages":
        msgs = row.get("messages")
        value = msgs[-1].get("content") if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) else None
    else:
        value = row.get("completion" if ds.format == "prompt_completion" else ds.response_field)
    return isinstance(value, str) and not value.strip()


@dataclass
class RowProblems:
    """Bad rows: all counted, the first ``MAX_LISTED`` listed with their ids."""

    count: int = 0
    empty_response: int = 0
    listed: list[tuple[int, str]] = field(default_factory=list)

    def add(self, row: int, reason: str, empty: bool = False) -> None:
        self.count += 1
        self.empty_response += int(empty)
        if len(self.listed) < MAX_LISTED:
            self.listed.append((row, reason))


def iter_examples(ds: DatasetSpec, template: str | None, ctx: RunContext, problems: RowProblems) -> Iterator[tuple[int, Example]]:
    """(row id, Example) for every usable row; the others go to ``problems``, never raise."""
    for i, row in enumerate(iter_rows(ds, ctx)):
        if isinstance(row, str):
            problems.add(i, row)
            continue
        try:
            yield i, to_example(row, ds, template)
        except ValueError as exc:
            problems.add(i, str(exc), empty_response(row, ds))


class Reservoir(Generic[T]):
    """A seeded uniform sample of at most ``size`` items from a stream of unknown length (Algorithm R)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.rng, self.seen = size, random.Random(seed), 0
        self.items: list[T] = []

    def add(self, item: T) -> None:
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            j = self.rng.randrange(self.seen + 1)
            if j < self.size:
                self.items[j] = item
        self.seen += 1
