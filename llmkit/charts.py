"""Charts as PNG files (matplotlib, the `plots` extra): loss curves of runs, and the figures of a
scaling-law fit. Shared by `llmkit plot`, `llmkit sweep` and `llmkit scaling fit`.

Figures are drawn off-screen (Agg) under matplotlib's own defaults (a matplotlibrc in the folder,
MPLCONFIGDIR or ~/.config changed the bytes, and with them the fingerprints of the sweep and
scaling artifacts that hold the charts) and saved stamped `Software: llmkit` without the version,
so the same data gives the same bytes with the same matplotlib (recorded in the manifests).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from llmkit.errors import UserError

LABELS = {"loss": "training loss", "val_loss": "validation loss", "lr": "learning rate", "grad_norm": "gradient norm",
          "tokens_per_s": "tokens/s"}


def require_matplotlib() -> None:
    """A one-line error naming the extra to install, before any work (a sweep trained every run and
    then failed to draw)."""
    try:
        import matplotlib  # noqa: F401  (imported, not only found: a broken install fails here too)
    except ImportError as exc:
        raise UserError(f"plots need matplotlib ({exc}): pip install 'llmkit[plots]'") from None


def pyplot():
    """matplotlib's pyplot on the Agg backend under its built-in defaults, or a one-line error naming
    the extra to install."""
    import os

    if "matplotlib" not in __import__("sys").modules:
        os.environ.pop("MPLBACKEND", None)  # (Agg is taken below: a bad value failed matplotlib's import itself)
    try:
        import matplotlib
    except ImportError:
        raise UserError("plots need matplotlib: pip install 'llmkit[plots]'") from None
    matplotlib.use("Agg", force=True)
    matplotlib.rcdefaults()  # the built-in style, whatever a matplotlibrc says (the backend stays Agg)
    import matplotlib.pyplot as plt

    return plt


def label(text: str) -> str:
    """A run's name as a legend or title shows it: `$` read as maths (`lr$\\foo$` failed to draw),
    and a leading `_` hides a legend entry."""
    text = text.replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text


def save(figure, path: Path, shown_as: str | None = None) -> None:
    """`shown_as`: the output's name in what is said (the file drawn may be a temporary beside it)."""
    import re
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # PNG whatever the name says (a temporary's ends in .tmp-*)
    # "llmkit", without matplotlib's version (the same bytes under another one): what plot's --force knows its charts by
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure.savefig(path, format="png", dpi=110, bbox_inches="tight", metadata={"Software": "llmkit"})
    glyphs = [re.match(r"Glyph (\d+) \(.*\) missing from font\(s\) (.+?)\.?$", str(w.message)) for w in caught]
    for w, glyph in zip(caught, glyphs):
        if glyph is None:  # (others are passed on as they came)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    missing = [glyph for glyph in glyphs if glyph is not None]
    if missing:  # two warnings a character, with the savefig line: one note instead
        from llmkit.console import note

        characters = "".join(dict.fromkeys(chr(int(glyph.group(1))) for glyph in missing))
        fonts = ", ".join(dict.fromkeys(glyph.group(2) for glyph in missing))
        note(f"{shown_as or path.name}: {characters} drawn as boxes, as the font ({fonts}) has no glyph for them; rename "
             "the runs, or install a font that has them (e.g. Noto Sans CJK)")


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl records (a finished run, or one still training)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        from llmkit.artifacts import SWEEP_RUNS, manifest_kind

        if not Path(run).exists():
            raise UserError(f"{run}: no such run folder; check the path")
        if Path(run).is_file() and Path(run).name == "metrics.jsonl":
            raise UserError(f"{run} is the metrics file itself; pass its run's folder: {Path(run).parent}")
        kind = manifest_kind(Path(run)) if Path(run).is_dir() else None
        if (Path(run) / SWEEP_RUNS).is_dir() and (kind == "sweep" or (Path(run) / "configs").is_dir()):
            raise UserError(f"{run} is a sweep; plot its runs: {Path(run) / SWEEP_RUNS}/*")
        what = f" (it is a {kind} artifact)" if kind and kind != "checkpoint" else ""
        raise UserError(f"{run} has no metrics.jsonl{what}; pass a training run directory (llmkit pretrain or finetune -o)")
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
                x: str = "step", tokens_per_step: dict[str, float] | None = None, title: str | None = None,
                shown_as: str | None = None) -> Path:
    """One panel per kind of curve (the losses share one), every run overlaid with its name."""
    plt = pyplot()
    panels = [["loss", "val_loss"]] if {"loss", "val_loss"} & set(curves) else []
    panels += [[c] for c in curves if c not in ("loss", "val_loss")]
    figure, axes = plt.subplots(len(panels), 1, figsize=(7.5, 3.2 * len(panels)), squeeze=False, sharex=True)
    palette = colours(plt, len(runs))
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
                style = dict(color=palette[index], linewidth=1.2)
                if curve == "val_loss":
                    style.update(linestyle="--", marker="o", markersize=3)
                elif len(points) == 1:  # (a line through one point draws nothing)
                    style.update(marker="o", markersize=3)
                shown = label(name) if len(panel) == 1 or curve == "loss" else f"{label(name)} (validation)"
                ax.plot(*zip(*points), label=shown if len(runs) > 1 or len(panel) > 1 else None, **style)
                alone = _without_finite_neighbours([y for _, y in points])
                if alone and "marker" not in style:  # (a line leaves out a finite point between non-finite ones)
                    ax.plot(*zip(*[points[i] for i in alone]), linestyle="none", marker="o", markersize=3,
                            color=style["color"])
        ax.set_ylabel(" / ".join(LABELS[c] for c in panel if c in curves))
        if panel == ["lr"]:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            entries = len(ax.get_legend_handles_labels()[0])
            if entries > 8:  # beside the axes, in columns: over them it hid the curves and the labels
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + entries // 16)
            else:
                ax.legend(fontsize=8)
    axes[-1][0].set_xlabel("tokens" if x == "tokens" else "step")
    if title:
        axes[0][0].set_title(label(title))
    save(figure, out, shown_as)
    plt.close(figure)
    return Path(out)


def colours(plt, count: int) -> list:
    """A colour per run: the style's cycle of ten, past that tab20's twenty (by index), past that
    points spread along turbo (the cycle repeated: the 11th run was drawn as the first)."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if count <= len(cycle):
        return cycle
    import matplotlib

    if count <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(count)]
    return [matplotlib.colormaps["turbo"](i / (count - 1)) for i in range(count)]


def _without_finite_neighbours(values: Sequence[float]) -> list[int]:
    """Positions of the finite values whose neighbours are not finite (or absent): a line draws
    nothing there, so such a point is drawn as a marker."""
    import math

    finite = [isinstance(v, (int, float)) and math.isfinite(v) for v in values]
    if len(values) < 2:
        return []
    return [i for i, ok in enumerate(finite)
            if ok and not (i > 0 and finite[i - 1]) and not (i + 1 < len(values) and finite[i + 1])]
