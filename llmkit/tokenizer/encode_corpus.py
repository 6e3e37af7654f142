"""`llmkit tokenize`: a corpus artifact -> binary token shards (a tokens artifact), streamed.

Documents are read from the corpus in record batches, encoded on all cores, and appended to
the train or validation shards as `[<|bos|>] tokens <|eos|>`; memory is bounded by one batch.
The split is by whole documents: a seeded permutation of the document indices picks exactly
round(n * val_fraction) of them for validation, so the split depends only on (corpus, seed).
"""

from __future__ import annotations

import time
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from llmkit import artifacts
from llmkit.data.corpus import count_documents, iter_corpus_texts
from llmkit.data.shards import SPLITS, ShardWriter, token_dtype
from llmkit.data.tokenizer import copy_tokenizer_files, load_tokenizer
from llmkit.errors import UserError
from llmkit.parallel import ordered_map
from llmkit.tokenizer.config import TokenizeConfig


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
            "pass --val-fraction 0 or make more documents (llmkit clean --doc-per blank-line)"
        )
    count = min(num_docs - 1, max(1, round(num_docs * val_fraction)))
    rng = np.random.Generator(np.random.PCG64(seed))
    mask[rng.permutation(num_docs)[:count]] = True
    return mask


CHECK_CHARS = 16384
FIRST_CHECKS = 256  # documents of the first batch checked against tokenizers

# Per-process encoder state, set once per process by _init_worker.
_STATE: dict[str, Any] = {}


def _init_worker(tokenizer_dir: str, use_fast: bool, add_bos: bool, check_every: int) -> None:
    import multiprocessing
    import os

    if multiprocessing.parent_process() is not None:
        # One encoding thread per worker process: the processes are the parallelism.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tok = load_tokenizer(tokenizer_dir)
    _STATE.update(
        tok=tok,
        fast=tok.fast_encoding if use_fast else None,
        prefix=[tok.bos_id] if add_bos else [],
        eos=tok.eos_id,
        dtype=token_dtype(tok.vocab_size),
        check_every=check_every,
    )


