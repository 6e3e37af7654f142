"""Fitting scaling laws to (parameters, tokens, loss) points, as Hoffmann et al. 2022 did.

Approach 3 (their eq. 2): L(N, D) = E + A / N^alpha + B / D^beta, fitted in log space,

    min over (a, b, e, alpha, beta) of  sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i )

with A = exp(a), B = exp(b), E = exp(e), delta = 1e-3, by L-BFGS from every point of a grid of
starting values, keeping the best. Confidence intervals come from a seeded bootstrap: the points
resampled with replacement and refitted (from the full fit's optimum), so the same points and
seed give the same intervals.

Approach 2: for each FLOP budget, a parabola in log N through that budget's losses; its minimum
is the budget's optimal N; then log N_opt = a log C + k across budgets (N_opt ∝ C^a).

The compute-optimal split of a budget C = 6 N D under approach 3 is N_opt = G (C/6)^(beta/(alpha+beta)),
D_opt = (C/6)^(alpha/(alpha+beta)) / G with G = (alpha A / (beta B))^(1/(alpha+beta)).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from llmkit.errors import UserError
from llmkit.scaling_law import NAMES, Law

# Exponents are kept in [0, 5] (L-BFGS-B bounds): a negative one would say loss grows with size or data.
EXPONENT_BOUNDS = (0.0, 5.0)
# Hoffmann et al.'s grid of initialisations (Appendix D.2), and a coarser one for quick fits.
FULL_GRID = dict(alpha=np.arange(0.0, 2.01, 0.5), beta=np.arange(0.0, 2.01, 0.5), e=np.arange(-1.0, 1.01, 0.5),
                 a=np.arange(0.0, 25.1, 5.0), b=np.arange(0.0, 25.1, 5.0))
COARSE_GRID = dict(alpha=np.array([0.25, 0.75]), beta=np.array([0.25, 0.75]), e=np.array([-1.0, 0.0, 1.0]),
                   a=np.array([0.0, 5.0, 10.0]), b=np.array([0.0, 5.0, 10.0]))


@dataclass
class ChinchillaFit:
    law: Law
    objective: float
    starts: int
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (2.5%, 97.5%)
    bootstrap: int = 0
    samples: np.ndarray | None = None  # [bootstrap, 5] refitted (A, B, E, alpha, beta)

    def interval_of(self, values: np.ndarray) -> tuple[float, float]:
        return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float):
    """Huber loss of the log-sum-exp residuals, and its gradient in (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    residual = top + np.log(total) - log_l
    weights /= total
    small = np.abs(residual) <= delta
    value = np.where(small, 0.5 * residual**2, delta * (np.abs(residual) - 0.5 * delta)).sum()
    slope = np.where(small, residual, delta * np.sign(residual))
    grad = np.array([
        (slope * weights[0]).sum(), (slope * weights[1]).sum(), (slope * weights[2]).sum(),
        -(slope * weights[0] * log_n).sum(), -(slope * weights[1] * log_d).sum(),
    ])
    return value, grad


def _minimise(start: np.ndarray, data: tuple[np.ndarray, ...], delta: float) -> tuple[np.ndarray, float]:
    try:
        from scipy.optimize import minimize
    except ImportError:
        raise UserError("fitting a scaling law needs scipy: pip install 'llmkit[scaling]'") from None

    bounds = [(None, None)] * 3 + [EXPONENT_BOUNDS] * 2
    result = minimize(_objective, start, args=(*data, delta), jac=True, method="L-BFGS-B", bounds=bounds,
                      options={"maxiter": 1000, "gtol": 1e-12, "ftol": 1e-15})
    return result.x, float(result.fun)


def _law(theta: np.ndarray) -> Law:
    a, b, e, alpha, beta = theta
    return Law(A=math.exp(a), B=math.exp(b), E=math.exp(e), alpha=float(alpha), beta=float(beta))


def fit_chinchilla(params: Sequence[float], tokens: Sequence[float], losses: Sequence[float], *, delta: float = 1e-3,
                   grid: str = "full", bootstrap: int = 100, seed: int = 0) -> ChinchillaFit:
    """Approach 3 with a bootstrap; raises a UserError when the points cannot determine the law."""
    n, d, loss = (np.asarray(x, dtype=np.float64) for x in (params, tokens, losses))
    if len(n) < len(NAMES) + 1:
        raise UserError(f"{len(n)} points cannot determine the 5 constants of L(N, D); give at least {len(NAMES) + 1}")
    if len(set(zip(n.tolist(), d.tolist()))) < len(NAMES) or len(set(n.tolist())) < 2 or len(set(d.tolist())) < 2:
        raise UserError("the points need at least two model sizes and two token counts (and 5 distinct pairs) to fit a law")
    data = (np.log(n), np.log(d), np.log(loss))
    axes = FULL_GRID if grid == "full" else COARSE_GRID
    best, best_value, starts = None, math.inf, 0
    for alpha, beta, e, a, b in itertools.product(axes["alpha"], axes["beta"], axes["e"], axes["a"], axes["b"]):
        theta, value = _minimise(np.array([a, b, e, alpha, beta]), data, delta)
        starts += 1
        if value < best_value - 1e-15:  # ties keep the first: the grid order makes it deterministic
            best, best_value = theta, value
    fit = ChinchillaFit(law=_law(best), objective=best_value, starts=starts)
    if bootstrap > 0:
        rng = np.random.Generator(np.random.PCG64(seed))
        samples = []
        for _ in range(bootstrap):
            pick = rng.integers(0, len(n), len(n))
            theta, _ = _minimise(best.copy(), tuple(x[pick] for x in data), delta)
            law = _law(theta)
            samples.append([law.A, law.B, law.E, law.alpha, law.beta])
        fit.samples = np.asarray(samples)
        fit.bootstrap = bootstrap
        fit.intervals = {name: fit.interval_of(fit.samples[:, i]) for i, name in enumerate(NAMES)}
    return fit


@dataclass
class IsoFlopFit:
    """Approach 2: per budget the parabola's minimum, and the power law through them."""

    minima: list[dict[str, float]]  # per budget: flops, params (N_opt), tokens, loss at the minimum
    exponent: float  # N_opt ∝ C^exponent (D_opt ∝ C^(1 - exponent))
    coefficient: float  # N_opt = coefficient * C^exponent

    def optimal(self, flops: float) -> tuple[float, float]:
        n = self.coefficient * flops**self.exponent
        return n, flops / (6.0 * n)


def fit_isoflop(params: Sequence[float], flops: Sequence[float], losses: Sequence[float]) -> IsoFlopFit | None:
    """Approach 2 over points grouped by FLOP budget; None when fewer than two budgets have three sizes."""
    groups: dict[float, list[tuple[float, float]]] = {}
    for n, c, loss in zip(params, flops, losses):
        groups.setdefault(float(c), []).append((float(n), float(loss)))
    minima = []
    for budget, rows in sorted(groups.items()):
        if len({n for n, _ in rows}) < 3:
            continue
        x = np.log([n for n, _ in rows])
        y = np.asarray([loss for _, loss in rows])
        curve, slope, level = np.polyfit(x, y, 2)
        if curve <= 0:
            continue  # no minimum inside: the budget's sizes do not bracket its optimum
        best = -slope / (2 * curve)
        minima.append({"flops": budget, "params": float(math.exp(best)), "tokens": budget / (6 * math.exp(best)),
                       "loss": float(level - slope**2 / (4 * curve))})
    if len(minima) < 2:
        return None
    exponent, intercept = np.polyfit(np.log([m["flops"] for m in minima]), np.log([m["params"] for m in minima]), 1)
    return IsoFlopFit(minima=minima, exponent=float(exponent), coefficient=float(math.exp(intercept)))
