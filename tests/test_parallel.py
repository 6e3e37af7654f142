"""The ordered parallel map of the data stages: input order, bounded, and a clear error when workers cannot start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO
from llmkit.parallel import ordered_map

_SEEN = []


def _square(x: int) -> int:
    return x * x


def _signals_left_to_the_parent(_) -> tuple[bool, bool]:
    import signal

    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN, signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: ordered_map runs the items in this process")
def test_a_worker_leaves_ctrl_c_and_sigterm_to_the_parent():
    """A group's SIGTERM (`timeout`, a scheduler) killed the workers mid-result: 3 of 20 stopped
    cleans then hung after their error line, the pool's reader waiting for the rest of a message."""
    assert list(ordered_map(_signals_left_to_the_parent, [0, 1], workers=2)) == [(True, True), (True, True)]


def _signals_blocked(_) -> bool:
    import signal

    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return signal.SIGINT in blocked or signal.SIGTERM in blocked


def _blocked_at_start(_) -> bool:
    from llmkit.parallel import _spawned_with_ctrl_c_blocked

    with _spawned_with_ctrl_c_blocked():
        return _signals_blocked(None)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: ordered_map runs the items in this process")
def test_a_worker_starts_with_ctrl_c_blocked_and_the_parent_keeps_it():
    """A terminal's Ctrl-C reaches the whole group: one landing in a worker's start-up (before it
    ignores the signal) killed it with a traceback and broke the pool, reported as workers that
    could not start. Workers are spawned with the signals blocked (what the block around a submit
    does, checked here) and unblock them once they ignore them (a process a worker starts may handle
    them); the parent's mask is as before."""
    assert _blocked_at_start(None)
    assert list(ordered_map(_signals_left_to_the_parent, [0, 1], workers=2)) == [(True, True), (True, True)]
    assert list(ordered_map(_signals_blocked, [0, 1, 2, 3], workers=2)) == [False] * 4
    assert not _signals_blocked(None)


def _remember(tag: str) -> None:
    _SEEN.append(tag)


def test_results_in_input_order_for_any_worker_count():
    items = list(range(50))
    expected = [x * x for x in items]
    assert list(ordered_map(_square, iter(items), workers=1)) == expected
    assert list(ordered_map(_square, iter(items), workers=2)) == expected


def test_threads_keep_input_order_and_bound_the_items_in_flight():
    """threads=True: the initializer runs once, here; slow early items still come back first; the
    input is not read ahead by more than 2 x workers items."""
    import threading
    import time

    _SEEN.clear()
    read, names = [], set()

    def items():
        for x in range(40):
            read.append(x)
            yield x

    def slow_square(x: int) -> int:
        names.add(threading.current_thread().name)
        time.sleep(0.02 if x % 3 == 0 else 0.0)
        return x * x

    results = []
    for n, result in enumerate(ordered_map(slow_square, items(), workers=3, threads=True, initializer=_remember,
                                           initargs=("once",))):
        results.append(result)
        assert len(read) <= n + 1 + 2 * 3
    assert results == [x * x for x in range(40)]
    assert _SEEN == ["once"] and len(names) > 1 and all(name.startswith("llmkit-worker") for name in names)


def test_on_start_is_told_how_many_workers_do_the_work(monkeypatch):
    """What the manifests record as `workers`: the count after the limits, at most one per core,
    and 1 where everything runs in this process (0 or 1)."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    told = []
    for workers, threads in ((0, False), (1, False), (2, True), (9, True)):
        assert list(ordered_map(_square, range(5), workers=workers, threads=threads, on_start=told.append)) == [0, 1, 4, 9, 16]
    assert told == [1, 1, 2, 2]


def test_the_initializer_runs_here_with_one_worker():
    _SEEN.clear()
    assert list(ordered_map(_square, [3], workers=1, initializer=_remember, initargs=("here",))) == [9]
    assert _SEEN == ["here"]


def test_clean_in_a_script_without_main_guard_fails_in_one_line(tmp_path, shared_data):
    """Spawned workers re-import the script; without the guard they cannot start. Both data stages share the map,
    so clean reports it as tokenize does instead of restarting workers forever."""
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        from llmkit.corpus import pipeline
        from llmkit.corpus.config import CleanConfig
        pipeline.clean([{str(shared_data / 'tinyshakespeare.txt')!r}], {str(tmp_path / 'out')!r},
                       CleanConfig(workers=2, doc_per="blank-line"), show_progress=False)
    """))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode != 0
    assert "if __name__ == \"__main__\":" in proc.stderr
    assert not (tmp_path / "out").exists()


_SCRIPT = """
import os, sys, time
from llmkit.parallel import ordered_map

def slow(i):
    time.sleep(0.5)
    return os.getpid()

if __name__ == "__main__":
    try:
        for pid in ordered_map(slow, range(1000), workers=2):
            print(pid, flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
"""


def _start(tmp_path):
    import signal
    import subprocess

    script = tmp_path / "slow_map.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # Ctrl-C must reach the script: a suite started in the background by a shell without job control
    # (nohup, `cmd &` in a script) has SIGINT ignored, which a child inherits (the test then hung 60 s)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    pids = set()
    while len(pids) < 2:
        pids.add(int(proc.stdout.readline()))
    return proc, pids


def _gone(pid: int, seconds: float) -> bool:
    import time

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
            if open(f"/proc/{pid}/stat").read().split()[2] == "Z":
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.1)
    return False


