"""`llmkit plan`: what a model costs on a layout, printed as tables (or `--json`).

    llmkit plan --model gpt2 --gpu h100                                  # 124M on one GPU
    llmkit plan --hf-config llama3-8b/config.json --gpus 8 --strategy fsdp --micro-batch 2 --seq-len 8192
    llmkit plan --model 1b --gpu a100-40gb --micro-batch 32 --search     # the largest micro-batch / smallest layout
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import UserError
from llmkit.plan.config import PlanConfig
from llmkit.stage_command import stage_command

if TYPE_CHECKING:
    from llmkit.plan.estimate import Device

GPT2_TYPES = ("gpt2",)
LLAMA_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def model_config_from_hf(path: Path):
    """The llmkit ModelConfig with the shapes of a transformers config.json (no transformers needed)."""
    from llmkit.model.hf_config import GPT2_STYLE, LLAMA_STYLE, config_with_mlp_width

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"--hf-config {path}: not a readable JSON file ({exc})") from None
    kind = data.get("model_type")
    try:
        if kind in GPT2_TYPES:
            values = dict(GPT2_STYLE, bias=True, vocab_size=data["vocab_size"], context_length=data.get("n_positions", 1024),
                          n_layer=data["n_layer"], n_head=data["n_head"], n_kv_head=data["n_head"], n_embd=data["n_embd"],
                          tie_embeddings=bool(data.get("tie_word_embeddings", True)))
            return config_with_mlp_width(values, data.get("n_inner") or 4 * data["n_embd"], kind)
        if kind in LLAMA_TYPES:
            heads, width = data["num_attention_heads"], data["hidden_size"]
            if data.get("head_dim") not in (None, width // heads):
                raise UserError(f"--hf-config {path}: head_dim {data['head_dim']} is not hidden_size / num_attention_heads; "
                                "llmkit's attention derives the head size from the width")
            values = dict(LLAMA_STYLE, vocab_size=data["vocab_size"], context_length=data.get("max_position_embeddings", 2048),
                          n_layer=data["num_hidden_layers"], n_head=heads, n_kv_head=data.get("num_key_value_heads") or heads,
                          n_embd=width, bias=bool(data.get("attention_bias", kind == "qwen2")),
                          tie_embeddings=bool(data.get("tie_word_embeddings", False)))
            return config_with_mlp_width(values, data["intermediate_size"], kind)
    except KeyError as exc:
        raise UserError(f"--hf-config {path}: a {kind} config needs {exc.args[0]!r}") from None
    raise UserError(f"--hf-config {path}: model_type {kind!r} is not one llmkit plans for; use GPT-2, Llama, Mistral or Qwen2 "
                    "configs, or the model flags")


def model_config(cfg: PlanConfig):
    from llmkit.model.presets import resolve_model_config

    config = model_config_from_hf(cfg.hf_config) if cfg.hf_config else resolve_model_config(
        cfg.model.model, cfg.vocab_size, cfg.model.overrides())
    if config.arch == "lstm":
        raise UserError("llmkit plan sizes Transformers; the LSTM baseline has no layout to plan")
    return config


def hardware(cfg: PlanConfig) -> tuple[str, Device, float]:
    """(name, the Device each rank gets, its peak FLOP/s in the run's precision)."""
    from llmkit.hardware import BY_KEY
    from llmkit.plan.estimate import Device
    from llmkit.train.options import resolve_precision

    bf16 = resolve_precision(cfg.numerics.precision, "cpu" if cfg.gpu == "cpu" else "cuda") == "bf16"
    if cfg.gpu == "cpu":
        # the processes of one machine share its RAM
        memory = cfg.memory_gb or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9 / (cfg.placement.gpus or 1)
        return "CPU", Device(memory, on_gpu=False, bf16=bf16), _cpu_flops(bf16)
    accelerator = BY_KEY[cfg.gpu]
    # the table holds bf16 peaks; an fp32 run (no tensor cores in bf16) is not given its own figure
    return accelerator.key, Device(cfg.memory_gb or accelerator.memory_gb, on_gpu=True, bf16=bf16), accelerator.bf16_flops


def _cpu_flops(bf16: bool) -> float:
    """Matrix-product FLOP/s of this machine's CPU in the run's precision (a fraction of a second)."""
    import time

    import torch

    a = torch.randn(1024, 1024, dtype=torch.bfloat16 if bf16 else torch.float32)
    a @ a
    start = time.perf_counter()
    for _ in range(4):
        a @ a
    return 4 * 2 * 1024**3 / (time.perf_counter() - start)


def compute_optimal_tokens(cfg: PlanConfig, shape) -> tuple[float, str]:
    """Training tokens for this size: from a fitted scaling law (its compute-optimal line), else N x tokens_per_param."""
    if cfg.scaling is None:
        return cfg.tokens_per_param * shape.total, f"{cfg.tokens_per_param:g} tokens per parameter"
    from llmkit import artifacts
    from llmkit.scaling_law import Law

    art = artifacts.load(cfg.scaling, kind="scaling")
    law = Law.of(art)
    counted = shape.total if art.config.get("count") == "total" else shape.non_embedding
    return law.tokens_for(counted), f"the fitted law in {cfg.scaling} (alpha {law.alpha:.3f}, beta {law.beta:.3f})"


def make_plan(cfg: PlanConfig) -> dict[str, Any]:
    from llmkit.plan.estimate import Layout, ModelShape, estimate_memory, fixes, largest_micro_batch, smallest_layout

    config = model_config(cfg)
    shape = ModelShape.of(config)
    seq = cfg.seq_len or config.context_length
    if seq > config.context_length:
        raise UserError(f"--seq-len {seq} exceeds the model's context length {config.context_length}; raise --context-length")
    place, par = cfg.placement, cfg.parallelism
    layout = Layout(gpus=place.gpus or 1, nnodes=place.nnodes, tp=par.tp, pp=par.pp, strategy=place.strategy,
                    micro_batch=place.micro_batch, seq_len=seq, activation_checkpointing=place.activation_checkpointing,
                    pp_schedule=par.pp_schedule, pp_microbatches=par.pp_microbatches)
    problem = layout.problem(config)
    if problem:
        raise UserError(problem)
    if cfg.batch_tokens:
        layout = replace(layout, accumulation=max(1, cfg.batch_tokens // (layout.micro_batch * seq * layout.dp)))
    name, device, peak = hardware(cfg)
    memory = estimate_memory(shape, layout, device)
    flops_token = shape.flops_per_token(seq)
    # MFU counts the model's FLOPs; recomputation and the pipeline's idle bubble cost time beside them.
    tokens_per_s = layout.world * peak * cfg.mfu / flops_token * (1 - layout.pipeline_bubble) / layout.recompute_factor
    batch_tokens = cfg.batch_tokens or layout.micro_batch * seq * layout.dp
    optimal_tokens, optimal_rule = compute_optimal_tokens(cfg, shape)
    plan: dict[str, Any] = {
        "model": {"parameters": shape.total, "non_embedding_parameters": shape.non_embedding, "layers": config.n_layer,
                  "width": config.n_embd, "heads": config.n_head, "kv_heads": config.n_kv_head, "mlp_hidden": config.mlp_hidden,
                  "vocab_size": config.vocab_size, "context_length": config.context_length, "tied_embeddings": config.tie_embeddings},
        "layout": {**asdict(layout), "world": layout.world, "dp": layout.dp, "device": name, "memory_gb_per_device": device.memory_gb,
                   "precision": "bf16" if device.bf16 else "fp32"},
        "compute": {"flops_per_token": flops_token, "attention_share": 12 * config.n_layer * config.n_embd * seq / flops_token,
                    "mfu_assumed": cfg.mfu, "pipeline_bubble": layout.pipeline_bubble,
                    "recompute_factor": layout.recompute_factor, "tokens_per_s": tokens_per_s, "tokens_per_s_per_device": tokens_per_s / layout.world,
                    "batch_tokens": batch_tokens, "step_seconds": batch_tokens / tokens_per_s,
                    "compute_optimal_tokens": optimal_tokens, "compute_optimal_rule": optimal_rule,
                    "compute_optimal_flops": flops_token * optimal_tokens,
                    "compute_optimal_days": optimal_tokens / tokens_per_s / 86400},
        "memory": memory.as_dict(),
        "notes": memory.notes,
    }
    if device.on_gpu and not device.bf16:
        plan["notes"].append("speed: the table's peak is bf16's; an fp32 run (no TF32) is many times slower than this estimate")
    if not memory.fits:
        plan["fixes"] = fixes(shape, layout, device)
    if cfg.search:
        found = layout if memory.fits else smallest_layout(shape, layout, device)
        plan["search"] = None if found is None else {
            "layout": {k: v for k, v in asdict(found).items() if k not in ("pp_schedule", "pp_microbatches")},
            "largest_micro_batch": largest_micro_batch(shape, found, device),
        }
    return plan


def _plan(config: PlanConfig) -> None:
    """Estimate parameters, FLOPs, memory per device and speed of training a model on a layout."""
    plan = make_plan(config)
    if config.json:
        print(json.dumps(plan, indent=2))
        return
    print_plan(plan)


plan = stage_command("plan", PlanConfig, _plan, force=None, writes_artifact=False)


def _human(value: float, unit: str = "") -> str:
    for suffix, scale in (("Z", 1e21), ("E", 1e18), ("P", 1e15), ("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}{unit}"
    return f"{value:.3g}{unit}"


def _duration(seconds: float) -> str:
    for unit, scale in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.1f} {unit}"
    return f"{seconds:.2f} s"


def print_plan(plan: dict[str, Any]) -> None:
    from rich.table import Table

    from llmkit.console import out

    m, lay, c, mem = plan["model"], plan["layout"], plan["compute"], plan["memory"]
    table = Table(title="model", show_header=False)
    table.add_row("parameters", f"{m['parameters']:,} ({_human(m['parameters'])}); non-embedding {m['non_embedding_parameters']:,}")
    table.add_row("shape", f"{m['layers']} layers x {m['width']}, {m['heads']} heads ({m['kv_heads']} kv), MLP {m['mlp_hidden']}, "
                           f"vocabulary {m['vocab_size']:,}, context {m['context_length']:,}")
    table.add_row("layout", f"{lay['world']} x {lay['device']} ({lay['memory_gb_per_device']:.0f} GB): dp {lay['dp']} x tp {lay['tp']} "
                            f"x pp {lay['pp']}, {lay['strategy']}, {lay['precision']}, micro-batch {lay['micro_batch']} x {lay['seq_len']} tokens"
                            + (", activation checkpointing" if lay["activation_checkpointing"] else ""))
    table.add_row("FLOPs per token", f"{_human(c['flops_per_token'])} (6N + attention {c['attention_share']:.0%})")
    costs = ([f"recompute x{c['recompute_factor']:.2f}"] if c["recompute_factor"] != 1 else []) + (
        [f"pipeline bubble {c['pipeline_bubble']:.0%}"] if c["pipeline_bubble"] else [])
    table.add_row("speed", f"{_human(c['tokens_per_s'])} tokens/s ({_human(c['tokens_per_s_per_device'])} per device) at MFU "
                           f"{c['mfu_assumed']:.0%}{' with ' + ', '.join(costs) if costs else ''}; a step of "
                           f"{c['batch_tokens']:,} tokens in {_duration(c['step_seconds'])}")
    table.add_row("compute-optimal", f"{_human(c['compute_optimal_tokens'])} tokens ({c['compute_optimal_rule']}): "
                                     f"{_human(c['compute_optimal_flops'])}FLOP, {_duration(c['compute_optimal_days'] * 86400)} on this layout")
    out.print(table)
    memory = Table(title="memory per device (the busiest)")
    memory.add_column("part")
    memory.add_column("GB", justify="right")
    for part in ("weights", "gradients", "optimizer", "activations", "logits", "transient", "allowance"):
        memory.add_row(part, f"{mem[part + '_gb']:.2f}")
    memory.add_row("total", f"{mem['total_gb']:.2f} of {mem['available_gb']:.0f}", style="bold")
    out.print(memory)
    verdict = "[green]fits[/]" if mem["fits"] else "[red]does not fit[/]"
    out.print(f"verdict: {verdict}")
    for note in plan.get("notes", []):
        out.print(f"note: {note}", markup=False)
    if not mem["fits"]:
        found = plan.get("fixes") or []
        out.print("what makes it fit: " + ("; ".join(found) if found else "no single change does; try --search"), markup=False)
    if "search" in plan:
        found = plan["search"]
        if found is None:
            out.print("search: no layout up to 256 nodes of 8 fits this micro-batch and sequence length", markup=False)
        else:
            lay2 = found["layout"]
            out.print(f"search: {lay2['gpus'] * lay2['nnodes']} device(s) ({lay2['nnodes']} node(s)), tp {lay2['tp']}, pp {lay2['pp']}, "
                      f"{lay2['strategy']}" + (", activation checkpointing" if lay2["activation_checkpointing"] else "")
                      + f"; largest micro-batch {found['largest_micro_batch']}", markup=False)
