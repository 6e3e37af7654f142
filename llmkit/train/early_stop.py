"""`--patience N` (and `--min-delta D`): a run stops once N validations in a row have not lowered
the validation loss (by more than D below the last loss that did: Keras' EarlyStopping and
Lightning's count, `loss + D < last`; D = 0, a tie is no improvement, as transformers'
EarlyStoppingCallback). Every checkpoint's progress keeps the run's validation losses whatever the
two are, so a resumed run stops where an uninterrupted one would have (at once, where these options
would have stopped it at a validation already made: the rule is replayed over the losses, as a
smaller --min-delta can stop a run earlier, its count starting from another loss), and one resumed
with a larger --patience (or 0) trains on from where a stricter rule stopped it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol


class StopRule(Protocol):  # (train.options.Checkpointing)
    patience: int
    min_delta: float


@dataclass(frozen=True)
class Since:
    """The validation that last counted as an improvement, and how many came after it."""
    loss: float
    step: int
    validations: int

    def after(self, step: int, loss: float, min_delta: float) -> Since:
        if math.isfinite(loss) and loss + min_delta < self.loss:
            return Since(loss, step, 0)
        return Since(self.loss, self.step, self.validations + 1)


def _counts(history: list[tuple[int, float]], min_delta: float, since: Since | None = None) -> Iterator[Since | None]:
    """The count after each loss of `history` (None before the first finite one), from `since`."""
    for step, loss in history:
        if since is None:
            since = Since(loss, step, 0) if math.isfinite(loss) else None
        else:
            since = since.after(step, loss, min_delta)
        yield since


@dataclass
class ValidationStall:
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, val_loss) of the run's validations
    # the count of each --min-delta asked so far, over the first n losses: one loss's work a validation
    _counted: dict[float, tuple[int, Since | None]] = field(default_factory=dict, compare=False, repr=False)

    def record(self, val_loss: float, step: int) -> None:
        self.history.append((step, val_loss))

    @property
    def best(self) -> tuple[int, float] | None:
        """The step and loss of the lowest validation (a tie keeps the earlier): where the best weights are."""
        finite = [(loss, step) for step, loss in self.history if math.isfinite(loss)]
        return (min(finite)[1], min(finite)[0]) if finite else None

    def since_improvement(self, min_delta: float = 0.0) -> Since | None:
        """None before the first finite validation. A loss counts as lower only where it and
        `min_delta` together stay below the last counted one (a slow drift adds up until it does)."""
        done, since = self._counted.get(min_delta, (0, None))
        for since in _counts(self.history[done:], min_delta, since):
            pass
        self._counted[min_delta] = (len(self.history), since)
        return since

    def stops(self, rule: StopRule) -> bool:
        since = self.since_improvement(rule.min_delta) if rule.patience > 0 else None
        return since is not None and since.validations >= rule.patience

    def first_stop(self, rule: StopRule) -> ValidationStall | None:
        """The losses up to the first validation at which `rule` would have stopped the run (a
        resume's check: not only at its last validation), or None where it never would have."""
        if rule.patience <= 0:
            return None
        for index, since in enumerate(_counts(self.history, rule.min_delta)):
            if since is not None and since.validations >= rule.patience:
                return ValidationStall(self.history[: index + 1])
        return None

    def longest_stall(self, min_delta: float) -> int:
        """The most validations in a row without a lower loss: a --patience above it stops nowhere."""
        return max((since.validations for since in _counts(self.history, min_delta) if since is not None), default=0)

    def to_progress(self) -> dict[str, Any]:
        return {"history": [[step, loss] for step, loss in self.history]}

    @classmethod
    def from_progress(cls, saved: dict[str, Any] | None, metrics: Path, step: int) -> ValidationStall:
        """The saved losses; for a checkpoint written before 2026-12-07, which has none (or only the
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

    def stopped_record(self, rule: StopRule, ran_to: ValidationStall | None = None) -> dict[str, Any]:
        """The checkpoint stats' `stopped_early`: why the run ended before --max-steps (`self`: the
        losses as they stood when the rule stopped it); `ran_to`: every loss the run made, where it
        went on past that (killed, resumed with a stricter rule), whose lowest is the best."""
        since = self.since_improvement(rule.min_delta)
        best_step, best_loss = (ran_to or self).best
        after_best = sum(1 for step, _ in (ran_to or self).history if step > best_step)
        record = {"patience": rule.patience, "best_step": best_step, "best_val_loss": best_loss,
                  "validations_since_best": after_best}
        if rule.min_delta:  # (the lowest loss need not be the one the later ones were counted against)
            record.update(min_delta=rule.min_delta, improved_step=since.step, improved_val_loss=since.loss,
                          validations_since_improved=since.validations)
        return record

    def reason(self, rule: StopRule) -> str:
        since = self.since_improvement(rule.min_delta)
        bound = (f"{since.loss:.4f} (step {since.step})" if not rule.min_delta else
                 f"{since.loss - rule.min_delta:.4f} (step {since.step}'s {since.loss:.4f} less --min-delta {rule.min_delta:g})")
        return (f"the validation loss has not gone below {bound} for {since.validations} "
                f"validation{'' if since.validations == 1 else 's'} (--patience {rule.patience})")

    def to_train_further(self, rule: StopRule) -> str:
        """What a resume gives to train on from a stop (`self`: every loss the run made)."""
        smaller = ", a smaller --min-delta" if rule.min_delta and self.first_stop(_Rule(rule.patience, 0.0)) is None else ""
        return f"give a --patience above {self.longest_stall(rule.min_delta)}{smaller}, or 0, to train further"


@dataclass(frozen=True)
class _Rule:
    patience: int
    min_delta: float
