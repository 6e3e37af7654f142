"""`llmkit tokenize`: a corpus artifact -> binary token shards (a tokens artifact), streamed.

Documents are read from the corpus in record batches, encoded on all cores, and appended to
the train or validation shards as `[<|bos|>] tokens <|eos|>`; memory is bounded by one batch.
The split is by whole documents: a seeded permutation of the document indices picks exactly
round(n * val_fraction) of them for validation, so the split depends only on (corpus, seed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from llmkit import artifacts
from llmkit.config import to_dict
from llmkit.data.corpus import count_documents, iter_corpus_texts
from llmkit.data.shards import SPLITS, ShardWriter, token_dtype
from llmkit.data.tokenizer import TextTokenizer, copy_tokenizer_files, load_tokenizer
from llmkit.errors import UserError


@dataclass
class TokenizeConfig:
    val_fraction: float = 0.05
    add_bos: bool = False
    shard_tokens: int = 100_000_000  # a shard is closed at the first document boundary past this

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.shard_tokens < 1:
            raise UserError(f"--shard-tokens must be at least 1, got {self.shard_tokens}")


class _FastPathMismatch(Exception):
    """tiktoken disagreed with tokenizers on a checked document: redo the run on the tokenizers path."""


def validation_mask(num_docs: int, val_fraction: float, seed: int) -> np.ndarray:
    """bool [num_docs]: True for the documents of the validation split."""
    mask = np.zeros(num_docs, dtype=bool)
    if val_fraction <= 0 or num_docs == 0:
        return mask
    if num_docs < 2:
        raise UserError(
            f"the corpus has {num_docs} document, too few for a train/validation split by documents; "
            "pass --val-fraction 0 or split the text into more documents"
        )
    count = min(num_docs - 1, max(1, round(num_docs * val_fraction)))
    rng = np.random.Generator(np.random.PCG64(seed))
    mask[rng.permutation(num_docs)[:count]] = True
    return mask


class _Encoder:
    """Encodes batches through tiktoken (built from our merges) when it applies, else tokenizers.

    On the fast path every document of the first batch and every `check_every`-th document after
    it is also encoded by tokenizers; any difference aborts the fast path for the whole run.
    """

    def __init__(self, tok: TextTokenizer, workers: int, use_fast: bool, check_every: int = 64):
        self.tok = tok
        self.workers = workers
        self.fast = tok.fast_encoding if use_fast else None
        self.check_every = check_every
        self.batches = 0
        self.checked = 0

    @property
    def name(self) -> str:
        return "tiktoken" if self.fast is not None else "tokenizers"

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if self.fast is None:
            return self.tok.encode_batch(texts)
        ids = self.fast.encode_ordinary_batch(texts, num_threads=self.workers)
        picked = range(len(texts)) if self.batches == 0 else range(self.batches % self.check_every, len(texts), self.check_every)
        picked = list(picked)
        reference = self.tok.encode_batch([texts[i] for i in picked])
        for i, ref in zip(picked, reference):
            if ids[i] != ref:
                raise _FastPathMismatch(texts[i][:80])
        self.checked += len(picked)
        self.batches += 1
        return ids


def _encode_into(
    build_dir: Path, corpus: artifacts.Artifact, tok: TextTokenizer, encoder: _Encoder, is_val: np.ndarray,
    config: TokenizeConfig, batch_size: int, total_bytes: int | None,
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    from rich.progress import DownloadColumn, TextColumn, TransferSpeedColumn

    from llmkit.console import progress

    dtype = token_dtype(tok.vocab_size)
    writers = {split: ShardWriter(build_dir / split, dtype, config.shard_tokens) for split in SPLITS}
    split_bytes = {split: 0 for split in SPLITS}
    prefix = [tok.bos_id] if config.add_bos else []
    eos = tok.eos_id
    doc_index = 0
    total_tokens = 0
    started = time.perf_counter()
    with progress(DownloadColumn(), TransferSpeedColumn(), TextColumn("{task.fields[rate]}"), transient=True) as bar:
        task = bar.add_task("tokenizing", total=total_bytes, rate="")
        for texts in iter_corpus_texts(corpus, batch_size):
            batch_val = is_val[doc_index : doc_index + len(texts)]
            doc_index += len(texts)
            sizes = np.fromiter((len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts))
            keep = sizes > 0  # empty documents hold no tokens and are skipped
            encoded = encoder([t for t, k in zip(texts, keep) if k])
            for split, in_split in (("train", ~batch_val[keep]), ("val", batch_val[keep])):
                docs = [prefix + ids + [eos] for ids, chosen in zip(encoded, in_split) if chosen]
                if not docs:
                    continue
                lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
                flat = np.fromiter(chain.from_iterable(docs), dtype=dtype, count=int(lengths.sum()))
                writers[split].write(flat, lengths)
                total_tokens += int(lengths.sum())
            split_bytes["train"] += int(sizes[keep & ~batch_val].sum())
            split_bytes["val"] += int(sizes[keep & batch_val].sum())
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.update(task, advance=int(sizes.sum()), rate=f"{total_tokens / elapsed / 1e6:.2f}M tok/s")
    for writer in writers.values():
        writer.close()
    seconds = time.perf_counter() - started
    total = sum(split_bytes.values())
    per_split = {
        split: {"tokens": w.tokens, "documents": w.documents, "bytes": split_bytes[split], "shards": w.shards}
        for split, w in writers.items()
    }
    timing = {
        "seconds": round(seconds, 3),
        "mb_per_s": round(total / 1e6 / seconds, 3) if seconds else 0.0,
        "tokens_per_s": round(total_tokens / seconds) if seconds else 0,
    }
    return per_split, timing


def tokenize_corpus(
    corpus_path: Path | str,
    tokenizer_path: Path | str,
    out: Path | str,
    config: TokenizeConfig,
    *,
    seed: int = 0,
    workers: int | None = None,
    batch_size: int = 2048,
    use_fast: bool = True,
    force: bool = False,
) -> Path:
    """Encode a corpus into train/val token shards; returns the tokens artifact's path."""
    import shutil

    from llmkit.console import err
    from llmkit.runtime import worker_count

    corpus = artifacts.load(corpus_path, kind="corpus")
    tok_art = artifacts.load(tokenizer_path, kind="tokenizer")
    tok = load_tokenizer(tok_art.path)
    num_docs = count_documents(corpus)
    if num_docs == 0:
        raise UserError(f"corpus {corpus.path} has no documents; nothing to tokenize (check llmkit clean's filters)")
    is_val = validation_mask(num_docs, config.val_fraction, seed)
    threads = worker_count(workers)
    total_bytes = corpus.stats.get("bytes")

    with artifacts.create(out, "tokens", force=force) as build:
        encoder = _Encoder(tok, threads, use_fast)
        try:
            per_split, timing = _encode_into(build.dir, corpus, tok, encoder, is_val, config, batch_size, total_bytes)
        except _FastPathMismatch as exc:
            err.print(f"[yellow]warning:[/] tiktoken fast path disagreed with tokenizers on {str(exc)!r}; re-encoding with tokenizers")
            for split in SPLITS:
                shutil.rmtree(build.dir / split, ignore_errors=True)
            encoder = _Encoder(tok, threads, use_fast=False)
            per_split, timing = _encode_into(build.dir, corpus, tok, encoder, is_val, config, batch_size, total_bytes)
        if per_split["train"]["tokens"] == 0:
            raise UserError(f"corpus {corpus.path} has only empty documents; nothing to tokenize")
        copy_tokenizer_files(tok_art.path, build.dir / "tokenizer")
        build.config = to_dict(config)
        build.seed = seed
        build.add_input("corpus", corpus)
        build.add_input("tokenizer", tok_art)
        build.runtime = {"workers": threads, "batch_size": batch_size, "encoder": encoder.name}
        build.stats = {
            "dtype": token_dtype(tok.vocab_size).name,
            "vocab_size": tok.vocab_size,
            "eos_id": tok.eos_id,
            "bos_id": tok.bos_id,
            "add_bos": config.add_bos,
            **per_split,
            "encoder": encoder.name,
            "fast_path_checked_documents": encoder.checked,
            **timing,
        }
    return Path(out)
