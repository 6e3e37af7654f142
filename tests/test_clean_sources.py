"""Reading inputs: every file format, compression, folders, `datasets`, and the built-in corpus."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from llmkit.corpus.sources import ReadOptions, ReadStats, resolve_inputs
from llmkit.errors import UserError


def _read(inputs, **options):
    stats = ReadStats()
    docs = []
    for source in resolve_inputs([str(i) for i in inputs]):
        docs.extend(source.documents(ReadOptions(**options), stats))
    return docs


@pytest.fixture(scope="module")
def reviews(shared_data):
    with open(shared_data / "sentiment" / "test.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_plain_text_document_modes(shared_data, tmp_path):
    book = shared_data / "tinyshakespeare.txt"
    text = book.read_text(encoding="utf-8")
    whole = _read([book])
    assert len(whole) == 1 and whole[0][1] == text
    assert whole[0][0] == "tinyshakespeare.txt"
    lines = _read([book], doc_per="line")
    assert [t for _, t in lines] == [line for line in text.split("\n") if line.strip()]
    assert lines[0][0].endswith(":1") and lines[1][0].endswith(":2")
    blocks = _read([book], doc_per="blank-line")
    assert [t for _, t in blocks] == [b.strip("\n") for b in text.split("\n\n") if b.strip()]


def test_ids_and_labels_hold_no_absolute_path(shared_data, tmp_path, monkeypatch):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "sub" / "a.txt").write_text("alpha", encoding="utf-8")
    (tmp_path / "data" / "b.txt").write_text("beta", encoding="utf-8")
    (tmp_path / "data" / ".hidden.txt").write_text("hidden", encoding="utf-8")
    (tmp_path / "data" / "image.png").write_bytes(b"\x89PNG\x00\x00")
    absolute = _read([tmp_path / "data"])
    assert absolute == [("data/b.txt", "beta"), ("data/sub/a.txt", "alpha")]
    monkeypatch.chdir(tmp_path)
    relative = resolve_inputs(["data", "data/b.txt"])  # (a file given twice is read once)
    assert [s.label for s in relative] == ["data/b.txt", "data/sub/a.txt"]
    # However the path is typed and wherever the command runs, the labels (hashed in the corpus) are the same
    monkeypatch.chdir(tmp_path / "data" / "sub")
    assert [s.label for s in resolve_inputs(["..", "./a.txt"])] == ["data/b.txt", "data/sub/a.txt"]
    assert [s.label for s in resolve_inputs(["./a.txt", "../b.txt"])] == ["a.txt", "b.txt"]
    assert [s.label for s in resolve_inputs([str(tmp_path / "data" / "b.txt"), "../b.txt"])] == ["b.txt"]
    # a number another input is already called by is skipped: two documents never share a label
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "data.txt").write_text(name, encoding="utf-8")
    (tmp_path / "data.txt#2").write_text("two", encoding="utf-8")
    labels = [s.label for s in resolve_inputs([str(tmp_path / "data.txt#2"), str(tmp_path / "a" / "data.txt"),
                                               str(tmp_path / "b" / "data.txt"), str(tmp_path / "c" / "data.txt")])]
    assert labels == ["data.txt#2", "data.txt", "data.txt#3", "data.txt#4"]
    from llmkit.corpus.sources import Source, _make_labels_unique

    many = [Source(label="data.jsonl", size=None, read=None) for _ in range(20_000)]  # shards/*/data.jsonl: at once
    _make_labels_unique(many)
    assert len({s.label for s in many}) == 20_000 and many[-1].label == "data.jsonl#20000"


def test_jsonl_json_csv_parquet_give_the_same_documents(reviews, tmp_path):
    texts = [r["text"] for r in reviews]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reviews), encoding="utf-8")
    (tmp_path / "r.json").write_text(json.dumps(reviews), encoding="utf-8")
    with open(tmp_path / "r.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["label", "text"])
        writer.writeheader()
        writer.writerows(reviews)
    pq.write_table(pa.Table.from_pylist(reviews), tmp_path / "r.parquet")
    for name in ("r.jsonl", "r.json", "r.csv", "r.parquet"):
        assert [t for _, t in _read([tmp_path / name])] == texts, name
    assert _read([tmp_path / "r.jsonl"])[0][0] == "r.jsonl:1"  # absolute input: labelled by its name


def test_compressed_inputs(shared_data, reviews, tmp_path):
    text = (shared_data / "chinese.txt").read_text(encoding="utf-8")
    with gzip.open(tmp_path / "book.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write(text)
    (tmp_path / "book.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(text.encode("utf-8")))
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in reviews)
    (tmp_path / "r.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body.encode("utf-8")))
    with gzip.open(tmp_path / "r.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(body)
    assert _read([tmp_path / "book.txt.gz"])[0][1] == text
    assert _read([tmp_path / "book.txt.zst"])[0][1] == text
    assert len(_read([tmp_path / "book.txt.zst"], doc_per="line")) == len([l for l in text.split("\n") if l.strip()])
    texts = [r["text"] for r in reviews]
    assert [t for _, t in _read([tmp_path / "r.jsonl.zst"])] == texts
    assert [t for _, t in _read([tmp_path / "r.jsonl.gz"])] == texts


def test_text_field_choice(shared_data, tmp_path):
    translation = shared_data / "translation" / "test.jsonl"
    with pytest.raises(UserError, match="no 'text' field; pass --text-field with one of: source, target"):
        _read([translation])
    rows = [json.loads(line) for line in open(translation, encoding="utf-8")]
    assert [t for _, t in _read([translation], text_field="target")] == [r["target"] for r in rows]
    with pytest.raises(UserError, match=r"test.jsonl: no field 'english' in its first 100 records; pass --text-field "
                                        "with one of: source, target"):
        _read([translation], text_field="english")
    with pytest.raises(UserError, match=r"no field 'english'"):  # a wrong name is not a bad line to skip
        _read([translation], text_field="english", skip_bad_lines=True)
    # "a,b": per file, the first field it has (one run over differently shaped files).
    mixed = _read([translation, shared_data / "sentiment" / "test.jsonl"], text_field="target,text")
    assert len(mixed) == 1000 and mixed[0][1] == rows[0]["target"] and mixed[500][0] == "test.jsonl#2:1"  # same file name twice: told apart
    only_one = tmp_path / "one.jsonl"
    only_one.write_text('{"document": "hello there", "id": 3}\n', encoding="utf-8")
    assert _read([only_one]) == [("one.jsonl:1", "hello there")]


def test_the_text_field_is_chosen_from_the_first_records_not_the_first_alone(tmp_path):
    """A first record lacking "text" is a bad record of a file whose records have it: not a reason to read
    another field (the titles) for the whole file, nor to tell the user to pass the --text-field they passed."""
    from llmkit.corpus import record_files

    data = tmp_path / "f.jsonl"
    data.write_text('{"id": "1", "title": "Foo"}\n{"id": "2", "title": "Bar", "text": "real document two"}\n'
                    '{"id": "3", "title": "Baz", "text": "real document three"}\n', encoding="utf-8")
    for field in (None, "text", "body,text"):
        with pytest.raises(UserError, match=r"^f.jsonl:1: no field 'text', which other records have; fix it or pass "
                                            "--skip-bad-lines$"):
            _read([data], text_field=field)
        stats = ReadStats()
        docs = list(resolve_inputs([str(data)])[0].documents(ReadOptions(text_field=field, skip_bad_lines=True), stats))
        assert docs == [("f.jsonl:2", "real document two"), ("f.jsonl:3", "real document three")]
        assert stats.bad_line_examples == ["f.jsonl:1"]
    # Without "text" in any of them, the guess is the one field holding text in all the first records ...
    data.write_text("".join(json.dumps({"id": i, "body": f"document {i}"}) + "\n" for i in range(3)), encoding="utf-8")
    assert [t for _, t in _read([data])] == ["document 0", "document 1", "document 2"]
    # ... and where every record holds several, no guess but a one-line error naming them.
    data.write_text('{"body": "one", "title": "One"}\n{"body": "two", "title": "Two"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="no 'text' field; pass --text-field with one of: body, title"):
        _read([data])
    # A field first seen after the records the choice is made from: those before it are not bad lines.
    rows = [{"title": f"t{i}"} for i in range(record_files.FIELD_LOOKAHEAD)] + [{"title": "t", "text": "late"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(UserError, match=f"no field 'text' in its first {record_files.FIELD_LOOKAHEAD} records"):
        _read([data], text_field="text", skip_bad_lines=True)
    array = tmp_path / "a.json"  # a JSON array is chosen from the same way
    array.write_text('[{"title": "Foo"}, {"title": "Bar", "text": "two"}]', encoding="utf-8")
    with pytest.raises(UserError, match="a.json: item 0: no field 'text', which other records have; fix the file"):
        _read([array])


@pytest.mark.parametrize("body,skip,expected", [
    # one column: the rest of the file would silently be one document
    ('text\nrow one\n"broken row two\nrow three\nrow four\n', False, "x.csv:3: malformed CSV (a quote in the record "
                                                                    "starting on this line is never closed)"),
    ('text\nrow one\n"broken row two\nrow three\nrow four\n', True, "x.csv:3: malformed CSV (a quote"),
    ('text,label\nrow one,1\n"broken row two,0\nrow three,1\nrow four,0\n', True, "x.csv:3: malformed CSV (a quote"),
    ('text,label\nok,1\n"two\nlines",1,9\n', False, "x.csv:3: row has a different number of fields"),
])
def test_a_csv_record_is_named_by_its_first_line_and_an_open_quote_is_an_error(tmp_path, body, skip, expected):
    (tmp_path / "x.csv").write_text(body, encoding="utf-8")
    with pytest.raises(UserError) as error:
        _read([tmp_path / "x.csv"], skip_bad_lines=skip)
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)


def test_csv_ids_name_a_record_by_its_first_line(tmp_path):
    (tmp_path / "q.csv").write_text('text,n\n"two\nlines",1\n\nthree,2\n"a"b,3\nfour,4\n', encoding="utf-8")
    stats = ReadStats()
    docs = list(resolve_inputs([str(tmp_path / "q.csv")])[0].documents(ReadOptions(skip_bad_lines=True), stats))
    assert docs == [("q.csv:2", "two\nlines"), ("q.csv:5", "three"), ("q.csv:6", "ab"), ("q.csv:7", "four")]
    assert stats.bad_line_examples == []


def test_the_field_every_record_holds_text_in_is_taken_beside_an_occasional_other(tmp_path):
    rows = [{"content": f"document {i}"} for i in range(5)] + [{"content": "linked", "url": "https://example.org"}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert [text for _, text in _read([tmp_path / "c.jsonl"])] == [r["content"] for r in rows]
    both = [{"title": "a", "body": "b"}, {"title": "c", "body": "d"}]  # two candidates in every record: ambiguous
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in both), encoding="utf-8")
    with pytest.raises(UserError, match="pass --text-field with one of: title, body"):
        _read([tmp_path / "b.jsonl"])


def test_csv_quotes_inside_a_quoted_field_are_read_as_spreadsheets_write_them(tmp_path):
    """Python's lenient reading, as before the open-quote check: a stray quote is text, not a malformed file."""
    (tmp_path / "s.csv").write_text('id,text\n1,"He said "hi" to me"\n2,plain\n3,a"b\n', encoding="utf-8")
    assert [text for _, text in _read([tmp_path / "s.csv"])] == ['He said hi" to me"', "plain", 'a"b']


