"""Charts as PNG files (matplotlib, the `plots` extra): loss curves of runs, and the figures of a
scaling-law fit. Shared by `llmkit plot`, `llmkit sweep` and `llmkit scaling fit`.

Figures are drawn off-screen (Agg) and saved without the software version in their metadata,
so the same data gives the same bytes with the same matplotlib.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from llmkit.errors import UserError

LABELS = {"loss": "training loss", "val_loss": "validation loss", "lr": "learning rate", "grad_norm": "gradient norm",
          "tokens_per_s": "tokens/s"}


def pyplot():
    """matplotlib's pyplot on the Agg backend, or a one-line error naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("plots need matplotlib: pip install 'llmkit[plots]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(figure, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # PNG whatever the name says (a temporary's ends in .tmp-*)
    # "llmkit", without matplotlib's version (the same bytes under another one): what plot's --force knows its charts by
    figure.savefig(path, format="png", dpi=110, bbox_inches="tight", metadata={"Software": "llmkit"})


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl records (a finished run, or one still training)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run} has no metrics.jsonl; pass a training run directory (llmkit pretrain or finetune -o)")
    records = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the line a killed run was writing: what came before stands
                break
            raise UserError(f"{path}:{number} is not valid JSON; the metrics file is damaged") from None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def loss_curves(runs: Sequence[tuple[str, list[dict[str, Any]]]], out: Path, *, curves: Sequence[str] = ("loss", "val_loss"),
                x: str = "step", tokens_per_step: dict[str, float] | None = None, title: str | None = None) -> Path:
    """One panel per kind of curve (the losses share one), every run overlaid with its name."""
    plt = pyplot()
    panels = [["loss", "val_loss"]] if {"loss", "val_loss"} & set(curves) else []
    panels += [[c] for c in curves if c not in ("loss", "val_loss")]
    figure, axes = plt.subplots(len(panels), 1, figsize=(7.5, 3.2 * len(panels)), squeeze=False, sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, panel in enumerate(panels):
        ax = axes[row][0]
        for index, (name, records) in enumerate(runs):
            scale = (tokens_per_step or {}).get(name) or 1.0

            def x_of(record: dict[str, Any]) -> float:  # a run's own count of tokens; a log from before it, step x batch
                if x != "tokens":
                    return record["step"]
                return record["tokens"] if isinstance(record.get("tokens"), (int, float)) else record["step"] * scale

            for curve in panel:
                if curve not in curves:
                    continue
                points = [(x_of(r), r[curve]) for r in records if isinstance(r.get(curve), (int, float))]
                if not points:
                    continue
                style = dict(color=colours[index % len(colours)], linewidth=1.2)
                if curve == "val_loss":
                    style.update(linestyle="--", marker="o", markersize=3)
                elif len(points) == 1:  # (a line through one point draws nothing)
                    style.update(marker="o", markersize=3)
                label = name if len(panel) == 1 or curve == "loss" else f"{name} (validation)"
                ax.plot(*zip(*points), label=label if len(runs) > 1 or len(panel) > 1 else None, **style)
        ax.set_ylabel(" / ".join(LABELS[c] for c in panel if c in curves))
        if panel == ["lr"]:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[-1][0].set_xlabel("tokens" if x == "tokens" else "step")
    if title:
        axes[0][0].set_title(title)
    save(figure, out)
    plt.close(figure)
    return Path(out)
