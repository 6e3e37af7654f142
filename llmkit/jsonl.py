"""Reading a user's files, shared by every stage: JSON Lines (one object per line) and plain UTF-8
text, with errors that name the file and the line."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, Iterator

from llmkit.errors import UserError


# Where a line can hold a lone surrogate: JSON's \ud800-\udfff escapes (a pair decodes to one
# character). Only such lines are checked in full, so reading costs nothing more otherwise.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def check_unicode(text: str, what: str, fix: str, *, escaped_bytes: bool = True) -> None:
    """A one-line error for text no tokenizer takes: a lone surrogate, which is what an undecodable
    byte of an argument or of standard input becomes in Python, or a JSON \\ud800 escape.
    `escaped_bytes`: the text may hold bytes Python escaped so (U+DC80-U+DCFF); JSON's text holds none."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        char = ord(text[error.start])
        # an undecodable byte as Python escapes it (U+DC80-U+DCFF: surrogateescape) is shown as that byte
        found = (f"an undecodable byte, \\x{char - 0xDC00:02x}" if escaped_bytes and 0xDC80 <= char <= 0xDCFF
                 else f"a lone surrogate, {ascii(chr(char))[1:-1]}")
        raise UserError(f"{what} is not valid Unicode text ({found}); {fix}") from None


def wide_encoding(head: bytes) -> str | None:
    """"UTF-32" or "UTF-16" (with LE/BE where there is no mark) where a file's first bytes say it is
    one (Windows' "Unicode" text): a byte-order mark, or units of one Latin character each, the other
    bytes NUL. Read as UTF-8, such text is NUL bytes between letters, which decode without an error."""
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "UTF-32"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16"
    for width, name in ((4, "UTF-32"), (2, "UTF-16")):
        units = len(head) // width
        for at, order in ((0, "LE"), (width - 1, "BE")):  # where a unit's character byte is
            letters = head[at::width][:units]
            zeros = [head[i::width][:units].count(0) for i in range(width) if i != at]
            if units >= 2 and 0 not in letters and all(count >= 0.9 * units for count in zeros) \
                    and sum(byte in _LATIN_TEXT for byte in letters) >= 0.9 * units:  # (not an array of small numbers)
                return name + order  # (iconv's "utf-16" reads text without a mark as big-endian)
    return None


# Bytes that are text as the low byte of a Latin-1 character: printable ASCII, tab and line ends, and
# U+00A0-U+00FF (accented letters: French prose in UTF-16 has them in one unit in ten)
_LATIN_TEXT = frozenset(b"\t\n\r" + bytes(range(32, 127)) + bytes(range(0xA0, 0x100)))


def check_not_wide(head: bytes, label: str) -> None:
    """A one-line error for a UTF-16 or UTF-32 file, with the conversion to run."""
    encoding = wide_encoding(head)
    if encoding:
        raise UserError(f"{label} is {encoding} text; convert it to UTF-8 (e.g. iconv -f {encoding.lower()} -t utf-8)")


def check_no_nul(head: bytes, label: str) -> None:
    """A one-line error for a file whose start holds a NUL byte, which no text file has: a binary
    file given as text (checked after check_not_wide, whose UTF-16 and UTF-32 hold NULs)."""
    if b"\x00" in head[:SNIFF_BYTES]:
        raise UserError(f"{label} looks like a binary file (it contains NUL bytes); pass UTF-8 text files")


ABSENT = object()  # field_value's answer for a field a record does not have


def field_value(record: dict, name: str) -> Any:
    """A record's field: its own key of that name, else `a.b` reaching into a nested object (hub
    translation sets hold each pair as {"translation": {"de": ..., "en": ...}}); ABSENT if neither."""
    if name in record:
        return record[name]
    value: Any = record
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return ABSENT
        value = value[part]
    return value


