"""`llmkit plan`: what a model costs on a layout, printed as tables (or `--json`).

    llmkit plan --model gpt2 --gpu h100                                  # 124M on one GPU
    llmkit plan --hf-config llama3-8b/config.json --gpus 8 --strategy fsdp --micro-batch 2 --seq-len 8192
    llmkit plan --model 1b --gpu a100-40gb --micro-batch 32 --search     # the largest micro-batch / smallest layout
"""

from __future__ import annotations

import json
from typing import Any

from llmkit.plan.config import PlanConfig
from llmkit.stage_command import stage_command


def _plan(config: PlanConfig) -> None:
    """Estimate parameters, FLOPs, memory per device and speed of training a model on a layout."""
    from llmkit.plan.stage import make_plan

    plan = make_plan(config)
    if config.json:
        print(json.dumps(plan, indent=2))
        return
    print_plan(plan)


plan = stage_command("plan", PlanConfig, _plan, force=None, writes_artifact=False)


def _human(value: float, unit: str = "") -> str:
    """2.49B tokens, but 98.30GFLOP/s: a count's billions, SI's giga for a unit."""
    for suffix, scale in (("Z", 1e21), ("E", 1e18), ("P", 1e15), ("T", 1e12), ("G" if unit else "B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}{unit}"
    return f"{value:.3g}{unit}"


def _duration(seconds: float) -> str:
    for unit, scale in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.1f} {unit}"
    return f"{seconds:.2f} s"


def _peak_from(source: str) -> str:
    return {"measured": "measured on this machine now: --peak-tflops fixes it", "table": "the device's bf16 peak",
            "--peak-tflops": "--peak-tflops"}[source]


def print_plan(plan: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    from llmkit.console import out

    m, lay, c, mem = plan["model"], plan["layout"], plan["compute"], plan["memory"]
    table = Table(title="model", show_header=False)
    table.add_row("parameters", f"{m['parameters']:,} ({_human(m['parameters'])}); non-embedding {m['non_embedding_parameters']:,}")
    table.add_row("shape", f"{m['layers']} layers x {m['width']}, {m['heads']} heads ({m['kv_heads']} kv), MLP {m['mlp_hidden']}, "
                           f"vocabulary {m['vocab_size']:,}, context {m['context_length']:,}")
    table.add_row("layout", f"{lay['world']} x {lay['device']} ({lay['memory_gb_per_device']:.3g} GB): dp {lay['dp']} x tp {lay['tp']} "
                            f"x pp {lay['pp']}, {lay['strategy']}, {lay['precision']}, micro-batch {lay['micro_batch']} x {lay['seq_len']} tokens"
                            + (", activation checkpointing" if lay["activation_checkpointing"] else ""))
    table.add_row("FLOPs per token", f"{_human(c['flops_per_token'])} (6N + attention {c['attention_share']:.0%})")
    costs = ([f"recompute x{c['recompute_factor']:.2f}"] if c["recompute_factor"] != 1 else []) + (
        [f"pipeline bubble {c['pipeline_bubble']:.0%}"] if c["pipeline_bubble"] else [])
    table.add_row("speed", f"{_human(c['tokens_per_s'])} tokens/s ({_human(c['tokens_per_s_per_device'])} per device) at MFU "
                           f"{c['mfu_assumed']:.0%} of {_human(c['peak_flops'], 'FLOP/s')} ({_peak_from(c['peak_from'])})"
                           f"{' with ' + ', '.join(costs) if costs else ''}; a step of "
                           f"{c['batch_tokens']:,} tokens in {_duration(c['step_seconds'])}")
    table.add_row("compute-optimal", f"{_human(c['compute_optimal_tokens'])} tokens ({c['compute_optimal_rule']}): "
                                     f"{_human(c['compute_optimal_flops'], 'FLOP')}, {_duration(c['compute_optimal_days'] * 86400)} on this layout")
    out.print(table)
    memory = Table(title="memory per device (the busiest)")
    memory.add_column("part")
    memory.add_column("GB", justify="right")
    for part in ("weights", "gradients", "optimizer", "activations", "logits", "transient", "allowance"):
        memory.add_row(part, f"{mem[part + '_gb']:.2f}")
    memory.add_row("total", f"{mem['total_gb']:.2f} of {mem['available_gb']:.3g}", style="bold")
    out.print(memory)
    out.print(Text.assemble("verdict: ", ("fits", "green") if mem["fits"] else ("does not fit", "red")))
    for note in plan.get("notes", []):
        out.print(f"note: {note}", markup=False)
    if not mem["fits"]:
        found = plan.get("fixes") or []
        otherwise = "see the search below" if "search" in plan else "try --search"
        out.print("what makes it fit: " + ("; ".join(found) if found else f"no single change does; {otherwise}"), markup=False)
    if "search" in plan:
        found = plan["search"]
        if found is None:
            machines = "256 machines" if lay["device"] == "CPU" else "256 nodes of 8"
            copies = [flag for flag, kept in (("--ema", lay.get("ema")), ("--keep-best", lay.get("keep_best"))) if kept]
            without = plan.get("search_without_copies")
            smaller = "lower --micro-batch or --seq-len" if lay["micro_batch"] > 1 else "lower --seq-len, or use more memory"
            found_without = (f"without {' and '.join(copies)}: {without['gpus'] * without['nnodes']} device(s) ({without['nnodes']} "
                             f"node(s) of {without['gpus']}), tp {without['tp']}, pp {without['pp']}, {without['strategy']}"
                             + (", activation checkpointing" if without["activation_checkpointing"] else "")
                             + (" (--average-last averages the last checkpoints instead of --ema)" if "--ema" in copies else "")
                             if without else
                             f"nor without {' and '.join(copies)}; {smaller}")
            out.print(f"search: no layout up to {machines} fits this micro-batch and sequence length"
                      + (f" with {' and '.join(copies)}, which rule out --strategy fsdp, --tp and --pp (each keeps whole "
                         f"weights on every process); {found_without}"
                         if copies else f"; {smaller}"), markup=False)
        else:
            lay2 = found["layout"]
            out.print(f"search: {lay2['gpus'] * lay2['nnodes']} device(s) ({lay2['nnodes']} node(s)), tp {lay2['tp']}, pp {lay2['pp']}, "
                      f"{lay2['strategy']}" + (", activation checkpointing" if lay2["activation_checkpointing"] else "")
                      + f"; largest micro-batch {found['largest_micro_batch']}"
                      + (f" (with --batch-tokens {found['batch_tokens']}: pretrain's default does not split into it)"
                         if found.get("batch_tokens") else ""), markup=False)
