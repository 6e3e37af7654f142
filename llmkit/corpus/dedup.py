"""De-duplication in input order, a batch at a time: exact (hash of the cleaned text) and near
(MinHash LSH band keys), the first document of a cluster kept.

Near-duplicate clusters are a union-find over band-key collisions, run in input order: the index
maps every band key seen (of kept documents and of removed near duplicates alike) to the root of
its cluster, the cluster's first and only kept document — the union-find's parent pointers,
fully compressed. A document that shares a key with any earlier document joins that document's
cluster (the first band, in band order, that has a match decides), so a chain of near copies
A ~ B ~ C is one cluster even where C is not similar enough to A itself; its own new keys then
point at the same root. A document with no match starts a cluster and is kept. Documents are
written in order, so two clusters a later document links are not merged after the fact: both
roots were already written (an offline pass would keep one; a streaming one cannot).

The index is a `BandIndex`: one open-addressing hash table per band held in two NumPy arrays
(64-bit keys, 32-bit root ordinals) instead of a Python dict per band; a key costs 12 / load
bytes (~350 bytes per document at 14 bands, against ~1.2 KB for the dicts' entries and int
objects), and a batch's keys are looked up and inserted with array operations. The decisions are
exactly those of the same rule run one document at a time with a dict per band (tested).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

import numpy as np

_EMPTY = -1
_MAX_LOAD = 0.5  # grow (double) above this share of used slots: linear probes stay short


class BandIndex:
    """band key -> ordinal of the kept document that has it, per band (keys of kept documents are distinct per band)."""

    def __init__(self, bands: int, capacity: int = 1 << 12):
        self.bands = bands
        self._allocate(capacity)
        self.sizes = np.zeros(bands, dtype=np.int64)  # keys in each band's table

    def _allocate(self, capacity: int) -> None:
        self.capacity = capacity
        self.keys = np.zeros(self.bands * capacity, dtype=np.uint64)
        self.ordinals = np.full(self.bands * capacity, _EMPTY, dtype=np.int32)

    def _home(self, keys: np.ndarray) -> np.ndarray:
        """Flat slot where each key of a [n, bands] array starts probing (band b's table starts at b x capacity)."""
        band = np.arange(self.bands, dtype=np.int64) * self.capacity
        return (keys & np.uint64(self.capacity - 1)).astype(np.int64) + band

    def _next(self, slots: np.ndarray) -> np.ndarray:
        """The next slot of the same band's table, wrapping (capacity is a power of two)."""
        mask = self.capacity - 1
        return (slots & ~mask) | ((slots + 1) & mask)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """int64 [n, bands]: the ordinal stored for each key, or -1."""
        flat_keys = keys.ravel()
        found = np.full(flat_keys.shape, _EMPTY, dtype=np.int64)
        slots = self._home(keys).ravel()
        pending = np.arange(len(flat_keys))
        while len(pending):
            ordinals = self.ordinals[slots]
            hit = (ordinals != _EMPTY) & (self.keys[slots] == flat_keys[pending])
            found[pending[hit]] = ordinals[hit]
            go_on = (ordinals != _EMPTY) & ~hit
            pending, slots = pending[go_on], self._next(slots[go_on])
        return found.reshape(keys.shape)

    def insert(self, keys: np.ndarray, bands: np.ndarray, ordinals: np.ndarray) -> None:
        """Add keys (each with its band and root ordinal), none of them already in its band's table."""
        if len(keys) == 0:
            return
        sizes = self.sizes + np.bincount(bands, minlength=self.bands)
        if sizes.max() > _MAX_LOAD * self.capacity:
            capacity = self.capacity
            while sizes.max() > _MAX_LOAD * capacity:
                capacity *= 2
            self._grow(capacity)
        if ordinals.max() >= np.iinfo(self.ordinals.dtype).max:
            self.ordinals = self.ordinals.astype(np.int64)
        slots = (keys & np.uint64(self.capacity - 1)).astype(np.int64) + bands.astype(np.int64) * self.capacity
        self._place(slots, keys, ordinals)
        self.sizes = sizes

    def _place(self, slots: np.ndarray, keys: np.ndarray, ordinals: np.ndarray) -> None:
        while len(slots):
            free = np.flatnonzero(self.ordinals[slots] == _EMPTY)
            # Of several keys aiming at one free slot, the last written stays (keys in one band's
            # table are distinct, so the key read back tells which); the others probe on.
            self.keys[slots[free]] = keys[free]
            taken = free[self.keys[slots[free]] == keys[free]]
            self.ordinals[slots[taken]] = ordinals[taken]
            rest = np.ones(len(slots), dtype=bool)
            rest[taken] = False
            slots, keys, ordinals = self._next(slots[rest]), keys[rest], ordinals[rest]

    def _grow(self, capacity: int) -> None:
        old_capacity, old_keys, old_ordinals = self.capacity, self.keys, self.ordinals
        self._allocate(capacity)
        self.ordinals = self.ordinals.astype(old_ordinals.dtype, copy=False)
        for band in range(self.bands):  # one band at a time: the temporaries stay 1/bands of the table
            segment = slice(band * old_capacity, (band + 1) * old_capacity)
            used = np.flatnonzero(old_ordinals[segment] != _EMPTY)
            keys = old_keys[segment][used]
            slots = (keys & np.uint64(capacity - 1)).astype(np.int64) + band * capacity
            self._place(slots, keys, old_ordinals[segment][used])

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.ordinals.nbytes


@dataclass
class ProcessedBatch:
    """A batch's documents, with the band keys of those that have any (rows in document order)."""

    docs: list  # list[Processed]
    band_keys: Optional[np.ndarray] = None  # uint64 [documents, bands]; None without near dedup
    has_keys: Optional[np.ndarray] = None  # bool [documents]


class Deduplicator:
    """Exact (hash of the cleaned text) and near (MinHash LSH bands) duplicates, first one kept."""

    def __init__(self, bands: int):
        # (exact dedup is on or off upstream: a document without an exact_key is never matched)
        self.exact_roots: dict[bytes, int] = {}  # text hash -> ordinal of the kept document
        self.bands = bands
        self.index = BandIndex(bands) if bands else None
        self.kept = 0  # ordinal of the next kept document
        self.cluster_sizes: Counter[int] = Counter()  # kept ordinal -> duplicates removed
        # what changed since the last changes(): exact (key, root), duplicates' roots, index (keys, bands, roots)
        self._new_exact: list[tuple[bytes, int]] = []
        self._new_duplicates: list[int] = []
        self._new_index: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def changes(self) -> dict[str, np.ndarray]:
        """What entered the index since the last call, as rows to append (an interrupted clean resumes
        by replaying them all: llmkit.resume's append mode), so a marker costs what changed, not the
        whole index again."""
        exact = self._new_exact
        index = self._new_index
        arrays = {
            # 16-byte digests as uint8 rows (NumPy's bytes dtype would drop trailing zero bytes)
            "exact_keys": np.frombuffer(b"".join(k for k, _ in exact), dtype=np.uint8).reshape(-1, 16),
            "exact_roots": np.array([root for _, root in exact], dtype=np.int64),
            "duplicate_of": np.array(self._new_duplicates, dtype=np.int64),
            "index_keys": np.concatenate([k for k, _, _ in index]) if index else np.zeros(0, dtype=np.uint64),
            "index_bands": np.concatenate([b for _, b, _ in index]) if index else np.zeros(0, dtype=np.int64),
            "index_roots": np.concatenate([r for _, _, r in index]) if index else np.zeros(0, dtype=np.int64),
        }
        self._new_exact, self._new_duplicates, self._new_index = [], [], []
        return arrays

    def replay(self, changes: dict[str, np.ndarray], kept: int) -> None:
        """Rebuild the index from every `changes()` of the interrupted run, concatenated, and the count
        of documents it had kept. (The hash tables' slots may differ from the run's; what they map does not.)"""
        self.exact_roots = dict(zip((row.tobytes() for row in changes["exact_keys"]), changes["exact_roots"].tolist()))
        self.cluster_sizes = Counter(changes["duplicate_of"].tolist())
        self.kept = kept
        if self.index is not None and len(changes["index_keys"]):
            self.index.insert(changes["index_keys"], changes["index_bands"], changes["index_roots"])

    def decide(self, batch: ProcessedBatch) -> list[tuple[Optional[str], Optional[int]]]:
        """(reason, ordinal of the kept document it duplicates) for every document of the batch, in order;
        (None, None) for a kept one. The band keys of kept documents and near duplicates enter the index."""
        docs = batch.docs
        decisions: list[tuple[Optional[str], Optional[int]]] = []
        near = self.index is not None and batch.band_keys is not None
        if near:
            rows = np.flatnonzero(batch.has_keys)
            row_of = np.full(len(docs), -1, dtype=np.int64)
            row_of[rows] = np.arange(len(rows))
            keys = batch.band_keys[rows]
            plan = _BatchPlan(keys, self.index.lookup(keys), self.bands)
            row_list = row_of.tolist()
            new_rows: list[int] = []  # (row, band) pairs whose key enters the index, and its root
            new_bands: list[int] = []
            new_roots: list[int] = []
            root_in_group: list[dict[int, int]] = [{} for _ in range(self.bands)]
        for j, doc in enumerate(docs):
            if doc.reason:
                decisions.append((doc.reason, None))
                continue
            if doc.exact_key and doc.exact_key in self.exact_roots:
                of = self.exact_roots[doc.exact_key]
                self.cluster_sizes[of] += 1
                self._new_duplicates.append(of)
                decisions.append(("exact_duplicate", of))
                continue
            row = row_list[j] if near else -1
            of = plan.duplicate_of(row, root_in_group) if row >= 0 else None
            if of is None:
                root = self.kept
                self.kept += 1
                decisions.append((None, None))
            else:
                root = of
                self.cluster_sizes[of] += 1
                self._new_duplicates.append(of)
                decisions.append(("near_duplicate", of))
            if doc.exact_key:  # (a near duplicate's too: a later copy of it is an exact duplicate of its root)
                self.exact_roots[doc.exact_key] = root
                self._new_exact.append((doc.exact_key, root))
            if row >= 0:
                bands = plan.join(row, root, root_in_group)
                new_rows += [row] * len(bands)
                new_bands += bands
                new_roots += [root] * len(bands)
        if near and new_rows:
            rows_, bands_ = np.array(new_rows, dtype=np.int64), np.array(new_bands, dtype=np.int64)
            inserted = (keys[rows_, bands_], bands_, np.array(new_roots, dtype=np.int64))
            self.index.insert(*inserted)
            self._new_index.append(inserted)
        return decisions


class _BatchPlan:
    """What the index already says about a batch's keys, and which rows share a key with an earlier row
    of the batch (those few are resolved one by one, as the earlier row may or may not be kept)."""

    def __init__(self, keys: np.ndarray, old: np.ndarray, bands: int):
        n = len(keys)
        hit = old >= 0
        first_old = np.where(hit.any(axis=1), hit.argmax(axis=1), bands)
        order = np.argsort(keys, axis=0, kind="stable")  # per band; equal keys in row order
        ranked = np.take_along_axis(keys, order, axis=0)
        same = ranked[1:] == ranked[:-1]  # [n - 1, bands]: sorted row i + 1 has sorted row i's key
        after_first = np.zeros((n, bands), dtype=bool)
        after_first[1:] = same
        shared = after_first.copy()  # in a group of several equal keys
        shared[:-1] |= same
        group_sorted = np.cumsum(~after_first, axis=0)
        self.earlier = np.empty_like(after_first)
        np.put_along_axis(self.earlier, order, after_first, axis=0)
        self.shared = np.empty_like(shared)
        np.put_along_axis(self.shared, order, shared, axis=0)
        self.group = np.empty_like(group_sorted)
        np.put_along_axis(self.group, order, group_sorted, axis=0)
        before_old = np.arange(bands) < first_old[:, None]
        self.resolve = (self.earlier & before_old).any(axis=1).tolist()
        self.any_shared = self.shared.any(axis=1).tolist()
        self.any_old = hit.any(axis=1).tolist()
        self.all_bands = list(range(bands))
        self.first_old = first_old.tolist()
        self.old = old
        self.bands = bands

    def duplicate_of(self, row: int, root_in_group: list[dict[int, int]]) -> Optional[int]:
        """The root of the cluster this row joins: that of the first band where an earlier row of the
        batch, or the index, has its key; None when there is none."""
        first_old = self.first_old[row]
        if self.resolve[row]:
            for band in np.flatnonzero(self.earlier[row, :first_old]).tolist():
                root = root_in_group[band].get(int(self.group[row, band]))
                if root is not None:
                    return root
        return int(self.old[row, first_old]) if first_old < self.bands else None

    def join(self, row: int, root: int, root_in_group: list[dict[int, int]]) -> list[int]:
        """Point this row's keys at `root`: the bands whose key is new (not in the index, nor
        already pointed by an earlier row of the batch), which the index takes in after the batch."""
        if not self.any_old[row] and not self.any_shared[row]:  # the usual case: every key is new
            return self.all_bands
        new = []
        for band, (old, shared, key) in enumerate(zip(self.old[row].tolist(), self.shared[row].tolist(),
                                                      self.group[row].tolist())):
            if old >= 0:
                continue
            if shared:
                if key in root_in_group[band]:
                    continue
                root_in_group[band][key] = root
            new.append(band)
        return new
