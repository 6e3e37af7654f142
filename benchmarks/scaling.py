"""Benchmark: `llmkit scaling fit`'s Chinchilla fit (approach 3) against the script a user would write.

    .venv/bin/python benchmarks/scaling.py                      # full grid, 100 bootstrap refits, 36 points
    .venv/bin/python benchmarks/scaling.py --grid coarse --bootstrap 20 --rounds 3
    .venv/bin/python benchmarks/scaling.py --write-points POINTS.csv   # the points, for `llmkit scaling fit POINTS.csv`

Sides, in one process, alternating over --rounds rounds (benchmarks/paired.py):
  llmkit     `llmkit.scaling.fit.fit_chinchilla`: every start of Hoffmann et al.'s grid, and every
             bootstrap refit from the fit's 3 best distinct optima, minimised together as rows of
             numpy arrays (llmkit/scaling/gauss_newton.py).
  scipy      the reference written here as Hoffmann et al. describe it and public replications do
             it: `scipy.optimize.minimize(method="L-BFGS-B")` from each start of the same grid, with
             the objective's analytic gradient (scipy's `logsumexp` and `huber`), exponents bounded
             to [0, 5], the best kept; the same bootstrap (the same seeded draws, 3 starts each).
Both run on one BLAS thread (threadpoolctl), as llmkit's fit does. The points are a known law
(Hoffmann et al.'s constants) on a 6 x 6 grid of sizes and token counts with 0.5 % noise; printed:
each side's wall and CPU time (and CPU time per fit: the grid's and each bootstrap refit), the
paired median ratio, and both optima (the objective and the
constants), which must agree.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TRUE = dict(A=406.4, B=410.7, E=1.69, alpha=0.34, beta=0.28)  # Hoffmann et al.'s constants


def points(noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(1e5, 3e7, 6), np.geomspace(1e6, 3e8, 6)))
    loss = TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]
    return n, d, loss * np.exp(rng.normal(0.0, noise, n.size))


def reference_objective(theta, log_n, log_d, log_l, delta: float = 1e-3):
    """The objective of one start, written with scipy's `logsumexp`, `softmax` and `huber`, and its gradient."""
    from scipy.special import huber, logsumexp, softmax

    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    residual = logsumexp(terms, axis=0) - log_l
    weights = softmax(terms, axis=0)
    slope = np.clip(residual, -delta, delta)
    grad = [(slope * weights[0]).sum(), (slope * weights[1]).sum(), (slope * weights[2]).sum(),
            -(slope * weights[0] * log_n).sum(), -(slope * weights[1] * log_d).sum()]
    return huber(delta, residual).sum(), np.array(grad)


def reference_minimise(start, data, delta: float = 1e-3) -> tuple[np.ndarray, float]:
    """One start through scipy's L-BFGS-B, exponents bounded to [0, 5]: (a, b, e, alpha, beta), objective."""
    from scipy.optimize import minimize

    result = minimize(reference_objective, start, args=(*data, delta), jac=True, method="L-BFGS-B",
                      bounds=[(None, None)] * 3 + [(0.0, 5.0)] * 2, options={"maxiter": 1000, "gtol": 1e-12, "ftol": 1e-15})
    return result.x, float(result.fun)


