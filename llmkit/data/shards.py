"""Token shards on disk, and the memory-mapped reader and sampler every training stage uses.

A tokens artifact holds, per split (`train`, `val`):

    <split>/shard-00000.bin        raw little-endian uint16 (vocab <= 65536) or uint32 token ids
    <split>/shard-00000.docs.npy   int64 start offset of each document within that shard

Documents are stored as `[<|bos|>] tokens <|eos|>` and never straddle a shard; windows do.

`WindowSampler` maps a global sample index k (0, 1, 2, ... across epochs) to one window of
`seq_len + 1` tokens, so the k-th sample depends only on (seed, k): resuming at step s means
asking for the indices after s * batch, and rank r of w takes every w-th batch slice.
"""

from __future__ import annotations

import functools

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmkit import artifacts
from llmkit.errors import UserError

SPLITS = ("train", "val")
UINT16_MAX_VOCAB = 65536  # ids 0..65535


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32; always little-endian on disk."""
    return np.dtype("<u2") if vocab_size <= UINT16_MAX_VOCAB else np.dtype("<u4")


def _stored_dtype(vocab_size: int, recorded: str) -> np.dtype | None:
    """The dtype a tokens artifact's shards hold, if `recorded` is one llmkit writes for the vocabulary:
    token_dtype's, or uint32 for a vocabulary of exactly 65536 (written so before 2026-12-03)."""
    if recorded == token_dtype(vocab_size).name:
        return token_dtype(vocab_size)
    return np.dtype("<u4") if vocab_size == UINT16_MAX_VOCAB and recorded == "uint32" else None


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


