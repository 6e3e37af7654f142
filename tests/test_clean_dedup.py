"""Exact and near-duplicate removal: MinHash quality, LSH parameters, planted duplicates in real text."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest

from llmkit import artifacts
from llmkit.corpus import pipeline
from llmkit.corpus.minhash import MinHasher, jaccard, optimal_bands_rows
from llmkit.corpus.config import CleanConfig


@pytest.fixture(scope="module")
def chunks(shared_data):
    """Distinct 200-word windows of Shakespeare: real, different documents."""
    words = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8").split(" ")
    return [" ".join(words[i : i + 200]) for i in range(0, 200 * 400, 200)]


def _edit(text: str, rng: random.Random, vocabulary: list[str]) -> str:
    """A near-duplicate: ~1% of words replaced, one word inserted, case and spacing changed."""
    words = text.split(" ")
    for _ in range(max(1, len(words) // 100)):
        words[rng.randrange(len(words))] = rng.choice(vocabulary)
    words.insert(rng.randrange(len(words)), rng.choice(vocabulary))
    edited = " ".join(words)
    return edited.upper() if rng.random() < 0.3 else edited.replace("\n", "\n\n")


def test_signature_agreement_estimates_jaccard(chunks):
    hasher = MinHasher(256, 5, 1, 1, seed=3)
    rng = random.Random(0)
    vocabulary = chunks[0].split()
    for base in chunks[:20]:
        other = _edit(_edit(base, rng, vocabulary), rng, vocabulary)
        exact = jaccard(base, other)
        a = hasher.signature(hasher.shingles(base))
        b = hasher.signature(hasher.shingles(other))
        assert abs(float(np.mean(a == b)) - exact) < 0.12  # std of the estimate is ~0.03 at 256 perms


def test_minhash_is_seeded_and_order_insensitive(chunks):
    text = chunks[5]
    a = MinHasher(112, 5, 14, 8, seed=1)
    assert a.keys_for(text) == MinHasher(112, 5, 14, 8, seed=1).keys_for(text)
    assert a.keys_for(text) != MinHasher(112, 5, 14, 8, seed=2).keys_for(text)
    # Case and punctuation do not make a different document.
    assert a.keys_for(text) == a.keys_for(text.upper().replace(",", " ").replace(".", " "))
    assert a.keys_for("") is None and a.keys_for("... !!!") is None
    assert a.keys_for("two words") is not None  # shorter than n: one shingle of all its words


def test_combining_marks_stay_in_their_words():
    """`re`'s \\w ended a word at each combining mark, so Devanagari shingled without its vowel signs:
    a text and its copy with every vowel sign swapped were the same document (Jaccard 1.0), and
    Hindi lost about four times the documented share of related documents as near duplicates."""
    import unicodedata

    from llmkit.corpus.words import shingle_tokens

    assert shingle_tokens("हिन्दी भाषा") == ["हिन्दी", "भाषा"]
    assert shingle_tokens("مَرْحَبًا") == ["مَرْحَبًا"]
    assert shingle_tokens(unicodedata.normalize("NFD", "Le résumé")) == ["le", unicodedata.normalize("NFD", "résumé")]
    # ... and a mark or joiner alone is no word: an emoji's variation selector or ZWJ made two documents of one
    assert shingle_tokens("I ❤️ you") == shingle_tokens("I ❤ you") == ["i", "you"]
    assert shingle_tokens("family 👨\u200d👩\u200d👧 photo") == ["family", "photo"]
    assert shingle_tokens("x² + y³ = ½") == ["x²", "y³", "½"]  # (numbers as `re` took them)
    words = "हिन्दी भारत की राजभाषा है और विश्व में सबसे अधिक बोली जाने वाली भाषाओं में से एक है".split()
    rng = random.Random(0)
    text = " ".join(rng.choice(words) for _ in range(150))
    blind = "".join("\u0941" if "\u093e" <= ch <= "\u094c" else ch for ch in text)  # every vowel sign made one sign
    assert blind != text and jaccard(text, blind) < 0.2
    hasher = MinHasher(112, 5, 14, 8, seed=0)
    assert not set(hasher.keys_for(text)) & set(hasher.keys_for(blind))  # no band agrees: not a near duplicate


def test_threshold_picks_bands_and_rows():
    from datasketch import MinHashLSH

    for threshold in (0.5, 0.7, 0.8, 0.9):
        bands, rows = optimal_bands_rows(threshold, 112)
        reference = MinHashLSH(threshold=threshold, num_perm=112)
        assert (bands, rows) == (reference.b, reference.r)
        cfg = CleanConfig(threshold=threshold)
        assert (cfg.bands, cfg.rows) == (bands, rows)
    assert (CleanConfig().bands, CleanConfig().rows) == (14, 8)


def _write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as handle:
        for text in texts:
            handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


def test_planted_near_duplicates_recall_and_precision(chunks, tmp_path):
    rng = random.Random(1234)
    vocabulary = sorted(set(" ".join(chunks[:50]).split()))
    base = chunks[:300]
    planted = {}  # line number of a copy -> line number of its original
    hard_negatives = []  # half of one document + half of another: Jaccard ~0.3, not a duplicate
    rows = list(base)
    for index in rng.sample(range(len(base)), 150):
        copy = _edit(base[index], rng, vocabulary)
        assert jaccard(copy, base[index]) > 0.8
        rows.append(copy)
        planted[len(rows)] = index + 1
    for _ in range(50):
        a, b = rng.sample(range(len(base)), 2)
        first, second = base[a].split(" "), base[b].split(" ")
        mixed = " ".join(first[:100] + second[100:])
        assert jaccard(mixed, base[a]) < 0.6 and jaccard(mixed, base[b]) < 0.6
        rows.append(mixed)
        hard_negatives.append(len(rows))
    order = list(range(len(base), len(rows)))
    rng.shuffle(order)  # interleave copies and negatives after the originals
    rows = rows[: len(base)] + [rows[i] for i in order]
    line_of = {old + 1: new + 1 for new, old in enumerate(list(range(len(base))) + order)}
    planted = {line_of[c]: o for c, o in planted.items()}
    source = tmp_path / "docs.jsonl"
    _write_jsonl(source, rows)

    out = pipeline.clean([str(source)], tmp_path / "corpus", CleanConfig(keep_rejects=True), show_progress=False)
    rejects = [json.loads(line) for line in open(out / "rejects.jsonl", encoding="utf-8")]
    dropped = {int(r["id"].rsplit(":", 1)[1]): r for r in rejects}
    true_positives = sum(
        1 for line, r in dropped.items() if line in planted and r["duplicate_of"] == f"docs.jsonl:{planted[line]}"
    )
    precision = true_positives / len(dropped)
    recall = true_positives / len(planted)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    assert all(r["reason"] in ("near_duplicate", "exact_duplicate") for r in rejects)
    stats = artifacts.load(out).stats
    assert stats["documents"] == len(rows) - len(dropped)
    assert stats["duplicate_clusters"] == len({r["duplicate_of"] for r in rejects})


def test_exact_and_near_dedup_together(chunks, tmp_path):
    rng = random.Random(7)
    vocabulary = chunks[0].split()
    originals = chunks[:40]
    exact_copies = [originals[i] for i in range(0, 40, 4)]  # 10 byte-identical copies
    # 5 copies that are identical once cleaned: BOM, CRLF, trailing blanks, zero-width spaces.
    spaced_copies = ["\ufeff" + originals[i].replace("\n", " \r\n").replace(" ", " \u200b", 3) + "  \r\n" for i in range(1, 40, 8)]
    near_copies = [_edit(originals[i], rng, vocabulary) for i in range(2, 40, 4)]  # 10 edited
    # 3 byte-identical copies of near copies: exact duplicates of the original the near copy joined
    # (counted as near duplicates until 2026-12-06: only kept documents' hashes were recorded)
    copies_of_near = near_copies[:3]
    source = tmp_path / "mixed.jsonl"
    _write_jsonl(source, originals + exact_copies + spaced_copies + near_copies + copies_of_near)

    out = pipeline.clean([str(source)], tmp_path / "both", CleanConfig(keep_rejects=True), show_progress=False)
    stats = artifacts.load(out).stats
    assert stats["dropped"] == {"exact_duplicate": 18, "near_duplicate": 10}
    assert stats["duplicate_clusters"] == 25 and stats["largest_duplicate_cluster"] == 3
    rejects = [json.loads(line) for line in open(out / "rejects.jsonl", encoding="utf-8")]
    last = rejects[-3:]
    assert [r["reason"] for r in last] == ["exact_duplicate"] * 3
    assert [r["duplicate_of"] for r in last] == [f"mixed.jsonl:{i + 1}" for i in (2, 6, 10)]
    kept = pq.read_table(out / "shards" / "part-00000.parquet").column("text").to_pylist()
    assert len(kept) == 40 and kept[0] == originals[0].strip()

    only_exact = pipeline.clean(
        [str(source)], tmp_path / "exact", CleanConfig(near_dedup=False), show_progress=False
    )
    assert artifacts.load(only_exact).stats["dropped"] == {"exact_duplicate": 18}
    neither = pipeline.clean(
        [str(source)], tmp_path / "none", CleanConfig(near_dedup=False, exact_dedup=False), show_progress=False
    )
    assert artifacts.load(neither).stats["documents"] == 68


def _reference_keys(text: str, hasher: MinHasher) -> list[int] | None:
    """The scheme one word at a time with the `xxhash` package (the implementation before batching):
    the batched, vectorised one must give the same keys, or every corpus fingerprint would change."""
    import xxhash

    from llmkit.corpus.words import shingle_tokens

    tokens = shingle_tokens(text)
    if not tokens:
        return None
    words = np.array([xxhash.xxh64_intdigest(t.encode()) for t in tokens], dtype=np.uint64)
    n = min(hasher.ngram, len(words))
    count = len(words) - n + 1
    shingles = np.zeros(count, dtype=np.uint64)
    for k in range(n):
        shingles += words[k : k + count] * hasher.position[k]
    permuted = ((shingles[:, None] * hasher.a + hasher.b) >> np.uint64(32)).astype(np.uint32)
    signature = permuted.min(axis=0)[: hasher.bands * hasher.rows].reshape(hasher.bands, hasher.rows)
    return [xxhash.xxh64_intdigest(row.astype("<u4").tobytes(), seed=band) for band, row in enumerate(signature)]


def test_words_of_one_length_past_a_hashing_chunk_hash_as_the_package_hashes_them():
    """_hash_spans gathers a few million bytes at a time: a long document's words span several chunks."""
    import xxhash

    from llmkit.corpus.minhash import _hash_spans, _spans

    rng = np.random.default_rng(0)
    words = ["".join(chr(97 + c) for c in rng.integers(0, 26, size=5)) for _ in range(900_000)]  # 5.4 MB at one length
    buffer = np.frombuffer(" ".join(words).encode(), dtype=np.uint8)
    hashes = _hash_spans(buffer, *_spans(buffer))
    assert len(hashes) == len(words)
    for i in (0, 1, 838_859, 838_860, len(words) - 1):  # either side of the first chunk's end (4 MiB / 5 bytes)
        assert int(hashes[i]) == xxhash.xxh64_intdigest(words[i].encode()), i


