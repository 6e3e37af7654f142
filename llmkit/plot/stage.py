"""`llmkit plot`: the loss curves of training runs, overlaid, as a PNG (llmkit/charts.py draws).

    plot([run_a, run_b], "curves.png", PlotConfig(x="tokens")) -> Path("curves.png")
"""

from __future__ import annotations

from pathlib import Path

from llmkit.errors import UserError
from llmkit.plot.config import EXTRA_CURVES, PlotConfig
from llmkit.outputs import WrittenBy

PNG = WrittenBy("a chart llmkit drew", "")  # (what --force may replace)


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


def _say_what_is_not_drawn(metrics: list[tuple[str, list[dict]]], curves: list[str]) -> None:
    """A run with no point of an asked-for curve, or whose values stop being numbers (a diverged
    run logs nan and inf, which a line leaves out): a note, not an empty panel said nothing of; no
    point at all to draw, an error (it wrote an empty chart and exited 0)."""
    import math

    from llmkit.console import note

    drawable = lambda value: isinstance(value, (int, float)) and math.isfinite(value)  # noqa: E731
    if not any(drawable(r.get(curve)) for _, records in metrics for r in records for curve in curves):
        shown = ", ".join(name for name, _ in metrics[:3]) + (", ..." if len(metrics) > 3 else "")
        raise UserError(f"nothing to draw: {shown} log{'s' if len(metrics) == 1 else ''} no finite {' or '.join(curves)} "
                        "(metrics.jsonl empty, or a run that has not logged a step yet); plot a run that has trained")
    for name, records in metrics:
        for curve in curves:
            if curve == "val_loss" and not any(curve in r for r in records):
                continue  # (a run that never validated: its absence is not news)
            values = [r[curve] for r in records if curve in r]
            finite = [v for v in values if drawable(v)]
            if not finite:
                note(f"{name} has no {curve} to draw")
            elif len(finite) < len(values):
                note(f"{name}: {len(values) - len(finite)} {curve} value(s) are not finite (the run diverged?) "
                     "and are not drawn")


def plot(runs: list[Path], out: Path | str, config: PlotConfig, *, force: bool = False) -> Path:
    """Plot the loss curves of training runs (finished or still running), one line per run."""
    from llmkit.outputs import check_output_file, file_output_lock, replaced_file
    from llmkit.charts import loss_curves, read_metrics

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"-o {out} must be a .png file")
    check_output_file(out, force, inputs=list(runs), ours=PNG)
    names = [run.name for run in runs]
    if len(set(names)) < len(names):
        names = [str(run) for run in runs]
    curves = ["loss", "val_loss"] + [name for name in EXTRA_CURVES if getattr(config, name)]
    metrics = [(name, read_metrics(run)) for name, run in zip(names, runs)]
    per_step = {}
    if config.x == "tokens":  # each line's tokens trained so far; a log written before llmkit recorded them: step x batch
        for (name, records), run in zip(metrics, runs):
            if all("tokens" in r for r in records):
                continue
            per_step[name] = tokens_per_step(run)
            if per_step[name] is None:
                raise UserError(f"{run} does not say how many tokens a step holds (its metrics.jsonl is older than its "
                                "tokens column, and a fine-tune counts examples); use --x step")
    _say_what_is_not_drawn(metrics, curves)
    with file_output_lock(out, force, PNG), replaced_file(out) as tmp:  # drawn beside it and renamed into place
        loss_curves(metrics, tmp, curves=curves, x=config.x, tokens_per_step=per_step, title=config.title, shown_as=out.name)
    return out
