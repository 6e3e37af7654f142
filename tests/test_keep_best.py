"""`--keep-best`: the weights of a run's lowest validation loss, written beside it as RUN/best."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import built_once, small_play_tokens
from llmkit import artifacts
from test_average import MODEL, _ok, _weights  # (the averaging tests' small model and helpers)

RUN = ["--max-steps", "8", "--batch-tokens", "512", "--micro-batch", "8", "--eval-every", "2", "--save-every", "2",
       "--keep-last", "0"]


def _same_weights(a, b) -> bool:
    first, second = _weights(a), _weights(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.fixture(scope="module")
def data(tmp_path_factory, shared_data):
    return built_once(tmp_path_factory, "play-tokens", lambda root: small_play_tokens(root, shared_data))


def _scripted_validation(monkeypatch, losses):
    """Validation losses in the order given (a real run's fall steadily, so its best is its last)."""
    from llmkit.train.loop import Trainer

    given = iter(losses)
    real = Trainer.evaluate

    def evaluate(self):
        real(self)  # (the real pass too: its cost and side effects stay)
        return next(given)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)


def test_the_best_checkpoint_holds_the_weights_of_the_lowest_validation_loss(cli, data, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [3.0, 2.0, 2.5, 2.0])  # (a tie keeps the earlier step)
    run = tmp_path / "run"
    said = _ok(cli("pretrain", data / "tokens", "-o", run, *MODEL, *RUN, "--keep-best")).output
    assert f"{run / 'best'}: --keep-best's weights of the lowest validation loss" in " ".join(said.split())  # named, or no one finds it
    best = artifacts.load(run / "best", kind="checkpoint")
    assert best.stats["step"] == 4 and best.stats["val_loss"] == 2.0 and best.stats["val_step"] == 4
    assert best.stats["val_ppl"] == pytest.approx(7.389056, rel=1e-6)
    assert _same_weights(run / "best", run / "checkpoints" / "step_0000004")
    assert not _same_weights(run / "best", run)
    assert best.recorded_input("run").fingerprint == artifacts.load(run).fingerprint
    assert best.config["keep_best"] is True and "after step 4" in best.config["weights"]
    # beside the run, which is the same run with or without it
    monkeypatch.undo()
    plain = tmp_path / "plain"
    _ok(cli("pretrain", data / "tokens", "-o", plain, *MODEL, *RUN))
    assert artifacts.load(plain).fingerprint == artifacts.load(run).fingerprint and not (plain / "best").exists()


def test_a_real_run_whose_loss_falls_keeps_its_final_weights_as_best(cli, data, tmp_path):
    run = tmp_path / "run"
    _ok(cli("pretrain", data / "tokens", "-o", run, *MODEL, *RUN, "--keep-best"))
    val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = {row["step"]: row["val_loss"] for row in val if "val_loss" in row}
    assert sorted(losses) == [2, 4, 6, 8]
    step = min(losses, key=lambda s: (losses[s], s))
    best = artifacts.load(run / "best", kind="checkpoint")
    assert best.stats["step"] == step and best.stats["val_loss"] == losses[step]
    assert _same_weights(run / "best", run if step == 8 else run / "checkpoints" / f"step_{step:07d}")
    # two processes (the copy kept by the first alone) write the same best
    two = tmp_path / "two"
    _ok(cli("pretrain", data / "tokens", "-o", two, *MODEL, *RUN, "--keep-best", "--nproc", "2"))
    assert _same_weights(two / "best", run / "best") and artifacts.load(two / "best").stats["step"] == step


