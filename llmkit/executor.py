"""Where the data stages' work runs: this machine's processes, or a Ray cluster (`--executor ray`).

Both executors run the same ordered map (llmkit.parallel.ordered_map): the stage's driver reads
the input in order, hands batches to workers, and takes the results back in input order, so
the artifact (and its fingerprint) is the same on either executor and for any number of
workers. Everything that needs the whole corpus at once (the de-duplication index, the shard
writer) stays in the driver; workers do the per-document work (normalising, filtering, MinHash
signatures, encoding), which is where the time goes.

On Ray, each worker is an actor that runs the stage's initializer once, then takes batches in
turn. A worker that dies (a node lost, a process killed) is restarted and its unfinished
batches are run again (`max_task_retries=RETRIES`, then one line: a batch that kills every
worker it meets is the input's fault; the actors restart at most RESTARTS times each, so one
that dies while it sets up, again and again, ends the stage instead of hanging it); results are
still taken in input order, so nothing is lost or written twice. A death ends the stage as a
`WorkerDied`: its partial output is kept, and a rerun continues it.
"""

from __future__ import annotations

import os
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from llmkit.errors import UsageError, UserError
from llmkit.options import Options, option

INSTALL = "pip install 'llmkit[ray]'"


@dataclass
class Execution(Options):
    """The executor of a data stage; never changes what it computes, so never hashed."""

    executor: str = option("local", "local (this machine's cores, as --workers says) or ray (a Ray cluster's workers; "
                           f"{INSTALL}).", choices=("local", "ray"), runtime=True)
    ray_address: str | None = option(None, "Ray cluster to join (e.g. auto, or ray://HEAD:10001); default: start a local "
                                     "Ray instance for this run (even where a cluster runs on this machine).", runtime=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ray_address is not None and self.executor != "ray":  # it would run here, and record a cluster it never used
            raise UserError(f"--ray-address {self.ray_address} is for --executor ray; add --executor ray, or leave the address out")
        if self.ray_address is not None and not _an_address(self.ray_address):  # (before any work: it was found after the lock)
            raise UsageError(f"--ray-address {self.ray_address} is not HOST:PORT, auto or ray://HOST:PORT; give the head "
                             "node's address")


def require_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray, which is not installed: {INSTALL} "
                        "(or leave --executor out to use this machine's processes)") from None
    return ray


