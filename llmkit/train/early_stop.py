"""`--patience N` (and `--min-delta D`): a run stops once N validations in a row have not lowered
the validation loss (by more than D below the last loss that did: Keras' EarlyStopping and
Lightning's count; D = 0, a tie is no improvement, as transformers' EarlyStoppingCallback). Every
checkpoint's progress keeps the run's validation losses whatever the two are, so a resumed run
stops where an uninterrupted one would, and one resumed with a larger --patience (or 0), or a
smaller --min-delta, trains on from where the stricter rule stopped it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class StopRule(Protocol):  # (train.options.Checkpointing)
    patience: int
    min_delta: float


@dataclass(frozen=True)
class Since:
    """The validation that last counted as an improvement, and how many came after it."""
    loss: float
    step: int
    validations: int


@dataclass
class ValidationStall:
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, val_loss) of the run's validations

    def record(self, val_loss: float, step: int) -> None:
        self.history.append((step, val_loss))

    @property
    def best(self) -> tuple[int, float] | None:
        """The step and loss of the lowest validation (a tie keeps the earlier): where the best weights are."""
        finite = [(loss, step) for step, loss in self.history if math.isfinite(loss)]
        return (min(finite)[1], min(finite)[0]) if finite else None

    def since_improvement(self, min_delta: float = 0.0) -> Since | None:
        """None before the first finite validation. A loss counts as lower only below the last counted
        one less `min_delta` (a slow drift adds up until it does)."""
        since: Since | None = None
        for step, loss in self.history:
            if math.isfinite(loss) and (since is None or loss < since.loss - min_delta):
                since = Since(loss, step, 0)
            elif since is not None:
                since = Since(since.loss, since.step, since.validations + 1)
        return since

    def stops(self, rule: StopRule) -> bool:
        since = self.since_improvement(rule.min_delta)
        return rule.patience > 0 and since is not None and since.validations >= rule.patience

    def to_progress(self) -> dict[str, Any]:
        return {"history": [[step, loss] for step, loss in self.history]}

    @classmethod
    def from_progress(cls, saved: dict[str, Any] | None, metrics: Path, step: int) -> ValidationStall:
        """The saved losses; for a checkpoint written before 2026-12-08, which has none (or only the
        count of 2026-12-07), the validations its run's metrics.jsonl records up to `step` (read
        before a resume cuts it back to `step`), as they were."""
        if saved and isinstance(saved.get("history"), list):
            return cls([(int(step), float(loss)) for step, loss in saved["history"]])
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

    def stopped_record(self, rule: StopRule) -> dict[str, Any]:
        """The checkpoint stats' `stopped_early`: why the run ended before --max-steps."""
        since, (best_step, best_loss) = self.since_improvement(rule.min_delta), self.best
        record = {"patience": rule.patience, "best_step": best_step, "best_val_loss": best_loss,
                  "validations_since_best": since.validations}
        if rule.min_delta:  # (the lowest loss need not be the one the later ones were counted against)
            record.update(min_delta=rule.min_delta, improved_step=since.step, improved_val_loss=since.loss)
        return record

    def reason(self, rule: StopRule) -> str:
        since = self.since_improvement(rule.min_delta)
        bound = (f"{since.loss:.4f} (step {since.step})" if not rule.min_delta else
                 f"{since.loss - rule.min_delta:.4f} (step {since.step}'s {since.loss:.4f} less --min-delta {rule.min_delta:g})")
        return (f"the validation loss has not gone below {bound} for {since.validations} "
                f"validation{'' if since.validations == 1 else 's'} (--patience {rule.patience})")

    def to_train_further(self, rule: StopRule) -> str:
        """What a resume gives to train on from a stop."""
        validations = self.since_improvement(rule.min_delta).validations
        smaller = ", a smaller --min-delta" if rule.min_delta else ""
        return f"give a --patience above {validations}{smaller}, or 0, to train further"
