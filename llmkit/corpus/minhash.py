"""MinHash signatures over word n-grams and LSH band keys, computed a batch of documents at a time.

Why not datasketch's `MinHash`: it hashes every shingle with SHA-1 in a Python loop and needs
the shingles as bytes, which made it the slowest step of the whole stage (docs/clean.md has the
measurement). Here the work is array arithmetic over every shingle of a batch at once:

- words: xxh64 of each word's UTF-8 bytes, computed by a NumPy implementation of xxh64 over all
  the words of the batch (grouped by byte length), not one `xxhash` call per word;
- n-grams: combined from the word hashes with per-position multipliers (wrapping mod 2^64);
- permutations: the multiply-shift family h(x) = (a*x + b mod 2^64) >> 32 (Dietzfelbinger et al.
  1997), all `num_perm` of them at once, reduced to each document's minimum with
  `minimum.reduceat` over the documents' runs of shingles. The shift is monotone, so it is
  applied once to the minimum rather than to every value;
- band keys: xxh64 (seeded with the band number) of each band's rows as little-endian uint32.

a, b and the position multipliers are drawn from the recorded seed, and xxh64 is a fixed
function, so signatures and keys are the same in every process and on every machine. The result
is bit-identical to hashing word by word with the `xxhash` package (tests check it against the
package). The choice of bands x rows for a threshold is datasketch's (`_optimal_param`,
minimising false positives + false negatives).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llmkit.corpus.words import shingle_tokens

_CHUNK = 8192  # shingles per matrix product: bounds memory at _CHUNK x num_perm x 8 bytes

_U64 = np.uint64
_P1 = _U64(0x9E3779B185EBCA87)
_P2 = _U64(0xC2B2AE3D27D4EB4F)
_P3 = _U64(0x165667B19E3779F9)
_P4 = _U64(0x85EBCA77C2B2AE63)
_P5 = _U64(0x27D4EB2F165667C5)
_MAX = np.iinfo(np.uint64).max


def optimal_bands_rows(threshold: float, num_perm: int) -> tuple[int, int]:
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << _U64(r)) | (x >> _U64(64 - r))


def _round(acc: np.ndarray, lane: np.ndarray) -> np.ndarray:
    acc = acc + lane * _P2
    return _rotl(acc, 31) * _P1


def xxh64_rows(data: np.ndarray, seed: np.ndarray | int = 0) -> np.ndarray:
    """xxh64 of every row of a uint8 matrix [n, length] (all rows the same length): uint64 [n].

    The same values as `xxhash.xxh64_intdigest(row.tobytes(), seed)`, for every length, as array
    operations over the rows (XXH64 spec, github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md).
    """
    n, length = data.shape
    seed = np.broadcast_to(np.asarray(seed, dtype=np.uint64), (n,))
    padded = np.zeros((n, (length + 7) // 8 * 8), dtype=np.uint8)
    padded[:, :length] = data
    lanes = padded.view("<u8")  # [n, ceil(length / 8)], little-endian as the spec reads them
    with np.errstate(over="ignore"):
        lane = 0
        if length >= 32:
            v1 = seed + _P1 + _P2
            v2 = seed + _P2
            v3 = seed.copy()
            v4 = seed - _P1
            while (lane + 4) * 8 <= length:
                v1 = _round(v1, lanes[:, lane])
                v2 = _round(v2, lanes[:, lane + 1])
                v3 = _round(v3, lanes[:, lane + 2])
                v4 = _round(v4, lanes[:, lane + 3])
                lane += 4
            h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
            for v in (v1, v2, v3, v4):
                h = (h ^ _round(np.zeros_like(v), v)) * _P1 + _P4
        else:
            h = seed + _P5
        h = h + _U64(length)
        while (lane + 1) * 8 <= length:
            h = _rotl(h ^ _round(np.zeros_like(h), lanes[:, lane]), 27) * _P1 + _P4
            lane += 1
        offset = lane * 8
        if offset + 4 <= length:
            h = _rotl(h ^ ((lanes[:, lane] & _U64(0xFFFFFFFF)) * _P1), 23) * _P2 + _P3
            offset += 4
        for column in range(offset, length):
            h = _rotl(h ^ (data[:, column].astype(np.uint64) * _P5), 11) * _P1
        h = h ^ (h >> _U64(33))
        h = h * _P2
        h = h ^ (h >> _U64(29))
        h = h * _P3
        h = h ^ (h >> _U64(32))
    return h


def _spans(buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of the runs of non-space bytes of a uint8 buffer."""
    word = np.empty(len(buffer) + 2, dtype=bool)
    word[0] = word[-1] = False
    np.not_equal(buffer, 32, out=word[1:-1])
    edges = np.flatnonzero(word[1:] != word[:-1])  # alternately a run's start and its end
    return edges[0::2], edges[1::2] - edges[0::2]


