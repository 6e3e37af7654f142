"""`llmkit tokenizer train|encode|decode` and the shared loader llmkit/data/tokenizer.py."""

from __future__ import annotations

import json
import re
import shutil
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmkit import artifacts
from llmkit.data.corpus import write_corpus_artifact
from llmkit.data.tokenizer import (
    DEFAULT_SPECIAL_TOKENS,
    copy_tokenizer_files,
    load_tokenizer,
    piece_to_bytes,
)
from llmkit.errors import UserError
from llmkit.tokenizer.train import TokenizerTrainConfig, train_tokenizer


def sample_documents(shared_data, english_chars=300_000, chinese_chars=100_000):
    """Real documents: Shakespeare paragraphs and lines of 红楼梦."""
    english = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:english_chars].split("\n\n")
    chinese = (shared_data / "chinese.txt").read_text(encoding="utf-8")[:chinese_chars].split("\n")
    return [d for d in english + chinese if d.strip()]


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory):
    return write_corpus_artifact(tmp_path_factory.mktemp("c") / "corpus", sample_documents(shared_data), docs_per_shard=700).path


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("t") / "tok"
    return train_tokenizer([corpus], out, TokenizerTrainConfig(vocab_size=2000, seed=0))


@pytest.fixture(scope="module")
def tok(trained):
    return load_tokenizer(trained)


def test_artifact_layout_specials_and_stats(trained, tok):
    art = artifacts.load(trained, kind="tokenizer")
    assert {"tokenizer.json", "token_bytes.npy"} <= set(art.manifest.files)
    assert art.config["special_tokens"] == list(DEFAULT_SPECIAL_TOKENS)
    assert [tok.hf.id_to_token(i) for i in range(7)] == list(DEFAULT_SPECIAL_TOKENS)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id) == (0, 1, 2, 3)
    assert tok.special_ids["<|assistant|>"] == 6
    assert tok.vocab_size == art.stats["vocab_size"] == 2000
    assert art.stats["heldout_pieces"] > 0
    # Held-out compression is real: more than one byte per token, a word is a token or two.
    assert 2.0 < art.stats["bytes_per_token"] < 6.0
    assert 1.0 < art.stats["tokens_per_word"] < 2.5
    assert [i["role"] for i in art.manifest.inputs] == ["corpus"]


def test_token_bytes_table(tok):
    assert tok.token_bytes.dtype == np.int32 and tok.token_bytes.shape == (tok.vocab_size,)
    assert (tok.token_bytes[:7] == 0).all()
    for idx in range(7, tok.vocab_size, 37):
        assert tok.token_bytes[idx] == len(tok.id_to_bytes(idx)) > 0
    # Summing token_bytes over an encoding gives the text's UTF-8 length (what bits-per-byte needs).
    text = "To be, or not to be: 宝玉笑道 🎉"
    assert tok.token_bytes[tok.encode(text)].sum() == len(text.encode("utf-8"))


def test_loads_unchanged_with_tokenizers_and_copies(trained, tok, tmp_path):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(trained / "tokenizer.json"))
    text = "First Citizen: Before we proceed any further, hear me speak. 贾母"
    assert raw.encode(text).ids == tok.encode(text)
    copied = copy_tokenizer_files(trained, tmp_path / "copy")
    assert load_tokenizer(copied).encode(text) == tok.encode(text)


def test_pre_tokenizer_splits_numbers_words_and_cjk(tok):
    pieces = [p for p, _ in tok.hf.pre_tokenizer.pre_tokenize_str("GPT模型 costs 1234567 dollars")]
    raw = [piece_to_bytes(p).decode("utf-8") for p in pieces]
    assert raw == ["GPT", "模型", " costs", " ", "123", "456", "7", " dollars"]
    # katakana words hold their prolonged sound and half-width voicing marks (script Common, not Katakana)
    for text, expected in (("データベース", ["データベース"]), ("カレーrice", ["カレー", "rice"]), ("ｶﾞｲﾄﾞ GPT", ["ｶﾞｲﾄﾞ", " GPT"])):
        pieces = [piece_to_bytes(p).decode("utf-8") for p, _ in tok.hf.pre_tokenizer.pre_tokenize_str(text)]
        assert pieces == expected, text
    assert tok.fast_encoding.encode_ordinary("コーヒーとカレーrice、ｶｰﾄﾞ") == tok.encode("コーヒーとカレーrice、ｶｰﾄﾞ")


