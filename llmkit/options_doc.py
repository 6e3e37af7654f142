"""The option tables in docs/, generated from the option declarations.

    python -m llmkit.options_doc          rewrite every table in docs/*.md
    python -m llmkit.options_doc --check  exit 1 when a table is stale (tests/test_options.py does the same)

A table stands between `<!-- options: PATH -->` and `<!-- /options -->` in a page, PATH being
a command path such as `pretrain` or `tokenizer train`. It lists every option the command
line takes, grouped by help panel, with its default, the values it allows and, for a stage that
writes an artifact, how the manifest records it (`config` is hashed into the fingerprint,
`runtime` is not).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"(<!-- options: (?P<path>[a-z ]+) -->\n)(?P<body>.*?)(<!-- /options -->)", re.S)


def click_command(path: str):
    """The click command behind a command path, as the `llmkit` app builds it."""
    import typer

    from llmkit.cli import app

    command = typer.main.get_command(app)
    for name in path.split():
        command = command.commands[name]
    return command


def _default(param) -> str:
    from llmkit.help_format import computed_default

    value = param.default
    computed = computed_default(param.help or "")[1] if value is None else None
    if computed:  # a number as every other default is shown (`1000`), a phrase as written ("the preset's")
        computed = computed.replace("|", "\\|")
        return f"`{computed}`" if re.fullmatch(r"[\d.eE+-]+", computed) else computed
    if getattr(param, "is_flag", False) and not getattr(param, "secondary_opts", None):
        return "on" if value else "off"
    if value is None or value == [] or value is Ellipsis or callable(value):
        return "—"
    if isinstance(value, bool):
        return f"`--{param.name.replace('_', '-')}`" if value else f"`--no-{param.name.replace('_', '-')}`"
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    return "`" + str(value).replace("\n", "\\n").replace("|", "\\|") + "`"  # (a bare | ends a table's cell)


def table(path: str) -> str:
    """The markdown tables of one command's options, one per help panel."""
    from llmkit.cli import stage_commands
    from llmkit.help_format import computed_default
    from llmkit.options import flat_options

    function = stage_commands()[path]
    options = {opt.name: opt for opt in flat_options(function.config_cls)}
    inputs = {arg.name: arg.recorded for arg in function.arguments}
    panels: dict[str, list[list[str]]] = {}
    for param in click_command(path).params:
        if param.name == "help" or param.param_type_name == "argument" or getattr(param, "hidden", False):
            continue
        flags = " / ".join(f"`{flag}`" for flag in [*param.opts, *param.secondary_opts])
        opt: Any = options.get(param.name)
        if opt is not None:
            recorded = "runtime" if opt.spec.runtime else "config" if opt.spec.hashed else opt.spec.recorded_as
            recorded = getattr(function.config_cls, "RECORDED_AS", {}).get(opt.name, recorded)  # a stage's own rule
        else:
            recorded = inputs.get(param.name, "—")
        # (the help is escaped for rich's markup in --help: `\\[` there is a plain `[` here)
        help_text = computed_default(param.help or "")[0] if param.default is None else (param.help or "")
        help_text = help_text.replace("\\[", "[").replace("|", "\\|").replace("\\\\n", "\\n")
        allowed = (str(opt.spec.range) if opt.spec.range else ", ".join(opt.spec.choices) if opt.spec.choices else "") if opt else ""
        row = [flags, _default(param), allowed, recorded, help_text] if function.writes_artifact else [flags, _default(param), allowed, help_text]
        panels.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(row)
    lines = []
    for panel, rows in sorted(panels.items(), key=lambda item: item[0] != "Options"):
        header = ("| option | default | allowed | recorded as | |\n|---|---|---|---|---|" if function.writes_artifact
                  else "| option | default | allowed | |\n|---|---|---|---|")
        lines += [f"**{panel}**", "", header]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def render(text: str) -> str:
    """A page with every options block regenerated."""
    return BLOCK.sub(lambda m: m.group(1) + "\n" + table(m.group("path")) + "\n" + m.group(4), text)


def stale_pages() -> list[Path]:
    return [page for page in sorted(DOCS.glob("*.md")) if render(page.read_text(encoding="utf-8")) != page.read_text(encoding="utf-8")]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stale = stale_pages()
    if "--check" in argv:
        for page in stale:
            print(f"{page}: option tables are stale; run python -m llmkit.options_doc")
        return 1 if stale else 0
    for page in stale:
        page.write_text(render(page.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"rewrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
