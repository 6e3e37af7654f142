"""`llmkit tokenizer train`: byte-level BPE trained with HF tokenizers' BpeTrainer on a corpus sample."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit import artifacts
from llmkit.tokenizer.config import TokenizerTrainConfig
from llmkit.data.corpus import iter_corpus_texts, iter_text_files
from llmkit.data.tokenizer import (
    TOKEN_BYTES_FILE,
    TOKENIZER_FILE,
    compute_token_bytes,
    new_byte_level_bpe,
)
from llmkit.errors import UserError

_BATCH = 1000


@dataclass
class _Source:
    """Where the training text comes from: one corpus artifact, or plain text files."""

    batches: Iterator[list[str]]
    total_bytes: int | None
    corpus: artifacts.Artifact | None
    described: dict


def _open_source(inputs: Sequence[Path]) -> _Source:
    if not inputs:
        raise UserError("no input given; pass a corpus artifact (llmkit clean) or UTF-8 text files")
    inputs = [Path(p) for p in inputs]
    if len(inputs) == 1 and inputs[0].is_dir():
        corpus = artifacts.load(inputs[0], kind="corpus")
        total = corpus.stats.get("bytes")
        return _Source(iter_corpus_texts(corpus, _BATCH), int(total) if total else None, corpus, {"kind": "corpus"})
    for path in inputs:
        if path.is_dir():
            raise UserError(f"{path} is a directory; pass one corpus artifact, or text files only")
        if not path.is_file():
            raise UserError(f"no such file or artifact: {path}; pass a corpus artifact or UTF-8 text files")
    # Files are identified by name and content hash, never by absolute path (fingerprints move).
    described = {"kind": "text_files", "files": [{"name": p.name, "sha256": artifacts.sha256_file(p)} for p in inputs]}
    return _Source(iter_text_files(inputs, _BATCH), sum(p.stat().st_size for p in inputs), None, described)


PIECE_CHARS = 8192


def split_pieces(text: str, size: int = PIECE_CHARS) -> list[str]:
    """A long document in pieces of about `size` characters, cut after a run of newlines.

    Sampling and holding out work on pieces, so a corpus of a few big files (`llmkit clean`'s
    one document per file) still gets a held-out slice. Cutting after the whole newline run
    keeps the pre-tokens on both sides of the cut as they are in the whole text.
    """
    if len(text) <= 2 * size:
        return [text]
    pieces, start = [], 0
    while len(text) - start > 2 * size:
        cut = text.find("\n", start + size)
        if cut < 0:
            break
        cut += 1
        while cut < len(text) and text[cut] in "\r\n":
            cut += 1
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


class _Sampler:
    """Splits the text stream into the training sample and the held-out slice, deterministically.

    The unit is a piece (a document, or ~8K characters of a long one): every `heldout_every`-th
    piece is held out (up to heldout_max_bytes); --max-docs counts pieces, --sample-bytes bytes.
    """

    def __init__(self, config: TokenizerTrainConfig, seed: int, total_bytes: int | None):
        self.config = config
        self.rng = np.random.Generator(np.random.PCG64(seed))
        # Keep each piece with this probability so that a --sample-bytes sample spans the corpus.
        self.keep = 1.0
        if config.sample_bytes and total_bytes:
            self.keep = min(1.0, 1.1 * config.sample_bytes / total_bytes)
        self.heldout: list[str] = []
        self.heldout_bytes = 0
        # The first training pieces, to measure on when the input is too small to hold any out.
        self.first_trained: list[str] = []
        self.docs = self.bytes = self.seen = 0

    def full(self) -> bool:
        c = self.config
        return bool((c.max_docs and self.docs >= c.max_docs) or (c.sample_bytes and self.bytes >= c.sample_bytes))

    def heldout_target(self) -> int:
        return min(self.config.heldout_max_bytes, max(1, self.bytes // self.config.heldout_every))

    def training_texts(self, batches: Iterator[list[str]], on_batch) -> Iterator[str]:
        every, cap = self.config.heldout_every, self.config.heldout_max_bytes
        for batch in batches:
            pieces = [piece for text in batch if text for piece in split_pieces(text)]
            draws = self.rng.random(len(pieces))
            for text, draw in zip(pieces, draws):
                self.seen += 1
                size = len(text.encode("utf-8"))
                full = self.full()
                if full or (self.seen % every == 0 and self.heldout_bytes < cap):
                    # Once the sample is complete, the pieces after it make up the rest of the held-out slice.
                    if full and self.heldout_bytes >= self.heldout_target():
                        break
                    self.heldout.append(text)
                    self.heldout_bytes += size
                    continue
                if draw >= self.keep:
                    continue
                self.docs += 1
                self.bytes += size
                if self.bytes <= cap:
                    self.first_trained.append(text)
                yield text
            on_batch(len(batch), sum(len(t.encode("utf-8")) for t in batch))
            if self.full() and self.heldout_bytes >= self.heldout_target():
                return


# A "word" for tokens-per-word: a run of letters/digits, or one CJK character (CJK has no spaces).
_CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK_CHARS}]|[^\W{_CJK_CHARS}]+")


def measure(tokenizer, texts: Sequence[str]) -> dict[str, float]:
    """Bytes per token and tokens per word of `texts` under a trained tokenizer."""
    encoded = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    tokens = sum(len(e.ids) for e in encoded)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    words = sum(len(_WORD.findall(t)) for t in texts)
    return {
        "bytes_per_token": round(n_bytes / tokens, 4) if tokens else 0.0,
        "tokens_per_word": round(tokens / words, 4) if words else 0.0,
        "tokens": tokens,
    }


def train_tokenizer(
    inputs: Sequence[Path | str], out: Path | str, config: TokenizerTrainConfig, *, force: bool = False
) -> Path:
    """Train a byte-level BPE tokenizer and write a tokenizer artifact; returns its path."""
    from rich.progress import DownloadColumn, TransferSpeedColumn
    from tokenizers import pre_tokenizers, trainers

    from llmkit.console import err, progress

    source = _open_source([Path(p) for p in inputs])
    sampler = _Sampler(config, config.seed, source.total_bytes)
    tokenizer = new_byte_level_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(config.special_tokens),  # ids 0..k-1, in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=err.is_terminal,
    )
    with artifacts.create(out, "tokenizer", force=force, inputs=inputs) as build:
        started = time.perf_counter()
        with progress(DownloadColumn(), TransferSpeedColumn(), transient=True) as bar:
            task = bar.add_task("reading + counting", total=source.total_bytes)
            tokenizer.train_from_iterator(
                sampler.training_texts(source.batches, lambda docs, size: bar.advance(task, size)), trainer
            )
        seconds = time.perf_counter() - started
        if sampler.docs == 0:
            raise UserError(
                "the input has no text to train on (empty corpus or only empty documents); "
                "check the corpus with llmkit inspect or pass other files"
            )
        tokenizer.save(str(build.dir / TOKENIZER_FILE))
        np.save(build.dir / TOKEN_BYTES_FILE, compute_token_bytes(tokenizer), allow_pickle=False)

        # Too small an input to hold anything out: measure on (the start of) the training sample.
        measured_on = "heldout" if sampler.heldout else "training sample"
        quality = measure(tokenizer, sampler.heldout or sampler.first_trained)
        build.config = {**config.hashed(), "input": source.described}
        build.seed = config.seed
        if source.corpus is not None:
            build.add_input("corpus", source.corpus)
        build.stats = {
            "vocab_size": tokenizer.get_vocab_size(),
            "special_tokens": list(config.special_tokens),
            "training_pieces": sampler.docs,
            "training_bytes": sampler.bytes,
            "heldout_pieces": len(sampler.heldout),
            "heldout_bytes": sampler.heldout_bytes,
            "measured_on": measured_on,
            "bytes_per_token": quality.get("bytes_per_token"),
            "tokens_per_word": quality.get("tokens_per_word"),
            "train_seconds": round(seconds, 3),
        }
    return Path(out)
