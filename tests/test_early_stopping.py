"""`--patience N`: a run stops once its validation loss has not gone below the lowest so far (by
more than --min-delta) for N validations in a row, and a resume stops (or trains on) where an
uninterrupted run would."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import built_once, small_play_tokens
from llmkit import artifacts
from test_average import MODEL, _ok
from test_keep_best import _same_weights, _scripted_validation

RUN = ["--max-steps", "12", "--batch-tokens", "512", "--micro-batch", "8", "--eval-every", "2", "--save-every", "2",
       "--keep-last", "0"]
# validations at steps 2, 4, 6, 8, ...: the lowest at step 4, then two without a lower loss (a tie is none)
LOSSES = [3.0, 2.0, 2.5, 2.0, 1.0, 0.5]


@pytest.fixture(scope="module")
def data(tmp_path_factory, shared_data):
    return built_once(tmp_path_factory, "play-tokens", lambda root: small_play_tokens(root, shared_data))


@pytest.fixture(scope="module")
def whole_run(data, tmp_path_factory):
    """The same run without --patience: all 12 steps, a checkpoint every 2."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    def train(root):
        result = CliRunner().invoke(app, [str(a) for a in ("pretrain", data / "tokens", "-o", root / "run", *MODEL, *RUN)])
        assert result.exit_code == 0, result.output

    return built_once(tmp_path_factory, "patience-whole-run", train) / "run"


def test_a_run_stops_after_patience_validations_without_a_lower_loss(cli, data, whole_run, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, LOSSES)
    run = tmp_path / "run"
    said = " ".join(_ok(cli("pretrain", data / "tokens", "-o", run, *MODEL, *RUN, "--patience", "2", "--keep-best")).output.split())
    assert "stopped early at step 8: the validation loss has not gone below 2.0000 (step 4) for 2 validations (--patience 2)" in said
    stats = artifacts.load(run, kind="checkpoint").stats
    assert stats["step"] == 8 and stats["val_step"] == 8 and stats["val_loss"] == 2.0
    assert stats["stopped_early"] == {"patience": 2, "best_step": 4, "best_val_loss": 2.0, "validations_since_best": 2}
    # the weights of step 8 of the same schedule (over 12 steps): the run stopped, it did not shorten
    assert _same_weights(run, whole_run / "checkpoints" / "step_0000008")
    assert _same_weights(run / "best", whole_run / "checkpoints" / "step_0000004")
    assert not (run / "checkpoints" / "step_0000010").exists()
    assert "stopped_early" not in artifacts.load(whole_run).stats
    from llmkit.inspect_view import _headline  # (inspect's and report's)

    assert "step 8 of 12 (stopped early: the lowest val_loss 2.0000 at step 4)" in _headline(artifacts.load(run))


def test_a_stopped_run_resumes_as_stopped_and_trains_on_with_a_larger_patience(cli, data, whole_run, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, LOSSES)
    run = tmp_path / "run"
    _ok(cli("pretrain", data / "tokens", "-o", run, *MODEL, *RUN, "--patience", "2"))
    stopped = artifacts.load(run).fingerprint
    said = " ".join(_ok(cli("pretrain", data / "tokens", "-o", run, *MODEL, *RUN, "--patience", "2", "--resume")).output.split())
    assert "the run ends at step 8 already" in said and "give a --patience above 2, or 0, to train further" in said
    assert artifacts.load(run).fingerprint == stopped
    # a larger patience goes on from step 8 to the end: the run an uninterrupted one makes
    monkeypatch.undo()
    said = " ".join(_ok(cli("pretrain", data / "tokens", "-o", run, *MODEL, *RUN, "--patience", "9", "--resume")).output.split())
    assert "resumed from step 8" in said
    resumed = artifacts.load(run)
    assert resumed.stats["step"] == 12 and "stopped_early" not in resumed.stats
    assert resumed.fingerprint == artifacts.load(whole_run).fingerprint


def test_a_resume_with_a_smaller_patience_stops_at_once(cli, data, tmp_path, monkeypatch):
    """A run killed after more validations without a lower loss than the resumed --patience allows
    ends at the checkpoint it resumes from (its earlier steps cannot be trained again)."""
    _scripted_validation(monkeypatch, LOSSES)
    run = tmp_path / "run"
    _ok(cli("pretrain", data / "tokens", "-o", run, *MODEL, *RUN[:1], "8", *RUN[2:]))  # 8 steps: 2 validations since step 4
    (run / artifacts.MANIFEST).unlink()  # (as if killed after its step-8 checkpoint)
    said = " ".join(_ok(cli("pretrain", data / "tokens", "-o", run, *MODEL, *RUN, "--patience", "1", "--resume")).output.split())
    assert "stopped early at step 8" in said
    final = artifacts.load(run)
    assert final.stats["step"] == 8 and final.stats["stopped_early"]["validations_since_best"] == 2
    assert _same_weights(run, run / "checkpoints" / "step_0000008")


