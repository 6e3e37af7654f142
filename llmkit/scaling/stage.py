"""`llmkit scaling fit`: a scaling-law artifact from a sweep or a CSV; `predict`: a loss from it.

The artifact (kind `scaling`): fit.json (approach 3's constants with bootstrap intervals, approach
2 when the points allow it, the compute-optimal split of every --budget), points.csv (what was
fitted) and plots/ (loss against N, against D, IsoFLOP curves, the frontier).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llmkit import artifacts, outputs
from llmkit.scaling.config import ScalingFitConfig
from llmkit.scaling.fit import MIN_INTERVAL_REFITS, fit_chinchilla, fit_isoflop, isoflop_minima
from llmkit.scaling_law import FIT_FILE, Law, fit_document, fitted_points, outside_the_points, unmeasured_term
from llmkit.scaling.points import read_sources, source_identity



def _budget_row(fit, isoflop, budget: float, measured: tuple[np.ndarray, ...]) -> dict[str, Any]:
    if not fit.law.determined:
        return {"flops": budget, "undetermined": fit.law.undetermined or "the fitted law does not fall with both N and D"}
    n_opt, d_opt = fit.law.optimal(budget)
    row = {"flops": budget, "params": n_opt, "tokens": d_opt, "tokens_per_param": d_opt / n_opt,
           "loss": float(fit.law.loss(n_opt, d_opt))}
    # as predict says it: a budget's split far from the points is the law extrapolated (with bootstrap
    # intervals that looked as sure as a measured one's: C = 1 FLOP gave "N = 0.625 parameters")
    outside = outside_the_points(n_opt, d_opt, measured)
    if outside:
        row["outside"] = outside
    if fit.samples is not None:  # the same quantities under each bootstrap refit that the points determine
        laws = [Law(*sample) for sample in fit.samples]
        draws = np.array([law.optimal(budget) for law in laws if law.determined and not unmeasured_term(law, *measured)])
        if len(draws) >= MIN_INTERVAL_REFITS:  # (the percentiles of a handful are no 95% interval)
            row["params_interval"] = [float(np.percentile(draws[:, 0], 2.5)), float(np.percentile(draws[:, 0], 97.5))]
            row["tokens_interval"] = [float(np.percentile(draws[:, 1], 2.5)), float(np.percentile(draws[:, 1], 97.5))]
        row["interval_refits"] = len(draws)  # of the bootstrap's: those whose points determine a split
    if isoflop is not None:
        row["params_approach2"], row["tokens_approach2"] = isoflop.optimal(budget)
    return row


def _why_no_isoflop(budgeted: list) -> dict:
    """Why approach 2 was not fitted (its record was only null): no FLOP budgets, or fewer than two
    with a minimum inside their sizes, and which budgets' vertices fell outside them."""
    if not budgeted:
        return {"reason": "the points carry no FLOP budgets (a --flops sweep gives them)", "unbracketed_budgets": []}
    minima, unbracketed = isoflop_minima(*zip(*[(p.params, p.tokens, p.budget, p.loss) for p in budgeted]))
    return {"reason": f"{len(minima)} budget(s) with a minimum inside their sizes (three sizes or more); the line through "
                      "the minima needs two", "minima": minima, "unbracketed_budgets": unbracketed}


