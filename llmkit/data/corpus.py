"""Streaming reads of corpus artifacts (Parquet shards with `id`, `text`, `source`) and plain text files.

Every reader streams record batches through pyarrow, so memory stays bounded by one batch
whatever the corpus size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from llmkit import artifacts
from llmkit.errors import UserError

SHARD_GLOB = "shards/part-*.parquet"


def _as_corpus(artifact: artifacts.Artifact | Path | str) -> artifacts.Artifact:
    if isinstance(artifact, artifacts.Artifact):
        if artifact.kind != "corpus":
            raise UserError(f"expected a corpus artifact, got {artifact.kind} at {artifact.path}")
        return artifact
    return artifacts.load(artifact, kind="corpus")


def corpus_shards(artifact: artifacts.Artifact | Path | str) -> list[Path]:
    """The Parquet shards of a corpus artifact, in order (part-00000, part-00001, ...)."""
    art = _as_corpus(artifact)
    names = sorted(n for n in art.manifest.files if n.startswith("shards/") and n.endswith(".parquet"))
    if not names:
        raise UserError(f"corpus artifact {art.path} has no shards/part-*.parquet files; rebuild it with llmkit clean")
    return [art.file(n) for n in names]


def count_documents(artifact: artifacts.Artifact | Path | str) -> int:
    """Number of documents, read from the Parquet footers (no data is scanned)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in corpus_shards(artifact))


def iter_corpus_columns(
    artifact: artifacts.Artifact | Path | str, columns: Sequence[str], batch_size: int = 1000
) -> Iterator[dict[str, list]]:
    """Batches of the given columns as {column: list}, streamed in the corpus's row order."""
    import pyarrow.parquet as pq

    for path in corpus_shards(artifact):
        parquet = pq.ParquetFile(path)
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            raise UserError(f"corpus shard {path} has no column(s) {', '.join(missing)}; rebuild it with llmkit clean")
        for batch in parquet.iter_batches(batch_size=batch_size, columns=list(columns)):
            yield {name: batch.column(name).to_pylist() for name in columns}


def iter_corpus_texts(artifact: artifacts.Artifact | Path | str, batch_size: int = 1000) -> Iterator[list[str]]:
    """Batches of document texts, streamed in the corpus's row order (null texts read as "")."""
    for batch in iter_corpus_columns(artifact, ["text"], batch_size):
        yield [t if t is not None else "" for t in batch["text"]]


def iter_text_files(paths: Sequence[Path], batch_size: int = 1000) -> Iterator[list[str]]:
    """Plain UTF-8 text files as documents: each paragraph (text between blank lines) is one document.

    A convenience input for `llmkit tokenizer train`; paragraphs keep the held-out slice and
    `--max-docs` meaningful for a single big file.
    """
    batch: list[str] = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no such file: {path}; pass a corpus artifact or UTF-8 text files")
        try:
            with open(path, encoding="utf-8") as handle:
                paragraph: list[str] = []
                for line in handle:
                    if line.strip():
                        paragraph.append(line)
                        continue
                    if paragraph:
                        batch.append("".join(paragraph))
                        paragraph = []
                    if len(batch) >= batch_size:
                        yield batch
                        batch = []
                if paragraph:
                    batch.append("".join(paragraph))
        except UnicodeDecodeError as exc:
            raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it or run llmkit clean") from exc
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_corpus_artifact(
    out: Path | str,
    texts: Sequence[str],
    *,
    source: str = "inline",
    docs_per_shard: int | None = None,
    force: bool = False,
) -> artifacts.Artifact:
    """Write texts as a corpus artifact (contract: shards/part-NNNNN.parquet with id, text, source).

    For tests, benchmarks and small scripts; `llmkit clean` is the stage that makes real corpora.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = list(texts)
    per_shard = docs_per_shard or max(1, len(texts))
    with artifacts.create(out, "corpus", force=force) as build:
        (build.dir / "shards").mkdir()
        for shard, start in enumerate(range(0, max(1, len(texts)), per_shard)):
            part = texts[start : start + per_shard]
            table = pa.table(
                {
                    "id": pa.array([f"{source}-{start + i}" for i in range(len(part))], pa.string()),
                    "text": pa.array(part, pa.string()),
                    "source": pa.array([source] * len(part), pa.string()),
                }
            )
            pq.write_table(table, build.dir / "shards" / f"part-{shard:05d}.parquet")
        build.config = {"writer": "llmkit.data.corpus.write_corpus_artifact", "source": source}
        build.stats = {"documents": len(texts), "bytes": sum(len(t.encode("utf-8")) for t in texts)}
    return artifacts.load(out, kind="corpus")
