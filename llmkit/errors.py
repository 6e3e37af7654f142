"""User-facing errors: one line, non-zero exit, traceback only with --debug."""

from __future__ import annotations

import errno
import os
import re


class UserError(Exception):
    """A problem the user can fix. The message says what is wrong and what to do.

    `keeps_work`: the stop is not the input's fault (a worker killed, a node that cannot see a file,
    memory that ran out), so the work done stays for a rerun to continue: a data stage's partial
    output (llmkit.outputs), a training run with its checkpoints (kept_run_can_go_on)."""

    exit_code = 1
    keeps_work = False


class NotFinite(UserError):
    """Scores that are not finite (NaN or infinity), raised where they come out (`what`: which, if
    said there); the command, which holds the model, words it with `explained`, naming the weight
    and the checkpoint to blame: `verify` passes such a checkpoint, its files being as written."""

    def __init__(self, what: str = ""):
        super().__init__((f"{what}: not finite (NaN or infinity)" if what else "the model's scores are not finite (NaN or infinity)")
                         + "; use another checkpoint (NotFinite.explained names the weight that holds NaN or inf)")
        self.what = what

    def explained(self, members) -> str:
        """The message, from the scoring modules: (path, module) pairs, path None where one checkpoint
        was given (`llmkit.model.ensemble.scoring_members`); none: scores that no model made."""
        import torch

        lead = f"{self.what}: " if self.what else ""
        if not members:
            return f"{lead}a score came out as NaN or infinity"
        largest = 0.0
        for path, module in members:
            for name, weight in module.named_parameters():
                weight = weight.detach()
                if not weight.is_floating_point() or weight.numel() == 0:
                    continue
                if not bool(torch.isfinite(weight).all()):
                    whose = "its weight" if path is None else f"{path}'s weight"
                    return (f"{lead}the model's outputs are not finite (NaN or infinity): {whose} {name} holds NaN or "
                            "inf; use another checkpoint")
                largest = max(largest, float(weight.abs().max()))
        return (f"{lead}the model's outputs are not finite (NaN or infinity), its weights being finite (the largest "
                f"{largest:.3g}): they overflow; use another checkpoint")


class UsageError(UserError):
    """Wrong options or arguments: a bad value, a wrong combination, a config file that cannot be
    read or holds unknown keys (exit status 2, as click gives a flag it cannot parse)."""

    exit_code = 2


class OptionError(UsageError, ValueError):
    """An option's value breaks its declaration (type, range, choices): from a flag, a config file
    or Python, which may catch it as the ValueError it also is."""


class UnusedOptions(UsageError):
    """Options that would change nothing here, refused (see `unused_options`). It keeps their flags,
    so that the command can say which of them a --config file gave: checked as the stage runs,
    after the file's name is out of sight."""

    def __init__(self, message: str, flags: list[str]) -> None:
        super().__init__(message)
        self.flags = tuple(flags)

    def naming(self, file: object, file_flags: set[str]) -> "UnusedOptions":
        named = [flag for flag in self.flags if flag in file_flags]
        if not named or str(file) in str(self):
            return self
        return UnusedOptions(f"{self} ({', '.join(named)} set in {file})", list(self.flags))


def unused_options(unused: list[tuple[str, str]]) -> UnusedOptions:
    """The refusal of options that would change nothing in this run: [(flag, what it is for)].
    Refused rather than ignored because they would still be recorded, and change the fingerprint.
    Options that do not go together: a usage error (exit 2)."""
    flags = ", ".join(flag for flag, _ in unused)
    by_use: dict[str, list[str]] = {}
    for flag, what in unused:
        by_use.setdefault(what, []).append(flag)
    uses = "; ".join(f"{', '.join(named)} {'is' if len(named) == 1 else 'are'} for {what}" for what, named in by_use.items())
    return UnusedOptions(f"{flags} would change nothing here ({uses}); leave {'it' if len(unused) == 1 else 'them'} out",
                         [flag for flag, _ in unused])


class WorkerDied(UserError):
    """A worker process died under a data stage (the out-of-memory killer, a kill): not a problem
    with the input, so the stage's partial output is kept for the rerun to continue."""

    keeps_work = True


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a scheduler's preemption), raised where the CLI runs so that it
    stops as Ctrl-C does: worker pools shut down, `finally` blocks run, partial outputs stay where
    a rerun continues them (the default death skips all of that)."""


_skip_shutdown = False


def request_exit_without_shutdown() -> None:
    """Native threads that a stop cannot end may still reach for Python (a Rust trainer's pool
    pulling its next text): the command exits without the interpreter's shutdown
    (`llmkit.cli.main`), which would unwind such a thread by force through Rust frames and abort
    the process (exit 134, "FATAL: exception not rethrown") after the one-line message."""
    global _skip_shutdown
    _skip_shutdown = True


def exit_without_shutdown_requested() -> bool:
    return _skip_shutdown


_debug = os.environ.get("LLMKIT_DEBUG", "") not in ("", "0")


def set_debug(enabled: bool) -> None:
    global _debug
    _debug = enabled


def debug_enabled() -> bool:
    return _debug


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a quota, a file-size limit (ulimit -f)


def _no_room_in_library(exc: BaseException) -> int | None:
    """The errno of a write that found no room, reported by a library in its own exception type,
    not as an OSError: safetensors' SafetensorError ("I/O error: No space left on device (os error
    28)"), pyarrow's OSError text ("[errno 27] File too large")."""
    found = re.search(r"\((?:os error) (\d+)\)|\[errno (\d+)\]", str(exc))
    number = int(next(group for group in found.groups() if group)) if found else None
    return number if number in _NO_ROOM and (type(exc).__name__ == "SafetensorError" or isinstance(exc, OSError)) else None


