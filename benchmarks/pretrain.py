"""Benchmark: a `llmkit pretrain` step vs two plain-PyTorch references at the same shape.

Sides (each in its own process, so that peak memory is its own):
  llmkit           the training loop's own `Trainer.train_step` over llmkit's GPT-2-style model
                   (`--model gpt2-tiny` resized): forward/backward, loss sync, grad-norm clipping,
                   fused AdamW, zero_grad(set_to_none=True); fp32 on CPU, where gradients are per
                   sequence by default (--batch-invariant: the same weights whatever the split).
  llmkit MKL       the same with LLMKIT_CPU_GEMM=mkl: PyTorch's own fp32 products (MKL) instead of
                   oneDNN's (llmkit/model/cpu_gemm.py); CPU only.
  llmkit usual sums  the same with --no-batch-invariant (PyTorch's own backward); CPU only.
  nanoGPT-style    the fastest plain-PyTorch GPT-2 we know, written in this file after nanoGPT's
                   model.py + train.py: one fused q/k/v Linear, F.scaled_dot_product_attention,
                   learned positions, tied head, fused AdamW; the same parameter count (asserted)
                   and llmkit's initial weights, so the losses agree to float rounding.
  GPT2LMHeadModel  transformers' GPT-2 in the same plain loop (--no-hf leaves it out).
All train LayerNorm, learned positions, GELU (tanh), biases, tied embeddings, no dropout, on the
same token windows of tinyshakespeare, with the same batch, sequence length, AdamW settings
(lr 6e-4, betas 0.9/0.95, weight decay 0.1 on matrices, fused) and clipping (1.0).

Rounds run every side once, alternating the order; printed per side: median tokens per second
of wall time and per CPU-second (process CPU time, all threads) over the timed steps, best
round; per pair the median over rounds of the same-round ratio. On a shared machine CPU time
is the figure to trust.

CPU (always):   python benchmarks/pretrain.py
GPU (if CUDA):  the same at GPT-2 124M (12 x 768, vocabulary 50,304), seq 1024, bf16 autocast,
                torch.compile on every side, plus MFU against the measured bf16 matmul peak of the GPU
                and against its table peak (llmkit/hardware.py; measured for a GPU not in the table).
Prepare once, then run with no data set at hand (benchmarks/gpu_check.sh does):
                python benchmarks/pretrain.py --prepare-only --cache DIR; python benchmarks/pretrain.py --gpu-only --cache DIR

Options: --steps N --warmup N --rounds N --threads N --n-layer --n-embd --n-head --seq --batch --vocab --no-hf
         --precision bf16 (the CPU section with every side under bf16 autocast)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from paired import median  # (benchmarks/ is on the path when run as a script)
SHARED = Path(os.environ.get("LLMKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


# -- data: the real stages (corpus artifact per contract 1, tokenizer train, tokenize) --------


def prepare_tokens(root: Path, vocab: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmkit import artifacts
    from llmkit.tokenizer.encode_corpus import TokenizeConfig, tokenize_corpus
    from llmkit.tokenizer.train import TokenizerTrainConfig, train_tokenizer

    tokens = root / f"tokens-{vocab}"
    if (tokens / "manifest.json").is_file():
        return tokens
    text = (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8")
    docs = [p.strip() + "\n" for p in text.split("\n\n") if p.strip()]
    corpus = root / "corpus"
    if not (corpus / "manifest.json").is_file():
        with artifacts.create(corpus, "corpus", force=True) as build:
            (build.dir / "shards").mkdir()
            pq.write_table(pa.table({"id": [str(i) for i in range(len(docs))], "text": docs, "source": ["tinyshakespeare"] * len(docs)}),
                           build.dir / "shards" / "part-00000.parquet")
            build.stats = {"documents": len(docs), "bytes": len(text.encode())}
    tokenizer = train_tokenizer([corpus], root / f"tokenizer-{vocab}", TokenizerTrainConfig(vocab_size=vocab), force=True)
    return tokenize_corpus(corpus, tokenizer, tokens, TokenizeConfig(val_fraction=0.05), force=True)


# -- the two sides ----------------------------------------------------------------------------


def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1e6
    from llmkit.train.metrics import peak_rss_bytes

    return peak_rss_bytes() / 1e6  # VmHWM: ru_maxrss would carry the parent's peak across exec


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1e3
    return 0.0


def timed_steps(args, step) -> dict:
    """Run `step(i)` (which returns the step's loss as a float, i.e. after the per-step sync)
    args.steps times; the median wall and CPU seconds of the steps after the warm-up."""
    walls, cpus, loss = [], [], None
    for i in range(args.steps):
        wall, cpu = time.perf_counter(), time.process_time()
        loss = step(i)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    tokens = args.batch * args.seq
    wall, cpu = median(walls[args.warmup :]), median(cpus[args.warmup :])
    # the peak before any profiling, whose buffers would count on a CPU
    result = {"tokens_per_s": tokens / wall, "tokens_per_cpu_s": tokens / max(cpu, 1e-9), "final_loss": loss,
              "peak_mb": peak_memory_mb(args.device)}
    if args.profile:
        result["profile"] = profile_steps(args, step, first=args.steps, wall_ms=wall * 1e3)
    return result


PROFILED_STEPS = 3


def profile_steps(args, step, first: int, wall_ms: float) -> str:
    """--profile: a few more steps under torch.profiler. Where a side's step goes: its wall time
    beside the time its kernels ran (on a GPU the gap is the device waiting for the host), and
    the kernels (on a CPU, the operators) that took the most."""
    from operator import attrgetter

    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    gpu = args.device == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])) as prof:
        for i in range(first, first + PROFILED_STEPS):
            step(i)
        if gpu:
            torch.cuda.synchronize()
    events = prof.key_averages()
    if gpu:
        # kernels and copies only: the profiler mirrors annotations (a compiled graph's call, the
        # optimizer's step) onto the GPU's timeline too, spanning the kernels they launch
        top = [e for e in events if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
        busy = sum(e.self_device_time_total for e in top) / PROFILED_STEPS / 1e3
        head = f"{wall_ms:.2f} ms a step (timed), kernels {busy:.2f} ms, {sum(e.count for e in top) / PROFILED_STEPS:.0f} kernels a step"
        timed = attrgetter("self_device_time_total")
    else:
        top = [e for e in events if e.device_type == DeviceType.CPU]
        head = f"{wall_ms:.2f} ms a step (timed); operators by their own CPU time"
        timed = attrgetter("self_cpu_time_total")
    lines = [head] + [f"  {timed(e) / PROFILED_STEPS / 1e3:9.3f} ms  x{e.count // PROFILED_STEPS:<5d} {e.key[:100]}"
                      for e in sorted(top, key=lambda e: -timed(e))[:15]]
    return "\n".join(lines)


def model_vocab(args, shards) -> int:
    """The models' vocabulary: the tokenizer's, or --model-vocab (GPU: GPT-2's 50,257 padded to
    50,304 as nanoGPT pads it, whatever tinyshakespeare's tokenizer learned), never smaller."""
    return max(args.model_vocab or 0, shards.vocab_size)


def llmkit_model(args, vocab_size: int):
    """llmkit's GPT-2-style model at the benchmark's shape, as `llmkit pretrain --model gpt2-tiny` builds it."""
    from llmkit.model.presets import build_model, resolve_model_config

    config = resolve_model_config("gpt2-tiny", vocab_size, dict(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                                                               context_length=args.seq, dropout=0.0))
    return build_model(config)


def run_llmkit(args) -> dict:
    """What `llmkit pretrain` does per step: the loop's own Trainer.train_step (forward/backward under
    the loop's autocast, loss sync, grad-norm clipping, fused AdamW step, zero_grad(set_to_none=True))."""
    import torch

    from llmkit.data.shards import TokenShards, WindowSampler
    from llmkit.train.distributed import DistInfo
    from llmkit.train.loop import ArtifactSpec, LoopSettings, Trainer
    from llmkit.train.objectives import WindowBatches, lm_loss
    from llmkit.pretrain.stage import PretrainConfig

    gpu = args.device == "cuda"
    config = PretrainConfig.build(
        model="gpt2-tiny", n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, context_length=args.seq,
        dropout=0.0, seq_len=args.seq, batch_tokens=args.batch * args.seq, micro_batch=args.batch,
        max_steps=args.steps, lr=6e-4, warmup_steps=0, schedule="constant", weight_decay=0.1, grad_clip=1.0,
        eval_every=0, save_every=0, log_every=1, compile=args.compile, gpus=1 if gpu else 0,
        precision="bf16" if gpu else args.precision,
        batch_invariant=False if args.side == "llmkit-usual" else None,  # None: the default (on for CPU)
    )
    baseline = current_rss_mb() if not gpu else 0.0
    shards = TokenShards.open(args.tokens, "train")
    torch.manual_seed(0)
    model = llmkit_model(args, model_vocab(args, shards))
    settings = LoopSettings.for_stage(config, max_steps=args.steps, global_batch=args.batch, micro_batch=args.batch,
                                      tokens_per_sample=args.seq, warmup_steps=0, lr=6e-4)
    batches = WindowBatches(WindowSampler(shards, args.seq, 0), vocab_size=shards.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, settings, info=DistInfo(device=torch.device(args.device)), run_dir=Path(tmp) / "run",
                          batches=batches, loss_fn=lm_loss, spec=ArtifactSpec(config={}, seed=0))
        result = timed_steps(args, lambda i: trainer.train_step(i)[0])
    return dict(result, baseline_mb=baseline, params=model.num_params(),
                flops_per_token=model.flops_per_token(args.seq))


# -- the plain-PyTorch references -------------------------------------------------------------
#
# nanoGPT-style: the fastest plain-PyTorch GPT-2 we know how to write, after Karpathy's nanoGPT
# `model.py` + `train.py` (one fused q/k/v Linear, F.scaled_dot_product_attention with is_causal,
# learned positions indexed once per sequence and broadcast over the batch, tied head, fused
# AdamW with nanoGPT's decay groups). Written here, not imported: it is the reference, not llmkit.
# GELU is GPT-2's tanh form (nanoGPT uses the exact erf form, the same cost) so that, with the
# weights copied from llmkit's initial model, both sides compute the same numbers.


def nanogpt_model(n_layer: int, n_embd: int, n_head: int, block_size: int, vocab_size: int):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class CausalSelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(n_embd, 3 * n_embd)
            self.c_proj = nn.Linear(n_embd, n_embd)

        def forward(self, x):
            B, T, C = x.size()
            q, k, v = self.c_attn(x).split(n_embd, dim=2)
            q = q.view(B, T, n_head, C // n_head).transpose(1, 2)
            k = k.view(B, T, n_head, C // n_head).transpose(1, 2)
            v = v.view(B, T, n_head, C // n_head).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = nn.Linear(n_embd, 4 * n_embd)
            self.c_proj = nn.Linear(4 * n_embd, n_embd)

        def forward(self, x):
            return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(n_embd)
            self.attn = CausalSelfAttention()
            self.ln_2 = nn.LayerNorm(n_embd)
            self.mlp = MLP()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class NanoGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab_size, n_embd)
            self.wpe = nn.Embedding(block_size, n_embd)
            self.h = nn.ModuleList(Block() for _ in range(n_layer))
            self.ln_f = nn.LayerNorm(n_embd)
            self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
            self.wte.weight = self.lm_head.weight  # weight tying, as nanoGPT

        def forward(self, idx, targets):
            pos = torch.arange(0, idx.size(1), dtype=torch.long, device=idx.device)
            x = self.wte(idx) + self.wpe(pos)  # positions [T, C], broadcast over the batch
            for block in self.h:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    return NanoGPT()


def copy_llmkit_weights(nano, llmkit) -> None:
    """Load llmkit's initial weights into the nanoGPT-style model (q_proj and kv_proj become c_attn)."""
    import torch

    with torch.no_grad():
        nano.wte.weight.copy_(llmkit.tok_emb.weight)
        nano.wpe.weight.copy_(llmkit.pos_emb.weight)
        for mine, theirs in zip(nano.h, llmkit.blocks):
            mine.ln_1.load_state_dict(theirs.attn_norm.state_dict())
            mine.ln_2.load_state_dict(theirs.mlp_norm.state_dict())
            mine.attn.c_attn.weight.copy_(torch.cat([theirs.attn.q_proj.weight, theirs.attn.kv_proj.weight]))
            mine.attn.c_attn.bias.copy_(torch.cat([theirs.attn.q_proj.bias, theirs.attn.kv_proj.bias]))
            mine.attn.c_proj.load_state_dict(theirs.attn.out_proj.state_dict())
            mine.mlp.c_fc.load_state_dict(theirs.mlp.up_proj.state_dict())
            mine.mlp.c_proj.load_state_dict(theirs.mlp.down_proj.state_dict())
        nano.ln_f.load_state_dict(llmkit.final_norm.state_dict())


def reference_step(args, model, forward, optimizer, sampler, device):
    """One training step as nanoGPT's train.py does it, with the llmkit loop's syncs (loss value, grad norm)."""
    import torch

    if args.device == "cuda" or args.precision == "bf16":
        autocast = torch.autocast(args.device, dtype=torch.bfloat16)
    else:
        autocast = torch.autocast("cpu", enabled=False)

    def step(i: int) -> float:
        for group in optimizer.param_groups:
            group["lr"] = 6e-4
        x, y = sampler.get(range(i * args.batch, (i + 1) * args.batch))
        x, y = x.to(device), y.to(device)
        with autocast:
            loss = forward(x, y)
        loss.backward()
        loss_value = loss.item()
        float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_value

    return step


def decay_groups(model) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def run_nanogpt(args) -> dict:
    import torch

    from llmkit.data.shards import TokenShards, WindowSampler

    device = torch.device(args.device)
    baseline = current_rss_mb() if args.device == "cpu" else 0.0
    shards = TokenShards.open(args.tokens, "train")
    sampler = WindowSampler(shards, args.seq, 0)
    torch.manual_seed(0)
    vocab = model_vocab(args, shards)
    mine = llmkit_model(args, vocab)
    model = nanogpt_model(args.n_layer, args.n_embd, args.n_head, args.seq, vocab)
    params = sum(p.numel() for p in model.parameters())
    assert params == mine.num_params(), f"nanoGPT-style reference has {params:,} parameters, llmkit {mine.num_params():,}"
    copy_llmkit_weights(model, mine)
    del mine
    model.to(device).train()
    optimizer = torch.optim.AdamW(decay_groups(model), lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    forward = torch.compile(model) if args.compile else model
    result = timed_steps(args, reference_step(args, model, forward, optimizer, sampler, device))
    return dict(result, baseline_mb=baseline, params=params)


def run_hf(args) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmkit.data.shards import TokenShards, WindowSampler

    torch.manual_seed(0)
    device = torch.device(args.device)
    baseline = current_rss_mb() if args.device == "cpu" else 0.0
    shards = TokenShards.open(args.tokens, "train")
    sampler = WindowSampler(shards, args.seq, 0)
    config = GPT2Config(vocab_size=model_vocab(args, shards), n_positions=args.seq, n_embd=args.n_embd, n_layer=args.n_layer,
                        n_head=args.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).to(device)
    model.train()
    # Fused AdamW here too: the comparison is of the models, not of PyTorch's CPU optimizer default.
    optimizer = torch.optim.AdamW(decay_groups(model), lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    compiled = torch.compile(model) if args.compile else model

    def forward(x, y):
        logits = compiled(input_ids=x).logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))

    result = timed_steps(args, reference_step(args, model, forward, optimizer, sampler, device))
    return dict(result, baseline_mb=baseline, params=sum(p.numel() for p in model.parameters()))


def measured_bf16_peak() -> float:
    import torch

    from llmkit.train.metrics import measure_bf16_peak

    return max(measure_bf16_peak(torch.device("cuda")) for _ in range(3))


# -- driver -----------------------------------------------------------------------------------

# The GPU section trains GPT-2 small: 12 x 768 and GPT-2's vocabulary padded to a multiple of 64
# (nanoGPT's 50,304), on tinyshakespeare tokenized with a vocabulary of 8,192 (asked for 50,257,
# the trainer stops at the ~12,800 merges that text holds; the ids only need to fit the model's).
GPT2_VOCAB = 50304
GPU_TOKENIZER_VOCAB = 8192

SIDES = {"llmkit": run_llmkit, "llmkit-mkl": run_llmkit, "llmkit-usual": run_llmkit, "nanogpt": run_nanogpt, "hf": run_hf}
LABELS = {"llmkit": "llmkit", "llmkit-mkl": "llmkit MKL", "llmkit-usual": "llmkit usual sums", "nanogpt": "nanoGPT-style",
          "hf": "GPT2LMHeadModel"}
# llmkit's step with PyTorch's own (MKL) fp32 products instead of oneDNN's (llmkit/model/cpu_gemm.py):
# how much of the lead is the product library and how much the rest of the step
SIDE_ENV = {"llmkit-mkl": {"LLMKIT_CPU_GEMM": "mkl"}}


def side(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    result = SIDES[args.side](args)
    if args.side == "llmkit" and args.device == "cuda":
        result["bf16_peak"] = measured_bf16_peak()
        from llmkit.train.metrics import gpu_peak_flops

        result["table_peak"] = gpu_peak_flops(torch.device("cuda"))  # (what llmkit pretrain and plan divide by)
    print("RESULT " + json.dumps(result))


def args_device(extra: list[str]) -> str:
    return extra[extra.index("--device") + 1] if "--device" in extra else "cpu"


def run_side(args, name: str, extra: list[str]) -> dict:
    command = [sys.executable, __file__, "--side", name, "--tokens", str(args.tokens), "--threads", str(args.threads), *extra]
    # Every side gets the same OpenMP setting: idle threads sleep, as `llmkit pretrain` arranges.
    env = dict(os.environ, LLMKIT_PROGRESS="0", OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), **SIDE_ENV.get(name, {}))
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{name} side failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _check_same_work(rounds: list[dict[str, dict]], sides: list[str], *, bf16: bool) -> None:
    """llmkit's sides and the nanoGPT-style one start from the same weights and train on the same
    windows: their final losses agree (to float rounding; bf16 rounds more), or the ratio compares
    unlike work and the run stops. transformers' GPT-2 has weights of its own, and is not checked."""
    if "nanogpt" not in sides:
        return
    tolerance = 1e-2 if bf16 else 1e-4
    for number, results in enumerate(rounds, start=1):
        reference = results["nanogpt"]["final_loss"]
        for name in (n for n in sides if n.startswith("llmkit")):
            loss = results[name]["final_loss"]
            if abs(loss - reference) > tolerance * abs(reference):
                raise SystemExit(f"round {number}: {LABELS[name]}'s final loss {loss:.6f} differs from the nanoGPT-style "
                                 f"{reference:.6f} by more than {tolerance:g} relative: the sides did not do the same work")
    print(f"{'  same work':26s}  the llmkit and nanoGPT-style losses agree within {tolerance:g} relative, every round")


def compare(args, label: str, extra: list[str], sides: list[str]) -> dict:
    # Rounds pair the sides, alternating who goes first (llmkit first in odd rounds, last in even
    # ones), each side in its own process. Per side: the best per-round median of wall and of CPU
    # time; per pair: the ratio of the two runs of one round, whose median is printed. CPU time
    # (all threads of the process) is what a busy shared machine disturbs least.
    rounds: list[dict[str, dict]] = []
    for r in range(args.rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        results = {}
        for name in order:
            results[name] = run_side(args, name, extra)
            print(f"  round {r + 1}: {LABELS[name]} {results[name]['tokens_per_s']:,.0f} tokens/s wall, "
                  f"{results[name]['tokens_per_cpu_s']:,.0f}/CPU-s, {results[name]['params']:,} parameters", flush=True)
        rounds.append(results)
        line = "  ".join(f"{LABELS[n]} {rounds[-1][n]['tokens_per_s']:,.0f}/s wall {rounds[-1][n]['tokens_per_cpu_s']:,.0f}/CPU-s"
                         for n in sides)
        print(f"  round {r + 1}/{args.rounds}: {line}", flush=True)
    best = {n: {k: max(rr[n][k] for rr in rounds) for k in ("tokens_per_s", "tokens_per_cpu_s")} for n in sides}
    last = rounds[-1]
    a = last["llmkit"]
    print(f"\n== {label} ==")
    print(f"{'':26s}" + "".join(f" {LABELS[n]:>17s}" for n in sides) + "".join(f" {'vs ' + LABELS[n]:>20s}" for n in sides[1:]))
    print(f"{'params':26s}" + "".join(f"{last[n]['params']:>18,d}" for n in sides))
    for key, what in (("tokens_per_s", "tokens/s (wall)"), ("tokens_per_cpu_s", "tokens per CPU-second")):
        row = f"{what + ', best':26s}" + "".join(f"{best[n][key]:>18,.0f}" for n in sides)
        row += "".join(f"{best['llmkit'][key] / best[n][key]:>20.3f}x" for n in sides[1:])
        print(row)
        paired = {n: [rr["llmkit"][key] / rr[n][key] for rr in rounds] for n in sides[1:]}
        print(f"{'  paired ratio, median':26s}" + " " * 18 * len(sides) + "".join(f"{median(paired[n]):>20.3f}x" for n in sides[1:])
              + "   (per round: " + "; ".join(", ".join(f"{v:.3f}" for v in paired[n]) for n in sides[1:]) + ")")
    mem = "peak GPU memory (MB)" if "bf16_peak" in a or args_device(extra) == "cuda" else "peak RSS (MB)"
    print(f"{mem:26s}" + "".join(f"{last[n]['peak_mb']:>18,.0f}" for n in sides) + "".join(f"{a['peak_mb'] / last[n]['peak_mb']:>20.2f}x" for n in sides[1:]))
    if a.get("baseline_mb"):
        grow = {n: last[n]["peak_mb"] - last[n]["baseline_mb"] for n in sides}
        print(f"{'  of it for training':26s}" + "".join(f"{grow[n]:>18,.0f}" for n in sides) + "   (peak minus RSS before training)")
    print(f"{'final loss':26s}" + "".join(f"{last[n]['final_loss']:>18.4f}" for n in sides))
    _check_same_work(rounds, sides, bf16="bf16_peak" in a or args.precision == "bf16")
    if "bf16_peak" in a:
        mfu = "".join(f"{100 * a['flops_per_token'] * best[n]['tokens_per_s'] / a['bf16_peak']:>17.1f}%" for n in sides)
        print(f"{'MFU (measured peak)':26s}{mfu}   peak {a['bf16_peak'] / 1e12:.0f} TFLOP/s")
        if a.get("table_peak"):  # issue 15's 50 % is read on this basis too, as llmkit pretrain and plan read MFU
            mfu = "".join(f"{100 * a['flops_per_token'] * best[n]['tokens_per_s'] / a['table_peak']:>17.1f}%" for n in sides)
            print(f"{'MFU (table peak)':26s}{mfu}   peak {a['table_peak'] / 1e12:.0f} TFLOP/s")
    for n in sides:
        if "profile" in last[n]:
            print(f"\n{LABELS[n]}, profiled ({PROFILED_STEPS} steps after the timed ones): {last[n]['profile']}")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gpu-only", action="store_true", help="Skip the CPU comparison.")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="CPU section: every side in fp32, or every side under bf16 autocast (llmkit's --precision bf16).")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="Untimed first steps.")
    parser.add_argument("--rounds", type=int, default=4, help="Rounds; each runs every side once, in alternating order.")
    parser.add_argument("--profile", action="store_true",
                        help="Also profile a few steps of each side after its timed ones (the last round's are printed): wall time against kernel time, and the heaviest kernels.")
    parser.add_argument("--no-hf", action="store_true", help="Leave out transformers' GPT2LMHeadModel (llmkit vs nanoGPT-style only).")
    parser.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--model-vocab", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "llmkit-bench-pretrain",
                        help="Where the benchmark's tokens are built once and reused.")
    parser.add_argument("--prepare-only", action="store_true",
                        help="Build the tokens of both sections in --cache and stop (benchmarks/gpu_check.sh prepare: the GPU "
                             "machine then needs no data set).")
    args = parser.parse_args()
    if args.side:
        side(args)
        return
    import torch

    args.cache.mkdir(parents=True, exist_ok=True)
    if args.prepare_only:
        for vocab in {args.vocab, GPU_TOKENIZER_VOCAB}:
            print(prepare_tokens(args.cache, vocab))
        return
    shape = ["--precision", args.precision, "--n-layer", str(args.n_layer), "--n-embd", str(args.n_embd), "--n-head", str(args.n_head), "--seq", str(args.seq),
             "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)] + (["--profile"] if args.profile else [])
    sides = ["llmkit", "nanogpt"] + ([] if args.no_hf else ["hf"])
    if not args.gpu_only:
        args.tokens = prepare_tokens(args.cache, args.vocab)
        # what oneDNN's products bring, and what --batch-invariant (the CPU default) costs
        cpu_sides = sides[:1] + ["llmkit-mkl", "llmkit-usual"] + sides[1:]
        compare(args, f"CPU, {args.threads} thread(s), {args.precision}: {args.n_layer} layers x {args.n_embd}, seq {args.seq}, batch {args.batch}", shape, cpu_sides)
    if torch.cuda.is_available():
        args.tokens = prepare_tokens(args.cache, GPU_TOKENIZER_VOCAB)
        gpu = ["--device", "cuda", "--compile", "--n-layer", "12", "--n-embd", "768", "--n-head", "12", "--seq", "1024",
               "--batch", "16", "--steps", str(args.steps), "--warmup", str(args.warmup), "--model-vocab", str(GPT2_VOCAB)] + (["--profile"] if args.profile else [])
        compare(args, f"GPU {torch.cuda.get_device_name()}: GPT-2 124M shape (12 x 768, vocabulary {GPT2_VOCAB:,}), seq 1024, "
                      "batch 16, bf16, torch.compile", gpu, sides)
    else:
        print("\n(no CUDA device: GPU section skipped)")


if __name__ == "__main__":
    main()