def test_a_json_array_may_start_with_a_byte_order_mark(tmp_path):
    (tmp_path / "bom.json").write_bytes(b'\xef\xbb\xbf[{"text": "hello array with bom"}]')
    assert _read([tmp_path / "bom.json"]) == [("bom.json:0", "hello array with bom")]


def test_parquet_text_in_a_dictionary_column_and_rows_that_are_not_utf8(tmp_path):
    """A pandas category column is text stored once per value; bytes that are not UTF-8 (from a writer that
    does not check) are an error naming the file and row, or a bad line skipped, not an "unexpected" crash."""
    pq.write_table(pa.table({"text": pa.array(["dict one", "dict two", "dict one"]).dictionary_encode()}),
                   tmp_path / "dict.parquet")
    assert [t for _, t in _read([tmp_path / "dict.parquet"])] == ["dict one", "dict two", "dict one"]
    raw = pa.array([b"good text", b"bad \xe9 latin1", b"more good text"], pa.binary())
    pq.write_table(pa.table({"text": pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())}), tmp_path / "bad.parquet")
    with pytest.raises(UserError, match=r"^bad.parquet:1: invalid UTF-8 \(byte 0xe9\); .* --skip-bad-lines$"):
        _read([tmp_path / "bad.parquet"])
    stats = ReadStats()
    docs = list(resolve_inputs([str(tmp_path / "bad.parquet")])[0].documents(ReadOptions(skip_bad_lines=True), stats))
    assert docs == [("bad.parquet:0", "good text"), ("bad.parquet:2", "more good text")]
    assert stats.bad_line_examples == ["bad.parquet:1"]


