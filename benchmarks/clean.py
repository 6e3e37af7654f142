"""Throughput of `llmkit clean` against datatrove running the same filter and MinHash rules, plus 1x vs 10x scaling.

    .venv/bin/python benchmarks/clean.py                # ~50 MB input
    .venv/bin/python benchmarks/clean.py --mb 10        # smaller, for a busy machine

Input: tinyshakespeare passages and SST-2 reviews from ../shared/data, grouped into documents of a
few KB and repeated with small random edits (so MinHash has near-duplicates to find) up to --mb.
Both sides read the same Parquet file and apply the same rules: Gopher repetition,
Gopher quality, C4 (terminal-punctuation rule off), FineWeb quality, then MinHash LSH over word
5-grams with 14 bands x 8 rows. Language ID is off on both sides (datatrove's needs a fastText
model download); exact dedup is off in llmkit (datatrove's MinHash pipeline has none).
Not the same work: llmkit also runs what both its presets do by default (ftfy mojibake repair, NFC
normalisation, cleanup of control characters and odd spaces, the binary and garbled-text filters),
which this datatrove pipeline does not, so the ratio understates llmkit's speed on equal work.
The two sides must keep document counts within 5% of each other, or the script fails.
datatrove's English word tokenizer needs spaCy, which is not installed, so it gets a regex
tokenizer with the same splitting rule llmkit uses (the same rules on the same words: how the two
tokenizers' words change the decisions is measured in docs/clean.md, not here).

Each side runs as a whole process of its own (imports and start-up included), the two alternating
over --rounds rounds so that load from other jobs hits both alike; printed per side: best wall and
CPU time (the process and its children), and per pair the median of the same-round ratios.

Scaling: llmkit alone on --mb/10 and --mb, both in every round; the median of the rounds' 10x / 1x
ratios; cost should grow ~linearly (ratio ~10).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from paired import median  # (benchmarks/ is on the path when run as a script)
DATA = Path(os.environ.get("LLMKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


def build_input(path: Path, megabytes: float, seed: int = 0) -> int:
    """A Parquet file with `text` and `id` columns (datatrove's JSONL reader would need orjson)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    passages = (DATA / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")
    reviews = [json.loads(line)["text"] for line in open(DATA / "sentiment" / "train.jsonl", encoding="utf-8")]
    docs = ["\n\n".join(passages[i : i + 8]) for i in range(0, len(passages), 8)]
    docs += ["\n".join(reviews[i : i + 10]) for i in range(0, len(reviews), 10)]
    vocabulary = sorted({w for d in docs[:100] for w in d.split()})
    target = int(megabytes * 1e6)
    written = 0
    rows: list[dict] = []
    copy = 0
    while written < target:
        for doc in docs:
            if copy:  # later copies: a few words changed, so they are near (not exact) duplicates
                words = doc.split(" ")
                for _ in range(max(1, len(words) // 50)):
                    words[rng.randrange(len(words))] = rng.choice(vocabulary)
                doc = " ".join(words)
            rows.append({"text": doc, "id": f"{copy}-{len(rows)}"})
            written += len(doc.encode())
            if written >= target:
                break
        copy += 1
    pq.write_table(pa.Table.from_pylist(rows), path)
    return written


def text_bytes(path: Path) -> int:
    import pyarrow.parquet as pq

    return sum(len(t.encode()) for t in pq.read_table(path).column("text").to_pylist())


class Timing:
    """Wall-clock and CPU seconds (this process and its children): on a shared machine CPU time is the
    steadier measure of work, wall time what a user waits."""

    def __init__(self, wall: float, cpu: float):
        self.wall, self.cpu = wall, cpu

    def line(self, megabytes: float) -> str:
        return (f"wall {self.wall:7.1f} s {megabytes / self.wall:6.2f} MB/s | "
                f"cpu {self.cpu:7.1f} s {megabytes / self.cpu:6.2f} MB/s")


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_side(side: str, source: Path, out: Path, workers: int) -> tuple[Timing, dict]:
    """One side as a whole process (`--side`): its wall and CPU time, and what it printed as RESULT."""
    import subprocess

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--side", side, "--input", str(source), "--out", str(out),
                           "--workers", str(workers)], capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{side} side failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(wall, cpu), json.loads(lines[-1][len("RESULT "):])


def run_llmkit(source: Path, out: Path, workers: int) -> tuple[float, dict]:
    from llmkit import artifacts
    from llmkit.corpus import pipeline
    from llmkit.corpus.config import resolve

    cfg = resolve(explicit={"preset": "web", "languages": [], "exact_dedup": False, "workers": workers})
    started, cpu = time.perf_counter(), _cpu_seconds()
    pipeline.clean([str(source)], out, cfg, force=True, show_progress=False)
    return Timing(time.perf_counter() - started, _cpu_seconds() - cpu), artifacts.load(out).stats


def run_datatrove(source: Path, work: Path) -> tuple[float, int]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.word_tokenizers import WordTokenizer

    from llmkit.corpus.words import split_words

    class RegexTokenizer(WordTokenizer):
        """Stands in for spaCy (not installed): the splitting llmkit uses."""

        _sentence = re.compile(r"[^.!?]+[.!?]*")

        def word_tokenize(self, text):
            return split_words(text)

        def sent_tokenize(self, text):
            return [m.group(0) for m in self._sentence.finditer(text)]

        def span_tokenize(self, text):
            return [m.span() for m in self._sentence.finditer(text)]

    # datatrove 0.10.1 hands str to xxhash, which since xxhash 4 wants bytes: encode on the way in.
    import xxhash
    from datatrove.utils.hashes import xxhash as datatrove_xxhash

    datatrove_xxhash.xxhash64 = lambda data: xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data)

    tok = RegexTokenizer("en")
    minhash = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8, seed=1)
    stages = [
        [
            ParquetReader(str(source.parent), glob_pattern=source.name),
            GopherRepetitionFilter(language=tok),
            GopherQualityFilter(language=tok),
            C4QualityFilter(filter_no_terminal_punct=False, language=tok),
            FineWebQualityFilter(language=tok),
            ParquetWriter(str(work / "filtered")),
        ],
        [ParquetReader(str(work / "filtered")), MinhashDedupSignature(str(work / "sigs"), config=minhash, language=tok)],
        [MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=minhash)],
        [MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=minhash)],
        [
            ParquetReader(str(work / "filtered")),
            MinhashDedupFilter(str(work / "remove")),
            ParquetWriter(str(work / "out")),
        ],
    ]
    import contextlib
    import io

    started, cpu = time.perf_counter(), _cpu_seconds()
    for index, pipeline in enumerate(stages):
        tasks = minhash.num_buckets if index == 2 else 1  # the bucket stage runs one task per band
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # step logs
            LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=str(work / f"logs{index}")).run()
    timing = Timing(time.perf_counter() - started, _cpu_seconds() - cpu)
    import pyarrow.parquet as pq

    kept = sum(pq.read_metadata(f).num_rows for f in (work / "out").rglob("*.parquet"))
    return timing, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=50.0, help="input size in MB (default 50)")
    parser.add_argument("--workers", type=int, default=1, help="llmkit worker processes (datatrove: 1 task)")
    parser.add_argument("--skip-datatrove", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the two sides, alternating (default 3)")
    parser.add_argument("--side", choices=("llmkit", "datatrove"), help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--ray", action="store_true", help="also the Ray column: local vs --executor ray, 1 and 2 workers "
                        "(benchmarks/ray_executor.py; needs llmkit[ray])")
    args = parser.parse_args()

    import logging

    logging.disable(logging.WARNING)
    try:
        from loguru import logger

        logger.remove()  # datatrove logs every step to stderr
    except ImportError:
        pass

    if args.side == "llmkit":
        _, stats = run_llmkit(args.input, args.out, args.workers)
        print("RESULT " + json.dumps({"kept": stats["documents"]}))
        return
    if args.side == "datatrove":
        _, kept = run_datatrove(args.input, args.out)
        print("RESULT " + json.dumps({"kept": kept}))
        return

    work = Path(tempfile.mkdtemp(prefix="llmkit-bench-clean-"))
    try:
        big = work / "input-10x.parquet"
        build_input(big, args.mb)
        size = text_bytes(big) / 1e6
        import pyarrow.parquet as pq

        print(f"input: {size:.1f} MB of text in {pq.read_metadata(big).num_rows} documents (one Parquet file)")

        sides = ["llmkit"] + ([] if args.skip_datatrove else ["datatrove"])
        runs: dict[str, list[Timing]] = {side: [] for side in sides}
        kept: dict[str, int] = {}
        small = work / "input-1x.parquet"
        ones: list[Timing] = []  # llmkit on the 1x input, in the same rounds as its 10x runs
        if not args.skip_scaling:
            build_input(small, args.mb / 10)
        for r in range(args.rounds):
            for side in (sides if r % 2 == 0 else sides[::-1]):
                shutil.rmtree(work / side, ignore_errors=True)
                timing, result = run_side(side, big, work / side, args.workers)
                runs[side].append(timing)
                kept[side] = result["kept"]
            if not args.skip_scaling:
                ones.append(run_side("llmkit", small, work / "llmkit-1x", args.workers)[0])
            print(f"  round {r + 1}/{args.rounds}: " + "  ".join(f"{side} wall {runs[side][-1].wall:.1f} s cpu {runs[side][-1].cpu:.1f} s"
                                                             for side in sides), flush=True)
        best = {side: Timing(min(t.wall for t in runs[side]), min(t.cpu for t in runs[side])) for side in sides}
        llm = best["llmkit"]
        print(f"llmkit clean : {llm.line(size)} | kept {kept['llmkit']} docs (workers={args.workers}), best of {args.rounds}")
        if "datatrove" in best:
            dt = best["datatrove"]
            print(f"datatrove    : {dt.line(size)} | kept {kept['datatrove']} docs, best of {args.rounds}")
            print("  not equal work: llmkit also repairs mojibake (ftfy), NFC-normalises, cleans up and runs its binary and "
                  "garbled-text filters, datatrove none of these: the ratio understates llmkit")
            apart = abs(kept["llmkit"] - kept["datatrove"]) / max(1, kept["datatrove"])
            # the same rules, but MinHash's hash functions and permutations are each library's own
            print(f"kept documents: llmkit {kept['llmkit']}, datatrove {kept['datatrove']}, {100 * apart:.1f}% apart "
                  "(MinHash draws its own permutations on each side)")
            if apart > 0.05:  # beyond MinHash's own noise the two sides filter differently: a ratio of unlike work
                raise SystemExit(f"kept documents {100 * apart:.1f}% apart, more than 5%: the two sides no longer apply the same "
                                 "rules, check them")
            walls = [d.wall / o.wall for o, d in zip(runs["llmkit"], runs["datatrove"])]
            cpus = [d.cpu / o.cpu for o, d in zip(runs["llmkit"], runs["datatrove"])]
            print(f"speed ratio llmkit / datatrove, paired median: wall {median(walls):.2f}x, cpu {median(cpus):.2f}x "
                  f"(per round, cpu: {', '.join(f'{v:.2f}' for v in cpus)})")
        if not args.skip_scaling:
            walls = [ten.wall / one.wall for ten, one in zip(runs["llmkit"], ones)]
            cpus = [ten.cpu / one.cpu for ten, one in zip(runs["llmkit"], ones)]
            print(f"scaling: 1x ({text_bytes(small) / 1e6:.1f} MB) best wall {min(t.wall for t in ones):.1f} s "
                  f"cpu {min(t.cpu for t in ones):.1f} s; 10x ({size:.1f} MB) best wall {llm.wall:.1f} s cpu {llm.cpu:.1f} s; "
                  f"10x / 1x, median of {len(walls)} same-round ratios: wall {median(walls):.1f}, cpu {median(cpus):.1f} "
                  f"(linear = 10; per round, cpu: {', '.join(f'{v:.1f}' for v in cpus)})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.ray:
        from ray_executor import ray_columns

        print("\nRay column (benchmarks/ray_executor.py):")
        ray_columns(("clean",), args.mb, rounds=2)


if __name__ == "__main__":
    main()
