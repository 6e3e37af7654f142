"""`llmkit tokenize`: a corpus artifact -> binary token shards (a tokens artifact), streamed.

Documents are read from the corpus in record batches, encoded on all cores, and appended to
the train or validation shards as `[<|bos|>] tokens <|eos|>`; memory is bounded by one batch.
The split is by whole documents: a seeded permutation of the document indices picks exactly
round(n * val_fraction) of them for validation, so the split depends only on (corpus, seed).
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import closing
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any, Callable

import numpy as np

from llmkit import artifacts, resume
from llmkit.console import err, styled
from llmkit.data.corpus import BATCH_BYTES, count_documents, iter_corpus_texts
from llmkit.data.shards import SPLITS, ShardWriter, token_dtype
from llmkit.data.tokenizer import TextTokenizer, copy_tokenizer_files, load_tokenizer, refuse_gapped_ids
from llmkit.errors import UserError
from llmkit.executor import Execution
from llmkit.parallel import ordered_map
from llmkit.tokenizer.config import TokenizeConfig


class _FastPathMismatch(Exception):
    """tiktoken disagreed with tokenizers on a checked document: redo the run on the tokenizers path."""


CHECKPOINT_EVERY = 8  # batches between completion markers (a resumed run redoes at most this many)
TRAIN, VAL, TAIL = 0, 1, 2  # where a document goes: train, validation, or its tail to validation
# A pooled document gives a tail only where it would hold this much text (a few tokens): shorter
# tails validate nothing; 1,405 paragraphs at F = 0.0003 gave 1,405 one-token fragments, 0.6 % of
# the text, each taken from its document's end.
MIN_TAIL_BYTES = 16


def largest_val_share(val_fraction: float) -> float:
    """The most of a text validation should take at --val-fraction F: 2F, or F + (1 - F) / 2 from F =
    1/3 on (where 2F would be most of it or all). A document above it is never drawn whole
    (`split_plan`), and a split holding more is warned of."""
    return min(2 * val_fraction, (1 + val_fraction) / 2)


def _percent(share: float) -> str:
    """A share as a percentage with two significant figures below 1% (0.04%, not 0.0%), never in exponent form."""
    if share <= 0 or float(f"{100 * share:.2g}") >= 1:
        return f"{100 * share:.1f}%"
    return "<0.0001%" if share < 1e-6 else f"{float(f'{100 * share:.2g}'):g}%"


def split_plan(groups: np.ndarray, val_fraction: float, seed: int,
               sizes: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Where each document goes, drawn per input so that validation looks like training.

    `groups[i]` is document i's input (the corpus's `source`). From each input, round(n * F) whole
    documents go to validation, picked by a seeded permutation (inputs in order of appearance, one
    generator); the documents of inputs too small for that are pooled and give round(n * F) of
    theirs. Too few of them for one whole (one book as one document, a few files) instead give the
    last F of their tokens, a contiguous tail as nanoGPT splits (each part keeping the document's
    end-of-text token, so training keeps its document boundaries): each pooled document long
    enough for a tail of MIN_TAIL_BYTES (by `sizes`, the UTF-8 bytes of the documents at the
    given indices; every one is long enough without it), the others training whole. Where those
    tails come to less than half of F of the pool's text (or there are none), one whole short
    document goes to validation too, drawn among the non-empty ones no larger than 2F of the
    pool (the smallest non-empty one where none is). A document larger than 2F of its input's text
    (of the pool's, when pooled) is never drawn whole, which would put more than twice the share in
    validation (a book among 30 notes: 98 %), or none of it (a language that is one long document in
    each file); it gives its tail. The plan depends only on (corpus, F, seed).
    """
    plan = np.full(len(groups), TRAIN, dtype=np.int8)
    summary: dict[str, Any] = {"inputs": 0, "val_documents": 0, "documents_split_inside": 0}
    if val_fraction <= 0 or len(groups) == 0:
        return plan, summary
    size_of = sizes(np.arange(len(groups))).astype(np.float64) if sizes is not None else None
    _, first = np.unique(groups, return_index=True)
    rng = np.random.Generator(np.random.PCG64(seed))

    def drawn_whole(members: np.ndarray) -> np.ndarray:
        """`members` less the ones too large to draw whole, which give their tails instead, where whole
        documents are drawn from them (too few for one: the tails below decide). Too large: more than
        `largest_val_share` of the text (2F), with a tail at least a quarter of the mean of the other
        documents (a mean with the book in it kept the book in the draw; the whole mean, a 30 kB document
        among 900-byte notes at F = 0.02); a document a few times the mean at a small F stays in the draw
        (its tail would be a fragment: 24 bytes at F = 0.002)."""
        if size_of is None or min(len(members) - 1, round(len(members) * val_fraction)) < 1:
            return members
        size = size_of[members]
        large = size > largest_val_share(val_fraction) * size.sum()
        others = size[~large].mean() if (~large).any() else 0.0
        split = large & (size * val_fraction >= max(MIN_TAIL_BYTES, others / 4))
        plan[members[split]] = TAIL
        summary["documents_split_inside"] += int(split.sum())
        return members[~split]

    pooled = []  # documents of inputs too small for a draw of their own
    for group in groups[np.sort(first)]:
        members = drawn_whole(np.flatnonzero(groups == group))
        count = min(len(members) - 1, round(len(members) * val_fraction))
        if count >= 1:
            plan[members[rng.permutation(len(members))[:count]]] = VAL
            summary["val_documents"] += count
        elif len(members):
            pooled.append(members)
        summary["inputs"] += 1
    if not pooled:
        return plan, summary
    # Small inputs (a folder of notes, one document each) give whole documents together; only
    # too few documents in all for one whole (one book, a few files) are split inside.
    members = np.sort(np.concatenate(pooled))
    whole = drawn_whole(members)
    count = min(len(whole) - 1, round(len(whole) * val_fraction))
    if count >= 1:
        plan[whole[rng.permutation(len(whole))[:count]]] = VAL
        summary["val_documents"] += count
        return plan, summary
    if len(whole) < len(members):  # (the large ones give tails: the rest trains whole)
        return plan, summary
    size = size_of[members] if size_of is not None and len(members) > 1 else None
    is_long = np.ones(len(members), bool) if size is None else size * val_fraction >= MIN_TAIL_BYTES
    plan[members[is_long]] = TAIL
    summary["documents_split_inside"] += int(is_long.sum())
    if size is None or size[is_long].sum() >= size.sum() / 2:  # (the tails: F of the long ones, against F of all)
        return plan, summary
    short = (~is_long) & (size > 0)  # (an empty document validates nothing)
    if short.any():
        fitting = np.flatnonzero(short & (size <= 2 * val_fraction * size.sum()))
        smallest = np.flatnonzero(short)[np.argmin(size[short])]
        plan[members[fitting[rng.integers(len(fitting))] if len(fitting) else smallest]] = VAL
        summary["val_documents"] += 1
    return plan, summary