def test_min_delta_counts_only_drops_larger_than_it_and_a_slow_drift_adds_up():
    """Keras' and Lightning's rule: a loss counts as lower only below the last counted one less
    --min-delta; the lowest loss (where the best weights are) is still the lowest."""
    from types import SimpleNamespace

    from llmkit.train.early_stop import ValidationStall

    stall = ValidationStall()
    for step, loss in enumerate([3.0, 2.0, 1.95, 1.92], start=1):
        stall.record(loss, 2 * step)
    rule = SimpleNamespace(patience=2, min_delta=0.1)
    assert stall.stops(rule) and not stall.stops(SimpleNamespace(patience=2, min_delta=0.0))
    assert stall.best == (8, 1.92)
    assert stall.stopped_record(rule) == {"patience": 2, "best_step": 8, "best_val_loss": 1.92, "validations_since_best": 0,
                                          "min_delta": 0.1, "improved_step": 4, "improved_val_loss": 2.0,
                                          "validations_since_improved": 2}
    assert stall.reason(rule) == ("the validation loss has not gone below 1.9000 (step 4's 2.0000 less --min-delta 0.1) for 2 "
                                  "validations (--patience 2)")
    stall.record(1.89, 10)  # (0.11 below step 4's: the drift adds up to a drop)
    assert stall.since_improvement(0.1).step == 10 and not stall.stops(rule)
    # the saved losses come back as they were (a resume may change either option)
    assert ValidationStall.from_progress(stall.to_progress(), Path("nowhere"), 10) == stall


def test_a_run_stopped_by_min_delta_trains_on_with_a_smaller_one(cli, data, whole_run, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [3.0, 2.0, 1.95, 1.92, 1.5, 1.4])
    run = tmp_path / "run"
    said = " ".join(_ok(cli("pretrain", data / "tokens", "-o", run, *MODEL, *RUN, "--patience", "2", "--min-delta", "0.1"))
                    .output.split())
    assert "stopped early at step 8: the validation loss has not gone below 1.9000 (step 4's 2.0000 less --min-delta 0.1)" in said
    assert artifacts.load(run).stats["stopped_early"]["improved_step"] == 4
    said = " ".join(_ok(cli("pretrain", data / "tokens", "-o", run, *MODEL, *RUN, "--patience", "2", "--min-delta", "0.1",
                            "--resume")).output.split())
    assert "give a --patience above 2, a smaller --min-delta, or 0, to train further" in said
    said = " ".join(_ok(cli("pretrain", data / "tokens", "-o", run, *MODEL, *RUN, "--patience", "2", "--resume")).output.split())
    assert "resumed from step 8" in said
    assert artifacts.load(run).fingerprint == artifacts.load(whole_run).fingerprint


@pytest.mark.parametrize("saved_as", [None, {"best_loss": 2.0, "best_step": 4, "since_best": 1}], ids=["none", "count-of-12-07"])
def test_a_resume_from_a_checkpoint_without_the_losses_rebuilds_them_from_the_runs_validations(cli, data, tmp_path, monkeypatch,
                                                                                                 saved_as):
    """A checkpoint written before the losses were saved (2026-12-07) resumed with --patience: before
    2026-12-07 it trained to the end, its earlier validations forgotten; they are in its metrics.jsonl."""
    import json

    _scripted_validation(monkeypatch, LOSSES)
    run = tmp_path / "run"
    _ok(cli("pretrain", data / "tokens", "-o", run, *MODEL, *RUN[:1], "6", *RUN[2:]))  # validations at 2, 4, 6
    for folder in (run, run / "checkpoints" / "step_0000006"):  # (as the older code wrote it)
        state = folder / "training_state.json"
        saved = json.loads(state.read_text())
        del saved["validation_stall"]
        if saved_as is not None:
            saved["validation_stall"] = saved_as
        state.write_text(json.dumps(saved))
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["state_files"]["training_state.json"] = artifacts.sha256_file(state)
        manifest["sizes"]["training_state.json"] = state.stat().st_size
        (folder / "manifest.json").write_text(json.dumps(manifest))
    said = " ".join(_ok(cli("pretrain", data / "tokens", "-o", run, *MODEL, *RUN, "--patience", "2", "--resume")).output.split())
    assert "stopped early at step 8: the validation loss has not gone below 2.0000 (step 4) for 2 validations" in said
    assert "stopped_early" not in artifacts.load(run / "checkpoints" / "step_0000008").stats  # (the run's to say)
    assert artifacts.load(run).stats["stopped_early"]["best_step"] == 4


