"""`llmkit tokenize`: corpus -> token shards that decode back to the corpus documents."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from llmkit import artifacts
from llmkit.data.corpus import write_corpus_artifact
from llmkit.data.shards import TokenShards, WindowSampler
from llmkit.data.tokenizer import load_tokenizer
from llmkit.errors import UserError
from llmkit.tokenizer.encode_corpus import TAIL, TRAIN, VAL, TokenizeConfig, split_plan, tokenize_corpus
from llmkit.tokenizer.train import TokenizerTrainConfig, train_tokenizer


@pytest.fixture(scope="module")
def documents(shared_data):
    english = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000].split("\n\n")
    chinese = (shared_data / "chinese.txt").read_text(encoding="utf-8")[:60_000].split("\n")
    docs = [d for d in english + chinese if d.strip()]
    # Edge cases: special-token text inside a document, emoji, an empty document (skipped).
    return docs + ["a document that mentions <|eos|> and <|bos|> 🎉", ""]


@pytest.fixture(scope="module")
def corpus(documents, tmp_path_factory):
    return write_corpus_artifact(tmp_path_factory.mktemp("c") / "corpus", documents, docs_per_shard=500).path


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    return train_tokenizer([corpus], tmp_path_factory.mktemp("t") / "tok", TokenizerTrainConfig(vocab_size=1500, seed=0))


@pytest.fixture(scope="module")
def tokens(corpus, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("k") / "tokens"
    return tokenize_corpus(corpus, tokenizer, out, TokenizeConfig(val_fraction=0.1, shard_tokens=20_000, seed=3, workers=1))


def decoded_documents(path, split):
    tok = load_tokenizer(path / "tokenizer")
    return [tok.decode(doc) for doc in TokenShards.open(path, split).iter_documents()]


def test_shards_decode_back_to_corpus_documents(documents, tokens):
    art = artifacts.load(tokens, kind="tokens")
    stats = art.stats
    nonempty = [d for d in documents if d]
    train, val = decoded_documents(tokens, "train"), decoded_documents(tokens, "val")
    # Every stored document is "<text><|eos|>", and together the splits hold each document exactly once.
    assert all(d.endswith("<|eos|>") for d in train + val)
    assert sorted(d[: -len("<|eos|>")] for d in train + val) == sorted(nonempty)
    # Order within a split follows the corpus order.
    order = {d: i for i, d in enumerate(nonempty)}
    assert [order[d[:-7]] for d in train] == sorted(order[d[:-7]] for d in train)
    assert stats["val"]["documents"] == len(val) == round(0.1 * len(documents))
    assert stats["train"]["documents"] + stats["val"]["documents"] == len(nonempty)
    assert stats["train"]["bytes"] + stats["val"]["bytes"] == sum(len(d.encode()) for d in nonempty)
    assert stats["train"]["tokens"] == TokenShards.open(tokens, "train").num_tokens
    assert len(stats["train"]["shards"]) == TokenShards.open(tokens, "train").num_shards > 1
    assert stats["dtype"] == "uint16" and stats["eos_id"] == 1 and stats["bos_id"] == 0
    assert sorted(i["role"] for i in art.manifest.inputs) == ["corpus", "tokenizer"]
    assert (tokens / "tokenizer" / "tokenizer.json").is_file() and (tokens / "tokenizer" / "token_bytes.npy").is_file()


def test_special_text_stays_text_in_shards(tokens):
    tok = load_tokenizer(tokens)
    specials = set(tok.special_ids.values()) - {tok.eos_id}
    for doc in TokenShards.open(tokens, "train").iter_documents():
        assert doc[-1] == tok.eos_id and tok.eos_id not in doc[:-1]
        assert not specials & set(doc.tolist())


def test_fast_and_reference_paths_agree(corpus, tokenizer, tokens, tmp_path):
    assert artifacts.load(tokens).stats["encoder"] == "tiktoken"
    slow = tokenize_corpus(corpus, tokenizer, tmp_path / "slow", TokenizeConfig(
        val_fraction=0.1, shard_tokens=20_000, seed=3, fast=False, workers=2, batch_size=100))
    assert artifacts.load(slow).stats["encoder"] == "tokenizers"
    assert artifacts.load(slow).manifest.runtime["workers"] == min(2, os.cpu_count())  # two threads (at most one per core)
    # Same corpus, tokenizer and seed: same fingerprint, whatever the encoder, workers or batch size.
    assert artifacts.load(slow).fingerprint == artifacts.load(tokens).fingerprint


@pytest.mark.parametrize("add_bos", [False, True])
def test_joined_encoding_matches_each_document_alone(tokenizer, monkeypatch, add_bos):
    """The fast path encodes many documents in one tiktoken call, joined by <|eos|>; the ids must be
    those of each document alone, also where a document holds special-token text (which must stay
    text), ends in spaces or newlines, and where a batch spans several calls."""
    from llmkit.tokenizer import encode_corpus

    tok = load_tokenizer(tokenizer)
    monkeypatch.setattr(encode_corpus, "JOIN_CHARS", 40)  # a new call every few documents
    state = encode_corpus.encoder_state(tok, use_fast=True, add_bos=add_bos, check_every=1)
    plain = ["Hello there  ", "\n\nKING HENRY:\n", "", "trailing newline\n\n", "中文 text, 1234567 ", "x"]
    for specials in ([], ["mentions <|user|> only"], ["holds <|eos|> text"], ["holds <|bos|> text"]):
        texts = plain + specials + plain[::-1]
        sizes, flat, lengths, checked, mismatch = encode_corpus._encode_batch((0, texts), state)
        prefix = [tok.bos_id] if add_bos else []
        expected = [prefix + tok.encode(t) + [tok.eos_id] if t else [] for t in texts]
        assert flat.tolist() == [i for ids in expected for i in ids]
        assert lengths.tolist() == [len(ids) for ids in expected]
        assert sizes.tolist() == [len(t.encode()) for t in texts]
        assert mismatch is None and checked == len([t for t in texts if t])


def test_joined_encoding_with_one_token_for_bos_and_eos(tokenizer):
    """A tokenizer whose BOS is its EOS (as some imported ones are): the joined ids could not tell
    where a document ends, so each document is encoded alone, with `eos ids eos` per document."""
    from llmkit.data.tokenizer import TextTokenizer
    from llmkit.tokenizer import encode_corpus

    plain = load_tokenizer(tokenizer)
    tok = TextTokenizer(plain.hf, plain.token_bytes, plain.path, roles={"bos": "<|eos|>"})
    assert tok.bos_id == tok.eos_id and tok.fast_encoding is not None
    state = encode_corpus.encoder_state(tok, use_fast=True, add_bos=True, check_every=1)
    texts = ["Hello there", "", "a second document", "third"]
    sizes, flat, lengths, checked, mismatch = encode_corpus._encode_batch((0, texts), state)
    expected = [[tok.eos_id] + tok.encode(t) + [tok.eos_id] if t else [] for t in texts]
    assert flat.tolist() == [i for ids in expected for i in ids] and lengths.tolist() == [len(ids) for ids in expected]
    assert mismatch is None


def test_two_runs_in_threads_of_one_process_stay_apart(corpus, tokenizer, tmp_path):
    """Each run keeps its own encoder state (tokenizer, BOS, checks): two runs with different
    options at once in one process write what each writes alone."""
    import threading

    configs = {"bos": TokenizeConfig(val_fraction=0.1, add_bos=True, seed=3, workers=2, batch_size=100),
               "plain": TokenizeConfig(val_fraction=0.1, seed=3, workers=2, batch_size=100)}
    alone = {name: artifacts.load(tokenize_corpus(corpus, tokenizer, tmp_path / f"alone-{name}", config)).fingerprint
             for name, config in configs.items()}
    threads = [threading.Thread(target=tokenize_corpus, args=(corpus, tokenizer, tmp_path / f"together-{name}", config))
               for name, config in configs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {name: artifacts.load(tmp_path / f"together-{name}").fingerprint for name in configs} == alone
    assert alone["bos"] != alone["plain"]


def test_same_inputs_same_fingerprint_and_seed_changes_split(corpus, tokenizer, tokens, tmp_path):
    config = TokenizeConfig(val_fraction=0.1, shard_tokens=20_000)
    again = tokenize_corpus(corpus, tokenizer, tmp_path / "again", replace(config, seed=3, workers=2, batch_size=333))
    assert artifacts.load(again).fingerprint == artifacts.load(tokens).fingerprint
    assert artifacts.load(again).manifest.runtime["workers"] == min(2, os.cpu_count())
    other = tokenize_corpus(corpus, tokenizer, tmp_path / "other", replace(config, seed=4, workers=1))
    assert artifacts.load(other).fingerprint != artifacts.load(tokens).fingerprint
    assert decoded_documents(other, "val") != decoded_documents(tokens, "val")


def test_bos_and_sampler_on_real_tokens(corpus, tokenizer, tmp_path):
    out = tokenize_corpus(corpus, tokenizer, tmp_path / "bos", TokenizeConfig(val_fraction=0.0, add_bos=True, seed=0, workers=1))
    stats = artifacts.load(out).stats
    assert stats["add_bos"] and stats["val"]["tokens"] == 0 and stats["val"]["shards"] == []
    shards = TokenShards.open(out, "train")
    for doc in shards.iter_documents():
        assert doc[0] == 0 and doc[-1] == 1
    sampler = WindowSampler(shards, 64, seed=0)
    x, y = sampler.get([0, 1, len(sampler) + 5])
    assert x.shape == (3, 64) and (x[:, 1:] == y[:, :-1]).all()
    with pytest.raises(UserError, match="no val split"):
        TokenShards.open(out, "val")


@pytest.mark.slow
def test_uint32_for_large_vocab(tmp_path, shared_data):
    # A vocabulary above 65536 entries needs a corpus with that many distinct merges: use
    # every Chinese character pair in the shared book plus English, with min_frequency 1.
    text = (shared_data / "chinese.txt").read_text(encoding="utf-8") + (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    corpus = write_corpus_artifact(tmp_path / "corpus", text.split("\n")).path
    tok = train_tokenizer([corpus], tmp_path / "tok", TokenizerTrainConfig(vocab_size=70_000, min_frequency=1, seed=0))
    # (the book and the play hold enough distinct merges; a smaller vocabulary would leave uint32 untested)
    assert load_tokenizer(tok).vocab_size > 65536
    out = tokenize_corpus(corpus, tok, tmp_path / "tokens", TokenizeConfig(val_fraction=0.01, seed=0, workers=1))
    shards = TokenShards.open(out, "train")
    assert artifacts.load(out).stats["dtype"] == "uint32" and shards.dtype == np.dtype("<u4")
    assert int(shards.window(0, shards.num_tokens).max()) > 65535


def test_split_plan_draws_validation_from_every_input():
    one_input = np.zeros(1000, dtype=np.int32)
    plan, summary = split_plan(one_input, 0.05, seed=1)
    assert (plan == VAL).sum() == 50 and summary == {"inputs": 1, "val_documents": 50, "documents_split_inside": 0}
    assert (plan == split_plan(one_input, 0.05, seed=1)[0]).all() and (plan != split_plan(one_input, 0.05, seed=2)[0]).any()
    # Two inputs, 900 and 100 documents: each gives its own 5%, not 50 from wherever they fall.
    two = np.repeat([0, 1], [900, 100]).astype(np.int32)
    plan, _ = split_plan(two, 0.05, seed=0)
    assert (plan[:900] == VAL).sum() == 45 and (plan[900:] == VAL).sum() == 5
    # An input with too few documents for whole ones gives the tail of each: one book, two small files.
    plan, summary = split_plan(np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], np.int32), 0.05, 0)
    assert plan[0] == TAIL and (plan[1:] == VAL).sum() == 1 and summary["documents_split_inside"] == 1
    # A folder of notes, one document each: whole documents from the pool, never every note's tail
    # (which took each one's end-of-text out of training).
    plan, summary = split_plan(np.arange(60, dtype=np.int32), 0.05, 0)
    assert (plan == VAL).sum() == 3 and (plan == TAIL).sum() == 0 and summary["val_documents"] == 3
    # Too few documents in all for one whole: the tail of each (one book, two files).
    plan, summary = split_plan(np.zeros(2, np.int32), 0.05, 0)
    assert (plan == TAIL).all() and summary["documents_split_inside"] == 2
    # ... those long enough for a tail of text: 1,405 paragraphs of 160 bytes at F = 0.0003 gave 1,405
    # one-token tails (0.6 % of the text, each document's last word); one whole short paragraph instead
    sizes = np.random.default_rng(0).integers(100, 220, 1405)
    plan, summary = split_plan(np.repeat([0, 1], [1300, 105]).astype(np.int32), 0.0003, 0, sizes=lambda at: sizes[at])
    assert (plan == VAL).sum() == 1 and (plan == TAIL).sum() == 0 and summary["val_documents"] == 1
    assert sizes[plan == VAL][0] <= 2 * 0.0003 * sizes.sum()
    # three files of 100, 200 and 3,000 bytes: the long one's tail, the short ones train whole (a rule by the
    # corpus's mean sent the 3,000-byte file whole to validation, 91 % of the text)
    three = np.array([100, 200, 3000])
    for seed in range(4):
        plan, summary = split_plan(np.arange(3, dtype=np.int32), 0.05, seed, sizes=lambda at: three[at])
        assert plan.tolist() == [TRAIN, TRAIN, TAIL] and summary["documents_split_inside"] == 1
    # only short documents, none as small as 2F of the pool: the smallest whole
    plan, _ = split_plan(np.arange(3, dtype=np.int32), 0.05, 0, sizes=lambda at: np.array([40, 30, 50])[at])
    assert plan.tolist() == [TRAIN, VAL, TRAIN]
    assert (split_plan(np.zeros(1, np.int32), 0.05, 0, sizes=lambda at: np.array([20]))[0] == TAIL).all()  # (alone: its tail)
    # nine files of 1,000 to 1,400 bytes: a tail of each (50-70 bytes), not of the longest alone (67 bytes in all,
    # fewer tokens than one training window, which pretraining then refused)
    nine = np.array([1000] * 8 + [1400])
    assert (split_plan(np.arange(9, dtype=np.int32), 0.05, 0, sizes=lambda at: nine[at])[0] == TAIL).all()
    # tails of less than half the share: one whole short document besides (never an empty one)
    mixed = np.array([400] + [100] * 8)
    plan, summary = split_plan(np.arange(9, dtype=np.int32), 0.05, 0, sizes=lambda at: mixed[at])
    assert plan[0] == TAIL and (plan[1:] == VAL).sum() == 1 and summary == {"inputs": 9, "val_documents": 1,
                                                                          "documents_split_inside": 1}
    empties = np.array([0, 2, 0, 20])
    for seed in range(8):
        plan, _ = split_plan(np.arange(4, dtype=np.int32), 0.05, seed, sizes=lambda at: empties[at])
        assert plan.tolist() == [TRAIN, VAL, TRAIN, TRAIN]  # (the non-empty one within 2F of the pool)
    assert (split_plan(np.zeros(5, np.int32), 0.0, 0)[0] == TRAIN).all()


def test_a_document_larger_than_twice_the_share_gives_its_tail_never_itself_whole():
    """A book among 30 notes (each its own input) went whole to validation for 8 seeds of 200: 98 % of the
    text; a language written as one long document in each file was never in validation at all."""
    notes_and_book = np.array([900] * 30 + [1_100_000])
    for seed in range(200):
        plan, summary = split_plan(np.arange(31, dtype=np.int32), 0.05, seed, sizes=lambda at: notes_and_book[at])
        assert plan[30] == TAIL and (plan[:30] == VAL).sum() == 2 and (plan[:30] == TAIL).sum() == 0, seed
        assert summary["documents_split_inside"] == 1
    # ... where one whole document is drawn (round(nF) = 1): the book's tail is compared with the notes' mean,
    # not a mean with the book in it (which kept it in the draw: whole in validation for 33 of 400 seeds)
    for notes, fraction, book in ((11, 0.05, 1_100_000), (19, 0.05, 1_100_000), (30, 0.03, 1_100_000), (30, 0.02, 30_000),
                                  (5, 0.1, 5_000)):
        sizes = np.array([900] * notes + [book])
        for seed in range(100):
            plan, _ = split_plan(np.arange(notes + 1, dtype=np.int32), fraction, seed, sizes=lambda at: sizes[at])
            assert plan[notes] == TAIL, (notes, fraction, seed)
    # one input: 7,000 paragraphs and one 2.6 MB document (a file whose Chinese half has no blank lines)
    groups = np.zeros(7001, np.int32)
    mixed = np.array([150] * 7000 + [2_600_000])
    for seed in range(5):
        plan, _ = split_plan(groups, 0.05, seed, sizes=lambda at: mixed[at])
        assert plan[7000] == TAIL and (plan[:7000] == VAL).sum() == 350
    # at a small F a document a few times the mean is no book: it stays in the draw, not a 24-byte tail
    # (the first rule left 34 % of such a corpus out of any validation at F = 0.001)
    skewed = np.random.default_rng(0).lognormal(7, 1, 1000).astype(int) + 1
    for fraction in (0.001, 0.002):
        shares = []
        for seed in range(100):
            plan, summary = split_plan(np.zeros(1000, np.int32), fraction, seed, sizes=lambda at: skewed[at])
            assert summary["documents_split_inside"] == 0
            shares.append(skewed[plan == VAL].sum() / skewed.sum())
        assert 0.7 * fraction < np.mean(shares) < 1.3 * fraction, (fraction, np.mean(shares))
    # at F = 0.5, 2F is all the text: a book among notes is still split (it went whole, 99 % of the text)
    plan, _ = split_plan(np.arange(61, dtype=np.int32), 0.5, 3, sizes=lambda at: np.array([900] * 60 + [1_100_000])[at])
    assert plan[60] == TAIL
    # documents of about one size are drawn as before, whatever the sizes say
    even = np.random.default_rng(0).integers(900, 1100, 1000)
    assert (split_plan(np.zeros(1000, np.int32), 0.05, 3, sizes=lambda at: even[at])[0]
            == split_plan(np.zeros(1000, np.int32), 0.05, 3)[0]).all()


def test_a_single_document_corpus_splits_its_tail(tmp_path, tokenizer):
    """tinyshakespeare as one document: the last 10% of its tokens is validation, as in nanoGPT."""
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 200
    corpus = write_corpus_artifact(tmp_path / "book", [text]).path
    out = tokenize_corpus(corpus, tokenizer, tmp_path / "tokens", TokenizeConfig(val_fraction=0.1, workers=1))
    stats = artifacts.load(out).stats
    total = stats["train"]["tokens"] + stats["val"]["tokens"]
    assert abs(stats["val"]["tokens"] / total - 0.1) < 0.01 and stats["split"]["documents_split_inside"] == 1
    assert abs(stats["val_byte_fraction"] - 0.1) < 0.02
    train = TokenShards.open(out, "train").window(0, stats["train"]["tokens"])
    val = TokenShards.open(out, "val").window(0, stats["val"]["tokens"])
    # the head ends with the document's end-of-text too (its boundary stays in training)
    assert load_tokenizer(tokenizer).decode(np.concatenate([train[:-1], val]).tolist()) == text + "<|eos|>"
    assert int(train[-1]) == int(val[-1]) == stats["eos_id"]


def test_short_documents_train_whole_beside_a_long_ones_tail(tmp_path, tokenizer):
    """Four short lines beside a long text (one input, too few for a whole validation document): the long
    text gives its tail, the lines train whole (each gave its last word, a tail of a token). Five short
    lines alone give one of them whole (a 5% tail rounded to the end-of-text alone, and validation was
    empty, until 2026-12-04; then one word of each, until 2026-12-05)."""
    lines = ["The first line is here.", "A second line follows it.", "Then there is a third.", "Four lines now."]
    corpus = write_corpus_artifact(tmp_path / "five", lines + ["the long text goes on " * 300]).path
    out = tokenize_corpus(corpus, tokenizer, tmp_path / "tokens", TokenizeConfig(workers=1))
    stats = artifacts.load(out).stats
    assert stats["val"]["documents"] == stats["split"]["documents_split_inside"] == 1
    assert stats["train"]["documents"] == 5 and 0.03 < stats["val_byte_fraction"] < 0.07
    assert decoded_documents(out, "train")[:4] == [line + "<|eos|>" for line in lines]
    short = write_corpus_artifact(tmp_path / "short-lines", lines + ["And a fifth."]).path
    whole = artifacts.load(tokenize_corpus(short, tokenizer, tmp_path / "whole", TokenizeConfig(workers=1))).stats
    assert whole["split"] == {"inputs": 1, "val_documents": 1, "documents_split_inside": 0}
    assert whole["val"]["documents"] == 1 and whole["train"]["documents"] == 4
    one_word = write_corpus_artifact(tmp_path / "one-word", ["a"]).path  # one token: too short for two parts, no validation
    shards = tokenize_corpus(one_word, tokenizer, tmp_path / "short", TokenizeConfig(workers=1))
    with pytest.raises(UserError, match="no val split; its documents were too short to give one"):
        TokenShards.open(shards, "val")


def test_cli_tokenize_and_bad_inputs(cli, corpus, tokenizer, tmp_path):
    out = tmp_path / "tokens"
    result = cli("tokenize", corpus, "--tokenizer", tokenizer, "-o", out, "--val-fraction", "0.2", "--seed", "5", "--workers", "1")
    assert result.exit_code == 0, result.output
    art = artifacts.load(out)
    assert art.config["val_fraction"] == 0.2 and art.manifest.seed == 5 and art.manifest.runtime["workers"] == 1
    assert "train" in result.output and "tokens/s" in result.output
    assert cli("tokenize", corpus, "-t", tokenizer, "-o", out).exit_code == 1  # exists, no --force
    # encode/decode accept a tokens artifact too (its tokenizer/ copy), and so does tokenize (it was refused)
    ids = load_tokenizer(tokenizer).encode("hello")
    assert " ".join(map(str, ids)) in cli("tokenizer", "encode", out, "hello").output
    again = cli("tokenize", corpus, "-t", out, "-o", tmp_path / "again", "--val-fraction", "0.2", "--seed", "5")
    assert again.exit_code == 0, again.output
    for split in ("train", "val"):
        assert np.array_equal(np.concatenate(list(TokenShards.open(tmp_path / "again", split).iter_documents())),
                              np.concatenate(list(TokenShards.open(out, split).iter_documents()))), split

    bad = [
        (cli("tokenize", tokenizer, "-t", tokenizer, "-o", tmp_path / "a"), "expected a corpus artifact, got tokenizer"),
        (cli("tokenize", corpus, "-t", corpus, "-o", tmp_path / "b"), "expected a tokenizer, tokens or checkpoint artifact, got corpus"),
        # (several kinds would do: the step to the one this makes, where the line named none)
        (cli("tokenize", corpus, "-t", corpus, "-o", tmp_path / "b"), "; train one on it: llmkit tokenizer train"),
        (cli("tokenize", corpus, "-t", tokenizer, "-o", tmp_path / "c", "--val-fraction", "1.5"), "--val-fraction must be in [0, 1)"),
        (cli("tokenize", write_corpus_artifact(tmp_path / "empty", ["", ""]).path, "-t", tokenizer, "-o", tmp_path / "d"),
         "only empty documents"),
    ]
    for result, message in bad:
        assert result.exit_code in (1, 2) and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_fast_path_falls_back_when_it_disagrees(corpus, tokenizer, tokens, tmp_path, monkeypatch):
    """A fast encoder that gives other ids is caught by the spot checks; the run redoes itself with tokenizers."""
    import tiktoken

    from llmkit.data.tokenizer import SPLIT_PATTERN, TextTokenizer

    def bytes_only(self):  # no merges at all: every token a single byte, unlike the trained BPE
        ranks = {tok_bytes: idx for idx in range(self.vocab_size) if len(tok_bytes := self.id_to_bytes(idx)) == 1
                 and idx not in self.special_ids.values()}
        return tiktoken.Encoding(name="wrong", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={})

    monkeypatch.setattr(TextTokenizer, "fast_encoding", property(bytes_only))
    out = tokenize_corpus(corpus, tokenizer, tmp_path / "fallback", TokenizeConfig(
        val_fraction=0.1, shard_tokens=20_000, seed=3, workers=1))
    art = artifacts.load(out)
    assert art.stats["encoder"] == "tokenizers"
    assert art.fingerprint == artifacts.load(tokens).fingerprint


def test_the_first_batch_is_checked_past_its_first_documents_too(documents, tokenizer):
    from llmkit.tokenizer.encode_corpus import FIRST_CHECKS, _encode_batch, encoder_state

    state = encoder_state(load_tokenizer(tokenizer), True, False, 128)
    texts = [d for d in documents if d][:1000]
    assert len(texts) == 1000
    *_, checked, mismatch = _encode_batch((0, texts), state)
    assert (checked, mismatch) == (FIRST_CHECKS + len(range(FIRST_CHECKS, 1000, 128)), None)


def test_a_share_prints_in_figures_a_reader_can_compare():
    from llmkit.tokenizer.encode_corpus import _percent

    shown = [_percent(x) for x in (0, 3e-7, 4.1e-5, 0.0032, 0.00999, 0.05)]
    assert shown == ["0.0%", "<0.0001%", "0.0041%", "0.32%", "1.0%", "5.0%"]  # (1e-06% and 1% were printed)


def test_lopsided_split_warns(cli, tokenizer, tmp_path):
    # Two documents: too few to give whole ones, so each gives its tail and validation is 5%.
    corpus = write_corpus_artifact(tmp_path / "two", ["short one\n", "a much longer document\n" * 200]).path
    result = cli("tokenize", corpus, "-t", tokenizer, "-o", tmp_path / "even", "--seed", "0")
    assert result.exit_code == 0, result.output
    assert abs(artifacts.load(tmp_path / "even").stats["val_byte_fraction"] - 0.05) < 0.01 and "warning" not in result.output
    # ... and each part keeps the document's end-of-text: training keeps its document boundaries.
    from llmkit.data.shards import TokenShards

    eos = artifacts.load(tmp_path / "even").stats["eos_id"]
    for split in ("train", "val"):
        documents = list(TokenShards.open(tmp_path / "even", split).iter_documents())
        assert documents and all(int(doc[-1]) == eos for doc in documents), split
    # Ten documents, five of them most of the text (each under 2F of it: drawn whole): the one whole
    # document drawn cannot be 10% of it (seed 0 draws a short one)
    corpus = write_corpus_artifact(tmp_path / "ten", ["short one\n"] * 5 + ["a much longer document\n" * 40] * 5).path
    result = cli("tokenize", corpus, "-t", tokenizer, "-o", tmp_path / "tokens", "--seed", "0", "--val-fraction", "0.1")
    assert result.exit_code == 0, result.output
    share = artifacts.load(tmp_path / "tokens").stats["val_byte_fraction"]
    assert share < 0.05 or share > 0.2
    said = " ".join(result.output.split())
    assert f"warning: the validation split holds {100 * share:.2g}% of the text (asked 10%)" in said, said
    # (a handful drawn: their own sizes decide the share, whatever the corpus's sizes; "far from the average" misled
    # where 1 of 108,330 paragraphs was drawn)
    assert "drew 1 of 10, whose own sizes decide the share; raise --val-fraction" in said and "--doc-per blank-line" in said
    # One document too short for any tail: the warning names that, not whole documents
    one = write_corpus_artifact(tmp_path / "one", ["a"]).path
    result = cli("tokenize", one, "-t", tokenizer, "-o", tmp_path / "one-tokens", "--val-fraction", "0.5")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "its documents are too short to give a validation tail" in said and "whole documents" not in said, said


def test_tokenizer_of_a_checkpoint(corpus, tokenizer, tokens, tmp_path):
    from llmkit.data.tokenizer import copy_tokenizer_files

    with artifacts.create(tmp_path / "ckpt", "checkpoint") as build:
        copy_tokenizer_files(tokenizer, build.dir / "tokenizer")
        (build.dir / "model.safetensors").write_bytes(b"not needed here")
    out = tokenize_corpus(corpus, tmp_path / "ckpt", tmp_path / "tokens", TokenizeConfig(
        val_fraction=0.1, shard_tokens=20_000, seed=3, workers=1))
    art = artifacts.load(out)
    assert art.manifest.files == artifacts.load(tokens).manifest.files  # the very same shards
    assert {i["role"]: i["kind"] for i in art.manifest.inputs} == {"corpus": "corpus", "tokenizer": "checkpoint"}


@pytest.mark.parametrize("stage", ["clean", "tokenizer train", "tokenize"])
def test_a_data_stage_interrupted_while_it_finishes_keeps_its_work(stage, shared_data, corpus, tokenizer, tmp_path,
                                                                    monkeypatch):
    """Ctrl-C while the finished files are hashed for the manifest (minutes on a large output): the resume
    marker is still there, and the rerun continues from it to the artifact a straight run writes. (The stages
    dropped their markers before they finished: the whole run was lost.)"""
    import json

    from llmkit import resume
    from llmkit.corpus import pipeline
    from llmkit.corpus.config import CleanConfig

    if stage == "clean":  # two shards of a MiB, a marker at the first
        paragraphs = [p for p in (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()]
        data = tmp_path / "data.jsonl"
        data.write_text("".join(json.dumps({"text": t if copy == 0 else t[::-1]}) + "\n" for copy in range(2) for t in paragraphs),
                        encoding="utf-8")

        def make(out):
            pipeline.clean([str(data)], out, CleanConfig(shard_mb=1, workers=1), show_progress=False)
    elif stage == "tokenizer train":
        def make(out):
            train_tokenizer([corpus], out, TokenizerTrainConfig(vocab_size=1500, seed=0, workers=1))
    else:
        def make(out):
            tokenize_corpus(corpus, tokenizer, out, TokenizeConfig(batch_size=32, shard_tokens=20_000, workers=1))

    make(tmp_path / "straight")

    real_sha256_file = artifacts.sha256_file

    def interrupted(path, *args, **kwargs):  # (at the output's files; the inputs are hashed as they are read)
        if ".out.partial-" in str(path):
            raise KeyboardInterrupt
        return real_sha256_file(path, *args, **kwargs)

    out = tmp_path / "sub" / "out"
    with monkeypatch.context() as patch:
        patch.setattr(artifacts, "sha256_file", interrupted)
        with pytest.raises(KeyboardInterrupt):
            make(out)
    [partial] = out.parent.glob(".out.partial-*")
    assert (partial / "resume.json").is_file() and not out.exists()
    loaded, hashed = [], []
    load, sha256_file = resume.load, artifacts.sha256_file
    monkeypatch.setattr(resume, "load", lambda folder: loaded.append(load(folder)) or loaded[-1])
    monkeypatch.setattr(artifacts, "sha256_file", lambda path, *args: hashed.append(path.name) or sha256_file(path, *args))
    make(out)
    assert loaded and loaded[0] is not None  # continued from the marker, not started over
    # the marker's files (a de-duplication index, a sample log) are never read for the manifest
    assert hashed and not [name for name in hashed if name.startswith("resume") or name == "sample.jsonl"], hashed
    assert not partial.exists() and artifacts.verify(out).ok
    assert artifacts.load(out).fingerprint == artifacts.load(tmp_path / "straight").fingerprint


def test_a_killed_tokenize_resumes_from_its_last_marker_and_writes_the_same_artifact(corpus, tokenizer, tmp_path):
    import subprocess
    import sys

    from conftest import kill_at_marker, run_killed_and_resumed

    command = [sys.executable, "-m", "llmkit", "tokenize", str(corpus), "-t", str(tokenizer), "--batch-size", "32",
               "--workers", "1", "--shard-tokens", "20000"]
    straight, killed, _, _ = run_killed_and_resumed(command, tmp_path, lambda state: state["batches"], 16)
    assert artifacts.load(killed).fingerprint == artifacts.load(straight).fingerprint
    # The resumed run's speed counts what it encoded itself, not what the killed one had
    stats = artifacts.load(killed).stats
    total = stats["train"]["tokens"] + stats["val"]["tokens"]
    assert stats["tokens_per_s"] * stats["seconds"] < 0.99 * total, stats
    # ... and the fast path's checks count on from the marker
    assert artifacts.load(killed).manifest.runtime["encoder"] == "tiktoken"
    assert stats["fast_path_checked_documents"] == artifacts.load(straight).stats["fast_path_checked_documents"]
    # Another --batch-size (which changes no output) continues the same run: it started over
    rebatched = tmp_path / "rebatched"
    kill_at_marker([*command, "-o", str(rebatched)], str(tmp_path / ".rebatched.partial-*" / "resume.json"),
                   lambda state: state["batches"], 16)
    result = subprocess.run([*command[:command.index("--batch-size") + 1], "7", *command[command.index("--batch-size") + 2:],
                             "-o", str(rebatched)], capture_output=True, text=True)
    assert result.returncode == 0 and "resuming the interrupted run" in result.stderr, result.stderr
    assert artifacts.load(rebatched).fingerprint == artifacts.load(straight).fingerprint
    # Rerun with another seed (another validation draw): a new run, not the killed one's documents under a new name.

    other = tmp_path / "other-seed"
    kill_at_marker([*command, "-o", str(other)], str(tmp_path / ".other-seed.partial-*" / "resume.json"), lambda state: state["batches"], 16)
    result = subprocess.run([*command, "-o", str(other), "--seed", "1"], capture_output=True, text=True)
    assert result.returncode == 0 and "resuming" not in result.stderr, result.stderr
    reference = tmp_path / "seed-1"
    assert subprocess.run([*command, "-o", str(reference), "--seed", "1"], capture_output=True).returncode == 0
    assert artifacts.load(other).fingerprint == artifacts.load(reference).fingerprint != artifacts.load(straight).fingerprint


def test_automatic_worker_count_follows_corpus_size_and_idle_cores():
    from llmkit.tokenizer.encode_corpus import WORKER_BYTES, auto_workers

    assert auto_workers(WORKER_BYTES // 2, idle=8) == 1  # a small corpus: one thread, no extra CPU
    assert auto_workers(3 * WORKER_BYTES, idle=8) == 3
    assert auto_workers(100 * WORKER_BYTES, idle=8) == 8
    assert auto_workers(100 * WORKER_BYTES, idle=1) == 1  # another program keeps the other core busy
    assert auto_workers(None, idle=8) == 1


def test_busy_cores_sees_a_spinning_process_at_once():
    """--workers 0 measures the cores in use now; the load average would take a minute to notice."""
    import subprocess
    import sys

    from llmkit.runtime import busy_cores, idle_cores, worker_count

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores(window=0.5) >= 0.7
        assert idle_cores() < worker_count(0) or worker_count(0) == 1  # what clean's --workers 0 starts
    finally:
        spinner.kill()
        spinner.wait()


def test_core_meter_leaves_out_this_process_own_work(monkeypatch):
    """The idle-core measurement overlaps tokenize's own loading: the CPU this process spent in the
    window is not another program's. Two cores, 1.5 in use over a second, half a core of it ours."""
    from llmkit.runtime import CoreMeter

    meter = CoreMeter()
    meter.cores, meter.before = {"cpu0", "cpu1"}, (0, 0)
    meter.started, meter.own = time.monotonic() - 1.0, time.process_time() - 0.5
    monkeypatch.setattr(meter, "_sample", lambda: (50, 200))  # 50 idle of 200 ticks
    assert meter.busy() == pytest.approx(1.0, abs=0.05)
    monkeypatch.setattr("llmkit.runtime.worker_count", lambda requested: 2)
    assert meter.idle_cores() == 1


