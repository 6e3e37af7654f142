"""`llmkit clean` through Typer's runner: a good run, and one line + non-zero exit for each bad input."""

from __future__ import annotations

import gzip
import html
import json

import pytest

from llmkit import artifacts


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def _nothing_written(folder, out_name="out"):
    assert not (folder / out_name).exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(f".{out_name}.tmp-")]


def test_clean_runs_and_prints_the_report(cli, shared_data, tmp_path):
    config = tmp_path / "clean.toml"
    config.write_text('[clean]\nthreshold = 0.8\n', encoding="utf-8")
    out = tmp_path / "corpus"
    result = cli(
        "clean", shared_data / "sentiment", shared_data / "tinyshakespeare.txt", "-o", out,
        "--config", config, "--keep-rejects", "--seed", "3",
    )
    assert result.exit_code == 0, result.output
    assert "duplicate clusters" in result.output and "2,501" in result.output
    art = artifacts.load(out, kind="corpus")
    assert art.manifest.seed == 3 and art.config["seed"] == 3
    assert (art.config["bands"], art.config["rows"]) == (9, 12)  # from the file's threshold
    assert art.stats["documents"] == 2501 and (out / "rejects.jsonl").exists()
    # each file read, by name and content (its label named a path only: no word of which bytes)
    import hashlib

    read = sorted([*(shared_data / "sentiment").glob("*.jsonl"), shared_data / "tinyshakespeare.txt"])
    assert sorted((f["name"].rsplit("/", 1)[-1], f["sha256"]) for f in art.stats["input_files"]) == sorted(
        (path.name, hashlib.sha256(path.read_bytes()).hexdigest()) for path in read)
    assert [f["name"] for f in art.stats["input_files"]] == art.stats["sources"]  # (by their labels: unique)
    again_cleaned = cli("clean", out, "-o", tmp_path / "again", "--no-near-dedup")  # (a corpus: an input artifact instead)
    assert again_cleaned.exit_code == 0 and artifacts.load(tmp_path / "again").stats["input_files"] == []
    again = cli("clean", shared_data / "sentiment", "-o", out)
    assert "already exists" in _one_error_line(again)
    forced = cli("clean", shared_data / "sentiment", "-o", out, "--force", "--no-near-dedup", "--workers", "1")
    assert forced.exit_code == 0 and artifacts.load(out).stats["documents"] == 2500


def test_dataset_option(cli, shared_data, tmp_path):
    result = cli("clean", "--dataset", shared_data / "translation" / "test.jsonl", "--text-field", "target", "-o", tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert artifacts.load(tmp_path / "c").stats["documents_in"] == 500
    # the stage a first run goes on with (a corpus is a folder only tokenizer train and tokenize read)
    assert f"next: llmkit tokenizer train {tmp_path / 'c'} -o TOKENIZER" in " ".join(result.output.split())
    from llmkit.console import shell_word

    assert shell_word("-toks") == "./-toks" and shell_word("my corpus") == "'my corpus'"  # never read as an option


def test_missing_path(cli, tmp_path):
    line = _one_error_line(cli("clean", tmp_path / "nope.txt", "-o", tmp_path / "out"))
    assert "input not found" in line and "nope.txt" in line
    _nothing_written(tmp_path)
    # a link that loops or points nowhere is said to be one (it read as a file that is not there)
    (tmp_path / "loop.txt").symlink_to("loop.txt")
    (tmp_path / "gone").symlink_to(tmp_path / "removed-corpus")
    line = _one_error_line(cli("clean", tmp_path / "loop.txt", "-o", tmp_path / "out"))
    assert "input not found" in line and "(a symbolic link to loop.txt, which is not there or leads back to itself)" in line
    line = _one_error_line(cli("tokenize", tmp_path / "gone", "--tokenizer", tmp_path / "gone", "-o", tmp_path / "out"))
    assert f"no such artifact: {tmp_path / 'gone'} (a symbolic link to {tmp_path / 'removed-corpus'}, which" in line, line
    _nothing_written(tmp_path)


def test_a_quoted_pattern_is_named_as_one(cli, shared_data, tmp_path):
    """A pattern the shell did not expand (quoted) was "not found; check the path"."""
    line = _one_error_line(cli("clean", str(shared_data / "sentiment" / "*.jsonl"), "-o", tmp_path / "out"))
    assert "no file matches" in line and "expands no pattern" in line, line
    line = _one_error_line(cli("clean", "--dataset", str(shared_data / "sentiment" / "*.jsonl"), "-o", tmp_path / "out"))
    assert "no file matches it" in line and "expands no pattern: pass the folder" in line, line
    line = _one_error_line(cli("tokenize", str(tmp_path / "corp*"), "-t", tmp_path / "tok", "-o", tmp_path / "out"))
    assert "no such artifact" in line and "if that is a pattern, llmkit expands none" in line, line
    line = _one_error_line(cli("tokenizer", "train", str(tmp_path / "nodir*" / "a.txt"), "-o", tmp_path / "out"))
    assert "no file matches" in line and "expands no pattern" in line, line
    _nothing_written(tmp_path)


def test_no_input(cli, tmp_path):
    assert "no input given" in _one_error_line(cli("clean", "-o", tmp_path / "out"))


def test_empty_corpus(cli, tmp_path):
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "blank.txt").write_text("\n\n", encoding="utf-8")
    line = _one_error_line(cli("clean", tmp_path / "empty.jsonl", "-o", tmp_path / "out"))
    assert "no text found" in line and "the input is empty" in line
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")  # one empty document, not a rule's doing
    line = _one_error_line(cli("clean", tmp_path / "empty.txt", "-o", tmp_path / "out"))
    assert "the input is empty" in line
    line = _one_error_line(cli("clean", tmp_path / "blank.txt", "-o", tmp_path / "out"))
    assert "no text found" in line and "every document is empty or blank" in line  # no rule to loosen
    (tmp_path / "short.txt").write_text("hi there\nok go\nyes\n", encoding="utf-8")  # C4 removes each line: a rule's doing
    line = _one_error_line(cli("clean", tmp_path / "short.txt", "--c4", "--c4-min-sentences", "0", "-o", tmp_path / "out"))
    assert "the one document was dropped (c4_no_lines_left: 1); loosen those rules" in line, line
    (tmp_path / "page.html").write_text("<html><script>var x = 1;</script></html>", encoding="utf-8")
    line = _one_error_line(cli("clean", tmp_path / "page.html", "--strip-html", "-o", tmp_path / "out"))
    assert "every document is empty or blank once its HTML is stripped" in line, line
    (tmp_path / "blank.html").write_bytes((tmp_path / "blank.txt").read_bytes())
    for name, rules in (("blank.txt", ["--c4"]), ("blank.html", ["--strip-html"])):  # blank is blank, whatever rules are on
        line = _one_error_line(cli("clean", tmp_path / name, *rules, "-o", tmp_path / "out"))
        assert "every document is empty or blank" in line, line
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "photo.png").write_bytes(b"\x89PNG")
    assert "holds no readable files" in _one_error_line(cli("clean", tmp_path / "folder", "-o", tmp_path / "out"))
    _nothing_written(tmp_path)


