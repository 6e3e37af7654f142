"""Continuing an interrupted data stage where it stopped, not from the beginning.

A stage built with `artifacts.create(..., resume_key=KEY)` writes into `.OUT.partial-KEY`, where
KEY is a digest of everything the output depends on (the hashed config, each input's identity,
the batching), so a rerun continues only the very run that was interrupted and never mixes two
runs' outputs. At points where everything written so far is on disk, the stage records a
completion marker there (`save`): its position in the input and the state it needs to go on
(counters, an index, its writers' positions). A rerun `load`s it, skips the finished part of
the input without processing it, and continues: the artifact is the same, byte for byte, as a
run that never stopped. The marker stays while the stage finishes (its last files written, every
file hashed for the manifest, which takes a while on a large output): `artifacts.create` drops it
only once the manifest is ready, so an interruption then still leaves the work to continue from.

Used by `llmkit clean` (a marker per closed shard) and `llmkit tokenize` (every few batches).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.outputs import RESUME_FILES, RESUME_MARKER, write_atomically

STATE = RESUME_MARKER


def digest(document: Any) -> str:
    """The resume key of a JSON-able description of a run."""
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def file_identity(label: str, size: int | None = None) -> list:
    """An input's identity without reading it: resolved path, size, modification and change times
    and inode for a file; its label (a dataset name, a built-in corpus) otherwise. (`cp -p`, `rsync
    -a` and `tar x` set a rewritten file's modification time back; its change time, which no user
    sets, and a replaced file's inode tell it apart.)"""
    path = Path(label)
    if path.is_file():
        stat = path.stat()
        return [str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
    return [label, size]


def save(directory: Path, state: dict[str, Any], arrays: dict[str, np.ndarray], *, append: bool = False) -> None:
    """Write the marker atomically: the arrays under a new name, then the JSON that names them (the
    marker proper, replaced in one step), then the arrays it no longer names. A kill at any point
    leaves one complete, consistent marker.

    `append=True` keeps the arrays of the earlier markers: each save adds only what changed since
    the last one (rows to append), and `load` concatenates them. A stage whose state grows with the
    input (clean's de-duplication index) then writes it once in all, not once per marker."""
    # the next number after the arrays already there (not the previous JSON: it grows with the run)
    number = 1 + max((int(p.stem.split("-")[1]) for p in directory.glob("resume-*.npz")), default=0)
    arrays_name = f"resume-{number}.npz"
    write_atomically(directory / arrays_name, lambda handle: np.savez(handle, **arrays))
    earlier = _segments(load_state(directory)) if append else []
    named = [*earlier, arrays_name]
    write_atomically(directory / STATE, json.dumps(dict(state, arrays=named)))
    keep = set(named)
    for old in directory.glob("resume-*.npz"):
        if old.name not in keep:
            old.unlink(missing_ok=True)


def _segments(state: dict[str, Any] | None) -> list[str]:
    if state is None:
        return []
    names = state["arrays"]
    return [names] if isinstance(names, str) else list(names)  # (a str: tokenize's markers before append mode)


def load_state(directory: Path) -> dict[str, Any] | None:
    path = directory / STATE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def load(directory: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """The last marker, or None (a fresh run, or one killed before its first shard closed). The
    arrays of markers saved with `append=True` come back concatenated, in the order they were saved."""
    state = load_state(directory)
    segments = _segments(state)
    if state is None or not all((directory / name).is_file() for name in segments):
        return None
    parts: dict[str, list[np.ndarray]] = {}
    for name in segments:
        with np.load(directory / name) as data:
            for key in data.files:
                parts.setdefault(key, []).append(data[key])
    arrays = {key: chunks[0] if len(chunks) == 1 else np.concatenate(chunks) for key, chunks in parts.items()}
    return state, arrays


def remove(directory: Path) -> None:
    """Drop the marker: the run starts over (`artifacts.create` drops it itself once the manifest is ready)."""
    for pattern in RESUME_FILES:
        for path in directory.glob(pattern):
            path.unlink()
