"""A sweep's table of runs, `runs.json`: written by `llmkit sweep`, read by `llmkit scaling fit` and
by inspect and report. A hashed file, so `llmkit verify` vouches for its numbers; a sweep made
before it existed holds the table in its stats. The one place its name and the fields its readers
use are spelled (the table holds more: each run's shape, steps, learning rate, bits per byte).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import UserError

TABLE = "runs.json"
# A sweep's grid in its recorded config: what two sweeps fitted together may differ in (every other option
# is how each run trained)
GRID_OPTIONS = frozenset({"sizes", "ladder", "width_per_layer", "token_budgets", "flops", "per_budget", "tokens_per_param"})


@dataclass(frozen=True)
class SweepRow:
    name: str
    state: str  # "done" for a finished run
    params: float
    non_embedding_params: float
    tokens: float  # trained: whole steps, up to a batch past the planned tokens
    final_val_loss: float | None
    flops_budget: float | None  # the budget of its FLOPs grid, or None on a grid of token counts

    @classmethod
    def of(cls, row: dict[str, Any]) -> SweepRow:
        return cls(name=row["name"], state=row.get("state", ""), params=float(row["params"]),
                   non_embedding_params=float(row["non_embedding_params"]), tokens=float(row["tokens"]),
                   final_val_loss=row.get("final_val_loss"), flops_budget=row.get("flops_budget"))


def write_table(folder: Path, rows: list[dict[str, Any]]) -> None:
    (folder / TABLE).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


def read_rows(sweep) -> list[SweepRow]:
    """The rows of a sweep artifact's table (its stats' for a sweep made before the file); a damaged
    table is a one-line error naming verify."""
    table = sweep.path / TABLE
    if TABLE not in sweep.manifest.files:  # (one dropped into an older sweep is no part of it)
        rows, source = sweep.stats.get("runs", []), f"the stats of {sweep.path / 'manifest.json'} (a sweep made before {TABLE})"
        fix = "sweep again"
    else:
        source, fix = str(table), f"check it with llmkit verify {sweep.path}"
        try:
            rows = json.loads(table.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise UserError(f"{table} is damaged ({type(exc).__name__}); {fix}") from None
    try:
        if not isinstance(rows, list):
            raise TypeError
        return [SweepRow.of(row) for row in rows]
    except (TypeError, KeyError, ValueError, AttributeError):
        raise UserError(f"{source} holds no list of runs; {fix}") from None


def print_runs(runs: list[dict[str, Any]], console, vocab_size: int | None = None) -> None:
    """The runs as a table (the sweep's own at its end, and inspect's of a sweep), from its stats'
    rows, which add each run's wall time; a field a row lacks (a sweep made before it) is "-". With
    `vocab_size`, the runs that diverged are named below it."""
    from rich.table import Table

    diverged = above_a_uniform_guess([(row.get("name", "-"), row.get("final_val_loss")) for row in runs], vocab_size) \
        if vocab_size else ""

    def number(key: str, spec: str):
        return lambda row: format(row[key], spec) if isinstance(row.get(key), (int, float)) else "-"

    columns = {"run": lambda r: str(r.get("name", "-")), "params": number("params", ","), "non-emb.": number("non_embedding_params", ","),
               "tokens": number("tokens", ","), "FLOPs": number("flops", ".2e"), "val loss": number("final_val_loss", ".4f"),
               "bpb": number("bits_per_byte", ".4f"), "seconds": number("seconds", ".1f")}
    # Every cell whole, the columns a fit does not read left out where the console is too narrow for all (at
    # 80 columns the names were cut to "c2e09-…", every run alike: this table maps them to their losses); too
    # narrow for the name and its loss, a line a run
    for dropped in ((), ("params",), ("params", "seconds"), ("params", "seconds", "FLOPs"),
                    ("params", "seconds", "FLOPs", "non-emb."), ("params", "seconds", "FLOPs", "non-emb.", "tokens")):
        shown = [name for name in columns if name not in dropped]
        widths = [max([len(name)] + [len(columns[name](r)) for r in runs]) for name in shown]
        if sum(widths) + 3 * len(shown) + 1 <= console.width:
            table = Table(title=f"sweep of {len(runs)} runs", title_justify="left")
            for name in shown:
                table.add_column(name, justify="left" if name == "run" else "right", no_wrap=True)
            for row in runs:
                table.add_row(*(columns[name](row) for name in shown))
            console.print(table)
            break
    else:
        console.print(f"sweep of {len(runs)} runs", soft_wrap=True)
        for row in runs:
            console.print(f"{columns['run'](row)}: " + ", ".join(f"{name} {columns[name](row)}" for name in columns if name != "run"),
                          soft_wrap=True)
    if diverged:  # (the sweep said so once, as it ended; a later reader of the table is told too)
        console.print(f"note: {diverged}", soft_wrap=True, markup=False, highlight=False)


def sweep_vocab_size(sweep) -> int | None:
    """The vocabulary a sweep's runs trained on: its stats' (recorded since 2026-12-07), else its tokens
    input's (None where those are gone or changed since)."""
    vocab = sweep.stats.get("vocab_size")
    if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 1:
        return vocab
    try:
        return int(sweep.input("tokens").stats["vocab_size"])
    except (UserError, KeyError, TypeError, ValueError):
        return None


def diverged_runs(losses: list[tuple[str, float | None]], vocab_size: int) -> list[str]:
    """The runs (name, final validation loss) that ended above the loss of a uniform guess over the
    vocabulary, ln V nats, or at it (to 1e-3: a run that collapsed to the uniform guess learned
    nothing): they diverged, though their loss stayed finite."""
    import math

    return [name for name, loss in losses if isinstance(loss, (int, float)) and loss >= math.log(vocab_size) - 1e-3]


def above_a_uniform_guess(losses: list[tuple[str, float | None]], vocab_size: int) -> str:
    """The runs (name, final validation loss) that ended above the loss of a uniform guess over the
    vocabulary, ln V nats: they diverged, though their loss stayed finite, and a fit would take them
    as measured; "" when none did."""
    import math

    uniform = math.log(vocab_size)
    above = diverged_runs(losses, vocab_size)
    if not above:
        return ""
    shown = ", ".join(above[:4]) + (f" and {len(above) - 4} more" if len(above) > 4 else "")
    return f"{shown} ended above a uniform guess's loss over the vocabulary (ln {vocab_size} = {uniform:.2f}): diverged"
