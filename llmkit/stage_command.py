"""A stage's Typer command, derived from its config dataclass.

    pretrain = stage_command(
        "pretrain", PretrainConfig, _pretrain,    # _pretrain(config, *, tokens, out, force, resume)
        arguments=[argument("tokens", "Tokens artifact (from `llmkit tokenize`).")],
        out="Run directory; becomes the checkpoint artifact at the end.",
        resume="Continue the run in -o from its newest complete checkpoint.",
    )

Typer reads a command's options from `inspect.signature`, so the builder writes one: the
positional inputs, `-o/--out`, one option per config field (llmkit.options: flag, help,
panel, choices), and the parameters every stage shares: `--resume` where it applies,
`--config`, `--force`. The command resolves the config (defaults < `--config` file < flags
typed, see llmkit.config) and calls `run(config, out=..., force=..., <inputs>...)`, whose
docstring becomes the command's help.
"""

from __future__ import annotations

import inspect
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Sequence

import click
import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from llmkit.errors import UnusedOptions
from llmkit.options import FlatOption, flat_options

try:  # typer >= 0.22 bundles its own click; its exceptions are not the `click` package's classes
    from typer._click import exceptions as _typer_click_exceptions
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click_exceptions = click.exceptions


def click_exceptions() -> tuple:
    """The modules whose exception classes a command line may raise: click's and typer's own click."""
    return click.exceptions, _typer_click_exceptions


USAGE_ERRORS = tuple({module.UsageError for module in click_exceptions()})


# Spellings kept working for scripts written before `-o/--out` was the one name everywhere.
HIDDEN_ALIASES = {"--output": "--out"}


class _FlagsShowNoType:
    """A flag takes no value, so its help row shows no `<bool>` type."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and getattr(param, "metavar", None) is None:
                param.metavar = ""
        return params


class _HelpIntoAClosedPipe:
    """`llmkit CMD --help | head`: typer prints help through a rich Console of its own, whose
    on_broken_pipe exits 1. The reader closing the pipe is no failure here either: while help is
    printed, that console raises BrokenPipeError, which `cli.main` ends with exit 0 (our own
    consoles do the same, llmkit/console.py)."""

    def format_help(self, ctx, formatter):
        from rich.console import Console

        def closed(console: Console) -> None:
            console.quiet = True
            raise BrokenPipeError

        exits = Console.on_broken_pipe
        Console.on_broken_pipe = closed
        try:
            return super().format_help(ctx, formatter)
        finally:
            Console.on_broken_pipe = exits


def _debug_goes_first(exc: click.UsageError, args: list[str], ctx: click.Context) -> None:
    """`--debug` typed after a command (or a group: `llmkit tokenizer --debug encode`) is told where
    it goes, not only that the command has no such option."""
    if "--debug" in args and getattr(exc, "option_name", None) == "--debug":
        rest = " ..." if hasattr(ctx.command, "commands") else ""  # (a group: its command and arguments follow)
        exc.message = f"--debug is llmkit's own option: put it before the command (llmkit --debug {ctx.command_path.partition(' ')[2]}{rest})"


class LlmkitGroup(_HelpIntoAClosedPipe, _FlagsShowNoType, TyperGroup):
    """The class of every llmkit command group."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, list(args))
        except USAGE_ERRORS as exc:
            _debug_goes_first(exc, args, ctx)
            raise


