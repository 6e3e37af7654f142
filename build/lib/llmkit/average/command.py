"""`llmkit average CKPT... -o OUT [--weights ...]`: the command (llmkit/average/stage.py)."""

from __future__ import annotations

from pathlib import Path

from llmkit.average.config import AverageConfig
from llmkit.stage_command import argument, stage_command


def _average(config: AverageConfig, *, checkpoints: list[Path], out: Path, force: bool) -> None:
    """Average the weights of checkpoints of one architecture (a model soup) into a new checkpoint."""
    from llmkit.average.stage import average as run_average
    from llmkit.inspect_view import print_checkpoint_summary

    print_checkpoint_summary(run_average(checkpoints, out, config, force=force))


average = stage_command(
    "average", AverageConfig, _average,
    arguments=[argument("checkpoints", "Checkpoint artifacts of one architecture, tokenizer and task.", type=list[Path])],
    out="Output checkpoint artifact directory.",
)
