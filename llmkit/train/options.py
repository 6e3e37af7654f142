"""Option groups every training stage shares: the model, the optimizer and schedule,
validation and checkpoints, and the devices a run uses.

A stage nests them in its config with `group(...)`, giving its own defaults (fine-tuning
decays no weights and uses beta2 0.999; pretraining 0.1 and 0.95); the flags stay flat
(`--lr`, `--micro-batch`) and so does the recorded config (llmkit.options).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmkit.options import Options, option

MODEL_PANEL = "Model"
TRAINING_PANEL = "Training"
DEVICES_PANEL = "Devices and run"
PRECISIONS = ("auto", "bf16", "fp32")
DEFAULT_BATCH_TOKENS = 16384  # pretrain's global batch (`llmkit plan` names it where a micro-batch it proposes needs another)


def resolve_precision(precision: str, device_type: str) -> str:
    """What `--precision` means on this device: "bf16" or "fp32"."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return precision


CPU_WITHOUT_BF16 = ("oneDNN has no bf16 kernels for this CPU (they need AVX-512 or AMX), so --precision bf16 runs "
                    "its matrix products several to tens of times slower than fp32 (a tiny model trained 8x slower on "
                    "an AVX2 CPU); --precision fp32, the CPU default, is the fast choice here")


def cpu_has_bf16_products() -> bool:
    """Whether oneDNN computes bf16 matrix products on this CPU (without, PyTorch emulates them, slowly)."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without the probe: no note rather than a wrong one
        return True


@dataclass
class ModelChoice(Options):
    """A preset plus per-field overrides (None = the preset's value)."""

    model: str = option("tiny", "Model preset: tiny, mini, small, medium, 1b, gpt2-tiny, gpt2, gpt2-medium, gpt2-large, gpt2-xl, lstm.",
                        flags=("--model",))
    arch: str | None = option(None, "gpt or lstm (default: the preset's).", choices=("gpt", "lstm"))
    objective: str | None = option(None, "clm (next token) or mlm (BERT-style masked LM, bidirectional) (default: the preset's).", choices=("clm", "mlm"))
    n_layer: int | None = option(None, "Layers (default: the preset's).", range="[1, inf)")
    n_head: int | None = option(None, "Attention heads (default: the preset's).", range="[1, inf)")
    n_kv_head: int | None = option(None, "Key/value heads (fewer than heads = grouped-query attention) (default: the preset's).", range="[1, inf)")
    n_embd: int | None = option(None, "Model width (default: the preset's).", range="[1, inf)")
    mlp_ratio: float | None = option(None, "MLP hidden width / model width (default: the preset's).", range="(0, 1000]")
    context_length: int | None = option(None, "Longest sequence the model takes (default: the preset's).", range="[1, 67108864]")  # (hf_config.LARGEST_SIZE)
    dropout: float | None = option(None, "Dropout probability (default: the preset's).", range="[0, 1)")
    norm: str | None = option(None, "rmsnorm or layernorm (default: the preset's).", choices=("rmsnorm", "layernorm"))
    pos: str | None = option(None, "Positions: rope or learned (default: the preset's).", choices=("rope", "learned"))
    activation: str | None = option(None, "swiglu or gelu (default: the preset's).", choices=("swiglu", "gelu"))
    tie_embeddings: bool | None = option(None, "Share input and output embeddings (default: the preset's).", flags=("--tie-embeddings/--no-tie-embeddings",))
    bias: bool | None = option(None, "Biases in linear layers and norms (default: the preset's).", flags=("--bias/--no-bias",))
    rope_theta: float | None = option(None, "RoPE base (default: the preset's).", range="(0, inf)")

    def overrides(self) -> dict[str, Any]:
        """The fields set on top of the preset (None = keep the preset's)."""
        return {name: value for name, value in self.flat().items() if name != "model"}


@dataclass
class OptimizerChoice(Options):
    """The optimizer alone: what `llmkit plan` counts the state of (Optimization, below, is it and its settings)."""

    optimizer: str = option("adamw", "adamw or sgd (with momentum).", choices=("adamw", "sgd"))


@dataclass
class Optimization(OptimizerChoice):
    lr: float | None = option(1e-3, "Peak learning rate.", range="(0, inf)")
    min_lr_ratio: float = option(0.1, "Where the decay heads, as a fraction of the peak learning rate (reached the step "
                                  "after the last).", range="[0, 1]")
    warmup_steps: int | None = option(None, "Linear warmup steps (default min(100, steps/10)).", range="[0, inf)")
    schedule: str = option("cosine", "Decay after warmup: cosine, linear or constant.", choices=("cosine", "linear", "constant"))
    weight_decay: float = option(0.1, "Weight decay of the matrices and embeddings (AdamW's decoupled; SGD's added to the "
                                 "gradient, as L2).", range="[0, inf)")
    beta1: float = option(0.9, "AdamW beta1.", range="[0, 1)")
    beta2: float = option(0.95, "AdamW beta2.", range="[0, 1)")
    momentum: float = option(0.9, "SGD momentum.", range="[0, 1)")
    grad_clip: float = option(1.0, "Clip the gradient norm to this (0 = off).", range="[0, inf)")


# What reads each setting that only some runs read: refused where the run would not (below), and left
# out of a resume's comparison with a run recorded before that, which may hold one (train/resuming.py)
_READ_BY = {"momentum": "SGD (--optimizer sgd)", "beta1": "AdamW (--optimizer adamw)", "beta2": "AdamW (--optimizer adamw)",
            "min_lr_ratio": "the decay of --schedule cosine or linear", "rope_theta": "rotary positions (--pos rope)"}


def unread_settings(config: dict[str, Any]) -> frozenset[str]:
    """The settings a run of this (flat, recorded) config never reads: its optimizer's and schedule's
    others, and the RoPE base of learned positions (where the config names them)."""
    unread = set()
    if config.get("optimizer", "adamw") != "sgd":
        unread.add("momentum")
    if config.get("optimizer", "adamw") != "adamw":
        unread |= {"beta1", "beta2"}
    if config.get("schedule", "cosine") == "constant":
        unread.add("min_lr_ratio")
    if config.get("pos") == "learned":
        unread.add("rope_theta")
    return frozenset(unread)


def refuse_idle_optimizer_settings(config: Options) -> None:
    """Settings the run does not read, refused (a stage config holding an `optim` group): `--momentum
    0.5` under AdamW trained the same weights under another fingerprint. By value: the group's
    default (finetune's beta2 0.999) is what leaving it out gives."""
    from llmkit.errors import unused_options
    from llmkit.options import flat_options

    flat = config.flat()
    unread = unread_settings(flat)
    unused = [(opt.flag, _READ_BY[opt.name]) for opt in flat_options(type(config))
              if opt.name in unread and flat[opt.name] != opt.default]
    if unused:
        raise unused_options(unused)


def refuse_unread_model_settings(config: Options, model_config: Any) -> None:
    """Pretraining's settings the model it builds (its preset resolved) does not read: --mlm-probability
    for a next-token model, --rope-theta for learned positions (--pos learned typed is refused with
    the optimizer's settings, the LSTM's with its other fields). Pretrain and a sweep's plan call it."""
    from llmkit.errors import UsageError

    if model_config.objective != "mlm" and config.mlm_probability != config.default_of("mlm_probability"):
        raise UsageError("--mlm-probability is the share masked for --objective mlm; this model predicts the next token "
                         "(clm), so leave it out")
    if config.architecture.rope_theta is not None and model_config.arch == "gpt" and model_config.pos != "rope":
        raise UsageError("--rope-theta is the base of rotary positions; this model has learned positions (--pos learned), "
                         "so leave it out")


@dataclass
class Numerics(Options):
    """How a run computes: part of what it computes, so recorded (unlike Devices); shared with `llmkit plan`."""

    precision: str = option("auto", "Matmul precision: bf16 (autocast; weights and optimizer state stay fp32) or fp32; auto = "
                            "bf16 on CUDA, fp32 elsewhere. bf16 on a CPU with AMX trains ~1.85x faster (docs/pretrain.md).",
                            choices=PRECISIONS)


# When a run validates and saves was hashed config until 2026-12-02 (runtime since): runs and
# sweeps made before record these in their config. And keys a training stage adds to its config
# from its inputs and history (the tokens' document start; the learning rates of a resumed run's
# earlier length), beside its options. Comparisons of a recorded config with the options asked
# now leave both out (`recorded_options`).
FORMERLY_HASHED = frozenset({"eval_every", "eval_tokens", "eval_examples", "save_every", "keep_last"})
STAGE_RECORDED = frozenset({"document_start", "lr_schedule_before"})


def recorded_options(config: dict[str, Any]) -> dict[str, Any]:
    """The options a training artifact's (or a sweep's) recorded config says it ran with."""
    return {key: value for key, value in config.items() if key not in FORMERLY_HASHED | STAGE_RECORDED}


@dataclass
class KeptWeightCopies(Options):
    """Copies of the weights a run keeps while it trains, written beside it (RUN/ema, RUN/best): the
    run's own weights do not change. Shared with `llmkit plan`, which counts their memory."""

    ema: float | None = option(None, "Also keep an exponential moving average of the weights with this decay (e.g. 0.999), "
                               "written as the checkpoint RUN/ema.", range="(0, 1)", hashed=False,
                               recorded_as="the config of RUN/ema")
    keep_best: bool = option(False, "Also keep the weights of the validation with the lowest loss, written as the checkpoint "
                             "RUN/best (validations every --eval-every steps and at the end).",
                             flags=("--keep-best/--no-keep-best",), hashed=False, recorded_as="the config of RUN/best")


@dataclass
class Checkpointing(KeptWeightCopies):
    # When a run validates and saves changes none of its weights: runtime, not hashed (a resume may change them).
    eval_every: int = option(250, "Validate every N steps and at the end (0 = never).", range="[0, inf)", runtime=True)
    save_every: int = option(500, "Write a checkpoint every N steps (0 = only at the end).", range="[0, inf)", runtime=True)
    keep_last: int = option(2, "Keep the newest K intermediate checkpoints (0 = all).", range="[0, inf)", runtime=True)
    # An extra checkpoint beside the run's, made of its saved ones (RUN/average): the run's own weights do not change.
    average_last: int = option(0, "Also average the last K saved checkpoints of the run (the final one included) into "
                               "RUN/average (0 = off).", range="[0, inf)", hashed=False, recorded_as="the config of RUN/average")
    # Runtime, as --eval-every: the run it stops is a shorter one of the same config (its stats say where
    # and why: `stopped_early`), and a resume may change it (a larger one trains on from the stop).
    patience: int = option(0, "Stop once the validation loss has not gone below its lowest for N validations in a row "
                           "(early stopping; 0 = never): the run ends there, mid-schedule; --keep-best keeps its best "
                           "weights.", range="[0, inf)", runtime=True)
    min_delta: float = option(0.0, "With --patience: a validation loss counts as lower only when it is more than this below "
                              "the last one that counted (Keras' and Lightning's min_delta; 0 = any drop).",
                              range="[0, inf)", runtime=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.average_last == 1:
            raise ValueError("--average-last 1 would be the final checkpoint alone: pass 2 or more (0 = off)")
        if self.keep_best and self.eval_every == 0:
            raise ValueError("--keep-best keeps the weights of the lowest validation loss, and --eval-every 0 never "
                             "validates: pass --eval-every N (or leave --keep-best out)")
        if self.patience and self.eval_every == 0:
            raise ValueError(f"--patience {self.patience} counts validations, and --eval-every 0 never validates: pass "
                             "--eval-every N (or leave --patience out)")
        if self.min_delta and not self.patience:
            raise ValueError(f"--min-delta {self.min_delta:g} says how far a validation loss must drop for --patience to count "
                             "it, and --patience is 0 (never stop): pass --patience N too (or leave --min-delta out)")
        if self.average_last > 1 and (self.save_every == 0 or 0 < self.keep_last < self.average_last - 1):
            before = "checkpoint" if self.average_last == 2 else f"{self.average_last - 1} checkpoints"
            raise ValueError(f"--average-last {self.average_last} needs the {before} before the last: "
                             f"pass --save-every N and --keep-last {self.average_last - 1} (or more)")


@dataclass
class Placement(Options):
    """How many devices a run uses, how each step is split over them and whether the model is
    compiled (shared with `llmkit plan`: each changes what a device holds)."""

    micro_batch: int = option(16, "Sequences per forward/backward on one device; accumulation makes up the rest.", runtime=True,
                              range="[1, inf)")
    strategy: str = option("ddp", "ddp (replicate) or fsdp (FSDP2 fully_shard) across processes.", choices=("ddp", "fsdp"), runtime=True)
    gpus: int | None = option(None, "GPUs on this node (default: 1 if present, else CPU); >1 relaunches under torchrun.", runtime=True,
                              range="[0, inf)")
    nnodes: int = option(1, "Nodes taking part (multi-node).", runtime=True, range="[1, inf)")
    activation_checkpointing: bool = option(False, "Keep only each block's input and recompute the rest in the backward pass "
                                            "(less memory, about a third more compute).", flags=("--activation-checkpointing/--no-activation-checkpointing",),
                                            runtime=True)
    compile: bool = option(False, "torch.compile the model.", flags=("--compile/--no-compile",), runtime=True)


@dataclass
class ModelParallelism(Options):
    """Splitting the model itself over devices (docs/parallel.md): world size = data x tensor x pipeline."""

    tp: int = option(1, "Tensor-parallel degree: each block's matrices split over this many devices.", range="[1, inf)", runtime=True)
    pp: int = option(1, "Pipeline stages: the layers split into this many consecutive groups.", range="[1, inf)", runtime=True)
    pp_schedule: str = option("1f1b", "Pipeline schedule.", choices=("gpipe", "1f1b", "interleaved-1f1b"), runtime=True)
    pp_microbatches: int | None = option(None, "Micro-batches in flight per pipeline step (default: pp); each is --micro-batch "
                                         "sequences.", range="[1, inf)", runtime=True)


def refuse_pipeline_options_without_pp(parallelism: ModelParallelism, *, or_instead: str = "") -> None:
    """A pipeline's schedule given without a pipeline would be ignored without a word (`plan --search`
    may pick a --pp itself, so it takes them: `or_instead` names such a way)."""
    if parallelism.pp == 1 and (parallelism.pp_microbatches is not None or parallelism.pp_schedule != "1f1b"):
        given = "--pp-microbatches" if parallelism.pp_microbatches is not None else f"--pp-schedule {parallelism.pp_schedule}"
        raise ValueError(f"{given} shapes a pipeline, and there is none without --pp: give --pp N (N > 1){or_instead} "
                         "or leave it out")


@dataclass
class Devices(ModelParallelism, Placement):
    """Where and how a run executes; never changes what it computes, so never hashed."""

    batch_invariant: bool | None = option(None, "Compute each sequence's weight gradient on its own and sum them in one fixed "
                                          "order, so --micro-batch, --nproc and threads leave the weights the same to the bit "
                                          "(in fp32; under bf16 at one thread count a process) (default: on for a CPU run of a GPT model without --tp/--pp, FSDP or "
                                          "--compile).", flags=("--batch-invariant/--no-batch-invariant",), runtime=True)
    tensorboard: bool = option(False, "Also write TensorBoard event files to RUN/tensorboard.", flags=("--tensorboard/--no-tensorboard",), runtime=True)
    nproc: int = option(1, "CPU processes (gloo backend) when training without GPUs.", runtime=True, range="[1, inf)")
    node_rank: int = option(0, "This node's rank, 0..nnodes-1.", runtime=True, range="[0, inf)")
    master_addr: str | None = option(None, "Address of node 0 (multi-node).", runtime=True)
    master_port: int = option(29500, "Port on node 0 (multi-node).", runtime=True, range="[1, 65535]")
    join_timeout: int = option(600, "Seconds the nodes wait for all of them to join (multi-node) before giving up.",
                               runtime=True, range="[1, inf)")
    threads: int = option(0, "CPU threads per process (0 = PyTorch's default, one per core).", runtime=True, range="[0, inf)")
    log_every: int = option(10, "Print a progress line every N steps when not on a terminal.", runtime=True, range="[1, inf)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.node_rank >= self.nnodes:
            raise ValueError(f"--node-rank must be below --nnodes ({self.nnodes}), got {self.node_rank}")
        from llmkit.runtime import under_torchrun

        own_launch = not under_torchrun()  # (under a scheduler's torchrun, torchrun meets the nodes: --nnodes counts them)
        if own_launch and self.nnodes > 1 and not self.master_addr:  # (said before the run directory is touched)
            raise ValueError("multi-node training needs --master-addr, the address of node 0; give it, the same on every node")
        if own_launch and self.nnodes == 1:  # (one node meets no other: they changed nothing, unsaid)
            from llmkit.errors import unused_options

            unused = [(flag, "multi-node training (--nnodes 2 or more)")
                      for flag, name in (("--master-addr", "master_addr"), ("--master-port", "master_port"),
                                         ("--join-timeout", "join_timeout")) if getattr(self, name) != self.default_of(name)]
            if unused:
                raise unused_options(unused)
        from llmkit.runtime import omp_thread_limit, worker_count

        if (limit := omp_thread_limit()) is not None and self.threads > limit:
            raise ValueError(f"--threads {self.threads} is more than OMP_THREAD_LIMIT={limit} lets a process run (OpenMP "
                             f"would cut the team short, and the products would come out wrong); give at most {limit}")
        cores = worker_count(0)
        if self.threads > max(64, 8 * cores):  # (PyTorch's thread pool crashed at 2,048 threads on 2 cores, without a word)
            raise ValueError(f"--threads {self.threads} is far more than this machine's {cores} cores can run; "
                             f"give at most {max(64, 8 * cores)} (0 takes one per core)")
        if self.batch_invariant and (self.tp > 1 or self.pp > 1):  # said before any process starts
            raise ValueError("--batch-invariant does not apply here: a model split with --tp/--pp sums its gradients "
                             "itself (or pass --no-batch-invariant)")
