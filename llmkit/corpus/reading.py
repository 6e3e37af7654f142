"""Reading one input file: what a reader is told and reports, the stream of documents a source
is, the bytes of a file through its compression (and the refusal of binaries and archives), its
lines decoded as UTF-8, and plain text split into documents by --doc-per.

JSON, CSV and Parquet records are read in record_files.py, `datasets` data sets in
dataset_source.py; sources.py turns the command's inputs into sources.
"""

from __future__ import annotations

import contextlib
import os
import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator, Optional

from llmkit.data.corpus import RECORD_SUFFIXES, TEXT_SUFFIXES, file_format
from llmkit.errors import UserError
from llmkit.jsonl import BOM, SNIFF_BYTES, advice_at, check_no_nul, check_not_wide


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
        except (OSError, EOFError, zlib.error, *zstd_errors()) as exc:
            raise UserError(f"{self.label} cannot be read ({exc}); is the file complete and its compression right?") from None
        except RecursionError:
            raise UserError(f"{self.label} holds JSON nested too deeply to read; flatten its records") from None


def readable_in_folder(path: Path) -> bool:
    fmt, _ = file_format(path)
    return fmt in TEXT_SUFFIXES or fmt in RECORD_SUFFIXES


# Compressions clean does not read, by name: a data file in one (data.jsonl.bz2) is refused in a folder as it
# is when named (check_not_binary), not left out unsaid
_UNREAD_COMPRESSIONS = {".bz2": "bzip2-compressed", ".xz": "xz-compressed", ".lzma": "lzma-compressed",
                        ".lz4": "lz4-compressed", ".br": "brotli-compressed", ".zip": "a zip archive", ".7z": "a 7-Zip archive"}


@dataclass
class FolderFiles:
    readable: list[Path]  # the files clean reads, sorted by their path below the folder
    other: list[Path]  # those of other formats (said in a note)
    back_up: list[Path] = field(default_factory=list)  # linked folders leading to the folder itself or above it: left out
    out: list[Path] = field(default_factory=list)  # linked folders followed out of the folder


def folder_files(root: Path) -> FolderFiles:
    """The files under `root`, hidden ones (a name starting with ".") left out. Linked folders are
    followed (a data/ folder of links to shards on other disks) after every real folder, in sorted
    order, each real folder once and under its own path where the tree holds it (the file system's
    listing order decided which path labelled it: another fingerprint on a copy); a link to the folder
    itself or above it is not (it read everything beside the input). A dangling link or a folder
    that cannot be read is an error: its files would be left out unsaid (a disk not mounted)."""
    root = Path(root)
    root_real = os.path.realpath(root)
    readable, other, seen, linked, back_up, out = [], [], set(), [], [], []

    def failed(error: OSError) -> None:
        raise UserError(f"{error.filename} cannot be read ({error.strerror}), and its files would be left out of {root}; "
                        "make it readable, or move it out of the folder") from None

    def walk(top: Path) -> None:
        for folder, subfolders, names in os.walk(top, onerror=failed):  # (links not followed here: `linked`, after)
            real = os.path.realpath(folder)
            if real in seen:
                subfolders[:] = []
                continue
            seen.add(real)
            kept = []
            for name in sorted(subfolders):
                if name.startswith("."):
                    continue
                if os.path.islink(os.path.join(folder, name)):
                    linked.append(Path(folder) / name)  # (walked once every real folder is)
                else:
                    kept.append(name)
            subfolders[:] = kept
            for name in sorted(names):
                path = Path(folder) / name
                if name.startswith("."):
                    continue
                if os.path.islink(path) and not path.exists():
                    raise UserError(f"{path} is a link to {os.readlink(path)}, which is not there, and its text would be "
                                    f"left out of {root}; restore what it links to (a disk not mounted?), or remove the link")
                if not path.is_file():  # (a socket, a pipe)
                    continue
                if readable_in_folder(path):
                    readable.append(path)
                    continue
                suffixes = [s.lower() for s in path.suffixes]
                inner = file_format(Path(path.stem))[0] if len(suffixes) > 1 else ""
                if suffixes and suffixes[-1] in _UNREAD_COMPRESSIONS and (inner in TEXT_SUFFIXES or inner in RECORD_SUFFIXES):
                    raise UserError(f"{path} is {_UNREAD_COMPRESSIONS[suffixes[-1]]}, which clean does not read; extract "
                                    "it, or compress it as .gz or .zst (or move it out of the folder)")
                other.append(path)

    order = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    try:
        walk(root)
        while linked:
            linked.sort(key=order)
            link = linked.pop(0)
            real = os.path.realpath(link)
            if real in seen:
                continue
            if root_real == real or root_real.startswith(real.rstrip(os.sep) + os.sep):
                back_up.append(link)
                continue
            if not real.startswith(root_real + os.sep):
                out.append(link)
            walk(link)
    except RecursionError:
        raise UserError(f"{root} nests its folders too deep to read (over a thousand levels); give its data folders "
                        "themselves") from None
    return FolderFiles(sorted(readable, key=order), sorted(other, key=order), back_up, out)


