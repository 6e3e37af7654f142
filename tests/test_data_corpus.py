"""Streaming corpus reads (llmkit/data/corpus.py) against the corpus artifact contract."""

from __future__ import annotations

import pytest

from llmkit import artifacts
from llmkit.data.corpus import (
    count_documents,
    iter_corpus_columns,
    iter_corpus_texts,
    iter_text_files,
    write_corpus_artifact,
)
from llmkit.errors import UserError


def test_written_corpus_streams_back_in_order_across_shards(tmp_path):
    texts = [f"document {i} 文档 🎉" for i in range(2500)] + [""]
    art = write_corpus_artifact(tmp_path / "corpus", texts, source="unit", docs_per_shard=1000)
    assert sorted(art.manifest.files) == [f"shards/part-0000{i}.parquet" for i in range(3)]
    assert art.stats == {"documents": 2501, "bytes": sum(len(t.encode()) for t in texts)}
    batches = list(iter_corpus_texts(art, batch_size=300))
    assert all(len(b) <= 300 for b in batches)
    assert [t for b in batches for t in b] == texts
    assert count_documents(art.path) == 2501
    ids = [i for b in iter_corpus_columns(art, ["id", "source"]) for i in b["id"]]
    assert ids[:2] == ["unit-0", "unit-1"] and len(set(ids)) == len(ids)


def test_a_batch_is_bounded_by_bytes_as_well_as_documents(tmp_path, monkeypatch):
    """Large documents make smaller batches (about BATCH_BYTES of the shard's data each), the order and
    the documents unchanged: a tokenize of 2,048 one-megabyte documents held 2 GB of text at once."""
    from llmkit.data import corpus

    texts = [f"{i} " + "word " * 2000 for i in range(300)]  # 10 KB documents
    art = write_corpus_artifact(tmp_path / "corpus", texts, docs_per_shard=120)
    monkeypatch.setattr(corpus, "BATCH_BYTES", 100_000)
    batches = list(iter_corpus_texts(art, batch_size=2048))
    assert [t for b in batches for t in b] == texts
    assert max(len(b) for b in batches) <= 12 and len(batches) >= 25, [len(b) for b in batches]
    monkeypatch.setattr(corpus, "BATCH_BYTES", 1 << 40)  # (small documents: the count is the bound)
    assert [len(b) for b in iter_corpus_texts(art, batch_size=50)] == [50, 50, 20] * 2 + [50, 10]


def test_corpus_loads_with_datasets(tmp_path):
    from datasets import load_dataset

    texts = ["one", "two", "three"]
    art = write_corpus_artifact(tmp_path / "corpus", texts)
    files = [str(art.path / name) for name in art.manifest.files]
    ds = load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert ds["text"] == texts and set(ds.column_names) >= {"id", "text", "source"}


def test_corpus_errors(tmp_path):
    with artifacts.create(tmp_path / "noshards", "corpus") as build:
        (build.dir / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="has no shards/part"):
        next(iter_corpus_texts(tmp_path / "noshards"))
    with artifacts.create(tmp_path / "tok", "tokenizer") as build:
        (build.dir / "x").write_text("x")
    with pytest.raises(UserError, match="expected a corpus artifact, got tokenizer"):
        next(iter_corpus_texts(tmp_path / "tok"))
    with pytest.raises(UserError, match="expected a corpus artifact, got tokenizer"):
        next(iter_corpus_texts(artifacts.load(tmp_path / "tok")))


