"""`--executor ray`: the data stages on a (local) Ray instance give the artifacts this machine's
processes give, survive a killed worker, and say how to install Ray when it is missing."""

from __future__ import annotations

import json
import os
import sys

import pytest
from conftest import in_ci

from llmkit import artifacts

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]
ray = __import__("ray") if in_ci() else pytest.importorskip("ray")  # CI installs the extra


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module; the stages join it instead of starting their own."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def _documents_with_planted_near_copies(shared_data, tmp_path):
    """Shakespeare's paragraphs, with near copies of early ones planted thousands of documents later,
    so the copies fall in other batches (and other workers) than their originals."""
    paragraphs = [p.strip() for p in (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()]
    originals = [p for p in paragraphs[:400] if len(p.split()) > 60][:5]
    assert len(originals) == 5
    planted = []
    for text in originals:
        words = text.split()
        words[len(words) // 2] = "changed"  # one word: far above the near-duplicate threshold
        planted.append(" ".join(words))
    docs = paragraphs[:3000] + planted + paragraphs[3000:]
    path = tmp_path / "planted.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
    return path, planted


def test_clean_and_tokenize_on_ray_equal_the_local_executor(ray_instance, shared_data, cli, tmp_path):
    data, planted = _documents_with_planted_near_copies(shared_data, tmp_path)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert cli("clean", data, "-o", local, "--keep-rejects", "--workers", "1", "--shard-mb", "1").exit_code == 0
    result = cli("clean", data, "-o", on_ray, "--keep-rejects", "--executor", "ray", "--workers", "2", "--shard-mb", "1")
    assert result.exit_code == 0, result.output
    assert artifacts.load(on_ray).fingerprint == artifacts.load(local).fingerprint
    rejects = [json.loads(line) for line in (on_ray / "rejects.jsonl").read_text().splitlines()]
    near = {r["text"] for r in rejects if r["reason"] == "near_duplicate"}
    assert set(planted) <= near  # every planted copy found, though its original sits thousands of documents (batches) earlier
    assert (on_ray / "rejects.jsonl").read_bytes() == (local / "rejects.jsonl").read_bytes()
    assert artifacts.load(on_ray).manifest.runtime["executor"] == "ray"
    # Chinese (characters as words) and JSONL records, on both executors
    for name, extra in (("chinese.txt", ["--doc-per", "blank-line"]), ("summarization/train.jsonl", ["--text-field", "document"])):
        a, b = tmp_path / f"{name.replace('/', '-')}-local", tmp_path / f"{name.replace('/', '-')}-ray"
        assert cli("clean", shared_data / name, "-o", a, *extra).exit_code == 0
        result = cli("clean", shared_data / name, "-o", b, *extra, "--executor", "ray", "--workers", "0")
        assert result.exit_code == 0, result.output
        assert artifacts.load(b).fingerprint == artifacts.load(a).fingerprint
        # 0: one per CPU of the (2-CPU) cluster, recorded as run (on a machine too busy for the second to start
        # within START_WAIT, one, and said so: the run goes on with the workers that started)
        started = artifacts.load(b).manifest.runtime["workers"]
        assert started == 2 or started == 1 and "1 of 2 Ray workers started in time" in " ".join(result.output.split()), result.output

    tokenizer = tmp_path / "tok"
    assert cli("tokenizer", "train", local, "-o", tokenizer, "--vocab-size", "600").exit_code == 0
    tokens_local, tokens_ray = tmp_path / "tokens-local", tmp_path / "tokens-ray"
    assert cli("tokenize", local, "-t", tokenizer, "-o", tokens_local, "--batch-size", "256", "--workers", "1").exit_code == 0
    result = cli("tokenize", local, "-t", tokenizer, "-o", tokens_ray, "--batch-size", "256", "--executor", "ray", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert artifacts.load(tokens_ray).fingerprint == artifacts.load(tokens_local).fingerprint


def test_tokenizer_train_on_ray_draws_the_sample_the_local_executor_draws(ray_instance, shared_data, cli, tmp_path, monkeypatch):
    import functools

    import llmkit.tokenizer.sample as sample

    # a corpus of many row groups, and text files in many ranges: each a task a Ray actor reads itself
    corpus = tmp_path / "corpus"
    files = [shared_data / "tinyshakespeare.txt", shared_data / "chinese.txt"]
    assert cli("clean", *files, "--doc-per", "blank-line", "-o", corpus, "--shard-mb", "1").exit_code == 0
    assert len(sample.open_source([corpus]).tasks) >= 2
    monkeypatch.setattr(sample, "text_file_ranges", functools.partial(sample.text_file_ranges, max_bytes=100_000))
    for inputs in ([corpus], files):
        common = [*inputs, "--vocab-size", "800", "--sample-bytes", "400000", "--seed", "5"]
        local, on_ray = tmp_path / f"local-{len(inputs)}", tmp_path / f"ray-{len(inputs)}"
        assert cli("tokenizer", "train", *common, "-o", local).exit_code == 0
        result = cli("tokenizer", "train", *common, "-o", on_ray, "--executor", "ray", "--workers", "2")
        assert result.exit_code == 0, result.output
        assert artifacts.load(on_ray).fingerprint == artifacts.load(local).fingerprint
        assert artifacts.load(on_ray).manifest.runtime["executor"] == "ray"
        assert (on_ray / "tokenizer.json").read_bytes() == (local / "tokenizer.json").read_bytes()


def test_a_killed_worker_is_restarted_and_nothing_is_lost_or_repeated(ray_instance, tmp_path):
    from llmkit.executor import ray_ordered_map

    marker = str(tmp_path / "crashed")

    def square_or_die_once(x):  # a closure: Ray ships it by value to the workers
        import os

        if x == 7 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker process dies mid-task, as a lost node would
        return x * x

    results = list(ray_ordered_map(square_or_die_once, range(40), workers=2, address=None))
    assert os.path.exists(marker)  # it did die
    assert results == [x * x for x in range(40)]


def test_a_stage_error_in_a_worker_is_one_line(ray_instance, tmp_path, cli):
    from llmkit.errors import UserError
    from llmkit.executor import ray_ordered_map

    def refuse(x):
        raise UserError(f"item {x} is bad; fix it")

    with pytest.raises(UserError, match="item 0 is bad; fix it"):
        list(ray_ordered_map(refuse, range(3), workers=1, address=None))


def test_more_workers_than_cpus_a_worker_that_always_dies_and_other_errors_end_in_one_line(ray_instance, tmp_path, capsys):
    """More actors than CPUs would never start (their batches waited forever); a batch that kills its
    worker every time would be retried forever; any other worker error carried Ray's coloured traceback."""
    from llmkit.errors import UserError
    from llmkit.executor import ray_ordered_map

    assert list(ray_ordered_map(lambda x: x + 1, range(10), workers=8, address=None)) == list(range(1, 11))
    assert "more than the Ray cluster's 2 CPUs" in capsys.readouterr().err
    # a CPU another job holds: the actor that cannot start is left out (its batches waited forever, the stage hung)
    from llmkit import executor

    @ray.remote(num_cpus=1)
    class Holder:
        def ready(self):
            return True

    holder = Holder.remote()
    ray.get(holder.ready.remote())
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(executor, "START_WAIT", 2.0)
            started = []
            assert list(ray_ordered_map(lambda x: x * 2, range(10), workers=2, address=None, on_start=started.append)) == \
                [x * 2 for x in range(10)]
        assert started == [1] and "1 of 2 Ray workers started in time" in capsys.readouterr().err
    finally:
        ray.kill(holder)

    # workers that all set up slowly start about together: past the first, the others are waited for
    def slow_set_up():
        import time

        time.sleep(4.0)

    with pytest.MonkeyPatch.context() as patch:
        # (the others get START_WAIT after the first: 1 s was too short for the second actor's start on a loaded
        # 2-core machine, a CI run beside three reviews)
        patch.setattr(executor, "START_WAIT", 3.0)
        started = []
        assert list(ray_ordered_map(lambda x: x, range(6), workers=2, address=None, initializer=slow_set_up,
                                    on_start=started.append)) == list(range(6))
    assert started == [2] and "started in time" not in capsys.readouterr().err

    def always_dies(x):
        import os

        os._exit(1)

    from llmkit.errors import WorkerDied

    with pytest.raises(WorkerDied, match="a Ray worker died 4 times on the same batch") as died:
        list(ray_ordered_map(always_dies, range(2), workers=1, address=None))
    assert died.value.keeps_work and "rerun the command to continue" in str(died.value)  # (the partial is kept)

    def dies_at_set_up():
        import os

        os._exit(1)

    # an actor that dies while it sets up, every time, used to be restarted forever: the stage hung
    # (a cap of 1 restart here: the stage's 8 take a few seconds each)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(WorkerDied):
        patch.setattr(executor, "RESTARTS", 1)
        list(ray_ordered_map(lambda x: x, range(2), workers=1, address=None, initializer=dies_at_set_up))

    def reads_a_file(x):
        return (tmp_path / "only-on-the-driver.txt").read_text()

    # (the work done is kept for a rerun once the node sees the file: it was removed)
    with pytest.raises(UserError, match="FileNotFoundError.*every node needs the stage's inputs at the same path") as caught:
        list(ray_ordered_map(reads_a_file, range(1), workers=1, address=None))
    assert caught.value.keeps_work

    # A bug or out of memory in a worker is what it would be in a local one (it was a UserError: the partial
    # output removed, no "unexpected", no out-of-memory advice), Ray's account of the worker chained for --debug
    def fails(x):
        return {}["missing"]

    def runs_out_of_memory(x):
        raise MemoryError

    with pytest.raises(KeyError, match="missing") as caught:
        list(ray_ordered_map(fails, range(2), workers=1, address=None))
    assert "fails" in str(caught.value.__cause__)  # (the worker's traceback)
    with pytest.raises(MemoryError):
        list(ray_ordered_map(runs_out_of_memory, range(2), workers=1, address=None))


def test_executor_ray_without_ray_installed_is_a_one_line_error(shared_data, cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    out = tmp_path / "out"
    for stage in (["clean"], ["tokenizer", "train"]):
        result = cli(*stage, shared_data / "tinyshakespeare.txt", "-o", out, "--executor", "ray")
        assert result.exit_code != 0
        assert "pip install 'llmkit[ray]'" in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_an_address_with_no_cluster_behind_it_is_a_one_line_error_at_once(monkeypatch):
    """ray.init retries such an address for many minutes; the stage checks it answers first."""
    import time

    from llmkit.errors import UserError
    from llmkit.executor import connected

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh `llmkit clean` process
    monkeypatch.setattr(ray, "init", lambda **_: pytest.fail("ray.init reached with an unreachable address"))
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"cannot reach the Ray cluster at 127.0.0.1:1 \(.*\); start one"):
        with connected("127.0.0.1:1"):
            pass
    assert time.perf_counter() - started < 10
    with pytest.raises(UserError, match="is not HOST:PORT, auto or ray://HOST:PORT"):
        with connected("head-node"):
            pass
    # a wrong port with a web server behind it: ray.init waited for minutes there
    import http.server
    import socketserver
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    with socketserver.TCPServer(("127.0.0.1", 0), Quiet) as web:
        threading.Thread(target=web.serve_forever, daemon=True).start()
        started = time.perf_counter()
        with pytest.raises(UserError, match=r"answers, but not as a Ray cluster does \(it said '<!DOCTYPE"):
            with connected(f"127.0.0.1:{web.server_address[1]}"):
                pass
        assert time.perf_counter() - started < 10
        web.shutdown()
    # a Ray client address waited half a minute behind a warning
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"cannot reach the Ray cluster at ray://127.0.0.1:1 \(.*\); start one"):
        with connected("ray://127.0.0.1:1"):
            pass
    assert time.perf_counter() - started < 10


def test_a_cluster_that_turns_the_client_away_names_the_token_setting_where_a_token_is_here(monkeypatch, tmp_path):
    """A cluster started with token authentication answers, then refuses a client without the token: Ray's
    own words name neither (a review: "start one with `ray start --head`" was the advice)."""
    from llmkit import executor
    from llmkit.errors import UserError

    def turned_away(**_):
        raise ConnectionError("Failed to connect to GCS. Please check `gcs_server.out` for more details.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", turned_away)
    monkeypatch.setattr(executor, "_check_reachable", lambda address: None)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"\(Failed to connect to GCS\); start one with"):
        with executor.connected("127.0.0.1:6397"):
            pass
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("secret")
    with pytest.raises(UserError, match=r"if the cluster checks tokens, set RAY_AUTH_MODE=token"):
        with executor.connected("127.0.0.1:6397"):
            pass


def test_a_worker_that_cannot_set_up_says_why_and_an_address_needs_the_ray_executor(ray_instance, shared_data, cli, tmp_path):
    """A failing initializer killed the actor: Ray restarted it four times, then the stage blamed
    memory. --ray-address without --executor ray ran here and recorded the cluster."""
    from llmkit.errors import UserError
    from llmkit.executor import ray_ordered_map

    def missing_tokenizer(path):
        raise UserError(f"tokenizer not found at {path}")

    with pytest.raises(UserError, match=r"a Ray worker could not set up: tokenizer not found at /elsewhere; every node needs") as caught:
        list(ray_ordered_map(lambda x: x, range(3), workers=1, address=None, initializer=missing_tokenizer,
                             initargs=("/elsewhere",)))
    assert caught.value.keeps_work  # (once the node sees it, a rerun goes on: the work done was removed)
    result = cli("clean", shared_data / "tinyshakespeare.txt", "-o", tmp_path / "out", "--ray-address", "auto")
    assert result.exit_code != 0 and "--ray-address auto is for --executor ray" in result.output
    assert not (tmp_path / "out").exists()


def test_a_ray_worker_refuses_a_tokenizer_other_than_the_drivers(shared_data, tmp_path):
    """On another node the tokenizer's path may hold other files (a node-local copy, a stale cache):
    its ids would be written under the driver's tokenizer's fingerprint. Each worker checks the
    driver's digest of the files as it sets up."""
    from llmkit.executor import _Worker
    from llmkit.tokenizer.encode_corpus import _init_worker, tokenizer_digest

    (tmp_path / "book.txt").write_text((shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20_000])
    from typer.testing import CliRunner

    from llmkit.cli import app

    assert CliRunner().invoke(app, ["tokenizer", "train", str(tmp_path / "book.txt"), "--vocab-size", "300", "-o",
                                    str(tmp_path / "tok")]).exit_code == 0
    digest = tokenizer_digest(tmp_path / "tok")
    assert _Worker(_init_worker, (str(tmp_path / "tok"), True, False, 128, digest)).setup_error is None
    other = _Worker(_init_worker, (str(tmp_path / "tok"), True, False, 128, "0" * 64))
    assert "differs from the one the driver read there" in other.setup_error
    assert "every node needs the stage's inputs at the same path, with the same contents" in other.setup_error


def test_a_stage_without_an_address_starts_its_own_instance_and_removes_its_folder(tmp_path):
    """No --ray-address: a new local instance for the run (not a cluster already running here), whose
    session folder (logs, sockets) goes with it; in a fresh process, as a user's command runs."""
    import shutil
    import subprocess
    import tempfile

    (tmp_path / "notes.txt").write_text("one line of text\n\nand another paragraph here\n", encoding="utf-8")
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # (short: Ray's socket paths must fit in 107 bytes)
    try:
        result = subprocess.run([sys.executable, "-m", "llmkit", "clean", str(tmp_path / "notes.txt"), "-o", str(tmp_path / "out"),
                                 "--executor", "ray", "--workers", "1"], capture_output=True, text=True, timeout=300,
                                env=dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_ADDRESS="127.0.0.1:1"))  # (not joined)
        assert result.returncode == 0, result.stderr[-2000:]
        runtime = artifacts.load(tmp_path / "out").manifest.runtime
        assert runtime["executor"] == "ray" and runtime["ray_address"] is None
        used = os.path.join(ray_tmp, "ray")  # (Ray's folder under RAY_TMPDIR: the instance was started there)
        assert os.path.isdir(used) and not [p.name for p in os.scandir(used) if p.name.startswith("session_")], os.listdir(used)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_caller_that_stops_reading_removes_the_session_folder_and_one_that_fails_keeps_its_logs(tmp_path):
    """A full tokenizer sample closes the workers' results early: no failure, the folder goes (it
    stayed). The caller's own error closes them too: that run's logs stay, as a failed stage's do."""
    import shutil
    import subprocess
    import tempfile

    script = (
        "import os, sys\n"
        "from llmkit.executor import ray_ordered_map\n"
        "results = ray_ordered_map(abs, range(40), workers=1, address=None)\n"
        "try:\n"
        "    next(results)\n"
        "    if sys.argv[1] == 'fails':\n"
        "        raise OSError(28, 'No space left on device')\n"
        "finally:\n"
        "    results.close()\n"
    )
    for case, sessions_left in (("stops", 0), ("fails", 1)):
        ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # (short: Ray's socket paths must fit in 107 bytes)
        try:
            subprocess.run([sys.executable, "-c", script, case], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_ADDRESS="127.0.0.1:1"))
            used = os.path.join(ray_tmp, "ray")
            assert len([p for p in os.scandir(used) if p.name.startswith("session_2")]) == sessions_left, case
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)


