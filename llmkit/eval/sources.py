"""Where evaluation data comes from: `--data` as a file, an artifact, or a `datasets` name.

  tokens artifact   its `val` split, document by document (perplexity / bpb)
  corpus artifact   its documents' text
  .txt              the whole file as one document (perplexity)
  .jsonl / .json    one record per line
  .parquet / .csv   records, read with `datasets`
  NAME[:CONFIG]     a `datasets` data set, `--split`: from the Hub, or from llmkit's datasets cache
                    (the one `llmkit clean --dataset` fills) when the Hub is unreachable
"""

from __future__ import annotations

from pathlib import Path

from llmkit.errors import UserError
from llmkit.eval.textio import Records, is_jsonl
from llmkit.jsonl import read_text
from llmkit.table_records import is_table, read_table_records


def artifact_kind(data: str) -> str | None:
    path = Path(data)
    if path.is_dir() and (path / "manifest.json").is_file():
        from llmkit import artifacts

        return artifacts.load(path).kind
    return None


def load_records(data: str, split: str, limit: int | None = None) -> Records:
    """Records (dicts) from a file or data set; .txt gives {"text": whole file}."""
    path = Path(data)
    kind = artifact_kind(data)
    lines = None
    if kind == "corpus":
        from llmkit.data.corpus import iter_corpus_texts
        from llmkit import artifacts

        records = [{"text": t} for batch in iter_corpus_texts(artifacts.load(path, kind="corpus")) for t in batch]
    elif kind is not None:
        raise UserError(f"--data {data} is a {kind} artifact; this metric reads records (a corpus, .jsonl, .txt, .parquet, .csv)")
    elif path.is_file() and is_jsonl(path):
        from llmkit.jsonl import iter_jsonl

        numbered = list(iter_jsonl(path))
        lines, records = [line for line, _ in numbered], [record for _, record in numbered]
    elif path.is_file() and path.suffix.lower() in (".txt", ".md", ""):
        # line ends as clean reads them (universal newlines): a model trained through clean never saw a \r, and
        # a Windows file's CRLF moved bpb by 1.2% on the same text
        records = [{"text": read_text(path).replace("\r\n", "\n").replace("\r", "\n")}]
    elif path.is_file() and is_table(path):
        records = read_table_records(path, f"--data {data}")
    elif path.is_dir() and (path / "dataset_info.json").is_file() and (path / "state.json").is_file():
        raise UserError(f"--data {data} is a folder saved by datasets (save_to_disk), which eval does not read; write its "
                        "records to a .jsonl or .parquet file (Dataset.to_json / to_parquet) and pass that")
    elif path.is_dir():
        raise UserError(f"--data {data} is a folder, not an artifact; pass one of its files (.jsonl, .txt, .parquet, .csv)")
    elif path.exists():
        raise UserError(f"--data {data}: unsupported file type {path.suffix!r}; use .txt, .jsonl, .parquet or .csv")
    elif _looks_like_path(data):
        raise UserError(f"--data {data}: no such file or artifact; check the path")
    else:
        name, _, config = data.partition(":")
        records = _datasets_records(name, config or None, split)
    found = Records(records[:limit] if limit is not None else records)
    found.places = [f"{data}:{line}" for line in lines] if lines is not None else [f"{data} record {i + 1}" for i in range(len(found))]
    if not found:
        raise UserError(f"--data {data} holds no records")
    return found


def _looks_like_path(data: str) -> bool:
    """A missing file, rather than a data set name such as `wikitext:wikitext-2-raw-v1` or
    `org/name`: a path's form, or a folder here that `org` would be (`runs/tokenz`)."""
    suffixes = (".txt", ".md", ".jsonl", ".json", ".ndjson", ".parquet", ".csv")
    first = data.split("/", 1)[0]
    return (data.startswith(("/", ".", "~")) or data.count("/") > 1 or data.lower().endswith(suffixes)
            or ("/" in data and Path(first).is_dir()))


def _datasets_records(name: str, config: str | None, split: str) -> list[dict]:
    import datasets

    from llmkit.runtime import datasets_cache_dir, offline_when_unreachable

    offline = False
    try:
        with offline_when_unreachable() as offline:
            ds = datasets.load_dataset(name, config, split=split, cache_dir=str(datasets_cache_dir()))
    except Exception as exc:  # offline misses, unknown names and splits all land here
        where = " (no file or folder of that name here, and the Hub is unreachable)" if offline else ""
        raise UserError(
            f"could not load data set {name!r}{f' ({config})' if config else ''} split {split!r}{where}: "
            f"{' '.join(str(exc).split())[:200]}; pass a local file or a data set in the datasets cache"
        ) from exc
    return [dict(r) for r in ds]
