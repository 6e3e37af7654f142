"""Shared fixtures. Real data comes from ../shared/data (override with LLMKIT_SHARED_DATA).

Under CI=true a missing data folder is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("LLMKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


def in_ci() -> bool:
    """CI as runners say it (true, True, 1, yes): there a missing data folder or extra fails, not skips."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_runtest_setup(item):
    """Under `--dist loadgroup` a pytest-xdist worker names each grouped test's group in its node id
    (`...@model_parallel`), which is how a group reaches one worker. A pytest that ignores that renaming
    (9.2, with pytest-xdist 3.8) spreads the groups silently: fixtures built twice, several multi-process
    tests at once. Their tests fail instead, saying why."""
    if (os.environ.get("PYTEST_XDIST_WORKER") and getattr(item.config.option, "loadgroup", False)
            and item.get_closest_marker("xdist_group") and "@" not in item.nodeid):
        pytest.fail("pytest-xdist's --dist loadgroup does not group tests under this pytest (no @group in the node id); "
                    "install the pytest that constraints.txt pins", pytrace=False)


def small_play_tokens(root: Path, shared_data: Path) -> None:
    """In `root`: book.txt (tinyshakespeare's first 80,000 characters), its corpus (a document per blank
    line), a 300-token tokenizer and the tokens: the inputs of the small runs that averaging and
    --keep-best train."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    def cli(*args):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output

    (root / "book.txt").write_text((shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:80_000], encoding="utf-8")
    cli("clean", root / "book.txt", "--doc-per", "blank-line", "-o", root / "corpus")
    cli("tokenizer", "train", root / "corpus", "-o", root / "tok", "--vocab-size", "300")
    cli("tokenize", root / "corpus", "-t", root / "tok", "-o", root / "tokens")


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder of test inputs that `build(folder)` makes once per test run, for every pytest-xdist
    worker: the first to need it builds it while the others wait on its lock (a session fixture alone is
    made by each worker that needs it). Tests only read it."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's folder, which holds each worker's own
    folder = shared / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


def cached_as_a_hub_dataset(name: str, splits: dict[str, Path], scratch: Path) -> None:
    """What a download of the data set `name` leaves in llmkit's datasets cache, where an offline
    load finds it: built from local files (a split each) by the `json` builder, then laid out as
    datasets keeps a Hub data set (NAMESPACE___NAME/CONFIG/VERSION/HASH, its .arrow files named after
    the data set)."""
    import shutil

    import datasets

    from llmkit.runtime import datasets_cache_dir

    datasets.load_dataset("json", data_files={split: str(path) for split, path in splits.items()}, cache_dir=str(scratch))
    built = next(path for path in (scratch / "json").glob("default-*/*/*") if path.is_dir())
    target = datasets_cache_dir() / name.replace("/", "___") / "default" / built.parent.name / built.name
    shutil.copytree(built, target)
    for arrow in target.glob("json-*.arrow"):
        arrow.rename(target / arrow.name.replace("json-", f"{name.split('/')[-1]}-", 1))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real data sets folder; skip locally when absent, fail under CI."""
    if not (SHARED_DATA / "tinyshakespeare.txt").is_file():
        message = f"shared data not found at {SHARED_DATA} (set LLMKIT_SHARED_DATA)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test's llmkit/datasets cache out of the user's home and offline."""
    cache = tmp_path_factory.getbasetemp() / "llmkit-cache"
    monkeypatch.setenv("LLMKIT_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def cli():
    """Invoke the llmkit CLI in-process: cli("clean", "a.txt", "-o", "out") -> click Result."""
    from typer.testing import CliRunner

    from llmkit.cli import app
    from llmkit.errors import set_debug

    runner = CliRunner()

    def invoke(*args: str):
        set_debug(False)
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=True)

    return invoke


