"""`llmkit plot RUN... -o FILE.png`: loss curves of training runs, overlaid (llmkit.charts)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmkit.options import Options, option
from llmkit.stage_command import argument, stage_command


@dataclass
class PlotConfig(Options):
    x: str = option("step", "Horizontal axis: optimizer steps, or tokens trained on.", choices=("step", "tokens"))
    lr: bool = option(False, "Add a panel with the learning rate.", flags=("--lr",))
    grad_norm: bool = option(False, "Add a panel with the gradient norm (before clipping).", flags=("--grad-norm",))
    tokens_per_s: bool = option(False, "Add a panel with the throughput in tokens/s.", flags=("--tokens-per-s",))
    title: str | None = option(None, "Title above the plot.")


def tokens_per_step(run: Path) -> float | None:
    """Tokens per optimizer step of a pretraining run, from its manifest or newest checkpoint."""
    from llmkit import artifacts
    from llmkit.model.records import CheckpointStats
    from llmkit.train.checkpoint import latest_checkpoint

    for candidate in (run, latest_checkpoint(run)):
        if candidate is not None and (candidate / artifacts.MANIFEST).is_file():
            value = CheckpointStats.of(artifacts.load(candidate, kind="checkpoint")).global_batch_tokens
            if value:
                return float(value)
    return None


def _plot(config: PlotConfig, *, runs: list[Path], out: Path, force: bool) -> None:
    """Plot the loss curves of training runs (finished or still running), one line per run."""
    from llmkit.charts import loss_curves, read_metrics
    from llmkit.console import err
    from llmkit.errors import UserError
    from llmkit.artifacts import check_output_file

    if out.suffix.lower() != ".png":
        raise UserError(f"-o {out} must be a .png file")
    check_output_file(out, force, inputs=list(runs))
    names = [run.name for run in runs]
    if len(set(names)) < len(names):
        names = [str(run) for run in runs]
    curves = ["loss", "val_loss"] + [name for name in ("lr", "grad_norm", "tokens_per_s") if getattr(config, name)]
    per_step = {}
    if config.x == "tokens":
        for name, run in zip(names, runs):
            per_step[name] = tokens_per_step(run)
            if per_step[name] is None:
                raise UserError(f"{run} does not say how many tokens a step holds (a fine-tune counts examples); use --x step")
    loss_curves([(name, read_metrics(run)) for name, run in zip(names, runs)], out, curves=curves, x=config.x,
                tokens_per_step=per_step, title=config.title)
    err.print(f"wrote {out}", soft_wrap=True)


plot = stage_command(
    "plot", PlotConfig, _plot,
    arguments=[argument("runs", "Training run directories (llmkit pretrain / finetune -o), finished or not.", type=list[Path])],
    out="The .png file to write.", force="Replace an existing -o file.", writes_artifact=False,
)