def test_a_document_split_inside_keeps_its_place_whatever_the_batch_size(tmp_path, tokenizer):
    """A book too small for whole validation documents (split inside: head to train, tail to
    validation) beside a folder of notes: its head was written after the rest of its batch, so the
    training order, and the fingerprint, changed with --batch-size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    book = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40
    notes = [f"note {i}: the weather is fine and the road is long." for i in range(60)]
    rows = [("notes", t) for t in notes[:30]] + [("book", book)] + [("notes", t) for t in notes[30:]]
    with artifacts.create(tmp_path / "corpus", "corpus") as build:
        (build.dir / "shards").mkdir()
        table = pa.table({"id": [f"d{i}" for i in range(len(rows))], "text": [t for _, t in rows], "source": [s for s, _ in rows]})
        pq.write_table(table, build.dir / "shards" / "part-00000.parquet")
        build.stats = {"documents": len(rows)}
    runs = {size: tokenize_corpus(tmp_path / "corpus", tokenizer, tmp_path / f"t{size}",
                                  TokenizeConfig(val_fraction=0.05, workers=1, batch_size=size)) for size in (1, 7, 2048)}
    assert artifacts.load(runs[1]).stats["split"]["documents_split_inside"] == 1
    assert len({artifacts.load(path).fingerprint for path in runs.values()}) == 1
    tok = load_tokenizer(tokenizer)
    train = [tok.decode(doc) for doc in TokenShards.open(runs[2048], "train").iter_documents()]
    book_at = next(i for i, text in enumerate(train) if text.startswith("First Citizen"))
    assert 25 <= book_at <= 30  # after the notes before it (some held out for validation), not after all of its batch
    # --add-bos: the held-out tail starts with the start token too, as every stored document does
    bos = tokenize_corpus(tmp_path / "corpus", tokenizer, tmp_path / "bos", TokenizeConfig(val_fraction=0.05, workers=1,
                                                                                          add_bos=True))
    for split in ("train", "val"):
        docs = list(TokenShards.open(bos, split).iter_documents())
        assert docs and all(doc[0] == tok.bos_id and doc[-1] == tok.eos_id for doc in docs), split
    tail = next(doc for doc in TokenShards.open(bos, "val").iter_documents() if "First Citizen" in tok.decode(doc))
    assert tok.decode(tail[1:]).strip() and not tok.decode(tail[1:]).startswith("First Citizen")


def test_a_document_split_inside_is_cut_between_whole_characters(tmp_path, tokenizer):
    """Chinese text in byte tokens (3 a character): the cut by token count fell inside a character,
    and the head ended, the tail began, with half of it (U+FFFD, trained on before <|eos|>)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tok = load_tokenizer(tokenizer)
    for repeats in (40, 41, 42):
        book = "满纸荒唐言，一把辛酸泪。" * repeats
        with artifacts.create(tmp_path / f"corpus{repeats}", "corpus") as build:
            (build.dir / "shards").mkdir()
            pq.write_table(pa.table({"id": ["book"], "text": [book], "source": ["book"]}), build.dir / "shards" / "part-00000.parquet")
            build.stats = {"documents": 1}
        out = tokenize_corpus(tmp_path / f"corpus{repeats}", tokenizer, tmp_path / f"t{repeats}",
                              TokenizeConfig(val_fraction=0.05, workers=1))
        [head] = [tok.decode(doc[:-1]) for doc in TokenShards.open(out, "train").iter_documents()]
        [tail] = [tok.decode(doc[:-1]) for doc in TokenShards.open(out, "val").iter_documents()]
        assert "\ufffd" not in head + tail and head + tail == book, repeats
    # a character that starts the document: past it (the walk back stopped at the first token, inside it), also under
    # --add-bos; a document of that character alone trains whole
    for book, add_bos in (("😀 the king", False), ("😀 the king", True), ("😀", False), ("😀", True)):
        name = f"emoji{len(book)}{add_bos}"
        with artifacts.create(tmp_path / name, "corpus") as build:
            (build.dir / "shards").mkdir()
            pq.write_table(pa.table({"id": ["book"], "text": [book], "source": ["book"]}), build.dir / "shards" / "part-00000.parquet")
            build.stats = {"documents": 1}
        out = tokenize_corpus(tmp_path / name, tokenizer, tmp_path / f"t{name}", TokenizeConfig(val_fraction=0.5, workers=1,
                                                                                              add_bos=add_bos))
        skip = 1 if add_bos else 0
        splits = ("train", "val") if len(book) > 1 else ("train",)  # (one character: no val split, said on opening it)
        parts = [tok.decode(doc[skip:-1]) for split in splits for doc in TokenShards.open(out, split).iter_documents()]
        assert "\ufffd" not in "".join(parts) and "".join(parts) == book, (book, add_bos, parts)