_FAILING_IN_ITS_LOOP = {  # a full disk as the stage writes what a batch gave
    "clean": ("from llmkit.corpus import pipeline\n"
              "from llmkit.corpus.config import CleanConfig\n"
              "pipeline._Written.take = full\n"
              "run = lambda: pipeline.clean([sys.argv[1]], sys.argv[3], CleanConfig.build(executor='ray', workers=1), "
              "show_progress=False)\n"),
    "tokenize": ("from llmkit.tokenizer import encode_corpus\n"
                 "from llmkit.tokenizer.config import TokenizeConfig\n"
                 "encode_corpus.ShardWriter.write = full\n"
                 "run = lambda: encode_corpus.tokenize_corpus(sys.argv[1], sys.argv[2], sys.argv[3], "
                 "TokenizeConfig.build(executor='ray', workers=1))\n"),
}


@pytest.mark.parametrize("stage", sorted(_FAILING_IN_ITS_LOOP))
def test_a_stage_that_fails_in_its_own_loop_keeps_its_ray_logs(cli, shared_data, tmp_path, stage):
    """clean and tokenize left the workers' results to the garbage collector, which closed them after
    the failure (a full disk, SIGTERM) was handled: taken for a finished run, whose logs go."""
    import shutil
    import subprocess
    import tempfile

    (tmp_path / "book.txt").write_text((shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:30_000])
    source = tmp_path / "book.txt"
    if stage == "tokenize":
        assert cli("clean", source, "-o", tmp_path / "corpus").exit_code == 0
        assert cli("tokenizer", "train", tmp_path / "corpus", "--vocab-size", "300", "-o", tmp_path / "tok").exit_code == 0
        source = tmp_path / "corpus"
    script = ("import gc, sys\n"
              "def full(*args, **kwargs):\n"
              "    raise OSError(28, 'No space left on device')\n"
              + _FAILING_IN_ITS_LOOP[stage] +
              "try:\n"
              "    run()\n"
              "except OSError:\n"
              "    pass\n"
              "gc.collect()\n")
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # (short: Ray's socket paths must fit in 107 bytes)
    try:
        done = subprocess.run([sys.executable, "-c", script, str(source), str(tmp_path / "tok"), str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_ADDRESS="127.0.0.1:1"))
        assert done.returncode == 0, done.stderr
        used = os.path.join(ray_tmp, "ray")
        assert len([p for p in os.scandir(used) if p.name.startswith("session_2")]) == 1, done.stderr
        assert not (tmp_path / "out").exists()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.parametrize("address", ["localhost", "http://head:6379", "head:99999", "head:\u0663", ":6379", "ray://head:0"])
