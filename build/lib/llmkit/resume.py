"""Continuing an interrupted data stage where it stopped, not from the beginning.

A stage built with `artifacts.create(..., resume_key=KEY)` writes into `.OUT.partial-KEY`, where
KEY is a digest of everything the output depends on (the hashed config, each input's identity,
the batching), so a rerun continues only the very run that was interrupted and never mixes two
runs' outputs. At points where everything written so far is on disk, the stage records a
completion marker there (`save`): its position in the input and the state it needs to go on
(counters, an index, its writers' positions). A rerun `load`s it, skips the finished part of
the input without processing it, and continues: the artifact is the same, byte for byte, as a
run that never stopped. `remove` drops the marker before the folder becomes the artifact.

Used by `llmkit clean` (a marker per closed shard) and `llmkit tokenize` (every few batches).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.outputs import RESUME_MARKER

STATE = RESUME_MARKER


def digest(document: Any) -> str:
    """The resume key of a JSON-able description of a run."""
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def file_identity(label: str, size: int | None = None) -> list:
    """An input's identity without reading it: resolved path, size and modification time for a
    file; its label (a dataset name, a built-in corpus) otherwise."""
    path = Path(label)
    if path.is_file():
        stat = path.stat()
        return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    return [label, size]


def save(directory: Path, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write the marker atomically: the arrays under a new name, then the JSON that names them (the
    marker proper, replaced in one step), then the arrays it no longer names. A kill at any point
    leaves one complete, consistent marker."""
    # the next number after the arrays already there (not the previous JSON: it grows with the run)
    number = 1 + max((int(p.stem.split("-")[1]) for p in directory.glob("resume-*.npz")), default=0)
    arrays_name = f"resume-{number}.npz"
    np.savez(directory / f".{arrays_name}", **arrays)
    os.replace(directory / f".{arrays_name}", directory / arrays_name)
    tmp = directory / f".{STATE}"
    tmp.write_text(json.dumps(dict(state, arrays=arrays_name)), encoding="utf-8")
    os.replace(tmp, directory / STATE)
    for old in directory.glob("resume-*.npz"):
        if old.name != arrays_name:
            old.unlink(missing_ok=True)


def load_state(directory: Path) -> dict[str, Any] | None:
    path = directory / STATE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def load(directory: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """The last marker, or None (a fresh run, or one killed before its first shard closed)."""
    state = load_state(directory)
    if state is None or not (directory / state["arrays"]).is_file():
        return None
    with np.load(directory / state["arrays"]) as data:
        arrays = {name: data[name] for name in data.files}
    return state, arrays


def remove(directory: Path) -> None:
    """Drop the marker before the folder becomes the artifact."""
    for pattern in (STATE, f".{STATE}", "resume-*.npz", ".resume-*.npz"):  # dotted: a write a kill cut short
        for path in directory.glob(pattern):
            path.unlink()
