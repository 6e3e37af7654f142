"""The `llmkit` command: wires each stage's command into one Typer app. No logic of its own.

Stage commands live in each stage's `command.py` and import their heavy dependencies (torch,
datasets) inside the function body, so `llmkit --help` stays fast; a command line that names a
stage builds the app with that stage alone (`named_command`), so it imports no other stage.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Callable, Optional

import click
import typer

from llmkit.stage_command import USAGE_ERRORS as _USAGE_ERRORS
from llmkit.stage_command import click_exceptions

_PASS_THROUGH = tuple(
    cls
    for module in (*click_exceptions(), typer)
    for cls in (getattr(module, name, None) for name in ("Exit", "Abort", "ClickException"))
    if isinstance(cls, type)
)

from llmkit import __version__
from llmkit.errors import Terminated, UserError, advice_of, debug_enabled, one_line, set_debug
from llmkit.outputs import made_parents_removed_on_failure
from llmkit.runtime import let_idle_threads_sleep
from llmkit.stage_command import LlmkitCommand, LlmkitGroup

let_idle_threads_sleep()  # before any stage imports torch


class _ErrorsAsOneLine(LlmkitGroup):
    """Every exception under the root becomes one red line and a non-zero exit (unless --debug);
    so does a usage error (a missing or unknown option), which Typer would draw as a box."""

    def parse_args(self, ctx, args):
        ctx.meta.setdefault("llmkit.args", list(args))  # (as parsed: `llmkit -clean` is named as typed, not as -c)
        return super().parse_args(ctx, args)

    def make_context(self, info_name, args, parent=None, **extra):
        given = list(args)  # (the parser consumes `args`)
        with _usage_error_as_one_line():
            ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta["llmkit.args"] = given  # the command line, for what a stopped command says (invoke)
        return ctx

    def list_commands(self, ctx: click.Context) -> list[str]:
        """In the order a first run takes them: `tokenizer` (train) between clean and tokenize (the
        groups, added after the commands, came last, after verify)."""
        names = super().list_commands(ctx)
        if "tokenizer" in names and "clean" in names:
            names.remove("tokenizer")
            names.insert(names.index("clean") + 1, "tokenizer")
        if "scaling" in names and "sweep" in names:  # (fits what a sweep measured: beside it, not after verify)
            names.remove("scaling")
            names.insert(names.index("sweep") + 1, "scaling")
        return names

    def resolve_command(self, ctx: click.Context, args: list[str]):
        try:
            return super().resolve_command(ctx, args)
        except _USAGE_ERRORS as exc:  # a group's command typed alone (`llmkit encode`) is named with its group
            import difflib

            nested = {f"{name} {sub}": sub for name, group in self.commands.items() for sub in getattr(group, "commands", {})}
            if args and "No such command" in exc.message:
                close = ([path for path, sub in nested.items() if sub == args[0]]
                         or [path for path, sub in nested.items() if difflib.get_close_matches(args[0], [sub], cutoff=0.8)])
                joined = " or ".join(repr(f"llmkit {path}") for path in close)
                if close and "Did you mean" in exc.message:
                    exc.message = f"{exc.message.rstrip('?')} or {joined}?"
                elif close:
                    exc.message = f"{exc.message.rstrip('.')}. Did you mean {joined}?"
            raise

    def invoke(self, ctx: click.Context):
        _stop_cleanly_on_sigterm()
        try:
            with _usage_error_as_one_line(), made_parents_removed_on_failure():
                return super().invoke(ctx)
        except _PASS_THROUGH:  # --help, exits: click/typer finish them
            raise
        except BrokenPipeError as exc:  # `llmkit ... | head`: the reader has all it wanted
            from llmkit.console import stdout_reader_gone

            if not stdout_reader_gone():  # another pipe broke (a socket's, a worker's): a failure as any other
                _fail(exc)
            _stop_writing_stdout()
            if advice_of(exc):  # (what became of the output: no error line carries it here)
                from llmkit.console import note

                note(advice_of(exc))
            raise typer.Exit(0)
        except KeyboardInterrupt as exc:
            import signal

            terminated = isinstance(exc, Terminated) or signal.SIGTERM in _signals_received
            stopped = "terminated" if terminated else "interrupted"
            # a stage's own advice, where it has one; else what rerunning this command does
            advice = advice_of(exc) or _rerun_advice(ctx.meta.get("llmkit.args", []))
            _print_error(f"{stopped}; {advice}")
            raise typer.Exit(143 if terminated else 130)
        except Exception as exc:
            _fail(exc)


def _fail(exc: Exception) -> None:
    """The one red line and the exit status of a failure (the traceback under --debug)."""
    if debug_enabled():
        raise exc
    _print_error(one_line(exc))
    raise typer.Exit(getattr(exc, "exit_code", 1) if isinstance(exc, UserError) else 1)


def _rerun_advice(args: list[str]) -> str:
    """What rerunning a stopped command does, from its command line (`args`)."""
    name = next(iter(named_command(args) or ()), "")
    if name == "sweep":
        from llmkit.sweep.stage import rerun_advice

        return rerun_advice("--force" in args)
    if "--force" in args and name in ("pretrain", "finetune"):  # (its checkpoints, once saved, are the run's to go on from)
        return "rerun it with --resume in place of --force to continue from its last checkpoint, or as it was to start again"
    if name in ("pretrain", "finetune"):
        return "rerun it with --resume to continue from its last checkpoint, or as it was if it saved none"
    return "nothing was written; rerun the command"


_signals_received: set[int] = set()


def _stop_cleanly_on_sigterm() -> None:
    import signal
    import threading

    def terminated(signum, frame):
        _signals_received.add(signum)  # (Ray's ray.get turns the exception into a plain KeyboardInterrupt)
        raise Terminated()

    _signals_received.clear()  # (this command's: another run in this process may have had one)
    if threading.current_thread() is threading.main_thread():  # (signal handlers can only be set there)
        signal.signal(signal.SIGTERM, terminated)


@contextlib.contextmanager
def _usage_error_as_one_line():
    try:
        yield
    except _USAGE_ERRORS as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `llmkit tokenizer` alone: the help is the answer
            raise
        message = " ".join(exc.format_message().split()).rstrip(".")
        if type(exc).__name__ == "NoSuchOption" and exc.ctx is not None and exc.message.startswith("No such option"):
            message = _no_such_option(exc.option_name, exc.ctx)
        path = exc.ctx.command_path if exc.ctx is not None else ""
        if (type(exc).__name__ == "NoSuchOption" and path.endswith(("tokenizer encode", "tokenizer decode"))
                and not str(getattr(exc, "option_name", "")).startswith("--")):
            # (a text or an id that starts with -: `encode TOK -5`, `decode TOK 46 -1`)
            message += f"; a text or id that starts with - goes after --: {path} TOKENIZER -- ..."
        if type(exc).__name__ == "MissingParameter" and exc.ctx is not None and exc.ctx.params.get("config"):
            # (an input set in the file: click refuses the command before the file is read)
            message += "; inputs and -o are typed on the command line, a --config file holds options only"
        command = exc.ctx.command_path if exc.ctx is not None else "llmkit"
        _print_error(f"{message} (see {command} --help)")
        raise typer.Exit(exc.exit_code) from None


def _no_such_option(typed: str, ctx: click.Context) -> str:
    """"No such option", with the options the user most likely meant (errors.closest_names: --lora_rank,
    --temp, --workres, --gup). Compared without the leading dashes, which every name shares (with them
    click offered --out for --bogus, and --force beside --workers for --workres); hidden options are not
    offered (the sweep's --max-steps, which it refuses)."""
    from llmkit.errors import did_you_mean

    if not typed.startswith("--"):  # click reads -temperature as -t -e ...: the word the user typed (not a value
        # such as -p "-the king"; without its =VALUE)
        typed = next((arg.partition("=")[0] for arg in ctx.meta.get("llmkit.args", ())
                      if arg.startswith(typed) and len(arg.partition("=")[0]) > 2 and not arg.startswith("--")
                      and arg.partition("=")[0][1:].replace("-", "").replace("_", "").isalnum()), typed)
    commands = getattr(ctx.command, "commands", {})  # (a group's: `llmkit tokenizer -train`)
    if typed.lstrip("-") in commands:
        return f"No such option: {typed}; did you mean the command {ctx.command_path} {typed.lstrip('-')}?"
    known = [name[2:] for param in ctx.command.get_params(ctx) if not getattr(param, "hidden", False)
             for name in (*param.opts, *param.secondary_opts) if name.startswith("--")]
    word = typed.lstrip("-").lower().replace("_", "-")
    meant = [name for name in OPTION_SYNONYMS.get(word, ()) if name in known]
    if word in ("grad-accum", "gradient-accumulation-steps", "accumulation"):  # (--micro-batch is its opposite)
        if {"batch-tokens", "micro-batch"} <= set(known):
            return (f"No such option: {typed}; accumulation is derived: --batch-tokens / (--micro-batch x --seq-len x "
                    "devices), so give those")
        if {"batch-size", "micro-batch"} <= set(known):
            return f"No such option: {typed}; accumulation is derived: --batch-size / (--micro-batch x devices), so give those"
    if meant:  # (another tool's word: --preset was offered --resume)
        return f"No such option: {typed}; did you mean {' or '.join(f'--{name}' for name in meant)}?"
    hint = did_you_mean(typed.lstrip("-"), known, cutoff=0.6, shown=lambda name: f"--{name}") if len(typed) > 2 else ""
    return f"No such option: {typed}" + (f"; {hint.rstrip()}" if hint else "")


# Other tools' words for llmkit's options (nanoGPT's, transformers', litgpt's), where no spelling is near
OPTION_SYNONYMS = {
    "preset": ("model",), "size": ("model",), "model-size": ("model",), "model-name": ("model",),
    "steps": ("max-steps",), "iters": ("max-steps",), "max-iters": ("max-steps",), "num-steps": ("max-steps",),
    "learning-rate": ("lr",), "batch-size": ("batch-tokens", "micro-batch"), "block-size": ("seq-len", "context-length"),
    "output": ("out",), "output-dir": ("out",), "num-workers": ("workers",), "epochs": ("max-epochs", "max-steps"),
    "num-train-epochs": ("max-epochs", "max-steps"), "warmup": ("warmup-steps",), "bs": ("batch-tokens", "micro-batch", "batch-size"),
    "max-length": ("max-new-tokens",), "max-tokens": ("max-new-tokens",),
}


def _print_error(message: str) -> None:
    from llmkit.console import err

    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, markup=True, highlight=False)