def test_binary_file(cli, tmp_path):
    (tmp_path / "data.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    line = _one_error_line(cli("clean", tmp_path / "data.txt", "-o", tmp_path / "out"))
    assert "data.txt looks like a binary file" in line
    (tmp_path / "data.jsonl").write_bytes(b"\x00\x01\x02" * 100)
    assert "binary" in _one_error_line(cli("clean", tmp_path / "data.jsonl", "-o", tmp_path / "out"))
    # Windows' "Unicode" text, with and without its byte-order mark: named, with the conversion
    (tmp_path / "notes.txt").write_bytes("a note to self\n".encode("utf-16"))
    (tmp_path / "notes_le.txt").write_bytes("a note to self, with no mark\n".encode("utf-16-le"))
    (tmp_path / "notes32.txt").write_bytes("a note to self\n".encode("utf-32"))
    for name, encoding in (("notes.txt", "UTF-16"), ("notes_le.txt", "UTF-16LE"), ("notes32.txt", "UTF-32")):
        line = _one_error_line(cli("clean", tmp_path / name, "-o", tmp_path / "out"))
        assert f"{name} is {encoding} text" in line and f"iconv -f {encoding.lower()} -t utf-8" in line, line
    # an array of small 16-bit numbers has a NUL every other byte too, but is no text
    (tmp_path / "numbers.txt").write_bytes(b"".join(n.to_bytes(2, "little") for n in range(1, 256)) * 20)
    assert "looks like a binary file" in _one_error_line(cli("clean", tmp_path / "numbers.txt", "-o", tmp_path / "out"))
    _nothing_written(tmp_path)


def test_invalid_utf8(cli, shared_data, tmp_path):
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:5000]
    lines = text.split("\n")
    lines[7] = lines[7] + " caf\xe9"
    (tmp_path / "latin1.txt").write_bytes("\n".join(lines).encode("latin-1"))
    line = _one_error_line(cli("clean", tmp_path / "latin1.txt", "-o", tmp_path / "out"))
    # (CP1252: Latin-1 on every printable character, and Windows' quotes where Latin-1 has invisible controls)
    assert "latin1.txt:8: invalid UTF-8" in line and "iconv -f cp1252 -t utf-8" in line
    # Chinese, Japanese and Korean in a legacy encoding: iconv from Latin-1 made a corpus of mojibake that no rule caught
    chinese = (shared_data / "chinese.txt").read_text(encoding="utf-8")[:3000]
    cases = (("gbk.txt", chinese, "gb18030", "it reads as Chinese GB18030: iconv -f GB18030"),
             ("big5.txt", "這是繁體中文的文字，紅樓夢。\n" * 20, "big5", "it reads as Chinese Big5 CP950: iconv -f CP950"),
             # katakana's second bytes are ASCII's: a news sentence's were not "in runs" enough, and got Latin-1
             ("sjis.txt", "これは日本語のテキストです。カタカナとひらがな、ニュース記事のサンプル。\n" * 20, "shift_jis",
              "it reads as Japanese Shift-JIS CP932: iconv -f CP932"),
             # (its kanji sit at GB2312's codes: it read as Chinese, whose iconv garbled them)
             ("eucjp.txt", "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。\n" * 20, "euc_jp",
              "it reads as Japanese EUC-JP: iconv -f EUC-JP"),
             ("kr.txt", "한국어 텍스트입니다. 안녕하세요.\n" * 20, "euc_kr", "it reads as Korean CP949"),
             # (Windows' superset: one syllable EUC-KR lacks made it read as Chinese)
             ("cp949.txt", "대한민국은 민주공화국이다. 똠방각하 햏햏.\n" * 10, "cp949", "it reads as Korean CP949: iconv -f CP949"),
             ("cp1252.txt", "“smart quotes” — dash, café\n" * 20, "cp1252", "(e.g. iconv -f cp1252 -t utf-8"),
             # Latin-1 German: its ö before a letter read as Big5's rare characters, and CP950 was the advice
             ("de.txt", "Die Straße in Köln ist schön.\n" * 100, "latin-1", "(e.g. iconv -f cp1252 -t utf-8"),
             # Hungarian CP1250: its ő read as õ, and CP1252 was the advice (Portuguese writes õ in -ões: still CP1252)
             ("hu.txt", "Az időjárás előrejelzés szerint holnap esős idő várható.\n" * 20, "cp1250", "convert the file to UTF-8 (find its encoding"),
             ("pt.txt", "Os cidadãos são informados das decisões e põem-se a par.\n" * 20, "cp1252", "(e.g. iconv -f cp1252 -t utf-8"),
             # Estonian writes õ before any letter, and none of Hungarian's acute vowels: still CP1252
             ("et.txt", "Kõik inimesed sünnivad vabadena, õhtul või hommikul.\n" * 20, "cp1252", "(e.g. iconv -f cp1252 -t utf-8"),
             ("hu-e.txt", "Győr és Kőszeg felé megy, ő tőle kérte.\n" * 20, "cp1250", "convert the file to UTF-8 (find its encoding"),
             # Thai: words of high bytes, read as GB18030 mostly
             ("thai.txt", "ภาษาไทยเป็นภาษาที่สวยงาม และมีประวัติศาสตร์ยาวนาน\n" * 30, "tis-620", "it reads as Thai CP874 or Chinese GB18030: iconv -f CP874"),
             # Greek reads as Cyrillic as well: charset-normalizer's statistics of the words choose; a few words, a detector
             ("greek.txt", "Καλημέρα κόσμε, αυτό είναι ελληνικό κείμενο.\n" * 20, "cp1253", "it reads as Greek CP1253 or"),
             ("greek-short.txt", "Καλημέρα\n", "cp1253", "then iconv -f THAT -t utf-8"),
             # a file UTF-8 up to a line and CP1252 after: that part converted, not "fix that line"
             ("joined.txt", "Ελλάδα\n" * 10 + "“quoted” café crème\n" * 200, "surrogate-cp1252", "iconv -f cp1252 -t utf-8"),
             # a stray byte after UTF-8 text: converting the whole from Latin-1 garbled the UTF-8 before it
             ("late.txt", "Le café … Ελλάδα\n" * 40 + "caf\udce9\n", "utf-8", "the rest of the file reads as UTF-8"),
             # a UTF-8 file but for one stray byte: iconv from anything garbles the rest
             ("stray.txt", "ok line\nUn caf\udce9s en ligne\n" + "Le café est très bon et le thé aussi.\n" * 20,
              "utf-8", "the rest of the file reads as UTF-8: fix or remove the bytes that do not, on that line"))
    for name, text, encoding, said in cases:
        if encoding == "surrogate-cp1252":
            head, tail = text.split("“", 1)
            (tmp_path / name).write_bytes(head.encode() + ("“" + tail).encode("cp1252"))
        else:
            (tmp_path / name).write_bytes(text.encode(encoding, errors="surrogateescape"))
        for command in (["clean", tmp_path / name, "-o", tmp_path / "out"], ["tokenizer", "train", tmp_path / name, "-o", tmp_path / "t"]):
            line = _one_error_line(cli(*command))
            assert said in line and "latin1" not in line and "run llmkit clean" not in line, (name, command[0], line)
    # one-line files, the hardest: most of a novel's paragraphs in GB18030 alone are told GB18030, and none Latin-1
    import re

    from llmkit.jsonl import advice_at

    told = []
    for paragraph in [p for p in (shared_data / "chinese.txt").read_text(encoding="utf-8").split("\n") if p.strip()][:100]:
        data = (paragraph + "\n").encode("gb18030")
        try:
            data.decode("utf-8")
            continue
        except UnicodeDecodeError as exc:
            advice = advice_at(data, exc.start)
        told.append((re.search(r"iconv -f (\S+) -t", advice) or [None, None])[1])
    assert len(told) >= 50 and told.count("GB18030") >= 0.9 * len(told) and not {"cp1252", "latin1"} & set(told), told
    # binary junk where eval reads text: not converted into "text"
    import random

    rng = random.Random(0)
    (tmp_path / "junk.txt").write_bytes(bytes(rng.randrange(256) for _ in range(4000)))
    from llmkit.errors import UserError
    from llmkit.jsonl import read_text

    with pytest.raises(UserError, match="looks like a binary file, not text"):
        read_text(tmp_path / "junk.txt")
    line = _one_error_line(cli("clean", tmp_path / "latin1.txt", "--doc-per", "line", "-o", tmp_path / "out"))
    assert "latin1.txt:8: invalid UTF-8" in line
    skipped = cli("clean", tmp_path / "latin1.txt", "--doc-per", "line", "--skip-bad-lines", "-o", tmp_path / "out")
    assert skipped.exit_code == 0 and artifacts.load(tmp_path / "out").stats["bad_lines_skipped"] == 1