def _encode_batch(job: tuple[int, list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, str | None]:
    """Encode batch `index` of documents -> (UTF-8 sizes, flat ids, per-document lengths, checked, mismatch).

    Each non-empty document becomes `[bos] ids eos`; an empty one has length 0 (it is skipped).
    On the fast path the first FIRST_CHECKS documents of batch 0 and every `check_every`-th
    document after that are also encoded by tokenizers; the first difference is returned so the run can fall back.
    """
    index, texts = job
    tok, fast, prefix, eos = _STATE["tok"], _STATE["fast"], _STATE["prefix"], _STATE["eos"]
    sizes = np.fromiter((len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts))
    present = [t for t in texts if t]
    checked, mismatch = 0, None
    if fast is None:
        encoded = tok.encode_batch(present)
    else:
        core = fast._core_bpe  # per-text calls: tiktoken's own batch API adds a thread hop per document
        encoded = [core.encode_ordinary(t) for t in present]
        every = _STATE["check_every"]
        picked = list(range(min(len(present), FIRST_CHECKS))) if index == 0 else list(range(index % every, len(present), every))
        # tokenizers is slow on very long strings: a long document is checked on its first CHECK_CHARS.
        samples = [present[i][:CHECK_CHARS] for i in picked]
        for i, sample, ref in zip(picked, samples, tok.encode_batch(samples)):
            ours = encoded[i] if len(sample) == len(present[i]) else core.encode_ordinary(sample)
            if ours != ref:
                mismatch = sample[:80]
                break
        checked = len(picked)
    lengths = np.zeros(len(texts), dtype=np.int64)
    lengths[sizes > 0] = [len(prefix) + len(ids) + 1 for ids in encoded]
    docs = chain.from_iterable(chain(prefix, ids, (eos,)) for ids in encoded)
    flat = np.fromiter(docs, dtype=_STATE["dtype"], count=int(lengths.sum()))
    return sizes, flat, lengths, checked, mismatch


class _Encoder:
    """Encodes record batches in order on `workers` processes (llmkit.parallel.ordered_map), and
    counts the documents the tiktoken fast path was checked on."""

    def __init__(self, tokenizer_dir: Path, workers: int, use_fast: bool, add_bos: bool, check_every: int = 128):
        self.workers = workers
        self.init_args = (str(tokenizer_dir), use_fast, add_bos, check_every)
        self.checked = 0
        fast = load_tokenizer(tokenizer_dir).fast_encoding if use_fast else None
        self.name = "tiktoken" if fast is not None else "tokenizers"

    def map(self, batches):
        for result in ordered_map(_encode_batch, enumerate(batches), workers=self.workers, initializer=_init_worker,
                                  initargs=self.init_args):
            yield self._checked(result)

    def _checked(self, result):
        sizes, flat, lengths, checked, mismatch = result
        if mismatch is not None:
            raise _FastPathMismatch(mismatch)
        self.checked += checked
        return sizes, flat, lengths


def _encode_into(
    build_dir: Path, corpus: artifacts.Artifact, encoder: _Encoder, dtype: np.dtype, is_val: np.ndarray,
    config: TokenizeConfig, total_bytes: int | None,
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    from rich.progress import DownloadColumn, TextColumn, TransferSpeedColumn

    from llmkit.console import progress

    writers = {split: ShardWriter(build_dir / split, dtype, config.shard_tokens) for split in SPLITS}
    split_bytes = {split: 0 for split in SPLITS}
    doc_index = 0
    total_tokens = 0
    started = time.perf_counter()
    with progress(DownloadColumn(), TransferSpeedColumn(), TextColumn("{task.fields[rate]}"), transient=True) as bar:
        task = bar.add_task("tokenizing", total=total_bytes, rate="")
        for sizes, flat, lengths in encoder.map(iter_corpus_texts(corpus, config.batch_size)):
            batch_val = is_val[doc_index : doc_index + len(sizes)]
            doc_index += len(sizes)
            present = sizes > 0  # empty documents hold no tokens and are skipped
            for split, chosen in (("train", present & ~batch_val), ("val", present & batch_val)):
                if chosen.any():
                    writers[split].write(flat[np.repeat(chosen, lengths)], lengths[chosen])
                split_bytes[split] += int(sizes[chosen].sum())
            total_tokens += len(flat)
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
    force: bool = False,
) -> Path:
    """Encode a corpus into train/val token shards; returns the tokens artifact's path."""
    import shutil

    from llmkit.console import err
    from llmkit.runtime import worker_count

    corpus = artifacts.load(corpus_path, kind="corpus")
    # A checkpoint's tokenizer/ copy serves too: new data for a (possibly imported) model.
    tok_art = artifacts.load(tokenizer_path, kind=("tokenizer", "checkpoint"))
    tok_dir = tok_art.path if tok_art.kind == "tokenizer" else tok_art.path / "tokenizer"
    tok = load_tokenizer(tok_dir)
    num_docs = count_documents(corpus)
    if num_docs == 0:
        raise UserError(f"corpus {corpus.path} has no documents; nothing to tokenize (check llmkit clean's filters)")
    is_val = validation_mask(num_docs, config.val_fraction, config.seed)
    # Spawning workers costs about a second: a corpus of one batch is encoded in-process.
    processes = worker_count(config.workers) if num_docs > config.batch_size else 1
    total_bytes = corpus.stats.get("bytes")

    dtype = token_dtype(tok.vocab_size)

    with artifacts.create(out, "tokens", force=force, inputs=[corpus_path, tokenizer_path]) as build:
        encoder = _Encoder(tok_dir, processes, config.fast, config.add_bos)
        try:
            per_split, timing = _encode_into(build.dir, corpus, encoder, dtype, is_val, config, total_bytes)
        except _FastPathMismatch as exc:
            err.print(f"[yellow]warning:[/] tiktoken fast path disagreed with tokenizers on {str(exc)!r}; re-encoding with tokenizers")
            for split in SPLITS:
                shutil.rmtree(build.dir / split, ignore_errors=True)
            encoder = _Encoder(tok_dir, processes, use_fast=False, add_bos=config.add_bos)
            per_split, timing = _encode_into(build.dir, corpus, encoder, dtype, is_val, config, total_bytes)
        if per_split["train"]["tokens"] == 0:
            raise UserError(f"corpus {corpus.path} has only empty documents; nothing to tokenize")
        total_bytes_seen = per_split["train"]["bytes"] + per_split["val"]["bytes"]
        val_share = per_split["val"]["bytes"] / total_bytes_seen if total_bytes_seen else 0.0
        if config.val_fraction > 0 and not config.val_fraction / 2 <= val_share <= 2 * config.val_fraction:
            err.print(
                f"[yellow]warning:[/] the validation split holds {100 * val_share:.1f}% of the text (asked "
                f"{100 * config.val_fraction:g}%) because it takes whole documents and the corpus has {num_docs}; "
                "for a finer split make more documents (llmkit clean --doc-per blank-line)", soft_wrap=True
            )
        copy_tokenizer_files(tok_dir, build.dir / "tokenizer")
        build.config = config.hashed()
        build.seed = config.seed
        build.add_input("corpus", corpus)
        build.add_input("tokenizer", tok_art)
        build.runtime = {"workers": processes, "batch_size": config.batch_size, "encoder": encoder.name}
        build.stats = {
            "dtype": dtype.name,
            "vocab_size": tok.vocab_size,
            "eos_id": tok.eos_id,
            "bos_id": tok.bos_id,
            "add_bos": config.add_bos,
            **per_split,
            "encoder": encoder.name,
            "fast_path_checked_documents": encoder.checked,
            "val_byte_fraction": round(val_share, 6),
            **timing,
        }
    return Path(out)