def test_a_tokenizer_trained_with_the_earlier_split_keeps_it_and_its_fast_path(trained, tmp_path):
    """Until 2026-12-05 the split left ー out of CJK runs: such a tokenizer splits as it was trained
    to, and tiktoken, given that split too, gives its ids."""
    from tokenizers import Tokenizer

    from llmkit.data.tokenizer import _CJK, _CJK_BEFORE_2026_12_05, FAST_SPLITS

    data = json.loads((trained / "tokenizer.json").read_text(encoding="utf-8"))
    split = data["pre_tokenizer"]["pretokenizers"][0]["pattern"]
    split["Regex"] = split["Regex"].replace(_CJK, _CJK_BEFORE_2026_12_05)
    with artifacts.create(tmp_path / "earlier", "tokenizer") as build:
        (build.dir / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
        (build.dir / "token_bytes.npy").write_bytes((trained / "token_bytes.npy").read_bytes())
    earlier = load_tokenizer(tmp_path / "earlier")
    pieces = [p for p, _ in earlier.hf.pre_tokenizer.pre_tokenize_str("コーヒー")]
    assert [piece_to_bytes(p).decode("utf-8") for p in pieces] == ["コ", "ー", "ヒ", "ー"]
    assert earlier.fast_encoding is not None and earlier.fast_encoding._pat_str == FAST_SPLITS[split["Regex"]] != \
        FAST_SPLITS[json.loads((trained / "tokenizer.json").read_text(encoding="utf-8"))["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]]
    text = "コーヒーとカレーrice、ｶｰﾄﾞ: the end"
    assert earlier.fast_encoding.encode_ordinary(text) == earlier.encode(text) == \
        Tokenizer.from_str(json.dumps(data)).encode(text, add_special_tokens=False).ids


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_round_trip_arbitrary_unicode(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert not set(ids) & set(tok.special_ids.values())


@pytest.mark.parametrize(
    "text",
    ["", " ", "\n\n\t ", "宝玉笑道：“好妹妹。”", "👩‍👩‍👧‍👦🎉🇺🇳", "naïve café ﬁ", "a\u0301\u200b\ufeff", "\U0010ffff\x00\x7f",
     "  leading and trailing  ", "1234567890" * 5],
)
def test_round_trip_edge_cases(tok, text):
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.one_of(st.sampled_from(DEFAULT_SPECIAL_TOKENS), st.text(max_size=10)), max_size=8).map("".join)
)
def test_special_tokens_never_produced_from_text(tok, text):
    ids = tok.encode(text)
    assert not set(ids) & set(tok.special_ids.values())
    assert tok.decode(ids) == text


def test_special_tokens_are_never_split(trained, tok):
    from tokenizers import Tokenizer

    # Where a library does match special tokens in text (tokenizers' default, transformers), each is one id.
    raw = Tokenizer.from_file(str(trained / "tokenizer.json"))
    for name, idx in tok.special_ids.items():
        assert raw.encode(f"a{name}b").ids == raw.encode("a").ids + [idx] + raw.encode("b").ids
        assert tok.token_bytes[idx] == 0 and tok.id_to_bytes(idx) == name.encode()
    # No merge ever produced a piece of a special token's text as a single learned token.
    assert all(name not in piece for piece in tok.hf.get_vocab() for name in tok.special_ids if piece != name)


def test_special_ids_decode_whole(tok):
    ids = [tok.bos_id] + tok.encode("hello") + [tok.eos_id, tok.special_ids["<|user|>"]]
    assert tok.decode(ids) == "<|bos|>hello<|eos|><|user|>"
    assert tok.decode(ids, skip_special_tokens=True) == "hello"
    assert tok.id_to_piece(tok.eos_id) == "<|eos|>"


def test_stats_count_special_token_text_as_the_text_tokenize_makes_of_it(trained, tok):
    from tokenizers import Tokenizer

    from llmkit.tokenizer.train import measure

    text = "a <|eos|> b"
    assert measure(Tokenizer.from_file(str(trained / "tokenizer.json")), [text])["tokens"] == len(tok.encode(text)) > 3


def test_a_tokenizer_with_a_non_special_added_token_keeps_the_tokenizers_path(trained, tmp_path):
    """tokenizers matches an added token before BPE; tiktoken has no such step and would spell it in bytes."""
    from tokenizers import Tokenizer

    from llmkit.data.tokenizer import compute_token_bytes

    hf = Tokenizer.from_file(str(trained / "tokenizer.json"))
    hf.add_tokens(["<|far|>"])
    with artifacts.create(tmp_path / "added", "tokenizer") as build:
        hf.save(str(build.dir / "tokenizer.json"))
        np.save(build.dir / "token_bytes.npy", compute_token_bytes(hf), allow_pickle=False)
    added = load_tokenizer(tmp_path / "added")
    assert added.fast_encoding is None
    assert added.encode("x <|far|> y") == hf.encode("x <|far|> y", add_special_tokens=False).ids
    assert hf.token_to_id("<|far|>") in added.encode("x <|far|> y")


def test_fast_path_gives_identical_ids(shared_data, tok):
    fast = tok.fast_encoding
    assert fast is not None
    docs = sample_documents(shared_data, english_chars=1_200_000, chinese_chars=400_000)
    assert fast.encode_ordinary_batch(docs) == tok.encode_batch(docs)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_fast_path_identical_on_arbitrary_unicode(tok, text):
    assert tok.fast_encoding.encode_ordinary(text) == tok.encode(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=" \t\n\r\u3000\u00a0\x0bab1'.,。字カ👍", max_size=60))
def test_fast_path_identical_on_space_runs(tok, text):
    """tiktoken runs a regrouped split pattern: the same pieces, above all at runs of spaces, the one
    place the pattern needs a lookahead."""
    assert tok.fast_encoding.encode_ordinary(text) == tok.encode(text)


@pytest.mark.parametrize(
    "text",
    ["line\r\nnext\r\n\r\n  indented", "GPT模型の説明カタカナ123４５６", "한국어 텍스트입니다", "ภาษาไทย", "٣٤٥٦ عربى",
     "Ünïcödé ﬁ e\u0301", "tabs\t\tand  spaces   ", "it's we're THEY'LL I'M", "emoji👍🏽 flags🇩🇪 zwj👩‍💻", "<|eos|><|bos|>",
     "a" * 5000, "。。。！？《》「」", "\u2028\u2029\x85\x0b\x0c"],
)
def test_fast_path_identical_edge_cases(tok, text):
    assert tok.fast_encoding.encode_ordinary(text) == tok.encode(text)
    assert tok.decode(tok.encode(text)) == text


def test_byte_level_pieces_to_bytes(tok):
    """The fast path's table of pieces to bytes (str.translate, no per-character Python) gives what
    piece_to_bytes gives for every piece of a trained vocabulary, and keeps '<0x0A>' six bytes
    (SentencePiece's byte-token reading is for imported vocabularies only)."""
    from llmkit.data.tokenizer import byte_level_bytes, piece_to_bytes

    specials = set(tok.special_ids)
    pieces = [p for p in tok.hf.get_vocab() if p not in specials]
    assert len(pieces) > 1000 and all(byte_level_bytes(p) == piece_to_bytes(p) for p in pieces)
    assert byte_level_bytes("\u0120world") == b" world" and byte_level_bytes("<0x0A>") == b"<0x0A>"


def test_transformers_fast_tokenizer_gives_same_ids(shared_data, trained, tok):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(trained / "tokenizer.json"))
    for text in sample_documents(shared_data, 20_000, 5_000)[:50] + ["mixed 中文 and emoji 🎉 12345"]:
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
        assert hf.decode(tok.encode(text)) == text


def test_same_inputs_same_fingerprint(corpus, trained, tmp_path):
    again = train_tokenizer([corpus], tmp_path / "again", TokenizerTrainConfig(vocab_size=2000, seed=0))
    assert artifacts.load(again).fingerprint == artifacts.load(trained).fingerprint
    other = train_tokenizer([corpus], tmp_path / "other", TokenizerTrainConfig(vocab_size=1000, seed=0))
    assert artifacts.load(other).fingerprint != artifacts.load(trained).fingerprint