def test_a_malformed_ray_address_is_a_usage_error_before_any_work(cli, shared_data, tmp_path, address):
    """Found only once the output was locked and the first batch read, and exit 1; 99999 and an
    Arabic-Indic digit passed for ports."""
    result = cli("clean", shared_data / "tinyshakespeare.txt", "-o", tmp_path / "out", "--executor", "ray",
                 "--ray-address", address)
    assert result.exit_code == 2 and f"--ray-address {address} is not HOST:PORT" in result.output, result.output
    assert not (tmp_path / "out").exists()


def _python_with_its_own_ray(script: str):
    """`script` run by a fresh Python whose Ray instance is its own (never one already running here), in a
    folder removed after it."""
    import shutil
    import subprocess
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # (short: Ray's socket paths must fit in 107 bytes)
    try:
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_ADDRESS="127.0.0.1:1"))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_sigterm_reaches_the_stage_after_ray_starts_in_another_thread(tmp_path):
    """tokenizer train starts Ray from its reading thread: Ray's C handler then took SIGTERM over (a kill
    aborted the process with a C++ stack dump) and left the default action after ray.shutdown (a kill ended it
    without a word). The process's own handler is put back: it runs for a kill during the run and after it."""

    script = (
        "import os, signal, sys, threading, time\n"
        "from llmkit.executor import ray_ordered_map\n"
        "got = []\n"
        "signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))\n"
        "started, go_on = threading.Event(), threading.Event()\n"
        "def work():\n"
        "    results = ray_ordered_map(abs, range(8), workers=1, address=None)\n"
        "    next(results)\n"
        "    started.set()\n"
        "    go_on.wait()\n"
        "    list(results)\n"
        "thread = threading.Thread(target=work)\n"
        "thread.start()\n"
        "started.wait()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.5)\n"
        "print('during', got, flush=True)\n"
        "go_on.set()\n"
        "thread.join()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.5)\n"
        "print('after', got, flush=True)\n"
    )
    result = _python_with_its_own_ray(script)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.split("\n")[:2] == ["during [15]", "after [15, 15]"], result.stdout


