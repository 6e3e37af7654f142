"""A command's `--help`: usage, what it does, and its options by panel, readable at 80 columns.

typer's own layout gives every option a row of six columns (names, short names, the negative
names, their short forms, type, help). A `--x/--no-x` pair widens the third for every row, so at
80 columns pretrain's descriptions wrapped every ~20 characters and names were cut
(`--no-tie-embedd…`). Here a pair is one name, `--[no-]x`, and a terminal narrower than
WIDE_LAYOUT puts each description under its option, across the whole width. Groups (`llmkit`,
`llmkit tokenizer`) keep typer's layout: a list of commands fits any width.
"""

from __future__ import annotations

import inspect
import os
import re
from collections import defaultdict

import click
from rich.console import Group
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

WIDE_LAYOUT = 100  # columns from which an option's description sits beside it
TYPE_WIDTH = 26  # at most, beside it

NAME_STYLE, TYPE_STYLE, DIM, REQUIRED_STYLE = "bold cyan", "bold yellow", "dim", "red"


def print_command_help(command: click.Command, ctx: click.Context) -> None:
    from llmkit.console import _Console

    width = os.environ.get("TERMINAL_WIDTH")  # typer's variable for its help width, honoured here too
    console = _Console(highlight=False, emoji=False, width=int(width) if width and width.isdigit() else None)
    console.print(Padding(Text(usage(command, ctx), style="bold"), 1))
    if command.help:
        console.print(Padding(_description(command.help), (0, 1, 1, 1)))
    wide = console.width >= WIDE_LAYOUT
    for title, params in panels(command, ctx).items():
        rows = [_row(param, ctx) for param in params]
        body = _beside(rows) if wide else _below(rows)
        console.print(Panel(body, title=title, title_align="left", border_style=DIM))


def usage(command: click.Command, ctx: click.Context) -> str:
    """`Usage: llmkit pretrain [OPTIONS] TOKENS`: positional inputs as click names them."""
    words = [ctx.command_path, "[OPTIONS]"]
    for param in command.get_params(ctx):
        if _is_argument(param) and not getattr(param, "hidden", False):
            name = (param.name or "").upper()
            many = "..." if param.nargs == -1 else ""
            words.append(f"{name}{many}" if param.required else f"[{name}]{many}")
    return "Usage: " + " ".join(words)


def panels(command: click.Command, ctx: click.Context) -> dict[str, list[click.Parameter]]:
    """Arguments first, then options, each in the panel its declaration names (typer's order)."""
    arguments, options = defaultdict(list), defaultdict(list)
    arguments["Arguments"], options["Options"] = [], []
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        shelf = arguments if _is_argument(param) else options
        default = "Arguments" if _is_argument(param) else "Options"
        shelf[getattr(param, "rich_help_panel", None) or default].append(param)
    return {title: params for shelf in (arguments, options) for title, params in shelf.items() if params}


def _is_argument(param: click.Parameter) -> bool:
    """(typer bundles a click of its own, whose classes are not the `click` package's)"""
    return param.param_type_name == "argument"


def option_names(param: click.Parameter) -> str:
    """`-o, --out`; a boolean pair `--x/--no-x` as `--[no-]x`."""
    if _is_argument(param):
        return (param.name or "").upper()
    names = sorted(param.opts, key=lambda name: name.startswith("--"))
    negative = list(getattr(param, "secondary_opts", ()))
    if len(names) == 1 and negative == ["--no-" + names[0][2:]]:
        return "--[no-]" + names[0][2:]
    return ", ".join(names) + "".join(f" / {name}" for name in negative)


