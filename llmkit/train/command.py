"""`llmkit pretrain`: the command is derived from PretrainConfig (llmkit.stage_command)."""

from __future__ import annotations

from pathlib import Path

from llmkit.stage_command import argument, stage_command
from llmkit.train.config import PretrainConfig


def _pretrain(config: PretrainConfig, *, tokens: Path, out: Path, force: bool, resume: bool) -> None:
    """Pretrain a model from scratch on token shards (one CPU, --gpus N, or many nodes)."""
    from llmkit.inspect_view import print_checkpoint_summary
    from llmkit.train.pretrain import pretrain as run_pretrain

    print_checkpoint_summary(run_pretrain(tokens, out, config, resume=resume, force=force))


pretrain = stage_command(
    "pretrain", PretrainConfig, _pretrain,
    arguments=[argument("tokens", "Tokens artifact (from `llmkit tokenize`).")],
    out="Run directory; becomes the checkpoint artifact at the end.",
    resume="Continue the run in -o from its newest complete checkpoint.",
    force="Replace an existing run directory.",
)
