"""Fitting scaling laws to (parameters, tokens, loss) points, as Hoffmann et al. 2022 did.

Approach 3 (their eq. 2): L(N, D) = E + A / N^alpha + B / D^beta, fitted in log space,

    min over (a, b, e, alpha, beta) of  sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i )

with A = exp(a), B = exp(b), E = exp(e), delta = 1e-3, from every point of a grid of starting
values, keeping the best. Hoffmann et al. minimised with L-BFGS one start at a time; here every
start is one row of a batch minimised together by a damped Gauss-Newton method (llmkit/scaling/gauss_newton.py
says why; a test checks its optima against scipy's L-BFGS-B). Confidence intervals come from a
seeded bootstrap: the points resampled with replacement and refitted (from the full fit's
BOOTSTRAP_STARTS best distinct optima: from the best alone, a term the fit drove to 0 has no
gradient to leave 0 by), so the same points and seed give the same intervals. The fit runs with
one BLAS thread: its products are 5 x 5, and a thread pool's hand-offs cost more than they save.

Approach 2: for each FLOP budget, a parabola in log N through that budget's losses; its minimum
(kept only inside the sizes measured) is the budget's optimal N, its tokens read off the budget's
runs (log D against log N); then log N_opt = a log C + k across budgets (N_opt ∝ C^a), C = 6 N D
counted as the points count N (a sweep's budgets count non-embedding parameters; --count total
moves each run's C).

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
from llmkit.scaling import gauss_newton
from llmkit.scaling_law import EXPONENT_MAX, NAMES, Law

# Exponents are kept in [0, 5] (bounds of the minimisation): a negative one would say loss grows with size or data.
EXPONENT_BOUNDS = (0.0, EXPONENT_MAX)
CHUNK_VALUES = 2**21  # starts x points minimised together: about 80 MB per [rows, points, 5] array
# Hoffmann et al.'s grid of initialisations (Appendix D.2), and a coarser one for quick fits.
FULL_GRID = dict(alpha=np.arange(0.0, 2.01, 0.5), beta=np.arange(0.0, 2.01, 0.5), e=np.arange(-1.0, 1.01, 0.5),
                 a=np.arange(0.0, 25.1, 5.0), b=np.arange(0.0, 25.1, 5.0))
BOOTSTRAP_STARTS = 3
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


def _minimise(starts: np.ndarray, data: tuple[np.ndarray, ...], delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Each start's optimum and value: `data` is (log N, log D, log L), each [1, n] for one set of
    points or [len(starts), n] for a set per start. In batches of about CHUNK_VALUES rows x points,
    so that memory stays bounded whatever --bootstrap and the points ask (a row's result does not
    depend on the rows beside it)."""
    lower = np.array([-np.inf] * 3 + [EXPONENT_BOUNDS[0]] * 2)
    upper = np.array([np.inf] * 3 + [EXPONENT_BOUNDS[1]] * 2)
    chunk_rows = max(1, CHUNK_VALUES // data[0].shape[1])
    thetas, values = [], []
    for first in range(0, len(starts), chunk_rows):
        rows = slice(first, first + chunk_rows)
        chunk = data if data[0].shape[0] == 1 else tuple(x[rows] for x in data)
        theta, value = gauss_newton.minimise(starts[rows], *chunk, delta, lower, upper)
        thetas.append(theta)
        values.append(value)
    return np.concatenate(thetas), np.concatenate(values)


def _law(theta: np.ndarray) -> Law:
    a, b, e, alpha, beta = theta
    return Law(A=math.exp(a), B=math.exp(b), E=math.exp(e), alpha=float(alpha), beta=float(beta))


def fit_chinchilla(params: Sequence[float], tokens: Sequence[float], losses: Sequence[float], *, delta: float = 1e-3,
                   grid: str = "full", bootstrap: int = 100, seed: int = 0) -> ChinchillaFit:
    """Approach 3 with a bootstrap; raises a UserError when the points cannot determine the law."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _fit_chinchilla(params, tokens, losses, delta, grid, bootstrap, seed)


def _fit_chinchilla(params, tokens, losses, delta: float, grid: str, bootstrap: int, seed: int) -> ChinchillaFit:
    n, d, loss = (np.asarray(x, dtype=np.float64) for x in (params, tokens, losses))
    if len(n) < len(NAMES) + 1:
        raise UserError(f"{len(n)} points cannot determine the 5 constants of L(N, D); give at least {len(NAMES) + 1}")
    if len(set(zip(n.tolist(), d.tolist()))) < len(NAMES) or len(set(n.tolist())) < 2 or len(set(d.tolist())) < 2:
        raise UserError("the points need at least two model sizes and two token counts (and 5 distinct pairs) to fit a law")
    data = tuple(np.log(x)[None, :] for x in (n, d, loss))
    thetas, values = _minimise(_grid_starts(grid), data, delta)
    best = _first_best(values)
    fit = ChinchillaFit(law=_law(thetas[best]), objective=float(values[best]), starts=len(values))
    if bootstrap > 0:
        order = np.argsort(values, kind="stable")
        starts = _distinct(thetas[best], [(values[i], thetas[i]) for i in order], BOOTSTRAP_STARTS)
        rng = np.random.Generator(np.random.PCG64(seed))
        picks = np.stack([rng.integers(0, len(n), len(n)) for _ in range(bootstrap)])  # the draws of one refit at a time
        # a resample of fewer than 3 model sizes or token counts (where the points hold 3) cannot tell E from that
        # term (scaling_law.unmeasured_term): its refit's constants are any of a family, so it is left out
        needed = [min(3, len(np.unique(x))) for x in (n, d)]
        usable = np.array([len(np.unique(n[p])) >= needed[0] and len(np.unique(d[p])) >= needed[1] for p in picks])
        if not usable.any():  # (a few points and a small --bootstrap): no interval rather than a wrong one
            from llmkit.console import note

            note(f"none of the {bootstrap} bootstrap resamples holds {needed[0]} model sizes and {needed[1]} token "
                 "counts, so the fit has no intervals; raise --bootstrap")
            return fit
        picks = picks[usable]
        bootstrap = len(picks)
        per_refit = tuple(np.repeat(x[0][picks], len(starts), axis=0) for x in data)  # row r * len(starts) + s
        refit_thetas, refit_values = _minimise(np.tile(np.asarray(starts), (bootstrap, 1)), per_refit, delta)
        samples = []
        for refit in range(bootstrap):
            rows = slice(refit * len(starts), (refit + 1) * len(starts))
            law = _law(refit_thetas[rows][_first_best(refit_values[rows])])
            samples.append([law.A, law.B, law.E, law.alpha, law.beta])
        fit.samples = np.asarray(samples)
        fit.bootstrap = bootstrap
        if bootstrap < MIN_INTERVAL_REFITS:  # (the 2.5 and 97.5 percentiles of one refit were a "95% interval" of width 0)
            from llmkit.console import note

            note(f"{bootstrap} bootstrap refit(s) held the model sizes and token counts the points have: too few for 95% "
                 f"intervals (at least {MIN_INTERVAL_REFITS}), so the fit has none; raise --bootstrap")
        else:
            fit.intervals = {name: fit.interval_of(fit.samples[:, i]) for i, name in enumerate(NAMES)}
    return fit


MIN_INTERVAL_REFITS = 10  # refits below which their percentiles are no 95% interval (constants, budgets, predict)


def _grid_starts(grid: str) -> np.ndarray:
    """The grid's starting points as rows (a, b, e, alpha, beta), in Hoffmann et al.'s loop order."""
    axes = FULL_GRID if grid == "full" else COARSE_GRID
    return np.array([[a, b, e, alpha, beta] for alpha, beta, e, a, b in
                     itertools.product(axes["alpha"], axes["beta"], axes["e"], axes["a"], axes["b"])])


def _first_best(values: np.ndarray) -> int:
    """The reported optimum: in order, a start replaces the best so far only when it is lower by more
    than rounding (1e-15). Many starts end at one optimum, so the grid's order decides which of them
    is reported, the same one on every run."""
    best = 0
    for index in range(1, len(values)):
        if values[index] < values[best] - 1e-15:
            best = index
    return best


def _distinct(best: np.ndarray, optima: list[tuple[float, np.ndarray]], count: int) -> list[np.ndarray]:
    """`best`, then the next best optima that are not the same point (many starts end in one), `count` in all."""
    chosen: list[np.ndarray] = [best]
    for _, theta in optima:
        if all(np.max(np.abs(theta - other)) > 1e-3 for other in chosen):
            chosen.append(theta)
            if len(chosen) == count:
                break
    return chosen


@dataclass
class IsoFlopFit:
    """Approach 2: per budget the parabola's minimum, and the power law through them."""

    minima: list[dict[str, float]]  # per budget: budget, flops (6 N D at the minimum), params (N_opt), tokens, loss there
    exponent: float  # N_opt ∝ C^exponent (D_opt ∝ C^(1 - exponent))
    coefficient: float  # N_opt = coefficient * C^exponent
    unbracketed: list[float] = field(default_factory=list)  # budgets whose sizes do not surround their minimum

    def optimal(self, flops: float) -> tuple[float, float]:
        n = self.coefficient * flops**self.exponent
        return n, flops / (6.0 * n)


def fit_isoflop(params: Sequence[float], tokens: Sequence[float], budgets: Sequence[float],
                losses: Sequence[float]) -> IsoFlopFit | None:
    """Approach 2 over points grouped by FLOP budget; None when fewer than two budgets have a minimum
    inside three or more sizes (isoflop_minima says which budgets had one)."""
    minima, unbracketed = isoflop_minima(params, tokens, budgets, losses)
    if len(minima) < 2:
        return None
    exponent, intercept = np.polyfit(np.log([m["flops"] for m in minima]), np.log([m["params"] for m in minima]), 1)
    return IsoFlopFit(minima=minima, exponent=float(exponent), coefficient=float(math.exp(intercept)), unbracketed=unbracketed)


def isoflop_minima(params: Sequence[float], tokens: Sequence[float], budgets: Sequence[float],
                   losses: Sequence[float]) -> tuple[list[dict[str, float]], list[float]]:
    """Per FLOP budget of three sizes or more, its parabola's minimum where the sizes surround it;
    and the budgets whose vertex lies outside them, or, of three sizes, whose lowest measured loss is
    at the smallest or the largest (unbracketed). A parabola through three points has no residual:
    with the optimum below the sizes and 1% noise, a review's simulation took 242 of 1,000 such
    budgets for bracketed, their minima 1.8x too large. With more sizes the fit averages the noise,
    and the same rule dropped budgets whose optimum lay between the two smallest (451 kept of 500
    became 301, the kept ones more biased: the next review), so there it is not applied."""
    groups: dict[float, list[tuple[float, float, float]]] = {}
    for n, d, c, loss in zip(params, tokens, budgets, losses):
        groups.setdefault(float(c), []).append((math.log(n), math.log(d), float(loss)))
    minima, unbracketed = [], []
    for budget, rows in sorted(groups.items()):
        if len({n for n, _, _ in rows}) < 3:
            continue
        log_n, log_d, loss = (np.asarray(column) for column in zip(*rows))
        curve, slope, level = np.polyfit(log_n, loss, 2)
        best = -slope / (2 * curve) if curve > 0 else math.nan
        lowest = log_n[int(np.argmin(loss))]
        turned = len(set(log_n.tolist())) > 3 or log_n.min() < lowest < log_n.max()  # (three sizes: one each side of the lowest)
        if not (turned and log_n.min() <= best <= log_n.max()):  # a vertex outside the sizes measured is an extrapolation
            unbracketed.append(budget)
            continue
        tokens_slope, tokens_level = np.polyfit(log_n, log_d, 1)  # exact (slope -1) when C counts N as the points do
        n_opt, d_opt = math.exp(best), math.exp(tokens_level + tokens_slope * best)
        minima.append({"budget": budget, "flops": 6.0 * n_opt * d_opt, "params": n_opt, "tokens": d_opt,
                       "loss": float(level - slope**2 / (4 * curve))})
    return minima, unbracketed
