"""`llmkit scaling fit SWEEP|POINTS.csv -o FIT` and `llmkit scaling predict FIT` (docs/scaling.md)."""

from __future__ import annotations

from pathlib import Path

from llmkit.scaling.config import ScalingFitConfig, ScalingPredictConfig
from llmkit.stage_command import argument, stage_command


def _fit(config: ScalingFitConfig, *, source: list[Path], out: Path, force: bool) -> None:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta to a sweep or a CSV; recommend N and D for FLOP budgets."""

    from rich.table import Table

    from llmkit import artifacts
    from llmkit.console import figure, out as console, styled, wrote
    from llmkit.scaling.stage import fit_scaling, read_fit

    art = artifacts.load(fit_scaling(source, out, config, force=force), kind="scaling")
    fit = read_fit(art.path)
    law = fit["approach3"]
    table = Table(title=f"scaling law from {fit['points']} points", title_justify="left")
    for column in ("constant", "value", "95% interval"):
        table.add_column(column, justify="left" if column == "constant" else "right")
    for name in ("E", "A", "B", "alpha", "beta"):
        # (an undetermined law's refits are whatever the optimizer left: an "interval" there, which could exclude the
        # value itself, means nothing; fit.json keeps them)
        low_high = None if law.get("undetermined") else law["intervals"].get(name)
        table.add_row(name, f"{law[name]:.4g}", f"{low_high[0]:.4g} .. {low_high[1]:.4g}" if low_high else "-")
    if law["params_exponent"] is not None:
        table.add_row("N_opt ∝ C^a", f"{law['params_exponent']:.3f}", "")
    if fit["approach2"]:
        table.add_row("a (approach 2)", f"{fit['approach2']['params_exponent']:.3f}", "")
    console.print(table)
    if law.get("undetermined"):
        console.print(styled("warning:", "yellow", f" {law['undetermined']}; it recommends no split: widen the sweep (more "
                             "sizes, more tokens)"), soft_wrap=True)
    elif law["params_exponent"] is None:
        console.print(styled("warning:", "yellow", f" A {law['A']:.3g}, alpha {law['alpha']:.3g}, B {law['B']:.3g}, beta "
                             f"{law['beta']:.3g}: the points do not show the loss falling with both model size and data; "
                             "widen the sweep (more sizes, more tokens)"), soft_wrap=True)
    for row in (r for r in fit["budgets"] if "undetermined" not in r):
        interval = (f"; 95%: N {row['params_interval'][0]:.3g} .. {row['params_interval'][1]:.3g}, D "
                    f"{row['tokens_interval'][0]:.3g} .. {row['tokens_interval'][1]:.3g}" if "params_interval" in row else "")
        second = (f"; approach 2: N = {row['params_approach2']:.3g}, D = {row['tokens_approach2']:.3g}"
                  if row.get("params_approach2") is not None else "")
        console.print(f"C = {row['flops']:.3g} FLOPs: N = {row['params']:.3g} parameters, D = {row['tokens']:.3g} tokens "
                      f"({figure(row['tokens_per_param'], 1)} tokens per parameter), predicted loss {figure(row['loss'], 4)}"
                      f"{interval}{second}", soft_wrap=True)
        if row.get("outside"):
            from llmkit.console import note

            note(f"C = {row['flops']:.3g}: {'; '.join(row['outside'])}: an extrapolation, whose interval covers the "
                 "constants' noise, not the law being wrong out there")
    console.print(f"plots: {', '.join(str(art.path / p) for p in art.stats['plots'])}", soft_wrap=True)
    wrote(art)


def _predict(config: ScalingPredictConfig, *, fit: Path) -> None:
    """The loss a fitted law predicts for N parameters trained on D tokens."""
    from llmkit.console import figure, out as console
    from llmkit.scaling.stage import predict

    result = predict(fit, config.params, config.tokens)
    refits = (f", from {result['interval_refits']} of {result['refits']} refits"
              if result.get("interval_refits", 0) < result.get("refits", 0) else "")
    interval = (f" (95% interval {figure(result['interval'][0], 4)} .. {figure(result['interval'][1], 4)}{refits})"
                if "interval" in result else "")
    console.print(f"N = {config.params:.4g}, D = {config.tokens:.4g}: loss {figure(result['loss'], 4)}{interval}", soft_wrap=True)
    if "undetermined" in result:
        from llmkit.console import err, styled

        err.print(styled("warning:", "yellow", f" {result['undetermined']}, so this law cannot say how the loss moves "
                         "with it: away from the measured points the figure is not a prediction; widen the sweep"),
                  soft_wrap=True)
    if result.get("outside"):
        from llmkit.console import note

        note(f"{'; '.join(result['outside'])}: an extrapolation, whose interval covers the constants' noise, not the law "
             "being wrong out there")


fit = stage_command(
    "scaling", ScalingFitConfig, _fit,
    arguments=[argument("source", "A sweep artifact (llmkit sweep), or a CSV: params,tokens,loss or params,flops,loss; "
                        "or several, fitted together (sweeps of one tokens artifact: a grid extended by a second sweep).",
                        type=list[Path])],
    out="Output scaling artifact directory.",
)
predict = stage_command(
    "scaling-predict", ScalingPredictConfig, _predict,  # (its own table: [scaling] holds fit's options)
    arguments=[argument("fit", "A scaling artifact (llmkit scaling fit).")], force=None,
)
