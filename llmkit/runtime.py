"""Process-wide helpers shared by every stage: seeding, cache folders, threads, devices."""

from __future__ import annotations

import contextlib
import os
import random
import sys
from pathlib import Path
from typing import Any, Iterator


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (if imported) torch, so a stage's randomness follows --seed."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover
        pass
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


def is_dtensor(tensor: Any) -> bool:
    """Whether a tensor is a torch DTensor (a shard under FSDP2 or tensor parallelism), without loading
    torch.distributed.tensor, which costs a one-process run 0.6 s: no tensor is one before it is loaded."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    return dtensor is not None and isinstance(tensor, dtensor.DTensor)


def cache_root() -> Path | None:
    """llmkit's cache folder (LLMKIT_CACHE, default ~/.cache/llmkit; an empty LLMKIT_CACHE is unset),
    not made; None without a home folder to put it in."""
    try:
        return Path(os.environ.get("LLMKIT_CACHE") or Path.home() / ".cache" / "llmkit")
    except (RuntimeError, KeyError):
        return None


def cache_dir() -> Path:
    """llmkit's cache folder, made (and writable) or a one-line error."""
    path = cache_root()
    if path is None:
        from llmkit.errors import UserError

        raise UserError("llmkit's cache folder has no home folder to go in; point LLMKIT_CACHE at a writable folder")
    _writable_folder(path)
    return path


def datasets_cache_dir() -> Path:
    """The pinned `datasets` cache, so recipes read the same prepared data every time."""
    path = cache_dir() / "datasets"
    _writable_folder(path)
    return path


def _writable_folder(path: Path) -> None:
    """A cache folder made where missing; one that cannot be made or written is the cache's
    problem, said as such (not the data being read's)."""
    from llmkit.errors import UserError

    try:
        path.mkdir(parents=True, exist_ok=True)
        problem = None if os.access(path, os.W_OK) else "not writable"
    except OSError as exc:
        problem = exc.strerror or str(exc)
    if problem:
        setting = (f"LLMKIT_CACHE={os.environ['LLMKIT_CACHE']}" if "LLMKIT_CACHE" in os.environ
                   else "llmkit's cache folder (LLMKIT_CACHE, default ~/.cache/llmkit)")
        raise UserError(f"{path} cannot be used as a cache folder ({problem}); {setting}: point LLMKIT_CACHE at a "
                        "writable folder") from None