@contextmanager
def connected(address: str | None) -> Iterator[Any]:
    """The ray module, connected: to `address`, to the instance this process already joined, or to
    a local instance started (and stopped) here."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    options = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    if address:
        _check_reachable(address)
    import signal
    import warnings

    from llmkit.parallel import _ctrl_c_deferred

    # ray.init takes SIGTERM over: in Python (sys.exit(15)) on the main thread, and in C (its core worker's
    # handler, then the default action after ray.shutdown) from any thread, as tokenizer train's reading
    # thread starts it. Both are put back, so that a kill stops the stage as Ctrl-C does; Ctrl-C and SIGTERM
    # during the start are held to its end (one landing in a fork hook of the start was lost: the run went on).
    sigterm_action = _c_signal_action(signal.SIGTERM)
    began = time.time()

    def stop() -> None:
        # Ray's C handler out of the way first, and a Ctrl-C or SIGTERM meanwhile held to the shutdown's end:
        # one landing in it took the default action (exit without a line, the lock and partial folder left) or
        # cut it short, which left its dashboard and runtime-env agents running (a review, 2026-12-06)
        _put_back(signal.SIGTERM, sigterm_action)
        with _ctrl_c_deferred():
            # (the instance started here; a start a signal cut short has not told Ray's module its folder yet)
            session = _session_folder(ray) or _started_session(began) if not address or address == "local" else None
            with _kept_in_place(signal.SIGTERM, sigterm_action):
                ray.shutdown()
            _put_back(signal.SIGTERM, sigterm_action)
            if session is not None:
                _kill_leftovers(session)

    stopped = False
    try:
        with _ctrl_c_deferred():
            try:
                with warnings.catch_warnings():  # (Ray's own warnings about the client would come before the one line)
                    warnings.simplefilter("ignore")
                    # "local": a new instance for this run, as the option says (with no address Ray joins any cluster
                    # already running on this machine, or RAY_ADDRESS's)
                    ray.init(address=address or "local", **options)
            except SystemExit as exc:  # Ray's own SIGTERM handler met one, late in the start
                if exc.code != signal.SIGTERM:
                    raise
                stopped = True
            finally:
                _put_back(signal.SIGTERM, sigterm_action)
    except ConnectionError as exc:
        reason = " ".join(str(exc).split()).split(". ")[0]  # its first sentence, whole
        # (a cluster started with token authentication turns away a client without it, as unreachable: a review)
        token = (Path.home() / ".ray" / "auth_token").is_file() and not os.environ.get("RAY_AUTH_MODE")
        fix = ("this machine has a Ray token (~/.ray/auth_token): if the cluster checks tokens, set RAY_AUTH_MODE=token; "
               "else start one" if token else "start one")
        raise UserError(f"cannot reach the Ray cluster at {address} ({reason}); {fix} with `ray start --head` there, or "
                        "check --ray-address") from None
    except BaseException:
        stop()  # (a Ctrl-C held to the end of the start)
        raise
    if stopped:
        stop()
        signal.raise_signal(signal.SIGTERM)  # to the handler put back: the stage's stop, on this line
    session = None if address not in (None, "", "local") else _session_folder(ray)
    finished = False
    try:
        yield ray
        finished = True
    except GeneratorExit as closed:  # the caller stopped reading: a full sample (its logs go too), or its own failure
        finished = closed.__context__ is None  # (closed while an error of the caller's unwinds: the logs stay)
        raise
    finally:
        stop()
        # the local instance's logs and sockets (/tmp/ray/session_*): one a run, never reused; a failed run's stay
        if session is not None and finished:
            import shutil

            shutil.rmtree(session, ignore_errors=True)
            latest = session.parent / "session_latest"
            if latest.is_symlink() and not latest.exists():
                latest.unlink(missing_ok=True)


def _c_signal_action(number: int):
    """A signal's action as the C library holds it (a `struct sigaction`, kept opaque), or None. Python's
    own `signal.signal` cannot put a handler back from a thread other than the main one."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        action = ctypes.create_string_buffer(512)  # (larger than any libc's struct sigaction)
        return (libc, action) if libc.sigaction(number, None, action) == 0 else None
    except (OSError, AttributeError):  # (no sigaction: not POSIX)
        return None


def _put_back(number: int, saved) -> None:
    if saved is not None:
        libc, action = saved
        libc.sigaction(number, action, None)


