"""The ensemble options `llmkit eval` and `llmkit generate` share (llmkit.model.ensemble).

Several checkpoints are given positionally (`llmkit eval A B C`) or with `--ensemble`; the
members are recorded as the eval artifact's inputs, the weights and mode in its config (only
when there is more than one member, so a single checkpoint's artifact is as before).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from llmkit.options import Options, comma_floats, option, path_strings

PANEL = "Ensemble"
MODES = ("prob", "logprob")


@dataclass
class Ensembling(Options):
    ensemble: list[str] = option(default_factory=list, help="Another checkpoint to ensemble with the first; repeat for more "
                                 "(the same as giving several checkpoints).", cli_type=list[Path], parse=path_strings,
                                 hashed=False, recorded_as="inputs checkpoint:K", panel=PANEL)
    weights: list[float] = option(default_factory=list, cli_type=Optional[list[str]], parse=comma_floats, range="[0, inf)",
                                  help="Weight of each ensemble member, comma-separated, in order (default: equal); normalised to sum 1.",
                                  hashed=False, recorded_as="config ensemble.weights", panel=PANEL)
    ensemble_mode: str = option("prob", "Mix next-token distributions in probability space (prob: the mixture) or "
                                "log-linearly (logprob: a product of experts).", choices=MODES,
                                hashed=False, recorded_as="config ensemble.mode", panel=PANEL)

    def __post_init__(self) -> None:
        if isinstance(self.weights, str):
            self.weights = comma_floats(self.weights)
        super().__post_init__()

    def members(self, checkpoints: list[Path] | Path | None) -> list[Path]:
        """Every member in order: the positional checkpoints, then --ensemble."""
        given = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints or [])
        return [Path(p) for p in given] + [Path(p) for p in self.ensemble]

    def recorded(self, weights: list[float]) -> dict | None:
        """The config entry of an ensemble whose members, in the order they are mixed, have these
        normalised `weights` (load_ensemble's `member_weights`); None for one checkpoint."""
        if len(weights) < 2:
            return None
        return {"members": len(weights), "weights": list(weights), "mode": self.ensemble_mode}

    def single_model_flags(self, count: int) -> list[tuple[str, str]]:
        """(flag, what it is for) of each ensemble option given for a lone checkpoint, which ignores them."""
        if count >= 2:
            return []
        return [(flag, "an ensemble of several checkpoints") for flag, name in (("--weights", "weights"),
                ("--ensemble-mode", "ensemble_mode")) if getattr(self, name) != self.default_of(name)]