@contextlib.contextmanager
def local_files_cache() -> Iterator[Path]:
    """A `datasets` cache for local files, used once and removed: `datasets` keys a local file by its
    path and modification time, so an edited file that kept its time (cp -p, rsync -a, an archive
    unpacked) would be read as its cached old content."""
    import shutil

    folder = own_folder(cache_dir(), "datasets-local")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def own_folder(parent: Path, prefix: str) -> Path:
    """A new folder `PREFIX-HERE-PID-*` in `parent`, for this process to remove when it is done;
    those of processes no longer running (killed outright: nothing removed them) go first. HERE
    names this machine and process namespace: a folder shared with other machines or containers (a
    temporary folder, a home on NFS) holds live folders of processes this one cannot see, never swept."""
    import shutil
    import tempfile

    here = process_namespace()
    for stale in Path(parent).glob(f"{prefix}-{here}-*-*"):
        pid = stale.name[len(prefix) + len(here) + 2 :].split("-")[0]
        if pid.isdigit() and not process_running(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-{here}-{os.getpid()}-", dir=parent))


def process_namespace() -> str:
    """8 hex digits for this machine and PID namespace (where a PID names one process)."""
    import hashlib
    import socket

    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return hashlib.sha256(f"{socket.gethostname()}/{namespace}".encode()).hexdigest()[:8]


@contextlib.contextmanager
def local_dataset(builder: str, data_files: Any, split: str) -> Iterator[Any]:
    """Local files read by `datasets` (`builder`: csv, json, parquet, text) into a fresh cache
    (`local_files_cache`), which lasts while the block reads the data set."""
    import glob

    import datasets

    # `datasets` reads each data file as a glob pattern: a path holding [ or * must be escaped
    def escaped(files: Any) -> Any:
        return glob.escape(str(files)) if isinstance(files, (str, Path)) else [glob.escape(str(file)) for file in files]

    settings = {}
    if builder == "csv":
        # Only the split asked for is read (each split its own columns: a test.csv without labels), its
        # cells as written, text: pandas' defaults made `NA`, `None`, `null`, `nan` and empty cells
        # missing values (a document lost, or its row refused) and a column of numbers numbers per
        # 10,000-row chunk (`007` read as 7; a later chunk's empty cell then failed the whole file).
        files = data_files.get(split, []) if isinstance(data_files, dict) else data_files
        files = [files] if isinstance(files, (str, Path)) else list(files)
        data_files = {split: files}
        settings = {"keep_default_na": False, **_csv_columns_as_text(files)}
    patterns = {name: escaped(files) for name, files in data_files.items()} if isinstance(data_files, dict) else escaped(data_files)
    with local_files_cache() as cache:
        with datasets_quiet():
            data = datasets.load_dataset(builder, data_files=patterns, split=split, cache_dir=str(cache), **settings)
        yield data


def _csv_columns_as_text(files: list) -> dict[str, Any]:
    """`features` reading every column of a CSV as text, its columns named as pandas names them
    (the reader `datasets` uses: an unnamed index column is `Unnamed: 0`, a repeated name `text.1`),
    from the first file's header (compressed or not); nothing for no file."""
    if not files:
        return {}
    import datasets
    import pandas

    columns = pandas.read_csv(files[0], nrows=0, compression="infer").columns
    return {"features": datasets.Features({str(name): datasets.Value("string") for name in columns})}


@contextlib.contextmanager
def datasets_quiet() -> Iterator[None]:
    """`datasets`' own progress bars ("Generating train split") and its log lines off for the block:
    the bars would fight with a stage's, and a file it fails to read is logged (as an error) before the
    exception that a stage turns into its one-line error."""
    import datasets

    shown, verbosity = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bar()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if shown:
            datasets.enable_progress_bar()


def process_running(pid: int) -> bool:
    """Whether process `pid` is alive: a killed one whose parent has not reaped it yet is a zombie, not alive."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): whether a signal could reach it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def omp_thread_limit() -> int | None:
    """OMP_THREAD_LIMIT, where set: OpenMP cuts a team larger than it short, and oneDNN, which plans a
    product's work for the threads PyTorch asks for, then leaves parts of it uncomputed: wrong numbers,
    not slow ones (perplexity NaN, an infinite gradient norm at the first step)."""
    value = os.environ.get("OMP_THREAD_LIMIT", "").strip()
    value = value[1:] if value.startswith("+") else value  # (as libgomp reads it: "+1" is a limit of 1)
    return int(value) if value.isascii() and value.isdigit() and int(value) > 0 else None


_SET_FOR_THE_LIMIT = "LLMKIT_OMP_NUM_THREADS_FOR_THE_LIMIT"  # (OMP_NUM_THREADS is then llmkit's, not the user's)


def users_omp_num_threads() -> str | None:
    """OMP_NUM_THREADS as the user set it; None where unset or set here for OMP_THREAD_LIMIT (torchrun's
    workers then take their own default of one thread each, not the limit each)."""
    return None if os.environ.get(_SET_FOR_THE_LIMIT) else os.environ.get("OMP_NUM_THREADS")


def respect_omp_thread_limit() -> None:
    """PyTorch's threads held to OMP_THREAD_LIMIT (its default is one a core, whatever the limit):
    through OMP_NUM_THREADS, which PyTorch reads as it starts (and this process's children, a sweep's
    runs, inherit), or at once where PyTorch is loaded already. Nothing is imported: a command
    imports only the stage it names."""
    limit = omp_thread_limit()
    if limit is None:
        return
    asked = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not (asked.isascii() and asked.isdigit() and 0 < int(asked) <= limit):
        os.environ["OMP_NUM_THREADS"] = str(limit)
        os.environ[_SET_FOR_THE_LIMIT] = "1"
    if "torch" in sys.modules:
        import torch

        if torch.get_num_threads() > limit:
            torch.set_num_threads(limit)


def worker_count(requested: int | None) -> int:
    """0 or None means one worker per available core."""
    if requested and requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


class CoreMeter:
    """How busy this process's cores are with other programs, measured from /proc/stat between
    construction and `busy()`: a window that can overlap this process's own work, whose CPU time
    is subtracted. The load average would lag by a minute, too slow for a job that starts and ends
    in seconds; where there is no /proc/stat it is the fallback, less one unit for this process."""

    def __init__(self) -> None:
        import time

        try:
            self.cores = {f"cpu{n}" for n in os.sched_getaffinity(0)}
            self.before = self._sample()
        except (AttributeError, OSError, ValueError, IndexError):
            self.cores, self.before = None, None
        self.started, self.own = time.monotonic(), time.process_time()

    def _sample(self) -> tuple[int, int]:
        idle = total = 0
        with open("/proc/stat") as stat:
            for line in stat:
                fields = line.split()
                if fields and fields[0] in self.cores:
                    values = [int(v) for v in fields[1:9]]  # user .. steal; guest time is inside user
                    idle += values[3] + values[4]  # idle and iowait
                    total += sum(values)
        return idle, total

    def busy(self, window: float = 0.25) -> float:
        """Cores other programs kept busy since construction, waiting until `window` seconds have passed."""
        import time

        time.sleep(max(0.0, window - (time.monotonic() - self.started)))
        try:
            if self.before is None:
                raise OSError("no /proc/stat")
            idle, total = self._sample()
        except (OSError, ValueError, IndexError):
            try:
                return max(0.0, os.getloadavg()[0] - 1)
            except (AttributeError, OSError):
                return 0.0
        elapsed_jiffies = total - self.before[1]
        if elapsed_jiffies <= 0:
            return 0.0
        in_use = len(self.cores) * (1 - (idle - self.before[0]) / elapsed_jiffies)
        own = (time.process_time() - self.own) / max(time.monotonic() - self.started, 1e-9)
        return max(0.0, in_use - own)

    def idle_cores(self, window: float = 0.25) -> int:
        """This process's cores less those other programs keep busy (at least one)."""
        cores = worker_count(0)
        return cores if cores == 1 else max(1, cores - int(self.busy(window) + 0.5))


def busy_cores(window: float = 0.25) -> float:
    """How many of this process's cores other programs keep busy right now (this process sleeps
    `window` seconds meanwhile)."""
    return CoreMeter().busy(window)


def idle_cores() -> int:
    """This process's cores less those other programs keep busy now (at least one)."""
    return CoreMeter().idle_cores()


# Set by a command that starts llmkit commands and waits for them (a sweep's runs) to its own pid.
END_WITH_PARENT = "LLMKIT_END_WITH_PARENT"


def end_with_parent() -> None:
    """In a child started with END_WITH_PARENT: when that parent dies, even by SIGKILL, this process
    gets SIGTERM (Linux's PR_SET_PDEATHSIG) and stops as after Ctrl-C, keeping its checkpoints,
    instead of training on with nobody waiting for it (and racing the parent's rerun)."""
    parent = os.environ.pop(END_WITH_PARENT, None)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0) != 0:  # 1: PR_SET_PDEATHSIG
            return  # refused (a sandbox): the child outlives a killed parent, as before
    except (OSError, AttributeError):  # no prctl to call: likewise
        return
    # the parent died before the signal was asked for (its pid is gone: a launcher between the two,
    # which is this process's parent instead, is no such case)
    if not process_running(int(parent)):
        os.kill(os.getpid(), signal.SIGTERM)