def test_a_sigterm_while_ray_shuts_down_stops_the_stage_with_its_line(tmp_path):
    """Ray's shutdown sets SIGTERM's C action to the default midway: a kill then ended the stage without a
    word, its lock and partial folder left (a review). The stage's own action is kept in place throughout."""
    (tmp_path / "a.txt").write_text("To be, or not to be, that is the question.\n\n" * 50)
    script = (
        "import os, signal, sys, threading\n"
        "import ray\n"
        "shutdown = ray.shutdown\n"
        "def killed_midway(*args, **kwargs):\n"
        "    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()\n"
        "    return shutdown(*args, **kwargs)\n"
        "ray.shutdown = killed_midway\n"
        "from llmkit.cli import main\n"
        f"sys.argv = ['llmkit', 'clean', {str(tmp_path / 'a.txt')!r}, '-o', {str(tmp_path / 'out')!r}, '--executor', 'ray',"
        " '--workers', '1']\n"
        "main()\n"
    )
    result = _python_with_its_own_ray(script)
    assert result.returncode == 143 and "error: terminated" in result.stderr, (result.returncode, result.stderr[-2000:])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.txt"]


def test_a_signal_while_ray_starts_stops_the_stage_after_the_start(tmp_path):
    """SIGTERM late in ray.init met Ray's own handler (sys.exit(15): exit 15, no line); Ctrl-C early in it
    could land in a fork hook and be lost (the run went on). Both are held to the start's end, then raised
    as the stage's stop, with the process's handler back in place."""
    import subprocess

    script = (
        "import os, signal, sys\n"
        "import ray\n"
        "from llmkit.errors import Terminated\n"
        "from llmkit.executor import connected\n"
        "def ours(signum, frame):\n"
        "    raise Terminated()\n"
        "signal.signal(signal.SIGTERM, ours)\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # (a pytest-xdist worker's children inherit it ignored)\n"
        "finished = []\n"
        "def init(**options):\n"
        "    if sys.argv[1] == 'SIGTERM':\n"
        "        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # as Ray's start does\n"
        "    os.kill(os.getpid(), getattr(signal, sys.argv[1]))\n"
        "    sum(range(100000))\n"
        "    finished.append(True)\n"
        "ray.init = init\n"
        "try:\n"
        "    with connected(None):\n"
        "        print('went on')\n"
        "except Terminated:\n"
        "    print('terminated', finished, signal.getsignal(signal.SIGTERM) is ours)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', finished, signal.getsignal(signal.SIGTERM) is ours)\n"
    )
    for signal_name, said in (("SIGTERM", "terminated [] True"), ("SIGINT", "interrupted [True] True")):
        result = subprocess.run([sys.executable, "-c", script, signal_name], capture_output=True, text=True, timeout=120)
        assert result.stdout.strip() == said, (signal_name, result.stdout, result.stderr[-2000:])