def open_binary(path: Path, compression: Optional[str]) -> IO[bytes]:
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression in (".zst", ".zstd"):
        return _ZstdReader(path)
    # a buffer of at least SNIFF_BYTES: the binary and UTF-16 checks peek that much (the file
    # system's block size, 4 KB, showed them half the sample)
    return open(path, "rb", buffering=1 << 16)


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


def check_not_binary(head: bytes, label: str) -> None:
    for magic, what in _UNREAD_FORMATS:
        if head.startswith(magic):
            raise UserError(f"{label} is {what}, which clean does not read; extract it, or compress it as .gz or .zst")
    check_not_wide(head[:SNIFF_BYTES], label)
    check_no_nul(head, label)


def decode_utf8(data: bytes, label: str, line: Optional[int] = None, *, rest=None, utf8_before: bool = False) -> str:
    """`data` (a line, or a whole file) as UTF-8; else a one-line error with advice_at's advice (`rest`:
    the open file past a line; `utf8_before`: earlier lines held UTF-8 characters)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = line if line is not None else data[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{label}:{where}: invalid UTF-8 (byte 0x{data[exc.start]:02x}); "
            f"{advice_at(data, exc.start, utf8_before=utf8_before, rest=rest, starts_file=line is None)}"
        ) from None


def numbered_lines(path: Path, label: str, compression: Optional[str], stats: ReadStats, skip_bad: bool, *,
           lone_cr_breaks: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, decoded line without its newline), streaming; bad UTF-8 fails or is skipped.
    `lone_cr_breaks`: a lone CR ends a line too (old Mac text files), as cleanup and tokenizer
    train read it; JSON Lines are lines by LF alone."""
    number = 0
    with read_errors(label), open_binary(path, compression) as handle:
        reader = io.BufferedReader(handle, buffer_size=1 << 16) if compression else handle
        check_not_binary(reader.peek(SNIFF_BYTES)[:SNIFF_BYTES], label)
        utf8_before = False  # (a stray byte in a UTF-8 file: the advice is to fix it, not to convert the file)
        for raw in reader:
            number += 1
            if number == 1 and raw.startswith(BOM):  # a UTF-8 byte order mark
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
                decode_utf8(raw, label, where, rest=reader, utf8_before=utf8_before)
            utf8_before = utf8_before or not raw.isascii()
            body = text.removesuffix("\n").removesuffix("\r") if lone_cr_breaks else ""
            if "\r" in body:
                *pieces, last = body.split("\r")
                for piece in pieces:
                    yield number, piece
                    number += 1
                yield number, last
                continue
            yield number, text.rstrip("\r\n")


@contextlib.contextmanager
def read_errors(label: str) -> Iterator[None]:
    """A file that cannot be read to its end (cut short, its compression broken) as one line naming it;
    a missing or unreadable file as itself (the stage names those)."""
    try:
        yield
    except (FileNotFoundError, PermissionError):
        raise
    except (OSError, EOFError) as exc:
        raise UserError(f"{label} cannot be read ({exc}); is the file complete and its compression right?") from None
    except zstd_errors() as exc:
        raise UserError(f"{label} cannot be decompressed ({exc}); is the file complete?") from None


def zstd_errors() -> tuple[type[BaseException], ...]:
    try:
        import zstandard

        return (zstandard.ZstdError,)
    except ImportError:  # pragma: no cover
        return ()


def text_reader(path: Path, label: str, compression: Optional[str]):
    def read(options: ReadOptions, stats: ReadStats) -> Iterator[tuple[str, str]]:
        if options.doc_per == "file":
            with read_errors(label), open_binary(path, compression) as handle:
                data = handle.read()
            check_not_binary(data, label)
            text = decode_utf8(data, label)
            yield "", text[1:] if text.startswith("\ufeff") else text  # a byte order mark is no text (as per line)
        elif options.doc_per == "line":
            for number, line in numbered_lines(path, label, compression, stats, options.skip_bad_lines, lone_cr_breaks=True):
                if line.strip():
                    yield str(number), line
        else:  # blank-line: paragraphs separated by empty lines
            block: list[str] = []
            start = 0
            for number, line in numbered_lines(path, label, compression, stats, options.skip_bad_lines, lone_cr_breaks=True):
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
