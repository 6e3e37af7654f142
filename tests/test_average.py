"""Weight averaging: `llmkit average` (model soups), `--average-last K` and `--ema DECAY`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import resign, small_play_tokens
from llmkit import artifacts

MODEL = ["--model", "tiny", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--context-length", "64"]
RUN = ["--max-steps", "8", "--batch-tokens", "512", "--micro-batch", "8", "--eval-every", "0", "--save-every", "2",
       "--keep-last", "3"]


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def _weights(path):
    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    from typer.testing import CliRunner

    from llmkit.cli import app

    def cli(*args):
        return _ok(CliRunner().invoke(app, [str(a) for a in args]))

    root = tmp_path_factory.mktemp("avg")
    small_play_tokens(root, shared_data)
    cli("pretrain", root / "tokens", "-o", root / "a", *MODEL, *RUN, "--ema", "0.9", "--average-last", "3")
    cli("pretrain", root / "tokens", "-o", root / "b", *MODEL, *RUN, "--seed", "1")
    return root


def test_the_chunked_mean_equals_the_whole_tensor_mean_to_the_bit(monkeypatch):
    from llmkit.model import averaging

    monkeypatch.setattr(averaging, "CHUNK", 7)  # chunks that cut every tensor, with a short last one
    gen = torch.Generator().manual_seed(0)
    states = [{"w": torch.randn(5, 9, generator=gen), "h": torch.randn(4, generator=gen).to(torch.bfloat16),
               "step": torch.tensor([3])} for _ in range(3)]
    weights = [0.2, 0.3, 0.5]
    mean = averaging.mean_state(states, weights)
    for name in ("w", "h"):
        whole = sum(s[name].to(torch.float64) * w for s, w in zip(states, weights)).to(states[0][name].dtype)
        assert mean[name].dtype == states[0][name].dtype and torch.equal(mean[name], whole)
    assert torch.equal(mean["step"], states[0]["step"])
    # members stored in different dtypes: the widest, whatever their order
    mixed = [{"h": states[0]["h"]}, {"h": states[1]["h"].float()}]
    assert {averaging.mean_state(order, [0.5, 0.5])["h"].dtype for order in (mixed, mixed[::-1])} == {torch.float32}


def test_one_tokenizer_means_the_same_special_token_roles_too(runs, tmp_path):
    """A base model and its instruct tune often share tokenizer.json but not their eos token."""
    from llmkit.data.tokenizer import same_tokenizer

    for name in ("base", "instruct"):
        shutil.copytree(runs / "tok", tmp_path / name)
    assert same_tokenizer(tmp_path / "base", tmp_path / "instruct")
    (tmp_path / "instruct" / "special_tokens.json").write_text(json.dumps({"eos": "<|pad|>"}))
    assert not same_tokenizer(tmp_path / "base", tmp_path / "instruct")


def test_members_prompted_in_other_chat_templates_are_refused(cli, runs, tmp_path):
    """Two imports of one model, one with its chat template: the soup took one member's by
    fingerprint order, a chat format by accident (llmkit's own fine-tunes of two templates were refused)."""
    chatml = "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}"
    for name in ("a", "b"):
        shutil.copytree(runs / name, tmp_path / name)
        (tmp_path / name / "tokenizer" / "chat_template.jinja").write_text(chatml)
        resign(tmp_path / name, added=("tokenizer/chat_template.jinja",))
    for members in ([runs / "a", tmp_path / "b"], [tmp_path / "a", runs / "b"]):
        result = cli("average", *members, "-o", tmp_path / "soup")
        said = " ".join(result.output.split())
        assert result.exit_code == 1 and "another chat template or end-of-turn tokens than" in said, said
        assert not (tmp_path / "soup").exists()
        mixed = cli("generate", *members, "-p", "x", "-n", "2")  # an ensemble is prompted one way too
        assert mixed.exit_code == 1 and "another chat template" in mixed.output, mixed.output
    _ok(cli("average", tmp_path / "a", tmp_path / "b", "-o", tmp_path / "soup"))
    assert (tmp_path / "soup" / "tokenizer" / "chat_template.jinja").read_text() == chatml


def test_weights_whose_sum_overflows_are_refused(cli, runs, tmp_path):
    result = cli("average", runs / "a", runs / "b", "--weights", "1e308,1e308", "-o", tmp_path / "soup")
    assert result.exit_code != 0 and "must be finite" in result.output and not (tmp_path / "soup").exists()


def test_averaging_a_checkpoint_with_itself_gives_it_back_bit_for_bit(cli, runs, tmp_path):
    result = _ok(cli("average", runs / "a", runs / "a", runs / "a", "-o", tmp_path / "same"))
    ours, theirs = _weights(tmp_path / "same"), _weights(runs / "a")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # said, and counted once (the stats said a soup of 3); beside another one it counts as often as given
    assert "are one checkpoint (the same fingerprint), so the average is that checkpoint itself" in " ".join(result.output.split())
    assert artifacts.load(tmp_path / "same").manifest.stats["averaged"] == 1
    twice = _ok(cli("average", runs / "a", runs / "b", runs / "a", "--weights", "1,1,2", "-o", tmp_path / "twice"))
    assert "so it takes 0.75 of the mean, its copies' weights together" in " ".join(twice.output.split())
    assert artifacts.load(tmp_path / "twice").manifest.stats["averaged"] == 2
    left_out = _ok(cli("average", runs / "a", runs / "b", runs / "a", "--weights", "1,1,0", "-o", tmp_path / "left-out"))
    assert "one checkpoint" not in left_out.output  # (a copy of weight 0 is no copy in the mean)
    refused = cli("average", runs / "a", runs / "a", "-o", tmp_path / "twice")  # nothing said before a refusal
    assert refused.exit_code == 1 and "one checkpoint" not in refused.output
    # averaging draws nothing: another --seed is the same artifact, and the manifest records no seed
    _ok(cli("average", runs / "a", runs / "a", runs / "a", "--seed", "4", "-o", tmp_path / "reseeded"))
    same, reseeded = (artifacts.load(tmp_path / name) for name in ("same", "reseeded"))
    assert same.fingerprint == reseeded.fingerprint and same.manifest.seed is None


def test_a_weighted_soup_is_the_weighted_mean_with_every_member_in_its_lineage(cli, runs, tmp_path):
    _ok(cli("average", runs / "a", runs / "b", "--weights", "1,3", "-o", tmp_path / "soup"))
    soup, a, b = _weights(tmp_path / "soup"), _weights(runs / "a"), _weights(runs / "b")
    for key in soup:
        assert torch.allclose(soup[key], 0.25 * a[key] + 0.75 * b[key], atol=1e-7)
    art = artifacts.load(tmp_path / "soup", kind="checkpoint")
    prints = {p: artifacts.load(runs / p).fingerprint for p in "ab"}
    assert {i["fingerprint"] for i in art.manifest.inputs} == set(prints.values())
    members = [i["fingerprint"] for i in sorted(art.manifest.inputs, key=lambda i: int(i["role"].split(":")[1]))]
    assert dict(zip(members, art.config["weights"])) == {prints["a"]: 0.25, prints["b"]: 0.75}
    # a soup is a set: typed in the other order it is the same artifact (the order ran the sum and named the roles)
    _ok(cli("average", runs / "b", runs / "a", "--weights", "3,1", "-o", tmp_path / "soup-ba"))
    assert artifacts.load(tmp_path / "soup-ba").fingerprint == art.fingerprint
    # the token the members' documents started after, recorded by pretrain, is the soup's too
    assert art.config["document_start"] == artifacts.load(runs / "a").config["document_start"] == "eos"
    generated = cli("generate", tmp_path / "soup", "-p", "ROMEO:", "-n", "4", "--greedy")
    assert generated.exit_code == 0, generated.output


def test_average_last_equals_averaging_those_checkpoints(cli, runs, tmp_path):
    steps = [runs / "a" / "checkpoints" / f"step_000000{s}" for s in (4, 6)]
    _ok(cli("average", *steps, runs / "a", "-o", tmp_path / "by-hand"))
    ours, theirs = _weights(runs / "a" / "average"), _weights(tmp_path / "by-hand")
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    art = artifacts.load(runs / "a" / "average", kind="checkpoint")
    assert art.config["average_last"] == 3 and len(art.manifest.inputs) == 3


def test_average_last_k_with_keep_last_k_minus_one_averages_k_and_ignores_the_runs_name(cli, runs, tmp_path):
    """The final step is a save step too: its copy in checkpoints/ is kept beside the --keep-last
    intermediate ones, so --keep-last 2 --average-last 3 averages steps 2 and 4 and the final 6; and
    the average's fingerprint does not depend on what the run's folder is called."""
    flags = [*MODEL, "--max-steps", "6", "--batch-tokens", "512", "--micro-batch", "8", "--eval-every", "0",
             "--save-every", "2", "--keep-last", "2", "--average-last", "3"]
    for name in ("first", "second"):
        result = _ok(cli("pretrain", runs / "tokens", "-o", tmp_path / name, *flags))
        assert "saved only" not in result.output
    art = artifacts.load(tmp_path / "first" / "average", kind="checkpoint")
    assert sorted(i["role"] for i in art.manifest.inputs) == ["member:final", "member:step_0000002", "member:step_0000004"]
    assert art.fingerprint == artifacts.load(tmp_path / "second" / "average").fingerprint
    assert sorted(p.name for p in (tmp_path / "first" / "checkpoints").iterdir()) == [
        "step_0000002", "step_0000004", "step_0000006"]
    refused = cli("pretrain", runs / "tokens", "-o", tmp_path / "one", *MODEL, "--save-every", "2", "--average-last", "1")
    assert refused.exit_code != 0 and "--average-last 1" in refused.output and not (tmp_path / "one").exists()


def test_average_last_writes_no_average_of_the_final_checkpoint_alone(cli, runs, tmp_path):
    """A run that saved nothing before its final checkpoint (--save-every past its end) has nothing
    to average: no RUN/average (it was the final weights again, under another fingerprint), a note
    says why, and resuming the finished run does not take it for a missing companion."""
    flags = [*MODEL, "--max-steps", "2", "--batch-tokens", "512", "--micro-batch", "8", "--eval-every", "0",
             "--save-every", "500", "--average-last", "3"]
    result = _ok(cli("pretrain", runs / "tokens", "-o", tmp_path / "run", *flags))
    assert "no checkpoint before its final one" in " ".join(result.output.split())
    assert not (tmp_path / "run" / "average").exists()
    resumed = _ok(cli("pretrain", runs / "tokens", "-o", tmp_path / "run", *flags, "--resume"))
    assert "companions" not in resumed.output and not (tmp_path / "run" / "average").exists()


def test_ema_resumes_exactly(cli, runs, tmp_path):
    """Stopped after step 4 and resumed: the moving average (kept in the resume state) ends the same."""
    resumed = tmp_path / "resumed"
    shutil.copytree(runs / "a" / "checkpoints" / "step_0000004", resumed / "checkpoints" / "step_0000004")
    lines = (runs / "a" / "metrics.jsonl").read_text().splitlines()[:4]
    (resumed / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    result = _ok(cli("pretrain", runs / "tokens", "-o", resumed, *MODEL, *RUN, "--ema", "0.9", "--average-last", "3",
                     "--resume"))
    assert "resumed from step 4" in result.output
    ours, theirs = _weights(resumed / "ema"), _weights(runs / "a" / "ema")
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    final = _weights(runs / "a")
    assert any(not torch.equal(ours[k], final[k]) for k in ours)  # an average, not the last weights
    assert json.loads((runs / "a" / "ema" / "manifest.json").read_text())["config"]["ema"] == 0.9


def test_a_finished_run_resumed_writes_companions_that_are_missing_or_not_of_it(cli, runs, tmp_path):
    """Killed after the run's manifest and before its companions (written after, as they name it),
    or with companions from another end of the run: --resume writes them, as the run would have."""
    run = tmp_path / "run"
    shutil.copytree(runs / "a", run)
    shutil.rmtree(run / "ema")
    shutil.rmtree(run / "average")
    shutil.copytree(runs / "a" / "ema", run / "average")  # a checkpoint, but not the mean of the run's last three
    flags = [*MODEL, *RUN, "--ema", "0.9", "--average-last", "3", "--resume"]
    result = _ok(cli("pretrain", runs / "tokens", "-o", run, *flags))
    assert "finished at step 8 already" in result.output and "companions" in result.output
    for name in ("ema", "average"):
        assert artifacts.load(run / name).fingerprint == artifacts.load(runs / "a" / name).fingerprint
    assert artifacts.load(run).fingerprint == artifacts.load(runs / "a").fingerprint
    assert "companions" not in _ok(cli("pretrain", runs / "tokens", "-o", run, *flags)).output
    # killed while a companion was being replaced (its manifest goes first): the rest is the run's own to rewrite
    # (the write refused a folder without a manifest, and said --force, which --resume refuses)
    (run / "average" / "manifest.json").unlink()
    _ok(cli("pretrain", runs / "tokens", "-o", run, *flags))
    assert artifacts.load(run / "average").fingerprint == artifacts.load(runs / "a" / "average").fingerprint
    # resumed with nothing to train and without the flags: the run stays as it was, companions of it included
    # (its average was removed, unsaid but for a note, though the run and its checkpoints were unchanged)
    quiet = _ok(cli("pretrain", runs / "tokens", "-o", run, *MODEL, *RUN, "--ema", "0.9", "--resume"))
    assert "removed" not in quiet.output and "companions" not in quiet.output, quiet.output
    for name in ("ema", "average"):
        assert artifacts.load(run / name).fingerprint == artifacts.load(runs / "a" / name).fingerprint


def test_a_soup_is_never_written_where_a_run_keeps_its_own_checkpoints(cli, runs, tmp_path):
    """`average -o RUN/checkpoints/step_N --force` replaced a step the run then could not resume from; `-o
    RUN/ema --force`, the run's moving average by a soup."""
    run = tmp_path / "run"
    shutil.copytree(runs / "a", run)
    step = sorted((run / "checkpoints").iterdir())[0]
    (run / "runs").mkdir()  # (an empty runs/ folder does not make a run a sweep, whose places are not guarded)
    for place, inside, where in ((step, run / "checkpoints", "lies inside"), (run / "ema", run / "ema", "is"),
                                 (run / "average" / "x", run / "average", "lies inside")):
        before = artifacts.load(inside if place.name == "x" else place).fingerprint
        for force in ([], ["--force"]):  # (first: "pass --force" was the advice without it)
            result = cli("average", runs / "a", runs / "b", "-o", place, *force)
            assert result.exit_code == 1 and f"{where} {inside.resolve()}, where the training run {run.resolve()} keeps " \
                "its own checkpoints" in " ".join(result.output.split()), result.output
        assert artifacts.load(inside if place.name == "x" else place).fingerprint == before
    # a file output too (generate's wrote into checkpoints/, and the run then failed on resume)
    result = cli("generate", run, "-p", "To be", "-n", "2", "-o", run / "checkpoints" / "step_0000010")
    assert result.exit_code == 1 and "where the training run" in result.output and not (run / "checkpoints" / "step_0000010").exists()
    # a run from before the run mark (2026-12-02): known by its checkpoint manifest and checkpoints/, or, unfinished
    # (no manifest of its own), by its step checkpoints
    (run / ".llmkit-run").unlink()
    assert cli("average", runs / "a", runs / "b", "-o", run / "ema", "--force").exit_code == 1
    (run / "manifest.json").rename(tmp_path / "manifest.json")
    assert cli("average", runs / "a", runs / "b", "-o", step, "--force").exit_code == 1
    (tmp_path / "manifest.json").rename(run / "manifest.json")
    (run / ".llmkit-run").touch()
    # nor a training run (the run's next --resume replaced it unsaid)
    result = cli("pretrain", runs / "tokens", "-o", run / "ema", *MODEL, *RUN, "--force")
    assert result.exit_code == 1 and "where the training run" in " ".join(result.output.split())
    assert (run / "ema" / "manifest.json").is_file() and not (run / "ema" / "metrics.jsonl").exists()
    # a sweep's folder holds the run mark, and no such places
    sweep = tmp_path / "sweep"
    (sweep / "runs").mkdir(parents=True)
    (sweep / "configs").mkdir()
    (sweep / ".llmkit-run").touch()
    _ok(cli("average", runs / "a", runs / "b", "-o", sweep / "average"))


def test_a_finished_run_resumed_with_another_average_last_averages_that_many(cli, runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "a", run)
    _ok(cli("pretrain", runs / "tokens", "-o", run, *MODEL, *RUN, "--ema", "0.9", "--average-last", "2", "--resume"))
    art = artifacts.load(run / "average", kind="checkpoint")
    assert art.config["average_last"] == 2
    assert sorted(i["role"] for i in art.manifest.inputs) == ["member:final", "member:step_0000006"]
    _ok(cli("average", runs / "a" / "checkpoints" / "step_0000006", runs / "a", "-o", tmp_path / "by-hand"))
    ours, theirs = _weights(run / "average"), _weights(tmp_path / "by-hand")
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # without --average-last, a finished run with nothing to train stays as it was: its average of 2 with it
    # (it was removed, the run otherwise unchanged); extended, the run leaves the average of its earlier end behind
    result = _ok(cli("pretrain", runs / "tokens", "-o", run, *MODEL, *RUN, "--ema", "0.9", "--resume"))
    assert artifacts.load(run / "average").config["average_last"] == 2 and "removed" not in result.output
    longer = [*RUN[:RUN.index("--max-steps")], "--max-steps", "10", *RUN[RUN.index("--max-steps") + 2:]]
    result = _ok(cli("pretrain", runs / "tokens", "-o", run, *MODEL, *longer, "--ema", "0.9", "--resume"))
    assert not (run / "average").exists() and "which an earlier command made" in " ".join(result.output.split())


def test_a_run_extended_past_a_final_save_step_keeps_the_last_k_checkpoints(cli, runs, tmp_path):
    """The final step's copy is kept beside the --keep-last newer ones; extended with no save step after
    it, the run kept one checkpoint more than --keep-last asked (pruning ran only at a save)."""
    from llmkit.train.checkpoint import step_dirs

    run = tmp_path / "run"
    shutil.copytree(runs / "a", run)
    before = [d.name for d in step_dirs(run)]
    assert before[-1] == "step_0000008" and len(before) == 4  # --keep-last 3, and the final step's copy
    # resumed as finished, without --keep-last (its default 2): the run keeps what it kept (the count it ran with)
    plain = [*RUN[:RUN.index("--keep-last")]]
    _ok(cli("pretrain", runs / "tokens", "-o", run, *MODEL, *plain, "--ema", "0.9", "--resume"))
    assert [d.name for d in step_dirs(run)] == before
    longer = [*RUN[:RUN.index("--max-steps")], "--max-steps", "9", *RUN[RUN.index("--max-steps") + 2:]]
    _ok(cli("pretrain", runs / "tokens", "-o", run, *MODEL, *longer, "--ema", "0.9", "--average-last", "3", "--resume"))
    assert [d.name for d in step_dirs(run)] == before[-3:]
    assert sorted(i["role"] for i in artifacts.load(run / "average").manifest.inputs) == [
        "member:final", "member:step_0000006", "member:step_0000008"]


def test_a_soup_of_a_lora_run_and_a_full_one_records_no_lora_whatever_the_order(cli, runs, tmp_path):
    """The first member's task.json was copied whole: a LoRA member typed first made the soup "a LoRA run of
    rank 2", typed second not (two artifacts of the same weights). How one member was trained is no record of
    the soup; members trained alike keep it."""
    task = {"task": "sft", "template": {"name": "plain", "type": "text", "prompt": "{prompt}\n", "response": "{response}",
                                        "input_field": "prompt", "target_field": "response"}, "format_version": 1}
    lora = {"rank": 2, "alpha": 4.0, "targets": ["attn"], "layers": 2, "merged": True}

    def tuned(source, name, record):
        with artifacts.create(tmp_path / name, "checkpoint") as build:
            for file in artifacts.load(runs / source).manifest.files:
                (build.dir / file).parent.mkdir(parents=True, exist_ok=True)
                (build.dir / file).write_bytes((runs / source / file).read_bytes())
            (build.dir / "task.json").write_text(json.dumps(record))
        return tmp_path / name

    adapted, full = tuned("a", "adapted", {**task, "lora": lora}), tuned("b", "full", task)
    _ok(cli("average", adapted, full, "-o", tmp_path / "soup-1"))
    _ok(cli("average", full, adapted, "-o", tmp_path / "soup-2"))
    assert artifacts.load(tmp_path / "soup-1").fingerprint == artifacts.load(tmp_path / "soup-2").fingerprint
    assert "lora" not in json.loads((tmp_path / "soup-1" / "task.json").read_text())
    _ok(cli("average", adapted, full, "--weights", "1,0", "-o", tmp_path / "soup-0"))  # a member of weight 0 takes no part
    assert json.loads((tmp_path / "soup-0" / "task.json").read_text())["lora"]["rank"] == 2
    both = tuned("b", "adapted-too", {**task, "lora": lora})
    _ok(cli("average", adapted, both, "-o", tmp_path / "soup-3"))
    assert json.loads((tmp_path / "soup-3" / "task.json").read_text())["lora"]["rank"] == 2


def test_a_member_of_weight_zero_is_left_out_and_a_soup_that_is_not_finite_is_refused(cli, runs, tmp_path):
    from safetensors.torch import save_file

    broken = tmp_path / "broken"
    shutil.copytree(runs / "b", broken)
    state = _weights(broken)
    name = sorted(state)[0]
    state[name][0] = float("nan")
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    resign(broken)  # (as a diverged run writes them: unsigned, the file is refused as it is read)
    _ok(cli("average", runs / "a", broken, "--weights", "1,0", "-o", tmp_path / "soup"))
    ours, theirs = _weights(tmp_path / "soup"), _weights(runs / "a")
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    _ok(cli("average", broken, runs / "a", "--weights", "0,1", "-o", tmp_path / "soup2"))  # first, and left out
    ours = _weights(tmp_path / "soup2")
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert artifacts.load(tmp_path / "soup2").stats["averaged"] == 1  # (it counted the member left out)
    refused = cli("average", runs / "a", broken, "-o", tmp_path / "nan")
    assert refused.exit_code != 0 and f"the average's {name} is not finite: {broken} holds nan" in " ".join(refused.output.split())
    assert not (tmp_path / "nan").exists()


@pytest.mark.parametrize("size", [16, 64])
def test_a_member_whose_tensor_is_of_another_shape_is_refused(cli, runs, tmp_path, size):
    """A tensor shorter than the first member's made a soup of the wrong shape (written, verified as
    sound, refused by every loader); a longer one, an unexpected error: the mean went over the first
    member's elements."""
    from safetensors.torch import save_file

    other = tmp_path / "other"
    shutil.copytree(runs / "b", other)
    state = _weights(other)
    norm = next(name for name in sorted(state) if state[name].dim() == 1)
    state[norm] = torch.ones(size)
    save_file(state, str(other / "model.safetensors"), metadata={"format": "pt"})
    resign(other)
    for members in ([runs / "a", other], [other, runs / "a"]):
        refused = cli("average", *members, "-o", tmp_path / "soup")
        said = " ".join(refused.output.split())
        assert refused.exit_code == 1 and f"{norm} has shape ({size},)" in said and "Traceback" not in said, said
        assert not (tmp_path / "soup").exists()


def test_stored_weights_read_a_tensor_at_a_time_as_a_mapping(runs):
    from llmkit.errors import UserError
    from llmkit.model.averaging import StoredWeights

    whole = _weights(runs / "a")
    with StoredWeights(runs / "a" / "model.safetensors") as stored:
        assert sorted(stored) == sorted(whole) and len(stored) == len(whole) and "nothing" not in stored
        assert all(torch.equal(stored[name], whole[name]) for name in whole)
        assert stored.get("nothing") is None
    with pytest.raises(UserError, match="is not a readable safetensors file"):
        StoredWeights(runs / "a" / "model_config.json")


def test_classifiers_that_cut_their_texts_at_different_lengths_do_not_average(cli, runs, tmp_path):
    """The soup keeps one task.json: with members cut at --seq-len 16 and 32 it would be the first's."""
    rows = [{"text": word * 3, "label": i % 2} for i, word in enumerate(["to be ", "or not ", "thou art ", "my lord "] * 4)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    for length in (16, 32):
        _ok(cli("finetune", runs / "a", "--task", "classify", "--data", tmp_path / "data.jsonl", "--seq-len", length,
                "--truncate", "--max-steps", "1", "--batch-size", "4", "--eval-every", "0", "--save-every", "0",
                "-o", tmp_path / f"c{length}"))
    for order in ((tmp_path / "c16", tmp_path / "c32"), (tmp_path / "c32", tmp_path / "c16")):
        refused = cli("average", *order, "-o", tmp_path / "soup")
        assert refused.exit_code != 0 and "cut their texts at different lengths" in refused.output
        assert not (tmp_path / "soup").exists()


def test_the_run_itself_is_the_same_with_or_without_companions(cli, runs, tmp_path):
    _ok(cli("pretrain", runs / "tokens", "-o", tmp_path / "plain", *MODEL, *RUN))
    assert artifacts.load(tmp_path / "plain").fingerprint == artifacts.load(runs / "a").fingerprint


@pytest.mark.parametrize("change,message", [
    (["--n-embd", "64"], "is another network than"),
    (["--context-length", "32"], "(context_length 32 against 64)"),
    # another tokenizer of another size: the tokenizer is named, not the vocabulary size it brings
    (["--vocab"], "has another tokenizer"),
])
def test_averaging_refuses_what_does_not_belong_together(cli, runs, tmp_path, change, message):
    if change == ["--vocab"]:
        _ok(cli("tokenizer", "train", runs / "corpus", "-o", tmp_path / "tok", "--vocab-size", "290", "--max-docs", "20"))
        _ok(cli("tokenize", runs / "corpus", "-t", tmp_path / "tok", "-o", tmp_path / "tokens"))
        _ok(cli("pretrain", tmp_path / "tokens", "-o", tmp_path / "other", *MODEL, *RUN))
    else:
        _ok(cli("pretrain", runs / "tokens", "-o", tmp_path / "other", *MODEL, *RUN, *change))
    result = cli("average", runs / "a", tmp_path / "other", "-o", tmp_path / "soup")
    assert result.exit_code != 0 and message in result.output and not (tmp_path / "soup").exists()
    assert "needs the 2 checkpoints" in cli("pretrain", runs / "tokens", "-o", tmp_path / "x", *MODEL, "--average-last", "3",
                                            "--save-every", "0").output


def test_checkpoints_pretrained_after_different_document_starts_do_not_average(cli, runs, tmp_path):
    """A soup of a model trained on `text <|eos|>` documents and one on `<|bos|> text <|eos|>` would be
    prompted after whichever start its lineage walk met first (so on the members' order)."""
    _ok(cli("tokenize", runs / "corpus", "-t", runs / "tok", "-o", tmp_path / "tokens", "--add-bos"))
    _ok(cli("pretrain", tmp_path / "tokens", "-o", tmp_path / "bos", *MODEL, *RUN))
    for order in ((runs / "a", tmp_path / "bos"), (tmp_path / "bos", runs / "a")):
        result = cli("average", *order, "-o", tmp_path / "soup")
        assert result.exit_code != 0 and "starting after different tokens" in result.output and not (tmp_path / "soup").exists()
    _ok(cli("average", runs / "a", runs / "b", "-o", tmp_path / "soup"))
    assert artifacts.load(tmp_path / "soup").config["document_start"] == "eos"


def test_a_member_whose_document_start_is_unknown_is_not_guessed(cli, runs, tmp_path, monkeypatch):
    """A checkpoint from before the start was recorded, whose tokens have moved: not a <|bos|> model
    (that is only the fallback), so neither refused beside an <|eos|> one nor recorded in the soup."""
    from llmkit.inference import prompts

    monkeypatch.setattr(prompts, "traced_document_start", lambda art: None if art.path == runs / "b" else "eos")
    _ok(cli("average", runs / "a", runs / "b", "-o", tmp_path / "soup"))
    assert "document_start" not in artifacts.load(tmp_path / "soup").config


def test_checkpoints_tuned_with_different_prompt_templates_do_not_combine(cli, runs, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {i}", "response": f"{i}"}) + "\n" for i in range(16)))
    tuned = {}
    for template in ("plain", "chat"):
        tuned[template] = tmp_path / template
        _ok(cli("finetune", runs / "a", "--data", data, "-o", tuned[template], "--template", template, "--max-steps", "1",
                "--batch-size", "4", "--eval-every", "0", "--val-fraction", "0", "--truncate"))
    soup = cli("average", tuned["plain"], tuned["plain"], "-o", tmp_path / "plain-soup")
    assert soup.exit_code == 0 and "step None" not in soup.output and "0 of" not in soup.output, soup.output
    result = cli("average", tuned["plain"], tuned["chat"], "-o", tmp_path / "soup")
    assert result.exit_code != 0 and "another prompt template" in result.output and not (tmp_path / "soup").exists()
    result = cli("eval", tuned["plain"], tuned["chat"], "--data", data, "-o", tmp_path / "ens")
    assert result.exit_code != 0 and "another prompt template" in result.output and not (tmp_path / "ens").exists()
    # a fine-tuned checkpoint and its (never fine-tuned) base: said as such
    result = cli("average", tuned["plain"], runs / "a", "-o", tmp_path / "soup")
    line = " ".join(result.output.split())
    assert result.exit_code != 0 and f"{runs / 'a'} is not fine-tuned and {tuned['plain']} is fine-tuned for sft" in line, line
    assert "give checkpoints fine-tuned alike, or base models only" in line, line


def test_the_moving_average_holds_the_trained_parameters_only():
    """A frozen parameter's average is itself: LoRA's base model is not held again (in fp32)."""
    from llmkit.model.gpt import GPT, ModelConfig
    from llmkit.train.ema import MovingAverage

    model = GPT(ModelConfig(vocab_size=97, context_length=16, n_layer=2, n_head=2, n_embd=32))
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("blocks.1."))
    ema = MovingAverage(model, 0.9, torch.device("cpu"))
    assert ema.values and all(name.startswith("blocks.1.") for name in ema.values)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    ema.update(100)
    state, current = ema.state_dict(), model.state_dict()
    for name, p in model.named_parameters():
        assert torch.equal(state[name], current[name]) != p.requires_grad, name  # averaged where trained, else itself
    # a checkpoint written when every parameter was averaged resumes
    everything = {name: p.detach().float().clone() for name, p in model.named_parameters()}
    resumed = MovingAverage(model, 0.9, torch.device("cpu"), saved=everything)
    assert set(resumed.values) == set(ema.values)


def test_the_moving_average_follows_its_formula():
    """docs/average.md: ema <- d ema + (1 - d) weights, d = min(DECAY, (1 + t) / (10 + t)) after update t:
    the warm-up's small d early (the average follows the weights), DECAY later."""
    from llmkit.model.gpt import GPT, ModelConfig
    from llmkit.train.ema import MovingAverage

    model = GPT(ModelConfig(vocab_size=97, context_length=16, n_layer=1, n_head=2, n_embd=32))
    ema = MovingAverage(model, 0.9, torch.device("cpu"))
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    expected = dict(start)
    for updates in (0, 5, 100):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        decay = min(0.9, (1 + updates) / (10 + updates))  # 0.1, then 0.4, then 0.9
        ema.update(updates)
        for name, p in model.named_parameters():
            expected[name] = decay * expected[name] + (1 - decay) * p.detach()
            assert torch.allclose(ema.values[name], expected[name], rtol=0, atol=1e-6), (name, updates)
    # by hand: the weights moved +1, +2, +3: s + 0.9, then 0.4 (s + 0.9) + 0.6 (s + 2) = s + 1.56, then
    # 0.9 (s + 1.56) + 0.1 (s + 3) = s + 1.704
    for name, value in start.items():
        assert torch.allclose(ema.values[name], value + 1.704, rtol=0, atol=1e-5), name


def test_average_last_says_when_keep_last_removed_the_older_checkpoints(cli, runs, tmp_path):
    """A run kept one checkpoint (--keep-last 1), then resumed asking the mean of the last 4: the note blamed
    --save-every ("the run saved only 2") where --keep-last had removed the older ones."""
    flags = [*MODEL, *RUN[:-2]]
    _ok(cli("pretrain", runs / "tokens", "-o", tmp_path / "run", *flags, "--keep-last", "1", "--average-last", "2"))
    result = _ok(cli("pretrain", runs / "tokens", "-o", tmp_path / "run", *flags, "--keep-last", "3", "--average-last", "4",
                     "--resume"))
    flat = " ".join(result.output.split())
    assert "--average-last 4: only 2 of the run's checkpoints are left (an earlier --keep-last removed the older ones)" in flat


def test_a_members_tokenizer_changed_in_place_is_refused(cli, runs, tmp_path):
    """A same-size edit of a member's tokenizer.json passed the size check and was copied into the
    soup, recorded under the member's fingerprint (generate of the member itself refused it)."""
    import shutil

    member = tmp_path / "member"
    shutil.copytree(runs / "b", member)
    data = bytearray((member / "tokenizer" / "tokenizer.json").read_bytes())
    at = data.index(b'"merges"') + 12
    while not chr(data[at]).isalpha():
        at += 1
    data[at] = ord("Q") if data[at] != ord("Q") else ord("R")
    (member / "tokenizer" / "tokenizer.json").write_bytes(bytes(data))
    result = cli("average", runs / "b", member, "-o", tmp_path / "soup")
    assert result.exit_code == 1 and "tokenizer.json was changed after the artifact" in result.output, result.output
    assert not (tmp_path / "soup").exists()