# Each command by its path, as (module, function): a command line that names one imports only
# that one's module (`main`), so a stage starts without importing every other stage's options
# (0.14 against 0.22 CPU-s to start `llmkit inspect`, 0.27 against 0.33 for a `tokenize` that
# fails at once); the full app (--help, an unknown command, tests, docs) imports them all.
STAGES = {
    "clean": ("llmkit.corpus.command", "clean"), "tokenizer train": ("llmkit.tokenizer.command", "train"),
    "tokenize": ("llmkit.tokenizer.command", "tokenize"), "pretrain": ("llmkit.pretrain.command", "pretrain"),
    "finetune": ("llmkit.finetune.command", "finetune"), "generate": ("llmkit.generate.command", "generate"),
    "chat": ("llmkit.generate.chat", "chat"), "eval": ("llmkit.eval.command", "evaluate"),
    "export": ("llmkit.interop.command", "export_model"), "import": ("llmkit.interop.command", "import_model"),
    "sweep": ("llmkit.sweep.command", "sweep"), "scaling fit": ("llmkit.scaling.command", "fit"),
    "scaling predict": ("llmkit.scaling.command", "predict"), "plot": ("llmkit.plot.command", "plot"),
    "average": ("llmkit.average.command", "average"), "plan": ("llmkit.plan.command", "plan"),
}
TOOLS = {"tokenizer encode": ("llmkit.tokenizer.command", "encode"), "tokenizer decode": ("llmkit.tokenizer.command", "decode")}
GROUPS = {"tokenizer": "Train and try byte-level BPE tokenizers.", "scaling": "Fit scaling laws to a sweep; predict from them."}
ARTIFACT_COMMANDS = ("inspect", "report", "verify")