def test_a_cache_folder_that_cannot_be_made_is_named_not_the_data(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "afile"))
    (tmp_path / "d.jsonl").write_text('{"text": "hello there"}\n')
    sources = resolve_inputs([], dataset=str(tmp_path / "d.jsonl"))
    with pytest.raises(UserError, match=r"afile cannot be used as a cache folder \(File exists\); LLMKIT_CACHE=.*afile: point"):
        list(sources[0].documents(ReadOptions(), ReadStats()))


def test_dataset_input_from_a_local_file(shared_data, tmp_path, monkeypatch):
    from llmkit.runtime import datasets_cache_dir

    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))  # its own: other tests fill the worker's pinned cache

    sources = resolve_inputs([], dataset=str(shared_data / "sentiment" / "test.jsonl"), split="train")
    docs = list(sources[0].documents(ReadOptions(), ReadStats()))
    expected = [json.loads(line)["text"] for line in open(shared_data / "sentiment" / "test.jsonl", encoding="utf-8")]
    assert [t for _, t in docs] == expected
    assert sources[0].label == "dataset:test.jsonl/train" and docs[0][0] == "dataset:test.jsonl/train:0"
    # prepared afresh in llmkit's cache, then removed: an edited file that kept its time is read as it is now
    assert not any(datasets_cache_dir().iterdir()) and not list(datasets_cache_dir().parent.glob("datasets-local-*"))
    import os

    edited = write_records = datasets_cache_dir().parent / "edited.jsonl"
    write_records.write_text('{"text": "the old words"}\n', encoding="utf-8")
    first = [t for _, t in resolve_inputs([], dataset=str(edited))[0].documents(ReadOptions(), ReadStats())]
    stamp = edited.stat().st_mtime_ns
    edited.write_text('{"text": "the new words"}\n', encoding="utf-8")
    os.utime(edited, ns=(stamp, stamp))
    again = [t for _, t in resolve_inputs([], dataset=str(edited))[0].documents(ReadOptions(), ReadStats())]
    assert (first, again) == (["the old words"], ["the new words"])
    for split, name in (("train", "train.jsonl"), ("test", "test.jsonl")):  # a folder's files split by name
        folder = resolve_inputs([], dataset=str(shared_data / "summarization"), split=split)
        docs = list(folder[0].documents(ReadOptions(text_field="summary"), ReadStats()))
        assert len(docs) == len((shared_data / "summarization" / name).read_text(encoding="utf-8").splitlines())
    for dataset, split in ((shared_data / "summarization", "validation"), (shared_data / "sentiment" / "test.jsonl", "test")):
        with pytest.raises(UserError, match=f"has no split '{split}'"):  # checked before any work starts
            resolve_inputs([], dataset=str(dataset), split=split)