def corpus_split_plan(corpus: artifacts.Artifact, val_fraction: float, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """split_plan of a corpus artifact and its documents' sizes."""
    return split_plan(document_groups(corpus), val_fraction, seed, sizes=partial(document_sizes, corpus))


def document_sizes(corpus: artifacts.Artifact, indices: np.ndarray) -> np.ndarray:
    """The UTF-8 bytes of the documents at `indices` (sorted, in corpus order), from the text column
    of the shards that hold them (a null text counts 0)."""
    import pyarrow.parquet as pq

    from llmkit.data.corpus import corpus_shards, readable_shard

    sizes, start = [], 0
    for path in corpus_shards(corpus):
        with readable_shard(path):
            parquet = pq.ParquetFile(path)
            rows = parquet.metadata.num_rows
            wanted = indices[(indices >= start) & (indices < start + rows)] - start
            if len(wanted):  # (a row group's text at a time: a shard's whole column took 60 MB more at its peak)
                lengths = [_text_lengths(chunk) for group in range(parquet.num_row_groups)
                           for chunk in parquet.read_row_group(group, columns=["text"]).column("text").chunks]
                sizes.append(np.concatenate(lengths or [np.zeros(0, np.int64)])[wanted])
        start += rows
    return np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64)


def document_groups(corpus: artifacts.Artifact) -> np.ndarray:
    """Each document's input as a small integer (from the `source` column; one group without it)."""
    import pyarrow.parquet as pq

    from llmkit.data.corpus import corpus_shards, readable_shard

    ids: dict[str, int] = {}
    parts = []
    for path in corpus_shards(corpus):
        with readable_shard(path):
            parts += _shard_groups(pq.ParquetFile(path, read_dictionary=["source"]), ids)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def _shard_groups(parquet, ids: dict) -> list[np.ndarray]:
    """document_groups of one shard (read as a dictionary column: no dictionary_encode, whose
    pyarrow.compute import costs 0.05 s)."""
    parts = []
    if "source" not in parquet.schema_arrow.names:
        return [np.zeros(parquet.metadata.num_rows, dtype=np.int32)]
    for batch in parquet.iter_batches(columns=["source"], batch_size=65536):
        encoded = batch.column(0)
        # one group per distinct source, and one for the documents without a source (null)
        nulls = [ids.setdefault(None, len(ids))] if encoded.indices.null_count else []
        local = np.array([ids.setdefault(str(v), len(ids)) for v in encoded.dictionary.to_pylist()] + nulls, dtype=np.int32)
        parts.append(local[_arrow_indices(encoded.indices, null_as=len(local) - 1)] if len(local) else np.zeros(0, np.int32))
    return parts


