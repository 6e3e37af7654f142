"""Reading predictions, references and evaluation data sets from files.

Plain text: one segment per line, trailing whitespace stripped, as sacrebleu's own CLI reads
them. JSONL (`.jsonl`/`.json`): one object per line; a field names the text to take (a list of
strings in a reference field means several references for that segment).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from llmkit.errors import UserError
from llmkit import jsonl
from llmkit.jsonl import json_kind, read_text

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PREDICTION_FIELDS = ("prediction", "completion", "text", "output", "hypothesis")
REFERENCE_FIELDS = ("reference", "references", "target", "summary", "answers.text")  # (the last: SQuAD's records)
LABEL_FIELD = "label"  # a reference for classification metrics only (BLEU against "0"/"1" measures nothing)


def is_jsonl(path: Path) -> bool:
    return Path(path).suffix.lower() in JSONL_SUFFIXES


class Records(list):
    """Records with what a message calls each one: FILE:LINE for a JSONL file's (as fine-tuning names
    them; "record 5" was line 7 of a file with blank lines), else DATA record N."""

    places: list[str]  # (set by whoever makes it: load_records, keeping_places)


def place(records: list, index: int) -> str:
    """What a message calls `records[index]`."""
    places = getattr(records, "places", None)
    return places[index] if places and index < len(places) else f"record {index + 1}"


def keeping_places(records: list, items: list) -> list:
    """`items`, one for each of `records` (each rewritten), called as those are."""
    kept = Records(items)
    kept.places = getattr(records, "places", [])
    return kept


def read_lines(path: Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}; check the path")
    lines = read_text(path).split("\n")
    if lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    return [line.rstrip() for line in lines]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}; check the path")
    return jsonl.read_jsonl(path)


def first_field(records: list[dict], candidates: Sequence[str]) -> str | None:
    """The first of `candidates` the first record has (a dotted name reaching into a nested field)."""
    return next((c for c in candidates if jsonl.field_value(records[0], c) is not jsonl.ABSENT), None)


def pick_field(records: list[dict], given: str | None, candidates: Sequence[str], what: str, flag: str,
               where: str = "the data") -> str:
    """The field holding `what`: the one given, else the first candidate the first record has;
    every record must have it. `where` names the file or data in errors. An `a.b` (given, or a
    fine-tune's template field) that no record has as a field of its own reaches into a nested one
    (`translation.de`, as hub translation sets hold their pairs): its value is copied to each
    record under that name."""
    if not records:
        raise UserError(f"{where} holds no records")
    name = given
    if name is None:
        name = first_field(records, candidates)
        if name is None:
            raise UserError(f"cannot find the {what} in {where}: no field {', '.join(candidates)} (its fields: "
                            f"{', '.join(records[0]) or 'none'}); pass {flag} NAME")
    if "." in name and not any(name in record for record in records):  # (a key of that name wins)
        for record in records:
            value = jsonl.field_value(record, name)
            if value is not jsonl.ABSENT:
                record[name] = value
    missing = next((i for i, r in enumerate(records) if name not in r), None)
    if missing is not None:
        fields = ", ".join(records[missing])
        if missing == 0:
            raise UserError(f"{where} has no field {name!r} ({what}); fields: {fields}")
        raise UserError(f"the records mix field names: {place(records, 0)} has {name!r}, {place(records, missing)} has only {fields}; "
                        f"use one name in every record (or {flag} NAME)")
    return name


def read_segments(path: Path, field: str | None, candidates: Sequence[str], flag: str, allow_lists: bool,
                  no_answer: bool = False) -> list:
    """Strings (or lists of strings where allowed) from a .txt or JSONL file; `no_answer`: an empty
    list is the empty answer (SQuAD 2.0's unanswerable questions), not refused."""
    path = Path(path)
    if not is_jsonl(path):
        return read_lines(path)
    records = jsonl.read_jsonl(path)
    name = pick_field(records, field, candidates, "text", flag, where=str(path))
    values = []
    for i, record in enumerate(records, 1):
        value = record[name]
        if isinstance(value, list) and allow_lists and not value and no_answer:
            value = [""]
        if isinstance(value, list) and allow_lists and not value:  # all() of [] is True: no reference to score against
            raise UserError(f"{path}: record {i} field {name!r} is an empty list; give at least one reference")
        if isinstance(value, list) and allow_lists and all(isinstance(v, str) for v in value):
            values.append(value)
        elif isinstance(value, (str, int)) and not isinstance(value, bool):
            values.append(value if isinstance(value, str) else str(value))
        else:
            shown = "a list that holds other things than text" if isinstance(value, list) and allow_lists else json_kind(value)
            raise UserError(f"{path}: record {i} field {name!r} is {shown}, expected text")
    return values


def read_predictions(path: Path, field: str | None) -> list[str]:
    return read_segments(path, field, PREDICTION_FIELDS, "--field", allow_lists=False)


def refuse_scoring_against_itself(path: Path, prediction_field: str | None, reference_field: str | None, labels: bool) -> None:
    """A JSONL file given as both --predictions and --references: refused where the references
    would be read from the predictions' own field (--field target: BLEU 100, the file against itself)."""
    if not is_jsonl(path):
        return  # (a text file's lines are one column: the same file twice is the user's to mean)
    records = jsonl.read_jsonl(path)
    if not records:
        return  # (said as an empty file by the readers)
    predicted = prediction_field or first_field(records, PREDICTION_FIELDS)
    referenced = reference_field or first_field(records, REFERENCE_FIELDS + ((LABEL_FIELD,) if labels else ()))
    if predicted is not None and predicted == referenced:
        raise UserError(f"{path} is both --predictions and --references, and both would read its {predicted!r}: each "
                        "prediction would be scored against itself; name the references' field with --reference-field")


def read_references(paths: Sequence[Path], field: str | None, count: int, also: str | None = None,
                    labels: bool = False, no_answer: bool = False) -> list[list[str]]:
    """References per prediction: several files (sacrebleu style) and/or lists inside JSONL. Without
    `field`, the first of the usual reference names a file has (`label` too where `labels`: only
    classification metrics are asked), else `also` (the predictions' --field). `no_answer`: an empty
    list of references is the empty answer (read_segments)."""
    candidates = tuple(REFERENCE_FIELDS) + ((LABEL_FIELD,) if labels else ())
    candidates += (also,) if also and also not in candidates else ()
    try:
        streams = [read_segments(p, field, candidates, "--reference-field", allow_lists=True, no_answer=no_answer) for p in paths]
    except UserError as exc:
        labelled = not labels and field is None and any(is_jsonl(p) and LABEL_FIELD in (jsonl.read_jsonl(p) or [{}])[0] for p in paths)
        if not labelled:
            raise
        raise UserError(f"{exc} (its {LABEL_FIELD!r} is a reference for classification metrics alone, and text metrics "
                        "are asked)") from None
    for path, stream in zip(paths, streams):
        if len(stream) != count:
            raise UserError(
                f"{count} predictions but {len(stream)} references in {path}; "
                "each file must hold one line (or record) per segment, in the same order"
            )
    per_segment = []
    for i in range(count):
        refs: list[str] = []
        for stream in streams:
            value = stream[i]
            refs.extend(value if isinstance(value, list) else [value])
        per_segment.append(refs)
    return per_segment
