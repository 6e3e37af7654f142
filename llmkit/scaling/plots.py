"""The figures of a scaling-law fit (PNG, matplotlib through llmkit.charts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmkit.charts import colours, pyplot, save
from llmkit.scaling.fit import ChinchillaFit, IsoFlopFit
from llmkit.scaling.points import Point


def _spread(values: list[float], count: int) -> list[float]:
    """Up to `count` of the distinct values, spread from the smallest to the largest."""
    distinct = sorted(set(values))
    if len(distinct) <= count:
        return distinct
    return [distinct[round(i * (len(distinct) - 1) / (count - 1))] for i in range(count)]


def _scatter(ax, xs, ys, colours, cmap: str, legend: str):
    """Measured points, coloured by the other variable on a log scale; returns the mapping from that
    variable to a colour, for the lines drawn at its values."""
    plot = ax.scatter(xs, ys, c=np.log10(colours), cmap=cmap, s=28, edgecolors="black", linewidths=0.4, zorder=3)
    bar = ax.figure.colorbar(plot, ax=ax)
    bar.set_label(f"log10 {legend}")
    return lambda value: plot.cmap(plot.norm(np.log10(value)))


def _whole_decades_only(axis) -> None:
    """A log axis's minor ticks at 2 and 5 of each decade only: across under two decades matplotlib
    labels every minor tick, and eight labels a decade ran into each other ("3x10^4x10^3")."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator

    axis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
    # (labelled where the axis spans under 2 decades: the default formatter left 5 of each decade unlabelled, and an
    # axis under a decade wide with one label or none)
    axis.set_minor_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(2, 2)))


def _against(plt, path: Path, xs: np.ndarray, others: np.ndarray, loss: np.ndarray, law_at, names: tuple[str, ...],
             title: str) -> Path:
    """The measured losses against one variable, coloured by the other, with the law at a few of its values."""
    x_label, other_symbol, other_label, cmap = names
    figure, ax = plt.subplots(figsize=(7, 4.5))
    grid = np.geomspace(xs.min() / 2, xs.max() * 2, 200)
    colour_of = _scatter(ax, xs, loss, others, cmap, other_label)
    for other in _spread(others.tolist(), 5):  # (each line in its points' colour: the style's cycle matched none of them)
        ax.plot(grid, law_at(grid, other), linewidth=1, color=colour_of(other), label=f"{other_symbol} = {other:.2g}")
    ax.set(xscale="log", xlabel=x_label, ylabel="validation loss", title=title)
    _whole_decades_only(ax.xaxis)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save(figure, path)
    plt.close(figure)
    return path


def write_plots(points: list[Point], fit: ChinchillaFit, isoflop: IsoFlopFit | None, budgets: list[float],
                folder: Path) -> list[Path]:
    plt = pyplot()
    law = fit.law
    n = np.array([p.params for p in points])
    d = np.array([p.tokens for p in points])
    loss = np.array([p.loss for p in points])
    written = []

    # Loss against N, one fitted curve per token count: the effect of model size at fixed data;
    # and against D, one curve per model size: the effect of data at fixed size.
    written.append(_against(plt, folder / "loss_vs_params.png", n, d, loss, lambda x, other: law.loss(x, other),
                            ("parameters N", "D", "tokens D", "viridis"), "loss against model size (lines: the fit)"))
    written.append(_against(plt, folder / "loss_vs_tokens.png", d, n, loss, lambda x, other: law.loss(other, x),
                            ("tokens D", "N", "parameters N", "plasma"), "loss against data (lines: the fit)"))

    # IsoFLOP curves: at a fixed C = 6ND, loss against N, with the fitted law's minimum.
    flops = sorted({p.budget for p in points if p.budget}) or list(np.geomspace((6 * n * d).min(), (6 * n * d).max(), 4))
    figure, ax = plt.subplots(figsize=(7, 4.5))
    palette = colours(plt, len(flops))  # (past ten budgets the style's cycle of ten repeated: two budgets, one colour)
    for index, budget in enumerate(flops):
        colour = palette[index]
        curve_n = np.geomspace(n.min() / 2, n.max() * 2, 200)
        members = [p for p in points if p.budget == budget]
        curve_d, compute = budget / (6 * curve_n), budget
        if len({p.params for p in members}) >= 2:
            # the budget's runs themselves: with N counted otherwise than the budget (--count total), 6 N D moves from
            # run to run, and the curve follows their tokens so that it passes where they were measured
            slope, level = np.polyfit(np.log([p.params for p in members]), np.log([p.tokens for p in members]), 1)
            curve_d = np.exp(level + slope * np.log(curve_n))
            compute = float(np.exp(np.mean(np.log([p.flops for p in members]))))
        ax.plot(curve_n, law.loss(curve_n, curve_d), color=colour, linewidth=1, label=f"C = {compute:.2g}")
        if law.determined:
            best_n, best_d = law.optimal(compute)
            ax.plot([best_n], [law.loss(best_n, best_d)], marker="*", color=colour, markersize=11, markeredgecolor="black")
        if members:
            ax.scatter([p.params for p in members], [p.loss for p in members], color=colour, s=24, edgecolors="black", zorder=3)
    if isoflop is not None:
        ax.scatter([m["params"] for m in isoflop.minima], [m["loss"] for m in isoflop.minima], marker="x", color="black",
                   s=50, zorder=4, label="parabola minima (approach 2)")
    # The law climbs steeply where a budget leaves few tokens: keep the view on the measured losses.
    ax.set_ylim(loss.min() - 0.1 * np.ptp(loss), loss.max() + 0.25 * np.ptp(loss) + 1e-9)
    # (stars only where the law has an optimum: the title named stars that an undetermined fit did not draw)
    title = "IsoFLOP curves (stars: compute-optimal)" if law.determined else "IsoFLOP curves (the fit has no compute-optimal point)"
    ax.set(xscale="log", xlabel="parameters N", ylabel="validation loss", title=title)
    _whole_decades_only(ax.xaxis)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    written.append(folder / "isoflop.png")
    save(figure, written[-1])
    plt.close(figure)

    if not law.determined:
        return written  # no frontier without an optimum
    # The frontier: compute-optimal N and D against C.
    figure, ax = plt.subplots(figsize=(7, 4.5))
    span = [min(flops + budgets), max(flops + budgets)]
    grid_c = np.geomspace(span[0] / 10, span[1] * 10, 100)
    optimal = np.array([law.optimal(c) for c in grid_c])
    ax.plot(grid_c, optimal[:, 0], color="C0", label="N_opt (approach 3)")
    ax.plot(grid_c, optimal[:, 1], color="C1", label="D_opt (approach 3)")
    if isoflop is not None:  # (dashed, in the colour of the same quantity)
        parabola = np.array([isoflop.optimal(c) for c in grid_c])
        ax.plot(grid_c, parabola[:, 0], color="C0", linestyle="--", label="N_opt (approach 2)")
        ax.plot(grid_c, parabola[:, 1], color="C1", linestyle="--", label="D_opt (approach 2)")
    for budget in budgets:
        best_n, best_d = law.optimal(budget)
        ax.scatter([budget, budget], [best_n, best_d], color="black", s=18, zorder=3)
    ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="parameters / tokens",
           title="compute-optimal frontier")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    written.append(folder / "frontier.png")
    save(figure, written[-1])
    plt.close(figure)
    return written