def test_a_run_stopped_with_batches_in_flight_prints_nothing_of_rays(tmp_path):
    """The workers were killed with batches in flight, whose retries Ray announced on stdout ("(raylet) Task
    _Worker.run failed. There are 3 retries remaining", in colour even when piped): cancelled first."""

    script = (
        "import time\n"
        "from llmkit.executor import ray_ordered_map\n"
        "def slow(x):\n"
        "    time.sleep(1.5)\n"
        "    return x\n"
        "results = ray_ordered_map(slow, range(20), workers=2, address=None)\n"
        "print('first', next(results), flush=True)\n"
        "results.close()\n"
        "time.sleep(2)\n"
    )
    result = _python_with_its_own_ray(script)
    assert result.returncode == 0 and result.stdout == "first 0\n", (result.stdout, result.stderr[-2000:])


def test_a_wrong_text_field_is_told_before_ray_starts(cli, tmp_path, monkeypatch):
    """The first batch is read before any worker starts: on Ray a wrong --text-field was told after the
    instance's ~10 s start (1 s locally)."""
    import llmkit.executor

    def no_ray():
        raise AssertionError("Ray was started before the input was read")

    monkeypatch.setattr(llmkit.executor, "require_ray", no_ray)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"document": f"text number {i}"}) + "\n" for i in range(10)), encoding="utf-8")
    result = cli("clean", data, "-o", tmp_path / "c", "--text-field", "body", "--executor", "ray")
    assert result.exit_code == 1 and "no field 'body'" in result.output and "Ray was started" not in result.output, result.output
    assert not (tmp_path / "c").exists()