class LlmkitCommand(_FlagsShowNoType, TyperCommand):
    """The class of every llmkit command: its help readable at 80 columns (llmkit.help_format);
    also accepts the hidden aliases of renamed options (`--output` for `--out`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            # click's Path refuses a path the user may not read as a usage error (exit 2, "Invalid
            # value"); the stages read their inputs themselves and name an unreadable one as every
            # other read failure is named: "permission denied: PATH; check the file's permissions", exit 1.
            if getattr(param.type, "name", "") == "path":
                param.type.readable = False

    def format_help(self, ctx, formatter):
        from llmkit.help_format import print_command_help

        print_command_help(self, ctx)

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        names = {opt for param in self.params for opt in getattr(param, "opts", ())}
        takes_value = {opt for param in self.params if not getattr(param, "is_flag", True) for opt in getattr(param, "opts", ())}
        # (--no-X of a flag, and the hidden aliases: -output=x.jsonl wrote to "utput=x.jsonl", -no-stream was -n "o-stream")
        long_names = (names | {opt for param in self.params for opt in getattr(param, "secondary_opts", ())}
                      | {alias for alias, target in HIDDEN_ALIASES.items() if target in names} | {"--help"})
        rewritten = []
        for position, arg in enumerate(args):
            if arg == "--":  # what follows is positional
                rewritten.extend(args[position:])
                break
            name, sep, value = arg.partition("=")
            if (len(name) > 2 and name[0] == "-" and name[1] != "-" and f"-{name}" in long_names
                    and not (position and args[position - 1] in takes_value)):
                # a long option typed with one dash: click read -prompt as -p "rompt", and -seed=3 as -s "eed=3"
                import click

                raise click.NoSuchOption(name, ctx=ctx)
            if name in HIDDEN_ALIASES and name not in names and HIDDEN_ALIASES[name] in names:
                arg = HIDDEN_ALIASES[name] + sep + value
            rewritten.append(arg)
        try:
            return super().parse_args(ctx, rewritten)
        except USAGE_ERRORS as exc:  # click's parser raises some without the command ("-o" given no value)
            if exc.ctx is None:
                exc.ctx = ctx
            _debug_goes_first(exc, args, ctx)  # (args: the parser empties `rewritten`)
            raise


@dataclass(frozen=True)
class Argument:
    """An input of a stage (an artifact or a file): what it works on, not how, so not a config option."""

    name: str
    help: str
    type: Any = Path
    default: Any = ...  # ... = required
    flags: tuple[str, ...] = ()  # given as an option (`--data FILE`) rather than positionally
    panel: str | None = None
    recorded: str = "input"  # how the manifest records it (docs' tables): an input artifact, or a file's content hash

    def parameter(self) -> inspect.Parameter:
        info = (typer.Option(*self.flags, help=escape(self.help), rich_help_panel=self.panel) if self.flags
                else typer.Argument(help=escape(self.help), show_default=False))
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=self.default, annotation=Annotated[self.type, info])


def argument(name: str, help: str, type: Any = Path, default: Any = ..., *, flags: tuple[str, ...] = (),
             panel: str | None = None, recorded: str = "input") -> Argument:
    return Argument(name, help, type, default, tuple(flags), panel, recorded)


STANDARD = ("out", "config", "force", "resume")


def option_parameter(opt: FlatOption) -> inspect.Parameter:
    """The Typer option for one config field."""
    spec = opt.spec
    cli_type = spec.cli_type if spec.cli_type is not None else opt.type
    default = opt.default
    if spec.cli_type is not None:  # (typed as text: its default shown as text, never handed to the stage, which has its own)
        default = [str(value) for value in opt.default] if isinstance(opt.default, (list, tuple)) and opt.default else None
    help_text = opt.help
    if default is MISSING:  # required, but a --config file may give it: llmkit.config.resolve says when neither does
        default, help_text = None, f"{help_text} Required: typed, or set in --config."
    extra: dict[str, Any] = {}
    if spec.choices:
        extra["metavar"] = "<" + "|".join(spec.choices) + ">"
    # (help is rich markup in --help: brackets such as llmkit[ray] or a [a, b] default must show as typed)
    annotation = Annotated[cli_type, typer.Option(*spec.flags, help=escape(help_text), rich_help_panel=opt.panel, hidden=opt.hidden,
                                                  **extra)]
    return inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def out_parameter(help: str, out_type: Any) -> inspect.Parameter:
    """`-o/--out`: the one spelling of a stage's output in every stage."""
    return inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, default=None if _optional(out_type) else ...,
                             annotation=Annotated[out_type, typer.Option("-o", "--out", help=help, callback=_no_equals_sign)])


def _no_equals_sign(value: Path | None) -> Path | None:
    """`-o=runs/x` is, to click as to getopt, the path "=runs/x": a folder of that name was written."""
    if value is not None and str(value).startswith("="):
        rest = str(value)[1:]
        fix = (f"write -o {rest} or --out={rest}" if rest and not rest.startswith("=") else
               "give a path after -o (a name that starts with '=' with its folder before it: $PWD/=NAME)")
        raise typer.BadParameter(f"{value} starts with '='; {fix}")
    if value is not None and str(value) == "-":  # (a file named "-" was written: `--prompts -` reads standard input)
        raise typer.BadParameter("'-' is no output path here: generate and chat print to standard output when -o is "
                                 "left out; give a file or folder name ($PWD/- for one named '-')")
    return value


def _config_file_outside_output(config: Path | None, out: Path | None, force: bool | None) -> None:
    """--force replaces -o: a --config file inside it would be deleted by the run it configures."""
    if config is None or out is None or not force:
        return
    target = Path(out).resolve()
    if Path(config).resolve() == target or target in Path(config).resolve().parents:
        from llmkit.errors import UsageError

        raise UsageError(f"--config {config} lies inside -o {out}, which --force replaces; move the file out of it first")