def test_a_patience_no_run_of_this_length_can_reach_is_said(cli, data, tmp_path):
    said = " ".join(_ok(cli("pretrain", data / "tokens", "-o", tmp_path / "run", *MODEL, *RUN[:1], "6", *RUN[2:],
                            "--patience", "2")).output.split())
    assert "--patience 2 needs 4 validations or more to stop a run early, and this one makes 3" in said


def test_a_resume_replays_the_rule_over_the_losses_it_saved(cli, data, tmp_path, monkeypatch):
    """A killed run resumed with a --patience that would have stopped it at an earlier validation (its
    last loss a new lowest) trained on to the end, where an uninterrupted run with it stopped."""
    _scripted_validation(monkeypatch, [3.0, 3.1, 3.2, 2.0])
    run = tmp_path / "run"
    _ok(cli("pretrain", data / "tokens", "-o", run, *MODEL, *RUN[:1], "8", *RUN[2:]))
    (run / artifacts.MANIFEST).unlink()  # (as if killed after its step-8 checkpoint)
    said = " ".join(_ok(cli("pretrain", data / "tokens", "-o", run, *MODEL, *RUN, "--patience", "2", "--resume")).output.split())
    assert ("stopped early at step 8: with these options it would have stopped at step 6, where the validation loss has "
            "not gone below 3.0000 (step 2) for 2 validations (--patience 2)") in said, said
    stopped = artifacts.load(run).stats
    assert stopped["step"] == 8 and stopped["stopped_early"]["best_step"] == 8
    assert stopped["stopped_early"]["validations_since_best"] == 0


def test_a_smaller_min_delta_can_stop_earlier_and_is_offered_only_where_it_frees_the_run():
    """Its count starts from another loss: 3.0, 2.9, 2.85, 3.0, 2.8 stop at the fifth validation under
    --min-delta 0.1, at the fourth under 0.05; the replay finds it (a resume trained on)."""
    from types import SimpleNamespace as Rule

    from llmkit.train.early_stop import ValidationStall

    stall = ValidationStall([(2 * (i + 1), loss) for i, loss in enumerate([3.0, 2.9, 2.85, 3.0, 2.8])])
    assert stall.first_stop(Rule(patience=2, min_delta=0.1)).history[-1][0] == 10
    assert stall.first_stop(Rule(patience=2, min_delta=0.05)).history[-1][0] == 8
    assert stall.first_stop(Rule(patience=2, min_delta=0.0)) is None and stall.first_stop(Rule(patience=0, min_delta=0)) is None
    assert stall.to_train_further(Rule(patience=2, min_delta=0.1)) == ("give a --patience above 2, a smaller --min-delta, or "
                                                                        "0, to train further")
    flat = ValidationStall([(2, 3.0), (4, 3.0), (6, 3.0)])  # (no --min-delta frees a run whose loss never falls)
    assert flat.to_train_further(Rule(patience=2, min_delta=0.1)) == "give a --patience above 2, or 0, to train further"
    # Keras' and Lightning's sum, loss + d < best: a loss exactly d below is no drop, whatever the rounding of best - d
    assert ValidationStall([(2, 4.017), (4, 3.717)]).since_improvement(0.3).validations == 1


def test_a_stop_at_the_lowest_loss_does_not_send_for_keep_best(cli, data, tmp_path, monkeypatch):
    """Under --min-delta the validation that stops the run can be its lowest: its weights are the
    run's own, and "step 6's were not kept: --keep-best keeps them" was wrong."""
    _scripted_validation(monkeypatch, [3.0, 2.95, 2.9])
    said = " ".join(_ok(cli("pretrain", data / "tokens", "-o", tmp_path / "run", *MODEL, *RUN, "--patience", "2",
                            "--min-delta", "0.1")).output.split())
    assert "stopped early at step 6" in said and "--keep-best keeps them" not in said, said