def test_sample_options_limit_training(corpus, tmp_path):
    by_docs = train_tokenizer([corpus], tmp_path / "d", TokenizerTrainConfig(vocab_size=500, max_docs=100, seed=0))
    assert artifacts.load(by_docs).stats["training_pieces"] == 100
    by_bytes = train_tokenizer([corpus], tmp_path / "b", TokenizerTrainConfig(vocab_size=500, sample_bytes=50_000, seed=1))
    stats = artifacts.load(by_bytes).stats
    assert 40_000 <= stats["training_bytes"] < 60_000  # about --sample-bytes: each piece drawn at its rate
    # The draw's odds follow the corpus's byte count, a stat outside its fingerprint: the tokenizer records it.
    import shutil

    edited = tmp_path / "edited-corpus"
    shutil.copytree(corpus, edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["stats"]["bytes"] *= 10
    (edited / "manifest.json").write_text(json.dumps(manifest))
    again = train_tokenizer([edited], tmp_path / "b2", TokenizerTrainConfig(vocab_size=500, sample_bytes=50_000, seed=1))
    recorded = [artifacts.load(run).manifest.config["input"]["bytes"] for run in (by_bytes, again)]
    assert recorded[1] == 10 * recorded[0] and artifacts.load(again).fingerprint != artifacts.load(by_bytes).fingerprint
    with pytest.raises(UserError, match="--sample-bytes 10 drew no document from the input's"):
        train_tokenizer([corpus], tmp_path / "none", TokenizerTrainConfig(vocab_size=500, sample_bytes=10, seed=1))
    assert not (tmp_path / "none").exists()


def test_a_vocabulary_larger_than_the_input_holds_is_said(cli, tmp_path):
    (tmp_path / "tiny.txt").write_text("the cat sat on the mat\n" * 50, encoding="utf-8")
    assert cli("clean", tmp_path / "tiny.txt", "-o", tmp_path / "corpus").exit_code == 0
    result = cli("tokenizer", "train", tmp_path / "corpus", "-o", tmp_path / "tok", "--vocab-size", "5000")
    assert result.exit_code == 0, result.output
    size = artifacts.load(tmp_path / "tok").stats["vocab_size"]
    said = " ".join(result.output.split())
    assert size < 5000 and f"the tokenizer has {size:,}" in said and "fewer than --vocab-size 5,000" in said
    assert "warning: the input held only" in said  # (a model on it has another embedding size than asked: a warning)


def test_a_long_run_without_spaces_is_cut_for_training_and_encodes_whole(cli, shared_data, tmp_path):
    """BPE training time grows with the square of a word's length: a 300,000-letter run took 127 s
    before training cut runs at LONGEST_RUN characters (the bound below only guards against that)."""
    import random
    import time

    from tokenizers import Regex, pre_tokenizers

    from llmkit.data.tokenizer import SPLIT_PATTERN, load_tokenizer
    from llmkit.tokenizer.long_pretokens import LONGEST_RUN, cut_long_pretokens

    split = pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False)

    def cut(text: str) -> list[str]:
        """The pieces, checked to join back to the text and to hold no pre-token past LONGEST_RUN."""
        parts = list(cut_long_pretokens([text]))
        assert "".join(parts) == text and all(parts)
        assert max(len(piece) for part in parts for piece, _ in split.pre_tokenize_str(part)) <= LONGEST_RUN
        return parts

    assert len(cut("ab " + "x" * 2500 + " cd\n" + "y" * LONGEST_RUN + " z")) == 3  # (the x's, not the y's)
    assert cut("no long run here") == ["no long run here"]
    # Chinese prose: runs of thousands of characters without a space, pre-tokens of a few: not cut (it was, every
    # 1,024 characters, and trained otherwise than raw tokenizers)
    zh = next(line.strip() for line in (shared_data / "chinese.txt").read_text(encoding="utf-8").splitlines()
              if len(line.strip()) > LONGEST_RUN + 500 and not any(c.isspace() for c in line.strip()))
    assert cut(zh) == [zh]
    assert len(cut(zh[:100] + "x" * 2000 + zh[:100])) == 2  # (a letter run inside it is one pre-token: cut)
    # each of these is one pre-token past LONGEST_RUN (or holds one), cut: Kangxi radicals among Han (symbols that
    # Python's \w leaves out), a word after a quote, blank lines (200,000 took 21 s to train), ideographic spaces,
    # dashes then newlines (one pre-token)
    for long in ("一⼀" * 700, "x'" + "a" * 3000, "a\n" + "\n" * 3000 + "b", "中" + "\u3000" * 3000 + "文",
                 "--" + "_" * 512 + "\n" * 1024):
        assert len(cut(long)) >= 2, long[:8]
    # no pre-token that long: given whole (1,001 newlines then 599 spaces are two pre-tokens; minified code without
    # a space is many short ones)
    for whole in ("Title\n" + "\n" * 1000 + " " * 600 + "Body text.", "a=1;(x){y.b+1234};" * 1000):
        assert cut(whole) == [whole]
    random.seed(0)
    dna = "".join(random.choice("ACGT") for _ in range(300_000))
    book = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:100_000]
    (tmp_path / "docs.txt").write_text(book + "\n\n" + dna + "\n", encoding="utf-8")
    assert cli("clean", tmp_path / "docs.txt", "-o", tmp_path / "corpus", "--doc-per", "blank-line").exit_code == 0
    started = time.perf_counter()
    result = cli("tokenizer", "train", tmp_path / "corpus", "-o", tmp_path / "tok", "--vocab-size", "1000")
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - started < 60
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.decode(tok.encode(dna)) == dna and len(tok.encode(dna)) < len(dna) / 2  # it learnt the run's pairs


