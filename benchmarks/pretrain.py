"""Benchmark: `llmkit pretrain` vs a plain PyTorch loop over transformers.GPT2LMHeadModel.

Both sides train the same GPT-2-shaped model (LayerNorm, learned positions, GELU, biases, tied
embeddings, no dropout) on the same token windows of tinyshakespeare, with the same batch,
sequence length, AdamW settings and gradient clipping. Each side runs in its own subprocess so
that peak memory is its own. Printed: median tokens/s per step (best of --rounds alternating runs), peak
memory, and the llmkit/reference ratio.

CPU (always):   python benchmarks/pretrain.py
GPU (if CUDA):  the same at GPT-2 124M, seq 1024, bf16 autocast, torch.compile on both sides,
                plus MFU against the measured bf16 matmul peak of the GPU present.

Options: --steps N --warmup N --threads N --n-layer --n-embd --n-head --seq --batch --vocab
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1e3
    return 0.0


def run_llmkit(args) -> dict:
    from llmkit.train.pretrain import PretrainConfig, pretrain

    gpu = args.device == "cuda"
    config = PretrainConfig.build(
        model="gpt2-tiny", n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, context_length=args.seq,
        dropout=0.0, seq_len=args.seq, batch_tokens=args.batch * args.seq, micro_batch=args.batch,
        max_steps=args.steps, lr=6e-4, warmup_steps=0, schedule="constant", weight_decay=0.1, grad_clip=1.0,
        eval_every=0, save_every=0, log_every=1, compile=args.compile, gpus=1 if gpu else 0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        baseline = current_rss_mb() if not gpu else 0.0
        pretrain(args.tokens, run, config)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        params = json.loads((run / "manifest.json").read_text())["stats"]["params"]
        flops = json.loads((run / "manifest.json").read_text())["stats"]["flops_per_token"]
    timed = sorted(r["tokens_per_s"] for r in rows[args.warmup :])
    return {"tokens_per_s": timed[len(timed) // 2], "peak_mb": peak_memory_mb(args.device), "baseline_mb": baseline, "params": params,
            "flops_per_token": flops, "final_loss": rows[-1]["loss"]}


def run_reference(args) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmkit.data.shards import TokenShards, WindowSampler

    torch.manual_seed(0)
    device = torch.device(args.device)
    baseline = current_rss_mb() if args.device == "cpu" else 0.0
    shards = TokenShards.open(args.tokens, "train")
    sampler = WindowSampler(shards, args.seq, 0)
    config = GPT2Config(vocab_size=shards.vocab_size, n_positions=args.seq, n_embd=args.n_embd, n_layer=args.n_layer,
                        n_head=args.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).to(device)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=6e-4, betas=(0.9, 0.95), fused=args.device == "cuda" or None)
    forward = torch.compile(model) if args.compile else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.device == "cuda" else torch.autocast("cpu", enabled=False)
    times, loss = [], None
    for step in range(args.steps):
        start = time.perf_counter()
        x, y = sampler.get(range(step * args.batch, (step + 1) * args.batch))
        x, y = x.to(device), y.to(device)
        with autocast:
            logits = forward(input_ids=x).logits
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()  # the same per-step sync the llmkit loop does
        times.append(time.perf_counter() - start)
    timed = sorted(times[args.warmup :])
    params = sum(p.numel() for p in model.parameters())
    return {"tokens_per_s": args.batch * args.seq / timed[len(timed) // 2], "peak_mb": peak_memory_mb(args.device), "baseline_mb": baseline,
            "params": params, "final_loss": loss_value}


def measured_bf16_peak() -> float:
    import torch

    from llmkit.train.metrics import measure_bf16_peak

    return max(measure_bf16_peak(torch.device("cuda")) for _ in range(3))


# -- driver -----------------------------------------------------------------------------------


def side(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    result = run_llmkit(args) if args.side == "llmkit" else run_reference(args)
    if args.side == "llmkit" and args.device == "cuda":
        result["bf16_peak"] = measured_bf16_peak()
    print("RESULT " + json.dumps(result))


def args_device(extra: list[str]) -> str:
    return extra[extra.index("--device") + 1] if "--device" in extra else "cpu"


def compare(args, label: str, extra: list[str]) -> dict:
    # Sides alternate for --rounds rounds and each keeps its best median: on a shared machine
    # that is the figure least disturbed by other load.
    results: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name in ("llmkit", "reference"):
            command = [sys.executable, __file__, "--side", name, "--tokens", str(args.tokens), "--threads", str(args.threads), *extra]
            # Both sides get the same OpenMP setting: idle threads sleep, as `llmkit pretrain` arranges.
            env = dict(os.environ, LLMKIT_PROGRESS="0", OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
            proc = subprocess.run(command, capture_output=True, text=True, env=env)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.exit(f"{name} side failed:\n{proc.stderr[-4000:]}")
            result = json.loads(lines[-1][len("RESULT "):])
            if name not in results or result["tokens_per_s"] > results[name]["tokens_per_s"]:
                results[name] = result
    a, b = results["llmkit"], results["reference"]
    print(f"\n== {label} ==")
    print(f"{'':22s}{'llmkit':>14s}{'GPT2LMHeadModel':>18s}{'ratio':>9s}")
    print(f"{'params':22s}{a['params']:>14,d}{b['params']:>18,d}")
    print(f"{'tokens/s':22s}{a['tokens_per_s']:>14,.0f}{b['tokens_per_s']:>18,.0f}{a['tokens_per_s'] / b['tokens_per_s']:>8.2f}x")
    label = "peak GPU memory (MB)" if "bf16_peak" in a or args_device(extra) == "cuda" else "peak RSS (MB)"
    print(f"{label:22s}{a['peak_mb']:>14,.0f}{b['peak_mb']:>18,.0f}{a['peak_mb'] / b['peak_mb']:>8.2f}x")
    if a.get("baseline_mb"):
        grow_a, grow_b = a["peak_mb"] - a["baseline_mb"], b["peak_mb"] - b["baseline_mb"]
        print(f"{'  of it for training':22s}{grow_a:>14,.0f}{grow_b:>18,.0f}{grow_a / grow_b:>8.2f}x   (peak minus RSS before training)")
    print(f"{'final loss':22s}{a['final_loss']:>14.4f}{b['final_loss']:>18.4f}")
    if "bf16_peak" in a:
        mfu = a["flops_per_token"] * a["tokens_per_s"] / a["bf16_peak"]
        mfu_ref = a["flops_per_token"] * b["tokens_per_s"] / a["bf16_peak"]
        print(f"{'MFU (measured peak)':22s}{100 * mfu:>13.1f}%{100 * mfu_ref:>17.1f}%   peak {a['bf16_peak'] / 1e12:.0f} TFLOP/s")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", choices=["llmkit", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gpu-only", action="store_true", help="Skip the CPU comparison.")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="Untimed first steps.")
    parser.add_argument("--rounds", type=int, default=2, help="Alternating runs per side; the best median counts.")
    parser.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "llmkit-bench-pretrain")
    args = parser.parse_args()
    if args.side:
        side(args)
        return
    import torch

    args.cache.mkdir(parents=True, exist_ok=True)
    args.tokens = prepare_tokens(args.cache, args.vocab)
    shape = ["--n-layer", str(args.n_layer), "--n-embd", str(args.n_embd), "--n-head", str(args.n_head), "--seq", str(args.seq),
             "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if not args.gpu_only:
        compare(args, f"CPU, {args.threads} thread(s), fp32: {args.n_layer} layers x {args.n_embd}, seq {args.seq}, batch {args.batch}", shape)
    if torch.cuda.is_available():
        gpu_tokens = prepare_tokens(args.cache, 50257 if args.vocab == 4096 else args.vocab)
        args.tokens = gpu_tokens
        gpu = ["--device", "cuda", "--compile", "--n-layer", "12", "--n-embd", "768", "--n-head", "12", "--seq", "1024",
               "--batch", "16", "--steps", str(max(args.steps, 40)), "--warmup", "10"]
        compare(args, f"GPU {torch.cuda.get_device_name()}: GPT-2 124M shape (12 x 768, vocabulary from the tokenizer), seq 1024, batch 16, bf16, torch.compile", gpu)
    else:
        print("\n(no CUDA device: GPU section skipped)")


if __name__ == "__main__":
    main()