def _text_lengths(array) -> np.ndarray:
    """The UTF-8 bytes of each text of an Arrow string array, a null 0, from its offsets buffer
    (`pyarrow.compute.binary_length(...).fill_null(0)` imports pandas: 0.26 CPU-s of a tokenize run
    of a few documents, the corpus `clean` makes of a few files)."""
    import pyarrow as pa

    dtype = np.dtype("int64" if pa.types.is_large_string(array.type) else "int32")
    validity, offsets = array.buffers()[:2]
    bounds = np.frombuffer(offsets, dtype=dtype, count=len(array) + 1, offset=array.offset * dtype.itemsize)
    lengths = np.diff(bounds).astype(np.int64)
    if array.null_count:
        valid = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")[array.offset : array.offset + len(array)]
        lengths[valid == 0] = 0
    return lengths


def _arrow_indices(array, null_as: int) -> np.ndarray:
    """Arrow dictionary indices as numpy, read from the data buffer (pyarrow's own `to_numpy`
    imports pandas, 0.2 s of a tokenize run's start-up, and `fill_null` pyarrow.compute); a null
    becomes `null_as`."""
    dtype = np.dtype(f"int{array.type.bit_width}")
    validity, data = array.buffers()[:2]
    indices = np.frombuffer(data, dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize).astype(np.int64)
    if array.null_count:
        valid = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")[array.offset : array.offset + len(array)]
        indices[valid == 0] = null_as
    return indices


CHECK_CHARS = 16384
FIRST_CHECKS = 256  # documents of the first batch checked against tokenizers

_STATE: dict[str, Any] = {}  # a Ray actor's encoder state (_init_worker); local runs pass their own (_Encoder.state)


def _init_worker(tokenizer_dir: str, use_fast: bool, add_bos: bool, check_every: int, digest: str | None = None) -> None:
    """Sets a Ray actor's encoder state, from the tokenizer files the driver checked: on another
    node the same path may hold another tokenizer (a node-local copy, a stale cache), whose ids
    would be written under the driver's tokenizer's fingerprint."""
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        # One encoding thread per worker process: the processes are the parallelism.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if digest is not None and (found := tokenizer_digest(tokenizer_dir)) != digest:
        from llmkit.executor import NodeFailed  # (the node's fault, not the input's: the work done is kept for a rerun)

        seen = "differs from the one the driver read there" if found else "is not found on this node"
        raise NodeFailed(f"the tokenizer at {tokenizer_dir} {seen}; every node needs the stage's inputs at the same path, "
                         "with the same contents")
    _STATE.update(encoder_state(load_tokenizer(tokenizer_dir), use_fast, add_bos, check_every))


def tokenizer_digest(tokenizer_dir: str | Path) -> str:
    """The SHA-256s of the files that decide the ids (tokenizer.json, and special_tokens.json where there is one)."""
    from llmkit.artifacts import sha256_file
    from llmkit.data.tokenizer import SPECIAL_ROLES_FILE, TOKENIZER_FILE

    folder = Path(tokenizer_dir)
    if not (folder / TOKENIZER_FILE).is_file() and (folder / "tokenizer" / TOKENIZER_FILE).is_file():
        folder = folder / "tokenizer"  # an artifact's copy, as load_tokenizer finds it
    return " ".join(sha256_file(folder / name) for name in (TOKENIZER_FILE, SPECIAL_ROLES_FILE) if (folder / name).is_file())


