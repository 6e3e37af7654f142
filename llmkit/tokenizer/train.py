"""`llmkit tokenizer train`: byte-level BPE trained with HF tokenizers' BpeTrainer on a sample of the input
(llmkit.tokenizer.sample draws it, on this machine or a Ray cluster)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from llmkit import artifacts, errors, resume
from llmkit.tokenizer.config import TokenizerTrainConfig
from llmkit.tokenizer.long_pretokens import cut_long_pretokens
from llmkit.tokenizer.sample import SAMPLE_LOG, Sampler, open_source
from llmkit.data.tokenizer import (
    TOKEN_BYTES_FILE,
    TOKENIZER_FILE,
    compute_token_bytes,
    new_byte_level_bpe,
)
from llmkit.errors import UserError
from llmkit.parallel import local_workers

# A "word" for tokens-per-word: a run of letters/digits, or one CJK character (CJK has no spaces).
_CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK_CHARS}]|[^\W{_CJK_CHARS}]+")


def measure(tokenizer, texts: Sequence[str]) -> dict[str, float]:
    """Bytes per token and tokens per word of `texts` under a trained tokenizer, encoded as tokenize
    encodes them: a special token's text in them is text (one token each otherwise)."""
    tokenizer.encode_special_tokens = True  # (a setting of this object: tokenizer.json does not hold it)
    encoded = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    tokens = sum(len(e.ids) for e in encoded)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    words = sum(len(_WORD.findall(t)) for t in texts)
    return {
        "bytes_per_token": round(n_bytes / tokens, 4) if tokens else 0.0,
        "tokens_per_word": round(tokens / words, 4) if words else 0.0,
        "tokens": tokens,
    }


def train_interruptibly(tokenizer, texts: Iterator[str], trainer) -> None:
    """`tokenizer.train_from_iterator(texts, trainer)`, stoppable by Ctrl-C and SIGTERM.

    The trainer pulls the texts from its own threads while the calling thread waits inside Rust,
    where Python's signal handlers never run: a Ctrl-C during reading was ignored until training
    ended. Training runs on a helper thread instead; this one waits in short joins, where handlers
    do run, and on a signal ends the input (the reader closes its workers) and leaves the trainer's
    threads behind (`errors.request_exit_without_shutdown`: the command exits without unwinding
    them). Called from Python rather than the command, the helper thread trains on what was read
    until it ends, in the background."""
    import threading

    stop, input_closed = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def until_stopped() -> Iterator[str]:
        try:
            for text in texts:
                if stop.is_set():
                    return
                yield text
        finally:
            getattr(texts, "close", lambda: None)()  # (on the thread that reads: the workers stop, the sample log closes)
            input_closed.set()

    def train() -> None:
        try:
            tokenizer.train_from_iterator(until_stopped(), trainer)
        except BaseException as error:  # noqa: BLE001 - raised again on the calling thread
            failed.append(error)

    helper = threading.Thread(target=train, name="llmkit-bpe-train", daemon=True)
    helper.start()
    try:
        while helper.is_alive():
            helper.join(0.1)
    except BaseException:
        errors.request_exit_without_shutdown()  # first: a second Ctrl-C in the wait below must not skip it
        stop.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # at the reader's next text its workers shut down: wait for that
            try:
                if input_closed.wait(0.1):
                    break
            except KeyboardInterrupt:  # pressed again: already stopping
                pass
        raise
    if failed:
        raise failed[0]


STEADY_HELDOUT_PIECES = 20  # fewer, and the held-out figures are a few pieces' mix (seeds 0-3 moved bytes_per_token 3.02-3.43)


def _note_a_thin_heldout_slice(pieces: int, size: int, trained: int, every: int, capped: bool) -> None:
    """The figures of a slice of a few pieces (each up to ~16K characters, held out whole) are that
    mix's, not the input's: a 3.7 MB input of two languages held out 0 to 3 pieces by seed."""
    from llmkit.console import note

    if pieces >= STEADY_HELDOUT_PIECES:
        return
    if capped:
        fix = "--heldout-max-bytes is what stops the slice there: raise it"
    elif pieces + trained < 2 * STEADY_HELDOUT_PIECES:
        fix = f"the input ({pieces + trained:,} piece{'s' if pieces + trained != 1 else ''}) is too small for a steady one: more text gives one"
    else:
        fix = (f"a smaller --heldout-every than {every} holds more out" if every > 2 else "more text gives more")
    if pieces == 0:
        note(f"no piece of the {trained:,} trained on was drawn for the held-out slice (each with chance 1/{every}): "
             f"bytes_per_token and tokens_per_word are measured on training text, which flatters them; {fix}")
    else:
        note(f"the held-out slice is {pieces} piece{'s' if pieces != 1 else ''} ({size:,} bytes): bytes_per_token and "
             f"tokens_per_word are that text's, which another --seed draws otherwise (they may move by several percent), "
             f"not the input's as a whole; {fix}")