def test_a_node_without_the_tokenizer_or_with_another_input_file_keeps_the_work_done(tmp_path):
    """A worker whose node lacks the tokenizer (or holds another one, or another input file) is the
    node's fault, not the input's: it is a NodeFailed, whose run keeps its work for a rerun once the
    node sees the inputs. It was the stage's error, and an interrupted run's 25,854 documents went."""
    from llmkit.data.corpus import same_file
    from llmkit.executor import _Worker, _unwrap, NodeFailed
    from llmkit.tokenizer.encode_corpus import _init_worker

    missing = _Worker(_init_worker, (str(tmp_path / "not-here"), True, False, 0, "the driver's digest"))
    with pytest.raises(NodeFailed, match="the tokenizer at .*not-here is not found on this node; every node needs") as caught:
        _unwrap(missing.run(abs, -1))
    assert caught.value.keeps_work
    (tmp_path / "shard.bin").write_bytes(b"x" * 10)
    worker = _Worker(None, ())
    assert _unwrap(worker.run(lambda item: same_file(*item), (str(tmp_path / "shard.bin"), 10))) is None
    with pytest.raises(NodeFailed, match="holds 10 bytes here where the driver planned its reading on 12"):
        _unwrap(worker.run(lambda item: same_file(*item), (str(tmp_path / "shard.bin"), 12)))


