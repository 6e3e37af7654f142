"""Rich rendering of a manifest and its lineage for `llmkit inspect`."""

from __future__ import annotations

import json

from rich.table import Table
from rich.tree import Tree

from llmkit.artifacts import Artifact, LineageNode
from llmkit.console import out


def _short(value: object, limit: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def print_artifact(art: Artifact, tree: LineageNode) -> None:
    m = art.manifest
    table = Table(title=f"{m.kind} artifact: {art.path}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("fingerprint", m.fingerprint)
    table.add_row("format", f"v{m.format_version} (llmkit {m.llmkit_version})")
    table.add_row("seed", str(m.seed))
    table.add_row("command", _short(" ".join(m.command), 200))
    table.add_row("files", f"{len(m.files)}: " + _short(", ".join(m.files), 200))
    for key, value in m.config.items():
        table.add_row(f"config.{key}", _short(value))
    for key, value in m.stats.items():
        table.add_row(f"stats.{key}", _short(value))
    for key, value in m.runtime.items():
        table.add_row(f"runtime.{key}", _short(value))
    table.add_row("versions", _short(", ".join(f"{k} {v}" for k, v in m.versions.items()), 200))
    out.print(table)
    out.print(_tree(tree))


def _tree(node: LineageNode, parent: Tree | None = None) -> Tree:
    label = f"[bold]{node.kind}[/] {node.path} [dim]{node.fingerprint[:12]}[/]"
    if node.role != "output":
        label = f"[cyan]{node.role}[/]: " + label
    if not node.found:
        label += " [yellow](not found)[/]"
    branch = Tree(label) if parent is None else parent.add(label)
    for child in node.children:
        _tree(child, branch)
    return branch