def fit_scaling(sources: Sequence[Path | str] | Path | str, out: Path | str, config: ScalingFitConfig, *,
                force: bool = False) -> Path:
    """`sources`: a sweep or a CSV, or several (`read_sources`)."""
    from llmkit.charts import require_matplotlib
    from llmkit.scaling.plots import write_plots

    require_matplotlib()
    sources = [Path(s) for s in ([sources] if isinstance(sources, (str, Path)) else sources)]
    points = read_sources(sources, "total" if config.count == "total" else "non_embedding")
    out = outputs.check_output(out, force, inputs=sources, writes="scaling")
    measured = tuple(np.array([getattr(p, name) for p in points]) for name in ("params", "tokens", "loss"))
    fit = fit_chinchilla(*measured, delta=config.huber_delta, grid=config.grid, bootstrap=config.bootstrap, seed=config.seed)
    fit.law.undetermined = unmeasured_term(fit.law, *measured)
    budgeted = [p for p in points if p.budget]
    isoflop = fit_isoflop(*zip(*[(p.params, p.tokens, p.budget, p.loss) for p in budgeted])) if budgeted else None
    exponent = fit.law.beta / (fit.law.alpha + fit.law.beta) if fit.law.determined else None
    document = {
        "law": "L(N, D) = E + A / N^alpha + B / D^beta",
        "approach3": {
            **fit.law.as_dict(), "undetermined": fit.law.undetermined,  # ("": the points determine a split)
            "intervals": {k: list(v) for k, v in fit.intervals.items()}, "huber_objective": fit.objective,
            "starts": fit.starts, "bootstrap": fit.bootstrap,
            "params_exponent": exponent, "tokens_exponent": None if exponent is None else 1 - exponent,  # N_opt ∝ C^a
            "bootstrap_samples": fit.samples.tolist() if fit.samples is not None else [],  # rows of (A, B, E, alpha, beta)
        },
        "approach2": None if isoflop is None else {"params_exponent": isoflop.exponent, "tokens_exponent": 1 - isoflop.exponent,
                                                   "coefficient": isoflop.coefficient, "minima": isoflop.minima,
                                                   "unbracketed_budgets": isoflop.unbracketed},
        "budgets": [_budget_row(fit, isoflop, b, measured) for b in config.budget],
        "approach2_not_fitted": None if isoflop is not None else _why_no_isoflop(budgeted),
        "points": len(points),
        # a sweep's runs counted so; a CSV's numbers as given, which --count says they count
        "parameters_counted": config.count if all(s.is_dir() for s in sources) else f"{config.count} (the CSV's, as --count says)",
    }
    with artifacts.create(out, "scaling", force=force, inputs=sources) as build:
        (build.dir / FIT_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(["name", "params", "tokens", "flops", "budget", "loss"])
        writer.writerows([p.name, p.params, p.tokens, p.flops, p.budget or "", p.loss] for p in points)
        (build.dir / "points.csv").write_text(table.getvalue(), encoding="utf-8")
        plots = write_plots(points, fit, isoflop, list(config.budget), build.dir / "plots")
        recorded = config.hashed()
        csvs = []
        # in one order whatever the command's (by what each is: `fit a b` is the artifact `fit b a` is); one source: role
        # "sweep" / points_sha256, as before several were taken
        for index, source in enumerate(sorted(sources, key=source_identity)):
            if source.is_dir():
                build.add_input("sweep" if len(sources) == 1 else f"sweep:{index}", artifacts.load(source, kind="sweep"))
            else:
                csvs.append(artifacts.sha256_file(source))
        if csvs:
            recorded["points_sha256"] = csvs[0] if len(sources) == 1 else csvs
        build.config = recorded
        build.seed = config.seed
        build.stats = {"alpha": fit.law.alpha, "beta": fit.law.beta, "E": fit.law.E, "points": len(points),
                       "params_exponent": exponent, "plots": [f"plots/{p.name}" for p in plots],
                       "budgets": document["budgets"]}
    return Path(out)


def read_fit(path: Path | str) -> dict[str, Any]:
    return fit_document(artifacts.load(path, kind="scaling"))


def predict(path: Path | str, params: float, tokens: float) -> dict[str, float]:
    """The fitted loss at (N, D), its bootstrap interval when the fit has one, and `undetermined`
    when the points did not measure one of the law's terms (the loss then follows N or D only as
    far as the measured points did)."""
    art = artifacts.load(path, kind="scaling")
    document = fit_document(art)  # (read once: the law and its refits)
    law = Law.of(art, document)  # (first: it says what is wrong with a document that holds no law)
    fit = document["approach3"]
    result = {"params": params, "tokens": tokens, "loss": float(law.loss(params, tokens))}
    if law.undetermined:
        result["undetermined"] = law.undetermined
    measured = fitted_points(art.file("points.csv")) if "points.csv" in art.manifest.files else None
    samples = fit.get("bootstrap_samples") or []
    if samples and not law.undetermined:  # (an undetermined law's refits are whatever the optimizer left: no interval)
        # the refits the points determine, as the budgets' intervals take them (one whose exponent stopped at its
        # bound has any coefficient, and moves the interval anywhere away from the points)
        laws = [Law(*sample) for sample in samples]
        kept = [law for law in laws if law.determined and (measured is None or not unmeasured_term(law, *measured))]
        if len(kept) >= MIN_INTERVAL_REFITS:  # (2.5 and 97.5 percentiles of a handful are no 95% interval)
            losses = [sample.loss(params, tokens) for sample in kept]
            result["interval"] = [float(np.percentile(losses, 2.5)), float(np.percentile(losses, 97.5))]
        result["interval_refits"], result["refits"] = len(kept), len(samples)
    if measured is not None:
        result["outside"] = outside_the_points(params, tokens, measured)
    return result