def let_idle_threads_sleep() -> None:
    """Make idle OpenMP threads sleep instead of spin; must run before torch is imported.

    Spinning threads made a CPU training run 25x slower on a 2-core machine shared with other
    jobs (1.4k vs 57k tokens/s, same weights). OMP_WAIT_POLICY in the environment still wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def resolve_device(name: str) -> str:
    """`auto` means CUDA when there is a GPU, else the CPU; cuda (or cuda:N) and mps only where
    this machine has them."""
    import torch

    from llmkit.errors import UsageError, UserError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = name.partition(":")
    if kind == "cpu" and not index:
        return name
    if kind == "cuda" and (not index or index.isdigit()):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {name}: this machine has no CUDA GPU (or torch was built without CUDA); use --device cpu or auto")
        if index and int(index) >= count:
            raise UserError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
        return name
    if kind == "mps" and not index:
        if not torch.backends.mps.is_available():
            raise UserError("--device mps: this machine has no Apple GPU; use --device cpu or auto")
        return name
    raise UsageError(f"--device {name}: unknown device; use cpu, cuda, cuda:N, mps or auto")


class _Offline:
    def __init__(self) -> None:
        self.value = False

    def __bool__(self) -> bool:
        return self.value


@contextlib.contextmanager
def offline_when_unreachable():
    """Switch `datasets` to offline mode when the Hub does not answer within a few seconds, so
    that a missing network costs one quick check instead of half a minute of retries (the
    cache still answers). Yields whether it is offline (clean's and eval's data set names)."""
    import socket
    from urllib.parse import urlparse

    import datasets.config
    import huggingface_hub.constants as hub

    state = _Offline()
    if hub.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE:
        state.value = True
        yield state
        return
    endpoint = urlparse(hub.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=3).close()
        yield state
        return
    except OSError:
        state.value = True
    saved = hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield state
    finally:
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def under_torchrun() -> bool:
    """Whether this process is a worker of a torchrun (llmkit's own, or one a scheduler started)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ)