def scipy_fit(n, d, loss, grid: str, bootstrap: int, seed: int, delta: float = 1e-3) -> tuple[np.ndarray, float, np.ndarray]:
    """The per-start L-BFGS-B fit: (a, b, e, alpha, beta) of the best start, its objective, the bootstrap's thetas."""
    from llmkit.scaling.fit import BOOTSTRAP_STARTS, COARSE_GRID, FULL_GRID

    data = (np.log(n), np.log(d), np.log(loss))
    axes = FULL_GRID if grid == "full" else COARSE_GRID
    optima = [reference_minimise(np.array([a, b, e, alpha, beta]), data, delta)
              for alpha, beta, e, a, b in itertools.product(axes["alpha"], axes["beta"], axes["e"], axes["a"], axes["b"])]
    ranked = sorted(optima, key=lambda o: o[1])
    best, value = ranked[0]
    starts = [best]
    for theta, _ in ranked:
        if len(starts) == BOOTSTRAP_STARTS:
            break
        if all(np.max(np.abs(theta - other)) > 1e-3 for other in starts):
            starts.append(theta)
    rng = np.random.Generator(np.random.PCG64(seed))
    samples = []
    for _ in range(bootstrap):
        pick = rng.integers(0, len(n), len(n))
        samples.append(min((reference_minimise(start.copy(), tuple(x[pick] for x in data), delta) for start in starts), key=lambda o: o[1])[0])
    return best, value, np.asarray(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=("full", "coarse"), default="full")
    parser.add_argument("--bootstrap", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--noise", type=float, default=0.005)
    parser.add_argument("--write-points", type=Path, help="write the points as params,tokens,loss CSV and stop")
    args = parser.parse_args()
    if args.write_points:
        n, d, loss = points(args.noise)
        args.write_points.write_text("params,tokens,loss\n" + "".join(f"{a:.17g},{b:.17g},{c:.17g}\n" for a, b, c in zip(n, d, loss)))
        return

    from paired import alternate, median  # (benchmarks/ is on the path when run as a script; tests load this file for its reference)
    from threadpoolctl import threadpool_limits

    import scipy.optimize  # noqa: F401  (loaded before the limit: threadpoolctl limits only loaded BLAS libraries)

    from llmkit.scaling.fit import fit_chinchilla

    n, d, loss = points(args.noise)
    with threadpool_limits(limits=1):
        runs = alternate({
            "llmkit": lambda _: fit_chinchilla(n, d, loss, grid=args.grid, bootstrap=args.bootstrap, seed=0),
            "scipy": lambda _: scipy_fit(n, d, loss, args.grid, args.bootstrap, 0),
        }, args.rounds)
    ours, (theta, value, samples) = runs["llmkit"][-1].result, runs["scipy"][-1].result
    # The same work on both sides: llmkit drops a resample of fewer than 3 sizes or token counts (fit.py),
    # which scipy's side refits; the grid of points() gives none, and a change to it must not give any either.
    if ours.bootstrap != args.bootstrap or len(samples) != args.bootstrap:
        raise SystemExit(f"unequal work: llmkit refitted {ours.bootstrap} resamples, scipy {len(samples)}, of {args.bootstrap}")
    print(f"Chinchilla fit, {len(n)} points, {args.grid} grid ({ours.starts} starts), {args.bootstrap} bootstrap refits, "
          f"{args.rounds} rounds alternating, one BLAS thread")
    fits = 1 + args.bootstrap  # the grid's fit and the refits: the same on both sides
    for side, label in (("llmkit", "llmkit (batched Gauss-Newton)"), ("scipy", "scipy L-BFGS-B, start by start")):
        walls, cpus = [t.wall for t in runs[side]], [t.cpu for t in runs[side]]
        print(f"  {label:32s} wall {min(walls):8.2f} s best, CPU {min(cpus):8.2f} s best, "
              f"{min(cpus) / fits:8.4f} CPU-s per fit ({fits} fits: the grid's and {args.bootstrap} bootstrap refits)")
    wall = median([s.wall / o.wall for o, s in zip(runs["llmkit"], runs["scipy"])])
    cpu = median([s.cpu / o.cpu for o, s in zip(runs["llmkit"], runs["scipy"])])
    print(f"  speed ratio llmkit / scipy, paired median: wall {wall:.1f}x   CPU {cpu:.1f}x")
    law = ours.law
    print(f"  objective: llmkit {ours.objective:.15g}, scipy {value:.15g} (relative difference {ours.objective / value - 1:+.1e})")
    print(f"  llmkit A {law.A:.6g} B {law.B:.6g} E {law.E:.6g} alpha {law.alpha:.6g} beta {law.beta:.6g}")
    print(f"  scipy  A {math.exp(theta[0]):.6g} B {math.exp(theta[1]):.6g} E {math.exp(theta[2]):.6g} "
          f"alpha {theta[3]:.6g} beta {theta[4]:.6g}")
    # (the refits' percentiles, as the fit takes them; it reports them as an interval only from 10 refits on)
    mine = np.percentile(ours.samples[:, 3], [2.5, 97.5]) if args.bootstrap else None
    if args.bootstrap:
        theirs = np.percentile(samples[:, 3], [2.5, 97.5])
        print(f"  alpha's 2.5 and 97.5 percentiles over the refits: llmkit {mine[0]:.6g} .. {mine[1]:.6g}, "
              f"scipy {theirs[0]:.6g} .. {theirs[1]:.6g}")
    if not ours.objective <= value * (1 + 1e-9):
        raise SystemExit("llmkit's optimum is worse than scipy's")
    if not value <= ours.objective * (1 + 1e-6):  # (a scipy side that stopped short would flatter the ratio)
        raise SystemExit("scipy's optimum is worse than llmkit's by more than 1e-6: its fit did not converge")
    if args.bootstrap and not np.allclose(np.percentile(samples[:, 3], [2.5, 97.5]), mine, rtol=1e-3):
        raise SystemExit("alpha's 95% intervals differ between the two sides")


if __name__ == "__main__":
    main()