def test_keep_best_resumes_from_the_saved_best(cli, data, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [3.0, 2.0, 2.5, 2.4])
    whole = tmp_path / "whole"
    _ok(cli("pretrain", data / "tokens", "-o", whole, *MODEL, *RUN, "--keep-best"))
    # stopped after step 6 (its best at 4, which the step-6 state holds) and resumed
    monkeypatch.undo()
    _scripted_validation(monkeypatch, [2.4])
    resumed = tmp_path / "resumed"
    shutil.copytree(whole / "checkpoints" / "step_0000006", resumed / "checkpoints" / "step_0000006")
    lines = (whole / "metrics.jsonl").read_text().splitlines()[:6]
    (resumed / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    result = _ok(cli("pretrain", data / "tokens", "-o", resumed, *MODEL, *RUN, "--keep-best", "--resume"))
    assert "resumed from step 6" in result.output
    assert artifacts.load(resumed / "best").stats["step"] == 4
    assert _same_weights(resumed / "best", whole / "best") and _same_weights(resumed / "best", whole / "checkpoints" / "step_0000004")
    # the flag is the run's own, as --ema is: dropped or added on resume, refused
    for flags, said in (([], "--keep-best -> --no-keep-best"),):
        refused = cli("pretrain", data / "tokens", "-o", resumed, *MODEL, *RUN[:1], "10", *RUN[2:], *flags, "--resume")
        assert refused.exit_code == 1 and said in refused.output, refused.output
    # more validation text on resume: each loss would be compared with losses of less text (a review): refused
    again = cli("pretrain", data / "tokens", "-o", resumed, *MODEL, *RUN[:1], "10", *RUN[2:], "--keep-best", "--eval-tokens",
                "4096", "--resume")
    said = " ".join(again.output.split())
    assert again.exit_code == 2 and "--eval-tokens 4096 is not the run's" in said and "--keep-best compares each" in said, said
    monkeypatch.undo()
    plain = tmp_path / "plain"
    _ok(cli("pretrain", data / "tokens", "-o", plain, *MODEL, *RUN[:1], "2", *RUN[2:]))
    refused = cli("pretrain", data / "tokens", "-o", plain, *MODEL, *RUN, "--keep-best", "--resume")
    assert refused.exit_code == 1 and "--no-keep-best -> --keep-best" in refused.output, refused.output


@pytest.mark.parametrize("option,flags,fraction,said", [
    (["--keep-best"], ["--eval-every", "0"], None,
     "--keep-best keeps the weights of the lowest validation loss, and --eval-every 0 never validates"),
    (["--keep-best"], [], "0", "--keep-best keeps the weights of the lowest validation loss, and this run has no validation data"),
    # --patience (tests/test_early_stopping.py) counts validations: refused alike
    (["--patience", "2"], ["--eval-every", "0"], None, "--patience 2 counts validations, and --eval-every 0 never validates"),
    (["--patience", "2"], [], "0", "--patience 2 counts validations, and this run has no validation data"),
])
def test_options_that_read_validations_are_refused_without_them(cli, data, tmp_path, option, flags, fraction, said):
    tokens = data / "tokens"
    if fraction is not None:
        tokens = tmp_path / "tokens"
        _ok(cli("tokenize", data / "corpus", "-t", data / "tok", "-o", tokens, "--val-fraction", fraction))
    result = cli("pretrain", tokens, "-o", tmp_path / "out" / "run", *MODEL, *RUN, *flags, *option)
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and said in lines[-1] and "Traceback" not in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_a_lora_classifiers_best_is_merged_and_scores_as_it_validated(cli, data, tmp_path, shared_data):
    """LoRA's step checkpoints hold adapters; RUN/best holds merged weights, which eval scores (by default
    with a classifier's metrics) exactly as the run's validation did at that step."""
    base = tmp_path / "base"
    _ok(cli("pretrain", data / "tokens", "-o", base, *MODEL, "--max-steps", "2", "--batch-tokens", "512", "--micro-batch", "8"))
    rows = [json.loads(line) for line in (shared_data / "sentiment" / "train.jsonl").read_text().splitlines()]
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:96]))
    val.write_text("".join(json.dumps(r) + "\n" for r in rows[96:144]))
    run = tmp_path / "cls"
    _ok(cli("finetune", base, "--task", "classify", "--data", train, "--val-data", val, "-o", run, "--lora-rank", "4",
            "--max-steps", "6", "--batch-size", "16", "--micro-batch", "16", "--eval-every", "2", "--keep-best", "--truncate",
            "--lr", "3e-2"))
    history = [json.loads(line) for line in (run / "val_metrics.jsonl").read_text().splitlines()]
    chosen = min(history, key=lambda row: (row["val_loss"], row["step"]))
    best = artifacts.load(run / "best", kind="checkpoint")
    assert best.stats["step"] == chosen["step"] and best.stats["val_accuracy"] == chosen["val_accuracy"]
    assert not any(k.endswith((".lora_A", ".lora_B")) for k in _weights(run / "best"))
    result = _ok(cli("eval", run / "best", "--data", val, "-o", tmp_path / "eval"))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(chosen["val_accuracy"], abs=1e-9)
    assert metrics["f1"] == pytest.approx(chosen["val_f1"], abs=1e-9), result.output