def test_documents_without_a_source_form_their_own_group(tmp_path):
    """The held-out split is drawn per source; a null source is a group of its own (not the first
    source of its batch), also in a batch where every source is null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmkit.tokenizer.encode_corpus import document_groups

    with artifacts.create(tmp_path / "corpus", "corpus") as build:
        (build.dir / "shards").mkdir()
        sources = [["a", None, "b", "a", None], [None, None]]
        for n, part in enumerate(sources):
            texts = [f"document {n}-{i}" for i in range(len(part))]
            table = pa.table({"id": texts, "text": texts, "source": pa.array(part, type=pa.string())})
            pq.write_table(table, build.dir / "shards" / f"part-{n:05d}.parquet")
        build.stats = {"documents": 7}
    groups = document_groups(artifacts.load(tmp_path / "corpus")).tolist()
    assert len(groups) == 7
    a, null, b = groups[0], groups[1], groups[2]
    assert len({a, null, b}) == 3 and groups[3] == a and groups[4] == groups[5] == groups[6] == null


def test_a_text_file_given_to_tokenize_points_at_clean(cli, tmp_path):
    (tmp_path / "book.txt").write_text("To be, or not to be.\n", encoding="utf-8")
    result = cli("tokenize", tmp_path / "book.txt", "-t", tmp_path / "tok", "-o", tmp_path / "tokens")
    assert result.exit_code != 0
    assert f"make a corpus of it first: llmkit clean {tmp_path / 'book.txt'} -o CORPUS" in result.output
    assert not (tmp_path / "tokens").exists()
    (tmp_path / "books").mkdir()  # a folder of them: the same advice (it said to rerun the stage that made it)
    (tmp_path / "books" / "book.txt").write_text("To be, or not to be.\n", encoding="utf-8")
    result = cli("tokenize", tmp_path / "books", "-t", tmp_path / "tok", "-o", tmp_path / "tokens")
    assert result.exit_code == 1 and not (tmp_path / "tokens").exists()
    assert f"folder of data files, not an llmkit artifact (no manifest.json); make a corpus of it first: llmkit clean " \
           f"{tmp_path / 'books'} -o CORPUS" in " ".join(result.output.split())


def test_a_checkpoints_tokenizer_folder_points_at_the_checkpoint(cli, tmp_path, corpus, tokenizer):
    """encode and decode read a checkpoint's tokenizer/ copy; tokenize said it was no artifact, to be rebuilt."""
    checkpoint = tmp_path / "ckpt"
    with artifacts.create(checkpoint, "checkpoint") as build:
        shutil.copytree(tokenizer, build.dir / "tokenizer", ignore=shutil.ignore_patterns("manifest.json"))
    result = cli("tokenize", corpus, "-t", checkpoint / "tokenizer", "-o", tmp_path / "tokens")
    assert result.exit_code == 1 and not (tmp_path / "tokens").exists()
    assert f"is the tokenizer inside the checkpoint artifact {checkpoint}, not an artifact itself; pass {checkpoint}" \
           in " ".join(result.output.split())
    # where a checkpoint is not what is asked for (the corpus), it is not offered
    result = cli("tokenize", checkpoint / "tokenizer", "-t", tokenizer, "-o", tmp_path / "tokens")
    assert result.exit_code == 1 and "inside the checkpoint artifact" in result.output
    assert "not a corpus artifact; a corpus artifact comes from llmkit clean" in " ".join(result.output.split())
    # a file of an artifact (its tokenizer.json, its checkpoint's): the artifact named (it said "make one" or nothing)
    for given, holder in ((tokenizer / "tokenizer.json", tokenizer), (checkpoint / "tokenizer" / "tokenizer.json", checkpoint)):
        result = cli("tokenize", corpus, "-t", given, "-o", tmp_path / "tokens")
        said = " ".join(result.output.split())
        assert result.exit_code == 1 and f"{given} is a file of the {artifacts.manifest_kind(holder)} artifact {holder}; pass {holder}" in said, said
    result = cli("tokenize", checkpoint / "manifest.json", "-t", tokenizer, "-o", tmp_path / "tokens")
    assert "is a file of the checkpoint artifact" in result.output and "not a corpus artifact" in " ".join(result.output.split())
    # a transformers folder whose weights are pickled holds config.json (JSON): still named a model folder
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "hf" / "pytorch_model.bin").write_bytes(b"")
    result = cli("tokenize", tmp_path / "hf", "-t", tokenizer, "-o", tmp_path / "tokens")
    assert result.exit_code == 1 and "is a transformers model folder, not an llmkit artifact" in result.output
    (tmp_path / "hf-tokenizer").mkdir()  # what a tokenizer's save_pretrained writes: no data to clean
    for name, text in (("vocab.json", "{}"), ("merges.txt", "#version: 0.2\n"), ("tokenizer_config.json", "{}")):
        (tmp_path / "hf-tokenizer" / name).write_text(text)
    result = cli("tokenize", tmp_path / "hf-tokenizer", "-t", tokenizer, "-o", tmp_path / "tokens")
    assert result.exit_code == 1 and "is a transformers tokenizer folder, not an llmkit artifact" in result.output
    (tmp_path / "notes").mkdir()  # a data folder that holds a config.json beside its text: still data
    (tmp_path / "notes" / "config.json").write_text("{}")
    (tmp_path / "notes" / "notes.txt").write_text("To be, or not to be.\n")
    result = cli("tokenize", tmp_path / "notes", "-t", tokenizer, "-o", tmp_path / "tokens")
    assert result.exit_code == 1 and "make a corpus of it first" in result.output


