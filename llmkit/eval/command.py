"""`llmkit eval`: options in, eval artifact out, a table of results printed.

Heavy imports (torch, evaluate, sacrebleu) happen inside the function so `llmkit --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

METRIC_HELP = (
    "Metric to compute; repeat or comma-separate. bleu, chrf, chrf++, rouge (rouge1/2/L/Lsum), "
    "perplexity (also word_perplexity, byte_perplexity, bpb), accuracy, accuracy_norm, precision, recall, f1."
)


def evaluate(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--output", "-o", help="Output eval artifact directory.")],
    checkpoint: Annotated[Optional[Path], typer.Argument(help="Checkpoint artifact to evaluate (omit with --predictions).")] = None,
    metric: Annotated[list[str], typer.Option("--metric", "-m", help=METRIC_HELP)] = ["perplexity"],  # noqa: B006
    data: Annotated[
        Optional[str],
        typer.Option("--data", "-d", help="Tokens artifact (val split), corpus, .txt/.jsonl/.parquet/.csv file, or datasets NAME[:CONFIG]."),
    ] = None,
    predictions: Annotated[Optional[Path], typer.Option("--predictions", "-p", help="Predictions file (.txt one per line, or JSONL): score without a model.")] = None,
    references: Annotated[list[Path], typer.Option("--references", "-r", help="Reference file(s) for --predictions; repeat for more reference sets.")] = [],  # noqa: B006
    text_field: Annotated[Optional[str], typer.Option("--field", help="JSONL field of the predictions / of the model input in --data.")] = None,
    reference_field: Annotated[Optional[str], typer.Option("--reference-field", help="JSONL field of the references (default: --field or target/summary/...).")] = None,
    label_field: Annotated[Optional[str], typer.Option("--label-field", help="Field of the gold label in --data (default: label/answer/gold).")] = None,
    labels: Annotated[Optional[str], typer.Option("--labels", help="Comma-separated label names, index order (default: the checkpoint's task.json).")] = None,
    split: Annotated[str, typer.Option("--split", help="Split of a datasets source.")] = "validation",
    bleu_tokenize: Annotated[str, typer.Option("--bleu-tokenize", help="sacrebleu tokenizer: 13a, zh, intl, char, none, flores101, flores200, ...")] = "13a",
    lowercase: Annotated[bool, typer.Option("--lowercase", help="Case-insensitive BLEU/chrF.")] = False,
    rouge_tokenize: Annotated[str, typer.Option("--rouge-tokenize", help="ROUGE tokenizer: default (rouge-score, Latin only), unicode (keeps every script), char (per character).")] = "default",
    stemmer: Annotated[bool, typer.Option("--stemmer", help="Porter-stem words for ROUGE.")] = False,
    prompt_template: Annotated[Optional[str], typer.Option("--prompt-template", help="Prompt built from each record, e.g. 'German: {source}\\nEnglish:' (\\n is a newline).")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate per example for BLEU/ROUGE.")] = 64,
    stop: Annotated[list[str], typer.Option("--stop", help="Stop string for generated predictions (default: newline; \\n is a newline).")] = ["\n"],  # noqa: B006
    rolling_context: Annotated[int, typer.Option("--rolling-context", help="Perplexity windows: minimum tokens of context per scored chunk (1 = lm-eval).")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences per forward pass.")] = 8,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate only the first N examples/documents.")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, mps or auto.")] = "auto",
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML/YAML file with eval options.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for every random choice.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output.")] = False,
) -> None:
    """Evaluate a checkpoint or a predictions file: perplexity, bpb, accuracy/F1, BLEU, chrF, ROUGE."""
    from llmkit import config as config_mod
    from llmkit.eval.stage import EvalConfig, run_eval

    explicit = config_mod.explicit_params(ctx)
    renamed = {"metric": "metrics"}
    explicit = {renamed.get(k, k): v for k, v in explicit.items()}
    if "labels" in explicit:
        explicit["labels"] = [s.strip() for s in (labels or "").split(",") if s.strip()]
    for key in ("predictions",):
        if key in explicit and explicit[key] is not None:
            explicit[key] = str(explicit[key])
    from llmkit.generate.prompts import unescape

    if "stop" in explicit:  # a shell passes "\n" literally: read it as a newline
        explicit["stop"] = [unescape(v) for v in explicit["stop"]]
    if explicit.get("prompt_template") is not None:
        explicit["prompt_template"] = unescape(explicit["prompt_template"])
    if "references" in explicit:
        explicit["references"] = [str(r) for r in references]
    cfg = config_mod.resolve(EvalConfig, file=config, section="eval", explicit=explicit)
    result = run_eval(checkpoint, cfg, out, force=force, device=_device(device))
    print_results(result)


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def print_results(result) -> None:
    from rich.table import Table

    from llmkit.console import out

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
