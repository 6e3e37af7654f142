"""The rich table printed at the end of `llmkit clean`."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text


def _mb(value: int) -> str:
    return f"{value / 1e6:,.2f} MB"


def stats_table(stats: dict[str, Any], path: str) -> Table:
    table = Table(title=f"corpus {path}", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("documents", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("share", justify="right")
    docs_in, docs_out = stats["documents_in"], stats["documents"]
    table.add_row("in", f"{docs_in:,}", _mb(stats["bytes_in"]), "")
    for reason, count in stats["dropped"].items():
        table.add_row(Text(f"- {reason}", style="red"), f"{count:,}", "", f"{count / docs_in:.1%}")
    table.add_row(Text("out", style="bold green"), Text(f"{docs_out:,}", style="bold"), _mb(stats["bytes"]), f"{docs_out / docs_in:.1%}", end_section=True)
    table.add_row("duplicate clusters", f"{stats['duplicate_clusters']:,}", "")
    if stats.get("bad_lines_skipped"):
        table.add_row("bad lines skipped", f"{stats['bad_lines_skipped']:,}", "")
    table.add_row("shards", str(stats["shards"]), "")
    if stats.get("mb_per_s"):
        table.add_row("speed", "", f"{stats['mb_per_s']:.2f} MB/s")
    return table
