"""Streaming reads of corpus artifacts (Parquet shards with `id`, `text`, `source`) and plain text files.

Every reader streams record batches through pyarrow, so memory stays bounded by one batch
whatever the corpus size.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmkit import artifacts
from llmkit.errors import UserError
from llmkit.jsonl import BOM, SNIFF_BYTES, advice_at, check_no_nul, check_not_packed, check_not_wide

# The corpus format (docs/artifacts.md), one definition for `llmkit clean`'s writer and
# write_corpus_artifact: shards/part-NNNNN.parquet of (id, text, source), zstd, row groups cut by
# document count and size alone.
SCHEMA_FIELDS = ("id", "text", "source")
# The input files the data stages read: plain text, and records (a text field in each)
TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ".html", ".htm"}  # HTML: pair with --strip-html
RECORD_SUFFIXES = {".jsonl", ".json", ".ndjson", ".csv", ".parquet"}  # (a .tsv is read when named, left out of a folder)
COMPRESSION_SUFFIXES = {".gz", ".zst", ".zstd"}


def file_format(path: Path) -> tuple[str, str | None]:
    """(format suffix, compression suffix) of a path such as data.jsonl.zst."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = suffixes[-1] if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES else None
    rest = suffixes[:-1] if compression else suffixes
    return (rest[-1] if rest else ""), compression
COMPRESSION = "zstd"
ROW_GROUP_ROWS = 10_000
ROW_GROUP_BYTES = 64 << 20


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"

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

    total = 0
    for path in corpus_shards(artifact):
        with readable_shard(path):
            total += pq.ParquetFile(path).metadata.num_rows
    return total


# A batch holds about this much data at most, whatever its count of documents: 2,048 documents of a
# megabyte each were 2 GB of text at once, and a stage's memory grew with its corpus (tokenize: 229
# MiB for 5 MB of 100 KB documents, 1,638 MiB for 150 MB; pyarrow joins row groups into one batch).
BATCH_BYTES = 16 << 20


