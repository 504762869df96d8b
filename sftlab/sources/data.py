"""Training data: read rows from any source and turn them into prompt/completion examples.

Three row formats: chat ``messages``; ``prompt``/``completion``; and instruction/response rows
rendered with a template (the study's ``###Question: {instruction}\\n###Answer: {response}``).
Templated and prompt/completion rows become text pairs; chat rows stay conversational so TRL
applies the model's chat template, exactly as it will for training.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftlab.errors import SftlabError
from sftlab.spec.job import RunContext
from sftlab.spec.schema import DatasetSpec
from sftlab.spec.uris import classify_uri

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Example:
    prompt: str | Messages
    completion: str | Messages

    def as_record(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "completion": self.completion}


@dataclass
class LoadedData:
    examples: list[Example]
    skipped: list[tuple[int, str]]  # (row index, reason): reported, never fatal
    row_ids: list[int]  # the row index of each example, as skipped rows are numbered


_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
Row = dict[str, Any] | str  # a row, or a one-line reason why the line is not a usable row


def _files(path: Path, split: str) -> list[Path]:
    """A file, or a folder's data files (those named after the split if any are)."""
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix in _SUFFIXES)
    if not files:
        raise SftlabError(f"{path}: no .jsonl/.json/.parquet/.csv files in this folder")
    return [p for p in files if p.stem.startswith(split)] or files


def _jsonl(path: Path) -> Iterator[Row]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                yield f"{path.name}:{number}: not valid JSON ({type(exc).__name__})"
                continue
            yield (
                row
                if isinstance(row, dict)
                else f"{path.name}:{number}: expected a JSON object, got {type(row).__name__}"
            )


def _root_cause(exc: BaseException) -> str:
    """The innermost error of a chain (``datasets`` wraps the parser's in a generic one), as one line."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


def _parquet(path: Path) -> Iterator[Row]:
    """Rows in record batches (memory stays bounded); an empty file has no rows, not an error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise SftlabError(f"{path}: not a readable Parquet file ({_root_cause(exc)})") from None


def _file_rows(path: Path) -> Iterator[Row]:
    if path.suffix == ".jsonl" or path.name.endswith(".jsonl.gz"):
        yield from _jsonl(path)
    elif path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise SftlabError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
        except json.JSONDecodeError as exc:
            raise SftlabError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
        if not isinstance(rows, list):
            raise SftlabError(f"{path}: expected a JSON list of rows")
        yield from (r if isinstance(r, dict) else f"expected a JSON object, got {type(r).__name__}" for r in rows)
    elif path.suffix == ".parquet":
        yield from _parquet(path)
    elif path.suffix == ".csv":
        from datasets import load_dataset

        try:
            rows = load_dataset("csv", data_files=str(path), split="train")  # Arrow, memory-mapped
        except Exception as exc:  # noqa: BLE001 - the parser's errors vary; one line for the user
            raise SftlabError(f"{path}: not a readable CSV file ({_root_cause(exc)})") from None
        yield from rows
    else:
        raise SftlabError(
            f"{path}: unsupported data file type {path.suffix!r} (expected .jsonl, .jsonl.gz, .json, .parquet, .csv)"
        )


def iter_rows(uri: str, split: str, ctx: RunContext, subset: str | None = None) -> Iterator[Row]:
    """Each row of a source, one at a time (a 1M-row dataset is never held whole).

    JSONL is read line by line (blank lines are not rows), Parquet in record batches; CSV files and
    hub datasets go through ``datasets``, whose Arrow tables are memory-mapped. An unreadable line
    is yielded as a one-line reason, so callers decide whether it is fatal; an unreadable file is a
    one-line error.
    """
    kind = classify_uri(uri)
    if kind == "hub":
        from datasets import load_dataset

        try:
            yield from load_dataset(uri, subset, split=split)
        except Exception as exc:  # noqa: BLE001 - hub errors vary; one line for the user
            raise SftlabError(f"{uri}: cannot load dataset from the hub ({str(exc).splitlines()[0]})") from None
        return
    if kind == "s3":
        from sftlab.sources.uris import download

        path = download(uri, ctx.cache_dir, ctx.storage)
    elif kind == "local":
        path = Path(uri.removeprefix("file://"))
        if not path.exists():
            raise SftlabError(f"{path}: no such file or folder")
    else:
        raise SftlabError(f"{uri}: not a dataset source")
    for file in _files(path, split):
        yield from _file_rows(file)


def read_rows(uri: str, split: str, ctx: RunContext, subset: str | None = None) -> list[dict[str, Any]]:
    """Every row of a source where each must be usable (benchmarks): a bad line is a one-line error."""
    rows = []
    for row in iter_rows(uri, split, ctx, subset):
        if isinstance(row, str):
            raise SftlabError(f"{uri}: {row}")
        rows.append(row)
    return rows


def render_template(template: str, instruction: str) -> str:
    """The prompt part of a template: everything before ``{response}`` with the instruction filled in."""
    return template[: template.index("{response}")].replace("{instruction}", instruction)


