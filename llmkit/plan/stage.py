"""`llmkit plan`: the plan itself, as a dict (the command prints it as tables or JSON).

    make_plan(PlanConfig(...)) -> {"model": ..., "layout": ..., "memory": ..., "compute": ..., ...}

The model's shapes come from a preset or flags, or a transformers config.json
(llmkit/model/hf_config.py); the memory model is estimate.py; the accelerators llmkit/hardware.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import UsageError, UserError
from llmkit.plan.config import DEFAULT_VOCAB, PlanConfig

if TYPE_CHECKING:
    from llmkit.plan.estimate import Device


def read_hf_config(path: Path) -> dict:
    """A transformers config.json as plain JSON (no transformers needed); a model's folder gives its own."""
    if Path(path).is_dir():
        if not (Path(path) / "config.json").is_file():
            raise UserError(f"--hf-config {path}: a folder without a config.json; give a transformers model's folder or its "
                            "config.json")
        path = Path(path) / "config.json"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"--hf-config {path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"--hf-config {path}: not a transformers config (a JSON object)")
    return data


def model_config(cfg: PlanConfig, hf_data: dict | None = None):
    """The llmkit ModelConfig planned: the shapes of `hf_data` (--hf-config, read; --vocab-size over its
    vocabulary, as pretrain's tokenizer would be), else the model flags."""
    from llmkit.model.hf_config import shapes_from_config_json
    from llmkit.model.presets import resolve_model_config

    if hf_data is not None:
        if cfg.vocab_size is not None:
            hf_data = {**hf_data, "vocab_size": cfg.vocab_size}
        elif hf_data.get("vocab_size") is None:
            raise UserError(f"--hf-config {cfg.hf_config}: it gives no vocab_size; add one to it, or give --vocab-size")
        config = shapes_from_config_json(hf_data, f"--hf-config {cfg.hf_config}")
    else:
        config = resolve_model_config(cfg.model.model, cfg.vocab_size or DEFAULT_VOCAB, cfg.model.overrides())
    if config.arch == "lstm":
        raise UsageError("llmkit plan sizes Transformers; the LSTM baseline has no layout to plan")
    return config


def hardware(cfg: PlanConfig) -> tuple[str, Device, float]:
    """(name, the Device each rank gets, its peak FLOP/s in the run's precision)."""
    from llmkit.hardware import BY_KEY
    from llmkit.plan.estimate import Device
    from llmkit.train.options import resolve_precision

    bf16 = resolve_precision(cfg.numerics.precision, "cpu" if cfg.gpu == "cpu" else "cuda") == "bf16"
    given = cfg.peak_tflops * 1e12 if cfg.peak_tflops is not None else None
    if cfg.gpu == "cpu":
        # the processes of one machine share its RAM and its cores (so a search over process counts divides them)
        memory = cfg.memory_gb or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        return "CPU", Device(memory, on_gpu=False, bf16=bf16, shared=True), given or _cpu_flops(bf16)
    accelerator = BY_KEY[cfg.gpu]
    # the table holds bf16 peaks; an fp32 run (no tensor cores in bf16) is not given its own figure
    return (accelerator.key, Device(cfg.memory_gb or accelerator.memory_gb, on_gpu=True, bf16=bf16),
            given or accelerator.bf16_flops)


def _cpu_flops(bf16: bool) -> float:
    """Matrix-product FLOP/s of this machine's CPU in the run's precision (a fraction of a second)."""
    import time

    import torch

    from llmkit.model import cpu_gemm

    # fp32 through the products training uses (oneDNN's where the CPU has AVX-512: twice MKL's there);
    # bf16 runs under autocast, which PyTorch sends to oneDNN itself.
    product = (lambda x: x @ x) if bf16 else (lambda x: cpu_gemm.matmul(x, x))
    # Sizes grow until one product takes a measurable time: where bf16 is emulated (no AVX-512 or AMX) a
    # 256-wide product already does, and a 1024-wide one took seconds.
    size, seconds = 128, 0.0
    while size < 1024 and seconds < 0.02:
        size *= 2
        a = torch.randn(size, size, dtype=torch.bfloat16 if bf16 else torch.float32)
        product(a)  # the first product allocates and picks its kernel
        start = time.perf_counter()
        product(a)
        seconds = time.perf_counter() - start
    # the fastest of three rounds: one round on a shared machine moved the plan's speed by 44 % from one
    # invocation to the next (a review, 2026-12-07)
    repeats, fastest = max(1, min(4, int(0.1 / seconds))), float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            product(a)
        fastest = min(fastest, time.perf_counter() - start)
    return repeats * 2 * size**3 / fastest


