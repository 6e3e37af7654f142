"""`llmkit clean`: the command is derived from CleanConfig (llmkit.stage_command)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from llmkit.corpus.config import CleanConfig, resolve
from llmkit.stage_command import argument, stage_command


def _clean(config: CleanConfig, *, inputs: Optional[List[str]], out: Path, force: bool) -> None:
    """Clean and de-duplicate text into a corpus artifact (Parquet shards + manifest)."""
    from llmkit import artifacts
    from llmkit.console import next_step, shell_word, wrote
    from llmkit.console import out as console_out
    from llmkit.corpus import pipeline
    from llmkit.corpus.report import stats_table

    path = pipeline.clean(inputs or [], out, config, force=force)
    art = artifacts.load(path, kind="corpus")
    console_out.print(stats_table(art.stats, str(path)))
    wrote(art)
    next_step(f"llmkit tokenizer train {shell_word(path)} -o TOKENIZER")


clean = stage_command(
    "clean", CleanConfig, _clean,
    arguments=[argument("inputs", "Files or folders (.txt .md .jsonl .json .csv .parquet, optionally .gz/.zst), or builtin:python-docs.",
                        type=Optional[List[str]], default=None)],
    out="Corpus artifact directory to write.",
    force="Replace OUT if it exists.",
    resolver=resolve,
)
