"""Documents from record files: JSON Lines, JSON arrays, CSV and Parquet. The text field is
--text-field (of `a,b` the first one a file has), else `text`, else a file's only text field;
a nested field is named `a.b`. A bad record fails with `file:line`, or is skipped under
--skip-bad-lines."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator, Optional

from llmkit.corpus.reading import ReadOptions, ReadStats, check_not_binary, decode_utf8, numbered_lines, open_binary
from llmkit.errors import UserError
from llmkit.jsonl import ABSENT, BOM, SNIFF_BYTES, advice_at, field_value


# Records the text field of a JSON file is chosen from: a file's first record alone may lack it.
FIELD_LOOKAHEAD = 100


class _FieldPicker:
    """The text field of a JSON file: --text-field (of a,b the first one the file has), else "text",
    else the only field holding text (in every record, or in any). Chosen from the first records
    (up to FIELD_LOOKAHEAD, fewer once a record settles it), so that a first record lacking "text"
    neither makes it guess another field nor passes for a wrong --text-field; after that a record
    lacking the field is a bad record."""

    def __init__(self, label: str, wanted: Optional[str]):
        self.label = label
        self.names = field_alternatives(wanted) if wanted is not None else []
        self.field: Optional[str] = None
        self.problem: Optional[str] = None  # no field can be chosen: the error at the first record
        self.seen = False  # some record has the field: one without it is a bad record, not a wrong name

    def pick(self, items: Iterator[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
        """Passes (where, record) pairs through unchanged, having chosen the field from the first ones."""
        head = []
        for where, record in items:
            head.append((where, record))
            if len(head) >= FIELD_LOOKAHEAD or (isinstance(record, dict) and (self.names or ["text"])[0] in record):
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
            note_guessed_field(self.label, self.field)
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


def note_guessed_field(label: str, name: str) -> None:
    from llmkit.console import note

    note(f"{label} has no 'text' field; reading {name!r}, its only text field (--text-field chooses another)")


def json_reader(path: Path, label: str, compression: Optional[str], fmt: str):
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
    for number, line in numbered_lines(path, label, compression, stats, skip_bad):
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

    with open_binary(path, compression) as handle:
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
    with open_binary(path, compression) as handle:
        head = handle.read(1024)
    return head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"["


def _json_array(path: Path, label: str, compression: Optional[str], picker: _FieldPicker) -> Iterator[tuple[str, str]]:
    # A .json array has to be parsed whole; JSON Lines is the streaming format.
    with open_binary(path, compression) as handle:
        data = handle.read()
    check_not_binary(data[:SNIFF_BYTES], label)
    try:
        text = decode_utf8(data, label)
        records = json.loads(text[1:] if text.startswith("\ufeff") else text)  # a byte order mark, as JSONL allows
    except json.JSONDecodeError as exc:
        raise UserError(f"{label}:{exc.lineno}: malformed JSON ({exc.msg}); fix the file") from None
    for index, record in picker.pick(enumerate(records)):
        try:
            yield str(index), picker.text(record)
        except _BadRecord as exc:
            raise UserError(f"{label}: item {index}: {exc}; fix the file") from None


def csv_reader(path: Path, label: str, compression: Optional[str], delimiter: str = ","):
    """A .csv file's records (a .tsv's: `delimiter` a tab)."""
    def read(options: ReadOptions, stats: ReadStats) -> Iterator[tuple[str, str]]:
        with open_binary(path, compression) as handle:
            head = handle.read(SNIFF_BYTES)
        check_not_binary(head, label)
        csv.field_size_limit(2**31 - 1)  # a document is one field; the default limit is 128 KB
        start = _start_of(path, compression)  # (read once, parsed by each reader the checks try)
        _refuse_another_delimiter(label, start, delimiter)
        quoting = _tsv_quoting(start) if delimiter == "\t" else csv.QUOTE_MINIMAL
        with open_binary(path, compression) as handle:
            stream = io.TextIOWrapper(io.BufferedReader(handle) if compression else handle, encoding="utf-8-sig", newline="")
            # Lenient, as spreadsheets write (`"He said "hi" to me"` is read, not refused), except for a
            # quote never closed: the reader then asks for lines past the end of the file, and the
            # record it returns is the rest of the file as one field.
            past_the_end = [False]

            def lines() -> Iterator[str]:
                yield from stream
                past_the_end[0] = True

            reader = csv.reader(lines(), strict=False, delimiter=delimiter, quoting=quoting)
            start = 1
            try:
                header = next(reader, None)
                if header is None:
                    return
                column = header.index(pick_column(label, options.text_field, header, header))
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
                raise UserError(_first_invalid_utf8(path, compression, label)) from None
            except csv.Error as exc:
                raise UserError(f"{label}:{start}: malformed CSV ({exc}); fix it or pass --skip-bad-lines") from None

    return read


def _first_invalid_utf8(path: Path, compression: Optional[str], label: str) -> str:
    """The error for a CSV file's first byte that is not UTF-8, on its line as the CSV reader counts
    lines (LF, CRLF or a lone CR ends one). (Split at LF, a line never cuts a UTF-8 character.)"""
    line, utf8_before = 1, False
    with open_binary(path, compression) as handle:
        lines = io.BufferedReader(handle) if compression else handle
        for raw in lines:
            raw = raw.removeprefix(BOM) if line == 1 else raw  # (no text, and the offsets come after it)
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                line += raw[: exc.start].count(b"\r")  # (the CR-ended line of the byte)
                return (f"{label}:{line}: invalid UTF-8 (byte 0x{raw[exc.start]:02x}); "
                        f"{advice_at(raw, exc.start, utf8_before=utf8_before, rest=lines)}")
            utf8_before = utf8_before or not raw.isascii()
            line += 1 + raw.removesuffix(b"\n").removesuffix(b"\r").count(b"\r")
    return f"{label} changed while it was read (it was not UTF-8, then it was); run again"


def parquet_reader(path: Path, label: str):
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
        name = pick_column(label, options.text_field, list(types), [f.name for f in schema if _is_string(f.type)])
        if not _is_string(types[name]):
            raise UserError(f"{label}: column {name!r} holds {types[name]}, not text; pass --text-field")
        row = 0
        for batch in parquet_batches(parquet, [name], label):
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
                if value is None:  # (a record without text, as a JSONL null is: it was dropped as "empty", unsaid)
                    if not options.skip_bad_lines:
                        raise UserError(f"{label}:{row}: column {name!r} is null (a record without text); fix it or pass "
                                        "--skip-bad-lines")
                    stats.skipped(f"{label}:{row}")
                elif value is not _BAD_ROW:
                    yield str(row), value
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


def parquet_batches(parquet: Any, columns: list[str], label: str) -> Iterator[Any]:
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


def is_a_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def field_alternatives(text_field: str) -> list[str]:
    return [f.strip() for f in text_field.split(",") if f.strip()]


# How much of a file's start the checks below read: the records they look at, at most this much text.
_FIRST_RECORDS_CHARS = 1 << 20


def _start_of(path: Path, compression: Optional[str]) -> str:
    """A file's first whole lines, up to _FIRST_RECORDS_CHARS of text (a record of 10 KB or of several
    lines whole), for the checks below."""
    with open_binary(path, compression) as handle:
        stream = io.TextIOWrapper(io.BufferedReader(handle) if compression else handle, encoding="utf-8-sig",
                                  errors="replace", newline="")
        lines, read = [], 0
        for line in stream:
            lines.append(line)
            read += len(line)
            if read > _FIRST_RECORDS_CHARS:
                break
        return "".join(lines)


def _first_records(start: str, delimiter: str, count: int, **dialect) -> list[list[str]]:
    """The first `count` non-blank records of a file's start (`_start_of`) as a `delimiter` reader parses them."""
    import itertools

    # (newline="": lines end at \r too, as the file reader's do)
    records = (row for row in csv.reader(io.StringIO(start, newline=""), delimiter=delimiter, **dialect)
               if any(cell.strip() for cell in row))
    taken = []
    try:
        taken.extend(itertools.islice(records, count))
    except csv.Error:
        if dialect.get("strict"):
            raise
    return taken  # (a record that does not parse ends them: the file's reader names it)