def json_kind(value: Any) -> str:
    """What a JSON value is, in the words an error about a field uses: null, true/false, a number, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return {"str": "text", "list": "a list", "dict": "an object"}.get(type(value).__name__, type(value).__name__)


# Files a user may give for JSONL, told by their first bytes (iconv was the advice for either)
_NOT_TEXT = {b"\x1f\x8b": "a gzip file, not text; decompress it (gunzip)", b"PAR1": "a Parquet file, not text; convert it "
             "to JSONL (one JSON object per line)", b"PK\x03\x04": "a zip archive, not text; unpack it"}


def _cjk_punctuation(ch: str) -> bool:
    return "\u3000" <= ch <= "\u303f" or "\uff01" <= ch <= "\uff60"


def _kana(ch: str) -> bool:
    return "\u3040" <= ch <= "\u30ff"


def _lead_byte(ch: str, codec: str) -> int:
    try:
        return ch.encode(codec)[0]
    except UnicodeEncodeError:
        return 0


def _common_hanzi(codec: str, first: int, last: int):
    """A reading's characters as typical of the encoding's text: CJK punctuation, or a character of its
    first, most used, level (lead bytes first..last): another text's bytes read as rare characters
    (Latin-1's ä ö ü before a letter as Big5's level 2, Thai's as GB2312's symbols and level 2)."""
    return lambda text: [_cjk_punctuation(ch) or first <= _lead_byte(ch, codec) <= last for ch in text]


def _japanese(codec: str):
    common = _common_hanzi(codec, 0x82, 0x98) if codec == "cp932" else _common_hanzi(codec, 0xA4, 0xCF)

    def typical(text: list[str]) -> list[bool]:
        # (the kanji of EUC-JP and the hanzi of GB2312 sit at the same codes: Japanese is told by its kana)
        if sum(map(_kana, text)) < 0.05 * len(text):
            return [False] * len(text)
        return [_kana(ch) or typical_ch for ch, typical_ch in zip(text, common(text))]  # (ー and ・ lead with punctuation's byte)
    return typical


# Legacy encodings of CJK text, tried where a file is not UTF-8 (Python's codec, iconv's name, the
# language, what its text is mostly made of): another encoding's bytes decode in several, as rarer
# characters. The Windows supersets, which files are written in: CP949 holds syllables EUC-KR
# lacks, and one of them made the whole reading fail.
_MULTIBYTE = (
    ("gb18030", "GB18030", "Chinese", _common_hanzi("gb2312", 0xB0, 0xD7)),
    ("cp950", "CP950", "Chinese Big5", _common_hanzi("cp950", 0xA4, 0xC6)),
    ("cp932", "CP932", "Japanese Shift-JIS", _japanese("cp932")),
    ("euc_jp", "EUC-JP", "Japanese", _japanese("euc_jp")),
    ("cp949", "CP949", "Korean", _common_hanzi("cp949", 0xB0, 0xC8)),  # (KS X 1001's syllables: CP949's extension is rare)
)
# Single-byte scripts (tried where the non-ASCII bytes come in runs, as their words do: Thai read as
# GB18030 mostly): a reading's letters in the script's block and not glued to a Latin letter (a CJK
# character's second byte read alone is often one)
_SINGLE_BYTE = (("cp874", "Thai", "\u0e00", "\u0e7f"), ("cp1251", "Cyrillic", "\u0400", "\u04ff"), ("koi8_r", "Cyrillic", "\u0400", "\u04ff"),
                ("cp1253", "Greek", "\u0370", "\u03ff"), ("cp1256", "Arabic", "\u0600", "\u06ff"),
                ("cp1255", "Hebrew", "\u0590", "\u05ff"))


def _single_byte_share(text: str, low: str, high: str) -> float:
    wide = [i for i, ch in enumerate(text) if ord(ch) >= 0x80]
    glued = lambda i: any(0 <= j < len(text) and text[j].isascii() and text[j].isalpha() for j in (i - 1, i + 1))
    return sum(low <= text[i] <= high and not glued(i) or text[i] in "«»“”‘’–—…€" for i in wide) / len(wide) if wide else 0.0
_HUNGARIAN_O = re.compile(r"[õÕ](?![eE])")  # (with Hungarian's acute vowels: Estonian writes õ, and none of them)
_HUNGARIAN_ACUTE = re.compile(r"[áéíóúûÁÉÍÓÚÛ]")  # (û: CP1250's ű read as CP1252)
_DETECT = "find its encoding (uchardet FILE, or chardetect FILE), then iconv -f THAT -t utf-8"


BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark, which Windows editors write
SNIFF_BYTES = 8192  # how much of a file's start the binary, packed and UTF-16/32 checks look at
ADVICE_SAMPLE = 4096  # bytes of a file, from its first one that is not UTF-8, that the advice reads


def advice_at(raw: bytes, start: int, *, utf8_before: bool = False, rest=None, to_end: bool = True,
              starts_file: bool = False) -> str:
    """conversion_advice for `raw` (a line, a range or a whole file) whose byte `start` is the first one
    that is not UTF-8, read from that byte on, topped up from `rest` (the open file past a line); UTF-8
    came before it where `raw` held some before it or earlier lines did (`utf8_before`). `to_end`: `raw`, then `rest`, run to the file's end. `starts_file`: `raw` is
    the file from its start, whose byte-order mark is no text (a caller that decodes past the mark
    strips it first instead, as the decoder's offsets come after it)."""
    sample = raw[start:start + ADVICE_SAMPLE]
    if rest is not None and len(sample) < ADVICE_SAMPLE:
        sample += rest.read(ADVICE_SAMPLE - len(sample))
    before = raw[:start].removeprefix(BOM) if starts_file else raw[:start]  # (a later line's U+FEFF is text)
    utf8_before = utf8_before or not before.isascii()
    return conversion_advice(sample, utf8_before, ends_file=to_end and len(sample) < ADVICE_SAMPLE)


def conversion_advice(sample: bytes, utf8_before: bool = False, *, ends_file: bool = False) -> str:
    """What to do with a file that is not UTF-8, from up to 4 KB of it from its first bad byte
    (`utf8_before`: the text before that byte held UTF-8 characters; `ends_file`: the sample is the
    rest of the file, so a character cut at its end is a bad byte too): a binary file or UTF-16 named as
    such; a UTF-8 file with stray bytes told to fix them (converting the whole would garble its other
    characters); else iconv from the legacy encoding its text reads as: the readings whose characters
    are 90% the script's common ones (Japanese told by its kana), charset-normalizer's choice where
    several are (Thai reads as GB18030 mostly, short Chinese as Thai), a detector where it makes none;
    CP1252 for accented letters among ASCII unless they look Central European, Hungarian or Turkish.
    (One advice for all, iconv from Latin-1, makes a GB18030 novel a corpus of mojibake that no clean
    rule catches.) A guess is named as the reading it is, never a command where two tie."""
    import codecs

    nuls = [i for i, byte in enumerate(sample) if byte == 0]
    if nuls and max(sum(i % 2 == 0 for i in nuls), sum(i % 2 for i in nuls)) >= 0.9 * len(nuls) >= 2:
        return "it looks like UTF-16 text without a byte-order mark: iconv -f UTF-16LE -t utf-8 (or UTF-16BE, whichever reads)"
    if nuls or sum(byte < 0x20 and byte not in b"\t\n\r\x0c" for byte in sample) > 0.05 * len(sample):
        return "it looks like a binary file, not text; give a text file"
    high = sum(byte >= 0x80 for byte in sample)
    as_utf8 = codecs.getincrementaldecoder("utf-8")("replace").decode(sample, final=ends_file)
    bad = as_utf8.count("\ufffd")
    # a few bad bytes among UTF-8 (before them, or in the sample): a GB18030 file's first hanzi may be valid UTF-8, so
    # the sample must hold few bad bytes too (a file UTF-8 up to a line and another encoding after: converted, that part)
    if bad and (utf8_before and (bad <= 2 or bad <= high / 3) or sum(ord(ch) >= 0x80 for ch in as_utf8) - bad >= 2 * bad):
        return ("the rest of the file reads as UTF-8: fix or remove the bytes that do not, on that line (converting the "
                "whole file would garble its other characters)")
    paired = sum(1 for i, byte in enumerate(sample) if byte >= 0x80 and (
        (i + 1 < len(sample) and sample[i + 1] >= 0x80) or (i and sample[i - 1] >= 0x80)))

    def read(codec: str) -> str | None:
        try:
            return codecs.getincrementaldecoder(codec)().decode(sample, final=False)  # (a character cut at the end: fine)
        except UnicodeDecodeError:
            return None

    readings, clear = [], False  # (codec, iconv's name, language); whether a CJK reading is all but whole
    for codec, name, language, typical in _MULTIBYTE:
        wide = [ch for ch in read(codec) or "" if ord(ch) >= 0x80]
        share = sum(typical(wide)) / len(wide) if wide else 0.0
        if share >= 0.9:
            readings.append((codec, name, language))
            clear = clear or share >= 0.95
    # (a short Chinese line's bytes read as Thai or Cyrillic letters as well: the statistics of a few words misled)
    if paired >= 0.8 * high and not clear:
        readings += [(codec, codec.upper().replace("_", "-"), language) for codec, language, low, top in _SINGLE_BYTE
                     if _single_byte_share(read(codec) or "", low, top) >= 0.9]
    if len(readings) > 1:  # which, a library's statistics of the languages tell (or none: a detector, no command)
        from charset_normalizer import from_bytes

        best = from_bytes(sample, cp_isolation=[codec for codec, _, _ in readings]).best()
        chosen = [reading for reading in readings if best is not None and codecs.lookup(reading[0]).name ==
                  codecs.lookup(best.encoding).name]
        single_byte = {codec for codec, *_ in _SINGLE_BYTE}
        if chosen and chosen[0][0] in single_byte and best.percent_coherence < 20:
            chosen = []  # (a single-byte script told by the letters' language, not found: short Greek chosen as CP1251)
        if not chosen:
            shown = " or ".join(f"{language} {name}" for _, name, language in readings)
            return f"convert the file to UTF-8 (it reads as {shown}: {_DETECT})"
        readings = chosen + [reading for reading in readings if reading not in chosen]
    if readings:
        shown = " or ".join(f"{language} {name}" for _, name, language in readings)
        return f"convert the file to UTF-8 (it reads as {shown}: iconv -f {readings[0][1]} -t utf-8)"
    if high and paired < 0.5 * high:
        # accented letters among ASCII: CP1252, which is Latin-1 on every printable character and has Windows'
        # quotes and dashes where Latin-1 has invisible controls (quotes past the sample were made those); not
        # where its reading holds what Central European or Turkish text would be in it (Ý Þ ð ¹ ³ ...), or
        # Hungarian's ő as õ before a letter other than e (Portuguese writes õ in -ões, -õe; cp1252 advice garbled ő)
        western = read("cp1252")
        if western is not None and not any(ch in western for ch in "ÐÝÞðýþ¹³¾¥") and not (
                _HUNGARIAN_O.search(western) and _HUNGARIAN_ACUTE.search(western)):
            return "convert the file to UTF-8 (e.g. iconv -f cp1252 -t utf-8, for Western European text; else " + _DETECT + ")"
    return "convert the file to UTF-8 (" + _DETECT + ")"


def check_not_packed(head: bytes, path: Path | str) -> None:
    """Refuse a compressed or binary file given where text belongs, naming what it is."""
    for magic, what in _NOT_TEXT.items():
        if head.startswith(magic):
            raise UserError(f"{path} is {what}")


def _an_array(path: Path) -> UserError:
    import shlex

    lines = path.with_name(f"{path.stem}.lines.jsonl")  # (beside it, never its own name: `> data.jsonl` empties the input)
    return UserError(f"{path} holds a JSON array; write one object per line (e.g. jq -c '.[]' {shlex.quote(str(path))} > "
                     f"{shlex.quote(str(lines))})")


class _HeadThenRest(io.RawIOBase):
    """`head`, read from `handle` already, then the rest of `handle`: the file from its start, not
    sought back to it (a pipe, `--prompts p.jsonl` a FIFO, cannot seek)."""

    def __init__(self, head: bytes, handle):
        self._head, self._handle = memoryview(head), handle

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self._head:
            return self._handle.readinto(buffer)
        count = min(len(buffer), len(self._head))
        buffer[:count], self._head = self._head[:count], self._head[count:]
        return count


def iter_jsonl(path: Path | str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a bad line is a one-line UserError."""
    path = Path(path)
    with open(path, "rb") as file:
        head = file.read(SNIFF_BYTES)  # (a whole sample however the writer of a pipe split it)
        check_not_packed(head, path)
        check_not_wide(head, str(path))
        handle = io.BufferedReader(_HeadThenRest(head, file), buffer_size=1 << 16)
        first, utf8_before = True, False
        for lineno, raw in enumerate(handle, 1):
            if lineno == 1:
                raw = raw.removeprefix(BOM)  # (a Windows editor's byte-order mark: no text, and the offsets come after it)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{path}:{lineno} is not UTF-8; "
                                f"{advice_at(raw, exc.start, utf8_before=utf8_before, rest=handle)}") from None
            utf8_before = utf8_before or not raw.isascii()
            if not line.strip():
                continue
            # (a .json file's array, however laid out, as its first line begins: the advice was one object per line)
            array, first = first and line.lstrip().startswith("["), False
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if array:
                    raise _an_array(path) from None
                raise UserError(f"{path}:{lineno} is not valid JSON ({exc.msg}); one JSON object per line") from exc
            except RecursionError:
                raise UserError(f"{path}:{lineno} is JSON nested too deeply to read; flatten the record") from None
            if not isinstance(record, dict):
                if array:
                    raise _an_array(path)
                raise UserError(f'{path}:{lineno} is not a JSON object; each line must look like {{"field": ...}}')
            if "\\u" in line and _SURROGATE_ESCAPE.search(line):
                check_unicode(json.dumps(record, ensure_ascii=False), f"{path}:{lineno}",
                              "fix the record (a \\ud800-\\udfff escape must be half of a pair)", escaped_bytes=False)
            yield lineno, record


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    return [record for _, record in iter_jsonl(path)]


def read_text(path: Path | str) -> str:
    """A user's text file as UTF-8, without a byte-order mark (Windows editors write one); one that is
    not UTF-8 is a one-line UserError naming its first bad line."""
    path = Path(path)
    data = path.read_bytes()
    check_not_packed(data[:8], path)
    check_not_wide(data[:SNIFF_BYTES], str(path))
    text = data.removeprefix(BOM)  # (no text, and the decoder's offsets come after it)
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = text[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line} is not UTF-8; {advice_at(text, exc.start)}") from None