@contextmanager
def _kept_in_place(number: int, saved, every: float = 0.0005) -> Iterator[None]:
    """The signal's saved C action, put back whenever something changes it, until the block ends. Ray's
    shutdown sets SIGTERM's action to the default midway, and a SIGTERM then killed the process without a
    word, its lock and partial folder left (a review, 2026-12-07); masking the signal on this thread holds
    nothing off, as Ray's own threads (22 of 27 here) take a signal sent to the process. This narrows the
    window to the watcher's next look (it needs the GIL: up to the interpreter's switch interval, 5 ms),
    not to nothing; a kill every 0.05 to 1 s into the shutdown was stopped with its line in tests."""
    if saved is None:
        yield
        return
    import ctypes
    import threading

    libc, action = saved
    handler = action.raw[:ctypes.sizeof(ctypes.c_void_p)]  # (the struct's first field, in every libc: the handler)
    now = ctypes.create_string_buffer(len(action.raw))
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if libc.sigaction(number, None, now) == 0 and now.raw[:len(handler)] != handler:
                libc.sigaction(number, action, None)
            done.wait(every)

    watcher = threading.Thread(target=watch, name="llmkit-sigterm-keeper", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


_RAY_PROGRAMS = ("ray::", "raylet", "gcs_server")  # (how Ray's processes name themselves; its agents rename theirs "ray::...")


def _kill_leftovers(session: Path) -> None:
    """Ray's processes of the local instance this process started (its session folder) that outlived
    ray.shutdown: its dashboard and runtime-env agents stayed when a SIGTERM landed in the start (about
    180 MB, deaf to SIGTERM; a review, 2026-12-06). Known by the files of that very folder they keep
    open and by their names (a `tail -f` of its log, or a cluster of `ray start` whose folder was named
    after a process id since reused, is left alone). Linux's /proc only."""
    import glob
    import signal

    inside = f"{session.resolve()}/"
    for folder in glob.glob("/proc/[0-9]*/fd"):
        pid = int(folder.split("/")[2])
        try:
            program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            if pid == os.getpid() or not Path(program).name.startswith(_RAY_PROGRAMS):
                continue
            if any(os.readlink(f"{folder}/{fd}").startswith(inside) for fd in os.listdir(folder)):
                os.kill(pid, signal.SIGKILL)
        except OSError:  # (another user's process, or one that ended meanwhile)
            continue


def _started_session(began: float) -> Path | None:
    """The session folder of a local Ray instance this process started at or after `began` (named
    after its process id), where Ray's module no longer knows it."""
    import tempfile

    root = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    ours = [folder for folder in root.glob(f"session_*_{os.getpid()}") if folder.stat().st_mtime >= began - 1]
    return max(ours, key=lambda folder: folder.stat().st_mtime) if ours else None


def _session_folder(ray) -> Path | None:
    """The folder of the Ray instance this process started (Ray has no public call that names it)."""
    try:
        return Path(ray._private.worker._global_node.get_session_dir_path())
    except (AttributeError, TypeError):
        return None


def _an_address(address: str) -> bool:
    """auto, local, HOST:PORT or ray://HOST:PORT, the port a number a socket takes (ASCII digits: `isdigit`
    took 99999, and `٣` for 3)."""
    if address in ("auto", "local"):
        return True
    scheme, _, rest = address.rpartition("://")
    host, colon, port = rest.rpartition(":")
    return scheme in ("", "ray") and bool(colon and host) and port.isascii() and port.isdigit() and 0 < int(port) < 65536


def _check_reachable(address: str, seconds: float = 5.0) -> None:
    """A HOST:PORT (or ray://HOST:PORT) address answers a TCP connect, or the user hears so at once:
    ray.init keeps retrying an address with no cluster behind it for many minutes, and a ray://
    client for half a minute ("auto" fails fast on its own)."""
    import socket

    if address in ("auto", "local"):
        return
    if not _an_address(address):
        raise UsageError(f"--ray-address {address} is not HOST:PORT, auto or ray://HOST:PORT; give the head node's address")
    host, _, port = address.rpartition("://")[2].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=seconds) as probe:
            answer = _first_answer(probe, seconds)
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start one with `ray start --head` "
                        "there, or check --ray-address") from None
    # Ray's ports speak gRPC (HTTP/2): its SETTINGS frame, or a TLS record where TLS is on, or silence (not known: Ray
    # tries). Anything else (a web server, an SSH banner: a wrong port) ray.init would wait minutes on.
    if answer and not (len(answer) >= 4 and answer[3] == 4) and answer[0] not in (0x15, 0x16):
        said = " ".join(answer.decode("ascii", "replace").split())[:40]
        raise UserError(f"{address} answers, but not as a Ray cluster does (it said {said!r}); give the head node's Ray "
                        "port (6379 unless `ray start --port` chose another)")