def compute_optimal_tokens(cfg: PlanConfig, shape, flops_per_token: float) -> tuple[float, str, list[str]]:
    """Training tokens for this size: from a fitted scaling law (its compute-optimal line), else N x
    tokens_per_param; and notes where the law is extrapolated (scaling predict says as much), or
    counts compute otherwise than the plan."""
    if cfg.scaling is None:
        return cfg.tokens_per_param * shape.total, f"{cfg.tokens_per_param:g} tokens per parameter", []
    from llmkit import artifacts
    from llmkit.scaling_law import Law, fitted_points, outside_the_points

    art = artifacts.load(cfg.scaling, kind="scaling")
    law = Law.of(art)
    total = art.config.get("count") == "total"
    counted = shape.total if total else shape.non_embedding
    tokens = law.tokens_for(counted)
    outside = (outside_the_points(counted, tokens, fitted_points(art.file("points.csv")))
               if "points.csv" in art.manifest.files else [])
    notes = [f"tokens: the fitted law extrapolated ({'; '.join(outside)}): its split is a guess that far from the points"] if outside else []
    ratio = flops_per_token / (6 * counted)  # the law's C is 6 N D, the sweep's convention
    if abs(ratio - 1) > 0.1:
        notes.append(f"compute: the law counts C = 6 N D ({6 * counted * tokens:.3g} FLOPs for these tokens, N its "
                     f"{'total' if total else 'non-embedding'} parameters); this plan counts the model's products and "
                     f"attention, {ratio:.2f}x that ("
                     + (f"6 N D leaves out attention{' and the head' if not total and shape.config.tie_embeddings else ''}, "
                        "large beside a small model's blocks)" if ratio > 1 else
                        "its N counts embeddings, which are looked up, not multiplied)"))
    return tokens, (f"the fitted law in {cfg.scaling} (alpha {law.alpha:.3f}, beta {law.beta:.3f}; N "
                    f"counted as {'total' if total else 'non-embedding'} parameters, as the fit did)"), notes