def test_vectorised_xxh64_matches_the_package():
    import xxhash

    from llmkit.corpus.minhash import xxh64_rows

    rng = np.random.default_rng(0)
    for length in range(0, 100):
        rows = rng.integers(0, 256, size=(4, length), dtype=np.uint8)
        seeds = rng.integers(0, 2**64 - 1, size=4, dtype=np.uint64, endpoint=True)
        expected = [xxhash.xxh64_intdigest(row.tobytes(), seed=int(seed)) for row, seed in zip(rows, seeds)]
        assert xxh64_rows(rows, seeds).tolist() == expected, length


def test_batched_keys_match_one_word_at_a_time(chunks, shared_data):
    chinese = (shared_data / "chinese.txt").read_text(encoding="utf-8").split("\n")[:40]
    texts = chunks[:60] + chinese + ["", "... !!!", "two words", "Ünïcode wörds, ÉTÉ été", "a_b c-d", "x" * 80, "1 2 3 4 5 6"]
    random.Random(3).shuffle(texts)
    for args in [(112, 5, 14, 8, 0), (64, 3, 8, 8, 7), (20, 1, 4, 5, 1), (9, 7, 3, 3, 2)]:
        hasher = MinHasher(*args)
        keys, has = hasher.batch_keys(texts)
        for text, row, present in zip(texts, keys, has):
            expected = _reference_keys(text, hasher)
            assert (expected is not None) == bool(present), text
            if expected is not None:
                assert row.tolist() == expected == hasher.keys_for(text), (args, text[:40])


