"""Safetensors folders opened memory-mapped, their tensors read by row ranges."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftlab.errors import SftlabError
from sftlab.weight_diff.names import tied_partner

if TYPE_CHECKING:
    import torch

INDEX_FILE = "model.safetensors.index.json"
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"

# Reads rows ``rows`` of the tuned tensor (any float dtype), given the same rows of the base tensor as stored.
TunedRows = Callable[[slice, "torch.Tensor"], "torch.Tensor"]


class Checkpoint:
    """Tensor name → open safetensors file of one folder; tensors are read by row ranges."""

    def __init__(self, files: dict[str, Path], stack: ExitStack):
        opened = {path: stack.enter_context(_safe_open(path)) for path in set(files.values())}
        self._handles = {name: opened[path] for name, path in files.items()}

    @property
    def names(self) -> set[str]:
        return set(self._handles)

    def __contains__(self, name: str) -> bool:
        return name in self._handles

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[name].get_slice(name).get_shape())

    def read(self, name: str, rows: slice, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows ``rows`` of a tensor, as stored or as ``dtype`` (a 0-d tensor is read whole, as one row).

        The result may be a read-only view of the memory-mapped file: never modify it in place.
        """
        handle = self._handles[name]
        block = handle.get_slice(name)[rows] if self.shape(name) else handle.get_tensor(name).reshape(1)
        return block if dtype is None else block.to(dtype)

    def read_all(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.read(name, slice(None), dtype)


def _weight_files(folder: Path, role: str) -> dict[str, Path]:
    """Tensor name → file, from the shard index if there is one, else every model .safetensors file."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    files = sorted(p for p in folder.glob("*.safetensors") if p.name != ADAPTER_FILE) if folder.is_dir() else []
    if not files:
        hint = "; it holds a LoRA adapter, compare it with compare_lora" if (folder / ADAPTER_CONFIG).is_file() else ""
        raise SftlabError(f"{role} {folder}: no safetensors weights (model.safetensors or {INDEX_FILE}){hint}")
    found: dict[str, Path] = {}
    for path in files:
        found.update(file_tensors(path))
    return found


def _safe_open(path: Path) -> Any:
    """``safe_open`` (memory-mapped, nothing read yet) with a one-line error for missing or corrupt files."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt")
    except (OSError, SafetensorError) as exc:
        raise SftlabError(f"{path}: cannot read safetensors weights: {str(exc).splitlines()[0]}") from exc


def file_tensors(path: Path) -> dict[str, Path]:
    """Tensor name → ``path`` for every tensor stored in one safetensors file."""
    with _safe_open(path) as handle:
        return dict.fromkeys(handle.keys(), path)


@contextmanager
def open_checkpoint(folder: Path, role: str) -> Iterator[Checkpoint]:
    with ExitStack() as stack:
        yield Checkpoint(_weight_files(Path(folder), role), stack)


def matched(names: Iterable[str], side: Checkpoint) -> tuple[dict[str, str], list[str]]:
    """Each name's tensor on ``side`` (itself, or its partner through weight tying), and the names it lacks."""
    resolved: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        found = name if name in side else tied_partner(name, side.names)
        if found is None:
            missing.append(name)
        else:
            resolved[name] = found
    return resolved, missing


def rows_of(side: Checkpoint, name: str) -> TunedRows:
    """Tuned rows read straight from a full checkpoint (the base rows are not needed)."""
    return lambda rows, _base_rows: side.read(name, rows)
