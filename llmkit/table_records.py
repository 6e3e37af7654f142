"""Records from a CSV or Parquet file a user gives a stage (eval's and finetune's `--data`), read
with `datasets` as the file is now (a fresh cache: not one keyed by the file's time), or from a
`datasets` name (NAME[:CONFIG], from the Hub or llmkit's datasets cache). JSON Lines go through
`llmkit.jsonl`, which names a bad line; these are read whole by the library."""

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


def looks_like_a_path(data: str) -> bool:
    """A missing file, rather than a data set name such as `wikitext:wikitext-2-raw-v1` or
    `org/name`: a path's form, or a folder here that `org` would be (`runs/tokenz`)."""
    suffixes = (".txt", ".md", ".jsonl", ".json", ".ndjson", ".parquet", ".csv")
    first = data.split("/", 1)[0]
    return (data.startswith(("/", ".", "~")) or data.count("/") > 1 or data.lower().endswith(suffixes)
            or ("/" in data and Path(first).is_dir()))


def dataset_records(name_and_config: str, split: str) -> list[dict]:
    """The records of split `split` of the `datasets` data set NAME[:CONFIG]: from the Hub, or from
    llmkit's datasets cache (the one `llmkit clean --dataset` fills) when the Hub is unreachable."""
    import datasets

    from llmkit.runtime import datasets_cache_dir, offline_when_unreachable

    name, _, config = name_and_config.partition(":")
    offline = False
    try:
        with offline_when_unreachable() as offline:
            ds = datasets.load_dataset(name, config or None, split=split, cache_dir=str(datasets_cache_dir()))
    except Exception as exc:  # offline misses, unknown names and splits all land here
        if "Unknown split" in str(exc):  # (found, cache or Hub: "unreachable" misled)
            raise UserError(f"data set {name!r}{f' ({config})' if config else ''} has no split {split!r}: "
                            f"{' '.join(str(exc).split())[:200].rstrip('.')}; pass a data set that has it, or its records as a file") from exc
        where = " (no file or folder of that name here, and the Hub is unreachable)" if offline else ""
        raise UserError(
            f"could not load data set {name!r}{f' ({config})' if config else ''} split {split!r}{where}: "
            f"{' '.join(str(exc).split())[:200]}; pass a local file or a data set in the datasets cache"
        ) from exc
    return [dict(r) for r in ds]