def _first_answer(connection, seconds: float) -> bytes:
    """What a server sends back to an HTTP/2 connection preface (gRPC's, which Ray's ports speak):
    a gRPC server its SETTINGS frame, an HTTP/1 server "HTTP/1.1 400 ...", a silent one nothing."""
    import socket

    connection.settimeout(min(seconds, 2.0))
    answer = b""
    try:
        connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
        while len(answer) < 9:  # a frame's header (TCP may split it)
            more = connection.recv(64)
            if not more:
                break
            answer += more
    except (socket.timeout, OSError):
        pass
    return answer


class _Worker:
    """One Ray actor: the stage's initializer once, then batches in turn."""

    def __init__(self, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]):
        # A failed set-up is kept and told with the first batch: raised here, it would kill the
        # actor, which Ray restarts and finally reports as a death (out of memory, it would say).
        self.setup_error = None
        self.setup_status = "error"
        if initializer is not None:
            try:
                initializer(*initargs)
            except Exception as exc:
                reason = " ".join((str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}").split())[:300]
                self.setup_error = f"a Ray worker could not set up: {reason}{_path_hint(exc, reason)}"
                if isinstance(exc, OSError) or getattr(exc, "keeps_work", False) or _path_hint(exc, reason):
                    self.setup_status = "node error"  # (its node does not see a file, or another one: the work done is kept)

    def ready(self) -> bool:
        return True

    def run(self, function: Callable[[Any], Any], item: Any) -> tuple[str, Any]:
        if self.setup_error is not None:
            return self.setup_status, self.setup_error
        try:
            return "ok", function(item)
        except UserError as exc:  # the stage's own one-line error: passed back as is, not retried
            return ("node error" if getattr(exc, "keeps_work", False) else "error"), str(exc)
        except OSError as exc:  # an input the driver read, not found (or another file) on this worker's node
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            return "node error", f"a Ray worker failed: {reason}{_path_hint(exc, reason)}"


def _path_hint(exc: BaseException, reason: str) -> str:
    """Where a worker missed a file: the driver had checked it, so the node does not see that path."""
    missing = isinstance(exc, OSError) or any(word in reason.lower() for word in ("no such", "not found", "missing"))
    return ("; every node needs the stage's inputs at the same path, with the same contents (shared storage), "
            "as the driver sees them") if missing else ""


def ray_ordered_map(function: Callable[[Any], Any], items: Iterable[Any], *, workers: int, address: str | None,
                    initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = (),
                    on_start: Callable[[int], None] | None = None) -> Iterator[Any]:
    """llmkit.parallel.ordered_map on Ray actors (`workers` of them; 0 = one per CPU of the cluster).

    A caller closes the results when it stops reading (`contextlib.closing`): closed while its own error
    unwinds, the run's Ray logs are kept; a generator left to the garbage collector is closed after the
    error was handled, and its logs went as a finished run's do."""
    with connected(address) as ray:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        count = workers if workers > 0 else cpus
        if count > cpus:  # an actor takes a CPU: the ones past the cluster's would never start, and their batches wait forever
            from llmkit.console import note

            note(f"--workers {workers} is more than the Ray cluster's {cpus} CPUs; using {cpus}")
            count = cpus
        # A dead actor restarts and its batch is tried again, but not forever: a batch that kills
        # its worker each time (out of memory) ends the stage.
        _check_nodes_run_this_llmkit(ray)
        actor_class = ray.remote(num_cpus=1, max_restarts=RESTARTS, max_task_retries=RETRIES)(_Worker)
        actors = _started(ray, [actor_class.remote(initializer, initargs) for _ in range(count)])
        count = len(actors)
        if on_start is not None:
            on_start(count)
        pending: deque = deque()
        try:
            for index, item in enumerate(items):
                # Round robin keeps every actor busy; at most 2 batches per actor are in flight (bounded memory).
                pending.append(actors[index % count].run.remote(function, item))
                if len(pending) >= 2 * count:
                    yield _unwrap(_get(ray, pending.popleft()))
            while pending:
                yield _unwrap(_get(ray, pending.popleft()))
        finally:
            for ref in pending:  # (killed with batches in flight, the actors' retries were announced on stdout)
                ray.cancel(ref)
            if pending:  # a batch already running is not cancelled: killed under it, Ray announced its retry too
                ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_WAIT)
            for actor in actors:
                ray.kill(actor)