def test_builtin_python_docs():
    from llmkit.corpus import builtin

    sources = resolve_inputs(["builtin:python-docs"])
    docs = list(sources[0].documents(ReadOptions(), ReadStats()))
    keys = [d[0] for d in docs]
    topics = [k for k in keys if ":topic/" in k]
    modules = [k for k in keys if ":module/" in k]
    assert keys == topics + modules and topics == sorted(topics)  # a fixed order: sorted topics, then modules
    assert [str(p) for p in builtin.module_files()] == sorted(map(str, builtin.module_files()))
    assert len(keys) == len(set(keys)) > 500
    assert "builtin:python-docs:topic/assert" in keys and "builtin:python-docs:module/json" in keys
    size = sum(len(t.encode("utf-8")) for _, t in docs)
    assert size > 2_000_000  # "a few MB" of English
    from llmkit.corpus.language import detect

    assert detect(dict(docs)["builtin:python-docs:module/json"])[0] == "en"
    with pytest.raises(UserError, match="unknown built-in corpus builtin:wiki"):
        resolve_inputs(["builtin:wiki"])


def test_builtin_python_docs_finds_the_definitions_ast_walk_finds_in_its_order():
    """The docstrings come in ast.walk's order though only statements are walked: definitions nested in
    every kind of block, in a pure-Python module and in this file (the corpus's fingerprint depends on it)."""
    import ast
    import textwrap

    from llmkit.corpus import builtin

    nested = textwrap.dedent("""
        @decorate(lambda: None)
        class A:
            def f(self):
                class B:
                    async def g(self): ...
                return [lambda: 0 for _ in ()]
        def h():
            try:
                def in_try(): ...
            except ValueError:
                def in_handler(): ...
            else:
                def in_else(): ...
            finally:
                def in_finally(): ...
            for _ in ():
                def in_for(): ...
            else:
                def in_for_else(): ...
            with open("x") as f:
                def in_with(): ...
            match f:
                case 1:
                    def in_case(): ...
            while False:
                if True:
                    def in_if(): ...
                else:
                    def in_if_else(): ...
        """)
    sources = [nested, Path(json.__file__).read_text(encoding="utf-8"), Path(__file__).read_text(encoding="utf-8")]
    for source in sources:
        tree = ast.parse(source)
        walked = [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        assert list(builtin._definitions(tree)) == walked and walked
    assert [n.name for n in builtin._definitions(ast.parse(nested))][:3] == ["A", "h", "f"]


def test_byte_order_marks_and_binary_detection_in_line_mode(reviews, tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "r.jsonl").write_bytes(bom + "".join(json.dumps(r) + "\n" for r in reviews[:3]).encode())
    assert [t for _, t in _read([tmp_path / "r.jsonl"])] == [r["text"] for r in reviews[:3]]
    (tmp_path / "r.csv").write_bytes(bom + b"text,label\nhello there,1\n")
    assert _read([tmp_path / "r.csv"]) == [("r.csv:2", "hello there")]
    (tmp_path / "whole.txt").write_bytes(bom + b"a whole file\n")  # one document a file: its mark goes as every line's does
    assert [t for _, t in _read([tmp_path / "whole.txt"], doc_per="file")] == ["a whole file\n"]
    # A PNG's first line holds no NUL byte; the check looks at the first 8 KB, not the first line.
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200))
    with pytest.raises(UserError, match="looks like a binary file"):
        _read([tmp_path / "image.txt"], doc_per="line")
    # a compression or archive clean does not read is named by its first bytes, whatever the file's name
    import bz2
    import lzma

    (tmp_path / "book.txt.bz2").write_bytes(bz2.compress(b"a line of text\n" * 100))
    (tmp_path / "book.xz").write_bytes(lzma.compress(b"a line of text\n" * 100))
    with pytest.raises(UserError, match=r"^book.txt.bz2 is bzip2-compressed, which clean does not read; .* \.gz or \.zst$"):
        _read([tmp_path / "book.txt.bz2"])
    with pytest.raises(UserError, match="is xz-compressed"):
        _read([tmp_path / "book.xz"])


def test_a_data_folder_skips_its_readme_but_reads_its_other_markdown(tmp_path):
    import json

    from llmkit.corpus.sources import resolve_inputs

    folder = tmp_path / "data"
    (folder / "notes").mkdir(parents=True)
    (folder / "records.jsonl").write_text(json.dumps({"text": "a record"}) + "\n")
    (folder / "README.md").write_text("what the data is")
    (folder / "notes" / "chapter.md").write_text("a chapter of the book")
    (folder / "notes" / "README.md").write_text("the notes' own readme, in a folder of no data files: text")
    labels = [s.label for s in resolve_inputs([str(folder)])]
    assert any(label.endswith("chapter.md") for label in labels) and "data/notes/README.md" in labels
    assert "data/README.md" not in labels
    hub = tmp_path / "repo"  # a Hub data set's layout: the card above its data/ folder is no document either
    (hub / "data").mkdir(parents=True)
    (hub / "README.md").write_text("---\nlicense: mit\n---\nthe card")
    (hub / "data" / "train-00000-of-00001.jsonl").write_text(json.dumps({"text": "a record"}) + "\n")
    assert [s.label for s in resolve_inputs([str(hub)])] == ["repo/data/train-00000-of-00001.jsonl"]


