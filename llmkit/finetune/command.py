"""`llmkit finetune`: the command is derived from FinetuneConfig (llmkit.stage_command)."""

from __future__ import annotations

from pathlib import Path

from llmkit.finetune.config import TASK_PANEL, FinetuneConfig
from llmkit.stage_command import argument, stage_command


def _finetune(config: FinetuneConfig, *, checkpoint: Path, data: Path, out: Path, force: bool, resume: bool) -> None:
    """Fine-tune a checkpoint: SFT with a chat or prompt template, or classification; full or LoRA."""
    from llmkit.finetune.stage import finetune as run_finetune
    from llmkit.inspect_view import print_checkpoint_summary

    from llmkit.train.launch import written_elsewhere

    path = run_finetune(checkpoint, data, out, config, resume=resume, force=force)
    if not written_elsewhere(path, config.devices):
        print_checkpoint_summary(path)


finetune = stage_command(
    "finetune", FinetuneConfig, _finetune,
    arguments=[
        argument("checkpoint", "Checkpoint artifact to start from (pretrain, import or an earlier finetune)."),
        argument("data", "Training records, .jsonl, .csv or .parquet (or a folder with train.jsonl), or a datasets "
                 "NAME[:CONFIG] (its train split).", flags=("--data",), panel=TASK_PANEL,
                 recorded="content hash (data_sha256)"),
    ],
    out="Run directory; becomes the checkpoint artifact at the end.",
    resume="Continue the run in -o from its newest complete checkpoint.",
    force="Replace an existing run directory.",
)
