"""Records from a CSV or Parquet file a user gives a stage (eval's and finetune's `--data`), read
with `datasets` as the file is now (a fresh cache: not one keyed by the file's time). JSON Lines go
through `llmkit.jsonl`, which names a bad line; these are read whole by the library."""

from __future__ import annotations

from pathlib import Path

from llmkit.errors import UserError

TABLE_SUFFIXES = (".csv", ".parquet")


def is_table(path: Path) -> bool:
    return Path(path).suffix.lower() in TABLE_SUFFIXES


def read_table_records(path: Path, what: str) -> list[dict]:
    """The rows of a .csv (its cells as written, text) or .parquet file as dicts; `what` names the
    file in errors (`--data FILE`). A CSV of a header alone holds no records."""
    from llmkit.jsonl import SNIFF_BYTES, check_not_wide
    from llmkit.runtime import local_dataset

    path = Path(path)
    builder = path.suffix.lower().lstrip(".")
    if builder == "csv":
        with open(path, "rb") as handle:
            check_not_wide(handle.read(SNIFF_BYTES), what)
        if not _has_rows_below_header(path):
            return []  # (datasets refuses a header alone with an error of its own wording)
    try:
        with local_dataset(builder, str(path), "train") as rows:
            return [dict(row) for row in rows]
    except Exception as exc:
        reason = " ".join(str(_innermost(exc)).split())[:200]
        raise UserError(f"{what} cannot be read as {builder.upper()}: {reason}; check the file") from exc


def _innermost(exc: BaseException) -> BaseException:
    """The error at the bottom of datasets' wrapping ("An error occurred while generating the dataset"
    over pandas' "Expected 2 fields in line 10, saw 3"), which names the line."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen and str(inner).strip():
        seen.add(id(inner))
        exc = inner
    return exc


def _has_rows_below_header(path: Path) -> bool:
    """Whether a CSV holds a row below its header (blank lines are not rows)."""
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        rows = (row for row in csv.reader(handle) if any(cell.strip() for cell in row))
        return next(rows, None) is not None and next(rows, None) is not None
