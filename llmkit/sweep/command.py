"""`llmkit sweep TOKENS -o SWEEP`: the command is derived from SweepConfig (llmkit.stage_command)."""

from __future__ import annotations

from pathlib import Path

from llmkit.stage_command import argument, stage_command
from llmkit.sweep.config import SweepConfig


def _sweep(config: SweepConfig, *, tokens: Path, out: Path, force: bool) -> None:
    """Run a grid of small pretraining runs (sizes x token or FLOP budgets) for a scaling law."""
    from llmkit import artifacts
    from llmkit.console import out as console, wrote
    from llmkit.sweep.stage import sweep
    from llmkit.sweep_table import print_runs

    art = artifacts.load(sweep(tokens, out, config, force=force), kind="sweep")
    print_runs(art.stats["runs"], console)
    wrote(art)


sweep = stage_command(
    "sweep", SweepConfig, _sweep,
    arguments=[argument("tokens", "Tokens artifact every run trains on (its val split gives the losses).")],
    out="Sweep directory: the runs, then the sweep artifact. Rerun the same command to finish an interrupted sweep.",
    force="Start the sweep over, replacing an existing one.",
)
