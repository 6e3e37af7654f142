"""`--executor ray` against this machine's processes, for `llmkit clean`, `tokenizer train` and `tokenize`.

    .venv/bin/python benchmarks/ray_executor.py              # ~20 MB of text, 2 rounds
    .venv/bin/python benchmarks/ray_executor.py --mb 50 --rounds 3
    .venv/bin/python benchmarks/clean.py --ray               # the same Ray column, from the stage benchmarks
    .venv/bin/python benchmarks/tokenizer.py --ray

Measures, in one run, alternating the sides each round (the machine is shared): MB/s of clean
(the web preset's rules and MinHash dedup, as benchmarks/clean.py runs them), of tokenizer train
(a 4 MB sample drawn from the whole input as text files, vocabulary 4096) and of tokenize,
with 1 and 2 workers, on the local executor (1 worker: the work runs in this process itself;
2: spawned worker processes, or threads of this process for tokenize) and on a local Ray instance
(actors). Each Ray run starts and stops its own Ray instance, as a user's command does without
--ray-address; that fixed cost is measured on its own and printed. CPU time is printed for the
local side only: Ray's workers are not this process's children, so their CPU time is not visible
here. Every run's fingerprint is checked to be the same.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def ray_start_stop() -> float:
    """Seconds to start a local Ray instance, run one task and stop it: every Ray run pays this."""
    from llmkit.executor import connected

    started = time.perf_counter()
    with connected(None) as ray:  # (a local instance, as a run starts one: not RAY_ADDRESS's cluster; its folder removed)
        ray.get(ray.remote(lambda: 1).remote())
    return time.perf_counter() - started


def run_clean(source: Path, out: Path, executor: str, workers: int):
    from llmkit import artifacts
    from llmkit.corpus import pipeline
    from llmkit.corpus.config import resolve

    cfg = resolve(explicit={"preset": "web", "languages": [], "exact_dedup": False, "workers": workers, "executor": executor})
    started, cpu = time.perf_counter(), _cpu_seconds()
    pipeline.clean([str(source)], out, cfg, force=True, show_progress=False)
    return time.perf_counter() - started, _cpu_seconds() - cpu, artifacts.load(out).fingerprint


def run_tokenize(corpus: Path, tokenizer: Path, out: Path, executor: str, workers: int):
    from llmkit import artifacts
    from llmkit.tokenizer.config import TokenizeConfig
    from llmkit.tokenizer.encode_corpus import tokenize_corpus

    config = TokenizeConfig.build(workers=workers, executor=executor, batch_size=1024)
    started, cpu = time.perf_counter(), _cpu_seconds()
    tokenize_corpus(corpus, tokenizer, out, config, force=True)
    return time.perf_counter() - started, _cpu_seconds() - cpu, artifacts.load(out).fingerprint


def run_train(text_file: Path, out: Path, executor: str, workers: int):
    from llmkit import artifacts
    from llmkit.tokenizer.config import TokenizerTrainConfig
    from llmkit.tokenizer.train import train_tokenizer

    config = TokenizerTrainConfig.build(vocab_size=4096, sample_bytes=4_000_000, workers=workers, executor=executor)
    started, cpu = time.perf_counter(), _cpu_seconds()
    train_tokenizer([text_file], out, config, force=True)
    return time.perf_counter() - started, _cpu_seconds() - cpu, artifacts.load(out).fingerprint


STAGES = ("clean", "tokenizer train", "tokenize")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=20.0, help="input size in MB")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ray_columns(STAGES, args.mb, args.rounds)


def ray_columns(stages: tuple[str, ...], mb: float, rounds: int) -> None:
    """Each stage on both executors with 1 and 2 workers, rounds alternating, one line per side."""
    import pyarrow.parquet as pq
    from clean import build_input, text_bytes

    from llmkit.corpus import pipeline
    from llmkit.corpus.config import resolve
    from llmkit.tokenizer.config import TokenizerTrainConfig
    from llmkit.tokenizer.train import train_tokenizer

    work = Path(tempfile.mkdtemp(prefix="llmkit-bench-ray-"))
    try:
        source = work / "input.parquet"
        build_input(source, mb)
        size = text_bytes(source) / 1e6
        text_file = work / "input.txt"  # tokenizer train's input: the same text, one paragraph per document
        text_file.write_text("".join(t.strip() + "\n\n" for t in pq.read_table(source).column("text").to_pylist()),
                             encoding="utf-8")
        corpus = work / "corpus"
        pipeline.clean([str(source)], corpus, resolve(explicit={"workers": 1}), show_progress=False)
        tokenizer = train_tokenizer([corpus], work / "tok", TokenizerTrainConfig(vocab_size=4096, sample_bytes=5_000_000))
        from llmkit import artifacts

        corpus_mb = artifacts.load(corpus).stats["bytes"] / 1e6
        overhead = ray_start_stop()
        sides = [(executor, workers) for executor in ("local", "ray") for workers in (1, 2)]
        runs = {"clean": lambda side: run_clean(source, work / "out-clean", *side),
                "tokenizer train": lambda side: run_train(text_file, work / "out-tok", *side),
                "tokenize": lambda side: run_tokenize(corpus, tokenizer, work / "out-tokens", *side)}
        results: dict = {(stage, side): [] for stage in stages for side in sides}
        for round_ in range(rounds):
            order = sides if round_ % 2 == 0 else list(reversed(sides))
            for side in order:
                for stage in stages:
                    results[(stage, side)].append(runs[stage](side))
        print(f"input {size:.1f} MB of text (clean, tokenizer train), corpus {corpus_mb:.1f} MB (tokenize); {rounds} rounds, "
              f"median wall; Ray start + stop alone: {overhead:.1f} s (included in every Ray run)")
        megabytes_of = {"clean": size, "tokenizer train": size, "tokenize": corpus_mb}
        for stage in stages:
            megabytes = megabytes_of[stage]
            fingerprints = {r[2] for side in sides for r in results[(stage, side)]}
            assert len(fingerprints) == 1, f"{stage}: the executors wrote different artifacts"
            base = statistics.median(r[0] for r in results[(stage, ("local", 1))])
            for side in sides:
                wall = statistics.median(r[0] for r in results[(stage, side)])
                cpu = statistics.median(r[1] for r in results[(stage, side)])
                cpu_text = f"{megabytes / cpu:6.2f} MB per CPU-s" if side[0] == "local" else "(workers' CPU not visible)"
                print(f"{stage:<15} {side[0]:<6} {side[1]} worker(s): {megabytes / wall:6.2f} MB/s wall "
                      f"({base / wall:4.2f}x local-1)  {cpu_text}")
            print(f"{stage:<15} same fingerprint on every run: yes")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