def test_workers_end_with_a_killed_parent(tmp_path):
    import signal

    proc, workers = _start(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert all(_gone(pid, 10) for pid in workers), "workers outlived their parent"


def test_ctrl_c_stops_the_workers_without_their_tracebacks(tmp_path):
    import signal

    proc, workers = _start(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends: the whole process group
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in stderr and "interrupted" in stderr, stderr
    assert all(_gone(pid, 10) for pid in workers)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir() or (os.cpu_count() or 1) < 2, reason="reads /proc; needs 2 cores")
def test_two_ctrl_cs_while_the_workers_start_end_the_command(tmp_path, shared_data):
    """A second Ctrl-C during the pool's shutdown left its idle workers waiting for sentinels never
    sent, and the command's exit joining them forever (8 of 27 tries hung, signals 50 ms apart while
    the workers started)."""
    import signal
    import time

    for attempt in range(2):
        out = tmp_path / f"out{attempt}"
        command = [sys.executable, "-m", "llmkit", "clean", str(shared_data / "tinyshakespeare.txt"),
                   str(shared_data / "chinese.txt"), "-o", str(out), "--workers", "2", "--doc-per", "line"]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                                env=dict(os.environ, PYTHONPATH=str(REPO)), start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while not _children(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)  # until the first worker is being spawned
        for _ in range(2):
            try:
                os.killpg(proc.pid, signal.SIGINT)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail("the command hung after two Ctrl-Cs")
        assert proc.returncode != 0 and not out.exists()


def _dies_on_five(i):
    if i == 5:
        os._exit(1)  # as the out-of-memory killer ends a process
    return i


def test_a_worker_that_dies_mid_run_is_named_and_keeps_the_partial_output():
    from llmkit.errors import WorkerDied

    seen = []
    with pytest.raises(WorkerDied, match="a worker process died after .* batch") as caught:
        for value in ordered_map(_dies_on_five, range(40), workers=2):
            seen.append(value)
    assert seen == list(range(len(seen))) and 0 < len(seen) < 40
    assert caught.value.keeps_work  # (so a rerun continues: llmkit.outputs keeps .OUT.partial-KEY)


def test_a_worker_death_while_another_writes_a_large_result_ends_the_stage():
    """The pool's shutdown stops the other workers with SIGTERM, which they ignore (the parent stops the
    pool), and joins them: one blocked writing a result larger than a pipe, which nobody read any more,
    never ended, and the command hung (2 of 3 tries of clean --workers 2 with a worker killed)."""
    script = "import sys; sys.path.insert(0, sys.argv[1]); import worker_probes; worker_probes.run_until_a_worker_dies()"
    for _ in range(3):
        ended = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent)], capture_output=True, text=True,
                               timeout=120)
        assert ended.returncode == 0 and "died: a worker process died after" in ended.stdout, ended.stdout + ended.stderr


def test_a_worker_that_dies_while_sending_its_own_result_ends_the_stage():
    """The pool's reader waited for the rest of the half-sent message forever (its own copy of the pipe's
    write end kept it open): the stage hung, 3 of 3 tries on Python 3.11 and 3.13."""
    script = "import sys; sys.path.insert(0, sys.argv[1]); import worker_probes; worker_probes.run_until_a_worker_dies_mid_send()"
    ended = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent)], capture_output=True, text=True,
                           timeout=120)
    assert ended.returncode == 0 and "died: a worker process died after" in ended.stdout, ended.stdout + ended.stderr


def test_a_ctrl_c_after_such_a_death_ends_the_command_without_a_thread_traceback():
    """A Ctrl-C before the wait gave up on the pool left the pool's shutdown waiting on the stuck reader; and
    futures cancelled before the pool broke made its manager thread print an InvalidStateError traceback."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import worker_probes; "
              "worker_probes.interrupt_after_a_worker_dies_mid_send()")
    ended = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent)], capture_output=True, text=True,
                           timeout=120, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # (a runner may ignore it)
    assert "ended:" in ended.stdout and "Exception in thread" not in ended.stderr, ended.stdout + ended.stderr


def _killed_on_the_first_item(i):
    import signal

    os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer does, before any result


def test_a_worker_killed_on_its_first_item_died_and_did_not_fail_to_start():
    """No result came back, yet the worker had started: a death to rerun after (the partial output kept),
    not the message for a script without a __main__ guard (the partial output removed)."""
    from llmkit.errors import WorkerDied

    with pytest.raises(WorkerDied, match="a worker process died after 0 batch") as caught:
        list(ordered_map(_killed_on_the_first_item, range(4), workers=2))
    assert caught.value.keeps_work


def test_ctrl_c_waits_until_the_pool_call_ends():
    """A KeyboardInterrupt raised inside concurrent.futures between a lock's acquire and its `with`
    left the lock held: the pool's manager thread blocked on it and the command hung on exit
    (caught under load: 2 % of runs with a narrowed switch interval). Calls into the pool now take
    Ctrl-C (and SIGTERM) when they end."""
    import signal

    from llmkit.parallel import _ctrl_c_deferred

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # (a test worker's own may differ)
    try:
        reached = []
        with pytest.raises(KeyboardInterrupt):
            with _ctrl_c_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                reached.append("the end of the block")
        assert reached == ["the end of the block"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with _ctrl_c_deferred():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # ignored stays ignored
    finally:
        signal.signal(signal.SIGINT, previous)
