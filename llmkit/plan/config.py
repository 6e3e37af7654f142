"""The options of `llmkit plan` (docs/parallel.md): the model flags and the layout of `llmkit
pretrain` (shared groups, declared once in llmkit/train/options.py), plus the hardware."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import UsageError
from llmkit.hardware import BY_KEY
from llmkit.options import Options, flat_options, group, option
from llmkit.train.options import (DEVICES_PANEL, MODEL_PANEL, TRAINING_PANEL, KeptWeightCopies, ModelChoice,
                                  ModelParallelism, Numerics, OptimizerChoice, Placement, refuse_pipeline_options_without_pp)

HARDWARE = "Hardware and estimate"
GPU_CHOICES = tuple(BY_KEY) + ("cpu",)
DEFAULT_VOCAB = 50257  # GPT-2's tokenizer, as the default --model gpt2 has


@dataclass
class PlanConfig(Options):
    PLANS = "pretrain"  # a --config file's [pretrain] table: its shared options, beneath plan's own (config.resolve)
    # plan's options that stand in for pretrain's: a [pretrain] table's are not read beside them
    STANDS_FOR = {"hf_config": frozenset(option.name for option in flat_options(ModelChoice)), "nproc": frozenset({"gpus"})}
    model: ModelChoice = group(ModelChoice, panel=MODEL_PANEL, model="gpt2")
    hf_config: Path | None = option(None, "A transformers config.json (GPT-2, Llama, Mistral or Qwen2 style), or a model folder holding one, "
                                    "instead of --model.",
                                    panel=MODEL_PANEL)
    vocab_size: int | None = option(None, f"Vocabulary size; pretrain takes it from the tokenizer, so give your tokenizer's to plan a "
                                    f"config.json's shape with it (default: {DEFAULT_VOCAB}, or the --hf-config's).",
                                    range="[1, inf)", panel=MODEL_PANEL)
    placement: Placement = group(Placement, panel=DEVICES_PANEL, gpus=1,
                                 help={"gpus": "Devices per node (GPUs, or CPU processes with --gpu cpu).",
                                       "compile": "Plan a torch.compile run (on a CPU it has the usual head and loss, whose "
                                                  "logits are whole, not the fused head's chunks)."})
    nproc: int | None = option(None, "CPU processes, as pretrain's --nproc (the same as --gpus N with --gpu cpu).",
                               range="[1, inf)", panel=DEVICES_PANEL)
    parallelism: ModelParallelism = group(ModelParallelism, panel=DEVICES_PANEL)
    seq_len: int | None = option(None, "Training sequence length (default: the context length).", range="[1, inf)", panel=DEVICES_PANEL)
    batch_tokens: int | None = option(None, "Global batch in tokens, for the step time (default: one micro-batch per data-parallel rank and "
                                      "pipeline micro-batch).",
                                      range="[1, inf)", panel=DEVICES_PANEL)
    optim: OptimizerChoice = group(OptimizerChoice, panel=TRAINING_PANEL, help={
        "optimizer": "adamw (two fp32 moments: 8 bytes a parameter) or sgd (its momentum: 4 bytes), as pretrain's --optimizer."})
    copies: KeptWeightCopies = group(KeptWeightCopies, panel=TRAINING_PANEL, help={
        "ema": "Plan a run keeping a moving average of the weights (--ema DECAY): one more fp32 copy on every device.",
        "keep_best": "Plan a run keeping its best weights (--keep-best): one more fp32 copy, in the first process's host "
                     "memory."})
    numerics: Numerics = group(Numerics, panel=HARDWARE)
    gpu: str = option("h100", "Device type: " + ", ".join(GPU_CHOICES) + ".", choices=GPU_CHOICES, panel=HARDWARE)
    memory_gb: float | None = option(None, "Memory per device in GB; for cpu, the machine's RAM, shared by its --gpus "
                                     "processes (default: the --gpu's; for cpu, this machine's).",
                                     range="(0, inf)", panel=HARDWARE)
    mfu: float = option(0.4, "Model FLOPs utilisation assumed for step time and tokens/s.", range="(0, 1]", panel=HARDWARE)
    peak_tflops: float | None = option(None, "Peak matrix-product TFLOP/s of one device (a CPU: the machine) in the run's "
                                       "precision (default: the --gpu's bf16 figure; cpu: measured here, which a busy "
                                       "machine lowers).", range="(0, inf)", panel=HARDWARE)
    tokens_per_param: float = option(20.0, "Compute-optimal training tokens per parameter (Chinchilla's 20) when no --scaling fit is given.",
                                     range="(0, inf)", panel=HARDWARE)
    scaling: Path | None = option(None, "A scaling artifact (llmkit scaling fit): its law gives the compute-optimal tokens instead.",
                                  panel=HARDWARE)
    search: bool = option(False, "Also find the largest micro-batch that fits, or (when it does not fit) the smallest layout that does.",
                          flags=("--search/--no-search",), panel=HARDWARE)
    json: bool = option(False, "Print JSON instead of tables.", flags=("--json/--no-json",), panel=HARDWARE)

    def check_given(self, given: frozenset[str]) -> None:
        # --model gpt2 typed beside --hf-config is the default, which __post_init__ cannot tell from none
        if self.hf_config is not None and "model" in given:
            raise UsageError("--hf-config describes the model; leave out --model (or --hf-config)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hf_config is not None:
            typed = (["--model"] if self.model.model != "gpt2" else []) + [
                "--" + name.replace("_", "-") for name, value in self.model.overrides().items() if value is not None]
            if typed:
                raise UsageError(f"--hf-config describes the model; leave out {', '.join(typed)} (or --hf-config)")
        if self.nproc is not None:
            if self.gpu != "cpu":
                raise UsageError(f"--nproc counts CPU processes and the plan is for --gpu {self.gpu}: add --gpu cpu, "
                                "or give --gpus N for GPUs")
            if self.placement.gpus not in (1, self.nproc):
                raise UsageError("--gpus and --nproc both count the processes here: give one of them")
            self.placement.gpus = self.nproc
        if not self.search:  # (a search may pick a pipeline, which they then shape)
            refuse_pipeline_options_without_pp(self.parallelism, or_instead=", --search to find a layout,")
        if self.placement.gpus == 0 and self.gpu != "cpu":
            raise UsageError(f"--gpus 0 plans no {self.gpu}: give --gpus N (devices per node), or --gpu cpu for CPU processes")