def test_processes_left_holding_this_runs_ray_session_are_stopped(tmp_path):
    """A SIGTERM in a local Ray instance's start left its dashboard and runtime-env agents running after
    ray.shutdown (about 180 MB, deaf to SIGTERM): Ray's processes holding files of that very session
    folder are killed; another folder's (a `ray start` cluster whose folder was named after a process
    id since reused), and a process of another name reading the session's logs, are left alone."""
    import subprocess
    import time

    from llmkit.executor import _kill_leftovers

    def holding(folder, name):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.out").touch()
        code = f"f = open({str(folder / (name + '.out'))!r}); import time; time.sleep(60)"
        return subprocess.Popen(["bash", "-c", f'exec -a "{name}" {sys.executable} -c "{code}"'])

    ours = tmp_path / "session_2026-12-06_23-59-16_636284_4242" / "logs"
    agent = holding(ours, "ray::DashboardAgent")
    reader = holding(ours, "tail")
    other = holding(tmp_path / "session_2026-12-06_21-00-00_000001_4242" / "logs", "ray::RuntimeEnvAgent")
    try:
        time.sleep(1)  # (all have opened their file)
        _kill_leftovers(ours.parent)
        assert agent.wait(timeout=10) == -9 and reader.poll() is None and other.poll() is None
    finally:
        for process in (agent, reader, other):
            process.kill()
            process.wait()


