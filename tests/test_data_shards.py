"""Token shards: writer, memory-mapped reader, and the deterministic resumable WindowSampler."""

from __future__ import annotations

import numpy as np
import pytest

from llmkit import artifacts
from llmkit.data.shards import ShardWriter, TokenShards, WindowSampler, token_dtype
from llmkit.errors import UserError


def make_tokens(path, docs_by_split, vocab_size=1000, shard_tokens=50, eos_id=1, bos_id=0):
    """A tokens artifact holding the given documents (lists of ids) per split."""
    dtype = token_dtype(vocab_size)
    with artifacts.create(path, "tokens") as build:
        stats = {"dtype": dtype.name, "vocab_size": vocab_size, "eos_id": eos_id, "bos_id": bos_id}
        for split, docs in docs_by_split.items():
            writer = ShardWriter(build.dir / split, dtype, shard_tokens)
            # Two write calls, to cover a shard that spans batches.
            for part in (docs[: len(docs) // 2], docs[len(docs) // 2 :]):
                if part:
                    writer.write(np.concatenate(part), np.array([len(d) for d in part]))
            writer.close()
            stats[split] = {"tokens": writer.tokens, "documents": writer.documents, "shards": writer.shards}
        build.stats = stats
    return path


def random_docs(n, seed=0, vocab_size=1000, max_len=40):
    rng = np.random.default_rng(seed)
    return [np.append(rng.integers(2, vocab_size, rng.integers(1, max_len)), 1) for _ in range(n)]


def test_token_dtype_follows_vocab_size():
    assert token_dtype(65536) == np.dtype("<u2")  # ids 0..65535
    assert token_dtype(65537) == np.dtype("<u4")
    # tokens of a 65536-entry vocabulary written as uint32 (before 2026-12-03) are still read as such
    from llmkit.data.shards import _stored_dtype

    assert _stored_dtype(65536, "uint32") == np.dtype("<u4") and _stored_dtype(65536, "uint16") == np.dtype("<u2")
    assert _stored_dtype(1000, "uint32") is None and _stored_dtype(70_000, "uint16") is None


def test_shards_round_trip_documents_and_windows_cross_shards(tmp_path):
    docs = random_docs(60)
    path = make_tokens(tmp_path / "tokens", {"train": docs}, shard_tokens=50)
    shards = TokenShards.open(path, "train")
    flat = np.concatenate(docs)
    assert shards.num_shards > 3  # documents really were spread over several shards
    assert shards.num_tokens == len(flat)
    assert shards.dtype == np.dtype("<u2") and shards.eos_id == 1 and shards.vocab_size == 1000
    # No document straddles a shard; every document comes back intact and in order.
    back = list(shards.iter_documents())
    assert len(back) == len(docs) == shards.num_documents
    for a, b in zip(back, docs):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.int64
    # Windows equal slices of the concatenation, including ones crossing shard boundaries.
    for start in range(0, len(flat) - 77, 13):
        np.testing.assert_array_equal(shards.window(start, 77), flat[start : start + 77])
    np.testing.assert_array_equal(shards.window(len(flat) - 5, 5), flat[-5:])
    with pytest.raises(IndexError):
        shards.window(len(flat) - 4, 5)


def test_shards_pickle_as_paths_not_data(tmp_path):
    import pickle

    docs = random_docs(200, seed=3)
    shards = TokenShards.open(make_tokens(tmp_path / "tokens", {"train": docs}, shard_tokens=1000), "train")
    blob = pickle.dumps(WindowSampler(shards, 8, seed=1))  # what a DataLoader worker receives
    assert len(blob) < 2000 < shards.num_tokens * 2
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.windows([0, 5, 99]), WindowSampler(shards, 8, seed=1).windows([0, 5, 99]))


def test_uint32_shards(tmp_path):
    docs = [np.array([70000, 123456, 1]), np.array([99999, 1])]
    path = make_tokens(tmp_path / "tokens", {"train": docs}, vocab_size=200_000)
    shards = TokenShards.open(path, "train")
    assert shards.dtype == np.dtype("<u4")
    np.testing.assert_array_equal(shards.window(0, 5), [70000, 123456, 1, 99999, 1])


def test_window_sampler_is_deterministic_resumable_and_covers_each_epoch(tmp_path):
    docs = random_docs(80, seed=1)
    path = make_tokens(tmp_path / "tokens", {"train": docs}, shard_tokens=64)
    flat = np.concatenate(docs)
    seq_len = 16
    sampler = WindowSampler(TokenShards.open(path, "train"), seq_len, seed=7)
    n = len(sampler)
    assert n == (len(flat) - seq_len) // seq_len  # one window's tokens kept for the grid to shift in

    x, y = sampler.get(range(8))
    assert x.shape == (8, seq_len) and str(x.dtype) == "torch.int64"
    assert (x[:, 1:] == y[:, :-1]).all()
    for row, k in enumerate(range(8)):
        start = sampler.start_of(k)
        np.testing.assert_array_equal(x[row].numpy(), flat[start : start + seq_len])
        np.testing.assert_array_equal(y[row].numpy(), flat[start + 1 : start + seq_len + 1])

    # Same (seed, k) -> same window, from a fresh sampler asked for a later slice only (resume).
    later = list(range(3 * n - 5, 3 * n + 5))  # spans the epoch 2 -> 3 boundary
    fresh = WindowSampler(TokenShards.open(path, "train"), seq_len, seed=7)
    np.testing.assert_array_equal(fresh.windows(later), sampler.windows(later))
    # Each epoch visits every grid window exactly once; epochs differ in order.
    for epoch in range(3):
        starts = [sampler.start_of(epoch * n + i) for i in range(n)]
        shift = min(starts)
        assert sorted(s - shift for s in starts) == [i * seq_len for i in range(n)]
    assert [sampler.start_of(i) for i in range(n)] != [sampler.start_of(n + i) for i in range(n)]
    # Another seed gives another order.
    other = WindowSampler(TokenShards.open(path, "train"), seq_len, seed=8)
    assert [other.start_of(i) for i in range(n)] != [sampler.start_of(i) for i in range(n)]


@pytest.mark.parametrize("extra", [0, 1, 9])
def test_every_epoch_cuts_the_text_anywhere_in_a_window(tmp_path, extra):
    """The grid's shift was drawn within the split's remainder past whole windows: by at most a few tokens,
    and by none where the split was a whole number of windows (every epoch then had the same windows). It
    takes any offset in [0, seq_len) now, whatever the remainder."""
    seq_len = 16
    tokens = 20 * seq_len + extra
    path = make_tokens(tmp_path / "tokens", {"train": [np.arange(1, tokens + 1) % 300]})
    sampler = WindowSampler(TokenShards.open(path, "train"), seq_len, seed=3)
    n = len(sampler)
    shifts = {min(sampler.start_of(epoch * n + i) for i in range(n)) for epoch in range(200)}
    assert shifts == set(range(seq_len))
    last = max(sampler.start_of(epoch * n + i) for epoch in range(200) for i in range(n))
    assert last + seq_len + 1 <= tokens  # every window inside the split
    # validation's grid does not shift, and keeps every whole window (each needs seq_len + 1 tokens)
    fixed = WindowSampler(TokenShards.open(path, "train"), seq_len, seed=3, shifting=False)
    whole = (tokens - 1) // seq_len
    assert len(fixed) == whole and sorted(fixed.start_of(i) for i in range(whole)) == [i * seq_len for i in range(whole)]


def test_sampler_rejects_too_little_data(tmp_path):
    path = make_tokens(tmp_path / "tokens", {"train": [np.array([5, 6, 7, 1])]})
    with pytest.raises(UserError, match=r"4 tokens, fewer than one sequence of 8 \+ 1; lower --seq-len"):
        WindowSampler(TokenShards.open(path, "train"), 8, seed=0)
    assert len(WindowSampler(TokenShards.open(path, "train"), 3, seed=0)) == 1


def test_open_errors(tmp_path):
    path = make_tokens(tmp_path / "tokens", {"train": random_docs(3)})
    with pytest.raises(UserError, match="no val split"):
        TokenShards.open(path, "val")
    with pytest.raises(UserError, match="unknown split"):
        TokenShards.open(path, "test")
    with artifacts.create(tmp_path / "corpus", "corpus") as build:
        (build.dir / "x.txt").write_text("x")
    with pytest.raises(UserError, match="expected a tokens artifact, got corpus"):
        TokenShards.open(tmp_path / "corpus", "train")


def test_writer_and_windows_property(tmp_path_factory):
    """Any documents, any batching, any shard size: shards hold the concatenation; windows slice it."""
    from itertools import pairwise

    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=40, deadline=None)
    @given(
        st.lists(st.lists(st.integers(0, 999), min_size=1, max_size=30), min_size=1, max_size=40),
        st.integers(1, 120),
        st.integers(1, 7),
        st.data(),
    )
    def check(docs, shard_tokens, batches, data):
        path = tmp_path_factory.mktemp("p") / "tokens"
        dtype = token_dtype(1000)
        with artifacts.create(path, "tokens") as build:
            writer = ShardWriter(build.dir / "train", dtype, shard_tokens)
            cuts = sorted({0, len(docs), *data.draw(st.lists(st.integers(0, len(docs)), max_size=batches))})
            for a, b in pairwise(cuts):
                writer.write(np.concatenate([np.array(d) for d in docs[a:b]]), np.array([len(d) for d in docs[a:b]]))
            writer.close()
            build.stats = {"dtype": dtype.name, "vocab_size": 1000, "eos_id": 1, "bos_id": 0}
        shards = TokenShards.open(path, "train")
        flat = np.concatenate([np.array(d) for d in docs])
        assert [d.tolist() for d in shards.iter_documents()] == docs
        assert writer.documents == len(docs) and writer.tokens == len(flat) == shards.num_tokens
        # A shard is closed only after it reached shard_tokens (the last one may be shorter).
        sizes = np.diff(shards._bounds)
        assert (sizes[:-1] >= shard_tokens).all()
        start = data.draw(st.integers(0, len(flat) - 1))
        length = data.draw(st.integers(0, len(flat) - start))
        np.testing.assert_array_equal(shards.window(start, length), flat[start : start + length])

    check()


def test_damaged_document_offsets_are_named_not_an_unexpected_error(tmp_path):
    """docs.npy whose header says object (numpy: "cannot be loaded when allow_pickle=False", an
    unexpected error), or offsets out of order: one line naming the file and verify."""
    path = make_tokens(tmp_path / "tokens", {"train": random_docs(20), "val": random_docs(4, seed=1)})
    shards = TokenShards.open(path, "train")
    assert shards.num_documents == 20
    docs = sorted((path / "train").glob("*.docs.npy"))[0]
    starts = np.load(docs)
    data = docs.read_bytes()
    docs.write_bytes(data.replace(b"'<i8'", b"'|O8'", 1) if b"'<i8'" in data else data.replace(b"<i8", b"|O8", 1))
    with pytest.raises(UserError, match=rf"{docs.name} is damaged \(not the increasing document offsets"):
        TokenShards.open(path, "train").doc_starts(0)
    np.save(docs, starts[::-1], allow_pickle=False)  # (the size kept: load's check passes)
    with pytest.raises(UserError, match="is damaged"):
        TokenShards.open(path, "train").doc_starts(0)
