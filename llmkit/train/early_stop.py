"""`--patience N`: a run stops once its validation loss has not gone below the lowest so far for N
validations in a row (early stopping, as Keras' EarlyStopping and transformers'
EarlyStoppingCallback count them; a tie is no improvement). The count is kept in every checkpoint's
progress whatever --patience is, so a resumed run stops where an uninterrupted one would, and a run
resumed with a larger --patience (or 0) trains on from where a smaller one stopped it."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class ValidationStall:
    best_loss: float | None = None
    best_step: int | None = None
    since_best: int = 0  # validations after best_step without a lower loss

    def record(self, val_loss: float, step: int) -> None:
        if math.isfinite(val_loss) and (self.best_loss is None or val_loss < self.best_loss):
            self.best_loss, self.best_step, self.since_best = val_loss, step, 0
        elif self.best_loss is not None:
            self.since_best += 1

    def stops(self, patience: int) -> bool:
        return patience > 0 and self.best_loss is not None and self.since_best >= patience

    def to_progress(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_progress(cls, saved: dict[str, Any] | None, metrics: Path, step: int) -> ValidationStall:
        """The saved count; for a checkpoint written before 2026-12-07, which has none, the count its
        run's validations up to `step` give (`metrics`: its metrics.jsonl, read before a resume cuts
        it back to `step`), as they would have."""
        if saved:
            return cls(**saved)
        stall = cls()
        try:
            lines = metrics.read_text(encoding="utf-8").splitlines() if metrics.is_file() else []
        except OSError:
            lines = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:  # (a line cut short by a kill)
                continue
            if isinstance(row, dict) and isinstance(row.get("val_loss"), (int, float)) and 0 < row.get("step", 0) <= step:
                stall.record(float(row["val_loss"]), int(row["step"]))
        return stall

    def stopped_record(self, patience: int) -> dict[str, Any]:
        """The checkpoint stats' `stopped_early`: why the run ended before --max-steps."""
        return {"patience": patience, "best_step": self.best_step, "best_val_loss": self.best_loss,
                "validations_since_best": self.since_best}

    def reason(self, patience: int) -> str:
        return (f"the validation loss has not gone below {self.best_loss:.4f} (step {self.best_step}) for "
                f"{self.since_best} validation{'' if self.since_best == 1 else 's'} (--patience {patience})")
