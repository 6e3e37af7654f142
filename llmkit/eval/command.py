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
    accuracy/F1, BLEU, chrF, ROUGE, SQuAD exact match/F1."""
    from llmkit import artifacts
    from llmkit.console import wrote
    from llmkit.eval.stage import run_eval

    result = run_eval(checkpoints, config, out, force=force)
    print_results(result)
    wrote(artifacts.load(result.path, kind="eval"))


evaluate = stage_command(
    "eval", EvalConfig, _evaluate,
    arguments=[argument("checkpoints", "Checkpoint artifact to evaluate; several are evaluated as an ensemble (omit with --predictions).",
                        type=Optional[list[Path]], default=None)],
    out="Output eval artifact directory.",
)


def print_results(result) -> None:
    from rich.table import Table

    from llmkit.console import figure, out

    if result.stats.get("benchmarks"):
        return print_benchmarks(result)
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, figure(value))
    out.print(table)
    stats = result.stats
    if "tokens" in stats:
        documents = stats["documents"]
        out.print(f"scored {documents:,} document{'' if documents == 1 else 's'}: {stats['tokens']:,} tokens, "
                  f"{stats['words']:,} words, {stats['bytes']:,} bytes", markup=False)
    elif "examples" in stats:
        out.print(f"scored {stats['examples']:,} example{'' if stats['examples'] == 1 else 's'}", markup=False)
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
        for group, count in info.get("groups", {}).items():  # (MMLU's categories; its subjects are in metrics.json)
            table.add_row(f"  {group.removeprefix(name + '_')}", str(count), str(info["shots"]), cell(group, "acc"),
                          cell(group, "acc_norm"))
    out.print(table)
    for name in result.stats["benchmarks"]:  # (mrpc's F1, a generation task's exact match: beside the table)
        for metric in ("exact_match", "f1", "perplexity"):
            if f"{name}/{metric}" in result.metrics:
                out.print(f"{name} {metric}: {cell(name, metric)}", markup=False)
    _say_what_differs_from_lm_eval(result.stats["benchmarks"])


def _say_what_differs_from_lm_eval(benchmarks: dict) -> None:
    """Scores of other questions than lm-eval's published ones, one note of each kind for all the
    tasks (on stderr, as every note: they were printed with the table, cut at 80 columns and once a
    task, nine times the same words for `--task all`)."""
    from llmkit.console import note
    from llmkit.eval.choice import context_cut_note

    cut = {name: info for name, info in benchmarks.items() if info.get("prompts_cut")}
    if cut:
        first = next(iter(cut.values()))
        counts = (next(iter(cut)) if len(cut) == 1
                  else ", ".join(f"{name} {info['prompts_cut']} of {info['examples']}" for name, info in cut.items()))
        from llmkit.eval.benchmarks import TASKS

        items = "passages" if all(TASKS[name].continues for name in cut if name in TASKS) else "questions"
        note(f"{counts}: " + context_cut_note(sum(i["prompts_cut"] for i in cut.values()), sum(i["examples"] for i in cut.values()),
                                              first["context_length"], items=items,
                                              shots=any(i.get("shots") for i in cut.values())))
    choices = {name: info["choices_cut"] for name, info in benchmarks.items() if info.get("choices_cut")}
    if choices:
        note(f"{', '.join(f'{name} {count}' for name, count in choices.items())} choice(s) longer than the model's context "
             "were scored on their last tokens only (acc_norm still divides by the whole choice's length)")
    other_split: dict[tuple[str, str], list[str]] = {}
    for name, info in benchmarks.items():
        if info.get("split") is not None and info.get("lm_eval_split", info.get("split")) != info.get("split"):
            other_split.setdefault((info["split"], info["lm_eval_split"]), []).append(name)
    for (split, theirs), names in other_split.items():
        one = len(names) == 1
        note(f"{', '.join(names)} scored on the {split} split; lm-eval scores {'it' if one else 'them'} on {'its' if one else 'their'} "
             f"{theirs} split (docs/eval.md, Data)")