def make_plan(cfg: PlanConfig) -> dict[str, Any]:
    from llmkit.model.hf_config import planning_approximations
    from llmkit.plan.estimate import ModelShape, estimate_memory, fixes, largest_micro_batch, smallest_layout

    hf_data = read_hf_config(cfg.hf_config) if cfg.hf_config else None
    config = model_config(cfg, hf_data)
    shape = ModelShape.of(config)
    asked = _asked_layout(cfg, config, hf_data)  # the micro-batch given: what fixes and the search change
    seq = asked.seq_len
    layout, sequences = _with_the_batch_split(cfg, asked)
    name, device, peak = hardware(cfg)
    memory = estimate_memory(shape, layout, device)
    flops_token = shape.flops_per_token(seq)
    # MFU counts the model's FLOPs; recomputation and the pipeline's idle bubble cost time beside them.
    # a CPU's peak is the whole machine's, whatever the number of processes sharing it
    machines = layout.nnodes if device.shared else layout.world
    tokens_per_s = machines * peak * cfg.mfu / flops_token * (1 - layout.pipeline_bubble) / layout.recompute_factor
    # by default one micro-batch per data-parallel rank and pipeline micro-batch: the fewest a pipeline step runs
    batch_tokens = (cfg.batch_tokens // seq * seq) if cfg.batch_tokens else layout.micro_batch * seq * layout.batch_ways
    optimal_tokens, optimal_rule, extrapolated = compute_optimal_tokens(cfg, shape, flops_token)
    plan: dict[str, Any] = {
        "model": {"parameters": shape.total, "non_embedding_parameters": shape.non_embedding, "layers": config.n_layer,
                  "width": config.n_embd, "heads": config.n_head, "kv_heads": config.n_kv_head, "mlp_hidden": config.mlp_hidden,
                  "vocab_size": config.vocab_size, "context_length": config.context_length, "tied_embeddings": config.tie_embeddings},
        "layout": {**asdict(layout), "world": layout.world, "dp": layout.dp, "device": name,
                   "memory_gb_per_device": device.memory_per_process(layout),
                   "precision": "bf16" if device.bf16 else "fp32"},
        "compute": {"flops_per_token": flops_token, "attention_share": 12 * config.n_layer * config.n_embd * seq / flops_token,
                    "mfu_assumed": cfg.mfu, "peak_flops": peak,
                    "peak_from": "--peak-tflops" if cfg.peak_tflops is not None else "measured" if not device.on_gpu else "table",
                    "pipeline_bubble": layout.pipeline_bubble,
                    "recompute_factor": layout.recompute_factor, "tokens_per_s": tokens_per_s, "tokens_per_s_per_device": tokens_per_s / layout.world,
                    "batch_tokens": batch_tokens, "step_seconds": batch_tokens / tokens_per_s,
                    "compute_optimal_tokens": optimal_tokens, "compute_optimal_rule": optimal_rule,
                    "compute_optimal_flops": flops_token * optimal_tokens,
                    "compute_optimal_days": optimal_tokens / tokens_per_s / 86400},
        "memory": memory.as_dict(),
        "notes": memory.notes + (planning_approximations(hf_data) if hf_data is not None else []) + extrapolated,
    }
    if hf_data is not None and cfg.vocab_size is not None and cfg.vocab_size != hf_data.get("vocab_size"):
        plan["notes"].append(f"vocabulary: --vocab-size {cfg.vocab_size:,} instead of the config.json's vocab_size "
                             f"({json.dumps(hf_data.get('vocab_size'))})")
    if cfg.peak_tflops is not None and not 1e-3 <= cfg.peak_tflops <= 1e5:  # (a CPU core to a rack: FLOP/s typed?)
        plan["notes"].append(f"speed: --peak-tflops {cfg.peak_tflops:g} is outside what one device does (0.001 to 100,000 "
                             "TFLOP/s); it takes TFLOP/s, not FLOP/s")
    if device.on_gpu and not device.bf16 and cfg.peak_tflops is None:
        plan["notes"].append("speed: the table's peak is bf16's; an fp32 run (no TF32) is many times slower than this estimate")
    if not device.on_gpu and device.bf16:
        from llmkit.train.options import CPU_WITHOUT_BF16, cpu_has_bf16_products

        if not cpu_has_bf16_products():
            plan["notes"].append(f"speed: {CPU_WITHOUT_BF16}")
    if device.on_gpu and layout.nnodes > 1 and layout.tp > layout.gpus:
        plan["notes"].append(f"speed: --tp {layout.tp} spans nodes of {layout.gpus} device(s): its two all-reduces a layer "
                             "go over the network, not the node's links, and run far slower than this estimate; keep --tp "
                             "within --gpus (the search does)")
    default_run = _pretrains_default_batch(cfg, asked, shape, device) if sequences is None else None
    if default_run is not None:
        plan["notes"].append(default_run)
    if not memory.fits:
        # (a --micro-batch that pretrain's default batch does not split comes with one that does)
        flag = "--gpus" if cfg.nproc is None and cfg.placement.gpus > 1 else "--nproc"
        plan["fixes"] = fixes(shape, asked, device, sequences=sequences,
                              batch_for=lambda micro, ways: _batch_to_pass(micro, ways, seq, device), process_flag=flag)
        default_batch = _default_batch_sequences(asked, device) if sequences is None else None
        if default_batch is not None:
            # On a CPU, a proposal with a micro-batch (alone or beside other flags) is the one that fits pretrain's
            # default batch as pretrain runs it, accumulated, where there is one: the one-micro-batch plan proposed
            # --micro-batch 4 --batch-tokens 4096, a quarter of the batch, where --micro-batch 2 kept it and fit
            def flags_before_micro(fix: str) -> str:
                return fix.split("--micro-batch")[0]

            keeps = {flags_before_micro(fix): fix for fix in fixes(shape, asked, device, sequences=default_batch, process_flag=flag)
                     if "--micro-batch" in fix}
            swapped = [keeps.pop(flags_before_micro(fix), fix) if "--micro-batch" in fix else fix for fix in plan["fixes"]]
            plan["fixes"] = swapped + ([keeps[""]] if "" in keeps else [])
    if cfg.search:
        # A CPU's processes share a machine's memory: more machines, one process each. GPUs come in
        # nodes of 8, or of --gpus where --nnodes says the layout spans nodes of that size.
        per_node = 1 if device.shared else asked.gpus if asked.nnodes > 1 else 8
        found = layout if memory.fits else smallest_layout(shape, asked, device, sequences=sequences, per_node=per_node)
        plan["search"] = None if found is None else {
            "layout": {k: v for k, v in asdict(found).items() if k not in ("pp_schedule", "pp_microbatches")},
            "largest_micro_batch": largest_micro_batch(shape, found, device, sequences=sequences),
        }
        if found is None and (asked.ema or asked.keep_best):  # what leaving the copies out would find (the advice)
            without = smallest_layout(shape, replace(asked, ema=False, keep_best=False), device, sequences=sequences,
                                      per_node=per_node)
            plan["search_without_copies"] = None if without is None else {
                k: v for k, v in asdict(without).items() if k in ("gpus", "nnodes", "tp", "pp", "strategy", "activation_checkpointing")}
        if found is not None and sequences is None:
            plan["search"]["batch_tokens"] = _batch_to_pass(plan["search"]["largest_micro_batch"], found.batch_ways, seq, device)
        par = cfg.parallelism
        if found is not None and found.pp == 1 and (par.pp_microbatches is not None or par.pp_schedule != "1f1b"):
            # (taken for a pipeline the search might pick: it picked none, so they shape nothing)
            plan["notes"].append("search: the layout found has no pipeline, so --pp-schedule and --pp-microbatches shape "
                                 "nothing; leave them out of the pretrain command")
    return plan


def _asked_layout(cfg: PlanConfig, config, hf_data: dict | None):
    """The layout the options give, refused where pretrain would refuse it (a sequence past the
    context, a split the model's heads or layers do not divide)."""
    from llmkit.plan.estimate import Layout

    seq = cfg.seq_len or config.context_length
    if seq > config.context_length:
        # --hf-config refuses --context-length: its config.json says how long the context is
        longer = ("--context-length" if hf_data is None else
                  f"{'n_positions' if hf_data.get('model_type') == 'gpt2' else 'max_position_embeddings'} in {cfg.hf_config}")
        raise UsageError(f"--seq-len {seq} exceeds the model's context length {config.context_length}; lower --seq-len, "
                         f"or raise {longer}")
    place, par = cfg.placement, cfg.parallelism
    layout = Layout(gpus=place.gpus or 1, nnodes=place.nnodes, tp=par.tp, pp=par.pp, strategy=place.strategy,
                    micro_batch=place.micro_batch, seq_len=seq, activation_checkpointing=place.activation_checkpointing,
                    pp_schedule=par.pp_schedule, pp_microbatches=par.pp_microbatches, compiled=place.compile,
                    ema=cfg.copies.ema is not None, keep_best=cfg.copies.keep_best, optimizer=cfg.optim.optimizer)
    problem = layout.problem(config)
    if problem:
        raise UsageError(problem)
    return layout


def _with_the_batch_split(cfg: PlanConfig, layout):
    """`layout` with --batch-tokens split into micro-batches and accumulation as `llmkit pretrain`
    splits it (refused where it refuses), and the global batch in sequences; as given, None, without it."""
    if not cfg.batch_tokens:
        return layout, None
    from llmkit.train.launch import split_batch

    seq = layout.seq_len
    sequences = cfg.batch_tokens // seq
    if sequences < 1:
        raise UsageError(f"--batch-tokens {cfg.batch_tokens} is smaller than one sequence of {seq} tokens; raise it")
    micro, accumulation = split_batch(
        sequences, layout.micro_batch, layout.batch_ways, what=f"the global batch of {sequences} sequences (--batch-tokens "
        f"{cfg.batch_tokens} / seq_len {seq})", fix=lambda multiple: f"choose --batch-tokens as a multiple of {multiple * seq}")
    return replace(layout, micro_batch=micro, accumulation=accumulation), sequences


def _pretrains_default_batch(cfg: PlanConfig, asked, shape, device) -> str | None:
    """What `llmkit pretrain` given the plan's flags, without --batch-tokens, takes where that differs:
    it runs its default batch in accumulated micro-batches, which on a CPU hold partial sums of the
    gradients beside them (the plan counts one micro-batch a step: it said 0.73 GB for a run that took
    0.90, a review, 2026-12-07)."""
    from llmkit.plan.estimate import GB, estimate_memory, split
    from llmkit.train.options import DEFAULT_BATCH_TOKENS

    sequences = _default_batch_sequences(asked, device)
    run = split(asked, sequences) if sequences is not None else None
    if run is None or run.accumulation == 1:
        return None
    planned, taken = estimate_memory(shape, split(asked, None), device), estimate_memory(shape, run, device)
    if taken.total <= planned.total * 1.01:
        return None
    advice = ("" if taken.fits or not planned.fits else
              f", which does not fit; pass it --batch-tokens {asked.micro_batch * asked.batch_ways * asked.seq_len} for the step planned")
    return (f"memory: pretrain without --batch-tokens runs its default batch of {DEFAULT_BATCH_TOKENS:,} tokens, "
            f"{run.accumulation} micro-batches a step, whose partial sums of the gradients take {taken.total / GB:.2f} GB in all "
            f"(this plan counts one micro-batch a step){advice}")


def _default_batch_sequences(asked, device) -> int | None:
    """On a CPU, pretrain's default batch in sequences where pretrain runs it beside these flags (a smaller
    micro-batch then accumulates, whose partial sums take memory the one-micro-batch plan does not
    count); else None."""
    from llmkit.train.options import DEFAULT_BATCH_TOKENS

    seq = asked.seq_len
    if device.on_gpu or pretrain_batch_tokens(asked.micro_batch, asked.batch_ways, seq) is not None:
        return None
    return DEFAULT_BATCH_TOKENS // seq


def _batch_to_pass(micro_batch: int, ways: int, seq: int, device) -> int | None:
    """The --batch-tokens a proposed micro-batch goes with: the one pretrain needs (pretrain_batch_tokens),
    and on a CPU the step planned where pretrain's default batch would accumulate (its partial sums of the
    gradients: a proposed --micro-batch 2 that fit as planned did not as pretrain would run it)."""
    from llmkit.train.options import DEFAULT_BATCH_TOKENS

    needed = pretrain_batch_tokens(micro_batch, ways, seq)
    if needed is None and not device.on_gpu and DEFAULT_BATCH_TOKENS // seq > micro_batch * ways:
        return micro_batch * ways * seq
    return needed


def pretrain_batch_tokens(micro_batch: int, ways: int, seq: int) -> int | None:
    """The --batch-tokens that `llmkit pretrain` needs beside --micro-batch `micro_batch` on `ways`
    micro-batches at a time: None where its default splits into them (as it is, or shrunk to fit a
    small batch), else the step the plan counted: one micro-batch a rank, no accumulation (which
    holds more memory on a CPU: a larger batch is not what was found to fit)."""
    from llmkit.train.launch import split_batch
    from llmkit.train.options import DEFAULT_BATCH_TOKENS

    try:
        if DEFAULT_BATCH_TOKENS // seq >= 1:  # (a sequence longer than the default batch: pretrain refuses it)
            split_batch(DEFAULT_BATCH_TOKENS // seq, micro_batch, ways, what="", fix=str)
            return None
    except UsageError:
        pass
    return micro_batch * ways * seq
