"""Where documents come from: files, folders, `datasets` and the built-in corpus.

Every input is checked before any work starts (missing paths, empty folders, unknown
`builtin:` names), then read as a stream: one document at a time, so memory does not grow
with the input. A bad line fails with `file:line`, unless `--skip-bad-lines` says to go on.

Each document gets an id `<source>:<where>` (line number, row number, topic) and a `source`
label that never holds an absolute path, so the output does not depend on where the input lives.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional

from llmkit.artifacts import storable_name
from llmkit.data.corpus import RECORD_SUFFIXES, TEXT_SUFFIXES, file_format
from llmkit.errors import UserError
from llmkit.jsonl import ABSENT, field_value
from llmkit.runtime import offline_when_unreachable

BUILTIN_PREFIX = "builtin:"
_BINARY_PROBE = 8192


@dataclass
class ReadOptions:
    text_field: Optional[str] = None
    doc_per: str = "file"
    skip_bad_lines: bool = False


@dataclass
class ReadStats:
    bad_lines_skipped: int = 0
    bad_line_examples: list[str] = field(default_factory=list)

    def skipped(self, where: str) -> None:
        self.bad_lines_skipped += 1
        if len(self.bad_line_examples) < 5:
            self.bad_line_examples.append(where)


@dataclass
class Source:
    """One stream of documents: a file, a dataset split, or a built-in corpus."""

    label: str
    size: Optional[int]  # bytes on disk, for the progress bar
    read: Callable[[ReadOptions, ReadStats], Iterator[tuple[str, str]]]  # yields (where, text)
    path: Optional[Path] = None  # the file itself (its identity for a resumed run: the label may be its name alone)
    identity: Optional[list] = None  # what a resumed run must have read, where `path` cannot say (a data set)
    plain_text: bool = False  # split into documents by --doc-per (records and the built-in corpus come as documents)
    # A corpus artifact's shard: `read` yields (id, source, text), each document keeping the id and
    # source an earlier clean gave it (its provenance, and tokenize's per-input validation draw).
    carries_ids: bool = False

    def documents(self, options: ReadOptions, stats: ReadStats) -> Iterator[tuple[str, str]]:
        """(id, text) pairs; a file that cannot be read to the end is a one-line error naming it."""
        for doc_id, _, text in self.labelled(options, stats):
            yield doc_id, text

    def labelled(self, options: ReadOptions, stats: ReadStats) -> Iterator[tuple[str, str, str]]:
        """(id, source, text): the source is this one's label, or a carried document's own."""
        import zlib

        try:
            if self.carries_ids:
                yield from self.read(options, stats)
                return
            for where, text in self.read(options, stats):
                yield (f"{self.label}:{where}" if where else self.label), self.label, text
        except (FileNotFoundError, PermissionError):
            raise
        except (OSError, EOFError, zlib.error, *_zstd_errors()) as exc:
            raise UserError(f"{self.label} cannot be read ({exc}); is the file complete and its compression right?") from None
        except RecursionError:
            raise UserError(f"{self.label} holds JSON nested too deeply to read; flatten its records") from None


# ----------------------------------------------------------------------------- resolving inputs




def _artifact_kind(path: Path) -> str:
    from llmkit import artifacts

    return artifacts.load(path).kind


def _readable_in_folder(path: Path) -> bool:
    fmt, _ = file_format(path)
    return fmt in TEXT_SUFFIXES or fmt in RECORD_SUFFIXES


def _label_for(path: Path, root: Optional[Path] = None) -> str:
    """A label (the hashed `source` and `id` columns) from the input alone, whatever folder the
    command ran in and however the path was typed: a file's name, or a folder's name and the path
    below it (a name two inputs share gets #2, #3, ... in input order: _make_labels_unique)."""
    if root is not None:
        return storable_name(f"{Path(os.path.abspath(root)).name}/{path.relative_to(root).as_posix()}")
    return storable_name(path.name)


def _distinct_name(path: Path, inputs: list[str]) -> str:
    """`path`'s name, with as many folders above it as it takes to tell it from the other inputs'."""
    others = [Path(os.path.abspath(arg)).parts for arg in inputs if not arg.startswith(BUILTIN_PREFIX)]
    others = [parts for parts in others if parts != path.parts]
    for depth in range(1, len(path.parts)):
        tail = path.parts[-depth:]
        if all(parts[-depth:] != tail for parts in others):
            return "/".join(tail)
    return path.as_posix().lstrip("/")


def resolve_inputs(
    inputs: list[str],
    dataset: Optional[str] = None,
    dataset_config: Optional[str] = None,
    split: str = "train",
    exclude: Optional[Path] = None,
) -> list[Source]:
    """Check every input and list its sources; `exclude` (the output folder) is never read."""
    if not inputs and not dataset:
        raise UserError("no input given; pass files or folders (or builtin:python-docs), or --dataset NAME")
    sources: list[Source] = []
    for arg in inputs:
        if arg.startswith(BUILTIN_PREFIX):
            sources.append(_builtin_source(arg[len(BUILTIN_PREFIX) :]))
            continue
        path = Path(os.path.abspath(arg))  # what a worker opens: on a Ray cluster, not in the driver's folder
        if not path.exists():
            raise UserError(f"input not found: {arg}; check the path")
        if path.is_dir() and (path / "manifest.json").is_file():  # an artifact: its data, not its manifest
            kind = _artifact_kind(path)
            if kind != "corpus":
                raise UserError(f"{arg} is a {kind} artifact; clean reads text: files, folders or a corpus artifact")
            from llmkit.data.corpus import corpus_shards

            # beside other inputs, its documents' ids and sources are prefixed with its name: two
            # corpora made from files of the same name (or a file of that name) stay apart; two
            # corpora of one name (runs/a/corpus, runs/b/corpus) by the folders above it
            prefix = f"{storable_name(_distinct_name(path, inputs))}/" if len(inputs) > 1 or dataset else ""
            sources.extend(_corpus_shard_source(p, _label_for(p, path), prefix) for p in corpus_shards(path))
            continue
        if path.is_dir() and _saved_dataset(path) is not None:  # its JSON files are metadata, its data Arrow files
            raise UserError(f"{arg} is a data set written by save_to_disk; read it with --dataset {arg}")
        if path.is_dir():
            files = sorted(
                (p for p in path.rglob("*") if p.is_file() and not _hidden(p, path) and _readable_in_folder(p)),
                key=lambda p: p.relative_to(path).as_posix(),
            )
            if exclude is not None:  # `llmkit clean data -o data/corpus --force` must not read its old output
                files = [p for p in files if not p.resolve().is_relative_to(exclude)]
            files = _outside_artifacts(files, path, arg)
            # A data folder's README describes the data beside or below it (a Hub repository's card above its
            # data/ folder); it is not part of it (other .md files are read, and so is a README over no data files)
            data_folders = {folder for p in files if file_format(p)[0] in RECORD_SUFFIXES
                            for folder in (p.parent, *p.parent.parents) if folder.is_relative_to(path)}
            files = [p for p in files if not (file_format(p)[0] in (".md", ".rst") and p.name.upper().startswith("README")
                                              and p.parent in data_folders)]
            if not files:
                raise UserError(
                    f"folder {arg} holds no readable files; expected .txt, .md, .jsonl, .json, .csv or .parquet "
                    "(optionally .gz/.zst compressed)"
                )
            sources.extend(_file_source(p, _label_for(p, path)) for p in files)
        else:
            sources.append(_file_source(path, _label_for(path)))
    if dataset:
        sources.append(_dataset_source(dataset, dataset_config, split))
    _make_labels_unique(sources)
    return sources


def _outside_artifacts(files: list[Path], root: Path, arg: str) -> list[Path]:
    """A folder's files without those of the llmkit artifacts inside it (a corpus made there
    earlier): their manifest is no data and their shards would be read again as more of it. A note
    names what was left out; an artifact is read as an input of its own."""
    from llmkit import artifacts

    inside = sorted({p.parent for p in files if p.name == artifacts.MANIFEST and artifacts.manifest_kind(p.parent)})
    if not inside:
        return files
    from llmkit.console import note

    shown = ", ".join(str(folder.relative_to(root)) for folder in inside[:3]) + (", ..." if len(inside) > 3 else "")
    note(f"{arg} holds {len(inside)} llmkit artifact folder(s) ({shown}), left out; give an artifact as an input "
         "of its own to read it")
    return [p for p in files if not any(p.is_relative_to(folder) for folder in inside)]


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _make_labels_unique(sources: list[Source]) -> None:
    """The second `data.txt` becomes `data.txt#2` (#3, ...: the first number no input is labelled with)."""
    used = {source.label for source in sources}
    seen: set[str] = set()
    numbers: dict[str, int] = {}  # a label -> the number its next copy tries first
    for source in sources:
        if source.label in seen:
            label, number = source.label, numbers.get(source.label, 2)
            while f"{label}#{number}" in used:
                number += 1
            numbers[label] = number + 1
            source.label = f"{label}#{number}"
            used.add(source.label)
        seen.add(source.label)


def _builtin_source(name: str) -> Source:
    from llmkit.corpus import builtin

    if name != builtin.NAME:
        raise UserError(f"unknown built-in corpus {BUILTIN_PREFIX}{name}; the built-in corpus is {BUILTIN_PREFIX}{builtin.NAME}")

    def read(options: ReadOptions, stats: ReadStats) -> Iterator[tuple[str, str]]:
        yield from builtin.python_docs()

    return Source(label=f"{BUILTIN_PREFIX}{builtin.NAME}", size=None, read=read)


# ----------------------------------------------------------------------------- files


def _open_binary(path: Path, compression: Optional[str]) -> IO[bytes]:
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression in (".zst", ".zstd"):
        return _ZstdReader(path)
    return open(path, "rb")


class _ZstdReader(io.RawIOBase):
    """Every frame of a .zst file, and an error where the last one ends early. zstandard's
    stream_reader returns what it could decode and then end of file, so a truncated file read as a
    shorter text (and it stopped after the first frame of a file of several, as pzstd writes)."""

    _CHUNK = 1 << 17

    def __init__(self, path: Path):
        import zstandard

        self._zstd = zstandard
        self._file = open(path, "rb")
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._mid_frame = False  # bytes went into a frame that has not ended yet
        self._out = b""
        self._at = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._at >= len(self._out):
            chunk = self._file.read(self._CHUNK)
            if not chunk:
                if self._mid_frame:
                    raise self._zstd.ZstdError("the data ends inside a frame")
                return 0
            self._out, self._at = self._decompress(chunk), 0
        count = min(len(buffer), len(self._out) - self._at)
        buffer[:count] = self._out[self._at : self._at + count]
        self._at += count
        return count

    def _decompress(self, data: bytes) -> bytes:
        parts = []
        while data:
            parts.append(self._frame.decompress(data))
            if not self._frame.eof:
                self._mid_frame = True
                break
            data = self._frame.unused_data  # the next frame's first bytes
            self._frame = self._zstd.ZstdDecompressor().decompressobj()
            self._mid_frame = False
        return b"".join(parts)

    def close(self) -> None:
        self._file.close()
        super().close()


# Compressions and archives that are not read, told by their first bytes (.gz and .zst are read)
_UNREAD_FORMATS = ((b"BZh", "bzip2-compressed"), (b"\xfd7zXZ\x00", "xz-compressed"), (b"PK\x03\x04", "a zip archive"),
                   (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"))


def _check_not_binary(head: bytes, label: str) -> None:
    for magic, what in _UNREAD_FORMATS:
        if head.startswith(magic):
            raise UserError(f"{label} is {what}, which clean does not read; extract it, or compress it as .gz or .zst")
    if b"\x00" in head[:_BINARY_PROBE]:
        raise UserError(f"{label} looks like a binary file (it contains NUL bytes); pass UTF-8 text files")


def _decode(data: bytes, label: str, line: Optional[int] = None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = line if line is not None else data[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{label}:{where}: invalid UTF-8 (byte 0x{data[exc.start]:02x}); convert the file to UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _lines(path: Path, label: str, compression: Optional[str], stats: ReadStats, skip_bad: bool, *,
           lone_cr_breaks: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, decoded line without its newline), streaming; bad UTF-8 fails or is skipped.
    `lone_cr_breaks`: a lone CR ends a line too (old Mac text files), as cleanup and tokenizer
    train read it; JSON Lines are lines by LF alone."""
    number = 0
    try:
        with _open_binary(path, compression) as handle:
            reader = io.BufferedReader(handle) if compression else handle
            _check_not_binary(reader.peek(_BINARY_PROBE)[:_BINARY_PROBE], label)
            for raw in reader:
                number += 1
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
                    raw = raw[3:]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    lone_crs = raw.removesuffix(b"\n").removesuffix(b"\r").count(b"\r") if lone_cr_breaks else 0
                    where = number + (raw[: exc.start].count(b"\r") if lone_crs else 0)  # the CR-ended line of the byte
                    if skip_bad:
                        stats.skipped(f"{label}:{where}")
                        number += lone_crs  # (the lines it holds go with it, and the count goes on after them)
                        continue
                    _decode(raw, label, where)
                body = text.removesuffix("\n").removesuffix("\r") if lone_cr_breaks else ""
                if "\r" in body:
                    *pieces, last = body.split("\r")
                    for piece in pieces:
                        yield number, piece
                        number += 1
                    yield number, last
                    continue
                yield number, text.rstrip("\r\n")
    except (OSError, EOFError) as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError)):
            raise
        raise UserError(f"{label} cannot be read ({exc}); is the file complete and its compression right?") from None
    except _zstd_errors() as exc:
        raise UserError(f"{label} cannot be decompressed ({exc}); is the file complete?") from None


def _zstd_errors() -> tuple[type[BaseException], ...]:
    try:
        import zstandard

        return (zstandard.ZstdError,)
    except ImportError:  # pragma: no cover
        return ()


def _corpus_shard_source(path: Path, label: str, prefix: str = "") -> Source:
    """A shard of a corpus artifact: its documents with the id and source they carry, after
    `prefix` (a shard without those columns, not written by llmkit, is read as any Parquet file)."""
    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(path).names)
    except Exception:  # (the Parquet reader names what is wrong with it)
        names = set()
    if not {"id", "text", "source"} <= names:
        return _file_source(path, label)

    def read(options: ReadOptions, stats: ReadStats) -> Iterator[tuple[str, str, str]]:
        row = 0
        for batch in _parquet_batches(pq.ParquetFile(path), ["id", "text", "source"], label):
            for doc_id, text, source in zip(*(batch.column(i).to_pylist() for i in range(3))):
                yield (prefix + doc_id if doc_id is not None else f"{label}:{row}"), prefix + (source or label), text or ""
                row += 1

    return Source(label=label, size=path.stat().st_size, read=read, path=path, carries_ids=True)


def _file_source(path: Path, label: str) -> Source:
    fmt, compression = file_format(path)
    try:
        size = None if compression else path.stat().st_size  # progress counts decompressed bytes
    except OSError:
        size = None
    if fmt in (".jsonl", ".ndjson", ".json"):
        read = _json_reader(path, label, compression, fmt)
    elif fmt == ".csv":
        read = _csv_reader(path, label, compression)
    elif fmt == ".parquet":
        if compression:
            raise UserError(f"{label}: Parquet files are compressed inside; pass the .parquet file itself")
        read = _parquet_reader(path, label)
    else:
        return Source(label=label, size=size, read=_text_reader(path, label, compression), path=path, plain_text=True)
    return Source(label=label, size=size, read=read, path=path)


def _text_reader(path: Path, label: str, compression: Optional[str]):
    def read(options: ReadOptions, stats: ReadStats) -> Iterator[tuple[str, str]]:
        if options.doc_per == "file":
            try:
                with _open_binary(path, compression) as handle:
                    data = handle.read()
            except (OSError, EOFError) as exc:
                if isinstance(exc, (FileNotFoundError, PermissionError)):
                    raise
                raise UserError(f"{label} cannot be read ({exc}); is the file complete and its compression right?") from None
            except _zstd_errors() as exc:
                raise UserError(f"{label} cannot be decompressed ({exc}); is the file complete?") from None
            _check_not_binary(data, label)
            text = _decode(data, label)
            yield "", text[1:] if text.startswith("\ufeff") else text  # a byte order mark is no text (as per line)
        elif options.doc_per == "line":
            for number, line in _lines(path, label, compression, stats, options.skip_bad_lines, lone_cr_breaks=True):
                if line.strip():
                    yield str(number), line
        else:  # blank-line: paragraphs separated by empty lines
            block: list[str] = []
            start = 0
            for number, line in _lines(path, label, compression, stats, options.skip_bad_lines, lone_cr_breaks=True):
                if line.strip():
                    if not block:
                        start = number
                    block.append(line)
                elif block:
                    yield str(start), "\n".join(block)
                    block = []
            if block:
                yield str(start), "\n".join(block)

    return read


# Records the text field of a JSON file is chosen from: a file's first record alone may lack it.
_FIELD_LOOKAHEAD = 100


class _FieldPicker:
    """The text field of a JSON file: --text-field (of a,b the first one the file has), else "text",
    else the only field holding text (in every record, or in any). Chosen from the first records
    (up to _FIELD_LOOKAHEAD, fewer once a record settles it), so that a first record lacking "text"
    neither makes it guess another field nor passes for a wrong --text-field; after that a record
    lacking the field is a bad record."""

    def __init__(self, label: str, wanted: Optional[str]):
        self.label = label
        self.names = _alternatives(wanted) if wanted is not None else []
        self.field: Optional[str] = None
        self.problem: Optional[str] = None  # no field can be chosen: the error at the first record
        self.seen = False  # some record has the field: one without it is a bad record, not a wrong name

    def pick(self, items: Iterator[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
        """Passes (where, record) pairs through unchanged, having chosen the field from the first ones."""
        head = []
        for where, record in items:
            head.append((where, record))
            if len(head) >= _FIELD_LOOKAHEAD or (isinstance(record, dict) and (self.names or ["text"])[0] in record):
                break
        self._decide([record for _, record in head], len(head))
        yield from head
        yield from items

    def _decide(self, records: list[Any], read: int) -> None:
        dicts = [r for r in records if isinstance(r, dict)]
        keys = list(dict.fromkeys(k for r in dicts for k in r))
        strings = list(dict.fromkeys(k for r in dicts for k, v in r.items() if isinstance(v, str)))
        nested = list(dict.fromkeys(name for r in dicts for name in _nested_text_fields(r)))  # (offered, and reachable)
        offer = ", ".join(strings + nested or keys) or "(no fields)"
        if self.names:
            keys += [name for name in self.names if name not in keys and any(field_value(r, name) is not ABSENT for r in dicts)]
            self.field = next((name for name in self.names if name in keys), self.names[0])
            if dicts and self.field not in keys:
                first = f" in its first {read} records" if read > 1 else ""
                self.problem = (f"{self.label}: no field {' or '.join(map(repr, self.names))}{first}; "
                                f"pass --text-field with one of: {offer}")
        elif "text" in keys or not dicts:
            self.field = "text"
        elif len(strings) == 1 or len(always := [k for k in strings if all(isinstance(r.get(k), str) for r in dicts)]) == 1:
            # else the one field every record holds text in (a "url" in some records does not make "content" ambiguous)
            self.field = strings[0] if len(strings) == 1 else always[0]
            _note_guessed_field(self.label, self.field)
        else:
            self.problem = f"{self.label}: no 'text' field; pass --text-field with one of: {offer}"
        self.seen = self.field in keys

    def text(self, record: Any) -> str:
        if not isinstance(record, dict):
            kind = "a JSON string" if isinstance(record, str) else f"a JSON {type(record).__name__}"
            raise _BadRecord(f"{kind}, not an object; write one {{\"text\": ...}} record per line")
        if self.problem is not None:
            raise UserError(self.problem)
        name = self.field
        value = field_value(record, name)
        if value is ABSENT:
            raise _BadRecord(f"no field {name!r}" + (", which other records have" if self.seen else ""))
        if value is None:
            raise _BadRecord(f"field {name!r} is null")
        if not isinstance(value, str):
            raise _BadRecord(f"field {name!r} holds {type(value).__name__}, not text")
        return value


class _BadRecord(Exception):
    pass


def _nested_text_fields(record: dict, prefix: str = "") -> Iterator[str]:
    """The dotted names of the text inside a record's nested objects (for the message that offers fields)."""
    for key, value in record.items():
        if isinstance(value, dict) and isinstance(key, str):
            for inner, leaf in value.items():
                if isinstance(leaf, str):
                    yield f"{prefix}{key}.{inner}"
            yield from _nested_text_fields(value, f"{prefix}{key}.")


def _note_guessed_field(label: str, name: str) -> None:
    from llmkit.console import note

    note(f"{label} has no 'text' field; reading {name!r}, its only text field (--text-field chooses another)")


def _json_reader(path: Path, label: str, compression: Optional[str], fmt: str):
    def read(options: ReadOptions, stats: ReadStats) -> Iterator[tuple[str, str]]:
        picker = _FieldPicker(label, options.text_field)
        if fmt == ".json" and _starts_with_bracket(path, compression):
            yield from _json_array(path, label, compression, picker)
            return
        if fmt == ".json":
            _refuse_single_object(path, label, compression)
        for number, record in picker.pick(_json_lines(path, label, compression, stats, options.skip_bad_lines)):
            try:
                if isinstance(record, json.JSONDecodeError):
                    raise record
                text = picker.text(record)
            except (json.JSONDecodeError, _BadRecord) as exc:
                if options.skip_bad_lines:
                    stats.skipped(f"{label}:{number}")
                    continue
                problem = (f"malformed JSON line ({exc.msg}: column {exc.colno})" if isinstance(exc, json.JSONDecodeError)
                           else str(exc))
                raise UserError(f"{label}:{number}: {problem}; fix it or pass --skip-bad-lines") from None
            yield str(number), text

    return read


def _json_lines(path: Path, label: str, compression: Optional[str], stats: ReadStats,
                skip_bad: bool) -> Iterator[tuple[int, Any]]:
    """(line number, the record or the JSONDecodeError that makes its line a bad one); blank lines skipped."""
    for number, line in _lines(path, label, compression, stats, skip_bad):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, exc


def _refuse_single_object(path: Path, label: str, compression: Optional[str]) -> None:
    """A .json file holding one object is not a list of documents: say so rather than guess. A
    first line that is a whole JSON value followed by another line is JSON Lines: the rest is not
    read here (the whole of a 200 MB file was, before it was streamed: 469 against 183 MB peak)."""
    def next_line(handle) -> bytes:  # the next line that is not blank, b"" at the end
        line = handle.readline()
        while line and not line.strip():
            line = handle.readline()
        return line

    with _open_binary(path, compression) as handle:
        first = next_line(handle)
        if not first:
            return  # empty: the line reader says so
        try:
            json.loads(first)
            if next_line(handle):
                return  # a whole value, then another line: JSON Lines
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            pass  # not a whole value on its line: a JSON document over several lines (or broken)
        data = first + handle.read()
    try:
        json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return  # JSON Lines (or broken): the line reader reports problems with their line
    if data.strip().startswith(b"{"):
        raise UserError(f"{label} holds a single JSON object, not a list of documents; write a JSON array "
                        "[{\"text\": ...}, ...] or one record per line in a .jsonl file")


def _starts_with_bracket(path: Path, compression: Optional[str]) -> bool:
    with _open_binary(path, compression) as handle:
        head = handle.read(1024)
    return head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"["


def _json_array(path: Path, label: str, compression: Optional[str], picker: _FieldPicker) -> Iterator[tuple[str, str]]:
    # A .json array has to be parsed whole; JSON Lines is the streaming format.
    with _open_binary(path, compression) as handle:
        data = handle.read()
    try:
        text = _decode(data, label)
        records = json.loads(text[1:] if text.startswith("\ufeff") else text)  # a byte order mark, as JSONL allows
    except json.JSONDecodeError as exc:
        raise UserError(f"{label}:{exc.lineno}: malformed JSON ({exc.msg}); fix the file") from None
    for index, record in picker.pick(enumerate(records)):
        try:
            yield str(index), picker.text(record)
        except _BadRecord as exc:
            raise UserError(f"{label}: item {index}: {exc}; fix the file") from None


def _csv_reader(path: Path, label: str, compression: Optional[str]):
    def read(options: ReadOptions, stats: ReadStats) -> Iterator[tuple[str, str]]:
        with _open_binary(path, compression) as handle:
            head = handle.read(_BINARY_PROBE)
        _check_not_binary(head, label)
        with _open_binary(path, compression) as handle:
            stream = io.TextIOWrapper(io.BufferedReader(handle) if compression else handle, encoding="utf-8-sig", newline="")
            csv.field_size_limit(2**31 - 1)  # a document is one field; the default limit is 128 KB
            # Lenient, as spreadsheets write (`"He said "hi" to me"` is read, not refused), except for a
            # quote never closed: the reader then asks for lines past the end of the file, and the
            # record it returns is the rest of the file as one field.
            past_the_end = [False]

            def lines() -> Iterator[str]:
                yield from stream
                past_the_end[0] = True

            reader = csv.reader(lines(), strict=False)
            start = 1
            try:
                header = next(reader, None)
                if header is None:
                    return
                column = header.index(_pick_column(label, options.text_field, header, header))
                while True:
                    start = reader.line_num + 1  # a quoted field may span lines: a record is named by its first
                    try:
                        row = next(reader)
                    except StopIteration:
                        break
                    except csv.Error:
                        if options.skip_bad_lines:
                            stats.skipped(f"{label}:{start}")
                            continue
                        raise
                    if past_the_end[0]:  # the reader took the rest of the file: nothing left to go on with
                        raise UserError(f"{label}:{start}: malformed CSV (a quote in the record starting on this line is "
                                        "never closed); fix it")
                    if not row:  # a blank line
                        continue
                    if len(row) != len(header):
                        if options.skip_bad_lines:
                            stats.skipped(f"{label}:{start}")
                            continue
                        raise UserError(
                            f"{label}:{start}: row has a different number of fields than the header; "
                            "fix it or pass --skip-bad-lines"
                        )
                    yield str(start), row[column]
            except UnicodeDecodeError:  # decoded a block at a time: the line is found again, in bytes
                line, byte = _first_invalid_utf8(path, compression)
                where = f"{label}:{line}: invalid UTF-8 (byte 0x{byte:02x})" if byte is not None else f"{label}: invalid UTF-8"
                raise UserError(f"{where}; convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
            except csv.Error as exc:
                raise UserError(f"{label}:{start}: malformed CSV ({exc}); fix it or pass --skip-bad-lines") from None

    return read


def _first_invalid_utf8(path: Path, compression: Optional[str]) -> tuple[int, int | None]:
    """The line (as the CSV reader counts lines: LF, CRLF or a lone CR ends one) and the value of
    the first byte that is not UTF-8. (Split at LF, a line never cuts a UTF-8 character.)"""
    line = 1
    with _open_binary(path, compression) as handle:
        for raw in io.BufferedReader(handle) if compression else handle:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return line + raw[: exc.start].count(b"\r"), raw[exc.start]
            line += 1 + raw.removesuffix(b"\n").removesuffix(b"\r").count(b"\r")
    return line, None  # (decoded whole this time: the file changed between the reads)


def _parquet_reader(path: Path, label: str):
    def read(options: ReadOptions, stats: ReadStats) -> Iterator[tuple[str, str]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"{label} is not a valid Parquet file ({exc})") from None
        schema = parquet.schema_arrow
        types = {f.name: f.type for f in schema}
        types.update(_struct_leaves(schema))  # a struct column's fields, as `a.b`
        name = _pick_column(label, options.text_field, list(types), [f.name for f in schema if _is_string(f.type)])
        if not _is_string(types[name]):
            raise UserError(f"{label}: column {name!r} holds {types[name]}, not text; pass --text-field")
        row = 0
        for batch in _parquet_batches(parquet, [name], label):
            column = batch.column(0)
            if name not in schema.names:  # read as the struct around it: its field, null where the struct is
                import pyarrow.compute as pc

                column = pc.struct_field(column, name.split(".")[1:])
            if pa.types.is_dictionary(column.type):  # a pandas category column: text, stored once per distinct value
                column = column.dictionary_decode()
            try:
                values = column.to_pylist()
            except UnicodeDecodeError:  # written by a tool that does not check: name the row
                values = [_parquet_text(value, label, row + offset, options, stats)
                          for offset, value in enumerate(column.cast(pa.large_binary()).to_pylist())]
            for value in values:
                if value is not _BAD_ROW:
                    yield str(row), value or ""
                row += 1

    return read


_BAD_ROW = object()


def _struct_leaves(fields: Any, prefix: str = "") -> dict[str, Any]:
    """`a.b` -> type for the fields inside struct columns (any depth)."""
    import pyarrow as pa

    found = {}
    for column in fields:
        if pa.types.is_struct(column.type):
            inner = [column.type.field(i) for i in range(column.type.num_fields)]
            found.update({f"{prefix}{column.name}.{f.name}": f.type for f in inner})
            found.update(_struct_leaves(inner, f"{prefix}{column.name}."))
    return found


def _parquet_batches(parquet: Any, columns: list[str], label: str) -> Iterator[Any]:
    import pyarrow as pa

    batches = parquet.iter_batches(columns=columns, batch_size=1024)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except pa.ArrowInvalid as exc:  # e.g. a dictionary of strings that are not UTF-8, checked as it is read
            named = ", ".join(map(repr, columns))
            raise UserError(f"{label}: column {named} cannot be read ({exc}); rewrite the file with its text as UTF-8") \
                from None
        yield batch


def _parquet_text(value: Optional[bytes], label: str, row: int, options: ReadOptions, stats: ReadStats) -> Any:
    try:
        return None if value is None else value.decode("utf-8")
    except UnicodeDecodeError as exc:
        if options.skip_bad_lines:
            stats.skipped(f"{label}:{row}")
            return _BAD_ROW
        raise UserError(f"{label}:{row}: invalid UTF-8 (byte 0x{value[exc.start]:02x}); rewrite the column as "
                        "UTF-8 or pass --skip-bad-lines") from None


def _is_string(arrow_type: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        return _is_string(arrow_type.value_type)
    return (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
            or getattr(pa.types, "is_string_view", lambda _: False)(arrow_type))


def _a_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _alternatives(text_field: str) -> list[str]:
    return [f.strip() for f in text_field.split(",") if f.strip()]


def _pick_column(label: str, wanted: Optional[str], names: list[str], string_names: list[str]) -> str:
    if wanted is not None:
        wanted = next((f for f in _alternatives(wanted) if f in names), _alternatives(wanted)[0])
        if wanted not in names:
            raise UserError(f"{label}: no column {wanted!r}; pass --text-field with one of: {', '.join(names)}")
        return wanted
    if "text" in names:
        return "text"
    if len(string_names) == 1:
        _note_guessed_field(label, string_names[0])
        return string_names[0]
    raise UserError(f"{label}: no 'text' column; pass --text-field with one of: {', '.join(names)}")


# ----------------------------------------------------------------------------- datasets

_BUILDERS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}


def _local_builder(path: Path) -> tuple[str, dict[str, list[str]]]:
    """A local path goes to `datasets` as builder name + data_files per split, never as a
    repository id. A folder's files are split as `datasets` splits them (its own resolver: split
    names in folder names first, then in file names, then `data/{split}-00000-of-00001` shards;
    with none of these every file is train); a single file is the train split."""
    if not path.is_dir():
        return _BUILDERS.get(file_format(path)[0], "text"), {"train": [str(path)]}
    files = sorted(p for p in path.rglob("*") if p.is_file() and _readable_in_folder(p) and not _hidden(p, path))
    if not files:
        raise UserError(f"dataset folder {path} holds no .jsonl/.json/.csv/.parquet/.txt files")
    # Record files (a data set) win over loose text files (a README beside them).
    builders = {_BUILDERS[file_format(p)[0]] for p in files if file_format(p)[0] in _BUILDERS}
    if len(builders) > 1:  # `datasets` builds a data set from files of one format
        suffixes = sorted({file_format(p)[0] for p in files if file_format(p)[0] in _BUILDERS})
        raise UserError(f"dataset folder {path} mixes {', '.join(suffixes)} files, and a data set is read in one format; "
                        f"pass the folder as an input instead (llmkit clean {path}: it reads every file), or keep one format there")
    builder = builders.pop() if builders else "text"
    return builder, _splits_as_datasets_finds_them(path, [p for p in files if _BUILDERS.get(file_format(p)[0], "text") == builder])


def _splits_as_datasets_finds_them(folder: Path, files: list[Path]) -> dict[str, list[str]]:
    """`files` (the data set's, inside `folder`) by split, with `datasets`' own rules for a folder:
    split names in folder names first, then in file names, then the Hub's `data/{split}-NNNNN-of-NNNNN`
    shards; where none names a split, every file is train. Its resolver sees only these files, so a
    stray `train.log` or `test_notes.md` decides nothing; the folder's name is escaped, since
    `datasets` reads it as a glob pattern (`runs[1]`)."""
    import functools
    import glob

    from datasets.data_files import _get_data_files_patterns, resolve_pattern

    ours = {p.resolve() for p in files}

    @functools.cache  # (each pattern is tried while the rules are chosen, then read for the chosen ones)
    def found(pattern: str) -> list[str]:
        try:
            matches = resolve_pattern(pattern, base_path=glob.escape(str(folder)))
        except FileNotFoundError:
            return []
        return sorted(match for match in matches if Path(match).resolve() in ours)

    def resolver(pattern: str) -> list[str]:
        matches = found(pattern)
        if not matches:
            raise FileNotFoundError(pattern)
        return matches

    try:
        patterns = _get_data_files_patterns(resolver)
    except ValueError as exc:  # a Hub-style shard name whose split `datasets` refuses ("my-split-00000-of-00001")
        raise UserError(f"dataset folder {folder}: {' '.join(str(exc).split())[:200]}; rename its files, or pass the folder "
                        "as an input (llmkit clean FOLDER reads every file)") from None
    splits = {str(split): sorted({match for pattern in split_patterns for match in found(pattern)})
              for split, split_patterns in patterns.items()}
    return {split: matches for split, matches in splits.items() if matches}


def _saved_dataset(path: Path) -> Optional[dict[str, list[str]]]:
    """The files per split of a folder written by `save_to_disk`: a `DatasetDict`'s (a folder per
    split) or a `Dataset`'s (the train split, as a single file is); None for any other folder."""
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path / 'dataset_dict.json'} is not a data set's split list; write it again with "
                            "DatasetDict.save_to_disk") from None
        return {split: sorted(str(p) for p in (path / split).iterdir() if p.is_file()) if (path / split).is_dir() else []
                for split in splits}
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return {"train": sorted(str(p) for p in path.iterdir() if p.is_file())}
    return None


def _dataset_identity(local: Path, name: str, config_name: Optional[str], split: str,
                      data_files: Optional[dict[str, list[str]]]) -> list:
    """What a resumed run must have been reading: the label holds only the folder's last name, so
    another folder of that name, an edited file or another configuration would otherwise continue
    the partial output of this one. A local data set is its resolved path and every file's size and
    modification time; a hub data set its name (the revision is whatever the pinned cache holds)."""
    from llmkit.resume import file_identity

    if data_files is None:
        return ["dataset", name, config_name, split]
    files = [[split_name, *file_identity(file)] for split_name, paths in sorted(data_files.items()) for file in paths]
    return ["dataset", str(local.resolve()), config_name, split, files]


def _dataset_source(name: str, config_name: Optional[str], split: str) -> Source:
    local = Path(name)
    label = f"dataset:{local.name if local.exists() else name}/{split}"
    path_like = name.startswith(("./", "../", "/", "~")) or name.lower().endswith((".jsonl", ".json", ".csv", ".parquet", ".arrow",
                                                                                     ".txt"))
    if path_like and not local.exists():  # not a Hub name (OWNER/NAME): a file that is not there
        raise UserError(f"--dataset {name}: no such file or folder; check the path (a Hub dataset is named OWNER/NAME)")
    saved = _saved_dataset(local) if local.is_dir() else None
    if saved is not None:  # read with load_from_disk: its Arrow files are memory-mapped where they are
        builder, data_files = "saved", saved
    else:
        builder, data_files = _local_builder(local) if local.exists() else (None, None)
    if builder == "text":  # `datasets`' text builder makes a document of every line, whatever --doc-per says
        raise UserError(f"--dataset {name}: text files are read as inputs, where --doc-per says what a document is "
                        f"(llmkit clean {name}); --dataset reads data sets: .jsonl/.json, .csv, .parquet or .arrow files, a "
                        "folder save_to_disk wrote, or a Hub name")
    if data_files is not None and split not in data_files:
        raise UserError(f"{name} has no split {split!r}; its splits are {', '.join(data_files)} "
                        "(a single file is the train split); choose one with --split")

    def read(options: ReadOptions, stats: ReadStats) -> Iterator[tuple[str, str]]:
        with contextlib.ExitStack() as held:  # a local file's fresh cache lasts while its rows are read
            yield from read_loaded(options, stats, held)

    def read_loaded(options: ReadOptions, stats: ReadStats, held: contextlib.ExitStack) -> Iterator[tuple[str, str]]:
        import datasets

        from llmkit.runtime import datasets_cache_dir, datasets_quiet, local_dataset

        offline = False
        try:
            if builder == "saved":
                ds = datasets.load_from_disk(str(local))
                ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
            elif data_files is not None:  # prepared afresh: `datasets` keys a local file by path and time
                ds = held.enter_context(local_dataset(builder, data_files, split))
            else:
                with offline_when_unreachable() as offline, datasets_quiet():
                    ds = datasets.load_dataset(name, config_name, split=split, cache_dir=str(datasets_cache_dir()))
        except UserError:
            raise
        except Exception as exc:  # datasets raises many types: not found, offline, bad split, bad files
            if data_files is not None:  # the reader's own reason (a JSON parse error, a bad byte), not the wrapper's
                reason = exc
                for _ in range(16):  # (a chain is short; the bound only guards against a cycle)
                    exc = exc.__cause__ or (exc.__context__ if type(exc).__module__.startswith("datasets") else None)
                    if exc is None:
                        break
                    if str(exc).strip():  # (a bare StopIteration says nothing)
                        reason = exc
                detail = " ".join(str(reason).split())[:300]
                advice = ("write it again with save_to_disk" if builder == "saved" else
                          f"fix the file, or pass it as an input (llmkit clean {name}), whose readers name the line "
                          "and skip bad ones with --skip-bad-lines")
                raise UserError(f"could not read dataset {name!r}: {type(reason).__name__}: {detail}; {advice}") from None
            detail = " ".join(str(exc).split())[:300]
            if offline:
                raise UserError(
                    f"dataset {name!r} is not in the local cache and the Hugging Face Hub cannot be reached; connect to "
                    "the network, or pass a local file or folder with --dataset PATH"
                ) from None
            raise UserError(
                f"could not load dataset {name!r} (split {split!r}): {type(exc).__name__}: {detail}; "
                "check the name, --dataset-config and --split (hub datasets need a network connection)"
            ) from None
        wanted = _alternatives(options.text_field) if options.text_field is not None else []
        if any("." in name and name not in ds.column_names for name in wanted):
            ds = ds.flatten()  # a nested column's fields become columns named `a.b` (wmt's `translation.de`)
        string_columns = [k for k, v in ds.features.items() if getattr(v, "dtype", None) in ("string", "large_string")]
        guessable = string_columns
        if options.text_field is None:  # (a CSV's columns are all read as text: a column of digits, a label, is no text)
            head = ds[:100]
            guessable = [k for k in string_columns if any(isinstance(v, str) and not _a_number(v) for v in head[k])]
        column = _pick_column(label, options.text_field, list(ds.column_names), guessable)
        if column not in string_columns:  # (the file readers refuse such a field too, rather than str() its numbers)
            holds = getattr(ds.features[column], "dtype", type(ds.features[column]).__name__)
            raise UserError(f"{label}: column {column!r} holds {holds}, not text; pass --text-field with a text column"
                            + (f" ({', '.join(string_columns)})" if string_columns else ""))
        for start in range(0, len(ds), 1000):
            batch = ds[start : start + 1000][column]
            for offset, value in enumerate(batch):
                if value is None:  # (a record without the field reads as null too) a bad record, as in a JSONL input
                    if options.skip_bad_lines:
                        stats.skipped(f"{label}:{start + offset}")
                        continue
                    raise UserError(f"{label}: row {start + offset} (counting from 0, over the split's files in order): "
                                    f"column {column!r} is null (a record without text); fix it or pass --skip-bad-lines")
                yield str(start + offset), value

    size = None
    if local.is_file():
        size = os.path.getsize(local)
    return Source(label=label, size=size, read=read, identity=_dataset_identity(local, name, config_name, split, data_files))
