"""The one rich console: progress and logs go to stderr, results (tables, JSON) to stdout."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# What is printed holds paths, prompts and recorded values: "[/x]" in one would be a markup tag (a
# crash, or text silently dropped), ":x:" an emoji. So neither is read; styled words are
# rich.text.Text (`styled`), and the rare line that needs markup says markup=True and escapes.
def write_nowhere(stream) -> None:
    """Point a stream whose reader closed the pipe at /dev/null: later writes (and the flush at
    exit) then raise no second BrokenPipeError."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    _silenced.add(stream.fileno())
    os.dup2(devnull, stream.fileno())


_silenced: set[int] = set()  # the descriptors write_nowhere pointed at /dev/null


def stdout_reader_gone() -> bool:
    """Whether stdout's reader closed the pipe (`llmkit ... | head`): then a BrokenPipeError is the
    reader having all it wanted, not a failure. Any other one (a socket's, a worker's pipe) is an
    error like any other: it ended the command with exit 0 and no word."""
    import select
    import sys

    try:
        descriptor = sys.__stdout__.fileno()
    except (AttributeError, ValueError, OSError):  # no real stdout (an embedding host): take it as the pipe
        return True
    if descriptor in _silenced or not hasattr(select, "poll"):  # (no poll: Windows; the old rule, any broken pipe)
        return True
    poller = select.poll()
    poller.register(descriptor, 0)  # (POLLERR and POLLHUP are reported whatever is asked)
    # a pipe whose reader closed says POLLERR; a socket (stdout under Node's child_process, many runners) POLLHUP
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader closed the pipe (`llmkit ... | head`); rich would exit 1 here itself. This
        stream then writes nowhere. A closed stdout held results the reader has all it wanted of:
        BrokenPipeError stops the command, which exits 0 (cli.py). A closed stderr held progress
        and log lines only: the work goes on (a training run is not lost to `2>&1 | head`)."""
        self.quiet = True
        write_nowhere(self.file)
        if not self.stderr:
            raise BrokenPipeError


err = _Console(stderr=True, highlight=False, emoji=False, markup=False)
out = _Console(highlight=False, emoji=False, markup=False)


# C0 controls but tab and newline, DEL, C1 controls: rich drops only BEL, BS, VT, FF and CR, and an
# ESC it passes begins a sequence the terminal acts on (ESC Z asks it to answer as if typed).
_ACTED_ON = dict.fromkeys([*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0)])


def for_a_terminal(text: str) -> str:
    """Model-made text as a terminal may be given it: the control characters it would act on left
    out (piped or written to a file, text goes out as it is)."""
    return text.translate(_ACTED_ON)


def write_generated(*pieces: str | tuple[str, str], end: str = "") -> None:
    """Model-made text (and the prompts shown with it) on stdout: at a terminal, without the control
    characters it would act on, each `(text, style)` piece styled; piped or to a file, byte for byte
    as generated, what -o records (rich would expand tabs and drop control characters)."""
    from rich.text import Text

    parts = [(piece, "") if isinstance(piece, str) else piece for piece in pieces]
    if out.is_terminal:
        out.print(Text.assemble(*((for_a_terminal(text), style) for text, style in parts)), end=end, soft_wrap=True)
    else:
        out.file.write("".join(text for text, _ in parts) + end)
    out.file.flush()


def note(message: str) -> None:
    """`note: MESSAGE` on stderr, one logical line (a terminal wraps it; no markup is read): what a
    stage tells about its inputs or choices that is no error. The one form of every stage's notes."""
    err.print(f"note: {message}", soft_wrap=True)


def shell_word(path) -> str:
    """A path as a shell command line takes it: quoted, and never read as an option (`./-toks`)."""
    import shlex

    text = str(path)
    return shlex.quote(f"./{text}" if text.startswith("-") else text)


def figure(value, decimals: int = 4) -> str:
    """A number as every stage prints one: a count with separators (891,520); a measurement with fixed
    decimals, one too large or too small for them (word perplexity's 3.357e+10, a rate of 2.1e-05) in
    four significant digits rather than a hundred digits or 0.0000; anything else as it is."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if not isinstance(value, float):
        return str(value)
    fixed = value == 0 or 10 ** (1 - decimals) <= abs(value) < 1e6 or value != value or abs(value) == float("inf")
    return f"{value:.{decimals}f}" if fixed else f"{value:.4g}"


def wrote(art) -> None:
    """`wrote OUT (fingerprint F)` on stderr: the line a stage whose results table names no output ends with."""
    err.print(styled("wrote", "green", f" {art.path} (fingerprint {art.short_fingerprint})"), soft_wrap=True)


def next_step(*commands: str) -> None:
    """`next: COMMAND` on stderr after a stage's output: the stage a first run goes on with (each
    stage's output is a folder only the next stage reads, which a stage's own page does not say)."""
    err.print(styled("next:", "dim", " " + "; or ".join(commands)), soft_wrap=True)


def styled(word: str, style: str, rest: str = ""):
    """`word` in `style`, then `rest` as typed: a line with one styled word ("ok", "warning:")."""
    from rich.text import Text

    return Text.assemble((word, style), rest)


def progress(*extra_columns, transient: bool = False) -> Progress:
    """A progress bar with the columns every stage shows, plus stage-specific ones."""
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=transient,
        disable=not err.is_terminal and not _force_progress(),
    )


def _force_progress() -> bool:
    import os

    return os.environ.get("LLMKIT_PROGRESS", "") == "1"
