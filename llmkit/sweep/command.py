"""`llmkit sweep TOKENS -o SWEEP`: the command is derived from SweepConfig (llmkit.stage_command)."""

from __future__ import annotations

from pathlib import Path

from llmkit.stage_command import argument, stage_command
from llmkit.sweep.config import SweepConfig


def _sweep(config: SweepConfig, *, tokens: Path, out: Path, force: bool) -> None:
    """Run a grid of small pretraining runs (sizes x token or FLOP budgets) for a scaling law."""
    from rich.table import Table

    from llmkit import artifacts
    from llmkit.console import out as console, wrote
    from llmkit.sweep.stage import sweep

    art = artifacts.load(sweep(tokens, out, config, force=force), kind="sweep")
    runs = art.stats["runs"]
    columns = {"run": lambda r: r["name"], "params": lambda r: f"{r['params']:,}",
               "non-emb.": lambda r: f"{r['non_embedding_params']:,}", "tokens": lambda r: f"{r['tokens']:,}",
               "FLOPs": lambda r: f"{r['flops']:.2e}", "val loss": lambda r: _fmt(r["final_val_loss"]),
               "bpb": lambda r: _fmt(r["bits_per_byte"]), "seconds": lambda r: _fmt(r["seconds"], 1)}
    # Every cell whole, the columns a fit does not read left out where the console is too narrow for all (at
    # 80 columns the names were cut to "c2e09-…", every run alike: this table maps them to their losses); too
    # narrow for the name and its loss, a line a run
    for dropped in ((), ("params",), ("params", "seconds"), ("params", "seconds", "FLOPs"),
                    ("params", "seconds", "FLOPs", "non-emb."), ("params", "seconds", "FLOPs", "non-emb.", "tokens")):
        shown = [name for name in columns if name not in dropped]
        widths = [max([len(name)] + [len(columns[name](r)) for r in runs]) for name in shown]
        if sum(widths) + 3 * len(shown) + 1 <= console.width:
            break
    else:
        console.print(f"sweep of {len(runs)} runs", soft_wrap=True)
        for row in runs:
            console.print(f"{columns['run'](row)}: " + ", ".join(f"{name} {columns[name](row)}" for name in columns if name != "run"),
                          soft_wrap=True)
        wrote(art)
        return
    table = Table(title=f"sweep of {len(runs)} runs", title_justify="left")
    for name in shown:
        table.add_column(name, justify="left" if name == "run" else "right", no_wrap=True)
    for row in runs:
        table.add_row(*(columns[name](row) for name in shown))
    console.print(table)
    wrote(art)


def _fmt(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


sweep = stage_command(
    "sweep", SweepConfig, _sweep,
    arguments=[argument("tokens", "Tokens artifact every run trains on (its val split gives the losses).")],
    out="Sweep directory: the runs, then the sweep artifact. Rerun the same command to finish an interrupted sweep.",
    force="Start the sweep over, replacing an existing one.",
)
