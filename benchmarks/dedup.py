"""Near-duplicate removal in `llmkit clean`: throughput and memory, this tree against a baseline revision.

    .venv/bin/python benchmarks/dedup.py --baseline d9ea440            # before/after, alternating, 3 rounds
    .venv/bin/python benchmarks/dedup.py --mb 20 --docs 1000000 --rounds 5 --baseline d9ea440
    .venv/bin/python benchmarks/dedup.py                                # this tree only

The baseline is any git revision: its `llmkit/` is extracted with `git archive` into a temporary
folder (the repository is not touched) and run from there. d9ea440 is the last revision with
per-word hashing and per-band dicts. Every measurement runs in a fresh process, old and new
alternating round by round, so a busy machine slows both alike; ratios and CPU seconds are the
figures to read, wall time is shown too.

Inputs, from ${LLMKIT_SHARED_DATA:-../shared/data}, written once:
  shakespeare  tinyshakespeare passages and SST-2 reviews as documents of a few KB, repeated with
               small random edits up to --mb (benchmarks/clean.py's input: near duplicates to find)
  mixed        every data set there (Shakespeare, the Chinese novel, DialogSum, Multi30k, SST-2) as
               documents, repeated with edits up to --mb: English, German and Chinese
  lines        --docs documents: tinyshakespeare's lines (most shorter than 5 words), repeated with
               edits: for peak memory per million documents

Measured:
  clean        `pipeline.clean` with the default preset (exact + near dedup on), one worker: wall and
               CPU MB/s, CPU seconds per MB, peak RSS of the process; with --baseline both trees must
               write the same artifact (fingerprint) on every input, or the script fails at the end
  minhash      band keys alone (MinHasher, batches of 256 documents as the stage makes them): MB/s
  index        the LSH index alone for --index-docs kept documents of random keys: bytes per million
               documents (growth of the resident memory of a fresh process) and seconds; the old index is the per-band
               dicts, copied below (labelled), the new one `llmkit.corpus.dedup.BandIndex`
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("LLMKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


# ---------------------------------------------------------------------------------------------- inputs

def _edited(doc: str, rng: random.Random, vocabulary: list[str]) -> str:
    words = doc.split(" ")
    for _ in range(max(1, len(words) // 50)):
        words[rng.randrange(len(words))] = rng.choice(vocabulary)
    return " ".join(words)


def _write_repeated(path: Path, docs: list[str], *, megabytes: float | None = None, count: int | None = None) -> dict:
    """JSONL of docs, then edited copies of them, until `megabytes` of text or `count` documents."""
    rng = random.Random(0)
    vocabulary = sorted({w for d in docs[:200] for w in d.split()})
    written = rows = copy = 0
    with open(path, "w", encoding="utf-8") as handle:
        while True:
            for doc in docs:
                text = _edited(doc, rng, vocabulary) if copy else doc
                handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                written += len(text.encode())
                rows += 1
                if (megabytes is not None and written >= megabytes * 1e6) or (count is not None and rows >= count):
                    return {"mb": written / 1e6, "documents": rows}
            copy += 1


def build_inputs(work: Path, megabytes: float, documents: int) -> dict[str, dict]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import pyarrow.parquet as pq
    from clean import build_input  # benchmarks/clean.py

    inputs = {}
    shakespeare = work / "shakespeare.parquet"
    build_input(shakespeare, megabytes)
    texts = pq.read_table(shakespeare).column("text").to_pylist()
    inputs["shakespeare"] = {"path": shakespeare, "mb": sum(len(t.encode()) for t in texts) / 1e6, "documents": len(texts)}

    passages = (DATA / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")
    docs = ["\n\n".join(passages[i : i + 8]) for i in range(0, len(passages), 8)]
    chinese = [line for line in (DATA / "chinese.txt").read_text(encoding="utf-8").split("\n") if line.strip()]
    docs += ["\n".join(chinese[i : i + 5]) for i in range(0, len(chinese), 5)]

    def field(name: str, key: str) -> list[str]:
        return [json.loads(line)[key] for line in open(DATA / name / "train.jsonl", encoding="utf-8")]

    docs += field("summarization", "document")
    for key in ("source", "target"):
        sentences = field("translation", key)
        docs += ["\n".join(sentences[i : i + 10]) for i in range(0, len(sentences), 10)]
    reviews = field("sentiment", "text")
    docs += ["\n".join(reviews[i : i + 10]) for i in range(0, len(reviews), 10)]
    random.Random(1).shuffle(docs)
    inputs["mixed"] = {"path": work / "mixed.jsonl", **_write_repeated(work / "mixed.jsonl", docs, megabytes=megabytes)}

    lines = [line for line in (DATA / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n") if line.strip()]
    inputs["lines"] = {"path": work / "lines.jsonl", **_write_repeated(work / "lines.jsonl", lines, count=documents)}
    return inputs


# ---------------------------------------------------------------------------------------------- one measurement (child)

class OldBandDicts:
    """OLD IMPLEMENTATION, copied from llmkit/corpus/pipeline.py at d9ea440 for comparison only:
    the LSH index as one Python dict per band (key -> ordinal of the kept document)."""

    def __init__(self, bands: int):
        self.bands: list[dict[int, int]] = [{} for _ in range(bands)]

    def check(self, band_keys: list[int]):
        for index, key in zip(self.bands, band_keys):
            if key in index:
                return index[key]
        return None

    def add(self, band_keys: list[int], ordinal: int) -> None:
        for index, key in zip(self.bands, band_keys):
            index.setdefault(key, ordinal)


def _cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    """VmHWM (Linux): getrusage's ru_maxrss would carry the parent's peak across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    """Resident memory now (Linux)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(mode: str, path: str, out: str, index_docs: int) -> dict:
    import time

    if mode == "clean":
        from llmkit import artifacts
        from llmkit.corpus import pipeline
        from llmkit.corpus.config import resolve

        cfg = resolve(explicit={"workers": 1})
        rss0 = _peak_rss_mb()
        wall, cpu = time.perf_counter(), _cpu()
        pipeline.clean([path], out, cfg, force=True, show_progress=False)
        wall, cpu = time.perf_counter() - wall, _cpu() - cpu
        art = artifacts.load(out)
        return {"wall": wall, "cpu": cpu, "peak_rss_mb": _peak_rss_mb(), "rss_before_mb": rss0,
                "fingerprint": art.fingerprint, "kept": art.stats["documents"], "dropped": art.stats["dropped"]}
    if mode == "minhash":
        import pyarrow.parquet as pq

        from llmkit.corpus.minhash import MinHasher

        if path.endswith(".parquet"):
            texts = pq.read_table(path).column("text").to_pylist()
        else:
            texts = [json.loads(line)["text"] for line in open(path, encoding="utf-8")]
        hasher = MinHasher(112, 5, 14, 8, 0)
        batches = [texts[i : i + 256] for i in range(0, len(texts), 256)]
        wall, cpu = time.perf_counter(), _cpu()
        if hasattr(hasher, "batch_keys"):
            for batch in batches:
                hasher.batch_keys(batch)
        else:
            for text in texts:
                hasher.keys_for(text)
        return {"wall": time.perf_counter() - wall, "cpu": _cpu() - cpu}
    if mode in ("index-old", "index-new"):
        import numpy as np

        rng = np.random.default_rng(0)
        batch_keys = [rng.integers(0, 2**64 - 1, size=(256, 14), dtype=np.uint64, endpoint=True)
                      for _ in range(index_docs // 256)]
        rss0 = _rss_mb()
        wall, cpu = time.perf_counter(), _cpu()
        if mode == "index-old":
            index = OldBandDicts(14)
            ordinal = 0
            for keys in batch_keys:
                for row in keys.tolist():  # the old worker sent a list of Python ints per document
                    if index.check(row) is None:
                        index.add(row, ordinal)
                        ordinal += 1
        else:
            from llmkit.corpus.dedup import Deduplicator, ProcessedBatch
            from llmkit.corpus.process import Processed

            dedup = Deduplicator(14)
            docs = [Processed("", "", "", None, 0, 0) for _ in range(256)]
            has = np.ones(256, dtype=bool)
            for keys in batch_keys:
                dedup.decide(ProcessedBatch(docs, keys, has))
        wall, cpu = time.perf_counter() - wall, _cpu() - cpu
        return {"wall": wall, "cpu": cpu, "index_mb": _rss_mb() - rss0}
    raise ValueError(mode)


# ---------------------------------------------------------------------------------------------- driver

def run(tree: Path, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True, cwd=tree)
    if result.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="git revision to compare against (e.g. d9ea440)")
    parser.add_argument("--mb", type=float, default=10.0, help="size of the shakespeare and mixed inputs (default 10)")
    parser.add_argument("--docs", type=int, default=1_000_000, help="documents in the lines input (default 1e6)")
    parser.add_argument("--index-docs", type=int, default=1_000_000, help="documents for the index alone (default 1e6)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=4, metavar=("MODE", "PATH", "OUT", "INDEX_DOCS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, path, out, index_docs = args.child
        print(json.dumps(child(mode, path, out, int(index_docs))))
        return

    work = Path(tempfile.mkdtemp(prefix="llmkit-bench-dedup-"))
    try:
        trees = {"new": REPO}
        if args.baseline:
            old = work / "baseline"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline, "llmkit"], check=True, capture_output=True)
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
            trees = {"old": old, "new": REPO}
        inputs = build_inputs(work, args.mb, args.docs)
        for name, info in inputs.items():
            print(f"input {name:11s}: {info['mb']:6.1f} MB, {info['documents']} documents")

        results: dict[tuple[str, str, str], list[dict]] = {}
        jobs = [("clean", name) for name in inputs] + [("minhash", "shakespeare"), ("minhash", "mixed")]
        for round_ in range(args.rounds):
            for mode, name in jobs:
                for label, tree in (trees.items() if round_ % 2 == 0 else reversed(trees.items())):
                    out = work / f"out-{label}-{name}"
                    results.setdefault((mode, name, label), []).append(
                        run(tree, mode, str(inputs[name]["path"]), str(out), str(args.index_docs)))
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)

        def median(rows: list[dict], key: str) -> float:
            return statistics.median(r[key] for r in rows)

        differ = []  # inputs whose output changed between the trees: their speed-up compares unlike work
        print("\nmedians over rounds (MB/s of input text; CPU = user + system of the process)")
        for mode, name in jobs:
            mb = inputs[name]["mb"]
            line = []
            for label in trees:
                rows = results[(mode, name, label)]
                wall, cpu = median(rows, "wall"), median(rows, "cpu")
                text = f"{label}: wall {mb / wall:6.2f} MB/s, cpu {mb / cpu:6.2f} MB/s, {cpu / mb:6.3f} cpu s/MB"
                if mode == "clean":
                    text += f", peak RSS {median(rows, 'peak_rss_mb'):6.0f} MB"
                line.append(text)
            print(f"{mode:7s} {name:11s} " + " | ".join(line))
            if "old" in trees:
                old_rows, new_rows = results[(mode, name, "old")], results[(mode, name, "new")]
                ratios = [o["cpu"] / n["cpu"] for o, n in zip(old_rows, new_rows)]
                walls = [o["wall"] / n["wall"] for o, n in zip(old_rows, new_rows)]
                same = ""
                if mode == "clean":
                    alike = all(o["fingerprint"] == n["fingerprint"] for o, n in zip(old_rows, new_rows))
                    same = ", same fingerprint" if alike else ", FINGERPRINTS DIFFER"
                    if not alike:
                        differ.append(name)
                    rss = median(old_rows, "peak_rss_mb") / median(new_rows, "peak_rss_mb")
                    same += f", peak RSS old/new {rss:.2f}x"
                print(f"{'':19s} speed-up new/old: cpu {statistics.median(ratios):.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}), "
                      f"wall {statistics.median(walls):.2f}x{same}")

        million = args.index_docs / 1e6
        print(f"\nLSH index alone, {args.index_docs} kept documents x 14 bands (fresh process each):")
        for mode, label in (("index-old", "old (per-band dicts)"), ("index-new", "new (BandIndex arrays)")):
            rows = [run(REPO, mode, "-", "-", str(args.index_docs)) for _ in range(2)]
            print(f"  {label:24s}: {median(rows, 'index_mb') / million:7.0f} MB per million documents, "
                  f"{median(rows, 'cpu') / million:5.2f} cpu s per million")
        kept_lines = results[("clean", "lines", "new")][0]["kept"]
        print(f"\n(the lines input keeps {kept_lines} of {inputs['lines']['documents']} documents)")
        if differ:
            raise SystemExit(f"clean's output differs between {args.baseline} and this tree on: {', '.join(differ)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
