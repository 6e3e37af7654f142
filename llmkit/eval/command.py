"""`llmkit eval`: options in, eval artifact out, a table of results printed.

Heavy imports (torch, evaluate, sacrebleu) happen inside the function so `llmkit --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from llmkit.eval.config import EvalConfig
from llmkit.stage_command import argument, stage_command


def _evaluate(config: EvalConfig, *, checkpoints: Optional[list[Path]], out: Path, force: bool) -> None:
    """Evaluate a checkpoint (several: their ensemble) or a predictions file: perplexity, bpb,
    accuracy/F1, BLEU, chrF, ROUGE."""
    from llmkit.eval.stage import run_eval

    print_results(run_eval(checkpoints, config, out, force=force))


evaluate = stage_command(
    "eval", EvalConfig, _evaluate,
    arguments=[argument("checkpoints", "Checkpoint artifact to evaluate; several are evaluated as an ensemble (omit with --predictions).",
                        type=Optional[list[Path]], default=None)],
    out="Output eval artifact directory.",
)


def print_results(result) -> None:
    from rich.table import Table

    from llmkit.console import out

    if result.stats.get("benchmarks"):
        return print_benchmarks(result)
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    out.print(table)
    stats = result.stats
    if "tokens" in stats:
        out.print(f"scored {stats['documents']} documents: {stats['tokens']} tokens, {stats['words']} words, {stats['bytes']} bytes", markup=False)
    elif "examples" in stats:
        out.print(f"scored {stats['examples']} examples", markup=False)
    for line in result.formatted.values():
        out.print(line, soft_wrap=True, markup=False)
    for name, signature in result.signatures.items():
        out.print(f"{name} signature: {signature}", soft_wrap=True, markup=False)


def print_benchmarks(result) -> None:
    """One row per benchmark, as lm-evaluation-harness prints them: value ± standard error."""
    from rich.table import Table

    from llmkit.console import out

    table = Table()
    for column in ("benchmark", "examples", "shots", "acc ± stderr", "acc_norm ± stderr"):
        table.add_column(column, justify="left" if column == "benchmark" else "right")

    def cell(name: str, metric: str) -> str:
        value = result.metrics.get(f"{name}/{metric}")
        if value is None:
            return "-"
        stderr = result.metrics.get(f"{name}/{metric}_stderr")
        return f"{value:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")

    for name, info in result.stats["benchmarks"].items():
        table.add_row(name, str(info["examples"]), str(info["shots"]), cell(name, "acc"), cell(name, "acc_norm"))
    out.print(table)
    for name, info in result.stats["benchmarks"].items():  # scores of other questions than lm-eval's published ones
        if info.get("prompts_cut"):
            from llmkit.eval.choice import context_cut_note

            out.print(f"note: {name}: " + context_cut_note(info["prompts_cut"], info["examples"], info["context_length"],
                                                           shots=bool(info.get("shots"))))
        if info.get("choices_cut"):
            out.print(f"note: {name}: {info['choices_cut']} choice(s) longer than the model's context were scored on their "
                      "last tokens only (acc_norm still divides by the whole choice's length)")
        if info.get("split") is not None and info.get("lm_eval_split", info.get("split")) != info.get("split"):
            out.print(f"note: {name} scored on the {info['split']} split; lm-eval scores it on its {info['lm_eval_split']} "
                      "split (docs/eval.md, Data)")
