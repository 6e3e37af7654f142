"""A fitted scaling law, the typed record that crosses stages: `llmkit scaling fit` writes it (its
artifact's fit.json, approach 3), `llmkit scaling predict` and `llmkit plan --scaling` read it.

L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 2). At a budget C = 6 N D it is
lowest where alpha A / N^alpha = beta B / D^beta; the fit itself is llmkit/scaling/fit.py.
"""

from __future__ import annotations

import json
import math
from typing import Any
from dataclasses import dataclass

import numpy as np

from llmkit.errors import UserError

FIT_FILE = "fit.json"
NAMES = ("A", "B", "E", "alpha", "beta")
EXPONENT_FLOOR = 1e-4
# A term that moves the loss by less than this share of it across the measured points was not
# measured: L-BFGS can shrink A (or B) towards 0 where a sweep's points cannot tell the two apart.
TERM_FLOOR = 1e-3
# The fit keeps the exponents at or below this (llmkit/scaling/fit.py). One that ends there was
# stopped by the bound, not by the points: a term the points do not show (measured: a sweep whose
# loss does not depend on N gave alpha 5 with A 3e32, and a split below the smallest size).
EXPONENT_MAX = 5.0
# Nor was a term measured that moves the loss by no more than this many times the points' scatter
# about the fit (the residuals' standard error, over the points less the 5 constants fitted: with 6
# points, 1 left, their plain root mean square is about 0.4 of the noise, and a law of points whose
# loss ignores N passed as determined in 60 of 300 draws, 28 with this): noise alone can be fitted as such a term
# (measured: points whose loss ignores N, with 0.2 % noise, fitted alpha 5e-4 with A taking E's
# place, A/N^alpha moving the loss 3e-3, past the term floor, and a "split" of 2 parameters).
SCATTER_MULTIPLE = 2.0
FITTED_CONSTANTS = 5  # E, A, alpha, B, beta


