"""Writing outputs safely, for every stage (artifacts or not): never over, inside or around an
input, even with --force; parent folders created; one writer per output at a time (a lock);
written in a temporary sibling and renamed into place, so a failed stage leaves nothing at its
output path; an interrupted data stage's partial output kept for a rerun to continue
(llmkit/resume.py). The artifact format itself is llmkit/artifacts.py."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

from llmkit.errors import UserError, add_advice


# The longest name an output may have: its lock and temporaries beside it add to it, at most
# 26 characters (`.NAME.partial-` and a 16-digit key), and a file system takes 255 bytes a name.
MAX_NAME_BYTES = 255 - len("..partial-") - 16
NAME_BYTES = 255  # a folder's or file's name, on the usual file systems
# The longest whole path an output may have: a path takes 4,096 bytes (Linux's PATH_MAX), and the
# files inside an output add to it (`checkpoints/step_00001000/training_state.safetensors` is 54).
MAX_PATH_BYTES = 4096 - 1 - 200


def _refuse_a_long_name(out: Path, *, inside_a_checked_output: bool = False) -> None:
    # (such a name failed after the checks, as an "unexpected" error naming a temporary's name; a path past
    # the limit did too, and left its temporary and the parent folders it had made behind, blocking reruns)
    # `inside_a_checked_output`: a run's own place (checkpoints/step_N), which the room kept for its run's
    # files holds; held to the run's limit, an -o a few bytes under it failed at the first checkpoint, after
    # the training it had paid for
    length = len(os.fsencode(out.name))
    if length > MAX_NAME_BYTES:
        raise UserError(f"-o {out}: its name is {length} bytes long, and llmkit takes names of up to {MAX_NAME_BYTES} "
                        "(the lock and temporary folders it keeps beside the output add to the name); give a shorter name")
    whole = os.fsencode(os.path.abspath(out))
    long = next((part for part in whole.split(b"/") if len(part) > NAME_BYTES), None)
    if long is not None:
        raise UserError(f"-o {out}: a folder in it has a name of {len(long)} bytes ({os.fsdecode(long[:24])}...), longer than "
                        f"a file system takes ({NAME_BYTES}); give a shorter path")
    if len(whole) > MAX_PATH_BYTES and not inside_a_checked_output:
        raise UserError(f"-o {out}: the path is {len(whole):,} bytes long, and llmkit takes paths of up to {MAX_PATH_BYTES:,} "
                        "(a path holds 4,096 bytes, and the files inside the output add to it); give a shorter path")


def check_output(out: Path | str, force: bool, *, inputs: Iterable[Path | str | None] = (), resume: bool = False,
                 a_runs_own: bool = False, inside_a_checked_output: bool = False, replacing: bool | None = None,
                 writes: str | None = None) -> Path:
    """Refuse an output that would replace, lie inside or contain one of the stage's inputs (even
    with --force), that lies where a training run keeps its own checkpoints (unless `a_runs_own`:
    the run writing them), that holds another kind of output than the command `writes` (an artifact
    kind, or "export"), even with --force, that exists without --force, or that cannot be written;
    create its parent folders. Called before any work, so a bad -o costs nothing."""
    out = Path(out)
    from llmkit.artifacts import storable_name

    where = os.path.abspath(out)
    if storable_name(where) != where:  # manifests, shards and later stages' records hold this path, in UTF-8
        raise UserError(f"-o {storable_name(str(out))}: the path is not UTF-8 ({storable_name(where)}); give the output a "
                        "path in UTF-8")
    # (first: the questions below fail on a name the file system refuses)
    _refuse_a_long_name(out, inside_a_checked_output=inside_a_checked_output)
    if out.is_symlink():  # --force would replace the link, not what it names, and record inputs from the target's folder
        fix = "give the folder it names, or another path" if out.is_dir() else "give another path"
        raise UserError(f"-o {out} is a symbolic link (to {os.readlink(out)}); {fix}")
    if out.name == "..":  # the output's name names its lock and temporaries: `-o q/shards/..` failed after the work
        raise UserError(f"-o {out} ends in '..'; give the output a name of its own (such as {out / 'NAME'})")
    if not a_runs_own:
        refuse_a_place_of_a_run(out)
    target = out.resolve()
    here = Path.cwd().resolve()
    if target == here or target in here.parents:
        raise UserError(f"-o {out} is the folder you are in or one above it; give the output a new folder name")
    _refuse_over_an_input(out, target, inputs, a_file=False)
    if not a_runs_own:
        refuse_a_part_of_a_finished_artifact(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is a file; choose a directory path for -o")
    # (whether it is llmkit's first: --force was advised for a folder it then refused)
    foreign = _not_of_the_export(out) if out.is_dir() else []
    if foreign:  # (a transformers fine-tune saved into it, its trainer's checkpoints, a model card: --force deleted them)
        raise UserError(f"output {out} is an llmkit export that now holds files llmkit did not write or has changed since "
                        f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); llmkit replaces only its own "
                        "outputs: move it away, or choose another -o path")
    if out.exists() and not _made_by_llmkit(out):
        what = "llmkit continues only its own runs" if resume else "llmkit replaces only its own outputs"
        raise UserError(f"output {out} exists and holds files llmkit did not write (no llmkit manifest); {what}: move it "
                        "away, or choose another -o path")
    if writes is not None and out.exists():
        _refuse_another_kind(out, writes, resume)
    _refuse_existing(out, force)
    # (moving it aside failed after the work; `replacing`: whether this run would replace or continue it, where
    # `force` says less: a training run's directory is checked with force=True and asks --resume/--force itself)
    if out.exists() and replacing is not False and not os.access(out, os.W_OK | os.X_OK):
        _refuse_a_read_only_output(out, resume)
    make_parent(out)
    return out


def _refuse_over_an_input(out: Path, target: Path, inputs: Iterable[Path | str | None], *, a_file: bool) -> None:
    """-o (`target`, resolved) that is, lies inside or (a folder) contains an input or a base it is read from."""
    for item, named in _inputs_and_the_bases_they_read(inputs):
        source = Path(item).resolve()
        if _same(source, target):
            raise UserError(f"-o {out} would overwrite {named}; write the output to another file" if a_file
                            else f"-o {out} is {named}; write the output to another path")
        if any(_same(source, parent) for parent in target.parents):
            raise UserError(f"-o {out} lies inside {named}; write the output outside it")
        if not a_file and any(_same(target, parent) for parent in source.parents):
            raise UserError(f"-o {out} contains {named}; write the output to another path")


def _inputs_and_the_bases_they_read(inputs: Iterable[Path | str | None]) -> list[tuple[Path | str, str]]:
    """Each input there (a hub name or a missing path is the stage's to report), with its words for a
    refusal, and the folders a LoRA step checkpoint among them is read from: its base (and that base's,
    a step too), whose weights the step's model is made of. Every stage that reads a step reads them
    after its output is moved aside, so -o naming one with --force took the model away mid-read."""
    named = []
    for item in inputs:
        if item is None or not Path(item).exists():
            continue
        named.append((item, f"the stage's input {item}"))
        named.extend((base, f"the base {base} that the input {item} is read from") for base in _step_bases(Path(item)))
    return named


def _step_bases(path: Path) -> list[Path]:
    if not (path / "manifest.json").is_file():
        return []
    from llmkit import artifacts

    try:
        art = artifacts.load(path)
        if art.kind != "checkpoint":  # (read without importing torch: clean and tokenize start fast)
            return []
        from llmkit.model.adapters import step_bases

        return step_bases(art)
    except UserError:  # (not an artifact after all, or damaged: the stage says so as it reads it)
        return []


def kind_made_at(folder: Path) -> str | None:
    """What llmkit made at `folder`: an artifact's kind (a damaged manifest's too), "checkpoint" for
    a training run before its manifest, "sweep" for a sweep before its own, "export" for an llmkit
    export; None for an empty folder or one llmkit did not make."""
    from llmkit.artifacts import manifest_kind

    made = manifest_kind(folder, loosely=True)
    if made is not None:
        return made
    if (folder / EXPORT_RECORD).is_file():
        return "export"
    if not _visible(folder):  # (its mark alone: a run or a sweep killed as it began; either may take the folder)
        return None
    if not (folder / RUN_MARK).is_file() and not _unmarked_run(folder):
        return None
    return "sweep" if (folder / "runs").is_dir() else "checkpoint"  # (a training run has no runs/; a sweep, even killed early)


_A_KIND = {"checkpoint": "a checkpoint", "tokens": "a tokens artifact", "tokenizer": "a tokenizer artifact",
           "corpus": "a corpus artifact", "eval": "an eval artifact", "sweep": "a sweep", "scaling": "a scaling fit",
           "export": "an llmkit export"}


def _refuse_another_kind(out: Path, writes: str, resume: bool = False) -> None:
    """An output is replaced (--force) or continued in (--resume, a sweep's rerun) only by a command
    that writes its kind: `tokenize -o CKPT --force` replaced a checkpoint (a training run's weeks)
    with tokens, a slip of one path, and `pretrain -o EXPORT --resume` trained into an export."""
    made = kind_made_at(out)
    if made is None or made == writes:
        return
    if resume:
        run = "a training run" if writes == "checkpoint" else _A_KIND.get(writes, writes)
        raise UserError(f"{out} is {_A_KIND.get(made, made)}, not {run}: there is nothing in it to continue; give the "
                        f"{'run' if writes == 'checkpoint' else writes}'s own folder as -o, or another path")
    raise UserError(f"output {out} is {_A_KIND.get(made, made)}, and this command writes {_A_KIND.get(writes, writes)}; llmkit "
                    "replaces an output only with another of its kind, --force or not: move it away, or choose another -o path")


def _refuse_a_read_only_output(out: Path, resume: bool) -> None:
    what = "continue in it" if resume else "replace it"
    try:
        read_only_mount = bool(os.statvfs(out).f_flag & os.ST_RDONLY)
        owner = out.stat().st_uid
    except OSError:
        read_only_mount, owner = False, None
    if read_only_mount:
        why, fix = "is on a file system mounted read-only", "write the output to another file system"
    elif owner is not None and hasattr(os, "getuid") and owner != os.getuid():
        why, fix = "belongs to another user and is read-only for you", "ask its owner, or choose another -o path"
    else:
        why, fix = "is read-only for you", "make it writable (chmod u+w) or choose another -o path"
    raise UserError(f"output {out} exists and {why}, so llmkit cannot {what}; {fix}")


def _same(a: Path, b: Path) -> bool:
    """One folder or file, also by two paths resolve() keeps apart (a bind mount; another letter
    case on a case-insensitive disk): told by the file system's identity where both exist."""
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): it cannot be the other
        return False


RUN_CHECKPOINTS = "checkpoints"  # where a training run keeps its step checkpoints (llmkit.train.checkpoint)
RUN_COMPANIONS = ("ema", "average", "best")  # the checkpoints a run writes beside its own (--ema, --average-last, --keep-best)
RUN_MARK = ".llmkit-run"  # written into every training run and sweep folder when it is created


EXPORT_RECORD = "llmkit_model_config.json"  # (llmkit.interop's record of an export, beside the files it wrote)


def _not_of_the_export(folder: Path) -> list[str]:
    """In a folder `llmkit export` wrote: the names its record does not list (a `.git` too), and
    those it lists whose content changed, weights included; none for any other folder, or an export
    recorded before 2026-12-05 (which listed no files; until 2026-12-07 none of its weights, which
    are then taken as its own)."""
    import json

    from llmkit.artifacts import sha256_file

    try:
        record = json.loads((folder / EXPORT_RECORD).read_text(encoding="utf-8"))
        listed, weights = record.get("files"), record.get("weights")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(listed, dict):
        return []
    if isinstance(weights, dict):
        listed = {**listed, **weights}
    names = sorted(entry.name for entry in folder.iterdir())  # (llmkit's own temporaries and locks lie beside it)
    unrecorded = lambda name: not isinstance(weights, dict) and name.endswith(".safetensors")  # noqa: E731
    # (a git repository made of it, an .env, a hub cache are the user's; a file manager's litter is nobody's)
    extra = [name for name in names if name not in listed and name != EXPORT_RECORD and not unrecorded(name)
             and name not in (".DS_Store", "Thumbs.db", "desktop.ini") and not name.startswith("._")]
    changed = [name for name, digest in listed.items()
               if not (folder / name).is_file() or sha256_file(folder / name) != digest]
    return extra + changed


def _made_by_llmkit(folder: Path) -> bool:
    """Whether --force may replace `folder`: empty, an artifact, a training run or sweep (in
    progress or not), or an llmkit export. Told by what llmkit writes and a user's project does
    not (a folder of runs/, configs/, checkpoints/ or another tool's manifest.json is not enough)."""
    from llmkit.artifacts import is_manifest

    if empty_folder(folder):
        return True
    if (folder / RUN_MARK).is_file() or (folder / EXPORT_RECORD).is_file():  # the last: llmkit export's
        return True
    # A damaged manifest of ours still names a kind llmkit makes.
    return is_manifest(folder / "manifest.json", loosely=True) or _unmarked_run(folder)


# What a training run or sweep folder holds (llmkit.train, llmkit.sweep), besides hidden files.
_RUN_ENTRIES = frozenset({"checkpoints", "metrics.jsonl", "tokenizer", "model.safetensors", "model_config.json", "task.json",
                          "training_state.json", "training_state.safetensors", *RUN_COMPANIONS, "tensorboard",
                          "runs", "configs", "logs", "plots", "runs.json"})


def _unmarked_run(folder: Path) -> bool:
    """A run or sweep from before the mark, unfinished: nothing but what llmkit writes there, and a
    checkpoint (a sweep's below runs/). A project folder that keeps artifacts under runs/, or its
    own files under configs/, logs/ or plots/, is not one, and --force must never empty it."""
    from llmkit.artifacts import manifest_kind

    if any(not entry.name.startswith(".") and entry.name not in _RUN_ENTRIES for entry in folder.iterdir()):
        return False
    runs = set()
    if (folder / "runs").exists():
        for run in _visible(folder / "runs"):
            if not (run.is_dir() and ((run / RUN_MARK).is_file() or manifest_kind(run) == "checkpoint"
                                      or (run / "checkpoints").is_dir())):
                return False  # a sweep's runs are training runs, and nothing else
            runs.add(run.name)
    # A sweep's configs/NAME.yaml and logs/NAME.log name its runs; it draws plots/ when it finishes,
    # and then it has a manifest.
    for sub, suffix in (("configs", ".yaml"), ("logs", ".log")):
        if (folder / sub).exists() and not all(f.is_file() and f.suffix == suffix and f.stem in runs
                                                for f in _visible(folder / sub)):
            return False
    if (folder / "plots").exists():
        return False
    return any(manifest_kind(m.parent) == "checkpoint" for pattern in (
        "checkpoints/step_*/manifest.json", "runs/*/manifest.json", "runs/*/checkpoints/step_*/manifest.json")
        for m in folder.glob(pattern))


def _visible(folder: Path) -> list[Path]:
    """What a folder holds, hidden entries (locks, temporaries) left out; a file holds nothing."""
    return [entry for entry in folder.iterdir() if not entry.name.startswith(".")] if folder.is_dir() else [folder]


_made_parents: list[Path] = []  # folders make_parent created in this process, outermost first


@contextlib.contextmanager
def made_parents_removed_on_failure() -> Iterator[None]:
    """A command that fails leaves none of the folders it made above its output where nothing
    was put in them (most stages check their output, which makes them, before their other inputs)."""
    _made_parents.clear()
    try:
        yield
    except BaseException:
        remove_made_parents()
        raise
    finally:
        _made_parents.clear()


def remove_made_parents() -> None:
    """The folders this command made above its output, where nothing was put in them (a command
    that fails, or one that ends with nothing to write)."""
    for folder in reversed(_made_parents):
        with contextlib.suppress(OSError):  # not empty: something of the run's is there, or another's
            folder.rmdir()


def make_parent(out: Path) -> None:
    """Create the folders above an output path, or say in one line why they cannot be."""
    parent = Path(out).resolve().parent
    existing = next(folder for folder in (parent, *parent.parents) if folder.exists())
    if not existing.is_dir():
        raise UserError(f"cannot create {out}: {existing} is a file, not a folder; choose another -o path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {out}: the folder {existing} is read-only for you; choose another -o path")
    try:
        missing = [folder for folder in (parent, *parent.parents) if existing in folder.parents]  # innermost first
        for folder in reversed(missing):
            try:
                folder.mkdir()
                _made_parents.append(folder)  # made here: only those are removed if the command fails
            except FileExistsError:  # (made meanwhile by another command: not this one's to remove)
                pass
    except OSError as exc:
        raise UserError(f"cannot create the folder {parent} for {out} ({exc.strerror}); choose another -o path") from exc


def check_output_file(path: Path | None, force: bool, inputs: list[Path | None] = (),
                      ours: WrittenBy | None = None) -> None:
    """A file output: never one of the inputs nor inside one (a checkpoint's weights), even with --force,
    nor where a training run keeps its own checkpoints."""
    if path is None:
        return
    _refuse_a_long_name(path)  # (first, as check_output does: the questions below fail on a name that long)
    refuse_a_place_of_a_run(path)
    from llmkit.artifacts import storable_name

    where = os.path.abspath(path)
    if storable_name(where) != where:  # (its records and notes name it, in UTF-8, as a folder output's do)
        raise UserError(f"-o {storable_name(str(path))}: the path is not UTF-8 ({storable_name(where)}); give the output a "
                        "path in UTF-8")
    target = path.resolve()
    _refuse_over_an_input(path, target, inputs, a_file=True)
    refuse_a_part_of_a_finished_artifact(path)
    if path.is_dir():
        raise UserError(f"-o {path} is a folder; give a file path")
    _refuse_existing(path, force, ours)
    make_parent(path)


def empty_folder(path: Path) -> bool:
    """A folder holding nothing (made with mkdir for an output, a mount point): taken as an output
    without --force, used in place, as there is nothing in it to lose."""
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def _refuse_existing(path: Path, force: bool, ours: WrittenBy | None = None) -> None:
    # (whether it is the command's own first: --force was advised for a file it then refused)
    if ours is not None and path.is_file() and not ours(path):  # (a folder output's own check is check_output's)
        raise UserError(f"output {path} exists and is not {ours.what}, which is all llmkit replaces here: move it away, "
                        "or choose another -o path")
    # (a link to nothing is something there, too; an empty folder, made with mkdir for it, holds nothing to lose)
    if (path.is_symlink() or path.exists() and not empty_folder(path)) and not force:
        raise UserError(f"output {path} already exists; pass --force to replace it or choose another -o path")


# The first key of every JSONL record generate and chat write, naming the command (what --force
# reads: the start of the file, never a whole record, which holds a prompt of any length).
MARK = "llmkit"
# What plot's PNGs carry (a tEXt chunk, near the start), as every llmkit chart does (llmkit/charts.py).
PNG_MARK = b"tEXtSoftware\x00llmkit"


@dataclass(frozen=True)
class WrittenBy:
    """What --force may replace at a command's file output (`what` it is, for the refusal): an empty
    file, or one the command wrote, told by the mark it writes: JSONL whose first record says
    `"llmkit": COMMAND`, or a PNG chart with llmkit's Software chunk. --force replaced any file at
    -o, then any file that began as the command's do: a fine-tuning data set of {"prompt": ...}
    or {"messages": ...} records (what generate's and chat's began with), a photo (a PNG)."""

    what: str
    command: str  # the JSONL mark's value; "" for a PNG chart

    def __call__(self, path: Path) -> bool:
        try:
            with open(path, "rb") as handle:
                head = handle.read(4096)
        except OSError:
            return False
        if not self.command:
            return not head or (head.startswith(b"\x89PNG\r\n\x1a\n") and PNG_MARK in head)
        head = head.removeprefix(b"\xef\xbb\xbf").lstrip()
        return not head or head.startswith(record_start(self.command).encode())


def record_start(command: str) -> str:
    """How every JSONL record `command` writes begins (its mark, the first key)."""
    import json

    return "{" + json.dumps(MARK) + ": " + json.dumps(command)


@contextlib.contextmanager
def file_output_lock(path: Path, force: bool, ours: WrittenBy | None = None) -> Iterator[None]:
    """Be the only run writing the file `path` (output_lock), checked again under the lock: another
    run may have written it since the command's own check. `ours`: what --force may replace
    (`WrittenBy`)."""
    with output_lock(path):
        _refuse_existing(path, force, ours)
        yield


def write_atomically(path: Path, data: str | bytes | Callable[[IO[bytes]], None]) -> None:
    """Replace `path` in one step by `data` (text, bytes, or a writer of a binary file), on the disk
    before the rename: a crash at any point leaves the old file or the new one, whole (the manifest
    that finishes an artifact, the marker a rerun continues from)."""
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        with open(tmp, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # (a full disk, a stop: no half-written temporary left where a later listing finds it)
        tmp.unlink(missing_ok=True)
        raise


def temporary_file(path: Path) -> tuple[IO[str], Path]:
    """A text file of this run's own beside `path` (`.NAME.tmp-*`: a killed run's is removed by the
    next run's lock), to be renamed to `path` with `publish_file`."""
    handle, name = tempfile.mkstemp(dir=path.resolve().parent, prefix=f".{path.name}.tmp-")
    return os.fdopen(handle, "w", encoding="utf-8"), Path(name)


def publish_file(tmp: Path, path: Path) -> None:
    default_permissions(tmp)  # mkstemp makes it private; the output gets the umask's modes
    os.replace(tmp, path)


@contextlib.contextmanager
def replaced_file(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write the whole output to; renamed to `path` when the
    block ends, removed if it fails (the old file, if any, stays as it was)."""
    handle, tmp = temporary_file(path)
    handle.close()
    try:
        yield tmp
        publish_file(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def output_lock(out: Path | str, *, keep_replaced: bool = False) -> Iterator[None]:
    """Be the only llmkit run writing `out` for the length of the block.

    The lock is `.NAME.lock` beside the output (flock, released if the process dies). A second
    run is refused at once rather than left to replace the first one's output; stale temporary
    folders of killed runs of the same output are removed, since nobody else can be using them.
    `keep_replaced`: a training run's directory (llmkit.train.launch.run_directory) decides itself
    what becomes of a run that a killed --force run had moved aside: it may be the only copy left.
    """
    out = Path(out)
    lock_path = out.resolve().parent / f".{out.name}.lock"
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield
        return
    try:
        handle = open(lock_path, "a+", encoding="utf-8")
    except OSError as exc:
        if lock_path.exists():  # another user's killed run left it, say
            raise UserError(f"cannot open the lock file {lock_path} ({exc.strerror}), which a run of another user may have "
                            "left; remove it, or choose another -o path") from None
        # (the lock is the first file made there: its own name would mislead)
        raise UserError(f"cannot create files in {lock_path.parent} ({exc.strerror}), where {out} would go; choose another -o "
                        "path") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A lock on a file another run has just unlinked guards nothing: check it is still the file.
            same = os.path.exists(lock_path) and os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino
        except BlockingIOError:
            same = False
        if not same:
            raise UserError(f"another llmkit run is writing {out} (it holds {lock_path}); wait for it to finish or choose another -o")
        _remove_stale_temporaries(out, keep_replaced)
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)
    finally:
        handle.close()


def temporaries(out: Path, kind: str) -> list[Path]:
    """llmkit's own temporaries of output `out`, `.NAME.KIND-SUFFIX` beside it: tempfile's 8
    characters, or a test's stand-in (KIND tmp, old, replaced; no dot), or a resume key's 16 hex
    digits (partial). Matched whole, so that another output's never is: an -o of `x.tmp-a` beside
    `x` has `.x.tmp-a.lock` and `.x.tmp-a.partial-...`, which a glob of `.x.tmp-*` took for x's and
    removed while that run wrote them."""
    suffix = "[0-9a-f]{16}" if kind == "partial" else "[a-z0-9_]+"
    whole = re.compile(rf"\.{re.escape(out.name)}\.{kind}-{suffix}")
    parent = out.resolve().parent
    return sorted(p for p in parent.glob(f".{glob.escape(out.name)}.{kind}-*") if whole.fullmatch(p.name))


def _remove_stale_temporaries(out: Path, keep_replaced: bool) -> None:
    for old in temporaries(out, "old"):
        if (old / out.name).exists() and not out.exists() and not out.is_symlink():
            os.replace(old / out.name, out)  # killed between _replace_dir's renames: the only copy left
    for kind in ("tmp", "old") + (() if keep_replaced else ("replaced",)):
        for stale in temporaries(out, kind):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:  # a file output's temporary (generate -o, chat's transcript)
                stale.unlink(missing_ok=True)


RESUME_MARKER = "resume.json"  # in a partial output: the stage can continue from it (llmkit.resume)
# the marker and the arrays it names, dotted ones being writes a kill cut short
# (and the temporaries of their writes: write_atomically's, and the names before it)
RESUME_FILES = (RESUME_MARKER, f".tmp-{RESUME_MARKER}", "resume-*.npz", ".tmp-resume-*.npz", f".{RESUME_MARKER}", ".resume-*.npz")


def refuse_a_place_of_a_run(out: Path) -> None:
    """A training run's own outputs inside its folder (checkpoints/, ema, average, best, and anything in
    them) are the run's to write: `llmkit average -o RUN/checkpoints/step_N --force` replaced a step
    the run then could not resume from, `-o RUN/ema` its moving average by a soup, and `pretrain -o
    RUN/ema` by a whole run, which the run's next --resume replaced unsaid. (A sweep's folder holds
    the run mark too, and no such places.)"""
    target = out.resolve()
    for place in (target, *target.parents):
        run = place.parent
        if place.name in (RUN_CHECKPOINTS, *RUN_COMPANIONS) and _a_training_run(run):
            where = "is" if place == target else "lies inside"
            raise UserError(f"-o {out} {where} {place}, where the training run {run} keeps its own checkpoints; write "
                            "the output elsewhere")


def refuse_a_part_of_a_finished_artifact(out: Path) -> None:
    """A file a finished artifact's manifest lists, or an artifact inside one that it records as an input
    (a sweep's runs/NAME), is that artifact's: `plot -o FIT/plots/isoflop.png --force` and `average ... -o
    SWEEP/runs/NAME --force` replaced them, and the fit then failed every read (its file's size), the sweep
    its verify (a review). The nearest llmkit artifact above the output decides; anything else inside one
    (a new name, or an artifact written there and not recorded: an eval beside a checkpoint's files) is
    left to the stages' other checks, so that it can be replaced and resumed as anywhere."""
    from llmkit.artifacts import MANIFEST

    target = out.resolve()
    for place in target.parents:
        enclosing = _llmkit_manifest(place / MANIFEST)
        if enclosing is None:
            continue
        relative = target.relative_to(place).as_posix()
        listed = enclosing.get("files") or {}
        nested = _llmkit_manifest(target / MANIFEST)
        recorded = {str(ref.get("fingerprint")) for ref in enclosing.get("inputs") or [] if isinstance(ref, dict)}
        if (relative in listed or any(str(name).startswith(relative + "/") for name in listed)
                or nested is not None and nested.get("fingerprint") in recorded):
            raise UserError(f"-o {out} is part of the finished artifact {place} (its manifest records it), which no stage "
                            "writes over, even with --force; write the output elsewhere")
        return


def _llmkit_manifest(path: Path) -> dict | None:
    """An llmkit manifest's JSON (its kind and format version there), or None: none, another tool's, damaged."""
    import json

    try:
        document = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) and "kind" in document and "format_version" in document else None


def _a_training_run(folder: Path) -> bool:
    """A training run's folder: its mark (a sweep's holds one too, beside its runs/ and configs/), or,
    from before the mark (2026-12-02), a checkpoint manifest beside a checkpoints/ folder or a
    training state, or (unfinished) step checkpoints in checkpoints/."""
    from llmkit.artifacts import manifest_kind, unfinished_sweep

    if (folder / RUN_MARK).exists():
        return not unfinished_sweep(folder) and manifest_kind(folder) != "sweep"
    steps = folder / RUN_CHECKPOINTS
    if manifest_kind(folder) == "checkpoint":
        return steps.is_dir() or (folder / "training_state.json").is_file()
    return steps.is_dir() and any(manifest_kind(step) == "checkpoint" for step in steps.iterdir() if step.is_dir())


@contextlib.contextmanager
def atomic_directory(out: Path | str, *, force: bool = False, inputs: Iterable[Path | str | None] = (),
                     lock: bool = True, resume_key: str | None = None, writes: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of `out`; rename it to `out` on success, remove it on any error.

    For directories that are not artifacts (an exported transformers folder) as well as artifacts.
    `lock=False` is for a writer that already holds the lock of an enclosing output (a training
    run writing its intermediate checkpoints).

    `resume_key` (a digest of everything the output depends on) makes the sibling
    `.OUT.partial-KEY`, kept when the stage is interrupted (killed, Ctrl-C, a full disk) after it
    wrote a completion marker (RESUME_MARKER), so that a rerun with the same key continues in it;
    partial outputs of other keys (another input or config) are removed, never continued. Without
    a marker, or on a one-line UserError (a rerun would fail the same way), it is removed.
    """
    # (a training run writes its own places with lock=False: it holds the run's lock)
    out = check_output(out, force, inputs=list(inputs), a_runs_own=not lock, inside_a_checked_output=not lock,
                       writes=writes)
    if os.path.ismount(out):  # (renamed into place at the end: a mount point cannot be moved aside, after all the work)
        raise UserError(f"-o {out} is a mount point, which llmkit cannot replace with the folder it writes beside it; give "
                        f"a folder inside it (such as {out / 'NAME'})")
    with output_lock(out) if lock else contextlib.nullcontext():
        if writes is not None and out.exists():  # made by another run since the check above
            _refuse_another_kind(out, writes)
        _refuse_existing(out, force)
        parent = out.resolve().parent
        if resume_key is None:
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        else:
            tmp = parent / f".{out.name}.partial-{resume_key[:16]}"
            for stale in temporaries(out, "partial"):
                if stale != tmp:
                    from llmkit.console import note

                    # (said: on a large job a rerun from zero was silent)
                    note(f"{stale}, the work an interrupted run kept, was for other inputs or options: removed, and "
                         "this run starts over")
                    shutil.rmtree(stale, ignore_errors=True)
            if tmp.is_dir() and not _is_file(tmp / RESUME_MARKER):  # (killed before its first marker: silent before)
                from llmkit.console import note

                note(f"{tmp}, left by an interrupted run of this command, holds no finished part to continue from: "
                     "this run starts over")
            tmp.mkdir(exist_ok=True)
        try:
            yield tmp
            default_permissions(tmp)
            _replace_dir(tmp, out)
        except BaseException as exc:
            # (a UserError is the input's problem, which a rerun would meet again: unless it says otherwise)
            resumable = resume_key is not None and _is_file(tmp / RESUME_MARKER) and (
                not isinstance(exc, UserError) or exc.keeps_work)
            if not resumable:
                shutil.rmtree(tmp, ignore_errors=True)
            else:  # hidden, and as large as the work done: say where it is and what becomes of it
                from llmkit.console import note

                note(f"the work done so far is kept in {tmp}; the same command continues it, and any other "
                     f"run writing {out} removes it")
            if isinstance(exc, KeyboardInterrupt) and resume_key is not None:  # what a rerun does, on the error's line
                add_advice(exc, "rerun the command to continue where it stopped" if resumable
                           else "nothing was kept to continue from; rerun the command")
            raise


def _is_file(path: Path) -> bool:
    """Path.is_file that answers False where the question itself fails (a name too long): the clean-up
    it decides must still run."""
    try:
        return path.is_file()
    except OSError:
        return False


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        # Move the old one aside first so that `out` is never a half-replaced mix.
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.resolve().parent))
        aside = trash / out.name
        try:
            os.replace(out, aside)
            os.replace(tmp, out)
        except BaseException:  # a Ctrl-C between the two renames: the old one goes back, not lost with the new
            if aside.exists() and not out.exists():
                os.replace(aside, out)
            if not aside.exists():  # (the old one in place: the empty folder it was to go to is no one's)
                shutil.rmtree(trash, ignore_errors=True)
            raise
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)


def default_permissions(path: Path) -> None:
    """Give `path` (and what a folder holds) the modes a new file or folder gets under the user's
    umask. A temporary folder (mkdtemp: 0700) and a file safetensors writes through a temporary
    file (0600) would otherwise stay private after their rename, unlike the rest of the output."""
    mask = _umask()
    path = Path(path)
    for item in [path] if not path.is_dir() else [path, *path.rglob("*")]:
        if not item.is_symlink():
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (setting it to read it
    would, for a moment, give files other threads create that moment no mask at all)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)  # elsewhere: the briefest change, to the strictest mask
    os.umask(mask)
    return mask