def test_a_corpus_artifact_is_read_by_its_shards_and_other_artifacts_are_refused(tmp_path):
    from llmkit.corpus.sources import resolve_inputs
    from llmkit.data.corpus import write_corpus_artifact
    from llmkit.errors import UserError

    corpus = write_corpus_artifact(tmp_path / "corpus", ["one document", "another one"]).path
    sources = resolve_inputs([str(corpus)])
    assert sources and all(s.label.endswith(".parquet") for s in sources)  # not manifest.json read as records
    # Its listed shards only: a shard slipped in later is refused, not read
    import shutil

    shutil.copy(corpus / "shards" / "part-00000.parquet", corpus / "shards" / "part-00001.parquet")
    with pytest.raises(UserError, match="which its manifest does not list"):
        resolve_inputs([str(corpus)])
    (corpus / "shards" / "part-00001.parquet").unlink()
    from llmkit import artifacts

    with artifacts.create(tmp_path / "tok", "tokenizer") as build:
        (build.dir / "x").write_text("x")
    with pytest.raises(UserError, match="is a tokenizer artifact"):
        resolve_inputs([str(tmp_path / "tok")])


def test_a_file_name_that_is_not_utf8_is_stored_with_its_bytes_escaped(cli, tmp_path):
    """A latin-1 name (an old archive's) read as a source crashed clean when it wrote the shard,
    and tokenizer train when it hashed its config, after all the work."""
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "plain.txt").write_text("another document\n", encoding="utf-8")
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.txt"), "wb") as handle:
        handle.write(b"hello world text\n")
    odd = os.fsdecode(os.path.join(os.fsencode(folder), b"caf\xe9.txt"))
    result = cli("clean", folder, "-o", tmp_path / "corpus")
    assert result.exit_code == 0, result.output
    sources = set(pq.read_table(next((tmp_path / "corpus").rglob("*.parquet"))).column("source").to_pylist())
    assert sources == {"in/caf\\xe9.txt", "in/plain.txt"}
    result = cli("tokenizer", "train", odd, "-o", tmp_path / "tok", "--vocab-size", "270")
    assert result.exit_code == 0, result.output
    from llmkit import artifacts

    assert artifacts.load(tmp_path / "tok").config["input"]["files"][0]["name"] == "caf\\xe9.txt"
    refused = cli("clean", folder, "-o", os.fsdecode(os.path.join(os.fsencode(tmp_path), b"out\xe9")))
    assert refused.exit_code == 1 and "the path is not UTF-8" in refused.output, refused.output
    inside = cli("clean", folder, "-o", os.path.join(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"dir\xe9")), "corpus"))
    assert inside.exit_code == 1 and "the path is not UTF-8" in inside.output, inside.output  # a folder above it too