def encoder_state(tok: TextTokenizer, use_fast: bool, add_bos: bool, check_every: int) -> dict[str, Any]:
    """What `_encode_batch` needs: one per run, so runs in threads of one process stay apart."""
    bos, eos = tok.hf.id_to_token(tok.bos_id), tok.hf.id_to_token(tok.eos_id)
    return dict(
        tok=tok,
        fast=tok.fast_encoding if use_fast else None,
        prefix=[tok.bos_id] if add_bos else [],
        eos=tok.eos_id,
        # the joined encoding's text around each document, and the special tokens tiktoken may match there
        head=bos if add_bos else "",
        tail=eos,
        allowed=frozenset({bos, eos} if add_bos else {eos}),
        dtype=token_dtype(tok.vocab_size),
        check_every=check_every,
    )


def _encode_batch(job: tuple[int, list[str]], state: dict[str, Any] | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, str | None]:
    """Encode batch `index` of documents -> (UTF-8 sizes, flat ids, per-document lengths, checked, mismatch).

    Each non-empty document becomes `[bos] ids eos`; an empty one has length 0 (it is skipped).
    On the fast path the first FIRST_CHECKS documents of batch 0 and every `check_every`-th
    document after that are also encoded by tokenizers; the first difference is returned so the run can fall back.
    """
    index, texts = job
    state = _STATE if state is None else state
    sizes = np.fromiter((len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts))
    present = [t for t in texts if t]
    lengths = np.zeros(len(texts), dtype=np.int64)
    if state["fast"] is None:
        flat, lengths[sizes > 0] = _encode_with_tokenizers(state, present)
        checked, mismatch = 0, None
    else:
        flat, lengths[sizes > 0] = _encode_with_tiktoken(state, present)
        checked, mismatch = _spot_check(state, index, present, flat, lengths[sizes > 0])
    return sizes, flat.astype(state["dtype"], copy=False), lengths, checked, mismatch


