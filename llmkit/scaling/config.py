"""The options of `llmkit scaling fit` and `llmkit scaling predict` (docs/scaling.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from llmkit.options import Options, comma_floats, option, seed_option


@dataclass
class ScalingFitConfig(Options):
    count: str = option("non-embedding", "Parameters of a sweep's runs to fit: non-embedding (Kaplan et al.) or total "
                        "(Hoffmann et al.); at small sizes the choice changes the exponents. For a CSV: what its params "
                        "column counts (recorded, so llmkit plan --scaling counts a model the same way).",
                        choices=("non-embedding", "total"))
    budget: list[float] = option(default_factory=list, cli_type=Optional[list[str]], parse=comma_floats, range="(0, inf)",
                                 help="FLOP budgets to recommend a model size and token count for, comma-separated (e.g. 1e18,1e20).")
    bootstrap: int = option(100, "Bootstrap refits for the confidence intervals (0 = none).", range="[0, inf)")
    grid: str = option("full", "Starting points of the fit: full (Hoffmann et al.'s 4,500) or coarse (108, quicker).",
                       choices=("full", "coarse"))
    huber_delta: float = option(1e-3, "Huber loss threshold on log-loss residuals (Hoffmann et al.: 1e-3).", range="(0, inf)")
    seed: int = seed_option("Seed of the bootstrap resampling.")

    def __post_init__(self) -> None:
        if isinstance(self.budget, str):
            self.budget = comma_floats(self.budget)
        super().__post_init__()
        self.budget = sorted(set(self.budget))  # a set of budgets: one artifact whatever their order, each answered once


@dataclass
class ScalingPredictConfig(Options):
    params: float = option(help="Parameters N (counted as the fit counted them).", range="(0, inf)")
    tokens: float = option(help="Training tokens D.", range="(0, inf)")
