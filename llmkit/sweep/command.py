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
    table = Table(title=f"sweep of {len(art.stats['runs'])} runs", title_justify="left")
    for column in ("run", "params", "non-emb.", "tokens", "FLOPs", "val loss", "bpb", "seconds"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for row in art.stats["runs"]:
        table.add_row(row["name"], f"{row['params']:,}", f"{row['non_embedding_params']:,}", f"{row['tokens']:,}",
                      f"{row['flops']:.2e}", _fmt(row["final_val_loss"]), _fmt(row["bits_per_byte"]), _fmt(row["seconds"], 1))
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
