"""Make a small instruction data set from a corpus of Python documentation (the quickstart's SFT task).

The embedded corpus holds, per module, blocks of "name" followed by that name's docstring. Each
becomes {"prompt": "Describe <module>.<name>.", "response": <first sentence of the docstring>}.
Rows are split into train/test by a hash of the prompt, so the split never depends on order.

    python recipes/docs_qa.py CORPUS_ARTIFACT OUT_DIR [--max-rows N]
"""

from __future__ import annotations

import argparse
import sys
import hashlib
import json
import re
from pathlib import Path

import pyarrow.parquet as pq

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def pairs(module: str, text: str):
    blocks = [b.strip() for b in text.split("\n\n")]
    for name, body in zip(blocks, blocks[1:]):
        if NAME.match(name) and body and not NAME.match(body):
            sentence = re.split(r"(?<=[.!?])\s", " ".join(body.split()), maxsplit=1)[0]
            if 15 <= len(sentence) <= 160:
                yield {"prompt": f"Describe {module}.{name}.", "response": sentence}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-rows", type=int, default=0)
    parser.add_argument("--test-share", type=float, default=0.05)
    args = parser.parse_args()
    rows, seen = [], set()
    for shard in sorted((args.corpus / "shards").glob("*.parquet")):
        for record in pq.read_table(shard, columns=["id", "text"]).to_pylist():
            if ":module/" not in record["id"]:
                continue
            module = record["id"].rsplit("/", 1)[-1]
            for row in pairs(module, record["text"]):
                if row["prompt"] not in seen:
                    seen.add(row["prompt"])
                    rows.append(row)
    if args.max_rows:
        rows = rows[: args.max_rows]
    # (a folder of that name holding files this script did not write is a user's: never written over)
    mark = args.out / ".written-by-docs_qa"
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir()) and not mark.is_file()):
        sys.exit(f"error: {args.out} exists and holds what this recipe did not write; move it away, or give the recipe "
                 "another OUT")
    args.out.mkdir(parents=True, exist_ok=True)
    mark.touch()
    splits = {"train": [], "test": []}
    for row in rows:
        bucket = int(hashlib.sha256(row["prompt"].encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        splits["test" if bucket < args.test_share else "train"].append(row)
    for name, split_rows in splits.items():
        with open(args.out / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            for row in split_rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(splits['train'])} train / {len(splits['test'])} test rows in {args.out}")


if __name__ == "__main__":
    main()
