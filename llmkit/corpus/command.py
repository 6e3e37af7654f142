"""`llmkit clean`: parse options, run the stage, print the report. No logic of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

_FILTERS = "Filters (thresholds in a --config file; see docs/clean.md)"
_DEDUP = "De-duplication"
_INPUT = "Input"


def clean(
    ctx: typer.Context,
    inputs: Annotated[
        Optional[List[str]],
        typer.Argument(
            help="Files or folders (.txt .md .jsonl .json .csv .parquet, optionally .gz/.zst), or builtin:python-docs.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Corpus artifact directory to write.")] = ...,
    preset: Annotated[
        str, typer.Option(help="default: your own text (normalise, clean up, dedup). web: + Gopher/C4/FineWeb rules and English only.")
    ] = "default",
    config_file: Annotated[
        Optional[Path], typer.Option("--config", help="TOML/YAML file with any option below and every threshold (a \\[clean] table).")
    ] = None,
    text_field: Annotated[
        Optional[str], typer.Option(help="Field/column holding the text; a,b = the first one a file has (default: 'text', or the only text field).", rich_help_panel=_INPUT)
    ] = None,
    doc_per: Annotated[
        str, typer.Option(help="Plain text: one document per file, line, or blank-line-separated block.", rich_help_panel=_INPUT)
    ] = "file",
    dataset: Annotated[
        Optional[str], typer.Option(help="Read a `datasets` data set: a local file/folder or a hub name.", rich_help_panel=_INPUT)
    ] = None,
    dataset_config: Annotated[
        Optional[str], typer.Option(help="The data set's configuration (subset) name.", rich_help_panel=_INPUT)
    ] = None,
    split: Annotated[str, typer.Option(help="The data set's split.", rich_help_panel=_INPUT)] = "train",
    skip_bad_lines: Annotated[
        bool, typer.Option("--skip-bad-lines", help="Skip malformed JSONL/CSV lines instead of stopping.", rich_help_panel=_INPUT)
    ] = False,
    fix_unicode: Annotated[bool, typer.Option(help="Repair mojibake (ftfy) and NFC-normalise.", rich_help_panel=_FILTERS)] = True,
    cleanup: Annotated[
        bool, typer.Option(help="Remove control characters, odd spaces, trailing blanks.", rich_help_panel=_FILTERS)
    ] = True,
    strip_html: Annotated[bool, typer.Option(help="Keep only the visible text of HTML.", rich_help_panel=_FILTERS)] = False,
    languages: Annotated[
        Optional[str], typer.Option(help="Keep only these languages, e.g. en,zh (py3langid). web preset: en.", rich_help_panel=_FILTERS)
    ] = None,
    min_language_score: Annotated[
        float, typer.Option(help="Minimum language probability.", rich_help_panel=_FILTERS)
    ] = 0.65,
    gopher_quality: Annotated[bool, typer.Option(help="Gopher quality rules (web preset).", rich_help_panel=_FILTERS)] = False,
    gopher_repetition: Annotated[
        bool, typer.Option(help="Gopher repetition rules (web preset).", rich_help_panel=_FILTERS)
    ] = False,
    c4: Annotated[bool, typer.Option(help="C4 line rules (web preset).", rich_help_panel=_FILTERS)] = False,
    fineweb: Annotated[bool, typer.Option(help="FineWeb line rules (web preset).", rich_help_panel=_FILTERS)] = False,
    min_words: Annotated[int, typer.Option(help="Gopher: minimum words (CJK: characters).", rich_help_panel=_FILTERS)] = 50,
    max_words: Annotated[int, typer.Option(help="Gopher: maximum words.", rich_help_panel=_FILTERS)] = 100_000,
    exact_dedup: Annotated[bool, typer.Option(help="Drop exact duplicates.", rich_help_panel=_DEDUP)] = True,
    near_dedup: Annotated[bool, typer.Option(help="Drop near duplicates (MinHash LSH).", rich_help_panel=_DEDUP)] = True,
    threshold: Annotated[
        Optional[float],
        typer.Option(help="Jaccard similarity to treat as duplicate; picks bands x rows minimising FP+FN.", rich_help_panel=_DEDUP),
    ] = None,
    ngram: Annotated[int, typer.Option(help="Words per shingle.", rich_help_panel=_DEDUP)] = 5,
    num_perm: Annotated[int, typer.Option(help="MinHash permutations.", rich_help_panel=_DEDUP)] = 112,
    bands: Annotated[int, typer.Option(help="LSH bands.", rich_help_panel=_DEDUP)] = 14,
    rows: Annotated[int, typer.Option(help="LSH rows per band.", rich_help_panel=_DEDUP)] = 8,
    keep_rejects: Annotated[
        bool, typer.Option("--keep-rejects", help="Write dropped documents and their reasons to OUT/rejects.jsonl.")
    ] = False,
    workers: Annotated[int, typer.Option(help="Worker processes (0: one per core). Output is the same for any value.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the MinHash permutations.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
) -> None:
    """Clean and de-duplicate text into a corpus artifact (Parquet shards + manifest)."""
    from llmkit import artifacts
    from llmkit.console import err, out
    from llmkit.corpus import pipeline, settings
    from llmkit.config import explicit_params
    from llmkit.corpus.report import stats_table
    from llmkit.runtime import worker_count

    cfg = settings.resolve(config_file, explicit_params(ctx))
    n_workers = worker_count(workers)
    path = pipeline.clean(
        inputs or [],
        output,
        cfg,
        dataset=dataset,
        dataset_config=dataset_config,
        split=split,
        workers=n_workers,
        force=force,
    )
    art = artifacts.load(path, kind="corpus")
    out.print(stats_table(art.stats, str(path)))
    err.print(f"[green]wrote[/] {path} (fingerprint {art.fingerprint[:12]})", soft_wrap=True)