def _encode_with_tokenizers(state: dict[str, Any], present: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return _framed(state, state["tok"].encode_batch(present))


def _framed(state: dict[str, Any], encoded: list) -> tuple[np.ndarray, np.ndarray]:
    """Each document's ids as `[bos] ids eos`, flat, and each one's length in that."""
    prefix, eos = state["prefix"], state["eos"]
    lengths = np.array([len(prefix) + len(ids) + 1 for ids in encoded], dtype=np.int64)
    flat = np.fromiter(chain.from_iterable(chain(prefix, ids, (eos,)) for ids in encoded), dtype=np.uint32, count=int(lengths.sum()))
    return flat, lengths


JOIN_CHARS = 4_000_000  # text per tiktoken call on the fast path


def _encode_with_tiktoken(state: dict[str, Any], present: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The documents joined by `<|eos|>` (`<|eos|><|bos|>` with BOS) into one text per 4M characters,
    encoded by tiktoken's core with those special tokens allowed.

    tiktoken encodes the text between allowed special tokens piece by piece, exactly as it encodes
    each document alone, so the ids are the same; but one call per group instead of one per
    document keeps the GIL released for the whole group (two threads encode 1.6 times as fast as
    one, where per-document calls queued on the GIL) and skips a Python list per document: 1.27x
    less CPU than `encode_ordinary` on short documents."""
    core = state["fast"]._core_bpe
    parts, group, chars = [], [], 0
    for text in present:
        group.append(text)
        chars += len(text)
        if chars >= JOIN_CHARS:
            parts.append(_encode_group(state, core, group))
            group, chars = [], 0
    if group or not parts:
        parts.append(_encode_group(state, core, group))
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([ids for ids, _ in parts]), np.concatenate([lengths for _, lengths in parts])


def _encode_group(state: dict[str, Any], core: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`[bos] ids eos` of each text, flat, and each text's length in that."""
    head, tail, allowed, prefix, eos = state["head"], state["tail"], state["allowed"], state["prefix"], state["eos"]
    # where BOS and EOS are one token, the joined ids could not say where a document ends
    if texts and not (prefix and prefix[0] == eos):
        ids = np.frombuffer(core.encode_to_tiktoken_buffer(head + (tail + head).join(texts) + tail, allowed), dtype=np.uint32)
        if np.count_nonzero(ids == eos) == len(texts) and (not prefix or np.count_nonzero(ids == prefix[0]) == len(texts)):
            return ids, np.diff(np.flatnonzero(ids == eos) + 1, prepend=0)
    # A document holds the text of <|eos|> (or <|bos|>), which must stay text: encode each document
    # alone with no special token allowed.
    return _framed(state, [core.encode_ordinary(text) for text in texts])


def _spot_check(state: dict[str, Any], index: int, present: list[str], flat: np.ndarray,
                lengths: np.ndarray) -> tuple[int, str | None]:
    """Some documents encoded again by tokenizers -> (how many, the first that differs or None)."""
    every = state["check_every"]
    # batch 0: its first FIRST_CHECKS documents, then every `every`-th as in the other batches
    picked = ([*range(min(len(present), FIRST_CHECKS)), *range(FIRST_CHECKS, len(present), every)] if index == 0
              else list(range(index % every, len(present), every)))
    # tokenizers is slow on very long strings: a long document is checked on its first CHECK_CHARS.
    samples = [present[i][:CHECK_CHARS] for i in picked]
    ends, skip = np.cumsum(lengths), len(state["prefix"])
    for i, sample, ref in zip(picked, samples, state["tok"].encode_batch(samples)):
        if len(sample) == len(present[i]):
            ours = flat[ends[i] - lengths[i] + skip : ends[i] - 1].tolist()
        else:
            ours = state["fast"]._core_bpe.encode_ordinary(sample)
        if ours != ref:
            return len(picked), sample[:80]
    return len(picked), None


WORKER_BYTES = 8_000_000  # below this much text per thread, another thread costs more CPU than it saves time


def auto_workers(total_bytes: int | None, idle: int) -> int:
    """Encoding threads for `--workers 0`: one per 8 MB of text, at most one per idle core.

    A second thread starts at once, but two threads spend about a quarter more CPU than one for
    the same text (measured, tiktoken on this 2-core machine), so a small corpus stays on one; and
    on a core another program keeps busy a thread only competes. `idle`: the cores no other
    program uses now (llmkit.runtime.CoreMeter)."""
    if not total_bytes:
        return 1
    return max(1, min(idle, int(total_bytes // WORKER_BYTES)))


class _Encoder:
    """Encodes record batches in order (llmkit.parallel.ordered_map) on `workers` threads of this
    process, or Ray actors, and counts the documents the tiktoken fast path was checked on.

    Threads, not processes: both encoders release the GIL while they encode a text, so threads
    share one tokenizer and start at once, where a spawned process took about a second to import
    and rebuild it."""

    def __init__(self, tok: TextTokenizer, tokenizer_dir: Path, workers: int, use_fast: bool, add_bos: bool,
                 check_every: int = 128, execution: Execution | None = None):
        self.workers = workers
        self.execution = execution or Execution()
        self.init_args = (str(Path(tokenizer_dir).absolute()), use_fast, add_bos, check_every,  # (Ray workers run elsewhere)
                          tokenizer_digest(tokenizer_dir) if self.execution.executor == "ray" else None)
        self.checked = 0
        self.used_workers = workers  # settled by ordered_map: on Ray 0 means one per CPU of the cluster
        self.name = "tiktoken" if use_fast and tok.fast_encoding is not None else "tokenizers"
        self.state = encoder_state(tok, use_fast, add_bos, check_every) if self.execution.executor == "local" else None

    def map(self, batches, start: int = 0):
        """`start`: the first batch's number (a resumed run's: the fast path's checks go on as they were)."""
        local = self.execution.executor == "local"
        function = partial(_encode_batch, state=self.state) if local else _encode_batch
        # (closing: closed as this generator is, while the caller's error unwinds, which keeps a Ray run's logs)
        with closing(ordered_map(function, enumerate(batches, start), workers=self.workers, threads=local,
                                 initializer=None if local else _init_worker, initargs=self.init_args,
                                 executor=self.execution.executor, ray_address=self.execution.ray_address,
                                 on_start=lambda n: setattr(self, "used_workers", n))) as results:
            for result in results:
                yield self._checked(result)

    def _checked(self, result):
        sizes, flat, lengths, checked, mismatch = result
        if mismatch is not None:
            raise _FastPathMismatch(mismatch)
        self.checked += checked
        return sizes, flat, lengths


def _continues_character(tok) -> Callable[[int], bool]:
    """Whether a token's bytes begin inside a UTF-8 character (a byte 10xxxxxx), which a byte-level
    BPE token of CJK text or an emoji may: a cut before such a token splits a character in two."""
    @functools.cache
    def continues(token: int) -> bool:
        return bool(tok.token_bytes[token]) and 0x80 <= tok.id_to_bytes(token)[0] < 0xC0

    return continues


def _write_split_document(writers: dict[str, ShardWriter], split_bytes: dict[str, int], tokens: np.ndarray, size: int,
                          val_fraction: float, token_bytes: np.ndarray, bos: bool, continues: Callable[[int], bool]) -> None:
    """A document of an input too small for whole validation documents: its head to train (ending
    as the document does, with its end-of-text token), its last `val_fraction` to validation
    (starting as the document does, with its start token under --add-bos)."""
    first = 1 if bos else 0  # the start token stays with the head; the tail gets its own copy
    # Each part holds a token of text at least (a tail of the end-of-text alone is nothing to validate on):
    # a document shorter than 1/val_fraction tokens gives one, and one too short for two parts trains whole.
    cut = min(len(tokens) - 2, max(first + 1, round(len(tokens) * (1 - val_fraction))))
    if first + 1 <= cut <= len(tokens) - 2 and continues(int(tokens[cut])):
        # Between whole characters (a cut inside one decoded to U+FFFD at the head's end and the tail's
        # start): back to the start of the character it fell in, else (the document's first character)
        # forward past it; a document of one character trains whole.
        back = cut
        while back > first + 1 and continues(int(tokens[back])):
            back -= 1
        if continues(int(tokens[back])):
            back = cut
            while back < len(tokens) - 2 and continues(int(tokens[back])):
                back += 1
            back = back if not continues(int(tokens[back])) else len(tokens)
        cut = back
    if cut < first + 1:
        cut = len(tokens)
    tail_bytes = int(token_bytes[tokens[cut:]].sum())
    if cut < len(tokens):
        head = np.concatenate([tokens[:cut], tokens[-1:]])
        writers["train"].write(head, np.array([len(head)]))
    else:
        writers["train"].write(tokens, np.array([len(tokens)]))
    split_bytes["train"] += size - tail_bytes
    if cut < len(tokens):
        tail = np.concatenate([tokens[:1], tokens[cut:]]) if bos else tokens[cut:]
        writers["val"].write(tail, np.array([len(tail)]))
        split_bytes["val"] += tail_bytes


def _after_documents(batches: Iterator[list[str]], count: int) -> Iterator[list[str]]:
    """The batches of documents past the first `count`."""
    for batch in batches:
        if count < len(batch):
            yield batch[count:]
            yield from batches
            return
        count -= len(batch)


def _write_batch(writers: dict[str, ShardWriter], split_bytes: dict[str, int], batch_plan: np.ndarray, sizes: np.ndarray,
                 flat: np.ndarray, lengths: np.ndarray, split_document: Callable[..., None]) -> None:
    """One encoded batch into the splits its plan gives each document (empty documents hold no tokens
    and are skipped). Each split keeps the corpus order: the documents up to a split one (TAIL) are
    written, then its head and tail (`split_document`), then the next run (a batch without one is a
    single run)."""
    present = sizes > 0
    ends = np.cumsum(lengths)
    tails = np.flatnonzero(present & (batch_plan == TAIL))
    start = 0
    for stop in (*tails.tolist(), len(sizes)):
        run = np.zeros(len(sizes), dtype=bool)
        run[start:stop] = True
        for split, kind in (("train", TRAIN), ("val", VAL)):
            chosen = run & present & (batch_plan == kind)
            if chosen.any():
                writers[split].write(flat[np.repeat(chosen, lengths)], lengths[chosen])
            split_bytes[split] += int(sizes[chosen].sum())
        if stop < len(sizes):
            split_document(flat[ends[stop] - lengths[stop] : ends[stop]], int(sizes[stop]))
        start = stop + 1


def _encode_into(
    build_dir: Path, corpus: artifacts.Artifact, encoder: _Encoder, dtype: np.dtype, plan: np.ndarray,
    config: TokenizeConfig, total_bytes: int | None, tok,
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    from rich.progress import DownloadColumn, TextColumn, TransferSpeedColumn

    from llmkit.console import progress

    writers = {split: ShardWriter(build_dir / split, dtype, config.shard_tokens) for split in SPLITS}
    split_bytes = {split: 0 for split in SPLITS}
    token_bytes, continues = tok.token_bytes, _continues_character(tok)
    doc_index = 0
    total_tokens = 0
    done_batches = 0
    marker = resume.load(build_dir)
    if marker is None:
        for split in SPLITS:  # a run killed before its first marker
            shutil.rmtree(build_dir / split, ignore_errors=True)
    else:
        state, arrays = marker
        done_batches, doc_index, total_tokens, split_bytes = (state["batches"], state["doc_index"], state["tokens"],
                                                              state["split_bytes"])
        encoder.checked = state.get("checked", 0)
        for split, writer in writers.items():
            writer.restore(state["writers"][split], arrays[f"{split}_starts"])
        err.print(f"resuming the interrupted run: {doc_index:,} documents done", soft_wrap=True, markup=False)

    def checkpoint(batches: int) -> None:
        metas, arrays = {}, {}
        for split, writer in writers.items():
            metas[split], arrays[f"{split}_starts"] = writer.state()
        resume.save(build_dir, {"batches": batches, "doc_index": doc_index, "tokens": total_tokens,
                                "split_bytes": split_bytes, "writers": metas, "checked": encoder.checked}, arrays)

    started = time.perf_counter()
    resumed_tokens, resumed_bytes = total_tokens, sum(split_bytes.values())  # (speed: what this run encoded itself)
    texts = iter_corpus_texts(corpus, config.batch_size)
    if doc_index:  # (by documents, not batches: a resume may give another --batch-size)
        texts = _after_documents(texts, doc_index)  # read (the input position) but not encoded again
    split_document = functools.partial(_write_split_document, writers, split_bytes, val_fraction=config.val_fraction,
                                       token_bytes=token_bytes, bos=config.add_bos, continues=continues)
    with progress(DownloadColumn(), TransferSpeedColumn(), TextColumn("{task.fields[rate]}"), transient=True) as bar:
        task = bar.add_task("tokenizing", total=total_bytes, rate="", completed=sum(split_bytes.values()))
        # (closing: a failure in this loop closes the map while it unwinds, as clean's does: a Ray run's logs stay)
        with closing(encoder.map(texts, start=done_batches)) as encoded:
            for number, (sizes, flat, lengths) in enumerate(encoded, start=done_batches + 1):
                _write_batch(writers, split_bytes, plan[doc_index : doc_index + len(sizes)], sizes, flat, lengths, split_document)
                doc_index += len(sizes)
                total_tokens += len(flat)
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.update(task, advance=int(sizes.sum()), rate=f"{(total_tokens - resumed_tokens) / elapsed / 1e6:.2f}M tok/s")
                if number % CHECKPOINT_EVERY == 0:
                    checkpoint(number)
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
        "mb_per_s": round((total - resumed_bytes) / 1e6 / seconds, 3) if seconds else 0.0,
        "tokens_per_s": round((total_tokens - resumed_tokens) / seconds) if seconds else 0,
    }
    return per_split, timing


def _worker_count(config: TokenizeConfig, num_docs: int, total_bytes: int | None, meter) -> int:
    """Encoding threads (Ray actors with --executor ray): --workers, one where the corpus is one
    batch, or (--workers 0 locally) what the corpus's size and the cores `meter` found idle pay for."""
    if config.execution.executor == "ray":
        return config.workers  # actors on the cluster; 0 = one per CPU there
    if config.workers > 0:
        # (a batch is bounded by documents and by bytes)
        one_batch = num_docs <= config.batch_size and total_bytes is not None and total_bytes <= BATCH_BYTES
        return 1 if one_batch else config.workers  # one batch: one thread
    return auto_workers(total_bytes, meter.idle_cores(window=0.1) if meter else 1)


def _checked_val_share(per_split: dict, config: TokenizeConfig, corpus_path: Path, split_summary: dict, num_docs: int) -> float:
    """The validation split's share of the text bytes; an empty training split refused, a share
    far from --val-fraction's warned of with its reason."""
    from llmkit.console import err

    if per_split["train"]["tokens"] == 0:
        if per_split["val"]["tokens"]:  # (the one document --val-fraction left to training was an empty one)
            raise UserError(f"--val-fraction {config.val_fraction:g} left the training split of {corpus_path} only empty "
                            "documents; lower --val-fraction")
        raise UserError(f"corpus {corpus_path} has only empty documents; nothing to tokenize")
    total_bytes_seen = per_split["train"]["bytes"] + per_split["val"]["bytes"]
    val_share = per_split["val"]["bytes"] / total_bytes_seen if total_bytes_seen else 0.0
    if config.val_fraction > 0 and not config.val_fraction / 2 <= val_share <= largest_val_share(config.val_fraction):
        # (a corpus too small for whole validation documents gives each document's tail instead: split_plan)
        drawn = split_summary["val_documents"]
        if split_summary["documents_split_inside"]:
            why = ("its documents are too short to give a validation tail of that share; give longer documents or "
                   "raise --val-fraction")
        elif drawn < 10:  # (a handful of documents: their own sizes decide the share, however the corpus is split)
            why = (f"it takes whole documents and drew {drawn:,} of {num_docs:,}, whose own sizes decide the share; raise "
                   "--val-fraction to average more of them, or split the largest documents (llmkit clean --doc-per blank-line)")
        else:
            # (round(n * F) of n documents is within a factor 2 of F wherever it is one or more: split_plan; so
            # the share is off because the documents drawn are far from the average size: one book among notes)
            why = (f"it takes whole documents ({drawn:,} of {num_docs:,}) and theirs are far from the average size; "
                   "split the largest documents (llmkit clean --doc-per blank-line) for a share closer to the one asked")
        err.print(styled("warning:", "yellow", f" the validation split holds {_percent(val_share)} of the text (asked "
                         f"{100 * config.val_fraction:g}%) because {why}"), soft_wrap=True)
    return val_share


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
    from llmkit.runtime import CoreMeter

    corpus = artifacts.load(corpus_path, kind="corpus")
    total_bytes = corpus.stats.get("bytes")
    # Idle cores are measured over the loading below (a tenth of a second at least: 20 ticks of
    # /proc/stat on two cores), and only where the corpus is large enough for a second thread.
    local_auto = config.workers == 0 and config.execution.executor == "local"
    meter = CoreMeter() if local_auto and (total_bytes or 0) >= 2 * WORKER_BYTES else None
    # A checkpoint's tokenizer/ copy serves too (new data for a, possibly imported, model), and a tokens
    # artifact's (more data encoded as some already was).
    tok_art = artifacts.load(tokenizer_path, kind=("tokenizer", "tokens", "checkpoint"))
    tok_dir = tok_art.path if tok_art.kind == "tokenizer" else tok_art.path / "tokenizer"
    tok = load_tokenizer(tok_dir)
    refuse_gapped_ids(tok.hf)  # (before any work: a gapped id the corpus never produced would crash generation later)
    num_docs = count_documents(corpus)
    if num_docs == 0:
        raise UserError(f"corpus {corpus.path} has no documents; nothing to tokenize (check llmkit clean's filters)")
    plan, split_summary = corpus_split_plan(corpus, config.val_fraction, config.seed)
    workers = _worker_count(config, num_docs, total_bytes, meter)

    dtype = token_dtype(tok.vocab_size)

    # The seed draws the validation split; it is recorded beside the config, not in it.
    # format 2 (2026-12-03): a document split inside is written in its place, not after its batch. The dtype: a
    # 65536-entry vocabulary's shards were uint32 before that day, and a resume must not append uint16 ids to them.
    # format 3 (2026-12-05): a document split between train and val is cut between whole characters
    # format 4 (2026-12-05): a pool of small inputs gives tails of its long documents only (split_plan)
    # format 5 (2026-12-07): a document larger than 2F of its input (or pool) gives its tail, never itself whole
    # (--batch-size, in the key until 2026-12-06, changes no output: a resume skips whole documents)
    key = resume.digest({"stage": "tokenize", "format": 5, "config": config.hashed(), "seed": config.seed,
                         "inputs": [corpus.fingerprint, tok_art.fingerprint], "dtype": dtype.name})
    with artifacts.create(out, "tokens", force=force, inputs=[corpus_path, tokenizer_path], resume_key=key) as build:
        encoder = _Encoder(tok, tok_dir, workers, config.fast, config.add_bos, execution=config.execution)
        try:
            per_split, timing = _encode_into(build.dir, corpus, encoder, dtype, plan, config, total_bytes, tok)
        except _FastPathMismatch as exc:
            err.print(styled("warning:", "yellow", f" tiktoken fast path disagreed with tokenizers on {str(exc)!r}; re-encoding "
                             "with tokenizers"), soft_wrap=True)
            for split in SPLITS:
                shutil.rmtree(build.dir / split, ignore_errors=True)
            resume.remove(build.dir)
            encoder = _Encoder(tok, tok_dir, workers, use_fast=False, add_bos=config.add_bos, execution=config.execution)
            per_split, timing = _encode_into(build.dir, corpus, encoder, dtype, plan, config, total_bytes, tok)
        val_share = _checked_val_share(per_split, config, corpus.path, split_summary, num_docs)
        copy_tokenizer_files(tok_dir, build.dir / "tokenizer")
        build.config = config.hashed()
        build.seed = config.seed
        build.add_input("corpus", corpus)
        build.add_input("tokenizer", tok_art)
        build.runtime = {"workers": encoder.used_workers, "batch_size": config.batch_size, "encoder": encoder.name,
                         **config.execution.runtime()}
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
            "split": split_summary,
            **timing,
        }
    return Path(out)