def stage_commands(paths: set[str] | None = None, table: dict[str, tuple[str, str]] = STAGES) -> dict[str, Callable[..., None]]:
    """Every stage's command by its path (or those of `paths`; `table`: another table of commands,
    TOOLS); each stage's is derived from its config class (llmkit.stage_command)."""
    import importlib

    return {path: getattr(importlib.import_module(module), name) for path, (module, name) in table.items()
            if paths is None or path in paths}


def build_app(paths: set[str] | None = None) -> typer.Typer:
    """The `llmkit` app with every command, or with the stages and tools in `paths` and the
    artifact commands (inspect, report, verify) only."""
    app = typer.Typer(
        name="llmkit",
        cls=_ErrorsAsOneLine,
        help="From raw text to a trained, evaluated language model: one command per stage.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        rich_markup_mode="rich",
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    groups = {name: typer.Typer(no_args_is_help=True, cls=LlmkitGroup, help=text) for name, text in GROUPS.items()}
    for path, function in {**stage_commands(paths), **stage_commands(paths, TOOLS)}.items():
        group, _, command = path.rpartition(" ")
        (groups[group] if group else app).command(command, cls=LlmkitCommand)(function)
    for name, group in groups.items():
        if paths is None or any(path.startswith(f"{name} ") for path in paths):
            app.add_typer(group, name=name)
    app.command("inspect", cls=LlmkitCommand)(inspect_command)
    app.command("report", cls=LlmkitCommand)(report_command)
    app.command("verify", cls=LlmkitCommand)(verify_command)
    return app


def named_command(args: list[str]) -> set[str] | None:
    """The command a command line names, as the paths `build_app` takes ({"tokenize"},
    {"tokenizer train"}, set() for an artifact command), or None where it takes the whole app
    (--help, --version, no command, an unknown or incomplete one)."""
    words = list(args)
    while words and words[0] == "--debug":  # the root's one option before a command
        words.pop(0)
    if not words or words[0] in ARTIFACT_COMMANDS:
        return set() if words else None
    if words[0] in STAGES:
        return {words[0]}
    if words[0] in GROUPS and len(words) > 1 and f"{words[0]} {words[1]}" in {**STAGES, **TOOLS}:
        return {f"{words[0]} {words[1]}"}
    return None


def __getattr__(name: str):
    if name == "app":  # the whole app, built on first use (tests, docs): a module attribute from then on
        globals()["app"] = built = build_app()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"llmkit {__version__}")
        raise typer.Exit()