def test_a_vocabulary_with_gaps_in_its_ids_is_refused(tmp_path, corpus, tokenizer):
    """A hand-made tokenizer.json whose ids skip some (600 tokens, one of them id 70000) gave uint16 shards,
    id 70000 stored as 4464; importing such a tokenizer made a token_bytes.npy without that token."""
    from tokenizers import Tokenizer

    from llmkit.data.tokenizer import token_byte_lengths

    data = json.loads((Path(tokenizer) / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    renumbered = max(vocab, key=vocab.get)  # the last merge's token: common in text
    vocab[renumbered] = 70000
    holes = tmp_path / "holes"
    with artifacts.create(holes, "tokenizer") as build:
        for name in os.listdir(tokenizer):
            if name != "manifest.json" and (Path(tokenizer) / name).is_file():
                shutil.copy(Path(tokenizer) / name, build.dir / name)
        (build.dir / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    hf = Tokenizer.from_file(str(holes / "tokenizer.json"))
    with pytest.raises(UserError, match="ids are not 0..1499: it has 1,500 tokens and id 70,000; renumber"):
        token_byte_lengths(hf)
    small = write_corpus_artifact(tmp_path / "small", ["a text without the renumbered token"] * 20).path
    with pytest.raises(UserError, match="ids are not 0..1499: it has 1,500 tokens and id 70,000; renumber"):
        tokenize_corpus(small, holes, tmp_path / "tokens", TokenizeConfig(workers=1))  # (refused before any is encoded)
    assert not (tmp_path / "tokens").exists()


def test_a_training_split_left_only_empty_documents_names_val_fraction(tokenizer, tmp_path):
    """One document is kept for training whatever --val-fraction asks; an empty one drawn for it was
    "the corpus has only empty documents", of a corpus with three that are not."""
    from llmkit.errors import UserError

    corpus = write_corpus_artifact(tmp_path / "corpus", ["", "hello world one", "hello world two", "hello world three"]).path
    said = []
    for seed in range(12):  # (the seeds whose draw leaves training the empty document)
        try:
            tokenize_corpus(corpus, tokenizer, tmp_path / f"t{seed}", TokenizeConfig(val_fraction=0.9, seed=seed, workers=1))
        except UserError as error:
            said.append(str(error))
    assert said and all("--val-fraction 0.9 left the training split" in s and "lower --val-fraction" in s for s in said), said


def test_a_corpus_of_a_few_documents_is_tokenized_without_pandas(tokenizer, tmp_path):
    """The held-out split of a corpus of a few documents (`clean` of a few files) reads their sizes:
    from the text column's offsets, not pyarrow.compute, whose `fill_null` imported pandas (0.26
    CPU-s of a run of a few seconds)."""
    import subprocess
    import sys

    corpus = write_corpus_artifact(tmp_path / "corpus", ["To be, or not to be.\n" * 200, "Sein oder nicht sein.\n" * 50]).path
    probe = ("import sys; from llmkit.cli import app\n"
             "try:\n    app(sys.argv[1:])\nexcept SystemExit as stop:\n    assert not stop.code, stop.code\n"
             "print(sorted(m for m in ('pandas', 'pyarrow.compute') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe, "tokenize", str(corpus), "-t", str(tokenizer), "-o", str(tmp_path / "tokens")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert artifacts.load(tmp_path / "tokens", kind="tokens").stats["split"]["documents_split_inside"] == 2  # the sizes were read
