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
    assert docs == ["first para\nstill first\n", "second\n", "中文段落\n"]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(UserError, match="not UTF-8"):
        list(iter_text_files([bad]))