def _refuse_another_delimiter(label: str, start: str, delimiter: str) -> None:
    """A header of one column whose record and the first record after it both parse into as many
    fields (two or more) by another separator: a file split by semicolons (as spreadsheets write CSV
    where a comma is the decimal mark) or tabs, whose every record would be one text, its other fields
    glued on. (A quoted header `"notes; remarks"` over texts of other shapes is one column, read as
    such.) Each separator parses the file itself: the comma reader split `...;3,5` at its decimal comma
    and unquoted `"a; b";1`, and a line is not a record (a quoted newline, a record of 10 KB)."""
    ours = _first_records(start, delimiter, 2)
    if len(ours) < 2 or len(ours[0]) != 1:
        return
    for other in (";", "\t", "|", ","):
        if other == delimiter:
            continue
        header, *first = _first_records(start, other, 2) or [[]]
        if len(header) >= 2 and first and len(first[0]) == len(header):
            kind = {",": "comma", "\t": "tab"}[delimiter]
            fix = "name it .tsv" if other == "\t" else "save it comma-separated" if delimiter == "," else "name it .csv"
            raise UserError(f"{label}: its header {ours[0][0]!r} is one column, its fields split by {other!r}, where a "
                            f"{'.csv' if delimiter == ',' else '.tsv'} file's are split by a {kind}; {fix} (each record "
                            "would be one text, its other fields glued on)")


def _tsv_quoting(start: str) -> int:
    """How a .tsv quotes: GLUE's files do not (a sentence opening with `"` merged the records after
    it), pandas' and Python's csv do (a field with a quote or a tab in it). From its first records:
    quoted where they parse as quoted, strictly (a quote that closes inside a field, `"Hi" she said`,
    no quoting writer writes), and some field is quoted whole or more of them fit the header's number
    of fields so; else not quoted."""
    count = 1000
    unquoted = _first_records(start, "\t", count, quoting=csv.QUOTE_NONE)
    try:
        quoted = _first_records(start, "\t", count, strict=True)
    except csv.Error:
        return csv.QUOTE_NONE

    def fitting(rows: list[list[str]]) -> int:
        return sum(len(row) == len(rows[0]) for row in rows[1:]) if rows else 0

    whole = any(len(cell) >= 2 and cell[0] == cell[-1] == '"' for row in unquoted for cell in row)
    return csv.QUOTE_MINIMAL if whole or fitting(quoted) > fitting(unquoted) else csv.QUOTE_NONE


def pick_column(label: str, wanted: Optional[str], names: list[str], string_names: list[str]) -> str:
    if wanted is not None:
        wanted = next((f for f in field_alternatives(wanted) if f in names), field_alternatives(wanted)[0])
        if wanted not in names:
            raise UserError(f"{label}: no column {wanted!r}; pass --text-field with one of: {', '.join(names)}")
        return wanted
    if "text" in names:
        return "text"
    if len(string_names) == 1:
        note_guessed_field(label, string_names[0])
        return string_names[0]
    raise UserError(f"{label}: no 'text' column; pass --text-field with one of: {', '.join(names)}")