def to_example(row: dict[str, Any], ds: DatasetSpec, template: str | None) -> Example:
    """One row -> Example; raises ValueError with a short reason for a malformed row."""
    if ds.format == "messages":
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("missing 'messages' list")
        for i, turn in enumerate(messages):
            role = turn.get("role") if isinstance(turn, dict) else None
            if role not in ("system", "user", "assistant"):
                raise ValueError(f"message {i} has role {role!r}; each message needs role system/user/assistant")
            if not isinstance(turn.get("content"), str):
                raise ValueError(f"message {i} has no text content")
        if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
            raise ValueError("the last message must be a non-empty assistant turn")
        return Example(prompt=messages[:-1], completion=messages[-1:])
    if ds.format == "prompt_completion":
        prompt, completion = row.get("prompt"), row.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str) or not completion.strip():
            raise ValueError("needs text 'prompt' and non-empty 'completion'")
        return Example(prompt, completion)
    instruction, response = _text_field(row, ds.instruction_field), _text_field(row, ds.response_field)
    extra = row.get(ds.input_field) if ds.input_field else None
    if isinstance(extra, str) and extra.strip():
        instruction = f"{instruction}\n\n{extra}"
    assert template is not None  # the spec guarantees a template for instruction data
    return Example(render_template(template, instruction), response)


def _text_field(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if value is not None and not isinstance(value, str):  # e.g. a Parquet column of numbers
        raise ValueError(f"field {name!r} is {type(value).__name__}, expected text")
    if value is None or not value.strip():
        raise ValueError(f"missing text field {name!r}")
    return value


def load_examples(
    ds: DatasetSpec, template: str | None, ctx: RunContext, max_rows: int | None = None, seed: int = 0
) -> LoadedData:
    """All usable examples of a dataset (optionally a seeded subsample); bad rows are listed, not fatal."""
    rows = list(iter_rows(ds.uri, ds.split, ctx, ds.subset))
    indices = list(range(len(rows)))
    if max_rows is not None and max_rows < len(rows):
        indices = sorted(random.Random(seed).sample(indices, max_rows))
    examples, skipped, row_ids = [], [], []
    for i in indices:
        row = rows[i]
        if isinstance(row, str):
            skipped.append((i, row))
            continue
        try:
            examples.append(to_example(row, ds, template))
            row_ids.append(i)
        except ValueError as exc:
            skipped.append((i, str(exc)))
    if not examples:
        raise no_usable_rows(ds, skipped)
    return LoadedData(examples, skipped, row_ids)


def drop_overlong_prompts(loaded: LoadedData, ds: DatasetSpec, tokenizer: Any, max_length: int) -> LoadedData:
    """Skip, by row id, the rows whose prompt alone fills ``max_length`` tokens.

    Training truncates a row's end, so such a row keeps no completion token and teaches nothing:
    TRL drops it without a word, and with no row left fails deep inside the trainer
    ("num_samples should be a positive integer"). A row goes exactly when TRL's would: its trained
    part starts where the tokenized prompt and prompt + completion first differ.
    """
    keep, skipped = [], list(loaded.skipped)
    for i, (row, example) in enumerate(zip(loaded.row_ids, loaded.examples, strict=True)):
        n = _untrained_prefix(example, tokenizer, max_length)
        if n >= max_length:
            skipped.append(
                (
                    row,
                    f"prompt is {n} tokens; training.max_length is {max_length}, "
                    "so truncation leaves no completion token to train on",
                )
            )
        else:
            keep.append(i)
    skipped.sort()
    if not keep:
        raise no_usable_rows(ds, skipped)
    return LoadedData([loaded.examples[i] for i in keep], skipped, [loaded.row_ids[i] for i in keep])


def _untrained_prefix(example: Example, tokenizer: Any, max_length: int) -> int:
    """Tokens before the first trained one, as TRL's SFTTrainer tokenizes the row."""
    if isinstance(example.prompt, list):
        assert isinstance(example.completion, list)
        prompt_turns, conversation = example.prompt, example.prompt + example.completion

        def tokens(full: bool) -> list[int]:
            messages = conversation if full else prompt_turns
            return list(
                tokenizer.apply_chat_template(
                    messages, tokenize=True, add_generation_prompt=not full, return_dict=True
                )["input_ids"]
            )
    else:
        prompt, completion = render_text(example, tokenizer)  # eos appended, as TRL appends it

        def tokens(full: bool) -> list[int]:
            return list(tokenizer(prompt + completion if full else prompt)["input_ids"])

    prompt_ids = tokens(full=False)
    if len(prompt_ids) < max_length:
        return len(prompt_ids)  # the usual case: the prefix it shares with prompt + completion is no longer
    full_ids = tokens(full=True)
    return next(
        (n for n, (a, b) in enumerate(zip(prompt_ids, full_ids, strict=False)) if a != b),
        min(len(prompt_ids), len(full_ids)),
    )


def no_usable_rows(ds: DatasetSpec, problems: list[tuple[int, str]]) -> SftlabError:
    """The one-line error for a dataset without a single usable row, naming the first problem."""
    reason = f" (first problem, row {problems[0][0]}: {problems[0][1]})" if problems else ""
    return SftlabError(f"dataset {ds.name} ({ds.uri}): no usable rows{reason}")


def render_text(example: Example, tokenizer: Any) -> tuple[str, str]:
    """Prompt and completion text exactly as training tokenizes them (chat template; eos appended)."""
    if isinstance(example.prompt, list):
        assert isinstance(example.completion, list)
        prompt = tokenizer.apply_chat_template(example.prompt, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(example.prompt + example.completion, tokenize=False)
        if not full.startswith(prompt):
            raise SftlabError("the chat template renders the prompt differently inside the full conversation")
        return prompt, full[len(prompt) :]
    assert isinstance(example.completion, str)
    eos = tokenizer.eos_token or ""
    completion = example.completion if example.completion.endswith(eos) else example.completion + eos
    return example.prompt, completion
