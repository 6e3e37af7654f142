"""Entry point of one torchrun worker: `python -m llmkit.train.worker LAUNCH.json`.

LAUNCH.json names a stage function ("module:function") and its keyword arguments. A
failure is written as one line to the launch's error file, for the parent to print.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from llmkit.console import err
    from llmkit.errors import UserError, debug_enabled, kept_run_can_go_on, one_line

    argv = sys.argv[1:] if argv is None else argv
    _end_with_the_agent()
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    sys.argv = spec.get("argv") or sys.argv  # manifests record the command the user typed (llmkit.artifacts)
    module_name, function_name = spec["entry"].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    from llmkit.train.distributed import OPTIONS_DIGEST

    # compared across the run's processes (distributed.init)
    os.environ[OPTIONS_DIGEST] = _options_digest(spec["arguments"], spec.get("compared"))
    try:
        function(**spec["arguments"])
    except KeyboardInterrupt:  # torchrun passing on a stop: the launching process says what happened, in one line
        if debug_enabled():
            raise
        return 130
    except Exception as exc:
        if debug_enabled():
            raise
        lost = _lost_connection(exc)
        message = lost or one_line(exc)
        if lost is None and (not isinstance(exc, UserError) or kept_run_can_go_on(exc)) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            message = f"process {os.environ.get('RANK', '0')} of the run: {message}"  # (a bug or out of memory: where)
        if lost is not None:
            _let_the_first_say_why()
        if spec.get("error_file"):
            # The launching process prints it, once, however many ranks failed (and torchrun's
            # traceback stays hidden). A UserError explains the failure best; otherwise the first
            # rank's error stands, not the broken connection the others then see.
            path = Path(spec["error_file"])
            if isinstance(exc, UserError) or not path.exists() or (lost is None and _only_lost(path)):
                tmp = path.with_name(f".{path.name}.{os.environ.get('RANK', '0')}")
                # (its exit status too: a usage error exits 2 from the launching process as from here)
                # (and whether the file system failed it, a full disk: the launcher says to --resume a kept run)
                # (and whether it only saw another process go: the launcher then looks for what stopped that one)
                tmp.write_text(json.dumps({"message": message, "exit_code": getattr(exc, "exit_code", 1),
                                           "keeps_work": kept_run_can_go_on(exc),
                                           "lost": lost is not None}) + "\n", encoding="utf-8")
                os.replace(tmp, path)
        else:
            from rich.markup import escape

            err.print(f"[bold red]error:[/] (rank {os.environ.get('RANK', '0')}) {escape(message)}", soft_wrap=True, markup=True)
        return 1
    return 0


# Options that may differ between nodes: where each node is, its own threads and logging
_NODE_OWN = ("node_rank", "threads", "log_every", "tensorboard", "join_timeout")


def _options_digest(arguments: dict, compared: dict[str, str] | None = None) -> str:
    """What every process of a run must be given alike: its options, --resume, and its inputs by content,
    so that a node may hold its own copy at another path, not other data: an artifact by fingerprint,
    and what the stage named in `compared` (an input role or an option holding a path: finetune's data,
    --val-data, template file), hashed once per node by its launcher (llmkit.train.launch)."""
    import hashlib

    compared = compared or {}
    options = {key: value for key, value in arguments.get("config", {}).items() if key not in _NODE_OWN and key not in compared}
    resumed = arguments.get("resume")
    inputs = {role: _fingerprint_or_path(value) for role, value in arguments.items()
              if role not in ("config", "out", "resume") and role not in compared}
    return hashlib.sha256(json.dumps([options, resumed, inputs, compared], sort_keys=True, default=str).encode()).hexdigest()


def _fingerprint_or_path(value) -> str:
    """An input artifact's recorded fingerprint (its manifest read, nothing hashed); else the value as
    given (a hub name; a missing path is the stage's own error to give)."""
    from pathlib import Path

    try:
        return json.loads((Path(str(value)) / "manifest.json").read_text(encoding="utf-8"))["fingerprint"]
    except (OSError, ValueError, TypeError, KeyError):
        return str(value)


LOST_GRACE_S = 1.0


def _let_the_first_say_why() -> None:
    """Another process went first: its error file comes after its shutdown, a few ms after this one saw
    the connection go (a second is far more; torchrun's SIGTERM may end this wait, which says nothing)."""
    time.sleep(LOST_GRACE_S)


def _only_lost(error_file: Path) -> bool:
    """Whether the error written so far is only another process's view of this one going away."""
    try:
        return bool(json.loads(error_file.read_text(encoding="utf-8")).get("lost"))
    except (OSError, ValueError):
        return False


def _lost_connection(exc: BaseException) -> str | None:
    """The error a process sees when another one of the run stops (a node killed, its machine gone):
    gloo's own words ("Connection reset by peer ... GLHF!") said nothing of what happened or what to do."""
    text = str(exc)
    if isinstance(exc, OSError):  # (this process's own pipe or file: a worker's stdout closed is no other process's end)
        return None
    if not any(words in text for words in ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
                                           "Connection refused")):
        return None
    return ("the connection to another process of the run was lost (a node or process stopped, or its machine went away); "
            "rerun the command on every node with --resume to continue from the last checkpoint")


def _end_with_the_agent() -> None:
    """A worker whose torchrun agent died (SIGKILL: no chance to stop its workers) would train on
    alone, unwatched, into a run its launcher has given up: it ends as soon as it is orphaned. So
    it does when the llmkit command that started torchrun is killed outright: the agent, orphaned
    itself, would otherwise keep its workers training into a run nobody holds the lock of."""
    import threading
    import time

    from llmkit.runtime import process_running

    agent = os.getppid()
    launcher = int(os.environ.get(LAUNCHER_PID, "0"))  # absent under a torchrun the user started

    def watch() -> None:
        # (every 50 ms: checked each second, a run whose command was killed at its end was finished by its workers,
        # its manifest written with no lock held, and a --resume at once found it done)
        while os.getppid() == agent and (not launcher or process_running(launcher)):
            time.sleep(0.05)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="llmkit-agent-watch").start()


LAUNCHER_PID = "LLMKIT_LAUNCHER_PID"  # set by llmkit.train.distributed.relaunch


if __name__ == "__main__":
    sys.exit(main())