def test_text_files_become_paragraph_documents(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("first para\nstill first\n\n\nsecond\n", encoding="utf-8")
    b = tmp_path / "b.txt"
    b.write_text("中文段落\n", encoding="utf-8")
    docs = [d for batch in iter_text_files([a, b], batch_size=2) for d in batch]
    assert docs == ["first para\nstill first\n\n\n", "second\n", "中文段落\n"]  # the paragraph break stays text
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 not utf-8")
    with pytest.raises(UserError, match="not UTF-8"):
        list(iter_text_files([bad]))


def _paragraphs_as_open_reads_them(path):
    """The reference: a text file read line by line (universal newlines), a paragraph ending where
    a line follows blank lines, which it keeps; blank lines before the first are no document."""
    documents = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip() and (not documents or not documents[-1][-1].strip()):
                documents.append([line])
            elif documents:
                documents[-1].append(line)
    return ["".join(lines) for lines in documents]


@pytest.mark.parametrize("max_bytes", [7, 64, 1000, 1 << 20])
def test_text_ranges_cut_between_paragraphs_whatever_their_size(tmp_path, shared_data, max_bytes):
    from llmkit.data.corpus import read_text_range, text_file_ranges

    files = {
        "book.txt": (shared_data / "tinyshakespeare.txt").read_bytes()[:60_000],
        "windows.txt": b"one\r\ntwo\r\n\r\nthree\r\n \t\r\n\r\nfour\r\n",
        "blank-runs.txt": b"\n\n" + b"a\n" + b"\n" * 9 + b"b\n \n\t\n" * 40 + b"c\n\n\n",
        # runs that go on with lines the bytes do not call blank, but Python does (U+3000, a lone \r, NEL, \x1c)
        "other-blanks.txt": "aaaa\n\n\u3000\nbbbb\n\n\x85\ncccc\n\n\x1c\ndddd\n".encode() + b"eeee\n\n\rffff\n\r\n\r\n  \r\ngggg\n",
        "old-mac.txt": b"a\rb\r\rc\n\nd",
        "unicode-blank.txt": "x\n\u3000\ny\n\n\n\nz 红楼梦\n\n梦".encode(),
        "one-paragraph.txt": b"no blank line here\n" * 50,
        "empty.txt": b"",
    }
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        ranges = text_file_ranges([path], max_bytes=max_bytes)
        assert [(r.start, r.end) for r in ranges][:1] == [(0, ranges[0].end)] and ranges[-1].end == len(data)
        assert all(a.end == b.start for a, b in zip(ranges, ranges[1:]))
        documents = [d for r in ranges for d in read_text_range(r)]
        assert documents == _paragraphs_as_open_reads_them(path), name
        with open(path, encoding="utf-8") as handle:  # nothing but the blank lines before the first paragraph is lost
            assert "".join(documents) == handle.read().lstrip(" \t\n\x0b\x0c\u3000"), name
    if max_bytes == 1000:
        assert len(text_file_ranges([tmp_path / "book.txt"], max_bytes=max_bytes)) > 40
    # a blank line cut by the end of a read block: the run goes on in the next block
    from llmkit.data.corpus import _next_paragraph

    for block in range(1, 20):
        with open(tmp_path / "edge.txt", "wb") as handle:
            handle.write(b"a" * 10 + b"\r\n\r\n  \r\n\r\nbbbb\n")
        with open(tmp_path / "edge.txt", "rb") as handle:
            assert _next_paragraph(handle, 0, block=block) == 20, block


def test_a_read_task_refuses_a_file_other_than_the_one_the_driver_planned_it_on(tmp_path, shared_data):
    """On a Ray node the same path may hold another file (a node-local copy, a stale cache): its
    text would be drawn into the sample under the input's fingerprint. A task carries its file's
    size from the driver and checks it where it is read."""
    from llmkit.data.corpus import corpus_row_groups, read_row_group_texts, read_text_range, text_file_ranges, write_corpus_artifact

    path = tmp_path / "book.txt"
    path.write_bytes((shared_data / "tinyshakespeare.txt").read_bytes()[:20_000])
    (text_range,) = text_file_ranges([path])
    assert read_text_range(text_range)
    path.write_bytes((shared_data / "tinyshakespeare.txt").read_bytes()[:19_000])
    with pytest.raises(UserError, match="holds 19,000 bytes here where the driver planned its reading on 20,000"):
        read_text_range(text_range)
    write_corpus_artifact(tmp_path / "corpus", ["First Citizen: speak.", "All: speak, speak."])
    (group,) = corpus_row_groups(tmp_path / "corpus")
    assert read_row_group_texts(group) == ["First Citizen: speak.", "All: speak, speak."]
    with open(group.path, "ab") as shard:
        shard.write(b"\0")
    with pytest.raises(UserError, match="another file than the driver's; every node needs the stage's inputs at the same path"):
        read_row_group_texts(group)