def _truncated_line_42(rows: list[str], folder) -> tuple:
    rows[41] = rows[41][:-5]
    with gzip.open(folder / "reviews.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write("\n".join(rows))
    return "reviews.jsonl.gz", 42, "malformed JSON line (Unterminated string starting at: column "


def _record_10_without_text(rows: list[str], folder) -> tuple:
    records = [json.loads(r) for r in rows if r.strip()]
    records[9] = {"body": records[9]["text"]}
    (folder / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return "reviews.jsonl", 10, "no field 'text', which other records have"


@pytest.mark.parametrize("damage", [_truncated_line_42, _record_10_without_text], ids=["malformed", "field-missing"])
def test_a_bad_record_is_named_or_skipped(cli, shared_data, tmp_path, damage):
    rows = open(shared_data / "sentiment" / "test.jsonl", encoding="utf-8").read().split("\n")
    name, number, problem = damage(rows, tmp_path)
    line = _one_error_line(cli("clean", tmp_path / name, "-o", tmp_path / "out"))
    assert f"{name}:{number}: {problem}" in line and "--skip-bad-lines" in line
    _nothing_written(tmp_path)
    result = cli("clean", tmp_path / name, "--skip-bad-lines", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    stats = artifacts.load(tmp_path / "out").stats
    assert stats["bad_lines_skipped"] == 1 and stats["bad_line_examples"] == [f"{name}:{number}"]
    assert stats["documents_in"] == 499


@pytest.mark.parametrize("name,doc_per", [("book.txt.zst", "file"), ("book.txt.zst", "line"), ("reviews.jsonl.zst", "file"),
                                          ("reviews.csv.zst", "file"), ("book.txt.gz", "file")])
def test_a_truncated_compressed_file_is_an_error_not_a_shorter_text(cli, shared_data, tmp_path, name, doc_per):
    """zstandard's stream reader ends quietly where a cut-off frame ends: half a book must not pass as the book."""
    import zstandard

    if name.startswith("book"):
        data = (shared_data / "tinyshakespeare.txt").read_bytes()
    elif ".jsonl" in name:
        data = (shared_data / "sentiment" / "test.jsonl").read_bytes()
    else:
        data = b"text\n" + b"".join(b'"' + json.loads(line)["text"].replace('"', '""').encode() + b'"\n'
                                     for line in open(shared_data / "sentiment" / "test.jsonl", encoding="utf-8"))
    packed = gzip.compress(data) if name.endswith(".gz") else zstandard.ZstdCompressor().compress(data)
    (tmp_path / name).write_bytes(packed[: len(packed) // 2])
    skipping = [] if name.startswith("book") and doc_per == "file" else ["--skip-bad-lines"]  # (not skippable either way)
    line = _one_error_line(cli("clean", tmp_path / name, "--doc-per", doc_per, *skipping, "-o", tmp_path / "out"))
    assert name in line and "is the file complete" in line
    _nothing_written(tmp_path)
    # A whole file of two frames (pzstd writes many) is read to the end of the second.
    extra = b'{"text": "The second frame."}\n' if ".jsonl" in name else b'"The second frame."\n' if ".csv" in name \
        else b"The second frame.\n"
    (tmp_path / name).write_bytes(packed + (gzip.compress(extra) if name.endswith(".gz") else
                                            zstandard.ZstdCompressor().compress(extra)))
    assert cli("clean", tmp_path / name, "--doc-per", doc_per, "-o", tmp_path / "whole").exit_code == 0
    import pyarrow.parquet as pq

    texts = pq.read_table(tmp_path / "whole" / "shards").column("text").to_pylist()
    assert texts[-1].endswith("The second frame.")


def test_unknown_text_field(cli, shared_data, tmp_path):
    line = _one_error_line(cli("clean", shared_data / "translation", "--text-field", "english", "-o", tmp_path / "out"))
    assert "no field 'english'" in line and "source, target" in line
    line = _one_error_line(cli("clean", shared_data / "translation", "-o", tmp_path / "out"))
    assert "pass --text-field with one of: source, target" in line
    for blank in (",", " , ", ""):
        line = _one_error_line(cli("clean", shared_data / "translation", "--text-field", blank, "-o", tmp_path / "out"))
        assert f"--text-field {blank!r} names no field; pass e.g. --text-field text" in line
    _nothing_written(tmp_path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "fast"], "--preset 'fast' is not a preset"),
        (["--doc-per", "page"], "--doc-per must be one of"),
        (["--threshold", "2"], "--threshold must be in (0, 1)"),
        (["--bands", "30"], "must fit in num_perm"),
        # more permutations than the bands read only reseeded them (another corpus, no better recall)
        (["--num-perm", "256"], "--num-perm 256 computes permutations that bands x rows (14 x 8 = 112) never read"),
        # typed at their defaults beside --threshold: given all the same (it used to pick 9 x 12 without a word)
        (["--threshold", "0.8", "--bands", "14", "--rows", "8"], "give --threshold or --bands/--rows, not both"),
        (["--preset", "web"], "all 500 documents were dropped"),
    ],
)
def test_bad_options(cli, shared_data, tmp_path, args, message):
    line = _one_error_line(cli("clean", shared_data / "sentiment" / "test.jsonl", "-o", tmp_path / "out", *args))
    assert message in line
    _nothing_written(tmp_path)


def test_unknown_dataset(cli, tmp_path):
    line = _one_error_line(cli("clean", "--dataset", "no-such-user/no-such-dataset", "-o", tmp_path / "out"))
    assert "'no-such-user/no-such-dataset'" in line and ("could not load dataset" in line or "not in the local cache" in line)
    _nothing_written(tmp_path)


def test_an_unreachable_hub_is_said_at_once(cli, tmp_path, monkeypatch):
    """No network: one quick connection check, then offline mode, instead of half a minute of retries."""
    import time

    import datasets.config
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "ENDPOINT", "https://127.0.0.1:9")  # nothing listens there
    started = time.perf_counter()
    line = _one_error_line(cli("clean", "--dataset", "wikitext", "--dataset-config", "wikitext-2-raw-v1", "-o", tmp_path / "out"))
    assert "the Hugging Face Hub cannot be reached" in line
    assert time.perf_counter() - started < 10
    assert hub.HF_HUB_OFFLINE is False  # offline mode was for that one load only
    _nothing_written(tmp_path)


def test_output_inside_an_input_folder_is_refused(cli, shared_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "reviews.jsonl").write_bytes((shared_data / "sentiment" / "test.jsonl").read_bytes())
    for extra in ([], ["--force"]):
        line = _one_error_line(cli("clean", data, "-o", data / "corpus", *extra))
        assert "lies inside the stage's input" in line
    assert sorted(p.name for p in data.iterdir()) == ["reviews.jsonl"]


def test_long_csv_fields(cli, shared_data, tmp_path):
    book = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    import csv

    with open(tmp_path / "books.csv", "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([["title", "text"], ["shakespeare", book]])
    result = cli("clean", tmp_path / "books.csv", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert artifacts.load(tmp_path / "out").stats["bytes"] > 1_000_000


def test_strip_html_on_a_folder_of_pages(cli, shared_data, tmp_path):
    reviews = [json.loads(line)["text"] for line in open(shared_data / "sentiment" / "test.jsonl", encoding="utf-8")]
    pages = tmp_path / "pages"
    pages.mkdir()
    for i, review in enumerate(reviews[:3]):
        (pages / f"{i}.html").write_text(
            f"<html><head><script>track({i})</script></head><body><h1>Review {i}</h1><p>{review}</p></body></html>",
            encoding="utf-8",
        )
    raw = cli("clean", pages, "-o", tmp_path / "raw")
    assert raw.exit_code == 0 and "3 HTML file(s) are read as written, markup included" in " ".join(raw.output.split())
    stripped = cli("clean", pages, "--strip-html", "-o", tmp_path / "out")
    assert stripped.exit_code == 0 and "markup included" not in stripped.output
    import pyarrow.parquet as pq

    texts = pq.read_table(tmp_path / "out" / "shards" / "part-00000.parquet").column("text").to_pylist()
    assert texts == [f"Review {i}\n\n{html.unescape(r)}" for i, r in enumerate(reviews[:3])]
    raw = pq.read_table(tmp_path / "raw" / "shards" / "part-00000.parquet").column("text").to_pylist()
    assert all("<script>" in t for t in raw)


def test_list_options_take_the_comma_form_the_option_tables_show(cli, tmp_path):
    (tmp_path / "book.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    result = cli("clean", tmp_path / "book.txt", "-o", tmp_path / "out", "--gopher-repetition",
                 "--max-top-ngram-char-frac", "0.9,0.9,0.9", "--max-dup-ngram-char-frac", "1,1,1,1,1,1")
    assert result.exit_code == 0, result.output
    config = artifacts.load(tmp_path / "out").config
    assert (config["max_top_ngram_char_frac"], config["max_dup_ngram_char_frac"]) == ([0.9] * 3, [1.0] * 6)


def test_doc_per_on_inputs_that_come_as_documents_is_said_to_change_nothing(cli, tmp_path):
    (tmp_path / "records.jsonl").write_text('{"text": "one record,\\nwith two lines of text in it"}\n', encoding="utf-8")
    (tmp_path / "plain.txt").write_text("a first line of text\na second line of text\n", encoding="utf-8")
    records = cli("clean", tmp_path / "records.jsonl", "--doc-per", "line", "-o", tmp_path / "a")
    assert records.exit_code == 0 and "--doc-per line splits plain-text files" in " ".join(records.output.split())
    mixed = cli("clean", tmp_path / "records.jsonl", tmp_path / "plain.txt", "--doc-per", "line",
                "-o", tmp_path / "b")
    assert mixed.exit_code == 0 and "splits plain-text files" not in mixed.output
    assert artifacts.load(tmp_path / "b").stats["documents_in"] == 3  # the record whole, the text file's two lines
    # so too --text-field with only plain text, and --skip-bad-lines with only whole plain-text files
    plain = cli("clean", tmp_path / "plain.txt", "--text-field", "body", "--skip-bad-lines", "-o", tmp_path / "c")
    flat = " ".join(plain.output.split())
    assert plain.exit_code == 0 and "--text-field body names a field of JSONL, CSV or Parquet records" in flat, plain.output
    assert "these inputs are whole plain-text files, so it changes nothing here" in flat
    both = cli("clean", tmp_path / "records.jsonl", tmp_path / "plain.txt", "--text-field", "text", "--doc-per", "line",
               "--skip-bad-lines", "-o", tmp_path / "d")
    assert both.exit_code == 0 and "changes nothing" not in both.output, both.output


def test_a_folder_holding_an_artifact_reads_around_it(cli, shared_data, tmp_path):
    """A corpus made inside a data folder: its manifest was read as data (a misleading error), and
    its shards would have been read again as more text. It is left out, with a note."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "book.txt").write_text((shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    assert cli("clean", data / "book.txt", "-o", data / "corpus").exit_code == 0
    result = cli("clean", data, "-o", tmp_path / "again")
    assert result.exit_code == 0, result.output
    assert "holds 1 llmkit artifact folder(s) (corpus), left out" in " ".join(result.output.split())
    assert artifacts.load(tmp_path / "again").stats["documents"] == artifacts.load(data / "corpus").stats["documents"]


def test_cleaning_a_corpus_again_keeps_each_documents_id_and_source(cli, shared_data, tmp_path):
    """They became the shard's path and row (every document's source its shard), so provenance
    was lost and tokenize drew its validation documents per shard, not per original input."""
    import pyarrow.parquet as pq

    first = tmp_path / "first"
    assert cli("clean", shared_data / "tinyshakespeare.txt", shared_data / "sentiment" / "train.jsonl", "-o", first).exit_code == 0
    again = tmp_path / "again"
    result = cli("clean", first, "-o", again)
    assert result.exit_code == 0, result.output

    def columns(corpus):
        tables = [pq.read_table(p, columns=["id", "source"]) for p in sorted((corpus / "shards").glob("*.parquet"))]
        return [row for t in tables for row in zip(t.column("id").to_pylist(), t.column("source").to_pylist())]

    assert columns(again) == columns(first)
    assert {source for _, source in columns(again)} == {"tinyshakespeare.txt", "train.jsonl"}


def test_two_corpora_made_from_files_of_one_name_stay_apart_when_cleaned_together(cli, shared_data, tmp_path):
    import pyarrow.parquet as pq

    for name, rows in (("a", slice(0, 50)), ("b", slice(50, 100))):
        (tmp_path / name).mkdir()
        lines = (shared_data / "sentiment" / "train.jsonl").read_text(encoding="utf-8").splitlines()[rows]
        (tmp_path / name / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        assert cli("clean", tmp_path / name / "train.jsonl", "-o", tmp_path / f"corpus-{name}").exit_code == 0
    result = cli("clean", tmp_path / "corpus-a", tmp_path / "corpus-b", "-o", tmp_path / "both")
    assert result.exit_code == 0, result.output
    table = pq.read_table(sorted((tmp_path / "both" / "shards").glob("*.parquet"))[0], columns=["id", "source"])
    assert set(table.column("source").to_pylist()) == {"corpus-a/train.jsonl", "corpus-b/train.jsonl"}
    assert len(set(table.column("id").to_pylist())) == table.num_rows
    # corpora of one name, in other folders: told apart by the folders above them
    for name in ("a", "b"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / f"corpus-{name}").rename(tmp_path / "runs" / name / "corpus")
    result = cli("clean", tmp_path / "runs" / "a" / "corpus", tmp_path / "runs" / "b" / "corpus", "-o", tmp_path / "same")
    assert result.exit_code == 0, result.output
    table = pq.read_table(sorted((tmp_path / "same" / "shards").glob("*.parquet"))[0], columns=["id", "source"])
    assert set(table.column("source").to_pylist()) == {"a/corpus/train.jsonl", "b/corpus/train.jsonl"}
    assert len(set(table.column("id").to_pylist())) == table.num_rows


def _shard_texts(out) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(out / "shards" / "part-00000.parquet").column("text").to_pylist()


def test_a_null_parquet_text_is_a_bad_record_as_a_jsonl_null_is(cli, tmp_path):
    """A null text in a Parquet file was dropped as "empty" (and --skip-bad-lines changed nothing), where
    the same null in JSONL or through --dataset is a bad record."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a first document here", None, "a third document here"]}), tmp_path / "nulls.parquet")
    line = _one_error_line(cli("clean", tmp_path / "nulls.parquet", "-o", tmp_path / "out"))
    assert "nulls.parquet:1: column 'text' is null (a record without text); fix it or pass --skip-bad-lines" in line, line
    _nothing_written(tmp_path)
    skipped = cli("clean", tmp_path / "nulls.parquet", "--skip-bad-lines", "-o", tmp_path / "out")
    assert skipped.exit_code == 0, skipped.output
    stats = artifacts.load(tmp_path / "out").manifest.stats
    assert _shard_texts(tmp_path / "out") == ["a first document here", "a third document here"]
    assert stats["dropped"].get("empty", 0) == 0 and stats["bad_line_examples"] == ["nulls.parquet:1"], stats