def test_a_byte_sample_spans_every_input_and_any_worker_count_draws_the_same(shared_data, tmp_path, monkeypatch):
    """--sample-bytes draws across all inputs (the Chinese file after Shakespeare is in it), read in ranges
    that start at paragraphs; one process and two processes read and draw the same sample."""
    import functools

    import llmkit.tokenizer.sample as sample

    english, chinese = tmp_path / "english.txt", tmp_path / "chinese.txt"
    english.write_text((shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:400_000], encoding="utf-8")
    chinese.write_text((shared_data / "chinese.txt").read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    total = english.stat().st_size + chinese.stat().st_size
    monkeypatch.setattr(sample, "text_file_ranges", functools.partial(sample.text_file_ranges, max_bytes=50_000))
    assert len(sample.open_source([english, chinese]).tasks) > 8
    config = dict(vocab_size=700, sample_bytes=total // 5, seed=3)
    one = train_tokenizer([english, chinese], tmp_path / "one", TokenizerTrainConfig(**config))
    two = train_tokenizer([english, chinese], tmp_path / "two", TokenizerTrainConfig(**config, workers=2))
    assert artifacts.load(two).fingerprint == artifacts.load(one).fingerprint
    assert artifacts.load(two).manifest.runtime["workers"] == min(2, os.cpu_count())
    stats = artifacts.load(one).stats
    assert 0.7 * total // 5 <= stats["training_bytes"] <= 1.3 * total // 5 and stats["heldout_pieces"] > 0  # pieces of up to 48 KB
    vocabulary = load_tokenizer(one).hf.get_vocab()
    assert any("\u4e00" <= char <= "\u9fff" for piece in vocabulary for char in load_tokenizer(one).hf.decode([vocabulary[piece]]))
    other_seed = train_tokenizer([english, chinese], tmp_path / "seed", TokenizerTrainConfig(**{**config, "seed": 4}))
    assert artifacts.load(other_seed).stats["training_bytes"] != stats["training_bytes"]


def test_a_byte_sample_draws_the_end_of_the_input_at_the_same_rate(shared_data, tmp_path):
    """The draw ran at 1.1 times --sample-bytes' rate and stopped once the sample was full, about
    9 % before the end of the input: a small input given last was sampled at half the rate or not
    at all (a Chinese file after Shakespeare: no Han character in the vocabulary)."""
    from llmkit.data.corpus import write_corpus_artifact
    from llmkit.executor import Execution
    from llmkit.tokenizer.sample import Sampler, open_source

    english = [p for p in (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()]
    chinese = [line for line in (shared_data / "chinese.txt").read_text(encoding="utf-8").split("\n") if line.strip()][:100]
    corpus = write_corpus_artifact(tmp_path / "corpus", english + chinese, docs_per_shard=2000).path
    source = open_source([corpus])
    total = source.total_bytes
    assert sum(len(t.encode()) for t in chinese) < 0.06 * total  # the last input: inside the tail that went unread
    sampler = Sampler(TokenizerTrainConfig(vocab_size=300, sample_bytes=total // 4, seed=0), total)
    drawn = list(sampler.training_texts(source, Execution(), 1, lambda size: None))
    share = {name: sum(t in drawn_set for t in docs) / len(docs)
             for name, docs, drawn_set in (("english", english, set(drawn)), ("chinese", chinese, set(drawn)))}
    assert 0.18 < share["english"] < 0.32 and 0.15 < share["chinese"] < 0.35, share


def test_a_sample_log_shorter_than_its_marker_starts_over(tmp_path, capsys):
    """The marker counts the log's bytes; a log that lost some (a machine that crashed before they
    reached the disk) is not replayed with a tail of zeros: the run reads its input again."""
    from llmkit import resume
    from llmkit.tokenizer.sample import SAMPLE_LOG, Sampler

    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / SAMPLE_LOG).write_bytes(b'{"pieces": ["a"], "sizes": [1], "train": [true], "heldout": [false], "read_bytes": 1}\n')
    resume.save(folder, {"tasks": 2, "log_bytes": 4096}, {})
    replay = Sampler(TokenizerTrainConfig(vocab_size=300), 100)._replay(folder, lambda size: None)
    assert list(replay) == [] and not (folder / SAMPLE_LOG).exists() and resume.load(folder) is None
    assert "sample log is incomplete" in capsys.readouterr().err


def test_text_files_as_input(shared_data, tmp_path):
    path = tmp_path / "small.txt"
    path.write_text((shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:50_000], encoding="utf-8")
    out = train_tokenizer([path], tmp_path / "tok", TokenizerTrainConfig(vocab_size=400, seed=0))
    art = artifacts.load(out)
    assert art.config["input"]["files"][0]["name"] == "small.txt"
    assert art.manifest.inputs == []
    assert load_tokenizer(out).decode(load_tokenizer(out).encode("Citizen")) == "Citizen"
    # a paragraph's document keeps the blank line after it: the paragraph break is learnt, as from a corpus
    assert "ĊĊ" in json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    # a byte order mark opening a file is no text to learn (clean drops it too)
    marked = tmp_path / "marked.txt"
    marked.write_bytes(b"\xef\xbb\xbfHello world with a mark\n")
    trained = train_tokenizer([marked], tmp_path / "tok-bom", TokenizerTrainConfig(vocab_size=300, min_frequency=1, seed=0))
    vocab = json.loads((trained / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    assert "Hello" in vocab or "ĠHello" in vocab  # (the merges reached the first word)
    assert not any("ï»¿" in piece for piece in vocab), [piece for piece in vocab if "ï»¿" in piece]


def test_cli_train_encode_decode(cli, corpus, tmp_path):
    out = tmp_path / "tok"
    result = cli("tokenizer", "train", corpus, "-o", out, "--vocab-size", "600", "--min-frequency", "3", "--max-docs", "300")
    assert result.exit_code == 0, result.output
    art = artifacts.load(out)
    assert art.config["vocab_size"] == 600 and art.config["min_frequency"] == 3 and art.config["max_docs"] == 300
    tok = load_tokenizer(out)
    result = cli("tokenizer", "encode", out, "the king 王")
    assert result.exit_code == 0, result.output
    ids = tok.encode("the king 王")
    assert " ".join(map(str, ids)) in result.output and "␣" in result.output and f"{len(ids)} tokens" in result.output
    result = cli("tokenizer", "decode", out, *ids)
    assert result.exit_code == 0 and "the king 王" in result.output
    refused = cli("tokenizer", "decode", out, "99999")
    assert refused.exit_code == 2 and "outside the vocabulary" in refused.output
    # decoded text printed as it is (a console expanded tabs and dropped carriage returns)
    text = "a\tb\r\nc  d"
    result = cli("tokenizer", "decode", out, *tok.encode(text))
    assert result.exit_code == 0 and result.stdout_bytes == (text + "\n").encode(), repr(result.stdout_bytes)
    import io

    from llmkit import console

    screen = io.StringIO()  # a terminal is not given the control characters it would act on (rich passed ESC on)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(console, "out", console._Console(file=screen, force_terminal=True, width=80, highlight=False))
        assert cli("tokenizer", "decode", out, *tok.encode("a\x1bZb\x07c")).exit_code == 0
    assert screen.getvalue() == "aZbc\n", repr(screen.getvalue())
    # encode's piece column shows them as \xNN (a raw ESC reached the terminal there too)
    shown = cli("tokenizer", "encode", out, "a\x1bZb")
    assert shown.exit_code == 0 and "\x1b" not in shown.output and "\\x1b" in shown.output, repr(shown.output)
    # text that is not UTF-8 (a shell passes it as surrogates): one line, not "unexpected"
    refused = cli("tokenizer", "encode", out, "a\udcffb")
    assert refused.exit_code == 2 and "is not valid Unicode text" in refused.output
    # a tokenizer.json cut or replaced is refused, as every stage refuses it (it gave other ids without a word)
    shutil.copytree(out, tmp_path / "cut")
    (tmp_path / "cut" / "tokenizer.json").write_text((out / "tokenizer.json").read_text()[:-40] + "}" * 4)
    refused = cli("tokenizer", "encode", tmp_path / "cut", "the king")
    assert refused.exit_code == 1 and "tokenizer.json has" in refused.output and "the manifest says" in refused.output
    # inspect --json shows such an artifact's manifest as it is (its checks refused it, when a user wants to see it),
    # and exits 1 as inspect does (0 let `inspect --json | jq` read a damaged artifact as sound)
    shown = cli("inspect", tmp_path / "cut", "--json")
    assert shown.exit_code == 1 and shown.stdout == (tmp_path / "cut" / "manifest.json").read_text()
    assert "tokenizer.json has" in shown.stderr and shown.exit_code == cli("inspect", tmp_path / "cut").exit_code


def test_cli_config_file_and_special_tokens(cli, corpus, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[tokenizer]\nvocab_size = 700\nmax_docs = 200\n')
    out = tmp_path / "tok"
    result = cli("tokenizer", "train", corpus, "-o", out, "--config", config,
                 "--special-tokens", "<|bos|>,<|eos|>,<|pad|>,<|sep|>")
    assert result.exit_code == 0, result.output
    art = artifacts.load(out)
    assert art.config["vocab_size"] == 700 and art.config["special_tokens"] == ["<|bos|>", "<|eos|>", "<|pad|>", "<|sep|>"]
    tok = load_tokenizer(out)
    assert tok.special_ids == {"<|bos|>": 0, "<|eos|>": 1, "<|pad|>": 2, "<|sep|>": 3} and tok.mask_id is None


def test_cli_bad_inputs(cli, corpus, tmp_path):
    small = cli("tokenizer", "train", corpus, "-o", tmp_path / "a", "--vocab-size", "200")
    assert small.exit_code == 2 and "--vocab-size 200 is too small" in small.output and "263" in small.output
    assert not (tmp_path / "a").exists()

    empty = write_corpus_artifact(tmp_path / "empty", ["", ""]).path
    nothing = cli("tokenizer", "train", empty, "-o", tmp_path / "b")
    assert nothing.exit_code == 1 and "no text to train on" in nothing.output and "llmkit inspect" in nothing.output
    assert not (tmp_path / "b").exists()
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    blank = cli("tokenizer", "train", tmp_path / "blank.txt", "-o", tmp_path / "b")
    # (inspect reads artifacts, not files: it is no advice for a file)
    assert blank.exit_code == 1 and "only blank lines" in blank.output and "inspect" not in blank.output

    with artifacts.create(tmp_path / "tokens", "tokens") as build:
        (build.dir / "x").write_text("x")
    wrong = cli("tokenizer", "train", tmp_path / "tokens", "-o", tmp_path / "c")
    assert wrong.exit_code == 1 and "expected a corpus artifact, got tokens" in wrong.output

    missing = cli("tokenizer", "train", tmp_path / "nope.txt", "-o", tmp_path / "d")
    assert missing.exit_code == 1 and "no such file or artifact" in missing.output

    no_eos = cli("tokenizer", "train", corpus, "-o", tmp_path / "e", "--special-tokens", "<|bos|>,<|pad|>")
    assert no_eos.exit_code == 2 and "must include <|eos|>" in no_eos.output

    plain = cli("tokenizer", "train", corpus, "-o", tmp_path / "f", "--special-tokens", "a,<|bos|>,<|eos|>,<|pad|>")
    assert plain.exit_code == 2 and "write a special token as <|name|>" in plain.output  # every "a" in text would become it
    # <|-|>: one pre-token of punctuation, learnt from text that holds it as a merge with the special's id
    marks = cli("tokenizer", "train", corpus, "-o", tmp_path / "f", "--special-tokens", "<|bos|>,<|eos|>,<|pad|>,<|-|>")
    assert marks.exit_code == 2 and "<|-|>: give each special token's name a letter or digit" in " ".join(marks.output.split())
    assert not (tmp_path / "f").exists()

    (tmp_path / "records.jsonl").write_text('{"text": "a"}\n')
    records = cli("tokenizer", "train", tmp_path / "records.jsonl", "-o", tmp_path / "g")
    assert records.exit_code == 1 and "holds records, not plain text" in records.output  # its JSON would be learnt
    import gzip

    (tmp_path / "book.txt.gz").write_bytes(gzip.compress(b"some text\n"))
    packed = cli("tokenizer", "train", tmp_path / "book.txt.gz", "-o", tmp_path / "gz")
    assert packed.exit_code == 1 and "is compressed; tokenizer train reads plain text files" in " ".join(packed.output.split())
    (tmp_path / "plainfolder").mkdir()
    (tmp_path / "plainfolder" / "a.txt").write_text("some text")
    folder = cli("tokenizer", "train", tmp_path / "plainfolder", "-o", tmp_path / "h")
    assert folder.exit_code == 1 and "is a folder, not a corpus artifact" in folder.output

    for result in (small, nothing, wrong, missing, no_eos, plain, records, folder):
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(UserError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"nonsense": True}))
    np.save(tmp_path / "token_bytes.npy", np.zeros(3, dtype=np.int32))
    with pytest.raises(UserError, match="not a valid tokenizers file"):
        load_tokenizer(tmp_path)


def test_a_truncated_token_bytes_table_is_named(trained, tmp_path):
    import shutil

    folder = tmp_path / "tok"
    shutil.copytree(trained, folder)
    table = (folder / "token_bytes.npy").read_bytes()
    (folder / "token_bytes.npy").write_bytes(table[: len(table) // 2])
    # in its artifact: the change is named (the hash beside the read), over what the read made of it
    with pytest.raises(UserError, match="token_bytes.npy was changed after the artifact .* was written"):
        load_tokenizer(folder)
    (folder / "manifest.json").unlink()  # a folder of no artifact (a checkpoint's copy lost its own): what the read found
    with pytest.raises(UserError, match="token_bytes.npy is damaged .*; retrain the tokenizer"):
        load_tokenizer(folder)


def test_special_roles_file_for_foreign_vocabularies(tmp_path):
    """An imported GPT-2-style tokenizer has one <|endoftext|> for every role (special_tokens.json)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from llmkit.data.tokenizer import compute_token_bytes

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator(["some text to learn from"] * 10, trainer)
    folder = tmp_path / "gpt2ish"
    folder.mkdir()
    hf.save(str(folder / "tokenizer.json"))
    np.save(folder / "token_bytes.npy", compute_token_bytes(hf))
    with pytest.raises(UserError, match="lacks special token"):
        load_tokenizer(folder)
    (folder / "special_tokens.json").write_text(json.dumps({"bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": "<|endoftext|>"}))
    tok = load_tokenizer(folder)
    assert tok.bos_id == tok.eos_id == tok.pad_id == 0 and tok.mask_id is None
    assert tok.fast_encoding is None  # not llmkit's pre-tokenizer: the tokenizers path is used
    assert tok.encode_ordinary_batch(["some text"]) == [tok.encode("some text")]
    copied = copy_tokenizer_files(folder, tmp_path / "copy")
    assert load_tokenizer(copied).eos_id == 0


def test_long_documents_are_sampled_in_pieces(shared_data, tok, tmp_path):
    from llmkit.tokenizer.sample import split_pieces

    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:300_000]
    pieces = split_pieces(text, size=5000)
    assert len(pieces) > 40 and "".join(pieces) == text
    assert all(len(p) < 15_000 for p in pieces)
    # Cuts fall where the pre-tokenizer splits anyway: pre-tokens of the pieces == pre-tokens of the whole.
    pre = tok.hf.pre_tokenizer
    assert [t for p in pieces for t, _ in pre.pre_tokenize_str(p)] == [t for t, _ in pre.pre_tokenize_str(text)]
    # Lines of only spaces belong to the newline pre-token before them ("\n  \n" is one): no cut inside.
    blank_lines = text.replace("\n\n", "\n  \n \r\n")
    pieces = split_pieces(blank_lines, size=5000)
    assert len(pieces) > 40 and "".join(pieces) == blank_lines
    assert [t for p in pieces for t, _ in pre.pre_tokenize_str(p)] == [t for t, _ in pre.pre_tokenize_str(blank_lines)]
    # A document of one long line (no newline to cut after) is cut before lone spaces, pre-tokens kept
    # (it was one piece: a 50 MB line took 5.0 GB to train on, now 0.42 GB)
    line = text.replace("\n", " ").replace("  ", " , ")[:200_000]
    pieces = split_pieces(line, size=5000)
    assert len(pieces) > 15 and "".join(pieces) == line and all(len(p) < 10_001 for p in pieces)
    assert [t for p in pieces for t, _ in pre.pre_tokenize_str(p)] == [t for t, _ in pre.pre_tokenize_str(line)]
    # A corpus of two whole files (llmkit clean's default) still gets a held-out slice for the stats.
    chinese = (shared_data / "chinese.txt").read_text(encoding="utf-8")[:400_000]
    corpus = write_corpus_artifact(tmp_path / "corpus", [text, chinese]).path
    stats = artifacts.load(train_tokenizer([corpus], tmp_path / "tok", TokenizerTrainConfig(vocab_size=1000, heldout_every=20, seed=0))).stats
    assert stats["measured_on"] == "heldout" and stats["heldout_pieces"] >= 1 and stats["bytes_per_token"] > 2


def test_piece_to_bytes_reads_byte_level_and_sentencepiece_pieces():
    from llmkit.data.tokenizer import piece_to_bytes

    assert piece_to_bytes("Ġworld") == b" world"  # GPT-2 byte alphabet
    assert piece_to_bytes("▁the") == b" the"  # SentencePiece space marker (imported Llama vocabularies)
    assert piece_to_bytes("<0x0A>") == b"\n"  # SentencePiece byte fallback
    assert piece_to_bytes("模型") == "模型".encode()


def test_many_small_files_are_read_in_groups_and_draw_the_sample_each_read_alone_draws(shared_data, tmp_path, monkeypatch):
    """Small read tasks travel together (one dispatch, one log write and one marker per group: 5,000
    files one at a time took 15x as long); each task keeps its own draws, so the tokenizer is the one
    reading every file on its own gives."""
    from llmkit import resume
    import llmkit.tokenizer.sample as sample

    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:300_000]
    files = []
    for i in range(300):
        files.append(tmp_path / f"part{i:03d}.txt")
        files[-1].write_text(text[i * 1000 : (i + 1) * 1000], encoding="utf-8")
    markers = []
    monkeypatch.setattr(resume, "save", lambda folder, state, arrays, **kw: markers.append(state["tasks"]))
    config = dict(vocab_size=600, sample_bytes=150_000, seed=2)
    grouped = train_tokenizer(files, tmp_path / "grouped", TokenizerTrainConfig(**config))
    assert 1 < len(markers) <= 8 and markers[-1] <= 300  # (4 groups a worker; sampling may stop before the end)
    markers.clear()
    monkeypatch.setattr(sample, "GROUP_BYTES", 1)  # every task alone
    alone = train_tokenizer(files, tmp_path / "alone", TokenizerTrainConfig(**config, workers=2))
    assert markers == list(range(1, len(markers) + 1)) and len(markers) > 100
    assert artifacts.load(alone).fingerprint == artifacts.load(grouped).fingerprint


def test_ctrl_c_and_sigterm_stop_training_at_once_not_when_it_ends(shared_data, tmp_path):
    """The BPE trainer reads its input from Rust threads while the command waits in Rust, where
    Python's signal handlers never run: Ctrl-C used to wait for the whole run (reading and
    training) to end. Now the stage stops within a moment, with its one-line message, its workers
    shut down (no leaked-semaphore warning), no abort from threads left in Rust, and the partial
    output kept for the rerun."""
    import glob
    import json
    import signal
    import subprocess
    import sys
    import time

    paragraphs = [p for p in (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()]
    corpus = write_corpus_artifact(tmp_path / "corpus", paragraphs * 30, docs_per_shard=2000).path  # ~33 MB: ~12 s straight
    for signum, code, word, twice in ((signal.SIGINT, 130, "interrupted", True), (signal.SIGTERM, 143, "terminated", False)):
        out = tmp_path / f"tok-{code}"
        process = subprocess.Popen(
            [sys.executable, "-m", "llmkit", "tokenizer", "train", str(corpus), "-o", str(out), "--vocab-size", "2000",
             "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # (a runner may have Ctrl-C ignored)
        marker = str(tmp_path / f".tok-{code}.partial-*" / "resume.json")
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None and not glob.glob(marker):
            time.sleep(0.01)
        assert process.poll() is None, "the run ended before it could be stopped"
        assert json.loads(open(glob.glob(marker)[0]).read())["tasks"] < 200  # (of ~390: most is still to read)
        process.send_signal(signum)
        sent = time.perf_counter()
        if twice:  # impatient users press Ctrl-C again while it stops: still one clean exit, no abort
            time.sleep(0.02)
            process.send_signal(signum)
        stderr = process.communicate(timeout=120)[1]
        assert time.perf_counter() - sent < 5, f"took {time.perf_counter() - sent:.1f} s to stop"
        assert process.returncode == code, stderr
        assert f"error: {word}; rerun the command" in stderr, stderr
        assert "Traceback" not in stderr and "FATAL" not in stderr and "leaked" not in stderr, stderr
        assert not out.exists() and glob.glob(str(tmp_path / f".tok-{code}.partial-*" / "sample.jsonl"))


def test_a_killed_training_run_resumes_from_its_finished_read_tasks(shared_data, tmp_path):
    import re
    import sys

    from conftest import run_killed_and_resumed

    paragraphs = [p for p in (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()]
    corpus = write_corpus_artifact(tmp_path / "corpus", paragraphs * 3, docs_per_shard=60).path  # ~400 read tasks
    command = [sys.executable, "-m", "llmkit", "tokenizer", "train", str(corpus), "--vocab-size", "2000",
               "--sample-bytes", "3000000", "--seed", "7"]
    straight, killed, tasks_done, stderr = run_killed_and_resumed(command, tmp_path, lambda state: state["tasks"], 50)
    resumed = re.search(r"resuming the interrupted run: ([\d,]+) read task", stderr)
    assert resumed and int(resumed.group(1).replace(",", "")) >= tasks_done
    assert artifacts.load(killed).fingerprint == artifacts.load(straight).fingerprint
    assert (killed / "tokenizer.json").read_bytes() == (straight / "tokenizer.json").read_bytes()
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in straight.iterdir())  # no log, no marker
    assert artifacts.load(killed).manifest.runtime["workers"] == artifacts.load(straight).manifest.runtime["workers"] == 1


def test_chinese_prose_trains_as_raw_tokenizers_trains_it(cli, shared_data, tmp_path):
    """Chinese runs for thousands of characters between spaces, in pre-tokens of a few: nothing is cut for
    training, so the merges are raw tokenizers' own (every 1,024 characters were cut, and the merges' order
    moved from the 316th on)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from llmkit.data.special_tokens import DEFAULT_SPECIAL_TOKENS
    from llmkit.data.tokenizer import SPLIT_PATTERN
    from llmkit.tokenizer.long_pretokens import LONGEST_RUN

    book = (shared_data / "chinese.txt").read_text(encoding="utf-8")
    first_long = re.search(rf"\S{{{LONGEST_RUN + 1},}}", book).start()
    chinese = book[first_long : first_long + 150_000]
    assert sum(len(run) > LONGEST_RUN for run in chinese.split()) > 5  # (runs that the old cut cut)
    english = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:150_000]
    for name, text in (("zh", chinese), ("en", english)):
        (tmp_path / f"{name}.txt").write_text(text, encoding="utf-8")
        result = cli("tokenizer", "train", tmp_path / f"{name}.txt", "-o", tmp_path / name, "--vocab-size", "1500",
                     "--heldout-every", "1000000000")
        assert result.exit_code == 0, result.output
        raw = Tokenizer(models.BPE())
        raw.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        raw.decoder = decoders.ByteLevel()
        raw.train_from_iterator([text], trainers.BpeTrainer(
            vocab_size=1500, min_frequency=2, special_tokens=list(DEFAULT_SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
        ours = json.loads((tmp_path / name / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
        assert ours == json.loads(raw.to_str())["model"]["merges"], name


def test_every_pre_token_past_the_limit_is_cut_at_its_own_steps_and_nothing_else():
    """Against the whole text's own pre-tokens, on random texts of long and short runs of letters, CJK (and the
    Kangxi radicals among it, symbols to Python), punctuation, separators (whitespace to Python, punctuation to
    the split), blank lines of either line end, indented or not, and padding: the cuts are exactly every 1,024
    characters of each pre-token longer than that (a first version missed runs of !⼀ and of CRLF, and cut a run of
    newlines then spaces that was two pre-tokens, neither long)."""
    import random

    from tokenizers import Regex, pre_tokenizers

    from llmkit.data.tokenizer import SPLIT_PATTERN
    from llmkit.tokenizer.long_pretokens import LONGEST_RUN, cut_long_pretokens

    split = pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False)
    units = ["a", "xy", "一", "一\u2f00", "!\u2f00", "-", "!?", "\x1c", "7", "\U00011f04a", " ", "\n", "\r\n", "    \n",
             "\u3000", "\t", "é", "a b", "中文，", "        \n", " \t\n", "\r", "\u2029", "\x85", "〇", "\u2003",
             "1\U00011f50"]
    rng = random.Random(0)
    for _ in range(150):
        text = "".join(rng.choice(units) * rng.choice((1, 3, 40, 300, 700, 1500)) for _ in range(rng.randint(1, 6)))
        expected = sorted(start + step for _, (start, end) in split.pre_tokenize_str(text) if end - start > LONGEST_RUN
                          for step in range(LONGEST_RUN, end - start, LONGEST_RUN))
        parts = list(cut_long_pretokens([text]))
        assert "".join(parts) == text and all(parts)
        cuts = [sum(map(len, parts[: i + 1])) for i in range(len(parts) - 1)]
        assert cuts == expected, (text[:40], cuts, expected)


def test_workers_are_held_to_the_cores_this_process_may_use(monkeypatch, capsys):
    """--workers beyond the CPU affinity (a container's, taskset's) is cut to it, as beyond the cores:
    os.cpu_count() counts the machine's, and 2 processes on one allowed core ran 1.5x slower."""
    from llmkit.parallel import ordered_map

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    started = []
    assert list(ordered_map(abs, [-1, -2, 3], workers=4, on_start=started.append)) == [1, 2, 3]
    assert started == [1] and "--workers 4 is more than the 1 core this process may use; using 1" in capsys.readouterr().err


def test_a_corpus_shard_changed_in_place_is_refused_by_what_reads_it(corpus, trained, tmp_path, cli):
    """One bit of a shard flipped, its size kept: loading checks sizes only, and tokenize encoded the
    edited text under the corpus fingerprint it recorded (a 2026-12-07 review)."""
    import shutil

    folder = tmp_path / "corpus"
    shutil.copytree(corpus, folder)
    shard = sorted((folder / "shards").glob("*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    for args in (["tokenize", folder, "-t", trained, "-o", tmp_path / "tokens"],
                 ["tokenizer", "train", folder, "-o", tmp_path / "tok", "--vocab-size", "300"]):
        result = cli(*args)
        said = " ".join(result.output.split())
        assert result.exit_code == 1 and f"{shard} was changed after the artifact {folder} was written" in said, said
        assert not args[args.index("-o") + 1].exists()


def test_a_heldout_slice_of_few_pieces_is_said_not_to_measure_the_input(shared_data, tmp_path, capsys):
    """Two whole files held out 0 to 3 pieces by seed, and bytes_per_token moved 3.02-3.43 with the mix
    (the input's own: 3.44), unsaid; none drawn measured on training text, said only by `measured_on`."""
    from llmkit.tokenizer.config import TokenizerTrainConfig
    from llmkit.tokenizer.train import STEADY_HELDOUT_PIECES, train_tokenizer

    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    (tmp_path / "book.txt").write_text(text[:200_000], encoding="utf-8")
    said = {}
    for every in (1000, 2, 4):
        capsys.readouterr()
        stats = artifacts.load(train_tokenizer([tmp_path / "book.txt"], tmp_path / f"tok{every}",
                                               TokenizerTrainConfig(vocab_size=300, heldout_every=every, seed=0))).stats
        said[every] = (stats["heldout_pieces"], " ".join(capsys.readouterr().err.split()))
    pieces, note = said[1000]
    assert pieces < STEADY_HELDOUT_PIECES
    assert (f"the held-out slice is {pieces} piece" in note if pieces else "measured on training text" in note), note
    (tmp_path / "short.txt").write_text(text[:2_000], encoding="utf-8")  # (a few pieces: none drawn at 1 in 1000)
    capsys.readouterr()
    stats = artifacts.load(train_tokenizer([tmp_path / "short.txt"], tmp_path / "short", TokenizerTrainConfig(
        vocab_size=300, heldout_every=1000, seed=0))).stats
    assert stats["heldout_pieces"] == 0 and "no piece of the" in " ".join(capsys.readouterr().err.split())
    pieces, note = said[4]
    assert pieces >= STEADY_HELDOUT_PIECES and "held-out slice" not in note and "no piece of" not in note


def test_an_input_held_out_whole_says_so_and_a_capped_slice_names_its_cap(tmp_path, capsys):
    """A one-line file whose only piece was held out was "no text to train on ... its files are empty"; a
    slice stopped by --heldout-max-bytes was told to lower --heldout-every, which changed nothing."""
    from llmkit.errors import UserError
    from llmkit.tokenizer.config import TokenizerTrainConfig
    from llmkit.tokenizer.train import train_tokenizer

    (tmp_path / "line.txt").write_text("a line of text, " * 100, encoding="utf-8")
    outcomes = set()
    for seed in range(6):
        try:
            train_tokenizer([tmp_path / "line.txt"], tmp_path / f"t{seed}", TokenizerTrainConfig(vocab_size=300, heldout_every=2,
                                                                                                 seed=seed))
            outcomes.add("trained")
        except UserError as exc:
            assert "every piece of the input (1) was held out for the stats (--heldout-every 2)" in str(exc), exc
            outcomes.add("held out")
    assert outcomes == {"trained", "held out"}
    paragraphs = "".join(f"Paragraph {i} holds a few words of its own.\n\n" for i in range(400))
    (tmp_path / "many.txt").write_text(paragraphs, encoding="utf-8")
    capsys.readouterr()
    train_tokenizer([tmp_path / "many.txt"], tmp_path / "capped", TokenizerTrainConfig(
        vocab_size=300, heldout_every=2, heldout_max_bytes=100, seed=0))
    assert "--heldout-max-bytes is what stops the slice there" in " ".join(capsys.readouterr().err.split())
