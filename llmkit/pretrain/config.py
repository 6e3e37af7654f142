"""The options of `llmkit pretrain` (docs/pretrain.md): declared once, here."""

from __future__ import annotations

from dataclasses import dataclass

from llmkit.options import Options, group, option, seed_option
from llmkit.train.options import DEFAULT_BATCH_TOKENS, DEVICES_PANEL, MODEL_PANEL, TRAINING_PANEL, Checkpointing, Devices, ModelChoice, \
    Numerics, Optimization, refuse_idle_optimizer_settings, refuse_pipeline_options_without_pp


@dataclass
class PretrainConfig(Options):
    # one run length or the other: the one typed beats the other from a --config file (llmkit.config.resolve)
    EITHER_OR = (("max_steps", "max_tokens"),)
    architecture: ModelChoice = group(ModelChoice, panel=MODEL_PANEL)
    seq_len: int | None = option(None, "Training sequence length (default: the context length).", panel=TRAINING_PANEL, range="[1, inf)")
    batch_tokens: int = option(DEFAULT_BATCH_TOKENS, "Global batch per optimizer step in tokens, over all devices.", panel=TRAINING_PANEL,
                               range="[1, inf)")
    max_steps: int | None = option(None, "Optimizer steps (default 1000).", panel=TRAINING_PANEL, range="[1, inf)")
    max_tokens: int | None = option(None, "Train on this many tokens instead of --max-steps (rounded up to whole steps).", panel=TRAINING_PANEL, range="[1, inf)")
    mlm_probability: float = option(0.15, "Share of tokens masked for --objective mlm.", panel=TRAINING_PANEL, range="(0, 1)")
    document_mask: bool = option(False, "Attend within each document only: a window's tokens never see the documents before "
                                 "theirs (block-causal attention, as Llama 3 pretrains; not with --tp/--pp).",
                                 flags=("--document-mask/--no-document-mask",), panel=TRAINING_PANEL, hashed_unless=False)
    optim: Optimization = group(Optimization, panel=TRAINING_PANEL)
    numerics: Numerics = group(Numerics, panel=TRAINING_PANEL)
    checkpoints: Checkpointing = group(Checkpointing, panel=TRAINING_PANEL)
    eval_tokens: int = option(32768, "Validation tokens per evaluation.", panel=TRAINING_PANEL, range="[1, inf)", runtime=True)
    seed: int = seed_option("Seed for initialisation, data order, masking and dropout.")
    devices: Devices = group(Devices, panel=DEVICES_PANEL)

    def __post_init__(self):
        super().__post_init__()
        if self.optim.lr is None:
            raise ValueError("lr must be given for pretraining")
        refuse_pipeline_options_without_pp(self.devices)
        if self.document_mask and (self.devices.tp > 1 or self.devices.pp > 1):
            raise ValueError("--document-mask is not built for a model split with --tp/--pp (their stages and shards take no "
                             "mask); train it with data parallelism (--gpus N, --nproc N), or leave --document-mask out")
        refuse_idle_optimizer_settings(self)