def standard_parameters(section: str, *, resume: str | None, force: str | None, typed_inputs: Sequence[str] = ()) -> list[inspect.Parameter]:
    """`--resume` (where it applies), `--config`, `--force`: the same in every stage. `typed_inputs`:
    the inputs given as options (`--data`), which a config file does not hold (it holds settings)."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = []
    if resume is not None:
        params.append(inspect.Parameter("resume", keyword, default=False, annotation=Annotated[bool, typer.Option("--resume", help=resume)]))
    but = f" but the input{'s' if len(typed_inputs) > 1 else ''} {', '.join(typed_inputs)}" if typed_inputs else ""
    article = "an" if section[0] in "aeiou" else "a"
    config_help = (f"TOML/YAML file with any of this command's options{but} ({article} {escape(f'[{section}]')} table, or keys at top level); "
                   "paths in it are read as typed here, from the current folder; a flag typed here wins over it.")
    # (several, to refuse a second: Click kept the last alone, and the first file's settings were dropped unsaid)
    params.append(inspect.Parameter("config", keyword, default=None, annotation=Annotated[Optional[list[Path]], typer.Option("--config", help=config_help)]))
    if force is not None:
        params.append(inspect.Parameter("force", keyword, default=False, annotation=Annotated[bool, typer.Option("--force", help=force)]))
    return params


def _optional(annotation: Any) -> bool:
    import types
    import typing

    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(annotation)


def stage_command(
    section: str,
    config_cls: type,
    run: Callable[..., None],
    *,
    arguments: list[Argument] = (),
    out: str | None = None,
    out_type: Any = Path,
    resume: str | None = None,
    force: str | None = "Replace the output if it exists.",
    resolver: Callable[..., Any] | None = None,
    writes_artifact: bool = True,
) -> Callable[..., None]:
    """The Typer command of a stage whose options are the fields of `config_cls`.

    `resolver(file=..., explicit=...)` replaces the usual resolution (llmkit.config.resolve),
    for a stage whose presets fill in options (clean).
    """
    options = {opt.name: opt for opt in flat_options(config_cls)}
    clash = set(options) & ({a.name for a in arguments} | set(STANDARD))
    if clash:
        raise TypeError(f"{config_cls.__name__}: option(s) {', '.join(sorted(clash))} clash with the command's own parameters")
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("ctx", keyword, annotation=typer.Context)]
    params.extend(arg.parameter() for arg in arguments)
    if out is not None:
        params.append(out_parameter(out, out_type))
    params.extend(option_parameter(opt) for opt in options.values())
    params.extend(standard_parameters(section, resume=resume, force=force, typed_inputs=[a.flags[0] for a in arguments if a.flags]))

    def command(ctx: typer.Context, **values: Any) -> None:
        from llmkit.config import explicit_params, resolve

        files = values.get("config") or []
        if len(files) > 1:
            from llmkit.errors import UsageError

            raise UsageError(f"--config is given {len(files)} times ({', '.join(map(str, files))}); a command reads one "
                             "file: put the settings in one (a later table or key does not add to an earlier file's)")
        values["config"] = files[0] if files else None

        typed = {}  # only the options given on the command line: the rest may come from --config
        for name, value in explicit_params(ctx).items():
            if name in options:
                parse = options[name].spec.parse
                try:
                    typed[name] = parse(value) if parse is not None and value is not None else value
                except ValueError as exc:  # one line naming the flag, whichever option's parser refused
                    from llmkit.errors import UsageError  # a bad value, as a range check's: exit status 2

                    shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value  # (a repeated flag)
                    raise UsageError(f"{options[name].flag} {shown!r}: {exc}") from None
        _config_file_outside_output(values.get("config"), values.get("out"), values.get("force"))
        if resolver is not None:
            config = resolver(file=values.get("config"), explicit=typed)
        else:
            config = resolve(config_cls, file=values.get("config"), section=section, explicit=typed)
        given = {name: values[name] for name in (*(a.name for a in arguments), "out", "force", "resume") if name in values}
        try:
            run(config, **given)
        except UnusedOptions as exc:  # checked as the stage runs: say which of them the file set
            if values.get("config") is None:
                raise
            from llmkit.config import flags_from_file

            raise exc.naming(values["config"], flags_from_file(config_cls, values["config"], section, typed)) from exc

    command.__signature__ = inspect.Signature(params)
    command.__name__ = section.replace(" ", "_")
    # One line per paragraph: rich keeps a docstring's line breaks, which cut the command list's
    # summaries mid-sentence.
    command.__doc__ = "\n\n".join(" ".join(part.split()) for part in inspect.cleandoc(run.__doc__ or "").split("\n\n"))
    command.config_cls, command.section, command.arguments = config_cls, section, list(arguments)
    command.writes_artifact = writes_artifact
    return command