_CLUSTER_WHOSE_NODES_IMPORT = """
import sys, ray
from llmkit.errors import UserError
from llmkit.executor import ray_ordered_map
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
         runtime_env={"env_vars": {"PYTHONPATH": sys.argv[1]}})
try:
    print(list(ray_ordered_map(str.upper, ["a", "b"], workers=1, address=None)))
except UserError as exc:
    print("refused:", exc)
"""


@pytest.mark.parametrize("node_has", ["no llmkit", "another llmkit", "another ftfy"])
def test_a_node_without_llmkit_or_with_other_llmkit_code_is_refused_before_any_work(tmp_path, node_has):
    """Ray sends workers only references to llmkit's code, which each node imports from its own Python:
    without llmkit every worker failed as it started (Ray's tracebacks, about 100 lines, then advice
    about memory), and with another llmkit the work would be done by other code under this run's
    fingerprint; and with other versions of the libraries the work computes with (ftfy's repairs), other
    results under the versions the manifest records, the driver's. The nodes' Python here is this one's,
    with PYTHONPATH putting another llmkit (or another ftfy's metadata) first."""
    import shutil
    import subprocess

    import llmkit

    other = tmp_path / "node_path" / "llmkit"
    if node_has == "another ftfy":
        (other.parent / "ftfy-0.0.1.dist-info").mkdir(parents=True)
        (other.parent / "ftfy-0.0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: ftfy\nVersion: 0.0.1\n")
    elif node_has == "no llmkit":
        other.mkdir(parents=True)
        (other / "__init__.py").write_text("raise ImportError(\"No module named 'llmkit'\")\n")
    else:
        shutil.copytree(os.path.dirname(llmkit.__file__), other, ignore=shutil.ignore_patterns("__pycache__"))
        with open(other / "executor.py", "a", encoding="utf-8") as source:
            source.write("# a change on the node\n")
    result = subprocess.run([sys.executable, "-c", _CLUSTER_WHOSE_NODES_IMPORT, str(other.parent)], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)  # (Ray puts the driver's folder first on its workers' path)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout.strip()
    if node_has == "no llmkit":
        assert out.startswith("refused: the Ray node at ") and "cannot import llmkit (ImportError: No module named 'llmkit'" in out, out
        assert "install this llmkit" in out, out
    elif node_has == "another llmkit":
        assert out.startswith("refused: the Ray node at ") and f"runs other llmkit code (0.1.0, in {other})" in out, out
    else:
        from importlib import metadata

        assert out.startswith("refused: the Ray node at ") and "computes with other versions than this driver: ftfy 0.0.1 " \
            f"(this driver: {metadata.version('ftfy')})" in out, out
    assert "Traceback" not in result.stderr and "retries" not in result.stderr, result.stderr[-2000:]


def test_nodes_running_this_llmkit_do_the_work(tmp_path):
    """The same PYTHONPATH trick with this very llmkit: nothing refused."""
    import subprocess

    import llmkit

    result = subprocess.run([sys.executable, "-c", _CLUSTER_WHOSE_NODES_IMPORT, os.path.dirname(os.path.dirname(llmkit.__file__))],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "['A', 'B']", (result.stdout, result.stderr[-2000:])