def _rows_per_batch(parquet, batch_size: int) -> int:
    """`batch_size` rows, or fewer where the shard's rows average more than BATCH_BYTES / batch_size
    (uncompressed, by its footer)."""
    meta = parquet.metadata
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return max(1, min(batch_size, BATCH_BYTES * meta.num_rows // size)) if size and meta.num_rows else batch_size


def iter_corpus_columns(
    artifact: artifacts.Artifact | Path | str, columns: Sequence[str], batch_size: int = 1000
) -> Iterator[dict[str, list]]:
    """Batches of the given columns as {column: list}, streamed in the corpus's row order: `batch_size`
    rows, or fewer where that many would hold more than about BATCH_BYTES."""
    import pyarrow.parquet as pq

    for path in corpus_shards(artifact):
        # (hashed beside the read: loading checks sizes only, and an edit that kept the size was tokenized as the corpus
        # it recorded, a 2026-12-07 review)
        with readable_shard(path), artifacts.checked_as_read(path):
            parquet = pq.ParquetFile(path)
            missing = [c for c in columns if c not in parquet.schema_arrow.names]
            if missing:
                raise UserError(f"corpus shard {path} has no column(s) {', '.join(missing)}; rebuild it with llmkit clean")
            for batch in parquet.iter_batches(batch_size=_rows_per_batch(parquet, batch_size), columns=list(columns)):
                yield {name: batch.column(name).to_pylist() for name in columns}


@contextlib.contextmanager
def readable_shard(path: Path | str) -> Iterator[None]:
    """Reading a corpus shard that pyarrow cannot read (its bytes changed, not its size, which loading
    checks), said in one line, naming the shard and `llmkit verify`. Bytes changed inside a compressed
    page's values may still read, as other values: loading does not hash the shards (it would read
    the corpus twice); `llmkit verify` does."""
    import pyarrow as pa

    try:
        yield
    except (PermissionError, FileNotFoundError) as exc:
        raise UserError(f"cannot read corpus shard {path} ({exc.strerror}); check the file's permissions, or rebuild the "
                        "corpus with llmkit clean") from None
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"corpus shard {path} cannot be read ({' '.join(str(exc).split())[:120]}); it is damaged: "
                        f"llmkit verify {Path(path).parent.parent} shows it, rebuild the corpus with llmkit clean") from None


def iter_corpus_texts(artifact: artifacts.Artifact | Path | str, batch_size: int = 1000) -> Iterator[list[str]]:
    """Batches of document texts, streamed in the corpus's row order (null texts read as "")."""
    for batch in iter_corpus_columns(artifact, ["text"], batch_size):
        yield [t if t is not None else "" for t in batch["text"]]


def iter_text_files(paths: Sequence[Path], batch_size: int = 1000) -> Iterator[list[str]]:
    """Plain UTF-8 text files as documents: each paragraph (text between blank lines), with the blank lines after it, is one document.

    A convenience input for `llmkit tokenizer train`; paragraphs keep the held-out slice and
    `--max-docs` meaningful for a single big file.
    """
    batch: list[str] = []
    for text_range in text_file_ranges(paths):
        for document in read_text_range(text_range):
            batch.append(document)
            if len(batch) >= batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


@dataclass(frozen=True)
class TextRange:
    """Bytes [start, end) of a text file, cut where a paragraph starts: its documents are read on their own."""

    path: str
    start: int
    end: int
    file_size: int | None = None  # the whole file's, when the driver planned the range (checked where it is read)


RANGE_BYTES = 64 << 20
# A blank line between two newlines, in bytes: a run of blank lines starts there, and goes on to the
# first line Python reads as text (not blank to `str.strip`: a line of U+3000, or a lone "\r" under
# universal newlines, is blank too), where the next paragraph starts. (Blank lines that are not
# found in bytes lose nothing: a cut only has to fall between paragraphs, not at every gap.)
_BLANK_LINE = re.compile(rb"\n[ \t\r\x0b\x0c]*\n")
_LINE_BREAK = re.compile(rb"[\r\n]")  # (universal newlines: "\r\n" is a "\r" break and an empty line)


def text_file_ranges(paths: Sequence[Path], max_bytes: int = RANGE_BYTES) -> list[TextRange]:
    """The files cut into ranges of about `max_bytes`, each starting at a paragraph.

    Where a range starts depends only on the file, so ranges (and whatever is drawn from them)
    are the same for any number of readers. A file without a blank line past a cut is one range.
    """
    ranges = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no such file: {path}; pass a corpus artifact or UTF-8 text files")
        size, start = path.stat().st_size, 0
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
            check_not_packed(head, path)
            check_not_wide(head, str(path))  # (as UTF-8, NULs between letters, which decode)
            check_no_nul(head, str(path))  # (as clean refuses it: tokenizing it after would fail)
            while size - start > max_bytes:
                cut = _next_paragraph(handle, start + max_bytes)
                if cut is None or cut >= size:
                    break
                ranges.append(TextRange(str(path.absolute()), start, cut, size))  # (absolute: Ray workers run elsewhere)
                start = cut
        ranges.append(TextRange(str(path.absolute()), start, size, size))
    return ranges


def _next_paragraph(handle, position: int, block: int = 1 << 20) -> int | None:
    """The first offset at or after `position` that follows a run of blank lines (the run whole:
    a paragraph's document holds the blank lines after it), or None."""
    handle.seek(position)
    carried, offset = b"", position
    while chunk := handle.read(block):
        window = carried + chunk
        match = _BLANK_LINE.search(window)
        start = _first_text_line(window, match.end()) if match else None
        if start is not None:
            return offset - len(carried) + start
        # keep the tail: a blank line may straddle two blocks (a newline and trailing whitespace),
        # a run of them go on in the next (kept up to 4 KB of it)
        tail = match.start() if match else window.rfind(b"\n")
        carried = window[tail:] if tail >= 0 and len(window) - tail < 4096 else b""
        offset += len(chunk)
    return None


def _first_text_line(window: bytes, at: int) -> int | None:
    """Where the first line from `at` on that is not blank starts, or None where the window ends
    before one is whole (the next block decides)."""
    while (end := _LINE_BREAK.search(window, at)) is not None:
        if window[at : end.start()].decode("utf-8", "replace").strip():
            return at
        at = end.end()
    return None


def read_text_range(text_range: TextRange) -> list[str]:
    """The paragraphs of one range, each with the blank lines after it (so that a tokenizer learns
    the paragraph break), read as `open(path, encoding="utf-8")` reads lines (universal newlines)."""
    same_file(text_range.path, text_range.file_size)
    with open(text_range.path, "rb") as handle:
        handle.seek(text_range.start)
        raw = handle.read(text_range.end - text_range.start)
    mark = len(BOM) if text_range.start == 0 and raw.startswith(BOM) else 0  # a byte order mark is no text
    raw = raw[mark:]  # (clean drops it too)
    nul = raw.find(b"\x00")
    if nul >= 0:  # (past the first 8 KB, which text_file_ranges checked: a tokenizer would learn NUL runs)
        raise UserError(f"{text_range.path} holds a NUL byte (at byte {text_range.start + mark + nul}), which no text has; "
                        "remove such bytes (e.g. tr -d '\\000'), or make a corpus of the file first (llmkit clean drops them)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # (not "or run llmkit clean": clean refuses it alike)
        raise UserError(f"{text_range.path} is not UTF-8 text ({exc.reason} at byte {text_range.start + mark + exc.start}); "
                        f"{advice_at(raw, exc.start, to_end=text_range.end == text_range.file_size)}") from None
    documents, paragraph, ended = [], [], False
    for line in io.StringIO(text, newline=None):
        if not line.strip():
            ended = bool(paragraph)  # (blank lines before the first paragraph are dropped)
            if ended:
                paragraph.append(line)
            continue
        if ended:
            documents.append("".join(paragraph))
            paragraph, ended = [], False
        paragraph.append(line)
    if paragraph:
        documents.append("".join(paragraph))
    return documents


@dataclass(frozen=True)
class RowGroup:
    """One Parquet row group of a corpus shard (at most 10,000 documents or 64 MB of text)."""

    path: str
    index: int
    bytes: int = 0  # uncompressed, all columns (Parquet's own count): how much reading it is
    file_size: int | None = None  # the shard's, when the driver planned the task (checked where it is read)


def same_file(path: str, size: int | None) -> None:
    """A task's file is the one the driver planned it on: on a Ray node the same path may hold
    another file (a node-local copy, a stale cache), whose text would be drawn under the input's
    fingerprint. Its size is compared (cheap, and what a copy of other contents nearly always changes)."""
    if size is None:
        return
    found = os.stat(path).st_size
    if found != size:
        from llmkit.executor import NodeFailed  # (the node's fault, not the input's: the work done is kept for a rerun)

        raise NodeFailed(f"{path} holds {found:,} bytes here where the driver planned its reading on {size:,}: another file "
                        "than the driver's; every node needs the stage's inputs at the same path, with the same contents")


def corpus_row_groups(artifact: artifacts.Artifact | Path | str) -> list[RowGroup]:
    """Every row group of a corpus, in the corpus's order."""
    import pyarrow.parquet as pq

    groups = []
    for path in corpus_shards(artifact):
        with readable_shard(path):
            metadata = pq.ParquetFile(path).metadata
            size = Path(path).stat().st_size
            groups += [RowGroup(str(Path(path).absolute()), index, metadata.row_group(index).total_byte_size, size)
                       for index in range(metadata.num_row_groups)]
    return groups


def read_row_group_texts(row_group: RowGroup) -> list[str]:
    """The document texts of one row group (null texts read as "")."""
    import pyarrow.parquet as pq

    same_file(row_group.path, row_group.file_size)
    with readable_shard(row_group.path):
        table = pq.ParquetFile(row_group.path).read_row_group(row_group.index, columns=["text"])
    return [t if t is not None else "" for t in table.column("text").to_pylist()]


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
            columns = {"id": [f"{source}-{start + i}" for i in range(len(part))], "text": part, "source": [source] * len(part)}
            table = pa.table(columns, schema=pa.schema([(field, pa.string()) for field in SCHEMA_FIELDS]))
            pq.write_table(table, build.dir / "shards" / shard_name(shard), compression=COMPRESSION, row_group_size=ROW_GROUP_ROWS)
        build.config = {"writer": "llmkit.data.corpus.write_corpus_artifact", "source": source}
        build.stats = {"documents": len(texts), "bytes": sum(len(t.encode("utf-8")) for t in texts)}
    return artifacts.load(out, kind="corpus")
