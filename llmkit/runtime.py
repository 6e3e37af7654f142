"""Process-wide helpers shared by every stage: seeding, cache folders, threads."""

from __future__ import annotations

import os
import random
from pathlib import Path


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (if imported) torch, so a stage's randomness follows --seed."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover
        pass
    import sys

    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


def cache_dir() -> Path:
    """llmkit's cache folder (LLMKIT_CACHE, default ~/.cache/llmkit)."""
    path = Path(os.environ.get("LLMKIT_CACHE", Path.home() / ".cache" / "llmkit"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def datasets_cache_dir() -> Path:
    """The pinned `datasets` cache, so recipes read the same prepared data every time."""
    path = cache_dir() / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def worker_count(requested: int | None) -> int:
    """0 or None means one worker per available core."""
    if requested and requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def busy_cores(window: float = 0.25) -> float:
    """How many of this process's cores other programs keep busy right now: measured from
    /proc/stat over `window` seconds (this process sleeps meanwhile). The load average would lag
    by a minute, too slow for a job that starts and ends in seconds; where there is no /proc/stat
    it is the fallback, less one unit for this process."""
    import time

    try:
        cores = {f"cpu{n}" for n in os.sched_getaffinity(0)}

        def sample() -> tuple[int, int]:
            idle = total = 0
            with open("/proc/stat") as stat:
                for line in stat:
                    fields = line.split()
                    if fields and fields[0] in cores:
                        values = [int(v) for v in fields[1:9]]  # user .. steal; guest time is inside user
                        idle += values[3] + values[4]  # idle and iowait
                        total += sum(values)
            return idle, total

        idle_before, total_before = sample()
        time.sleep(window)
        idle_after, total_after = sample()
    except (AttributeError, OSError, ValueError, IndexError):
        try:
            return max(0.0, os.getloadavg()[0] - 1)
        except (AttributeError, OSError):
            return 0.0
    elapsed = total_after - total_before
    if elapsed <= 0:
        return 0.0
    return len(cores) * (1 - (idle_after - idle_before) / elapsed)


def idle_cores() -> int:
    """This process's cores less those other programs keep busy now (at least one)."""
    cores = worker_count(0)
    return cores if cores == 1 else max(1, cores - int(busy_cores() + 0.5))


def let_idle_threads_sleep() -> None:
    """Make idle OpenMP threads sleep instead of spin; must run before torch is imported.

    Spinning threads made a CPU training run 25x slower on a 2-core machine shared with other
    jobs (1.4k vs 57k tokens/s, same weights). OMP_WAIT_POLICY in the environment still wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def resolve_device(name: str) -> str:
    """`auto` means CUDA when there is a GPU, else the CPU; any other name is kept."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
