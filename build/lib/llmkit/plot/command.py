"""`llmkit plot RUN... -o FILE.png`: the command (llmkit/plot/stage.py)."""

from __future__ import annotations

from pathlib import Path

from llmkit.plot.config import PlotConfig
from llmkit.stage_command import argument, stage_command


def _plot(config: PlotConfig, *, runs: list[Path], out: Path, force: bool) -> None:
    """Plot the loss curves of training runs (finished or still running), one line per run."""
    from llmkit.console import err
    from llmkit.plot.stage import plot as run_plot

    err.print(f"wrote {run_plot(runs, out, config, force=force)}", soft_wrap=True)


plot = stage_command(
    "plot", PlotConfig, _plot,
    arguments=[argument("runs", "Training run directories (llmkit pretrain / finetune -o), finished or not.", type=list[Path])],
    out="The .png file to write.", force="Replace an existing -o file.", writes_artifact=False,
)