def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    set_debug(debug)


def inspect_command(
    path: Annotated[Path, typer.Argument(help="Artifact directory.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the raw manifest (manifest.json as it is on disk).")] = False,
) -> None:
    """Show an artifact's manifest and its lineage (inputs of inputs)."""
    from llmkit import artifacts
    from llmkit.inspect_view import print_artifact

    if json_output and (path / artifacts.MANIFEST).is_file():
        # what the file holds, fields this version does not know included, and of a damaged artifact
        # too (when a user wants to see it; its checks refused it), then a damaged one's exit status
        raw = (path / artifacts.MANIFEST).read_bytes()
        typer.echo(raw, nl=False)
        try:
            manifest = json.loads(raw.decode("utf-8"))
        except ValueError:  # (UnicodeDecodeError is one)
            manifest = None
        if not isinstance(manifest, dict) or manifest.get("kind") not in artifacts.KINDS:
            raise UserError(f"{path / artifacts.MANIFEST} is not an llmkit manifest (a JSON object in UTF-8 naming "
                            "its kind; printed as it is): the artifact is damaged, rebuild it") from None
        newer = isinstance(manifest.get("format_version"), int) and manifest["format_version"] > artifacts.FORMAT_VERSION
        if not newer:  # (a later llmkit's: printed for the reader, which is all this version can do with it)
            artifacts.load(path)  # (an edited field, a file cut short: `inspect --json | jq` read it as sound)
        return
    art = artifacts.load(path)
    with _damage_named(path):
        print_artifact(art, artifacts.lineage(path))


