"""Paired rounds for the in-process benchmarks (eval.py, finetune.py).

Each round runs every side once, alternating which goes first, so that load from other processes
on a shared machine hits both sides alike; each round gives one llmkit / reference ratio, and the
median of those is the figure to quote. Wall time and process CPU time (all threads) are both
kept: CPU time per unit of work is what a busy machine disturbs least.
"""

from __future__ import annotations

import resource
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class Timing:
    wall: float
    cpu: float
    result: Any


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have been waited for."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def alternate(sides: dict[str, Callable[[int], Any]], rounds: int) -> dict[str, list[Timing]]:
    """Call every side once per round (with the round's index), alternating the order; a side's
    CPU time includes the processes it ran."""
    runs: dict[str, list[Timing]] = {name: [] for name in sides}
    for r in range(rounds):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            wall, cpu = time.perf_counter(), cpu_seconds()
            result = sides[name](r)
            runs[name].append(Timing(time.perf_counter() - wall, cpu_seconds() - cpu, result))
    return runs


def timed_process(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and its children) of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{' '.join(map(str, command))} failed: {proc.stderr.decode()[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def median(values: list[float]) -> float:
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def report(runs: dict[str, list[Timing]], work: float, unit: str, describe: Callable[[Any], str] = lambda _: "") -> dict[str, float]:
    """Print each side's best wall and CPU time per `work` units and the paired median ratios
    (first side over each other side, above 1 = the first side faster); returns the ratios."""
    names = list(runs)
    for name, timings in runs.items():
        wall, cpu = min(t.wall for t in timings), min(t.cpu for t in timings)
        print(f"  {name:13s} best {wall:7.2f} s wall ({work / wall:9,.0f} {unit}/s)   {cpu:7.2f} CPU-s "
              f"({work / cpu:9,.0f} {unit} per CPU-s)   {describe(timings[-1].result)}")
    ratios = {}
    ours = runs[names[0]]
    for other in names[1:]:
        walls = [t.wall / o.wall for o, t in zip(ours, runs[other])]
        cpus = [t.cpu / o.cpu for o, t in zip(ours, runs[other])]
        ratios[f"{other} wall"], ratios[f"{other} cpu"] = median(walls), median(cpus)
        print(f"  {names[0]} / {other}, paired median: wall {median(walls):.2f}x   CPU {median(cpus):.2f}x   "
              f"(per round, wall: {', '.join(f'{v:.2f}' for v in walls)}; CPU: {', '.join(f'{v:.2f}' for v in cpus)})")
    return ratios
