"""Training layouts side by side: one process against data, tensor and pipeline parallelism.

    python benchmarks/parallel.py                                  # CPU, gloo: 1 process vs dp 2, tp 2, pp 2
    python benchmarks/parallel.py --layouts one,tp                 # only some of them
    python benchmarks/parallel.py --gpus 2 --model small --seq-len 1024 --batch-tokens 65536

Runs `llmkit pretrain` once per layout per round, alternating the layouts within each round so
a busy machine slows every side alike, and prints tokens/s (wall) and tokens per CPU-second
(all processes of the run) per layout, with each layout's ratio to the first. The loss of the
last step is printed too: every layout trains the same model, so it must agree with one process's
in every round (on a CPU within 1e-5 relative, the bound tests/test_model_parallel.py holds every
layout to; on GPUs, in bf16, within 1e-2), or the script fails.
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


def tokens_artifact(root: Path, data: Path) -> Path:
    """A tokens artifact of tinyshakespeare (BPE 4096), built once per run."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_pretrain import _documents, build_corpus, build_tokens

    from llmkit.tokenizer.train import TokenizerTrainConfig, train_tokenizer

    corpus = build_corpus(_documents((data / "tinyshakespeare.txt").read_text(encoding="utf-8")), root / "corpus")
    tokenizer = train_tokenizer([corpus], root / "tokenizer", TokenizerTrainConfig(vocab_size=4096))
    return build_tokens(corpus, tokenizer, root / "tokens", val_fraction=0.05)


def run(tokens: Path, out: Path, common: list[str], layout: list[str]) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    command = [sys.executable, "-m", "llmkit", "pretrain", str(tokens), "-o", str(out), "--force", *common, *layout]
    subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = rows[len(rows) // 2:]  # past compilation and warm-up
    return {"tokens_per_s": sum(r["tokens_per_s"] for r in steady) / len(steady), "cpu": cpu, "wall": wall,
            "loss": rows[-1]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-tokens", type=int, default=8192)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per layout (0: CPU processes with gloo)")
    parser.add_argument("--layouts", default="one,dp,tp,pp", help="Layouts to run, comma-separated: one (the reference "
                        "the ratios divide by), dp, tp, pp")
    args = parser.parse_args()
    data = Path(os.environ.get("LLMKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
    ways = max(args.gpus, 2)
    device = ["--gpus", str(ways)] if args.gpus else ["--nproc", str(ways)]
    every = {
        "one": ("1 process", ["--gpus", "1"] if args.gpus else []),
        "dp": (f"dp {ways}", device),
        "tp": (f"tp {ways}", [*device, "--tp", str(ways)]),
        "pp": (f"pp {ways} (1f1b)", [*device, "--pp", str(ways), "--micro-batch", str(max(1, args.micro_batch // ways)),
                                     "--pp-microbatches", str(ways)]),
    }
    asked = [name.strip() for name in args.layouts.split(",") if name.strip()]
    if "one" not in asked or set(asked) - set(every):
        parser.error(f"--layouts takes one,dp,tp,pp (one among them: the ratios' reference), got {args.layouts!r}")
    layouts = dict(every[name] for name in every if name in asked)
    common = ["--model", args.model, "--seq-len", str(args.seq_len), "--batch-tokens", str(args.batch_tokens),
              "--micro-batch", str(args.micro_batch), "--max-steps", str(args.steps), "--eval-every", "0",
              "--save-every", "0", "--log-every", "1", "--optimizer", "sgd", "--lr", "0.1"]
    with tempfile.TemporaryDirectory() as tmp:
        tokens = tokens_artifact(Path(tmp), data)
        results: dict[str, list[dict]] = {name: [] for name in layouts}
        for round_ in range(args.rounds):
            order = list(layouts) if round_ % 2 == 0 else list(reversed(layouts))
            for name in order:
                results[name].append(run(tokens, Path(tmp) / "run", common, layouts[name]))
    tokens_per_run = args.steps * (args.batch_tokens // args.seq_len) * args.seq_len
    base = None
    print(f"{args.model}, seq {args.seq_len}, {args.batch_tokens} tokens a step, {args.steps} steps, {args.rounds} rounds; "
          f"{'GPU' if args.gpus else 'CPU (gloo)'}; tokens/s: the steady half of the run's steps (metrics.jsonl); "
          f"tokens/CPU-s: whole processes, start-up and saving included (each process of a layout pays them)")
    print(f"{'layout':<16} {'tokens/s':>10} {'ratio':>6} {'tokens/CPU-s':>13} {'ratio':>6} {'last loss':>10}")
    for name, rows in results.items():
        speed = sum(r["tokens_per_s"] for r in rows) / len(rows)
        per_cpu = tokens_per_run * len(rows) / sum(r["cpu"] for r in rows)
        base = base or (speed, per_cpu)
        print(f"{name:<16} {speed:>10,.0f} {speed / base[0]:>6.2f} {per_cpu:>13,.0f} {per_cpu / base[1]:>6.2f} {rows[-1]['loss']:>10.5f}")
    # fp32 on a CPU: layouts differ by summation order only (~1e-7); bf16 autocast on GPUs rounds each
    # layout's partial sums to 8 bits of mantissa, so there only a looser bound holds (not measured here)
    tolerance = 1e-2 if args.gpus else 1e-5
    reference = [r["loss"] for r in results["1 process"]]
    apart = max(abs(r["loss"] - ref) / abs(ref) for rows in results.values() for r, ref in zip(rows, reference))
    if apart > tolerance:
        raise SystemExit(f"last losses differ from one process's by up to {apart:.1e} relative, more than {tolerance:g}: "
                         + "; ".join(f"{name} " + ", ".join(f"{r['loss']:.7g}" for r in rows) for name, rows in results.items()))
    print(f"last losses agree with one process's within {tolerance:g} relative in every round (largest difference {apart:.1e})")


if __name__ == "__main__":
    main()
