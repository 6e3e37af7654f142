"""Reading a user's files, shared by every stage: JSON Lines (one object per line) and plain UTF-8
text, with errors that name the file and the line."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from llmkit.errors import UserError


# Where a line can hold a lone surrogate: JSON's \ud800-\udfff escapes (a pair decodes to one
# character). Only such lines are checked in full, so reading costs nothing more otherwise.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def check_unicode(text: str, what: str, fix: str) -> None:
    """A one-line error for text no tokenizer takes: a lone surrogate, which is what an undecodable
    byte of an argument or of standard input becomes in Python, or a JSON \\ud800 escape."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = ascii(text[error.start])[1:-1]
        raise UserError(f"{what} is not valid Unicode text (an undecodable byte or a lone surrogate, {bad}); {fix}") from None


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


def _in_gb2312(ch: str) -> bool:
    try:
        ch.encode("gb2312")
        return True
    except UnicodeEncodeError:
        return False


# Legacy encodings of CJK text, tried where a file is not UTF-8 and its non-ASCII bytes come in
# runs, each with what its text is mostly made of (another encoding's bytes decode in several, as
# rarer characters: Shift-JIS's kana as GBK's extension hanzi, GBK's hanzi as half-width katakana)
_MULTIBYTE = (
    ("gb18030", "Chinese", _in_gb2312),
    ("big5", "Chinese", lambda ch: "\u4e00" <= ch <= "\u9fff" or _cjk_punctuation(ch)),
    ("shift_jis", "Japanese", lambda ch: "\u3040" <= ch <= "\u30ff" or "\u4e00" <= ch <= "\u9fff" or _cjk_punctuation(ch)),
    ("euc_kr", "Korean", lambda ch: "\uac00" <= ch <= "\ud7a3" or _cjk_punctuation(ch)),
)


def conversion_advice(sample: bytes) -> str:
    """How to convert a file that is not UTF-8, from a sample of it: iconv from Latin-1 for accented
    letters among ASCII, else from the legacy CJK encodings its text reads as (Latin-1 made a corpus of
    mojibake that no rule caught)."""
    high = [i for i, byte in enumerate(sample) if byte >= 0x80]
    paired = sum(1 for i in high if (i + 1 < len(sample) and sample[i + 1] >= 0x80) or (i and sample[i - 1] >= 0x80))
    if not high or paired < 0.8 * len(high):
        return "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    import codecs

    readings = []
    for encoding, language, typical in _MULTIBYTE:
        try:
            text = codecs.getincrementaldecoder(encoding)().decode(sample, final=False)  # (a character cut at the end: fine)
        except UnicodeDecodeError:
            continue
        wide = [ch for ch in text if ord(ch) >= 0x80]
        if wide and sum(map(typical, wide)) >= 0.9 * len(wide):
            readings.append(f"{language} {encoding}")
    if not readings:
        return "convert the file to UTF-8 (find its encoding with file -i, then iconv -f THAT -t utf-8)"
    if "Korean euc_kr" in readings and sample.count(b" ") >= 0.05 * len(high):  # (Korean spaces its words; Chinese does not)
        readings.insert(0, readings.pop(readings.index("Korean euc_kr")))
    first = readings[0].split()[1]
    return (f"convert the file to UTF-8 (it reads as {' or '.join(readings)}: iconv -f {first} -t utf-8; check its encoding "
            "with file -i)")


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


def iter_jsonl(path: Path | str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a bad line is a one-line UserError."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(8192)
        check_not_packed(head, path)
        check_not_wide(head, str(path))
        handle.seek(0)
        first = True
        for lineno, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # (a Windows editor's byte-order mark)
            except UnicodeDecodeError:
                raise UserError(f"{path}:{lineno} is not UTF-8; {conversion_advice(raw)}") from None
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
                              "fix the record (a \\ud800-\\udfff escape must be half of a pair)")
            yield lineno, record


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    return [record for _, record in iter_jsonl(path)]


def read_text(path: Path | str) -> str:
    """A user's text file as UTF-8, without a byte-order mark (Windows editors write one); one that is
    not UTF-8 is a one-line UserError naming its first bad line."""
    path = Path(path)
    data = path.read_bytes()
    check_not_packed(data[:8], path)
    check_not_wide(data[:8192], str(path))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line} is not UTF-8; {conversion_advice(data[exc.start:exc.start + 4096])}") from None