def _reference_decisions(batches, bands):
    """The streaming union-find with one dict per band (band key -> root), one document at a time."""
    exact, index, kept, decisions = {}, [{} for _ in range(bands)], 0, []
    for batch in batches:
        for doc, row, present in zip(batch.docs, batch.band_keys, batch.has_keys):
            if doc.reason:
                decisions.append((doc.reason, None))
                continue
            if doc.exact_key and doc.exact_key in exact:
                decisions.append(("exact_duplicate", exact[doc.exact_key]))
                continue
            hit = next((index[b][k] for b, k in enumerate(row.tolist()) if present and k in index[b]), None)
            if hit is not None:
                decisions.append(("near_duplicate", hit))
                root = hit
            else:
                decisions.append((None, None))
                root, kept = kept, kept + 1
            if doc.exact_key:
                exact[doc.exact_key] = root
            if present:
                for b, k in enumerate(row.tolist()):
                    index[b].setdefault(k, root)
    return decisions


def test_band_index_decides_as_per_band_dicts():
    from llmkit.corpus.dedup import Deduplicator, ProcessedBatch
    from llmkit.corpus.process import Processed

    rng = np.random.default_rng(5)
    bands = 6
    batches = []
    for size in [1, 300, 0, 257, 1000, 64, 2000, 3]:  # the index grows several times
        # Few distinct keys per band: many collisions with earlier batches and within the batch.
        keys = rng.integers(0, 3000, size=(size, bands)).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        has = rng.random(size) > 0.05
        docs = [
            Processed(f"d{i}", "s", "t", "short" if rng.random() < 0.05 else None, 1, 1,
                      bytes([rng.integers(0, 40)]) if rng.random() < 0.3 else b"")
            for i in range(size)
        ]
        batches.append(ProcessedBatch(docs, keys, has))
    dedup = Deduplicator(bands)
    got = [decision for batch in batches for decision in dedup.decide(batch)]
    expected = _reference_decisions(batches, bands)
    assert got == expected
    assert {reason for reason, _ in got} == {None, "short", "exact_duplicate", "near_duplicate"}
    # every distinct key of a kept document or a near duplicate is in the index, each band's table at most half full
    distinct = [set() for _ in range(bands)]
    decided = iter(got)
    for batch in batches:
        for row, present, (reason, _) in zip(batch.band_keys, batch.has_keys, decided):
            if present and reason in (None, "near_duplicate"):
                for b, k in enumerate(row.tolist()):
                    distinct[b].add(k)
    assert dedup.index.sizes.tolist() == [len(keys) for keys in distinct]
    assert dedup.index.capacity >= 2 * dedup.index.sizes.max()
    # a chain: C shares a key only with B, B only with A: one cluster, A kept, B and C near copies of A
    chain = Deduplicator(2)
    keys = np.array([[1, 2], [1, 3], [4, 3]], dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    docs = [Processed(f"c{i}", "s", "t", None, 1, 1, b"") for i in range(3)]
    for split in ([3], [1, 2], [1, 1, 1]):  # in one batch, or across batches
        chain = Deduplicator(2)
        got, start = [], 0
        for size in split:
            got += chain.decide(ProcessedBatch(docs[start:start + size], keys[start:start + size], np.ones(size, bool)))
            start += size
        assert got == [(None, None), ("near_duplicate", 0), ("near_duplicate", 0)], split


def test_an_index_replayed_from_its_changes_decides_as_the_one_that_never_stopped(tmp_path):
    """An interrupted clean rebuilds its index from the changes each marker appended (llmkit.resume's
    append mode); the rest of the input is then decided exactly as by the uninterrupted run, and a
    marker holds only what changed since the one before (the index is not written again each time)."""
    from llmkit import resume
    from llmkit.corpus.dedup import Deduplicator, ProcessedBatch
    from llmkit.corpus.process import Processed

    rng = np.random.default_rng(7)
    bands = 5

    def batch(size: int) -> ProcessedBatch:
        keys = rng.integers(0, 2000, size=(size, bands)).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        docs = [Processed(f"d{i}", "s", "t", None, 1, 1, bytes([rng.integers(0, 60)]) * 16 if rng.random() < 0.3 else b"")
                for i in range(size)]
        return ProcessedBatch(docs, keys, rng.random(size) > 0.05)

    before, after = [batch(n) for n in (300, 1000, 5, 2500)], [batch(n) for n in (700, 1200)]
    straight = Deduplicator(bands)
    marked = tmp_path / "partial"
    marked.mkdir()
    sizes = []
    for number, b in enumerate(before):
        straight.decide(b)
        changes = straight.changes()
        sizes.append(len(changes["index_keys"]))
        resume.save(marked, {"batches": number + 1, "dedup_kept": straight.kept}, changes, append=True)
    written = sorted(marked.glob("resume-*.npz"))
    assert len(written) == len(before)  # one file per marker, none rewritten
    assert [len(np.load(f)["index_keys"]) for f in written] == sizes and sum(sizes) == straight.index.sizes.sum()

    state, arrays = resume.load(marked)
    replayed = Deduplicator(bands)
    replayed.replay(arrays, state["dedup_kept"])
    assert replayed.exact_roots == straight.exact_roots and replayed.cluster_sizes == straight.cluster_sizes
    assert [replayed.decide(b) for b in after] == [straight.decide(b) for b in after]
    assert replayed.cluster_sizes == straight.cluster_sizes and replayed.kept == straight.kept