class ShardWriter:
    """Appends whole documents to `<dir>/shard-NNNNN.bin`, starting a new shard once one holds `shard_tokens`."""

    def __init__(self, dir: Path, dtype: np.dtype, shard_tokens: int):
        self.dir = Path(dir)
        self.dtype = np.dtype(dtype)
        self.shard_tokens = int(shard_tokens)
        self.shards: list[str] = []
        self.tokens = 0
        self.documents = 0
        self._handle = None
        self._starts: list[np.ndarray] = []
        self._size = 0

    def _open_next(self) -> None:
        self._close_current()
        self.dir.mkdir(parents=True, exist_ok=True)
        name = shard_name(len(self.shards))
        self.shards.append(name)
        self._handle = open(self.dir / f"{name}.bin", "wb")  # noqa: SIM115 - open across write() calls, closed in close()
        self._starts, self._size = [], 0

    def _close_current(self) -> None:
        if self._handle is None:
            return
        self._handle.close()
        starts = np.concatenate(self._starts) if self._starts else np.zeros(0, dtype=np.int64)
        np.save(self.dir / f"{self.shards[-1]}.docs.npy", starts.astype(np.int64), allow_pickle=False)
        self._handle = None

    def write(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents given as one flat id array and the length of each document."""
        lengths = np.asarray(lengths, dtype=np.int64)
        flat = np.asarray(flat).astype(self.dtype, copy=False)
        ends = np.cumsum(lengths)
        doc, pos = 0, 0
        while doc < len(lengths):
            if self._handle is None or self._size >= self.shard_tokens:
                self._open_next()
            # Documents whose start still falls below shard_tokens go into this shard.
            starts = self._size + (ends[doc:] - lengths[doc:] - pos)
            take = max(1, int(np.searchsorted(starts, self.shard_tokens, side="left")))
            end_pos = int(ends[doc + take - 1])
            self._starts.append(starts[:take].astype(np.int64))
            self._handle.write(flat[pos:end_pos].tobytes())
            self._size += end_pos - pos
            self.tokens += end_pos - pos
            self.documents += take
            doc, pos = doc + take, end_pos

    def close(self) -> None:
        self._close_current()

    def state(self) -> tuple[dict, np.ndarray]:
        """Where the writer stands, everything so far flushed to disk (an interrupted tokenize resumes from it)."""
        open_bytes = 0
        if self._handle is not None:
            self._handle.flush()
            open_bytes = self._handle.tell()
        starts = np.concatenate(self._starts) if self._starts else np.zeros(0, dtype=np.int64)
        meta = {"shards": list(self.shards), "tokens": self.tokens, "documents": self.documents, "size": self._size,
                "open": self._handle is not None, "open_bytes": open_bytes}
        return meta, starts

    def restore(self, meta: dict, starts: np.ndarray) -> None:
        """Continue where `state` was taken: later files an interrupted run wrote are dropped, the open
        shard is cut back to its recorded length and appended to."""
        self.shards, self.tokens, self.documents = list(meta["shards"]), meta["tokens"], meta["documents"]
        names = set(self.shards)
        if self.dir.is_dir():
            for path in self.dir.iterdir():
                if path.name.split(".")[0] not in names:
                    path.unlink()
        if meta["open"]:
            path = self.dir / f"{self.shards[-1]}.bin"
            (self.dir / f"{self.shards[-1]}.docs.npy").unlink(missing_ok=True)
            with open(path, "r+b") as raw:
                raw.truncate(meta["open_bytes"])
            self._handle = open(path, "ab")  # noqa: SIM115 - open across write() calls, closed in close()
            self._starts, self._size = [starts.astype(np.int64)], meta["size"]


def _as_tokens(artifact_or_path: artifacts.Artifact | Path | str) -> artifacts.Artifact:
    if isinstance(artifact_or_path, artifacts.Artifact):
        if artifact_or_path.kind != "tokens":
            raise UserError(f"expected a tokens artifact, got {artifact_or_path.kind} at {artifact_or_path.path}")
        return artifact_or_path
    return artifacts.load(artifact_or_path, kind="tokens")


def _shard_names(art: artifacts.Artifact, split: str) -> list[str]:
    return sorted(n for n in art.manifest.files if n.startswith(f"{split}/") and n.endswith(".bin"))


def has_split(artifact_or_path: artifacts.Artifact | Path | str, split: str) -> bool:
    """Whether a tokens artifact holds `split` at all (one made with --val-fraction 0 has no val)."""
    return bool(_shard_names(_as_tokens(artifact_or_path), split))


@functools.lru_cache(maxsize=8)
def _tokenizer_ids(path: str, fingerprint: str) -> tuple[int, int, int]:
    """(vocabulary, eos, bos) of a tokens artifact's tokenizer copy: read once per artifact, not
    per split opened."""
    from llmkit.data.tokenizer import load_tokenizer

    tok = load_tokenizer(Path(path) / "tokenizer")
    return tok.vocab_size, tok.eos_id, tok.bos_id


def document_start(tokens: artifacts.Artifact) -> str:
    """"bos" or "eos": the token every document of a tokens artifact follows (`text <|eos|>` by
    default, `<|bos|> text <|eos|>` with --add-bos): what a model trained on it saw first."""
    add_bos = tokens.config.get("add_bos", tokens.stats.get("add_bos", True))  # (stats: artifacts of old libraries)
    return "bos" if add_bos else "eos"


class TokenShards:
    """Memory-mapped view of one split of a tokens artifact, as if its shards were one array."""

    def __init__(self, paths: Sequence[Path], dtype: np.dtype, vocab_size: int, eos_id: int, bos_id: int, split: str):
        self.split = split
        self.dtype = np.dtype(dtype)
        self.vocab_size = int(vocab_size)
        self.eos_id = int(eos_id)
        self.bos_id = int(bos_id)
        self.paths = [Path(p) for p in paths]
        self._arrays = [np.memmap(p, dtype=self.dtype, mode="r") for p in self.paths]
        sizes = [len(a) for a in self._arrays]
        # _bounds[i] is the global offset of shard i's first token; _bounds[-1] the total.
        self._bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.num_tokens = int(self._bounds[-1])

    def __getstate__(self) -> dict:
        # Sent to a DataLoader worker as paths, never as a copy of the mapped data.
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._arrays = [np.memmap(p, dtype=self.dtype, mode="r") for p in self.paths]

    @classmethod
    def open(cls, artifact_or_path: artifacts.Artifact | Path | str, split: str = "train") -> TokenShards:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        art = _as_tokens(artifact_or_path)
        stats = art.stats
        names = _shard_names(art, split)
        if not names:
            raise UserError(
                f"tokens artifact {art.path} has no {split} split; "
                + ("rerun llmkit tokenize" if split != "val" else "rerun llmkit tokenize with --val-fraction above 0"
                   if not art.config.get("val_fraction") else "its documents were too short to give one; tokenize more text")
            )
        for key in ("dtype", "vocab_size", "eos_id", "bos_id"):
            if key not in stats:
                raise UserError(f"tokens artifact {art.path} lacks stats[{key!r}]; rebuild it with llmkit tokenize")
        vocab = stats["vocab_size"]
        if not isinstance(vocab, int) or vocab < 1 or _stored_dtype(vocab, str(stats["dtype"])) is None:
            # stats are not hashed: a dtype that disagrees with the vocabulary would misread every token
            raise UserError(f"tokens artifact {art.path}: stats say dtype {stats['dtype']!r} for a vocabulary of {vocab!r}, "
                            f"which llmkit stores as {token_dtype(vocab if isinstance(vocab, int) else 0).name}; rebuild it")
        if "tokenizer/tokenizer.json" in art.manifest.files:
            # stats are not hashed; the tokenizer copy is: the ids a stage reads must be the tokenizer's
            said, real = (vocab, stats["eos_id"], stats["bos_id"]), _tokenizer_ids(str(art.path), art.fingerprint)
            if said != real:
                raise UserError(f"tokens artifact {art.path}: its stats say vocabulary, eos and bos {said}, its tokenizer "
                                f"{real}; the manifest was edited, rebuild it with llmkit tokenize")
        dtype = _stored_dtype(vocab, str(stats["dtype"]))
        paths = [art.file(n) for n in names]
        for path in paths:
            if path.stat().st_size % dtype.itemsize:
                raise UserError(f"{path} holds {path.stat().st_size} bytes, not whole {dtype.name} tokens; rebuild the tokens artifact")
        return cls(paths, dtype, vocab, stats["eos_id"], stats["bos_id"], split)

    @property
    def num_shards(self) -> int:
        return len(self._arrays)

    def __len__(self) -> int:
        return self.num_tokens

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64, read across shard boundaries."""
        start, length = int(start), int(length)
        if start < 0 or length < 0 or start + length > self.num_tokens:
            raise IndexError(f"window [{start}, {start + length}) outside {self.num_tokens} tokens")
        out = np.empty(length, dtype=np.int64)
        shard = int(np.searchsorted(self._bounds, start, side="right")) - 1
        filled = 0
        while filled < length:
            local = start + filled - int(self._bounds[shard])
            piece = self._arrays[shard][local : local + (length - filled)]
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
            shard += 1
        return out

    def doc_starts(self, shard: int) -> np.ndarray:
        """Where each document of a shard starts: offsets into it, from 0, never decreasing."""
        path = self.paths[shard]
        docs = path.with_name(path.name[: -len(".bin")] + ".docs.npy")
        try:
            starts = np.load(docs, allow_pickle=False)
        except PermissionError:
            raise
        except (OSError, ValueError, EOFError):  # (numpy's own words advise loading it unsafely: not quoted)
            starts = None
        if (starts is None or starts.ndim != 1 or starts.dtype.kind not in "iu"
                or len(starts) and (starts[0] != 0 or starts[-1] > len(self._arrays[shard]) or np.any(np.diff(starts) < 0))):
            raise UserError(f"{docs} is damaged (not the increasing document offsets of its shard); llmkit verify on the "
                            "tokens artifact names every change: tokenize the corpus again")
        return starts

    @property
    def num_documents(self) -> int:
        return sum(len(self.doc_starts(i)) for i in range(self.num_shards))

    def iter_documents(self) -> Iterator[np.ndarray]:
        """Each document's tokens as stored (`[<|bos|>] text tokens <|eos|>`), int64, in order."""
        for index, array in enumerate(self._arrays):
            starts = self.doc_starts(index)
            ends = np.append(starts[1:], len(array))
            for a, b in zip(starts, ends):
                yield np.asarray(array[a:b], dtype=np.int64)


class WindowSampler:
    """Deterministic, resumable windows of `seq_len + 1` tokens: sample k depends only on (seed, k).

    An epoch covers the data once in windows that start on a grid `shift + i * seq_len`; each
    epoch draws a fresh permutation of the grid and a fresh shift in [0, seq_len) from
    `(seed, epoch)`, so every epoch cuts the text at other places, anywhere in a window. The grid
    leaves one window's tokens out for that: until 2026-12-05 it left out only the remainder of
    the split, and the shift moved within it (none where the split was a whole number of windows,
    which then gave every epoch the same windows).
    """

    GRID = 2  # the version of how windows are cut (a resumed run must continue the one it began)

    def __init__(self, shards: TokenShards, seq_len: int, seed: int = 0, *, shifting: bool = True):
        """`shifting` False: a grid from the split's first token, every whole window in it (validation's,
        which scores the same windows every time and needs no shift)."""
        seq_len = int(seq_len)
        if seq_len < 1:
            raise UserError(f"context length must be at least 1, got {seq_len}")
        if shards.num_tokens < seq_len + 1:
            raise UserError(
                f"the {shards.split} split has {shards.num_tokens} tokens, fewer than one sequence of {seq_len} + 1; "
                "lower --seq-len (or the --context-length it defaults to), or give more data"
            )
        self.shards = shards
        self.seq_len = seq_len
        self.seed = int(seed)
        if shifting:  # one window's tokens kept beside the grid (but the first window), so that it may shift by any offset
            self.windows_per_epoch = max(1, (shards.num_tokens - 1 - (seq_len - 1)) // seq_len)
            self._slack = min(seq_len - 1, (shards.num_tokens - 1) - self.windows_per_epoch * seq_len)
        else:
            self.windows_per_epoch, self._slack = (shards.num_tokens - 1) // seq_len, 0
        self._epochs: dict[int, tuple[np.ndarray, int]] = {}

    def __len__(self) -> int:
        return self.windows_per_epoch

    def _epoch(self, epoch: int) -> tuple[np.ndarray, int]:
        if epoch not in self._epochs:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            order = rng.permutation(self.windows_per_epoch)
            shift = int(rng.integers(0, self._slack + 1))
            if len(self._epochs) >= 2:  # consecutive batches touch at most two epochs
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = (order, shift)
        return self._epochs[epoch]

    def start_of(self, index: int) -> int:
        """The token offset where sample `index` begins."""
        if index < 0:
            raise IndexError(f"sample index must be >= 0, got {index}")
        epoch, position = divmod(int(index), self.windows_per_epoch)
        order, shift = self._epoch(epoch)
        return shift + int(order[position]) * self.seq_len

    def windows(self, indices: Sequence[int]) -> np.ndarray:
        """int64 [len(indices), seq_len + 1]."""
        out = np.empty((len(indices), self.seq_len + 1), dtype=np.int64)
        for row, index in enumerate(indices):
            out[row] = self.shards.window(self.start_of(index), self.seq_len + 1)
        return out

    def get(self, indices: Sequence[int]) -> tuple[Any, Any]:
        """(x, y) int64 torch tensors [len(indices), seq_len], y being x shifted left by one token."""
        import torch

        batch = torch.from_numpy(self.windows(indices))
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
