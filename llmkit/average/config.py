"""The options of `llmkit average` (docs/average.md): declared once, here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from llmkit.options import Options, comma_floats, option, unused_seed_option


@dataclass
class AverageConfig(Options):
    weights: list[float] = option(default_factory=list, cli_type=Optional[list[str]], parse=comma_floats, range="[0, inf)",
                                  help="Weight of each checkpoint, comma-separated, in order (default: equal); normalised to sum 1.")
    seed: int = unused_seed_option("averaging")

    def __post_init__(self) -> None:
        if isinstance(self.weights, str):
            self.weights = comma_floats(self.weights)
        super().__post_init__()
