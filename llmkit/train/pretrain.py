"""`llmkit pretrain`: train a model from scratch on a tokens artifact.

    pretrain(tokens, out, PretrainConfig(model="tiny", max_steps=500)) -> out

The run directory OUT holds metrics.jsonl and checkpoints/step_XXXXXXX/ (each a checkpoint
artifact) while training; at the end OUT itself becomes the final checkpoint artifact.
With several processes (--gpus N, --nproc N, --nnodes) the function relaunches itself under
torchrun and every worker runs `_train`.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from llmkit import artifacts
from llmkit.config import to_dict
from llmkit.errors import UsageError, UserError
from llmkit.train.checkpoint import prepare_run_dir

# Options that change how a run executes but not what it computes: recorded in the manifest's
# `runtime`, left out of the hashed config.
RUNTIME_FIELDS = (
    "micro_batch", "compile", "tensorboard", "strategy", "gpus", "nproc", "nnodes", "node_rank",
    "master_addr", "master_port", "log_every", "threads",
)
MODEL_FIELDS = (
    "arch", "objective", "n_layer", "n_head", "n_kv_head", "n_embd", "mlp_ratio", "context_length", "dropout",
    "norm", "pos", "activation", "tie_embeddings", "bias", "rope_theta",
)


@dataclass
class PretrainConfig:
    # model: a preset plus per-field overrides (None = the preset's value)
    model: str = "tiny"
    arch: str | None = None
    objective: str | None = None
    n_layer: int | None = None
    n_head: int | None = None
    n_kv_head: int | None = None
    n_embd: int | None = None
    mlp_ratio: float | None = None
    context_length: int | None = None
    dropout: float | None = None
    norm: str | None = None
    pos: str | None = None
    activation: str | None = None
    tie_embeddings: bool | None = None
    bias: bool | None = None
    rope_theta: float | None = None
    # data and length of training
    seq_len: int | None = None  # None = the model's context length
    batch_tokens: int = 16384  # global batch per optimizer step, in tokens, across all devices
    max_steps: int | None = None
    max_tokens: int | None = None
    mlm_probability: float = 0.15
    # optimization
    optimizer: str = "adamw"
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None  # None = min(100, max_steps // 10)
    schedule: str = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    momentum: float = 0.9
    grad_clip: float = 1.0
    # validation and checkpoints
    eval_every: int = 250
    eval_tokens: int = 32768
    save_every: int = 500
    keep_last: int = 2
    seed: int = 0
    # runtime (not hashed)
    micro_batch: int = 16
    compile: bool = False
    tensorboard: bool = False
    strategy: str = "ddp"
    gpus: int | None = None  # None = 1 if a GPU is present, else 0 (CPU)
    nproc: int = 1  # CPU processes (gloo) when gpus == 0
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = 29500
    log_every: int = 10
    threads: int = 0  # CPU threads per process; 0 = PyTorch's default

    def __post_init__(self):
        positive = ("batch_tokens", "micro_batch", "nproc", "nnodes", "eval_tokens")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {self.max_tokens}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    def hashed(self) -> dict[str, Any]:
        return {k: v for k, v in to_dict(self).items() if k not in RUNTIME_FIELDS}

    def runtime(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in RUNTIME_FIELDS}


def world_size(config: PretrainConfig, gpus: int) -> int:
    per_node = gpus if gpus > 0 else config.nproc
    return per_node * config.nnodes


def pretrain(tokens: Path | str, out: Path | str, config: PretrainConfig, *, resume: bool = False, force: bool = False) -> Path:
    """Train and return the run directory, which is then a checkpoint artifact."""
    from llmkit.train import distributed

    tokens, out = Path(tokens), Path(out)
    artifacts.load(tokens, kind="tokens")
    if config.max_steps is not None and config.max_tokens is not None:
        raise UsageError("give --max-steps or --max-tokens, not both")
    gpus = distributed.resolve_gpus(config.gpus)
    distributed.check_gpus(gpus)
    if gpus > 0 and config.nproc > 1:
        raise UsageError("--nproc sets CPU processes; with GPUs use --gpus N (one process per GPU)")
    if _first_process(config):
        prepare_run_dir(out, resume=resume, force=force)
    else:  # another node, or a non-zero rank started by an outside torchrun: node 0 / rank 0 prepares
        out.mkdir(parents=True, exist_ok=True)
    per_node = gpus if gpus > 0 else config.nproc
    if (per_node > 1 or config.nnodes > 1) and not distributed.under_torchrun():
        distributed.relaunch(
            "llmkit.train.pretrain:_train",
            {"tokens": str(tokens.resolve()), "out": str(out.resolve()), "config": to_dict(config), "resume": resume},
            out / ".launch",
            nproc=per_node, nnodes=config.nnodes, node_rank=config.node_rank,
            master_addr=config.master_addr, master_port=config.master_port,
        )
        shutil.rmtree(out / ".launch", ignore_errors=True)
        return out
    _train(tokens, out, config, resume)
    return out


def _first_process(config: PretrainConfig) -> bool:
    from llmkit.train import distributed

    if distributed.under_torchrun():
        return os.environ.get("RANK") == "0"
    return config.node_rank == 0


def _open_split(tokens_art, split: str, seq_len: int, seed: int, required: bool):
    from llmkit.data.shards import TokenShards, WindowSampler

    try:
        shards = TokenShards.open(tokens_art, split)
        return shards, WindowSampler(shards, seq_len, seed)
    except (UserError, FileNotFoundError) as exc:
        if required:
            if isinstance(exc, UserError):
                raise
            raise UserError(f"tokens artifact {tokens_art.path} has no {split} split; rebuild it with llmkit tokenize") from exc
        return None, None


def _train(tokens: str | Path, out: str | Path, config: PretrainConfig | dict, resume: bool) -> None:
    """One process's work (the only one, or one torchrun worker)."""
    import torch

    from llmkit.data.tokenizer import copy_tokenizer_files, load_tokenizer
    from llmkit.model.presets import build_model, resolve_model_config
    from llmkit.runtime import seed_everything
    from llmkit.train import distributed
    from llmkit.train.loop import ArtifactSpec, LoopSettings, Trainer
    from llmkit.train.objectives import WindowBatches, lm_loss

    if isinstance(config, dict):
        known = {f.name for f in fields(PretrainConfig)}
        config = PretrainConfig(**{k: v for k, v in config.items() if k in known})
    tokens_art = artifacts.load(tokens, kind="tokens")
    out = Path(out)
    gpus = distributed.resolve_gpus(config.gpus)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    info = distributed.init(gpus)
    try:
        tokenizer_dir = tokens_art.path / "tokenizer"
        tokenizer = load_tokenizer(tokenizer_dir)
        overrides = {name: getattr(config, name) for name in MODEL_FIELDS}
        model_config = resolve_model_config(config.model, vocab_size=tokenizer.vocab_size, overrides=overrides)
        seq_len = config.seq_len or model_config.context_length
        if seq_len > model_config.context_length:
            raise UserError(
                f"--seq-len {seq_len} is longer than the model's context length {model_config.context_length}; "
                "lower --seq-len or raise --context-length"
            )
        if model_config.objective == "mlm" and tokenizer.mask_id is None:
            raise UserError("--objective mlm needs a <|mask|> token in the tokenizer; retrain it with the default special tokens")
        global_batch = config.batch_tokens // seq_len
        if global_batch < 1:
            raise UserError(f"--batch-tokens {config.batch_tokens} is smaller than one sequence of {seq_len} tokens; raise it")
        world = info.world_size
        micro_batch = max(1, min(config.micro_batch, global_batch // world))
        if global_batch % (micro_batch * world):
            raise UserError(
                f"the global batch of {global_batch} sequences (--batch-tokens {config.batch_tokens} / seq_len {seq_len}) does not "
                f"split into micro-batches of {micro_batch} on {world} process(es); choose --batch-tokens as a multiple of "
                f"{micro_batch * world * seq_len}"
            )
        if config.max_tokens is not None:
            max_steps = math.ceil(config.max_tokens / (global_batch * seq_len))
        else:
            max_steps = config.max_steps or 1000
        warmup = config.warmup_steps if config.warmup_steps is not None else min(100, max_steps // 10)

        seed_everything(config.seed)
        _, train_sampler = _open_split(tokens_art, "train", seq_len, config.seed, required=True)
        _, val_sampler = _open_split(tokens_art, "val", seq_len, config.seed, required=False)
        special = sorted(set(tokenizer.special_ids.values())) if tokenizer.special_ids else []
        data_options = dict(
            objective=model_config.objective, mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
            special_ids=special, mlm_probability=config.mlm_probability,
        )
        train_batches = WindowBatches(train_sampler, seed=config.seed, **data_options)
        val_batches = WindowBatches(val_sampler, seed=config.seed + 1, **data_options) if val_sampler is not None else None
        val_size = min(max(1, config.eval_tokens // seq_len), len(val_sampler)) if val_sampler is not None else 0

        torch.manual_seed(config.seed)  # identical initial weights on every rank
        model = build_model(model_config)
        settings = LoopSettings.from_config(
            config, max_steps=max_steps, global_batch=global_batch, micro_batch=micro_batch,
            tokens_per_sample=seq_len, warmup_steps=warmup, eval_samples=val_size,
        )
        inputs = [("tokens", tokens_art)]
        try:
            inputs.append(("tokenizer", tokens_art.input("tokenizer")))
        except UserError:
            pass  # the tokenizer artifact moved away; its copy travels in tokenizer/ all the same
        spec = ArtifactSpec(
            config=config.hashed(),
            seed=config.seed,
            inputs=inputs,
            stats={
                "params": model.num_params(),
                "flops_per_token": model.flops_per_token(seq_len),
                "model": model_config.to_dict(),
                "seq_len": seq_len,
                "global_batch_sequences": global_batch,
                "global_batch_tokens": global_batch * seq_len,
                "max_steps": max_steps,
                "tokenizer_fingerprint": next((i["fingerprint"] for i in tokens_art.manifest.inputs if i["role"] == "tokenizer"), None),
            },
            runtime=dict(config.runtime(), world_size=world, device=str(info.device), micro_batch=micro_batch,
                         grad_accumulation=global_batch // (micro_batch * world)),
            add_files=lambda directory: copy_tokenizer_files(tokenizer_dir, Path(directory) / "tokenizer"),
            file_names=["tokenizer"],
        )
        if info.is_main:
            from llmkit.console import err

            err.print(
                f"pretrain {config.model} ({model_config.arch}/{model_config.objective}, {model.num_params() / 1e6:.2f}M params) "
                f"on {world} {'GPU' if info.device.type == 'cuda' else 'CPU process'}(es): {max_steps} steps x "
                f"{global_batch} x {seq_len} tokens, micro-batch {micro_batch}, accumulation {global_batch // (micro_batch * world)}",
                soft_wrap=True,
            )
        trainer = Trainer(
            model, settings, info=info, run_dir=out, batches=train_batches, loss_fn=lm_loss, spec=spec,
            val_batches=val_batches, val_size=val_size, resume=resume,
        )
        trainer.run()
    finally:
        distributed.shutdown()
