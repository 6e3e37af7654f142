"""`llmkit pretrain`: the command is derived from PretrainConfig (llmkit.stage_command)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from llmkit.stage_command import argument, stage_command
from llmkit.pretrain.config import PretrainConfig
from llmkit.train.options import MODEL_PANEL


def _pretrain(config: PretrainConfig, *, tokens: Path, init_from: Optional[Path], out: Path, force: bool, resume: bool) -> None:
    """Pretrain a model from scratch on token shards (one CPU, --gpus N, or many nodes), or go on
    from a checkpoint's weights (--init-from)."""
    from llmkit.inspect_view import print_checkpoint_summary
    from llmkit.pretrain.stage import pretrain as run_pretrain
    from llmkit.train.launch import written_elsewhere

    path = run_pretrain(tokens, out, config, init_from=init_from, resume=resume, force=force)
    if written_elsewhere(path, config.devices):
        return
    print_checkpoint_summary(path)


pretrain = stage_command(
    "pretrain", PretrainConfig, _pretrain,
    arguments=[
        argument("tokens", "Tokens artifact (from `llmkit tokenize`)."),
        argument("init_from", "Checkpoint to continue from (its weights and model; the same tokenizer as the tokens).",
                 type=Optional[Path], default=None, flags=("--init-from",), panel=MODEL_PANEL),
    ],
    out="Run directory; becomes the checkpoint artifact at the end.",
    resume="Continue the run in -o from its newest complete checkpoint.",
    force="Replace an existing run directory.",
)
