"""Writing the corpus: Parquet shards (`shards/part-00000.parquet`, ...) and the rejects file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from llmkit.data.corpus import COMPRESSION, ROW_GROUP_BYTES, ROW_GROUP_ROWS, SCHEMA_FIELDS, shard_name

SCHEMA = pa.schema([(field, pa.string()) for field in SCHEMA_FIELDS])


class ShardWriter:
    """Appends documents in order; starts a new shard once one holds `max_bytes` of text.

    Row groups are cut by document count and size alone, never by how work was batched, so the
    files are the same whatever the number of workers.
    """

    def __init__(self, folder: Path, max_bytes: int):
        self.folder = folder
        self.max_bytes = max_bytes
        self.shards: list[str] = []
        self._writer: Optional[pq.ParquetWriter] = None
        self._shard_bytes = 0
        self._rows: dict[str, list[str]] = {"id": [], "text": [], "source": []}
        self._pending_bytes = 0

    def add(self, doc_id: str, text: str, source: str, size: int) -> bool:
        """Append one document; True when this closed a shard (every document so far is on disk)."""
        self._rows["id"].append(doc_id)
        self._rows["text"].append(text)
        self._rows["source"].append(source)
        self._pending_bytes += size
        if len(self._rows["id"]) >= ROW_GROUP_ROWS or self._pending_bytes >= ROW_GROUP_BYTES:
            self._flush()
        if self._shard_bytes + self._pending_bytes >= self.max_bytes:
            self._flush()
            self._close_shard()
            return True
        return False

    def resume(self, shards: list[str]) -> None:
        """Continue after these closed shards; a shard an interrupted run left half-written is dropped."""
        self.shards = list(shards)
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                if path.name not in self.shards:
                    path.unlink()

    def _flush(self) -> None:
        if not self._rows["id"]:
            return
        if self._writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            name = shard_name(len(self.shards))
            self._writer = pq.ParquetWriter(self.folder / name, SCHEMA, compression=COMPRESSION)
            self.shards.append(name)
            self._shard_bytes = 0
        self._writer.write_table(pa.table(self._rows, schema=SCHEMA))
        self._shard_bytes += self._pending_bytes
        self._rows = {"id": [], "text": [], "source": []}
        self._pending_bytes = 0

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._shard_bytes = 0  # (left stale, the next document alone made a shard of its own)

    def close(self) -> None:
        self._flush()
        self._close_shard()


class RejectWriter:
    """`rejects.jsonl`: one {"id", "source", "reason", "duplicate_of", "text"} object per dropped document."""

    def __init__(self, path: Path, resume_at: int | None = None):
        """`resume_at`: continue a file an interrupted run wrote, cut back to that many bytes."""
        self.path = path
        if resume_at is None:
            self._handle: IO[str] = open(path, "w", encoding="utf-8")
        else:
            with open(path, "r+b") as raw:
                raw.truncate(resume_at)
            self._handle = open(path, "a", encoding="utf-8")

    def offset(self) -> int:
        """Bytes written so far, all of them on disk."""
        self._handle.flush()
        return self._handle.tell()

    def add(self, doc_id: str, source: str, reason: str, text: str, duplicate_of: Optional[str] = None) -> None:
        record = {"id": doc_id, "source": source, "reason": reason}
        if duplicate_of is not None:
            record["duplicate_of"] = duplicate_of
        record["text"] = text
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._handle.close()