def test_languages_are_one_set_however_typed(cli, shared_data, tmp_path):
    """`--languages zh,en`, `en,zh,en` and `EN,zh` keep the corpus `en,zh` keeps: each order or repeat was a
    fingerprint of its own, and `EN` was refused where py3langid's code is `en`."""
    prints = {}
    for typed in ("en,zh", "zh,en", "en,zh,en", "EN,zh"):
        out = tmp_path / typed.replace(",", "_")
        made = cli("clean", shared_data / "sentiment" / "test.jsonl", "--languages", typed, "-o", out)
        assert made.exit_code == 0, made.output
        prints[typed] = artifacts.load(out).fingerprint
        assert artifacts.load(out).config["languages"] == ["en", "zh"]
    assert len(set(prints.values())) == 1, prints


def test_strip_html_strips_pages_and_records_and_no_other_file(cli, tmp_path):
    """Any file named is read as plain text, but --strip-html spared .txt/.md/.rst alone: a README, a
    .markdown or a .cpp lost `<int>`, as a tag."""
    code = "Use std::vector<int> for a list of whole numbers, and std::map<K, V> for a dictionary."
    for name in ("README", "notes.markdown", "list.cpp", "notes.md"):
        (tmp_path / name).write_text(code + "\n", encoding="utf-8")
    (tmp_path / "page.html").write_text(f"<html><body><p>{code.replace('<', '&lt;')}</p><p>More <b>text</b> here.</p></body></html>",
                                        encoding="utf-8")
    (tmp_path / "crawl.jsonl").write_text(json.dumps({"text": "<p>A crawled page's <i>text</i> here.</p>"}) + "\n",
                                          encoding="utf-8")
    names = ["README", "notes.markdown", "list.cpp", "notes.md", "page.html", "crawl.jsonl"]
    made = cli("clean", *(tmp_path / name for name in names), "--strip-html", "--no-near-dedup", "--no-exact-dedup",
               "-o", tmp_path / "out")
    assert made.exit_code == 0, made.output
    assert "--strip-html leaves 4 plain-text file(s) as written" in " ".join(made.output.split())
    assert _shard_texts(tmp_path / "out") == [code] * 4 + [f"{code}\n\nMore text here.", "A crawled page's text here."]