@dataclass
class Law:
    """L(N, D) = E + A / N^alpha + B / D^beta."""

    A: float
    B: float
    E: float
    alpha: float
    beta: float
    undetermined: str = ""  # why the points measured do not determine a split ("" when they do)

    def loss(self, params: float | np.ndarray, tokens: float | np.ndarray):
        return self.E + self.A / np.power(params, self.alpha) + self.B / np.power(tokens, self.beta)

    @property
    def determined(self) -> bool:
        """Loss falls with both N and D: there is a compute-optimal split (exponents above the floor, and
        both terms present: a fit with A = 0 says the model size does not matter at all)."""
        if self.undetermined:
            return False
        if not (self.alpha > EXPONENT_FLOOR and self.beta > EXPONENT_FLOOR and self.A > 0 and self.B > 0):
            return False
        return 0 < (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta)) < math.inf

    def optimal(self, flops: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimising the loss at C = 6 N D."""
        if self.undetermined:
            raise UserError(f"{self.undetermined}, so the fit gives no compute-optimal split; widen the sweep")
        if not self.determined:
            raise UserError(f"the fit has alpha {self.alpha:.3g} and beta {self.beta:.3g}: the points do not show the loss "
                            "falling with both model size and data, so no split of a budget is optimal; widen the sweep")
        total = self.alpha + self.beta
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / total)
        n = g * (flops / 6.0) ** (self.beta / total)
        if not 0 < n < math.inf:
            term, grows = ("A", "model size") if n == 0 else ("B", "data")
            raise UserError(f"the fit has {term} = {getattr(self, term):.3g}: the points show no gain from {grows}, so "
                            "no split of a budget is optimal; widen the sweep (more sizes or larger budgets)")
        return n, flops / (6.0 * n)

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in NAMES}

    def tokens_for(self, params: float) -> float:
        """Compute-optimal training tokens for a model of `params` (the D where this N is optimal)."""
        if self.undetermined:
            raise UserError(f"{self.undetermined}, so the fit gives no compute-optimal split; widen the sweep")
        if not self.determined:
            raise UserError(f"the fit has alpha {self.alpha:.3g}, beta {self.beta:.3g}, A {self.A:.3g}, B {self.B:.3g}: the "
                            "points do not show the loss falling with both model size and data, so it gives no "
                            "compute-optimal split; widen the sweep")
        return (self.beta * self.B * params**self.alpha / (self.alpha * self.A)) ** (1.0 / self.beta)

    @classmethod
    def of(cls, art, document: dict[str, Any] | None = None) -> "Law":
        """The law of a `scaling` artifact (approach 3's constants), from its fit.json (`document`
        where the caller has read it already)."""
        document = fit_document(art) if document is None else document
        try:
            fit = document["approach3"]
            law = cls(**{name: float(fit[name]) for name in NAMES}, undetermined=str(fit.get("undetermined") or ""))
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{art.file(FIT_FILE)} does not hold a fitted law ({exc}); run llmkit scaling fit again") from None
        if "undetermined" not in fit and "points.csv" in art.manifest.files:  # made before the check: checked on its points
            law.undetermined = unmeasured_term(law, *fitted_points(art.file("points.csv")))
        return law


def fit_document(art) -> dict[str, Any]:
    """A `scaling` artifact's fit.json, hashed as it is read: a plan or prediction from a law edited
    since it was fitted would pass for the fit's (loading checks sizes only)."""
    from llmkit.artifacts import checked_as_read

    path = art.file(FIT_FILE)
    try:
        with checked_as_read(path):
            document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # (a UnicodeDecodeError is a ValueError)
        raise UserError(f"{path} does not hold a fitted law ({exc}); run llmkit scaling fit again") from None
    if not isinstance(document, dict):
        raise UserError(f"{path} does not hold a fitted law (no JSON object); run llmkit scaling fit again")
    return document


def outside_the_points(params: float, tokens: float, measured: tuple[np.ndarray, ...]) -> list[str]:
    """How far (N, D), and its compute 6ND, lie outside the fitted points' range, where more than a
    factor of 2: a law's interval covers its constants' noise, not the law being wrong out there.
    (Compute too since 2026-12-07: a budget 100x the largest measured, at an N and a D each within
    the points' ranges, was said without a word.)"""
    said = []
    for value, values, what in ((params, measured[0], "N"), (tokens, measured[1], "D"),
                                (6 * params * tokens, 6 * measured[0] * measured[1], "C = 6ND")):
        low, high = float(values.min()), float(values.max())
        if value > 2 * high:
            said.append(f"{what} is {np.log10(value) - np.log10(high):.1f} decades above the largest fitted ({high:.3g})")
        elif value < low / 2:  # (differences of logs: a ratio of 1e300 and 1e-300 was inf decades)
            said.append(f"{what} is {np.log10(low) - np.log10(value):.1f} decades below the smallest fitted ({low:.3g})")
    return said


def fitted_points(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(params, tokens, loss) of a scaling artifact's points.csv."""
    import csv

    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    try:
        if not rows:
            raise ValueError("no points")
        return tuple(np.array([float(row[name]) for row in rows]) for name in ("params", "tokens", "loss"))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} is damaged ({exc}); run llmkit scaling fit again") from None


def unmeasured_term(law: Law, params: np.ndarray, tokens: np.ndarray, losses: np.ndarray) -> str:
    """Why the points do not determine `law`'s split ("" when they do): the model-size or the data
    term changes the fitted loss by less than TERM_FLOOR of the loss, or than SCATTER_MULTIPLE
    times the points' scatter about the fit, across the measured points, so its constants (and
    every split computed from them) are whatever the optimizer or the noise left there. Or the
    points hold fewer than 3 model sizes (token counts): a term and E, a constant, coefficient and
    exponent, from 2 values is any of a family of curves through them (6 exact points of 3 sizes
    and 2 token counts fitted to 1e-31 with the wrong E, B and beta)."""
    for values, what in ((params, "model sizes"), (tokens, "token counts")):
        distinct = len(np.unique(np.asarray(values, dtype=float)))
        if distinct < 3:
            return (f"the points hold {distinct} {what}: E and a power law's coefficient and exponent need 3 or more, so "
                    "the fit cannot tell them apart")
    for exponent, value in (("alpha", law.alpha), ("beta", law.beta)):
        if value >= EXPONENT_MAX * (1 - 1e-6):
            return (f"the fitted {exponent} sits at its bound {EXPONENT_MAX:g} (A {law.A:.3g}, alpha {law.alpha:.3g}, "
                    f"B {law.B:.3g}, beta {law.beta:.3g}): the points do not show what that term does")
    floor = TERM_FLOOR * float(np.min(losses))
    free = max(1, len(losses) - FITTED_CONSTANTS)  # (the fit refuses fewer than 6 points)
    scatter = float(np.sqrt(np.sum((losses - law.loss(params, tokens)) ** 2) / free))
    for term, what in ((law.A / np.power(params, law.alpha), "model sizes"), (law.B / np.power(tokens, law.beta), "token counts")):
        spread = float(np.ptp(term))
        if spread < max(floor, SCATTER_MULTIPLE * scatter):
            within = (f", within the points' scatter about it ({scatter:.2g}, the residuals' standard error)"
                      if spread >= floor else "")
            return (f"the fitted law changes the loss by {spread:.2g} across the measured {what}{within} (A {law.A:.3g}, "
                    f"alpha {law.alpha:.3g}, B {law.B:.3g}, beta {law.beta:.3g}): the points do not show what that term does")
    return ""