def report_command(
    paths: Annotated[list[Path], typer.Argument(help="Artifact directories, or folders of them (e.g. a recipe's runs/NAME).")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the rows as a JSON list (path, kind, full fingerprint, "
                                              "headline, the manifest's stats) instead of a table.")] = False,
) -> None:
    """One table row per artifact: kind, fingerprint and headline numbers (recipes end with it)."""
    from llmkit.inspect_view import artifacts_in, print_report

    with _damage_named(*paths):  # (a single artifact's damage, or any outside a row's headline: one line)
        found, damaged = artifacts_in(paths)
        unreadable, incomplete = print_report(found, as_json=json_output, unloadable=damaged)
    damaged += unreadable
    problems = [f"{len(damaged)} artifact(s) could not be read: {', '.join(map(str, damaged))}"] if damaged else []
    problems += [f"{len(incomplete)} artifact(s) miss or changed one made inside them: {', '.join(map(str, incomplete))}"] if incomplete else []
    if problems:
        raise UserError(f"{'; '.join(problems)} (the notes and rows above say why); llmkit verify shows what changed in one")


@contextlib.contextmanager
def _damage_named(*paths: Path):
    """inspect and report read what stages wrote; a manifest edited by hand (a list where a table
    belongs), a file cut or replaced, a link loop: one line that says so and what to run, not the
    Python error of the first reader that tripped over it."""
    try:
        yield
    except (UserError, BrokenPipeError, PermissionError, UnicodeEncodeError):  # (a closed reader, a file's permissions
        raise  # or text the output's encoding cannot hold are no damage)
    except (KeyError, TypeError, AttributeError, ValueError, RuntimeError, OSError) as exc:
        where = " ".join(str(p) for p in paths)
        raise UserError(f"{where}: an artifact there looks damaged ({type(exc).__name__}: {' '.join(str(exc).split())[:100]}); "
                        f"llmkit verify shows what changed, rebuild it with the stage that made it") from exc


def verify_command(
    paths: Annotated[list[Path], typer.Argument(help="Artifact directories; each is checked, and the exit status is "
                                                "non-zero if any fails.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON list, one object per artifact (path, ok, "
                                              "files, inside, problems, notes, error), instead of lines.")] = False,
) -> None:
    """Re-hash artifacts' files and check their fingerprints; non-zero exit on any mismatch."""
    from llmkit import artifacts

    paths = _verified_paths(paths)
    reports, failed = [], []
    for path in paths:
        try:
            report = artifacts.verify(path)
        except UserError as exc:  # (not an artifact, a manifest that cannot be read: one among several is told and counted)
            if len(paths) == 1 and not json_output:
                raise
            reports.append(_verify_row(path, error=str(exc)))
            failed.append((path, str(exc)))
            if not json_output:
                from llmkit.console import out, styled

                out.print(styled("mismatch", "red", f" {path}: {exc}"), soft_wrap=True)
            continue
        reports.append(_verify_row(path, report))
        if not json_output:
            _print_verified(report)
        if not report.ok:
            failed.append((path, _verify_failure(report)))
    if json_output:
        typer.echo(json.dumps(reports, indent=2))
    if len(paths) == 1 and failed:
        raise UserError(failed[0][1])
    if failed:
        why = "each one's problems or error say why" if json_output else "the lines above say why"
        raise UserError(f"{len(failed)} of {len(paths)} artifacts failed verification: {', '.join(str(path) for path, _ in failed)} "
                        f"({why}); rebuild each with the stage that made it")


def _verify_row(path: Path, report=None, error: str | None = None) -> dict:
    """verify --json's object for one artifact: every key in every row (a script reads row["problems"])."""
    return {"path": str(path), "ok": report is not None and report.ok, "files": report.files if report else 0,
            "inside": report.inside if report else 0, "problems": report.problems if report else [],
            "notes": report.notes if report else [], "error": error}


def _verified_paths(paths: list[Path]) -> list[Path]:
    """The artifacts to verify: each path given, a folder of artifacts (a recipe's runs/NAME) as the
    artifacts in it, as report takes them; among several paths a folder that holds none (a glob's stray
    match: the quickstart's qa/ beside its artifacts, the translation recipe's bitext.txt) is skipped with a
    note, as report skips it. A path
    given alone is verified as it is (its one line says what it is not); so is an unfinished training
    run or sweep (its run mark, no manifest) wherever it is met, which fails: it is no stray (a review:
    one among several passed, skipped). Nothing left to verify is an error, as in report."""
    from llmkit import artifacts
    from llmkit.console import note
    from llmkit.outputs import RUN_MARK

    def checked(path: Path) -> bool:  # (an artifact, or a missing path: verify says what it is; a file given alone too)
        return (path / artifacts.MANIFEST).is_file() or (path / RUN_MARK).is_file() or not path.exists()

    taken = []
    for path in paths:
        inside = sorted(p for p in path.iterdir() if p.is_dir() and checked(p)) if path.is_dir() and not checked(path) else []
        if inside:
            taken += inside
        elif checked(path) or len(paths) == 1:
            taken.append(path)
        else:
            # (a glob's stray file among artifacts, the translation recipe's bitext.txt: it failed the whole check)
            note(f"skipped {path}: a {'file' if path.is_file() else 'folder without a manifest'}, not an llmkit artifact")
    if not taken:
        raise UserError(f"no artifact among {', '.join(map(str, paths))}: nothing was verified; give artifact folders, or "
                        "folders of them")
    return taken