def kept_run_can_go_on(exc: BaseException) -> bool:
    """Whether a training run stopped by `exc` is worth keeping for --resume: the file system failed
    it (a full disk, which safetensors reports in its own type) or memory ran out (--micro-batch may
    change on resume), not its options or inputs; or a UserError that `keeps_work` (a worker's, read back
    by the launcher)."""
    return (isinstance(exc, (OSError, MemoryError)) or _no_room_in_library(exc) is not None
            or isinstance(exc, UserError) and exc.keeps_work)


def closest_names(typed: str, known, most: int = 3, cutoff: float = 0.75) -> list[str]:
    """The known names a user most likely meant, best first, up to `most`: the same name spelled
    otherwise (case, "-" for "_"), else the names it is the start of (3 letters or more; shortest
    first: --temp, arc), else the closest by difflib's ratio with any nearly as close (within 0.1; none
    under `cutoff`): one rule for every name a user types (options, presets, metrics, benchmarks,
    templates, config keys)."""
    import difflib

    def key(name: str) -> str:
        return name.lower().replace("_", "-")

    by_key: dict[str, str] = {}
    for name in known:
        by_key.setdefault(key(name), name)
    typed_key = key(typed)
    if typed_key in by_key:
        return [by_key[typed_key]]
    started = sorted((name for name in by_key if name.startswith(typed_key)), key=len)
    if started and len(typed_key.strip("-")) >= 3:
        return [by_key[name] for name in started[:most]]
    ratio = {name: difflib.SequenceMatcher(None, typed_key, name).ratio() for name in by_key}
    best = max(ratio.values(), default=0.0)
    close = sorted((name for name in by_key if ratio[name] >= max(cutoff, best - 0.1)), key=lambda name: -ratio[name])
    return [by_key[name] for name in close[:most]]


def did_you_mean(typed: str, known, cutoff: float = 0.75, shown=repr) -> str:
    """ "did you mean 'A', 'B' or 'C'? " (closest_names, each written by `shown`), else "". """
    named = [shown(name) for name in closest_names(typed, known, cutoff=cutoff)]
    if not named:
        return ""
    return "did you mean " + (named[0] if len(named) == 1 else f"{', '.join(named[:-1])} or {named[-1]}") + "? "


def add_advice(exc: BaseException, text: str) -> None:
    """Advice for the one line `exc` becomes (what became of the output, what a rerun does), added by
    the code it passes through. Kept apart from Python's exception notes, which libraries add too."""
    exc.__dict__.setdefault("llmkit_advice", []).append(text)


def advice_of(exc: BaseException) -> str:
    """The advice added to `exc`, as one line ("" if none)."""
    return " ".join("; ".join(getattr(exc, "llmkit_advice", ())).split())


def _short_path(name) -> str:
    text = str(name or "")
    return text if len(text) <= 80 else f"{text[:40]}...{text[-30:]}"


def one_line(exc: BaseException) -> str:
    """Render an exception as the single line a user sees."""
    if isinstance(exc, UserError):
        text = str(exc)
    elif isinstance(exc, FileNotFoundError):
        text = f"file not found: {exc.filename or exc}; check the path"
    elif isinstance(exc, PermissionError):
        text = f"permission denied: {exc.filename or exc}; check the file's permissions"
    elif (isinstance(exc, OSError) and exc.errno in _NO_ROOM) or _no_room_in_library(exc):
        number = exc.errno if isinstance(exc, OSError) and exc.errno in _NO_ROOM else _no_room_in_library(exc)
        where = f" while writing {exc.filename}" if getattr(exc, "filename", None) else ""
        if number == errno.EFBIG:
            text = (f"a file grew past this file system's or your file-size limit (ulimit -f){where}; raise the limit or "
                    "write the output elsewhere")
        else:
            # (the same error where a file system has no room left for another file: its inodes, `df -i`)
            text = f"no space left on the device{where}; free some space (or files: `df -i`) or write the output elsewhere"
    elif isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        text = (f"a path is too long for the file system ({_short_path(exc.filename)}): a name takes up to 255 bytes and a "
                "whole path 4,096; give a shorter path")
    elif isinstance(exc, MemoryError):
        text = "out of memory; use a smaller batch, model or input"
    elif isinstance(exc, UnicodeEncodeError) and exc.encoding.replace("-", "").lower() != "utf8":
        # (printing to a stream of another encoding: PYTHONIOENCODING=latin-1; a locale's is UTF-8 mode's, llmkit.cli)
        text = (f"this text cannot be written in the output's encoding, {exc.encoding} ({ascii(exc.object[exc.start:exc.end])}); "
                "set PYTHONIOENCODING=utf-8, or write the output to a file with -o where the stage has one")
    elif type(exc).__name__ == "OutOfMemoryError":  # torch's, for a GPU: a RuntimeError, not a MemoryError
        asked = re.search(r"Tried to allocate ([\d.]+ \w+)", str(exc))
        what = f" (it asked for {asked.group(1)} more)" if asked else ""
        text = (f"out of GPU memory{what}; use a smaller --batch-size or --micro-batch, a shorter input, or a smaller "
                "model")
    else:
        text = f"{type(exc).__name__}: {exc} (unexpected; rerun with --debug for the traceback)"
    if advice_of(exc):
        text += f"; {advice_of(exc)}"
    return " ".join(text.split())
