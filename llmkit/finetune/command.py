"""`llmkit finetune CKPT --task sft|classify --data D -o RUN` (docs/finetune.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

_TASK = "Task and data"
_TRAIN = "Training"
_LORA = "LoRA and freezing"
_RUN = "Devices and run"


def finetune(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint artifact to start from (pretrain, import or an earlier finetune).")],
    data: Annotated[Path, typer.Option("--data", help="Training JSONL (or a folder with train.jsonl).", rich_help_panel=_TASK)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Run directory; becomes the checkpoint artifact at the end.")],
    task: Annotated[str, typer.Option(help="sft ({prompt,response} or {messages}) or classify ({text,label}).", rich_help_panel=_TASK)] = "sft",
    template: Annotated[str, typer.Option(help="SFT prompt template: chat, plain, translate (source->target), summarize (document->summary) or a JSON file.", rich_help_panel=_TASK)] = "chat",
    val_data: Annotated[Optional[Path], typer.Option(help="Validation JSONL (default: hold out --val-fraction of --data).", rich_help_panel=_TASK)] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of --data held out for validation when --val-data is not given.", rich_help_panel=_TASK)] = 0.05,
    seq_len: Annotated[Optional[int], typer.Option(help="Longest example in tokens (default: the model's context length).", rich_help_panel=_TASK)] = None,
    truncate: Annotated[bool, typer.Option("--truncate", help="Cut examples longer than --seq-len instead of failing.", rich_help_panel=_TASK)] = False,
    batch_size: Annotated[int, typer.Option(help="Examples per optimizer step, over all devices.", rich_help_panel=_TRAIN)] = 32,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps (default: --epochs over the data).", rich_help_panel=_TRAIN)] = None,
    epochs: Annotated[float, typer.Option(help="Passes over the training data when --max-steps is not given.", rich_help_panel=_TRAIN)] = 1.0,
    optimizer: Annotated[str, typer.Option(help="adamw or sgd.", rich_help_panel=_TRAIN)] = "adamw",
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default 1e-4, or 1e-3 with LoRA).", rich_help_panel=_TRAIN)] = None,
    min_lr_ratio: Annotated[float, typer.Option(help="Final learning rate / peak.", rich_help_panel=_TRAIN)] = 0.1,
    warmup_steps: Annotated[Optional[int], typer.Option(help="Linear warmup steps (default min(50, steps/20)).", rich_help_panel=_TRAIN)] = None,
    schedule: Annotated[str, typer.Option(help="cosine, linear or constant.", rich_help_panel=_TRAIN)] = "cosine",
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.", rich_help_panel=_TRAIN)] = 0.0,
    beta1: Annotated[float, typer.Option(help="AdamW beta1.", rich_help_panel=_TRAIN)] = 0.9,
    beta2: Annotated[float, typer.Option(help="AdamW beta2.", rich_help_panel=_TRAIN)] = 0.999,
    grad_clip: Annotated[float, typer.Option(help="Clip the gradient norm to this (0 = off).", rich_help_panel=_TRAIN)] = 1.0,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout while fine-tuning (default: the checkpoint's).", rich_help_panel=_TRAIN)] = None,
    eval_every: Annotated[int, typer.Option(help="Validate every N steps (0 = never).", rich_help_panel=_TRAIN)] = 100,
    eval_examples: Annotated[int, typer.Option(help="Validation examples per evaluation (at most).", rich_help_panel=_TRAIN)] = 1024,
    save_every: Annotated[int, typer.Option(help="Write a checkpoint every N steps (0 = only at the end).", rich_help_panel=_TRAIN)] = 200,
    keep_last: Annotated[int, typer.Option(help="Keep the newest K intermediate checkpoints (0 = all).", rich_help_panel=_TRAIN)] = 2,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank (0 = full fine-tuning).", rich_help_panel=_LORA)] = 0,
    lora_alpha: Annotated[Optional[float], typer.Option(help="LoRA alpha; the update is scaled by alpha/rank (default 2 x rank).", rich_help_panel=_LORA)] = None,
    lora_dropout: Annotated[float, typer.Option(help="Dropout on the LoRA input.", rich_help_panel=_LORA)] = 0.0,
    lora_targets: Annotated[Optional[list[str]], typer.Option(help="Linear layers to adapt, comma-separated: names (q_proj, kv_proj, out_proj, up_proj, down_proj), globs over full names, or all.", rich_help_panel=_LORA)] = None,
    freeze: Annotated[Optional[list[str]], typer.Option(help="Parameter groups to keep fixed, comma-separated: embeddings, attention, mlp, norms, lm_head, or a name glob (blocks.0.*).", rich_help_panel=_LORA)] = None,
    seed: Annotated[int, typer.Option(help="Seed for the head/adapter initialisation, data order, validation split and dropout.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in -o from its newest complete checkpoint.")] = False,
    micro_batch: Annotated[int, typer.Option(help="Examples per forward/backward on one device; accumulation makes up the rest.", rich_help_panel=_RUN)] = 8,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model.", rich_help_panel=_RUN)] = False,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="Also write TensorBoard event files to RUN/tensorboard.", rich_help_panel=_RUN)] = False,
    strategy: Annotated[str, typer.Option(help="ddp or fsdp across processes.", rich_help_panel=_RUN)] = "ddp",
    gpus: Annotated[Optional[int], typer.Option(help="GPUs on this node (default: 1 if present, else CPU); >1 relaunches under torchrun.", rich_help_panel=_RUN)] = None,
    nproc: Annotated[int, typer.Option(help="CPU processes (gloo) when training without GPUs.", rich_help_panel=_RUN)] = 1,
    nnodes: Annotated[int, typer.Option(help="Nodes taking part (multi-node).", rich_help_panel=_RUN)] = 1,
    node_rank: Annotated[int, typer.Option(help="This node's rank, 0..nnodes-1.", rich_help_panel=_RUN)] = 0,
    master_addr: Annotated[Optional[str], typer.Option(help="Address of node 0 (multi-node).", rich_help_panel=_RUN)] = None,
    master_port: Annotated[int, typer.Option(help="Port on node 0 (multi-node).", rich_help_panel=_RUN)] = 29500,
    log_every: Annotated[int, typer.Option(help="Print a progress line every N steps when not on a terminal.", rich_help_panel=_RUN)] = 10,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML/YAML file with options ([finetune] table or top level).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing run directory.")] = False,
) -> None:
    """Fine-tune a checkpoint: SFT with a chat or prompt template, or classification; full or LoRA."""
    from llmkit import artifacts
    from llmkit.config import explicit_params, resolve
    from llmkit.console import out as console_out
    from llmkit.finetune.stage import FinetuneConfig
    from llmkit.finetune.stage import finetune as run_finetune

    explicit = {k: v for k, v in explicit_params(ctx).items() if k not in ("checkpoint", "data", "out", "config", "force", "resume")}
    if "val_data" in explicit and explicit["val_data"] is not None:
        explicit["val_data"] = str(explicit["val_data"])
    for name in ("lora_targets", "freeze"):
        if explicit.get(name) is None:
            explicit.pop(name, None)
    settings = resolve(FinetuneConfig, file=config, section="finetune", explicit=explicit)
    path = run_finetune(checkpoint, data, out, settings, resume=resume, force=force)
    art = artifacts.load(path, kind="checkpoint")
    stats = art.stats
    line = (f"[green]checkpoint[/] {path}: {stats.get('task')}, step {stats.get('step')}, "
            f"{stats.get('trainable_params', 0):,} of {stats.get('params', 0):,} parameters trained")
    if stats.get("train_loss") is not None:
        line += f", train loss {stats['train_loss']:.4f}"
    if stats.get("val_loss") is not None:
        line += f", val loss {stats['val_loss']:.4f}"
    if stats.get("val_accuracy") is not None:
        line += f", val accuracy {stats['val_accuracy']:.4f}, macro F1 {stats['val_f1']:.4f}"
    console_out.print(line + f", fingerprint {art.fingerprint[:12]}", soft_wrap=True)
