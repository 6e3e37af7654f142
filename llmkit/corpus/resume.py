"""Continuing an interrupted `llmkit clean` where it stopped, not from the beginning.

The stage writes into `.OUT.partial-KEY` (llmkit.artifacts.atomic_directory), where KEY is a
digest of the config and of every input's identity (path, size, modification time), so a rerun
continues only the very run that was interrupted and never mixes two runs' outputs. Each time a
shard is closed, the driver records in that folder what it has done (a completion marker for
everything up to that shard): the batches consumed, the decisions of the batch being written,
the de-duplication index, the counters and the length of the rejects file. A rerun reads the
marker, skips the finished batches without processing them (they are still read, to keep the
input position), restores the index and continues writing: the artifact is the same, byte for
byte, as a run that was never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.artifacts import RESUME_MARKER

STATE = RESUME_MARKER


def run_key(config: dict[str, Any], sources: list) -> str:
    """Digest of what the output depends on: the hashed config and each input's identity."""
    inputs = []
    for source in sources:
        path = Path(source.label)
        if path.is_file():
            stat = path.stat()
            inputs.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        else:  # a dataset name or a built-in corpus: its label names it
            inputs.append([source.label, source.size])
    document = json.dumps({"config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(document.encode()).hexdigest()


def save(directory: Path, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write the marker atomically: the arrays under a new name, then the JSON that names them (the
    marker proper, replaced in one step), then the arrays it no longer names. A kill at any point
    leaves one complete, consistent marker."""
    previous = load_state(directory)
    number = (previous or {}).get("number", 0) + 1
    arrays_name = f"resume-{number}.npz"
    np.savez(directory / f".{arrays_name}", **arrays)
    os.replace(directory / f".{arrays_name}", directory / arrays_name)
    tmp = directory / f".{STATE}"
    tmp.write_text(json.dumps(dict(state, number=number, arrays=arrays_name)), encoding="utf-8")
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
