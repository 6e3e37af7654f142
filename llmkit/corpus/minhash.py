"""MinHash signatures over word n-grams, vectorised with NumPy, and LSH band keys.

Why not datasketch's `MinHash`: it hashes every shingle with SHA-1 in a Python loop and needs
the shingles as bytes, which made it the slowest step of the whole stage (docs/clean.md has the
measurement). Here each word is hashed once (xxh64), n-gram hashes are combined from the word
hashes with array arithmetic, and all permutations are applied at once as one matrix
operation. The permutations are the multiply-shift family h(x) = (a*x + b mod 2^64) >> 32
(Dietzfelbinger et al. 1997) with a, b drawn from the recorded seed, so signatures are the
same in every process and on every machine. The choice of bands x rows for a threshold is
datasketch's (`_optimal_param`, minimising false positives + false negatives).
"""

from __future__ import annotations

import numpy as np
import xxhash

from llmkit.corpus.words import shingle_tokens

_CHUNK = 4096  # shingles per matrix product: bounds memory at _CHUNK x num_perm x 8 bytes


def optimal_bands_rows(threshold: float, num_perm: int) -> tuple[int, int]:
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


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

    def shingles(self, text: str) -> np.ndarray:
        """Distinct 64-bit hashes of the word n-grams of text (one shingle if it is shorter)."""
        tokens = shingle_tokens(text)
        if not tokens:
            return np.empty(0, dtype=np.uint64)
        words = np.fromiter((xxhash.xxh64_intdigest(t.encode()) for t in tokens), dtype=np.uint64, count=len(tokens))
        n = min(self.ngram, len(words))
        count = len(words) - n + 1
        hashes = np.zeros(count, dtype=np.uint64)
        for k in range(n):
            hashes += words[k : k + count] * self.position[k]  # wraps mod 2^64, as intended
        return np.unique(hashes)

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """uint32 [num_perm]: the minimum of each permutation over the shingles."""
        best = np.full(len(self.a), np.iinfo(np.uint32).max, dtype=np.uint32)
        for start in range(0, len(shingles), _CHUNK):
            block = shingles[start : start + _CHUNK, None]
            permuted = ((block * self.a + self.b) >> np.uint64(32)).astype(np.uint32)
            np.minimum(best, permuted.min(axis=0), out=best)
        return best

    def band_keys(self, signature: np.ndarray) -> list[int]:
        """One 64-bit key per band; documents sharing any key are near-duplicate candidates."""
        used = signature[: self.bands * self.rows].reshape(self.bands, self.rows)
        return [xxhash.xxh64_intdigest(row.tobytes(), seed=band) for band, row in enumerate(used)]

    def keys_for(self, text: str) -> list[int] | None:
        shingles = self.shingles(text)
        if len(shingles) == 0:
            return None
        return self.band_keys(self.signature(shingles))


def jaccard(a: str, b: str, ngram: int = 5) -> float:
    """Exact Jaccard similarity of two texts' shingle sets (for tests and threshold tuning)."""
    hasher = MinHasher(1, ngram, 1, 1, 0)
    sa, sb = set(hasher.shingles(a).tolist()), set(hasher.shingles(b).tolist())
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0