def _hash_spans(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """xxh64 of buffer[start : start + length] for every span, one vectorised pass per distinct length."""
    out = np.empty(len(starts), dtype=np.uint64)
    small = lengths.max(initial=0) < 1 << 16
    order = np.argsort(lengths.astype(np.uint16) if small else lengths, kind="stable")  # uint16: a radix sort
    bounds = np.flatnonzero(np.diff(lengths[order])) + 1
    for group in np.split(order, bounds):
        if len(group):
            length = int(lengths[group[0]])
            # a few million bytes at a time: the gather's int64 index is 8 bytes per byte gathered
            # (a 30 MB document whole, one group, took 240 MB for it)
            step = max(1, (4 << 20) // max(length, 1))
            for rows in (group[i : i + step] for i in range(0, len(group), step)):
                out[rows] = xxh64_rows(buffer[starts[rows, None] + np.arange(length)])
    return out


# ASCII text's shingle words (runs of [A-Za-z0-9], lower-cased: what `shingle_tokens` finds in ASCII)
# by one bytes.translate: letters lower-cased, digits kept, every other byte a space.
_ASCII_WORDS = bytes(
    c + 32 if 65 <= c <= 90 else c if (97 <= c <= 122 or 48 <= c <= 57) else 32 for c in range(256)
)


class MinHasher:
    def __init__(self, num_perm: int, ngram: int, bands: int, rows: int, seed: int):
        rng = np.random.default_rng([seed, 0x6D696E68])  # fixed stream name: "minh"
        self.a = rng.integers(1, 2**64 - 1, size=num_perm, dtype=np.uint64, endpoint=True) | np.uint64(1)
        self.b = rng.integers(0, 2**64 - 1, size=num_perm, dtype=np.uint64, endpoint=True)
        # Per-position multipliers make "a b c" and "c b a" different shingles.
        self.position = rng.integers(1, 2**64 - 1, size=ngram, dtype=np.uint64, endpoint=True) | np.uint64(1)
        self.ngram = ngram
        self.bands = bands
        self.rows = rows

    def batch_shingles(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The 64-bit hashes of the word n-grams of every text (one shingle for a text shorter than n),
        concatenated text after text, and each text's shingle count. Not de-duplicated: the minimum
        over a multiset is the minimum over its set."""
        # Every text's words as space-separated bytes, texts joined by a space: one buffer per batch.
        parts = [
            text.encode("ascii").translate(_ASCII_WORDS) if text.isascii() else " ".join(shingle_tokens(text)).encode("utf-8")
            for text in texts
        ]
        sizes = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts)) + 1
        buffer = np.frombuffer(b" ".join(parts), dtype=np.uint8)
        starts, lengths = _spans(buffer)
        owner = np.searchsorted(np.cumsum(sizes), starts, side="right")  # text of each word
        counts = np.bincount(owner, minlength=len(texts))
        words = _hash_spans(buffer, starts, lengths)
        n = np.minimum(counts, self.ngram)
        shingle_counts = np.where(counts > 0, counts - n + 1, 0)
        total = int(shingle_counts.sum())
        if total == 0:
            return np.empty(0, dtype=np.uint64), shingle_counts
        word_start = np.cumsum(counts) - counts
        shingle_start = np.cumsum(shingle_counts) - shingle_counts
        doc = np.repeat(np.arange(len(texts)), shingle_counts)
        first_word = word_start[doc] + (np.arange(total) - shingle_start[doc])
        words = np.concatenate([words, np.zeros(self.ngram, dtype=np.uint64)])  # windows of short texts run past the end
        hashes = np.zeros(total, dtype=np.uint64)
        short = n[doc] if (n < self.ngram).any() else None
        for k in range(self.ngram):
            term = words[first_word + k] * self.position[k]  # wraps mod 2^64, as intended
            if short is not None:
                term[short <= k] = 0
            hashes += term
        return hashes, shingle_counts

    def batch_signatures(self, shingles: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """uint32 [len(counts), num_perm]: each text's minimum of each permutation over its shingles
        (a text without shingles gets all ones)."""
        docs = len(counts)
        # Transposed ([num_perm, shingles]) so that reduceat runs along contiguous rows: ~3x faster.
        best = np.full((len(self.a), docs), _MAX, dtype=np.uint64)
        starts = np.cumsum(counts) - counts
        owner = np.repeat(np.arange(docs), counts)  # text of each shingle
        a, b = self.a[:, None], self.b[:, None]
        permuted = np.empty((len(self.a), min(_CHUNK, len(shingles))), dtype=np.uint64)
        for start in range(0, len(shingles), _CHUNK):
            block = shingles[start : start + _CHUNK]
            out = permuted[:, : len(block)]
            np.multiply(a, block, out=out)
            np.add(out, b, out=out)
            present = np.arange(owner[start], owner[start + len(block) - 1] + 1)
            present = present[counts[present] > 0]
            cuts = np.maximum(starts[present] - start, 0)
            best[:, present] = np.minimum(best[:, present], np.minimum.reduceat(out, cuts, axis=1))
        return (best.T >> np.uint64(32)).astype(np.uint32)

    def batch_band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """uint64 [len(signatures), bands]: xxh64 of each band's rows (little-endian uint32), seeded with the band."""
        docs = len(signatures)
        used = np.ascontiguousarray(signatures[:, : self.bands * self.rows], dtype="<u4")
        rows = used.reshape(docs * self.bands, self.rows).view(np.uint8)
        seeds = np.tile(np.arange(self.bands, dtype=np.uint64), docs)
        return xxh64_rows(rows, seeds).reshape(docs, self.bands)

    def batch_keys(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Band keys uint64 [len(texts), bands] and whether each text has any (a text without words has none)."""
        shingles, counts = self.batch_shingles(texts)
        has = counts > 0
        keys = np.zeros((len(texts), self.bands), dtype=np.uint64)
        if has.any():
            keys[has] = self.batch_band_keys(self.batch_signatures(shingles, counts)[has])
        return keys, has

    # One text at a time (tests, `jaccard`): the batch functions on a batch of one.
    def shingles(self, text: str) -> np.ndarray:
        """Distinct 64-bit hashes of the word n-grams of text (one shingle if it is shorter)."""
        return np.unique(self.batch_shingles([text])[0])

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """uint32 [num_perm]: the minimum of each permutation over the shingles."""
        return self.batch_signatures(shingles, np.array([len(shingles)]))[0]

    def band_keys(self, signature: np.ndarray) -> list[int]:
        """One 64-bit key per band; documents sharing any key are near-duplicate candidates."""
        return self.batch_band_keys(signature[None, :]).ravel().tolist()

    def keys_for(self, text: str) -> list[int] | None:
        keys, has = self.batch_keys([text])
        return keys[0].tolist() if has[0] else None


def jaccard(a: str, b: str, ngram: int = 5) -> float:
    """Exact Jaccard similarity of two texts' shingle sets (for tests and threshold tuning)."""
    hasher = MinHasher(1, ngram, 1, 1, 0)
    sa, sb = set(hasher.shingles(a).tolist()), set(hasher.shingles(b).tolist())
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0