def _llmkit_here(packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Which llmkit this process's Python imports, and a SHA-256 of its source (every .py file under
    the package, by relative path), and the versions of Python and of `packages` (those the work
    computes with). Sent to every node by value (_check_nodes_run_this_llmkit), so it imports only
    inside and computes the digest itself: it runs where llmkit is missing, and tells any other
    llmkit as other code (one from before the probe lacked the function it called: "cannot
    import", a review)."""
    import hashlib
    import os
    import sys
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "none"

    try:
        import llmkit

        package = os.path.dirname(os.path.abspath(llmkit.__file__))
        sources = sorted(os.path.relpath(os.path.join(folder, name), package).replace(os.sep, "/")
                         for folder, _, names in os.walk(package) for name in names if name.endswith(".py"))
        digest = hashlib.sha256()
        for source in sources:
            with open(os.path.join(package, source), "rb") as handle:
                digest.update(source.encode() + b"\0" + handle.read() + b"\0")
        return {"digest": digest.hexdigest(), "version": getattr(llmkit, "__version__", "?"), "where": package,
                "python": sys.executable, "versions": versions}
    except Exception as exc:  # (not only ImportError: an llmkit that fails as it imports is as unusable)
        return {"digest": None, "error": " ".join(f"{type(exc).__name__}: {exc}".split())[:200], "python": sys.executable}


def _by_value(function: Callable) -> Callable:
    """`function` with no module behind it (only the builtins as globals), which Ray's cloudpickle
    then sends as code instead of as a reference to import on the node."""
    import builtins
    import types

    return types.FunctionType(function.__code__, {"__builtins__": builtins, "__name__": "llmkit_probe"}, function.__name__)


def _check_nodes_run_this_llmkit(ray) -> None:
    """Every node that can take a worker imports llmkit, and the same code as this driver's.

    Ray sends a worker only references to llmkit's code (the module and name of _Worker and of the
    stage's functions), which each node imports from its own Python: where llmkit was missing,
    every worker failed as it started (Ray printed about 100 lines of tracebacks, then the stage
    blamed memory: a review, 2026-12-06); where another llmkit was installed, the work would be done
    by other code under this run's fingerprint. A node that does not answer within PROBE_WAIT
    (coming up, busy) is not waited for: its workers are the ones that tell."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_by_value(_llmkit_here))
    nodes = [node for node in ray.nodes() if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0]
    asked = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(WORKER_PACKAGES):
             node.get("NodeManagerAddress", node["NodeID"]) for node in nodes}
    answered, late = ray.wait(list(asked), num_returns=len(asked), timeout=PROBE_WAIT)
    for ref in late:
        ray.cancel(ref, force=True)
    mine = _llmkit_here(WORKER_PACKAGES)
    for ref in answered:
        try:
            theirs = ray.get(ref)
        except ray.exceptions.RayError:  # (a node lost meanwhile: its workers tell)
            continue
        node = asked[ref]
        if theirs["digest"] is None:
            raise UserError(f"the Ray node at {node} cannot import llmkit ({theirs['error']}; its Python: {theirs['python']}); "
                            f"install this llmkit ({mine['version']}, from {mine['where']}) on every node of the cluster")
        if theirs["digest"] != mine["digest"]:
            raise UserError(f"the Ray node at {node} runs other llmkit code ({theirs['version']}, in {theirs['where']}) than "
                            f"this driver ({mine['version']}, in {mine['where']}): its workers would compute with it under this "
                            "run's fingerprint; install the same llmkit on every node of the cluster")
        other = [(name, version, mine["versions"].get(name)) for name, version in theirs["versions"].items()
                 if _release(name, version) != _release(name, mine["versions"].get(name))]
        if other:  # (the manifest records the driver's versions: the work would be another's under them)
            said = ", ".join(f"{name} {version} (this driver: {ours})" for name, version, ours in other[:3])
            raise UserError(f"the Ray node at {node} computes with other versions than this driver: {said}; its workers "
                            "would give other results under this run's fingerprint; install this driver's versions on every "
                            "node")


# What the data stages' workers compute with (clean's repairs, languages, words and shingles; the tokenizers; the
# arrays and Parquet they read), compared node by node; torch or matplotlib, which no worker uses, may differ.
WORKER_PACKAGES = ("ftfy", "py3langid", "regex", "xxhash", "tokenizers", "tiktoken", "numpy", "pyarrow")


def _release(name: str, version: str | None) -> str | None:
    """A version as compared across nodes: Python's major.minor (a patch release computes alike), a package's
    release without a local build label (+cpu, +cu128)."""
    if version is None:
        return None
    version = version.split("+")[0]
    return ".".join(version.split(".")[:2]) if name == "python" else version


RETRIES = 3
PROBE_WAIT = 30.0  # seconds for every node to say which llmkit it imports
CANCEL_WAIT = 2.0  # seconds for the batches running at a stop to end before their workers are killed
RESTARTS = 8  # per actor: a batch's retries, and deaths while it sets up or between batches
START_WAIT = 10.0  # seconds for every actor to start (again after the first, if none had) before going on with those that did


def _started(ray, actors: list) -> list:
    """The actors that start: on a cluster other jobs share, CPUs it has may not be free, and an
    actor waiting for one would hold its batches (and, taken in order, every later result)
    forever. Those that have not started within START_WAIT are left out, with a note; with none
    started by then (a slow set-up everywhere, an autoscaling cluster bringing a node up), the first
    to start is waited for, and the others get START_WAIT more (they start about together)."""
    pings = [actor.ready.remote() for actor in actors]
    ready, _ = ray.wait(pings, num_returns=len(pings), timeout=START_WAIT)
    if not ready:
        ray.wait(pings, num_returns=1)
        ready, _ = ray.wait(pings, num_returns=len(pings), timeout=START_WAIT)
    if len(ready) == len(actors):
        return actors
    from llmkit.console import note

    note(f"{len(ready)} of {len(actors)} Ray workers started in time (the cluster's other CPUs are busy, or "
         f"they set up slowly); going on with {len(ready)}")
    started = {pings.index(ref) for ref in ready}
    for index, actor in enumerate(actors):
        if index not in started:
            ray.kill(actor)
    return [actor for index, actor in enumerate(actors) if index in started]


def _get(ray, ref) -> tuple[str, Any]:
    """A batch's outcome; a worker's crash as one line (Ray's own errors carry a whole traceback
    with terminal colours)."""
    import re

    try:
        return ray.get(ref)
    except ray.exceptions.RayActorError:
        from llmkit.errors import WorkerDied

        raise WorkerDied(f"a Ray worker died {RETRIES + 1} times on the same batch, or too often to go on (out of memory, or "
                         "killed); give the workers more memory (fewer of them a node: --workers), then rerun the command to "
                         "continue where it stopped") from None
    except ray.exceptions.RayTaskError as exc:
        # A bug or out of memory in a worker, told and kept as the same in a local worker would be (the
        # partial output kept, "unexpected", --debug's traceback: Ray's, of the worker, chained)
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception):
            raise cause from exc
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        raise RuntimeError(f"a Ray worker failed: {' '.join(text.split())[:300]}") from exc


class NodeFailed(UserError):
    """A worker's node could not read or write a file: not the input's fault (the driver read it), so
    the work done is kept for a rerun once the node sees it."""

    keeps_work = True


def _unwrap(outcome: tuple[str, Any]) -> Any:
    status, value = outcome
    if status == "error":
        raise UserError(value)
    if status == "node error":
        raise NodeFailed(value)
    return value