def train_tokenizer(
    inputs: Sequence[Path | str], out: Path | str, config: TokenizerTrainConfig, *, force: bool = False
) -> Path:
    """Train a byte-level BPE tokenizer and write a tokenizer artifact; returns its path."""
    from rich.progress import DownloadColumn, TransferSpeedColumn
    from tokenizers import pre_tokenizers, trainers

    from llmkit.console import err, progress, styled

    source = open_source([Path(p) for p in inputs])
    sampler = Sampler(config, source.total_bytes)
    tokenizer = new_byte_level_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(config.special_tokens),  # ids 0..k-1, in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=err.is_terminal,
    )
    if config.sample_bytes and source.corpus is not None:
        # The draw's odds follow the corpus's byte count, a manifest stat outside its fingerprint (the
        # Parquet footers' sizes are no substitute: dictionary pages make them 0.2-1.6x the text): it
        # is part of what the tokenizer records it was drawn from, and of what a rerun continues.
        source.described = {**source.described, "bytes": source.total_bytes}
    # a rerun continues only the very run that was interrupted: same config, seed and input
    # format 2: long lines are cut into pieces at spaces (an earlier run's log holds the old pieces: not continued);
    # format 3: --sample-bytes draws at its own rate over the whole input (an earlier log drew at 1.1 times it)
    # format 4 (2026-12-05): a text file's paragraphs keep their blank lines, and its ranges are cut after the whole run
    key = resume.digest({"stage": "tokenizer train", "format": 4, "config": config.hashed(), "seed": config.seed,
                         "input": source.described, "corpus": source.corpus.fingerprint if source.corpus else None})
    with artifacts.create(out, "tokenizer", force=force, inputs=inputs, resume_key=key) as build:
        started = time.perf_counter()
        with progress(DownloadColumn(), TransferSpeedColumn(), transient=True) as bar:
            task = bar.add_task("reading + counting", total=source.total_bytes)
            texts = sampler.training_texts(source, config.execution, config.workers, lambda size: bar.advance(task, size),
                                           folder=build.dir)
            train_interruptibly(tokenizer, cut_long_pretokens(texts), trainer)
        if source.corpus is not None:  # the shards it read are the corpus's (--max-docs 10 reads the first alone)
            read = {Path(group.path) for group in source.tasks[: sampler.tasks_read]}
            with artifacts.checked_as_read(*sorted(read)):
                pass
        seconds = time.perf_counter() - started
        build.scratch.append(SAMPLE_LOG)  # (with the marker, what a rerun skips the reading with)
        if sampler.docs == 0 and config.sample_bytes is not None and source.total_bytes > 0:
            raise UserError(
                f"--sample-bytes {config.sample_bytes} drew no document from the input's {source.total_bytes:,} bytes; "
                "raise --sample-bytes (or leave it out to train on everything)"
            )
        if sampler.docs == 0 and sampler.heldout:  # ("its files are empty" said of a one-line file held out whole)
            raise UserError(f"every piece of the input ({len(sampler.heldout):,}) was held out for the stats (--heldout-every "
                            f"{config.heldout_every}), leaving none to train on; give more text, or a larger --heldout-every")
        if sampler.docs == 0:
            raise UserError(
                "the input has no text to train on (empty corpus or only empty documents); "
                + ("check the corpus with llmkit inspect or pass other files" if source.corpus is not None
                   else "its files are empty or hold only blank lines; pass files with text")
            )
        if tokenizer.get_vocab_size() < config.vocab_size:
            more = (f"more text gives more, and a lower --min-frequency than {config.min_frequency:,} may"
                    if config.min_frequency > 1 else "more text gives more")
            # (a warning, not a note: a model built on it has another embedding size than the one asked for)
            err.print(styled("warning:", "yellow", f" the input held only {tokenizer.get_vocab_size():,} tokens' worth of "
                             f"merges, fewer than --vocab-size {config.vocab_size:,}: the tokenizer has "
                             f"{tokenizer.get_vocab_size():,} ({more})"), soft_wrap=True)
        tokenizer.save(str(build.dir / TOKENIZER_FILE))
        np.save(build.dir / TOKEN_BYTES_FILE, compute_token_bytes(tokenizer), allow_pickle=False)

        # Too small an input to hold anything out (or no piece drawn): measure on (the start of) the training sample.
        measured_on = "heldout" if sampler.heldout else "training sample"
        quality = measure(tokenizer, sampler.heldout or sampler.first_trained)
        _note_a_thin_heldout_slice(len(sampler.heldout), sampler.heldout_bytes, sampler.docs, config.heldout_every,
                                   sampler.heldout_bytes >= config.heldout_max_bytes)
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
        # (a resumed run whose sample was read before it stopped read nothing itself: what its workers would be)
        settled = local_workers(config.workers) if config.execution.executor == "local" else config.workers
        build.runtime = {**config.runtime(), "workers": sampler.workers or settled}
    return Path(out)
