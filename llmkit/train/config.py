"""The options of `llmkit pretrain` (docs/pretrain.md): declared once, here."""

from __future__ import annotations

from dataclasses import dataclass

from llmkit.options import Options, group, option
from llmkit.train.options import DEVICES_PANEL, MODEL_PANEL, TRAINING_PANEL, Checkpointing, Devices, ModelChoice, Optimization


@dataclass
class PretrainConfig(Options):
    architecture: ModelChoice = group(ModelChoice, panel=MODEL_PANEL)
    seq_len: int | None = option(None, "Training sequence length (default: the context length).", panel=TRAINING_PANEL)
    batch_tokens: int = option(16384, "Global batch per optimizer step in tokens, over all devices.", panel=TRAINING_PANEL)
    max_steps: int | None = option(None, "Optimizer steps (default 1000).", panel=TRAINING_PANEL)
    max_tokens: int | None = option(None, "Train on this many tokens instead of --max-steps.", panel=TRAINING_PANEL)
    mlm_probability: float = option(0.15, "Share of tokens masked for --objective mlm.", panel=TRAINING_PANEL)
    optim: Optimization = group(Optimization, panel=TRAINING_PANEL)
    checkpoints: Checkpointing = group(Checkpointing, panel=TRAINING_PANEL)
    eval_tokens: int = option(32768, "Validation tokens per evaluation.", panel=TRAINING_PANEL)
    seed: int = option(0, "Seed for initialisation, data order, masking and dropout.")
    devices: Devices = group(Devices, panel=DEVICES_PANEL)

    def __post_init__(self):
        super().__post_init__()
        for name in ("batch_tokens", "eval_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_steps", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.optim.lr is None:
            raise ValueError("lr must be given for pretraining")
