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


def _headline(art: Artifact) -> str:
    """The few numbers that tell one artifact of a kind from another."""
    s = art.stats

    def num(value, digits=4):
        if isinstance(value, float):
            return f"{value:.{digits}g}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    if art.kind == "corpus":
        return f"{num(s.get('documents'))} docs, {num(s.get('bytes'))} bytes"
    if art.kind == "tokenizer":
        return f"vocab {num(s.get('vocab_size'))}, {num(s.get('bytes_per_token'))} bytes/token"
    if art.kind == "tokens":
        train, val = s.get("train", {}), s.get("val", {})
        return f"train {num(train.get('tokens'))} / val {num(val.get('tokens'))} tokens ({s.get('dtype')})"
    if art.kind == "checkpoint":
        parts = [f"{num(s.get('params'))} params", f"step {num(s.get('step'))}"]
        for key in ("train_loss", "val_loss", "val_accuracy", "val_f1"):
            if isinstance(s.get(key), (int, float)):
                parts.append(f"{key} {num(s[key])}")
        return ", ".join(parts)
    if art.kind == "eval":
        metrics_file = art.path / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        return ", ".join(f"{k} {num(v)}" for k, v in metrics.items() if isinstance(v, (int, float)))
    return ""


def print_report(arts: list[Artifact]) -> None:
    table = Table(title="artifacts", title_justify="left")
    table.add_column("artifact")
    table.add_column("kind")
    table.add_column("fingerprint")
    table.add_column("headline")
    for art in arts:
        table.add_row(str(art.path), art.kind, art.fingerprint[:16], _headline(art))
    out.print(table)
