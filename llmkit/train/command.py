"""`llmkit pretrain` and `llmkit finetune` (finetune: placeholder until its stage lands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


_MODEL = "Model"
_TRAIN = "Training"
_RUN = "Devices and run"


def pretrain(
    ctx: typer.Context,
    tokens: Annotated[Path, typer.Argument(help="Tokens artifact (from `llmkit tokenize`).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Run directory; becomes the checkpoint artifact at the end.")],
    model: Annotated[str, typer.Option("--model", help="Model preset: tiny, mini, small, medium, 1b, gpt2-tiny, gpt2, gpt2-medium, gpt2-large, gpt2-xl, lstm.", rich_help_panel=_MODEL)] = "tiny",
    arch: Annotated[Optional[str], typer.Option(help="gpt or lstm (default: the preset's).", rich_help_panel=_MODEL)] = None,
    objective: Annotated[Optional[str], typer.Option(help="clm (next token) or mlm (BERT-style masked LM, bidirectional).", rich_help_panel=_MODEL)] = None,
    n_layer: Annotated[Optional[int], typer.Option(help="Layers.", rich_help_panel=_MODEL)] = None,
    n_head: Annotated[Optional[int], typer.Option(help="Attention heads.", rich_help_panel=_MODEL)] = None,
    n_kv_head: Annotated[Optional[int], typer.Option(help="Key/value heads (fewer than heads = grouped-query attention).", rich_help_panel=_MODEL)] = None,
    n_embd: Annotated[Optional[int], typer.Option(help="Model width.", rich_help_panel=_MODEL)] = None,
    mlp_ratio: Annotated[Optional[float], typer.Option(help="MLP hidden width / model width.", rich_help_panel=_MODEL)] = None,
    context_length: Annotated[Optional[int], typer.Option(help="Longest sequence the model takes.", rich_help_panel=_MODEL)] = None,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout probability.", rich_help_panel=_MODEL)] = None,
    norm: Annotated[Optional[str], typer.Option(help="rmsnorm or layernorm.", rich_help_panel=_MODEL)] = None,
    pos: Annotated[Optional[str], typer.Option(help="Positions: rope or learned.", rich_help_panel=_MODEL)] = None,
    activation: Annotated[Optional[str], typer.Option(help="swiglu or gelu.", rich_help_panel=_MODEL)] = None,
    tie_embeddings: Annotated[Optional[bool], typer.Option("--tie-embeddings/--no-tie-embeddings", help="Share input and output embeddings.", rich_help_panel=_MODEL)] = None,
    bias: Annotated[Optional[bool], typer.Option("--bias/--no-bias", help="Biases in linear layers and norms.", rich_help_panel=_MODEL)] = None,
    rope_theta: Annotated[Optional[float], typer.Option(help="RoPE base.", rich_help_panel=_MODEL)] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="Training sequence length (default: the context length).", rich_help_panel=_TRAIN)] = None,
    batch_tokens: Annotated[int, typer.Option(help="Global batch per optimizer step in tokens, over all devices.", rich_help_panel=_TRAIN)] = 16384,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps (default 1000).", rich_help_panel=_TRAIN)] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Train on this many tokens instead of --max-steps.", rich_help_panel=_TRAIN)] = None,
    mlm_probability: Annotated[float, typer.Option(help="Share of tokens masked for --objective mlm.", rich_help_panel=_TRAIN)] = 0.15,
    optimizer: Annotated[str, typer.Option(help="adamw or sgd (with momentum).", rich_help_panel=_TRAIN)] = "adamw",
    lr: Annotated[float, typer.Option(help="Peak learning rate.", rich_help_panel=_TRAIN)] = 1e-3,
    min_lr_ratio: Annotated[float, typer.Option(help="Final learning rate / peak.", rich_help_panel=_TRAIN)] = 0.1,
    warmup_steps: Annotated[Optional[int], typer.Option(help="Linear warmup steps (default min(100, steps/10)).", rich_help_panel=_TRAIN)] = None,
    schedule: Annotated[str, typer.Option(help="Decay after warmup: cosine, linear or constant.", rich_help_panel=_TRAIN)] = "cosine",
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay (matrices and embeddings only).", rich_help_panel=_TRAIN)] = 0.1,
    beta1: Annotated[float, typer.Option(help="AdamW beta1.", rich_help_panel=_TRAIN)] = 0.9,
    beta2: Annotated[float, typer.Option(help="AdamW beta2.", rich_help_panel=_TRAIN)] = 0.95,
    momentum: Annotated[float, typer.Option(help="SGD momentum.", rich_help_panel=_TRAIN)] = 0.9,
    grad_clip: Annotated[float, typer.Option(help="Clip the gradient norm to this (0 = off).", rich_help_panel=_TRAIN)] = 1.0,
    eval_every: Annotated[int, typer.Option(help="Validate every N steps and at the end (0 = never).", rich_help_panel=_TRAIN)] = 250,
    eval_tokens: Annotated[int, typer.Option(help="Validation tokens per evaluation.", rich_help_panel=_TRAIN)] = 32768,
    save_every: Annotated[int, typer.Option(help="Write a checkpoint every N steps (0 = only at the end).", rich_help_panel=_TRAIN)] = 500,
    keep_last: Annotated[int, typer.Option(help="Keep the newest K intermediate checkpoints (0 = all).", rich_help_panel=_TRAIN)] = 2,
    seed: Annotated[int, typer.Option(help="Seed for initialisation, data order, masking and dropout.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in -o from its newest complete checkpoint.")] = False,
    micro_batch: Annotated[int, typer.Option(help="Sequences per forward/backward on one device; accumulation makes up the rest.", rich_help_panel=_RUN)] = 16,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model.", rich_help_panel=_RUN)] = False,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="Also write TensorBoard event files to RUN/tensorboard.", rich_help_panel=_RUN)] = False,
    strategy: Annotated[str, typer.Option(help="ddp (replicate) or fsdp (FSDP2 fully_shard) across processes.", rich_help_panel=_RUN)] = "ddp",
    gpus: Annotated[Optional[int], typer.Option(help="GPUs on this node (default: 1 if present, else CPU); >1 relaunches under torchrun.", rich_help_panel=_RUN)] = None,
    nproc: Annotated[int, typer.Option(help="CPU processes (gloo backend) when training without GPUs.", rich_help_panel=_RUN)] = 1,
    nnodes: Annotated[int, typer.Option(help="Nodes taking part (multi-node).", rich_help_panel=_RUN)] = 1,
    node_rank: Annotated[int, typer.Option(help="This node's rank, 0..nnodes-1.", rich_help_panel=_RUN)] = 0,
    master_addr: Annotated[Optional[str], typer.Option(help="Address of node 0 (multi-node).", rich_help_panel=_RUN)] = None,
    master_port: Annotated[int, typer.Option(help="Port on node 0 (multi-node).", rich_help_panel=_RUN)] = 29500,
    threads: Annotated[int, typer.Option(help="CPU threads per process (0 = PyTorch's default, one per core).", rich_help_panel=_RUN)] = 0,
    log_every: Annotated[int, typer.Option(help="Print a progress line every N steps when not on a terminal.", rich_help_panel=_RUN)] = 10,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML/YAML file with options (a \\[pretrain] table, or keys at top level).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing run directory.")] = False,
) -> None:
    """Pretrain a model from scratch on token shards (one CPU, --gpus N, or many nodes)."""
    from llmkit import artifacts
    from llmkit.config import explicit_params, resolve
    from llmkit.console import out as console_out
    from llmkit.train.pretrain import PretrainConfig
    from llmkit.train.pretrain import pretrain as run_pretrain

    explicit = {k: v for k, v in explicit_params(ctx).items() if k not in ("tokens", "out", "config", "force", "resume")}
    settings = resolve(PretrainConfig, file=config, section="pretrain", explicit=explicit)
    path = run_pretrain(tokens, out, settings, resume=resume, force=force)
    art = artifacts.load(path, kind="checkpoint")
    stats = art.stats
    line = f"[green]checkpoint[/] {path}: step {stats.get('step')}, {stats.get('params', 0) / 1e6:.2f}M params"
    if stats.get("train_loss") is not None:
        line += f", train loss {stats['train_loss']:.4f}"
    if stats.get("val_loss") is not None:
        line += f", val loss {stats['val_loss']:.4f} (ppl {stats['val_ppl']:.2f})"
    console_out.print(line + f", fingerprint {art.fingerprint[:12]}", soft_wrap=True)
