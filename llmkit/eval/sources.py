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
from llmkit.table_records import dataset_records, is_table, looks_like_a_path, read_table_records


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
    elif looks_like_a_path(data):
        raise UserError(f"--data {data}: no such file or artifact; check the path")
    else:
        records = dataset_records(data, split)
    found = Records(records[:limit] if limit is not None else records)
    found.places = [f"{data}:{line}" for line in lines] if lines is not None else [f"{data} record {i + 1}" for i in range(len(found))]
    if not found:
        raise UserError(f"--data {data} holds no records")
    return found

