"""Every benchmark script runs, at its smallest size, and prints its comparison.

Not timings (benchmarks are not timed tests): each script must still run end to end as
documented, its sides must agree where the script checks them (the same final loss, the same
tokens, the same tensors), and it must print the paired ratio its doc page quotes.
benchmarks/finetune.py is run by tests/test_lora.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

SCRIPTS = {
    "pretrain": (["--steps", "3", "--warmup", "1", "--rounds", "1", "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
                  "--seq", "32", "--batch", "4", "--vocab", "512", "--no-hf", "--threads", "1", "--profile"],
                 [r"paired ratio, median", r"llmkit MKL", r"same work .* agree within 0.0001 relative", r"^nanoGPT-style, profiled \(3 steps", r"^\s+[\d.]+ ms\s+x\d+\s+aten::mm"]),
    "generate": (["--preset", "tiny", "--new-tokens", "8", "--repeats", "2", "--batches", "1,3"],
                 [r"^\s+1\s.*rows", r"^\s+3\s.*3/3 rows", r"paired median"]),
    "clean": (["--mb", "1", "--rounds", "1", "--skip-scaling"],
              [r"speed ratio llmkit / datatrove, paired median", r"^kept documents: llmkit \d+, datatrove \d+"]),
    # (the baseline is HEAD's llmkit/: the same clean output as this tree's unless llmkit/ has uncommitted changes to it)
    "dedup": (["--mb", "0.5", "--docs", "2000", "--index-docs", "2560", "--rounds", "1", "--baseline", "HEAD"],
              [r"MB per million documents", r"speed-up new/old: .*same fingerprint"]),
    "eval": (["--preset", "tiny", "--docs", "2", "--doc-chars", "2000", "--rounds", "1", "--context", "64"],
             [r"paired median", r"log-likelihoods agree"]),
    "artifacts": (["--preset", "tiny", "--rounds", "1", "--vocab-size", "512"],
                  [r"average: both sides wrote the same tensors", r"export: both sides wrote the same \d+ tensors",
                   r"import: both sides read the same \d+ tensors", r"paired median"]),
    "tokenizer": (["--vocab-size", "1024", "--scale", "1", "--rounds", "1", "--repeat", "1"],
                  [r"llmkit / tiktoken, paired median", r"^  the same ids: llmkit's train and val shards"]),
    "scaling": (["--grid", "coarse", "--bootstrap", "2", "--rounds", "1"],
                [r"speed ratio llmkit / scipy, paired median", r"relative difference"]),
    "parallel": (["--model", "tiny", "--seq-len", "32", "--batch-tokens", "256", "--micro-batch", "4", "--steps", "2",
                  "--rounds", "1", "--layouts", "one,pp"],  # (dp, tp: flags alone, the suite's own)
                 [r"^1 process ", r"^pp 2 ", r"^last losses agree with one process's within 1e-05 relative"]),
}


def _run(command: list[str], shared_data: Path, cwd: Path = REPO, **env) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=600,
                          env=dict(os.environ, LLMKIT_SHARED_DATA=str(shared_data), **env))


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_benchmark_script_runs_and_compares(name, shared_data, tmp_path):
    flags, expected = SCRIPTS[name]
    if name == "pretrain":
        flags = [*flags, "--cache", str(tmp_path / "cache")]
    result = _run([sys.executable, str(REPO / "benchmarks" / f"{name}.py"), *flags], shared_data)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for pattern in expected:
        assert re.search(pattern, result.stdout, re.MULTILINE), f"{pattern!r} not in:\n{result.stdout[-3000:]}"
    if name == "pretrain":  # the same initial weights and batches: every side ends at the same loss
        losses = [float(v) for v in re.search(r"^final loss\s+(.*)$", result.stdout, re.MULTILINE).group(1).split()]
        assert len(losses) == 4 and max(losses) - min(losses) < 1e-3, losses  # llmkit, its MKL side, usual sums, nanoGPT
    if name == "clean":  # the ratio compares like work only while both sides keep about the same documents
        ours, theirs = map(int, re.search(r"^kept documents: llmkit (\d+), datatrove (\d+)", result.stdout, re.MULTILINE).groups())
        assert abs(ours - theirs) <= 0.05 * theirs, (ours, theirs)
    if name == "dedup":  # every input's clean run, old and new trees alike
        assert result.stdout.count("same fingerprint") == 3 and "FINGERPRINTS DIFFER" not in result.stdout, result.stdout[-3000:]


def test_gpu_check_refuses_an_unknown_step(tmp_path):
    script = REPO / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=REPO,
                            env=dict(os.environ, STEPS="env falsh", WORK=str(tmp_path / "w"), OUT=str(tmp_path / "o")))
    assert result.returncode == 2 and "unknown step 'falsh'" in result.stderr
    assert not (tmp_path / "w").exists()


def test_gpu_check_prepares_on_a_cpu_then_resumes_without_the_data(shared_data, tmp_path):
    """The flow a device session follows, on a CPU: `prepare` builds gpu-work/ from the shared
    data; a call then runs with no data set at hand and returns its summary and logs in $OUT; a
    second call skips what is done. (The steps themselves run in SMOKE mode on a CPU too, but at
    a minute or more: not in CI.)"""
    script = str(REPO / "benchmarks" / "gpu_check.sh")
    env = dict(SMOKE="1", PY=sys.executable, WORK=str(tmp_path / "work"), OUT=str(tmp_path / "out"))
    prepared = _run(["bash", script, "prepare"], shared_data, **env)
    assert prepared.returncode == 0, prepared.stdout[-3000:]
    first = _run(["bash", script], tmp_path / "no-data", **dict(env, STEPS="env flash"))
    assert first.returncode == 0, first.stdout[-4000:]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "step env: rc=0" in summary and "step flash: rc=0" in summary
    assert (tmp_path / "out" / "logs.tar.gz").is_file()
    again = _run(["bash", script], tmp_path / "no-data", **dict(env, STEPS="env flash"))
    assert again.returncode == 0 and "=== flash: done in an earlier call" in again.stdout