@pytest.fixture
def product_switch(monkeypatch):
    """product_switch(value): LLMKIT_CPU_GEMM set to `value` for the test (the switch is read once
    a process, so its cached reading is dropped now and again after the test)."""
    from llmkit.model import cpu_gemm

    def forget() -> None:
        cpu_gemm._choice.cache_clear()
        cpu_gemm._enabled.cache_clear()

    def set_to(value: str) -> None:
        monkeypatch.setenv("LLMKIT_CPU_GEMM", value)
        forget()

    yield set_to
    monkeypatch.undo()
    forget()


def interrupt_training_at(monkeypatch, step: int) -> None:
    """Every training loop in this process raises KeyboardInterrupt (a Ctrl-C) as it starts its step
    `step` (0-based, so step + 1 as the log counts), before any of it is saved."""
    from llmkit.train.loop import Trainer

    real = Trainer.train_step

    def stopped(self, at):
        if at == step:
            raise KeyboardInterrupt
        return real(self, at)

    monkeypatch.setattr(Trainer, "train_step", stopped)


def run_killed_and_resumed(command: list[str], tmp_path, progress, minimum: int):
    """A data stage three times: straight through into `straight`; into `killed`, SIGKILLed once its resume
    marker shows progress >= minimum; then again into `killed`, which must resume. Checks what every
    interrupted run owes (nothing at the output after the kill, the resume message, no partial folder
    left) and returns (straight, killed, progress at the kill, the rerun's stderr)."""
    import glob
    import subprocess

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert subprocess.run([*command, "-o", str(straight)], capture_output=True).returncode == 0
    done, _ = kill_at_marker([*command, "-o", str(killed)], str(tmp_path / ".killed.partial-*" / "resume.json"), progress, minimum)
    assert done >= minimum, "the run ended before it could be interrupted"
    assert not killed.exists()  # nothing at the output path, only the hidden partial folder
    result = subprocess.run([*command, "-o", str(killed)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resuming the interrupted run" in result.stderr
    assert not glob.glob(str(tmp_path / ".killed.partial-*"))
    return straight, killed, done, result.stderr


def kill_at_marker(command: list[str], marker_glob: str, progress, minimum: int, timeout: float = 120, signum=None,
                   stderr=None) -> tuple[int, int]:
    """Start `command`, SIGKILL it (or send `signum`) once the resume marker matching `marker_glob` shows
    `progress(state)` >= `minimum` (a data stage interrupted mid-run); returns (the progress seen then, the exit code).
    `stderr`: a file for the command's error output."""
    import glob
    import json
    import signal
    import subprocess
    import time

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL)
    deadline, seen = time.time() + timeout, 0
    while time.time() < deadline and process.poll() is None:
        markers = glob.glob(marker_glob)
        if markers:
            try:
                seen = progress(json.loads(open(markers[0]).read()))
            except (OSError, ValueError, KeyError):  # caught between two writes of the marker
                seen = 0
            if seen >= minimum:
                process.send_signal(signum or signal.SIGKILL)
                break
        time.sleep(0.01)
    return seen, process.wait()


def resign(path: Path, added: tuple[str, ...] = ()) -> None:
    """An artifact's manifest written again over files a test changed on purpose (weights a diverged
    run could have written: NaN), as the stage would have written it: every listed file's hash and
    size, then the fingerprint. (A file changed unsigned is refused as it is read, the size kept or not.)
    `added`: files the test put in, listed as the stage would have listed them."""
    import json

    from llmkit import artifacts

    manifest = json.loads((path / artifacts.MANIFEST).read_text(encoding="utf-8"))
    manifest["files"].update({name: "" for name in added})
    manifest["sizes"].update({name: 0 for name in added})
    for group in ("files", "state_files"):
        for name in manifest.get(group, {}):
            manifest[group][name] = artifacts.sha256_file(path / name)
            manifest["sizes"][name] = (path / name).stat().st_size
    manifest["fingerprint"] = artifacts.Manifest.from_dict(manifest).expected_fingerprint()
    (path / artifacts.MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