def _print_verified(report) -> None:
    from llmkit.console import note, out, styled

    path = report.path
    for line in report.notes:
        note(f"{path}: {line}")
    if report.ok:
        out.print(styled("ok", "green", f" {path}: {report.files} file{'s' if report.files != 1 else ''} match{'es' if report.files == 1 else ''}, fingerprint matches"
                                        + (f"; so do the {report.inside} artifacts inside it" if report.inside else "")),
                  soft_wrap=True)
    for problem in report.problems:
        out.print(styled("mismatch", "red", f" {path}: {problem}"), soft_wrap=True)


def _verify_failure(report) -> str:
    path = report.path
    if all(problem.startswith("unlisted file:") for problem in report.problems):  # the artifact itself is whole
        return (f"{path} failed verification ({len(report.problems)} problem(s)): files were added to it; remove "
                "them, or rebuild it with the stage that made it")
    return f"{path} failed verification ({len(report.problems)} problem(s)); rebuild it with the stage that made it"




def _stop_writing_stdout() -> None:
    import sys

    from llmkit.console import write_nowhere

    write_nowhere(sys.stdout)


def main() -> None:
    import sys

    from llmkit.runtime import end_with_parent, respect_omp_thread_limit

    _in_utf8_mode()
    end_with_parent()  # (a sweep's run)
    respect_omp_thread_limit()
    try:
        build_app(named_command(sys.argv[1:]))()
    except BrokenPipeError:  # while printing --help into a closed pipe
        _stop_writing_stdout()
    except SystemExit as exit_:
        from llmkit.errors import exit_without_shutdown_requested

        if exit_without_shutdown_requested():  # stopped with native threads still about: leave without unwinding them
            _exit_now(exit_.code if isinstance(exit_.code, int) else 1)
        raise


def _in_utf8_mode() -> None:
    """Run in Python's UTF-8 mode where the locale says ASCII (`LC_ALL=C` with Python's own switch
    to UTF-8 turned off, PYTHONCOERCECLOCALE=0 PYTHONUTF8=0): Python then decodes file names and the
    standard streams as ASCII, so pyarrow, which takes a path as UTF-8, looked for other bytes than a
    Chinese file's name (clean, tokenize and tokenizer train failed), and printing Chinese failed
    (generate, tokenizer decode, inspect). The command starts again once in UTF-8 mode (`-X utf8`),
    with the interpreter's own options and its arguments as typed. A locale of a real legacy
    encoding (GB18030, Latin-1) is left as it is: its terminal reads and shows that encoding, which
    UTF-8 mode would garble (docs/architecture.md says what then holds)."""
    import codecs
    import os
    import sys

    if (sys.flags.utf8_mode or os.name != "posix" or not sys.executable or not getattr(sys, "orig_argv", None)
            or codecs.lookup(sys.getfilesystemencoding()).name != "ascii"):
        return
    os.execve(sys.executable, [sys.executable, "-X", "utf8", *sys.orig_argv[1:]], dict(os.environ, PYTHONUTF8="1"))


def _exit_now(code: int) -> None:
    """Exit without the interpreter's shutdown, having done the part of it that others see: output
    flushed, multiprocessing's finalizers run (else its resource tracker reports leaked semaphores)."""
    import os
    import sys

    if "multiprocessing.util" in sys.modules:
        import multiprocessing

        for child in multiprocessing.active_children():  # a worker still waiting for work would be joined forever
            child.terminate()
        # what atexit would run (private but long-standing; it does its work once, however often called)
        sys.modules["multiprocessing.util"]._exit_function()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
