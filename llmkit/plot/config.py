"""The options of `llmkit plot` (docs/scaling.md): declared once, here."""

from __future__ import annotations

from dataclasses import dataclass

from llmkit.options import Options, option

EXTRA_CURVES = ("lr", "grad_norm", "tokens_per_s")  # panels beside the losses, each behind its flag


@dataclass
class PlotConfig(Options):
    x: str = option("step", "Horizontal axis: optimizer steps, or tokens trained on.", choices=("step", "tokens"))
    lr: bool = option(False, "Add a panel with the learning rate.", flags=("--lr/--no-lr",))
    grad_norm: bool = option(False, "Add a panel with the gradient norm (before clipping).", flags=("--grad-norm/--no-grad-norm",))
    tokens_per_s: bool = option(False, "Add a panel with the throughput in tokens/s.", flags=("--tokens-per-s/--no-tokens-per-s",))
    title: str | None = option(None, "Title above the plot.")
