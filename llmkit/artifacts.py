"""The llmkit artifact format: a directory with `manifest.json` at its root.

Every stage writes one artifact and reads its inputs only through this module. The manifest
records what the artifact is (`kind`, `format_version`), how it was made (`config`, `seed`,
`inputs` with their fingerprints, `command`, `versions`), what it holds (`files`: name ->
sha256) and what was measured (`stats`). The `fingerprint` is a hash over kind, format
version, config, seed, input fingerprints and file hashes: never timestamps, absolute paths or
runtime-only settings (`runtime`: worker counts, devices), so the same work gives the same
fingerprint on any machine. The spec is docs/artifacts.md.

Writing is atomic: a stage builds its artifact in a hidden temporary sibling directory and
renames it into place only after the manifest is written. A directory without a manifest is
never accepted as an artifact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat as stat_module
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from llmkit import __version__
from llmkit.errors import UserError
from llmkit.outputs import RESUME_FILES, RUN_MARK, atomic_directory, write_atomically

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("corpus", "tokenizer", "tokens", "checkpoint", "eval", "sweep", "scaling")
# Packages whose versions are recorded in every manifest (informational, not hashed).
RECORDED_PACKAGES = ("torch", "tokenizers", "datasets", "numpy", "pyarrow", "safetensors", "sacrebleu", "rouge-score",
                      "matplotlib",  # (the charts a sweep or a fit holds are its bytes)
                      "ftfy", "py3langid", "regex", "xxhash", "tiktoken")  # (clean's repairs, languages, words and shingles)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def storable_name(name: str) -> str:
    """A file name as manifests, configs and corpus columns can hold it: a name that is not UTF-8
    (a latin-1 archive's 'caf\\xe9.txt', which Python reads with surrogates no encoder takes)
    keeps its bytes as backslash escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def compute_fingerprint(
    kind: str, format_version: int, config: dict, seed: int | None, inputs: list[dict], files: dict[str, str]
) -> str:
    hashed = {
        "kind": kind,
        "format_version": format_version,
        "config": config,
        "seed": seed,
        "inputs": sorted((i["role"], i["fingerprint"]) for i in inputs),
        "files": files,
    }
    return hashlib.sha256(canonical_json(hashed).encode()).hexdigest()


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": sys.version.split()[0], "llmkit": __version__}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


@dataclass
class Manifest:
    kind: str
    config: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    # Files that record how the work ran rather than what it made (a training run's resume state:
    # world size, per-rank RNG): hashed for verify, but outside the fingerprint, like `runtime`.
    state_files: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # bytes per file: a cheap check on every load (not hashed)
    stats: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    llmkit_version: str = __version__
    fingerprint: str = ""

    def to_json(self) -> str:
        data = {
            "kind": self.kind,
            "format_version": self.format_version,
            "llmkit_version": self.llmkit_version,
            "fingerprint": self.fingerprint,
            "command": self.command,
            "seed": self.seed,
            "config": self.config,
            "inputs": self.inputs,
            "files": self.files,
            "state_files": self.state_files,
            "sizes": self.sizes,
            "stats": self.stats,
            "runtime": self.runtime,
            "versions": self.versions,
        }
        return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def expected_fingerprint(self) -> str:
        return compute_fingerprint(self.kind, self.format_version, self.config, self.seed, self.inputs, self.files)

    @property
    def all_files(self) -> dict[str, str]:
        """Every file of the artifact, the resume state included: name -> sha256."""
        return {**self.files, **self.state_files}


# Optional files a stage reads wherever they exist (llmkit/data/tokenizer.py: the special-token
# roles): one not in the manifest is refused, not read.
READ_IF_PRESENT = ("special_tokens.json", "chat_template.jinja")
# The only files a manifest may list as `state_files` (a training run's resume state, outside the
# fingerprint): any other name there would let a file be added that changes what a stage does,
# the fingerprint unchanged and verify content (llmkit/train/checkpoint.py names them).
STATE_FILE_NAMES = ("training_state.json", "training_state.safetensors")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_FIELD_TYPES = {
    "kind": str, "format_version": int, "llmkit_version": str, "fingerprint": str, "command": list, "config": dict,
    "inputs": list, "files": dict, "state_files": dict, "sizes": dict, "stats": dict, "runtime": dict, "versions": dict,
}


_JSON_NAMES = {str: "text", int: "a whole number", list: "a list", dict: "a JSON object"}


def _manifest_problem(data: Any) -> str | None:
    """What is structurally wrong with a manifest's JSON, if anything (cheap: no file is read)."""
    if not isinstance(data, dict):
        return "it is not a JSON object"
    for name, kind in _FIELD_TYPES.items():
        if name in data and (not isinstance(data[name], kind) or isinstance(data[name], bool)):
            return f"its {name!r} is not {_JSON_NAMES[kind]}"
    if data.get("kind") not in KINDS:
        return f"unknown kind {data.get('kind')!r} (llmkit makes {', '.join(KINDS)})"
    if data.get("seed") is not None and (not isinstance(data["seed"], int) or isinstance(data["seed"], bool)):
        return "its 'seed' is not a whole number"
    if not _HEX64.fullmatch(str(data.get("fingerprint", ""))):
        return "its 'fingerprint' is not a sha256"
    stray_state = sorted(set(data.get("state_files", {})) - set(STATE_FILE_NAMES))
    if stray_state:
        return f"it lists {stray_state[0]!r} as resume state, which only {' and '.join(STATE_FILE_NAMES)} are"
    for name, digest in {**data.get("files", {}), **data.get("state_files", {})}.items():
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            return f"the hash of file {name!r} is not a sha256"
        if name.startswith("/") or ".." in name.split("/"):
            return f"it lists {name!r}, a path outside the artifact"
        if "\x00" in name or any(part in ("", ".") for part in name.split("/")):  # ('./x', '', 'a//b': no file's name)
            return f"it lists {name!r}, which is not the path of a file inside it"
    for ref in data.get("inputs", []):
        if not isinstance(ref, dict) or not all(isinstance(ref.get(k), str) for k in ("role", "path", "fingerprint")) \
                or not isinstance(ref.get("kind", ""), str):
            return "an input is not {role, kind, path, fingerprint}"
        if ref.get("within") is True and (ref["path"].startswith("/") or not set(ref["path"].split("/")) - {"", "."}
                                          or ".." in ref["path"].split("/")):
            return f"its input {ref['role']!r} inside it is at {ref['path']!r}, which is not a folder inside it"
    if not all(isinstance(part, str) for part in data.get("command", [])):
        return "its 'command' is not a list of words"
    if any(not isinstance(v, int) or isinstance(v, bool) for v in data.get("sizes", {}).values()):
        return "its 'sizes' are not whole numbers"
    unsized = sorted((set(data.get("files", {})) | set(data.get("state_files", {}))) - set(data.get("sizes", {})))
    if "sizes" in data and unsized:  # (an entry left out turned the load's size check off for that file)
        return f"its 'sizes' leave out {unsized[0]!r}"
    if isinstance(data.get("format_version"), int) and data["format_version"] < 1:
        return f"its format_version {data['format_version']} is none llmkit wrote"
    return None


def manifest_kind(folder: Path, *, loosely: bool = False) -> str | None:
    """The kind of the artifact at `folder` if its manifest is one llmkit wrote, else None (`loosely`:
    a damaged one naming a kind llmkit makes counts, as in is_manifest)."""
    data = _manifest_json(Path(folder) / MANIFEST)
    if loosely:
        return data["kind"] if is_manifest(Path(folder) / MANIFEST, loosely=True) else None
    return data["kind"] if _manifest_problem(data) is None else None


def is_manifest(path: Path, *, loosely: bool = False) -> bool:
    """Whether `path` is a manifest llmkit wrote (well-formed JSON of a known kind), for telling
    llmkit's outputs from a user's folder that happens to hold a file of that name. `loosely`: a
    JSON object naming a kind llmkit makes and a format version is enough (a damaged one, which
    --force may replace)."""
    data = _manifest_json(path)
    if loosely:
        return isinstance(data, dict) and data.get("kind") in KINDS and "format_version" in data
    return _manifest_problem(data) is None


def _manifest_json(path: Path) -> Any:
    """The JSON at `path`, or None where there is none to read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def recorded_digest(path: Path) -> tuple[Path, str] | None:
    """(the artifact, the sha256 its manifest records for `path`) where the folder of `path` or the one
    above it is an artifact listing it (a checkpoint's tokenizer/ is the one above); else None."""
    path = Path(path)
    for root in (path.parent, path.parent.parent):
        data = _manifest_json(root / MANIFEST)
        if _manifest_problem(data) is None:
            name = path.relative_to(root).as_posix()
            digest = {**data.get("files", {}), **data.get("state_files", {})}.get(name)
            return (root, digest) if isinstance(digest, str) else None
    return None


# A file is remembered as hashed only once its times are this old: a write moves the change time by
# the clock's tick (a second on some file systems, a few ms on older kernels), so an edit in the tick
# of a load would keep the key; and a write through a memory map moves no time until the kernel
# writes the page back (30 s by default). Git's "racily clean" index entries are the same problem.
SETTLED_SECONDS = 60.0


def _file_key(path: Path) -> str | None:
    """The file as it is now, for the cache: its place, size, times, inode and device (a write moves
    its change time, which no user sets); None where that is no safe key (times of whole seconds: a
    file system whose clock could hide an edit in the same second)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    if stat.st_mtime_ns % 1_000_000_000 == 0 and stat.st_ctime_ns % 1_000_000_000 == 0:
        return None
    return json.dumps([os.path.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev])


def _hashed_entry(key: str) -> Path | None:
    """Where llmkit's cache (runtime.cache_root) keeps the digest of the file `key` names."""
    from llmkit.runtime import cache_root

    root = cache_root()
    if root is None:
        return None
    name = hashlib.sha256(key.encode()).hexdigest()
    return root / "hashed" / name[:2] / name


def _read_entry(entry: Path) -> str | None:
    """An entry's digest: a regular file of 64 characters, read without following a link or waiting
    on a pipe (anything else in its place is no entry)."""
    try:
        handle = os.open(entry, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        if not stat_module.S_ISREG(os.fstat(handle).st_mode):
            return None
        return os.read(handle, 65).decode("ascii", "replace")
    finally:
        os.close(handle)


def _remember_hashed(path: Path, key: str, entry: Path, digest: str) -> None:
    """Record `digest` for the file `key` named, if it is that file still and its times have settled."""
    import time

    try:
        stat = path.stat()
    except OSError:
        return
    settled = time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > SETTLED_SECONDS * 1e9
    if settled and _file_key(path) == key:
        with contextlib.suppress(OSError):  # (a cache that cannot be written: the next load hashes again)
            entry.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(entry, digest)


@contextlib.contextmanager
def checked_as_read(*paths: Path) -> Iterator[None]:
    """Hash the files the body reads whole (weights, a training state, a tokenizer) beside it, in a thread
    (hashlib lets go of the GIL: it runs beside a read from disk; a file hashed before and not
    changed since is not hashed again, `_hashed_entry`), and refuse one that differs
    from its artifact's manifest: load checks only sizes, so a change that kept the size was used, and
    the stage's output recorded the input's fingerprint for files it never had. (Token shards, mapped and
    read in part, are checked by size only; `llmkit verify` hashes every file.) In a run of several
    processes the first of each node checks: each would hash the same files, N times the work. A
    changed file is the error to report, also where the read failed on what the change did."""
    from concurrent.futures import ThreadPoolExecutor

    if os.environ.get("LOCAL_RANK", "0") not in ("", "0"):  # (once a node: each may hold its own copy of the files)
        yield
        return

    def unchanged(path: Path) -> None:
        found = recorded_digest(path)
        if found is None:
            return
        key = _file_key(path)
        entry = _hashed_entry(key) if key is not None else None
        if entry is not None and _read_entry(entry) == found[1]:  # (hashed before, and not changed since)
            return
        if sha256_file(path) != found[1]:
            raise UserError(f"{path} was changed after the artifact {found[0]} was written (its sha256 is not the one the "
                            f"manifest records); restore it or rebuild the artifact (llmkit verify {found[0]} lists every "
                            "change)")
        if entry is not None:
            _remember_hashed(path, key, entry, found[1])

    with ThreadPoolExecutor(1) as pool:
        checks = [pool.submit(unchanged, Path(path)) for path in paths]
        try:
            yield
        except Exception as failed:  # (a NaN, a header that does not parse: the edit behind it is the news)
            for check in checks:
                if isinstance(check.exception(), UserError):
                    raise check.exception() from failed
            raise
        for check in checks:
            check.result()


@dataclass(frozen=True)
class RecordedInput:
    """An input as another artifact's manifest records it (its path, kind and fingerprint):
    enough to record it again without reading it, which may have moved away since."""

    path: Path
    kind: str
    fingerprint: str


@dataclass
class Artifact:
    """An artifact read from disk: its directory and its manifest."""

    path: Path
    manifest: Manifest

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    @property
    def short_fingerprint(self) -> str:
        """The fingerprint as every command prints it (its first 12 hex digits: 48 bits)."""
        return self.manifest.fingerprint[:12]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.config

    @property
    def stats(self) -> dict[str, Any]:
        return self.manifest.stats

    def file(self, name: str) -> Path:
        """Path of a file the manifest lists; a missing one is a user-facing error."""
        path = self.path / name
        if name not in self.manifest.all_files or not path.exists():
            raise UserError(f"{self.kind} artifact at {self.path} has no file {name!r}; it is incomplete, rebuild it")
        return path

    def unlisted_files(self) -> list[str]:
        """Files a stage could read from this artifact that its manifest does not list (added
        after it was made): any file beside a listed one in a subfolder (tokenizer/, shards/,
        train/, ...), and the optional files read wherever they are (special_tokens.json). The
        top folder also holds what is unlisted by design (metrics.jsonl, checkpoints/, ...)."""
        listed = set(self.manifest.all_files)
        folders = {str(Path(name).parent) for name in listed} - {"."}
        found = []
        for folder in sorted(folders):
            directory = self.path / folder
            if directory.is_dir():  # (hidden files, .DS_Store and editors' swap files, are no stage's input)
                found += [f"{folder}/{p.name}" for p in sorted(directory.iterdir())
                          if p.is_file() and not p.name.startswith(".") and f"{folder}/{p.name}" not in listed]
        for name in READ_IF_PRESENT:
            for where in ("", "tokenizer/"):
                if f"{where}{name}" not in listed and f"{where}{name}" not in found and (self.path / where / name).is_file():
                    found.append(f"{where}{name}")
        return found

    def check_files(self) -> None:
        """The cheap half of `verify`: every listed file is there, inside the artifact (no link out
        of it), with the size the manifest recorded, and no unlisted file a stage could read sits
        beside them. Hashing them all is `verify`'s job. (The resume state of a checkpoint may be
        missing: only --resume reads it, and says so.)"""
        root = self.path.resolve()
        extra = self.unlisted_files()
        if extra:
            raise UserError(f"{self.path} holds {extra[0]}, which its manifest does not list (added after the artifact was made, "
                            "it could change what a stage reads); remove it, or rebuild the artifact (llmkit verify lists all)")
        for name in self.manifest.all_files:
            path = self.path / name
            if not path.exists() and not path.is_symlink():
                if name in self.manifest.state_files:
                    continue
                raise UserError(f"{self.path} has no {name}, which its manifest lists; it is incomplete: restore the file or "
                                "rebuild the artifact (llmkit verify lists all differences)")
            try:
                real = path.resolve(strict=True)
            except (OSError, RuntimeError) as exc:  # a link to itself, a dangling link
                raise UserError(f"{self.path}: {name} cannot be followed ({exc.__class__.__name__}: a broken or looping link?); "
                                "rebuild the artifact") from None
            if root not in real.parents:
                raise UserError(f"{self.path}: file {name!r} leads outside the artifact (a link?); rebuild the artifact")
            expected = self.manifest.sizes.get(name)
            if expected is not None and path.stat().st_size != expected:
                raise UserError(
                    f"{self.path}: {name} has {path.stat().st_size} bytes, the manifest says {expected}; "
                    "it changed or was cut short, rebuild the artifact (llmkit verify shows all differences)"
                )

    def recorded_input(self, role: str) -> RecordedInput | None:
        """This artifact's input `role` as its manifest records it, whether or not it is still there."""
        for ref in self.manifest.inputs:
            if ref["role"] == role:
                return RecordedInput(_input_path(self, ref), ref.get("kind", ""), ref["fingerprint"])
        return None

    def input(self, role: str) -> Artifact:
        """Load one of this artifact's inputs by role (resolved relative to this artifact)."""
        for ref in self.manifest.inputs:
            if ref["role"] == role:
                art = load(_input_path(self, ref), kind=ref.get("kind"))
                if art.fingerprint != ref["fingerprint"]:
                    raise UserError(
                        f"input {role!r} of {self.path} changed since it was used "
                        f"(fingerprint {art.fingerprint[:12]} != {ref['fingerprint'][:12]}); rebuild {self.path}"
                    )
                return art
        raise UserError(f"{self.kind} artifact at {self.path} has no input {role!r}")


SWEEP_RUNS = "runs"  # a sweep's runs lie in SWEEP/runs/NAME, each its input "run:NAME"


def _made_inside(art: Artifact, ref: dict[str, Any]) -> bool:
    """Whether an input lies inside the artifact: recorded so ("within", which is not hashed), or a
    sweep's run, which a sweep makes inside itself (one made before the flag was, or whose flag
    was removed, is checked all the same)."""
    if ref.get("within") is True:
        return True
    return art.kind == "sweep" and str(ref.get("role", "")).startswith("run:")


def _input_path(art: Artifact, ref: dict[str, Any]) -> Path:
    """Where an input the manifest records is: one made inside the artifact relative to it (a
    sweep's run at runs/NAME whatever its record says, so that a sweep made before "within", then
    renamed or copied, finds its own runs), any other relative to the folder the artifact really
    lies in (as _input_ref stored it), not to a link's."""
    root = art.path.resolve()
    if ref.get("within") is True:
        return root / ref["path"]
    if _made_inside(art, ref):
        return root / SWEEP_RUNS / ref["role"].removeprefix("run:")
    stored = Path(ref["path"])
    return stored if stored.is_absolute() else (root.parent / stored).resolve()


def _input_ref(role: str, art: Artifact | RecordedInput, out: Path) -> dict[str, Any]:
    # Stored relative to the output's parent so a project folder can be moved as a whole; an input
    # inside the output (a sweep's runs) relative to the output ("within"), so that it is found there
    # after the output is renamed or copied. Never hashed: only the fingerprint is.
    source, target = art.path.resolve(), out.resolve()
    if source != target and source.is_relative_to(target):
        return {"role": role, "kind": art.kind, "path": source.relative_to(target).as_posix(), "within": True,
                "fingerprint": art.fingerprint}
    try:
        stored = os.path.relpath(source, target.parent)
    except ValueError:  # different drives on Windows
        stored = str(source)
    return {"role": role, "kind": art.kind, "path": stored, "fingerprint": art.fingerprint}


def unfinished_sweep(path: Path) -> bool:
    """A sweep's folder before its manifest: its run mark, runs/ and configs/ (llmkit/sweep/stage.py's layout)."""
    return (path / RUN_MARK).is_file() and (path / "runs").is_dir() and (path / "configs").is_dir()


# How to get the artifact a stage wanted from what it was given: the usual slips of a first run
# (text or a corpus given to pretrain, tokens to generate), then what makes each kind.
_NEXT_STEPS = {
    ("file", "corpus"): "make a corpus of it first: llmkit clean {path} -o CORPUS",
    ("file", "tokens"): "make tokens of it first: llmkit clean {path} -o CORPUS, llmkit tokenizer train CORPUS -o TOK, "
                        "llmkit tokenize CORPUS -t TOK -o TOKENS",
    ("corpus", "tokens"): "tokenize it first: llmkit tokenizer train {path} -o TOK, then llmkit tokenize {path} -t TOK -o TOKENS",
    ("tokenizer", "tokens"): "tokenize a corpus with it first: llmkit tokenize CORPUS -t {path} -o TOKENS",
    ("corpus", "tokenizer"): "train one on it: llmkit tokenizer train {path} -o TOK",
    ("tokens", "checkpoint"): "train a model on them first: llmkit pretrain {path} -o RUN",
}
_MAKERS = {"corpus": "llmkit clean", "tokenizer": "llmkit tokenizer train", "tokens": "llmkit tokenize",
           "checkpoint": "llmkit pretrain, finetune, import or average (recipes/quickstart.sh runs the chain from text)",
           "sweep": "llmkit sweep", "scaling": "llmkit scaling fit", "eval": "llmkit eval"}


def _how_to_make(wanted: tuple[str, ...], found: str, path: Path) -> str:
    """The fix of a wrong input, as "; ..."; where several kinds would do, the step to the first
    of them this one makes (a corpus given as tokenize's -t: train a tokenizer on it)."""
    if len(wanted) != 1:
        step = next((_NEXT_STEPS[(found, kind)] for kind in wanted if (found, kind) in _NEXT_STEPS), None)
        return "; " + step.format(path=path) if step else ""
    step = _NEXT_STEPS.get((found, wanted[0]))
    if step:
        return "; " + step.format(path=path)
    return f"; {_article(wanted[0])} artifact comes from {_MAKERS[wanted[0]]}" if wanted[0] in _MAKERS else ""


_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack"}
_TOKENIZER_FOLDER_FILES = ("tokenizer.json", "tokenizer_config.json")  # what a tokenizer's save_pretrained writes
# A model's or tokenizer's files that are JSON or text, but no data to clean
_MODEL_FILES = ("config.json", "generation_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                "added_tokens.json", *_TOKENIZER_FOLDER_FILES)


def _holds_data_files(folder: Path, look_at: int = 1000) -> bool:
    """Whether a folder (below it too; its first `look_at` entries) holds text or record files clean
    reads, a model's configuration and vocabulary files not counted."""
    from itertools import islice

    from llmkit.data.corpus import RECORD_SUFFIXES, TEXT_SUFFIXES, file_format

    try:
        return any(entry.is_file() and entry.name not in _MODEL_FILES and file_format(entry)[0] in TEXT_SUFFIXES | RECORD_SUFFIXES
                   for entry in islice(folder.rglob("*"), look_at))
    except OSError:
        return False


def unexpanded_pattern(path: Path | str) -> bool:
    """Whether a path that is not there reads as a shell pattern (`*`, `?`, `[`): quoted, or matching
    nothing, the shell passes it on as typed, and no stage expands one."""
    return any(c in str(path) for c in "*?[")


def dangling_link(path: Path | str) -> str:
    """" (a symbolic link to T, which ...)" for a path that is a link to nothing or to itself, which
    reads as not there (an error naming a missing file sent one looking for the file), else ""."""
    try:
        target = os.readlink(path)
    except OSError:  # (not a link)
        return ""
    return f" (a symbolic link to {target}, which is not there or leads back to itself)"


def load(path: Path | str, kind: str | Iterable[str] | None = None, *, check: bool = True) -> Artifact:
    """Read an artifact, checking that it exists, is complete, and is of the expected kind; and,
    cheaply (no file is hashed), that its manifest is well formed and unedited and its files are
    inside it with their recorded sizes. `check=False` skips the last two for `verify`, which
    reports every difference instead of the first."""
    path = Path(path)
    wanted = (kind,) if isinstance(kind, str) else tuple(kind) if kind else ()
    wanted_text = (", ".join(wanted[:-1]) + " or " + wanted[-1] if len(wanted) > 2 else " or ".join(wanted)) if wanted else "llmkit"
    where = os.path.abspath(path)
    if storable_name(where) != where:  # later stages record it, in UTF-8
        raise UserError(f"{storable_name(str(path))}: the artifact's path is not UTF-8 ({storable_name(where)}); move it to "
                        "a path in UTF-8")
    if not path.exists():
        pattern = " (if that is a pattern, llmkit expands none: name the artifact's folder)" if unexpanded_pattern(path) else ""
        raise UserError(f"no such artifact: {path}{pattern}{dangling_link(path)}; expected {_article(wanted_text)} artifact "
                        "directory")
    if not path.is_dir():
        # a file of an artifact (its weights, its tokenizer.json): the artifact is its folder, or one above
        holder = next((folder for folder in list(path.parents)[:3] if manifest_kind(folder)), None)
        if holder is not None and (not wanted or manifest_kind(holder) in wanted):
            raise UserError(f"{path} is a file of the {manifest_kind(holder)} artifact {holder}; pass {holder}")
        if holder is not None:
            raise UserError(f"{path} is a file of the {manifest_kind(holder)} artifact {holder}, not {_article(wanted_text)} "
                            f"artifact{_how_to_make(wanted, manifest_kind(holder), holder)}")
        raise UserError(f"{path} is a file, expected {_article(wanted_text)} artifact directory{_how_to_make(wanted, 'file', path)}")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        if unfinished_sweep(path):
            raise UserError(f"{path} is a sweep that has not finished (no {MANIFEST} yet): finish it by rerunning its "
                            "llmkit sweep command; its finished runs are artifacts (runs/NAME)")
        if (path / "metrics.jsonl").is_file() or (path / "checkpoints").is_dir() or (path / RUN_MARK).is_file():
            from llmkit.outputs import temporaries

            # a --force run killed before its first checkpoint (before its first step too: a large base loading): the
            # finished run it replaced is the one worth having
            aside = next((folder / path.name for folder in temporaries(path, "replaced")
                          if (folder / path.name / MANIFEST).is_file()), None)
            if aside is not None and not any((path / "checkpoints").glob("step_*")):
                raise UserError(f"{path} is a --force training run stopped before its first checkpoint; the finished run it "
                                f"replaced is kept aside in {aside}: put it back with rm -r {path} && mv {aside} {path} "
                                "(a --resume of the new command puts it back too, and trains it on where the new options "
                                "change only its length or what it saves), "
                                "or rerun the new command to train that run again")
        if (path / "metrics.jsonl").is_file() or (path / "checkpoints").is_dir():
            raise UserError(f"{path} is a training run that has not finished (no {MANIFEST} yet): finish it by rerunning its "
                            "command with --resume, or use one of its checkpoints/step_N")
        if (path / "config.json").is_file() and any(p.suffix in _WEIGHT_SUFFIXES for p in path.iterdir()):
            raise UserError(f"{path} is a transformers model folder, not an llmkit artifact (no {MANIFEST}): make it a "
                            "checkpoint with llmkit import first")
        holder = manifest_kind(path.parent) if (path / "tokenizer.json").is_file() else None
        if not holder and any((path / name).is_file() for name in _TOKENIZER_FOLDER_FILES):
            raise UserError(f"{path} is a transformers tokenizer folder, not an llmkit artifact (no {MANIFEST}): llmkit "
                            "import reads a tokenizer with its model, from a folder holding both; or train one with "
                            "llmkit tokenizer train")
        if holder and (not wanted or holder in wanted):
            raise UserError(f"{path} is the tokenizer inside the {holder} artifact {path.parent}, not an artifact itself; "
                            f"pass {path.parent}")
        if holder:
            raise UserError(f"{path} is the tokenizer inside the {holder} artifact {path.parent}, not "
                            f"{_article(wanted_text)} artifact{_how_to_make(wanted, 'tokenizer', path)}")
        fix = _how_to_make(wanted, "file", path) if _holds_data_files(path) else ""
        if fix:
            raise UserError(f"{path} is a folder of data files, not an llmkit artifact (no {MANIFEST}){fix}")
        raise UserError(
            f"{path} is not an llmkit artifact (no {MANIFEST}): it is incomplete or was not made by llmkit; "
            "rerun the stage that makes it"
        )
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # (JSON and UTF-8 errors, and an integer past Python's digit limit)
        raise UserError(f"{manifest_path} is not valid JSON ({type(exc).__name__}); rebuild the artifact") from exc
    if isinstance(data, dict) and isinstance(data.get("format_version"), int) and data["format_version"] > FORMAT_VERSION:
        raise UserError(
            f"{path} has format version {data['format_version']}, this llmkit reads up to {FORMAT_VERSION}; upgrade llmkit"
        )
    problem = _manifest_problem(data)
    if problem:
        raise UserError(f"{manifest_path} is not a valid manifest: {problem}; rebuild the artifact")
    manifest = Manifest.from_dict(data)
    # (an edit first: a kind edited was told "got tokens", with the way to make a checkpoint of them)
    if check and manifest.expected_fingerprint() != manifest.fingerprint:
        raise UserError(f"{manifest_path} was edited: its fingerprint does not match its contents; rebuild the artifact")
    if wanted and manifest.kind not in wanted:
        raise UserError(f"expected {_article(wanted_text)} artifact, got {manifest.kind} at {path}"
                        f"{_how_to_make(wanted, manifest.kind, path)}")
    art = Artifact(path=path, manifest=manifest)
    if check:
        art.check_files()
        if "sizes" not in data and manifest.all_files and str(path.resolve()) not in _UNSIZED_NOTED:
            from llmkit.console import note

            _UNSIZED_NOTED.add(str(path.resolve()))
            note(f"{path} was made before manifests recorded their files' sizes (2026-11-30): a file cut short or "
                 "replaced is not noticed as it is read; llmkit verify checks it")
    return art


_UNSIZED_NOTED: set[str] = set()  # (said once a process per artifact: a stage may load an input several times)


def _article(word: str) -> str:
    return ("an " if word[:1] in "aeiou" or word == "llmkit" else "a ") + word


def list_files(root: Path, only: Iterable[str] | None = None, skip: Iterable[str] = ()) -> dict[str, str]:
    """sha256 of every file below root except the manifest, keyed by POSIX relative path, sorted.

    `only` keeps names or top-level folders; everything else is never read (a training run's
    directory also holds intermediate checkpoints that must not be hashed again); nor are the
    names in `skip`.
    """
    keep = set(only) if only is not None else None
    skip = set(skip)
    files = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name == MANIFEST or path.name.startswith(".tmp-"):
            continue
        name = path.relative_to(root).as_posix()
        if name in skip:
            continue
        if keep is None or name in keep or name.split("/", 1)[0] in keep:
            files[name] = sha256_file(path)
    return files


class ArtifactBuilder:
    """Collects what a stage records while it writes files into `dir` (a temporary directory)."""

    def __init__(self, kind: str, dir: Path, out: Path):
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}")
        self.kind = kind
        self.dir = dir
        self.out = out
        self.config: dict[str, Any] = {}
        self.seed: int | None = None
        self.inputs: list[dict[str, Any]] = []
        self.stats: dict[str, Any] = {}
        self.runtime: dict[str, Any] = {}
        self.file_filter: Iterable[str] | None = None
        self.state_names: set[str] = set()  # files listed as state_files (see Manifest)
        # top-level name patterns of the stage's working files (a resume marker): never listed, removed
        # only once the manifest is ready (an interruption while the files are hashed keeps them)
        self.scratch: list[str] = []

    def scratch_files(self) -> list[Path]:
        return sorted({path for pattern in self.scratch for path in self.dir.glob(pattern)})

    def add_input(self, role: str, art: Artifact | RecordedInput) -> None:
        self.inputs.append(_input_ref(role, art, self.out))

    def manifest(self, root: Path | None = None) -> Manifest:
        root = root or self.dir
        scratch = {path.relative_to(self.dir).as_posix() for path in self.scratch_files()} if root == self.dir else set()
        listed = list_files(root, self.file_filter, skip=scratch)  # (a sample log, a de-duplication index: never read)
        manifest = Manifest(
            kind=self.kind,
            config=json.loads(canonical_json(self.config)),
            seed=self.seed,
            inputs=sorted(self.inputs, key=lambda i: i["role"]),
            files={name: digest for name, digest in listed.items() if name not in self.state_names},
            state_files={name: digest for name, digest in listed.items() if name in self.state_names},
            sizes={name: (root / name).stat().st_size for name in listed},
            stats=json.loads(json.dumps(self.stats, default=_json_default)),
            runtime=json.loads(json.dumps(self.runtime, default=_json_default)),
            command=_command_line(),
            versions=_versions(),
        )
        manifest.fingerprint = manifest.expected_fingerprint()
        return manifest


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _command_line() -> list[str]:
    argv = [storable_name(arg) for arg in sys.argv]
    if argv:
        # `python -m llmkit` (or llmkit.cli, as sweep runs its pretraining runs) is the command a user types as `llmkit`
        inside = Path(sys.argv[0]).resolve().parent == Path(__file__).resolve().parent
        argv[0] = "llmkit" if inside else Path(argv[0]).name
    return argv


@contextlib.contextmanager
def create(out: Path | str, kind: str, *, force: bool = False, inputs: Iterable[Path | str | None] = (),
           lock: bool = True, resume_key: str | None = None) -> Iterator[ArtifactBuilder]:
    """Build an artifact atomically.

        with artifacts.create(out, "corpus", force=force, inputs=[source]) as build:
            write files into build.dir; set build.config, build.seed, build.stats; build.add_input(...)

    On success the manifest is written and the temporary directory renamed to `out`; on any
    exception the temporary directory is removed and `out` is left as it was. `inputs` are the
    paths the stage reads, which `out` may neither be, lie in nor contain (see check_output).

    With `resume_key` (see atomic_directory) the stage's resume marker stays in the folder until
    the manifest is ready: a stage interrupted while it finishes still leaves its work to continue.
    """
    out = Path(out)
    with atomic_directory(out, force=force, inputs=inputs, lock=lock, resume_key=resume_key, writes=kind) as tmp:
        builder = ArtifactBuilder(kind, tmp, out)
        if resume_key is not None:
            builder.scratch = list(RESUME_FILES)
        yield builder
        manifest = builder.manifest()
        for path in builder.scratch_files():
            path.unlink()
        write_atomically(tmp / MANIFEST, manifest.to_json())


def finalize_in_place(builder: ArtifactBuilder, files: Iterable[str]) -> Manifest:
    """Turn an existing directory into an artifact by writing its manifest last and atomically.

    For long-running stages whose output directory must exist while they run (a training run
    keeps metrics and intermediate checkpoints there). Only `files` (names or top-level folders)
    are listed and hashed; until the manifest appears the directory is not an artifact.
    """
    builder.file_filter = list(files)
    manifest = builder.manifest(builder.out)
    write_atomically(builder.out / MANIFEST, manifest.to_json())
    return manifest


def in_place_builder(out: Path | str, kind: str) -> ArtifactBuilder:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return ArtifactBuilder(kind, out, out)


@dataclass
class VerifyReport:
    path: Path
    problems: list[str]
    files: int = 0  # listed files checked
    inside: int = 0  # artifacts inside it checked (a sweep's runs)
    notes: list[str] = field(default_factory=list)  # what is missing and harms nothing the artifact is for

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: Path | str, _seen: frozenset = frozenset()) -> VerifyReport:
    """Re-hash every listed file and recompute the fingerprint; the same for each input that lies
    inside the artifact (a sweep's runs), whose fingerprint must also be the one recorded."""
    art = load(path, check=False)
    _seen = _seen | {art.path.resolve()}
    problems, notes = [], []
    root = art.path.resolve()
    for name, digest in art.manifest.all_files.items():
        file = art.path / name
        if name in art.manifest.state_files and not file.exists() and not file.is_symlink():
            # (deleted to ship the model, twice the weights' size: what the checkpoint is for is whole)
            notes.append(f"resume state removed: {name} (the weights are whole; --resume cannot continue this run)")
        elif file.exists() and root not in file.resolve().parents:
            problems.append(f"file outside the artifact: {name} (a link out of it)")
        elif not file.is_file():
            problems.append(f"missing file: {name}")
        elif sha256_file(file) != digest:
            problems.append(f"changed file: {name} (sha256 differs from the manifest)")
        elif file.stat().st_size != art.manifest.sizes.get(name, file.stat().st_size):
            problems.append(f"edited manifest: its size of {name} ({art.manifest.sizes[name]} bytes) is not the file's "
                            f"({file.stat().st_size}), whose sha256 matches")
    removed_state = len(notes)
    problems += [f"unlisted file: {name} (added after the artifact was made)" for name in art.unlisted_files()]
    if art.manifest.expected_fingerprint() != art.fingerprint:
        problems.append("fingerprint does not match the manifest's contents (the manifest was edited)")
    for ref in art.manifest.inputs:
        if not _made_inside(art, ref):
            continue
        inner = _input_path(art, ref)
        shown = inner.relative_to(root).as_posix()  # (where it is looked for: a sweep's runs whatever their record says)
        if not (inner / MANIFEST).is_file():
            problems.append(f"missing input {ref['role']}: {shown} (inside the artifact)")
            continue
        if inner.resolve() in _seen or root not in inner.resolve().parents:  # (a link back up, or out)
            problems.append(f"input {ref['role']} ({shown}) leads back to an artifact being verified, or out of it (a link?)")
            continue
        try:
            report = verify(inner, _seen)
        except UserError as exc:
            problems.append(f"input {ref['role']} ({shown}): {exc}")
            continue
        problems += [f"input {ref['role']} ({shown}): {problem}" for problem in report.problems]
        notes += [f"input {ref['role']} ({shown}): {line}" for line in report.notes]
        if not report.problems and load(inner, check=False).fingerprint != ref["fingerprint"]:
            problems.append(f"input {ref['role']} ({shown}) is another artifact than the one recorded (fingerprint differs)")
    inside = sum(1 for ref in art.manifest.inputs if _made_inside(art, ref))
    companions = _verify_companions(art, _seen, problems, notes) if art.kind == "checkpoint" else 0
    return VerifyReport(art.path, problems, len(art.manifest.all_files) - removed_state, inside + companions, notes)


def _verify_companions(art: Artifact, seen: frozenset, problems: list[str], notes: list[str]) -> int:
    """A training run's RUN/ema, RUN/best and RUN/average (artifacts it writes beside its own, which
    name it as their input: until 2026-12-07 a byte changed in RUN/ema passed `verify RUN`), each
    verified, and made from the run as it is. Returns how many there are."""
    from llmkit.outputs import RUN_COMPANIONS

    root, count = art.path.resolve(), 0
    for name in RUN_COMPANIONS:
        folder = art.path / name
        if not (folder / MANIFEST).is_file() or folder.resolve() in seen:
            continue
        if root not in folder.resolve().parents:  # (as a listed file linked out of the artifact is)
            problems.append(f"{name}: a link out of the run (to {folder.resolve()})")
            continue
        count += 1
        try:
            report = verify(folder, seen)
            companion = load(folder, check=False)
        except UserError as exc:
            problems.append(f"{name}: {exc}")
            continue
        problems += [f"{name}: {problem}" for problem in report.problems]
        notes += [f"{name}: {line}" for line in report.notes]
        for ref in companion.manifest.inputs:
            if _input_path(companion, ref).resolve() == root and ref["fingerprint"] != art.fingerprint:
                problems.append(f"{name}: made from another end of the run (its input {ref['role']} is "
                                f"{ref['fingerprint'][:12]}, the run is {art.fingerprint[:12]}); --resume the run to write it again")
    return count


def input_problems(art: Artifact) -> list[tuple[str, bool]]:
    """What became of the inputs an artifact recorded, as (problem, damage): one made inside it
    that is gone (damage: the artifact is incomplete), and one replaced since (another artifact at
    its path now: the numbers shown came from the one that was there) or damaged. Its direct inputs
    only; one elsewhere that is gone is no problem (a project folder moved, a data set deleted)."""
    problems = []
    for ref in art.manifest.inputs:
        where = _input_path(art, ref)
        try:
            if not (where / MANIFEST).is_file():
                if _made_inside(art, ref):
                    problems.append((f"its input {ref['role']} ({where.relative_to(art.path.resolve())}) is missing inside it", True))
                continue
            there = load(where, check=False).fingerprint
        except (UserError, OSError):  # (a folder this user may not read: is_file raises there)
            problems.append((f"its input {ref['role']} at {where} cannot be read", _made_inside(art, ref)))
            continue
        if there != ref["fingerprint"]:
            problems.append((f"its input {ref['role']} at {where} was replaced since (another artifact there now, "
                             f"{there[:12]})", _made_inside(art, ref)))
    return problems


@dataclass
class LineageNode:
    role: str
    path: str
    kind: str
    fingerprint: str  # as the artifact that used it recorded it
    found: bool
    children: list[LineageNode]
    problem: str = ""  # why what is at `path` is not that input: replaced since, or damaged


def lineage(path: Path | str, role: str = "output", _seen: frozenset = frozenset()) -> LineageNode:
    """The tree of inputs of inputs, as far as they can still be found on disk: an input rebuilt or
    replaced since (another fingerprint at its path), or damaged, is shown as such and not followed
    (what is there now is not what was used)."""
    art = load(path)
    children = []
    for ref in art.manifest.inputs:
        child_path = _input_path(art, ref)
        recorded = LineageNode(ref["role"], str(child_path), ref.get("kind", "?"), ref["fingerprint"], False, [])
        if not (child_path / MANIFEST).is_file() or str(child_path) in _seen:
            children.append(recorded)
            continue
        try:
            child = lineage(child_path, ref["role"], _seen | {str(art.path.resolve())})
        except UserError as exc:
            recorded.problem = f"damaged: {exc}"
            children.append(recorded)
            continue
        if child.fingerprint != ref["fingerprint"]:
            recorded.problem = f"replaced since: {child.fingerprint[:12]} there now"
            children.append(recorded)
        else:
            children.append(child)
    return LineageNode(role, str(art.path), art.kind, art.fingerprint, True, children)