def _row(param: click.Parameter, ctx: click.Context) -> tuple[bool, Text, Text, Text]:
    is_flag = getattr(param, "is_flag", False)
    metavar = "" if is_flag else (param.metavar or param.make_metavar(ctx=ctx))
    if _is_argument(param):
        metavar = f"<{param.type.name}>"
    help_text = " ".join((getattr(param, "help", None) or "").split())
    help_text = Text.from_markup(computed_default(help_text)[0] if param.default is None else help_text)
    if len(metavar) > TYPE_WIDTH and metavar.startswith("<") and "|" in metavar:
        # a choice list longer than its column folded there, cutting a choice mid-word (interleaved-1f / 1b)
        choices = metavar[1:-1].split("|")
        metavar = "<choice>"
        if not all(re.search(rf"(?<![\w-]){re.escape(choice)}(?![\w-])", help_text.plain) for choice in choices):
            help_text.append(f" One of: {', '.join(choices)}.")
    default = _default(param)
    if default is not None:
        help_text.append(f" [default: {default}]", style=DIM)
    if param.required:
        help_text.append(" [required]", style=DIM + " " + REQUIRED_STYLE)
    return param.required, Text(option_names(param), style=NAME_STYLE), Text(metavar, style=TYPE_STYLE), help_text


# A default the stage computes, said at the end of the help ("Optimizer steps (default 1000).", where
# --max-tokens may set the length instead): shown where a fixed default is, as "[default: 1000]"
_COMPUTED_DEFAULT = re.compile(r"\s*\(default:? ((?:[^()]|\([^()]*\))+)\)\.?$")


def computed_default(help_text: str) -> tuple[str, str | None]:
    """(the help without its closing "(default X).", X), or (the help, None)."""
    found = _COMPUTED_DEFAULT.search(help_text)
    return (help_text[: found.start()] + ".", found.group(1)) if found else (help_text, None)


def _default(param: click.Parameter) -> str | None:
    """The default as typer shows it: none for a flag that is off, or a value left to the stage."""
    if param.default is None and not _is_argument(param):
        return computed_default(" ".join((getattr(param, "help", None) or "").split()))[1]
    if param.default is None or param.required:  # (a required argument: "[default: None] [required]" said otherwise)
        return None
    if getattr(param, "show_default", True) is False or callable(param.default):
        return None
    if getattr(param, "secondary_opts", None):
        return "on" if param.default else "off"
    if getattr(param, "is_flag", False):
        return None
    if isinstance(param.default, (list, tuple)):
        return ", ".join(_shown(value) for value in param.default) or None
    return _shown(param.default)


def _shown(value) -> str:
    """A default as typed: eval's --stop default, a newline, is `\\n` (it broke the help's line)."""
    return str(value).replace("\n", "\\n").replace("\t", "\\t")


def _beside(rows) -> Table:
    """One line per option: (required) names, type, description."""
    table = Table.grid(padding=(0, 1))
    marked = any(required for required, *_ in rows)
    if marked:
        table.add_column(width=1)
    table.add_column(no_wrap=True)  # names whole
    table.add_column(max_width=TYPE_WIDTH, overflow="fold")  # (a choice list past it is shown as <choice>: _row)
    table.add_column(ratio=1)
    for required, names, metavar, help_text in rows:
        cells = (Text("*", style=REQUIRED_STYLE) if required else "",) if marked else ()
        table.add_row(*cells, names, metavar, help_text)
    return table


def _below(rows) -> Group:
    """Narrow terminals: names and type on a line, the description under them across the width."""
    lines = []
    for _, names, metavar, help_text in rows:
        lines.append(Text.assemble(names, " ", metavar) if metavar.plain else names)
        lines.append(Padding(help_text, (0, 0, 0, 4)))
    return Group(*lines)


def _description(help: str) -> Group:
    """The command's docstring: its first paragraph, then the rest dimmed (typer's convention)."""
    first, *rest = inspect.cleandoc(help).partition("\f")[0].split("\n\n")
    parts = [Text.from_markup(" ".join(first.split()))]
    for paragraph in rest:
        parts += [Text(""), Text.from_markup(" ".join(paragraph.split()), style=DIM)]
    return Group(*parts)