def test_a_tsv_is_read_as_records_and_a_csv_split_otherwise_is_refused(cli, tmp_path):
    """A .tsv named as an input was one document of its whole text, labels and tabs included; a CSV split
    by semicolons (as spreadsheets write it in many locales) gave texts with the labels glued on."""
    # (no quoting in a .tsv: a GLUE sentence opening with a quote merged the records after it into one)
    (tmp_path / "reviews.tsv").write_text('text\tlabel\n" hello there world\t1\nfoo "bar" baz\t0\n', encoding="utf-8")
    made = cli("clean", tmp_path / "reviews.tsv", "-o", tmp_path / "tsv")
    assert made.exit_code == 0, made.output
    assert _shard_texts(tmp_path / "tsv") == ['" hello there world', 'foo "bar" baz']
    # and one written with quoting (pandas, Python's csv): its quotes and tabs inside fields read as such
    import pandas

    texts = ['He said "hi" to me, plainly', "a tab\there inside the text", "plain text record"]
    pandas.DataFrame({"text": texts, "label": [1, 0, 1]}).to_csv(tmp_path / "quoted.tsv", sep="\t", index=False)
    made = cli("clean", tmp_path / "quoted.tsv", "-o", tmp_path / "quoted")
    assert made.exit_code == 0 and _shard_texts(tmp_path / "quoted") == texts, made.output
    # quoted on its last line alone, or after a first record of 10 KB (the first 8 KB's lines decided it);
    # a GLUE sentence that a quote opens and another word follows, `"Hi" she said`, which no quoting writer writes
    long = "word " * 2500
    for name, rows, read in (("last", ["plain", 'He said "hi" there'], None), ("long", [long, 'He said "hi" there'], None),
                             ("glue", ['"Hi" she said', '"a whole sentence"', "plain one"], ['"Hi" she said', '"a whole sentence"', "plain one"])):
        if read is None:
            pandas.DataFrame({"text": rows, "label": [1, 0]}).to_csv(tmp_path / f"{name}.tsv", sep="\t", index=False)
        else:
            (tmp_path / f"{name}.tsv").write_text("text\tlabel\n" + "".join(f"{row}\t1\n" for row in rows), encoding="utf-8")
        made = cli("clean", tmp_path / f"{name}.tsv", "--no-exact-dedup", "--no-near-dedup", "-o", tmp_path / f"{name}-tsv")
        assert made.exit_code == 0 and _shard_texts(tmp_path / f"{name}-tsv") == [r.strip() for r in (read or rows)], made.output
    # semicolons, a decimal comma in the first record or a quoted semicolon in it too (the comma reader split
    # the one and unquoted the other): refused before anything is read
    for name, lines in (("semi", "text;label\nhello there world;1\nfoo bar baz;0\n"),
                        ("decimal", "text;label\nhello there world;3,5\nfoo bar baz;4\n"),
                        ("spans", 'text;label\n"line one\nline two";1\nfoo bar baz;0\n'),  # (a record of two lines, or of 10 KB)
                        ("long", f"text;label\n{'word ' * 2500};1\nfoo bar baz;0\n"),
                        ("quoted", 'text;label\n"hello; there world";1\nfoo bar baz;0\n')):
        (tmp_path / f"{name}.csv").write_text(lines, encoding="utf-8")
        for skip in ([], ["--skip-bad-lines"]):
            line = _one_error_line(cli("clean", tmp_path / f"{name}.csv", *skip, "-o", tmp_path / "out"))
            assert "its header 'text;label' is one column, its fields split by ';'" in line and "save it comma-separated" in line
            _nothing_written(tmp_path)
    # one column whose name holds a semicolon, over texts of other shapes: read as it is
    (tmp_path / "notes.csv").write_text('"notes; remarks"\na first note of some length\nanother; with a semicolon\n',
                                        encoding="utf-8")
    read = cli("clean", tmp_path / "notes.csv", "-o", tmp_path / "notes")
    assert read.exit_code == 0 and _shard_texts(tmp_path / "notes") == ["a first note of some length", "another; with a semicolon"]


def test_everything_dropped_names_the_fix_for_its_commonest_reason(cli, shared_data, tmp_path):
    chinese = shared_data / "chinese.txt"
    line = _one_error_line(cli("clean", chinese, "--doc-per", "line", "--preset", "web", "-o", tmp_path / "out"))
    assert "(language: " in line and "no document was detected as en" in line and "--languages with the corpus's own codes" in line
    line = _one_error_line(cli("clean", chinese, "--preset", "web", "--languages", "zh", "-o", tmp_path / "out"))
    assert "the one document was dropped (gopher_long_doc: 1)" in line and "--doc-per blank-line or line" in line
    _nothing_written(tmp_path)