def test_a_dataset_folder_of_two_formats_is_refused_and_json_goes_with_jsonl(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"text": "from jsonl one"}\n{"text": "from jsonl two"}\n', encoding="utf-8")
    (folder / "c.json").write_text('[{"text": "from a json array"}]', encoding="utf-8")
    sources = resolve_inputs([], dataset=str(folder), split="train")
    assert sorted(t for _, t in sources[0].documents(ReadOptions(), ReadStats())) == [
        "from a json array", "from jsonl one", "from jsonl two"]  # one builder (json): both read
    (folder / "b.csv").write_text("text\nfrom csv\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"mixes \.csv, \.json, \.jsonl files.*pass the folder as an input instead"):
        resolve_inputs([], dataset=str(folder), split="train")


def test_a_dataset_folder_splits_as_datasets_splits_it(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    layouts = {  # split names in folder names win over file names; the Hub's shard names; a dataset card is no data
        "by-folder": {"train/data.jsonl": "a", "test/data.jsonl": "b", "test/more-train.jsonl": "c"},
        "by-file": {"train.jsonl": "a", "dev.jsonl": "b", "notes.jsonl": "c"},
        "hub-shards": {"README.md": "---\nlicense: mit\n---", "data/train-00000-of-00001.jsonl": "a",
                       "data/test-00000-of-00001.jsonl": "b"},
        "runs[1]": {"train.jsonl": "a", "test.jsonl": "b"},  # (datasets reads paths as glob patterns)
    }
    for name, files in layouts.items():
        folder = tmp_path / name
        for relative, text in files.items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_text(text if relative.endswith(".md") else json.dumps({"text": text}) + "\n", encoding="utf-8")
        if "[" in name:  # datasets reads a folder's path as a glob pattern, and finds nothing there
            expected = {"train": ["a"], "test": ["b"]}
        else:
            expected = {split: sorted(rows["text"]) for split, rows in datasets.load_dataset(str(folder)).items()}
        got = {split: sorted(t for _, t in resolve_inputs([], dataset=str(folder), split=split)[0].documents(ReadOptions(), ReadStats()))
               for split in expected}
        assert got == expected, name
    assert set(expected) == {"train", "test"}
    # files that are not the data set's name no split for it (`datasets` alone would split on them)
    for name, files in {"stray-log": {"train.log": None, "data.jsonl": "a", "more.jsonl": "b"},
                        "stray-notes": {"data.jsonl": "a", "test_notes.md": None}}.items():
        folder = tmp_path / name
        folder.mkdir()
        for relative, text in files.items():
            (folder / relative).write_text("not data\n" if text is None else json.dumps({"text": text}) + "\n", encoding="utf-8")
        docs = resolve_inputs([], dataset=str(folder), split="train")[0].documents(ReadOptions(), ReadStats())
        assert sorted(t for _, t in docs) == sorted(t for t in files.values() if t), name


def test_a_saved_data_set_is_read_with_load_from_disk(tmp_path):
    import datasets

    rows = {"train": ["one", "two", "three"], "test": ["four"]}
    whole = datasets.DatasetDict({split: datasets.Dataset.from_dict({"text": texts}) for split, texts in rows.items()})
    whole.save_to_disk(str(tmp_path / "dict"))
    whole["test"].save_to_disk(str(tmp_path / "one"))
    for folder, split, expected in (("dict", "train", rows["train"]), ("dict", "test", rows["test"]), ("one", "train", rows["test"])):
        source = resolve_inputs([], dataset=str(tmp_path / folder), split=split)[0]
        assert [t for _, t in source.documents(ReadOptions(), ReadStats())] == expected
    with pytest.raises(UserError, match="has no split 'validation'; its splits are train, test"):
        resolve_inputs([], dataset=str(tmp_path / "dict"), split="validation")


def test_a_csv_data_set_reads_its_cells_as_written_and_text_files_go_as_inputs(cli, tmp_path):
    """pandas' defaults made NA, None, null and an empty cell missing (a document lost or refused)
    and a column of numbers floats ("007" read as 7.0), where the same file given as an input kept
    them; `datasets`' text builder made a document of every line whatever --doc-per said; a folder
    save_to_disk wrote, given as an input, was refused for its metadata JSON."""
    import datasets

    (tmp_path / "cells.csv").write_text("text\nhello world\nNA\nNone\nnull\n007\n", encoding="utf-8")
    source = resolve_inputs([], dataset=str(tmp_path / "cells.csv"))[0]
    assert [t for _, t in source.documents(ReadOptions(), ReadStats())] == ["hello world", "NA", "None", "null", "007"]
    as_input = resolve_inputs([str(tmp_path / "cells.csv")])[0]
    assert [t for _, t in as_input.documents(ReadOptions(), ReadStats())] == ["hello world", "NA", "None", "null", "007"]
    # what pandas writes (an unnamed index column), compressed, and splits of other columns all still read
    import pandas

    pandas.DataFrame({"text": ["one doc", "NA"], "label": [0, 1]}).to_csv(tmp_path / "indexed.csv")
    with gzip.open(tmp_path / "packed.csv.gz", "wt", encoding="utf-8") as handle:
        handle.write("text\nnull\nplain\n")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.csv").write_text("text,label\nhello train,1\n", encoding="utf-8")
    (tmp_path / "splits" / "test.csv").write_text("text\nhello test\n", encoding="utf-8")
    # past pandas' 10,000-row chunk, a column typed by the first chunk (numbers) refused the whole file at an empty cell
    (tmp_path / "long.csv").write_text("text,label\n" + "".join(f"doc {i},1\n" for i in range(12000)) + "unlabelled,\n")
    (tmp_path / "numbers.csv").write_text("text\n007\n0042\n")
    for name, split, texts in (("indexed.csv", "train", ["one doc", "NA"]), ("packed.csv.gz", "train", ["null", "plain"]),
                               ("numbers.csv", "train", ["007", "0042"]),
                               ("splits", "test", ["hello test"]), ("splits", "train", ["hello train"])):
        source = resolve_inputs([], dataset=str(tmp_path / name), split=split)[0]
        assert [t for _, t in source.documents(ReadOptions(), ReadStats())] == texts, name
    # a text column beside a label column, neither named text: the one with words is the text (as before every
    # column was read as text)
    (tmp_path / "sentences.csv").write_text("sentence,label\ngreat fun,1\ndull film,0\n")
    source = resolve_inputs([], dataset=str(tmp_path / "sentences.csv"))[0]
    assert [t for _, t in source.documents(ReadOptions(), ReadStats())] == ["great fun", "dull film"]
    rows = list(resolve_inputs([], dataset=str(tmp_path / "long.csv"))[0].documents(ReadOptions(), ReadStats()))
    assert len(rows) == 12001 and rows[-1][1] == "unlabelled"
    (tmp_path / "lines.txt").write_text("a\nb\n\nc\n", encoding="utf-8")
    with pytest.raises(UserError, match="text files are read as inputs, where --doc-per says what a document is"):
        resolve_inputs([], dataset=str(tmp_path / "lines.txt"))
    datasets.Dataset.from_dict({"text": ["one", "two"]}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(UserError, match="is a data set written by save_to_disk; read it with --dataset"):
        resolve_inputs([str(tmp_path / "saved")])
    [arrow] = (tmp_path / "saved").glob("*.arrow")  # one of its Arrow files alone: the arrow builder
    source = resolve_inputs([], dataset=str(arrow))[0]
    assert [t for _, t in source.documents(ReadOptions(), ReadStats())] == ["one", "two"]


def test_a_local_data_set_that_does_not_read_names_the_reason_in_one_line(cli, tmp_path, capfd):
    (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\n{"text": broken\n', encoding="utf-8")
    (tmp_path / "latin1.csv").write_bytes("text\ncafé\n".encode("latin-1"))
    (tmp_path / "holes.jsonl").write_text('{"text": "kept"}\n{"id": 2}\n{"text": null}\n', encoding="utf-8")
    for name, reason in (("broken.jsonl", "JSON parse error"), ("latin1.csv", "can't decode"),
                         ("holes.jsonl", "dataset:holes.jsonl/train: row 1 (counting from 0, over the split's files in order): column 'text' is null")):
        capfd.readouterr()
        result = cli("clean", "--dataset", tmp_path / name, "-o", tmp_path / "out")
        printed = result.output + "".join(capfd.readouterr())  # (datasets logs to the process's own stderr)
        assert result.exit_code == 1 and reason in printed and len(printed.strip().splitlines()) == 1, printed
        assert not (tmp_path / "out").exists()
    kept = cli("clean", "--dataset", tmp_path / "holes.jsonl", "--skip-bad-lines", "-o", tmp_path / "out")
    assert kept.exit_code == 0, kept.output
    from llmkit import artifacts

    assert artifacts.load(tmp_path / "out").stats["bad_lines_skipped"] == 2


def test_a_dataset_column_that_holds_no_text_is_refused_as_the_file_readers_refuse_it(shared_data):
    sources = resolve_inputs([], dataset=str(shared_data / "sentiment" / "test.jsonl"), split="train")
    with pytest.raises(UserError, match="column 'label' holds int64, not text; pass --text-field with a text column"):
        list(sources[0].documents(ReadOptions(text_field="label"), ReadStats()))


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_invalid_utf8_in_a_csv_names_its_line_and_byte(tmp_path, newline):
    """The CSV reader decodes in blocks: the error named the block's first line (1459 for 1501)."""
    lines = [b"text"] + [b"row %d ok" % i for i in range(1, 2000)]
    lines[1500] = b"caf\xe9 bad"
    (tmp_path / "latin.csv").write_bytes(newline.join(lines) + newline)
    with pytest.raises(UserError, match=r"latin\.csv:1501: invalid UTF-8 \(byte 0xe9\)"):
        _read([tmp_path / "latin.csv"])


def test_a_lone_carriage_return_ends_a_line_as_cleanup_reads_it(tmp_path):
    """Old Mac text: each CR-ended line a document (`--doc-per line`), blank ones separating
    paragraphs; a CRLF file keeps its line numbers."""
    (tmp_path / "mac.txt").write_bytes(b"mac one\rmac two\r\rmac three\r")
    assert _read([tmp_path / "mac.txt"], doc_per="line") == [("mac.txt:1", "mac one"), ("mac.txt:2", "mac two"),
                                                              ("mac.txt:4", "mac three")]
    assert [t for _, t in _read([tmp_path / "mac.txt"], doc_per="blank-line")] == ["mac one\nmac two", "mac three"]
    (tmp_path / "dos.txt").write_bytes(b"one\r\ntwo\r\n")
    assert _read([tmp_path / "dos.txt"], doc_per="line") == [("dos.txt:1", "one"), ("dos.txt:2", "two")]
    # CR CR LF (a CRLF file converted again): a lone CR, then CRLF, as Python's universal newlines read it
    (tmp_path / "twice.txt").write_bytes(b"a\r\r\nb\r\r\n")
    assert _read([tmp_path / "twice.txt"], doc_per="line") == [("twice.txt:1", "a"), ("twice.txt:3", "b")]
    assert [t for _, t in _read([tmp_path / "twice.txt"], doc_per="blank-line")] == ["a", "b"]
    # a bad byte is named by its CR-ended line, and a skipped one keeps the count of the lines after it
    (tmp_path / "bad.txt").write_bytes(b"one\rtwo \xe9\rthree\nfour\n")
    with pytest.raises(UserError, match=r"bad\.txt:2: invalid UTF-8 \(byte 0xe9\)"):
        _read([tmp_path / "bad.txt"], doc_per="line")
    assert _read([tmp_path / "bad.txt"], doc_per="line", skip_bad_lines=True) == [("bad.txt:4", "four")]


def test_a_nested_text_field_is_reached_by_its_dotted_name_in_every_format(tmp_path, monkeypatch):
    """Hub translation sets nest each pair ({"translation": {"de": ..., "en": ...}}): `--text-field translation.de`
    reads the German side from JSON Lines, a JSON array, Parquet (a struct column) and a `datasets` input alike;
    a field of that very name wins; a missing nested field offers the dotted names there are."""
    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))
    pairs = [{"translation": {"de": f"Ein Satz {i}.", "en": f"A sentence {i}."}, "id": i} for i in range(5)]
    german = [p["translation"]["de"] for p in pairs]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    (tmp_path / "p.json").write_text(json.dumps(pairs), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(pairs), tmp_path / "p.parquet")
    for name in ("p.jsonl", "p.json", "p.parquet"):
        assert [t for _, t in _read([tmp_path / name], text_field="translation.de")] == german, name
        assert [t for _, t in _read([tmp_path / name], text_field="nope,translation.en")][0] == "A sentence 0.", name
    dataset = resolve_inputs([], dataset=str(tmp_path / "p.jsonl"), split="train")
    assert [t for _, t in dataset[0].documents(ReadOptions(text_field="translation.de"), ReadStats())] == german
    # a record's own key "translation.de" is its field
    (tmp_path / "own.jsonl").write_text(json.dumps({"translation.de": "eigener", "translation": {"de": "verschachtelt"}}) + "\n")
    assert [t for _, t in _read([tmp_path / "own.jsonl"], text_field="translation.de")] == ["eigener"]
    for name in ("p.jsonl", "p.parquet"):
        with pytest.raises(UserError, match=r"translation\.de, translation\.en"):
            _read([tmp_path / name], text_field="translation.fr")


def test_a_folder_follows_its_linked_folders_once_and_says_what_it_leaves_out(shared_data, tmp_path, capsys):
    """A data/ folder of links to shards on another disk was read as empty of them (rglob does not
    follow linked folders), and a .log or .bz2 beside the data was left out unsaid."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("alpha", encoding="utf-8")
    (data / "linked").symlink_to(shared_data / "sentiment", target_is_directory=True)
    (data / "sub" / "up").symlink_to(data, target_is_directory=True)  # (a loop)
    (data / "run.log").write_text("log", encoding="utf-8")
    (data / "LICENSE").write_text("licence", encoding="utf-8")
    labels = [s.label for s in resolve_inputs([str(data)])]
    assert labels == ["data/a.txt", "data/linked/test.jsonl", "data/linked/train.jsonl"]
    said = " ".join(capsys.readouterr().err.split())
    assert "left out 2 files clean does not read (.log (1), no suffix (1)" in said
    (data / "b.jsonl.bz2").write_bytes(b"BZh91AY&SY")
    with pytest.raises(UserError, match=r"b\.jsonl\.bz2 is bzip2-compressed, which clean does not read"):
        resolve_inputs([str(data)])


def test_a_bad_line_is_named_by_the_label_its_file_is_read_under(tmp_path):
    """Two inputs of one name: the second's bad line was named as the first's (`train.jsonl:2`), the
    readers holding the label from before the second became train.jsonl#2."""
    for folder, second in (("la", '{"text": "fine"}'), ("lb", "{not json")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "train.jsonl").write_text('{"text": "one"}\n' + second + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"^train\.jsonl#2:2: "):
        _read([tmp_path / "la" / "train.jsonl", tmp_path / "lb" / "train.jsonl"])
    stats = ReadStats()
    for source in resolve_inputs([str(tmp_path / "la" / "train.jsonl"), str(tmp_path / "lb" / "train.jsonl")]):
        list(source.documents(ReadOptions(skip_bad_lines=True), stats))
    assert stats.bad_line_examples == ["train.jsonl#2:2"]


def test_strip_html_leaves_plain_text_and_markdown_files_as_written(cli, tmp_path):
    """A docs site of .md and .html pages: --strip-html took `std::vector<int>` and a Markdown `<div>`
    out of the .md pages too."""
    import pyarrow.parquet as pq

    site = tmp_path / "site"
    site.mkdir()
    markdown = "Use std::vector<int> v; and write `<div>` for raw HTML in this Markdown page."
    (site / "guide.md").write_text(markdown, encoding="utf-8")
    (site / "page.html").write_text("<html><body><p>The visible text of an HTML page.</p></body></html>", encoding="utf-8")
    (site / "rows.jsonl").write_text(json.dumps({"text": "<p>A crawled record's <b>markup</b>.</p>"}) + "\n", encoding="utf-8")
    result = cli("clean", site, "--strip-html", "-o", tmp_path / "out")
    assert result.exit_code == 0 and "--strip-html leaves 1 plain-text file(s) as written (site/guide.md)" in \
        " ".join(result.output.split()), result.output
    texts = pq.read_table(tmp_path / "out" / "shards" / "part-00000.parquet").column("text").to_pylist()
    assert texts == [markdown, "The visible text of an HTML page.", "A crawled record's markup."]


def test_a_link_up_is_left_out_a_folder_is_labelled_by_its_real_path_and_a_dangling_link_refused(tmp_path, capsys):
    """A link to the input's parent read everything beside the input; which of a folder's paths
    labelled its files followed the file system's listing order (another fingerprint on a copy);
    a dangling link (a disk not mounted) left its text out unsaid."""
    outer = tmp_path / "outer"
    (outer / "data" / "real").mkdir(parents=True)
    (outer / "private").mkdir()
    (outer / "private" / "diary.txt").write_text("secret", encoding="utf-8")
    (outer / "data" / "real" / "x.txt").write_text("x", encoding="utf-8")
    (outer / "data" / "up").symlink_to(outer, target_is_directory=True)
    for alias in ("alias", "b", "zz"):  # (links to a folder the tree holds: named by its real path, whatever the order)
        (outer / "data" / alias).symlink_to(outer / "data" / "real", target_is_directory=True)
    assert [s.label for s in resolve_inputs([str(outer / "data")])] == ["data/real/x.txt"]
    said = " ".join(capsys.readouterr().err.split())
    assert "left out 1 linked folder(s) leading back to it or above it (up ->" in said
    (outer / "data" / "gone.txt").symlink_to(tmp_path / "unmounted" / "shard.txt")
    with pytest.raises(UserError, match=r"gone\.txt is a link to .*shard\.txt, which is not there"):
        resolve_inputs([str(outer / "data")])
