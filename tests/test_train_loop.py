"""The shared training loop on synthetic data: schedules, overfitting, exact resume, MLM masking."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from llmkit import artifacts
from llmkit.model.gpt import IGNORE_INDEX, ModelConfig
from llmkit.model.presets import build_model
from llmkit.options import flat_options
from llmkit.train.checkpoint import STATE_JSON, STATE_TENSORS, latest_checkpoint, read_training_state
from llmkit.train.distributed import DistInfo
from llmkit.train.loop import ArtifactSpec, LoopSettings, Trainer, accumulation_steps
from llmkit.train.objectives import lm_loss, mlm_mask
from llmkit.train.optim import build_optimizer, lr_at, param_groups
from llmkit.train.options import Checkpointing, Devices, Numerics, Optimization

torch.set_num_threads(1)
VOCAB, SEQ = 61, 16


class SyntheticBatches:
    """A batch provider keyed by global sample index over a fixed random token stream."""

    def __init__(self, same_batch: bool = False, fail_at: int | None = None):
        g = torch.Generator().manual_seed(123)
        self.stream = torch.randint(0, VOCAB, (4096,), generator=g)
        self.same_batch = same_batch
        self.fail_at = fail_at

    def __call__(self, indices):
        rows = []
        for k in indices:
            if self.fail_at is not None and k >= self.fail_at:
                raise KeyboardInterrupt("simulated crash")
            start = 0 if self.same_batch else (k * 37) % (len(self.stream) - SEQ - 1)
            rows.append(self.stream[start : start + SEQ + 1])
        block = torch.stack(rows)
        return block[:, :-1], block[:, 1:]


def model_config(**kw):
    base = dict(vocab_size=VOCAB, context_length=SEQ, n_layer=2, n_head=2, n_embd=32)
    base.update(kw)
    return ModelConfig(**base)


LOOP_FIELDS = ("max_steps", "global_batch", "micro_batch", "tokens_per_sample", "warmup_steps", "lr", "seed")


def loop_settings(**values) -> LoopSettings:
    """LoopSettings from flat names: the loop's own fields, the rest to the option group that has them."""
    own = {name: values.pop(name) for name in LOOP_FIELDS if name in values}
    own = {"seed": 0, "warmup_steps": 0, "lr": 1e-3, **own}
    groups = {}
    for name, cls in (("optim", Optimization), ("checkpoints", Checkpointing), ("devices", Devices), ("numerics", Numerics)):
        names = {o.name for o in flat_options(cls)}
        groups[name] = cls(**{k: values.pop(k) for k in list(values) if k in names})
    assert not values, f"unknown loop settings {values}"
    return LoopSettings(**groups, **own)


def make_trainer(tmp_path, batches, *, max_steps=20, resume=False, seed=0, config=None, loss_fn=lm_loss, **settings):
    torch.manual_seed(seed)
    model = build_model(config or model_config())
    base = dict(max_steps=max_steps, global_batch=8, micro_batch=4, tokens_per_sample=SEQ, seed=seed, lr=3e-3,
                warmup_steps=2, eval_every=0, save_every=0, log_every=1000)
    base.update(settings)
    spec = ArtifactSpec(config={"test": True}, seed=seed)
    return Trainer(model, loop_settings(**base), info=DistInfo(), run_dir=tmp_path, batches=batches, loss_fn=loss_fn,
                   spec=spec, resume=resume)


def test_lr_schedules():
    kw = dict(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(9, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_at(60, schedule="cosine", **kw) == pytest.approx(0.55)
    assert lr_at(110, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(60, schedule="linear", **kw) == pytest.approx(0.55)
    assert lr_at(35, schedule="linear", **kw) == pytest.approx(1.0 - 0.9 * 0.25)
    assert lr_at(100, schedule="constant", **kw) == 1.0


def test_weight_decay_groups_and_optimizers():
    model = build_model(model_config(norm="layernorm", bias=True))
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) > 0
    total = sum(p.numel() for p in decay["params"] + no_decay["params"])
    assert total == model.num_params()  # the tied embedding is counted once
    assert isinstance(build_optimizer(model, "sgd", lr=0.1, weight_decay=0.0), torch.optim.SGD)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_optimizers_step_and_checkpoint_as_torchs_own(name):
    """llmkit's optimizers skip torch's `torch._dynamo` decorators (2 s of a process's start): the
    steps must be torch's to the bit, and the named state the one torch.distributed.checkpoint gives."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    from llmkit.train.checkpoint import named_optimizer_state

    torch.manual_seed(0)
    ours_model = build_model(model_config(norm="layernorm", bias=True))  # tied head: one state, first name
    stock_model = build_model(model_config(norm="layernorm", bias=True))
    stock_model.load_state_dict(ours_model.state_dict())
    ours = build_optimizer(ours_model, name, lr=0.01, weight_decay=0.1)
    groups = param_groups(stock_model, 0.1)
    stock = (torch.optim.AdamW(groups, lr=0.01, betas=(0.9, 0.95), eps=1e-8, fused=True) if name == "adamw"
             else torch.optim.SGD(groups, lr=0.01, momentum=0.9, nesterov=True))
    assert type(ours) is not type(stock) and isinstance(ours, type(stock))
    tokens = torch.randint(0, VOCAB, (4, SEQ + 1))
    for _ in range(3):
        for model, optimizer in ((ours_model, ours), (stock_model, stock)):
            optimizer.zero_grad(set_to_none=True)
            model(tokens[:, :-1], tokens[:, 1:], return_logits=False)[1].backward()
            optimizer.step()
            assert torch.is_grad_enabled()  # the step's no-grad mode ends with it
    for (key, a), b in zip(ours_model.state_dict().items(), stock_model.state_dict().values()):
        assert torch.equal(a, b), key
    named, reference = named_optimizer_state(ours_model, ours), get_optimizer_state_dict(ours_model, ours)
    assert named["param_groups"] == reference["param_groups"] and list(named["state"]) == list(reference["state"])
    for key, values in reference["state"].items():
        assert values.keys() == named["state"][key].keys()
        assert all(torch.equal(named["state"][key][k], v) for k, v in values.items())
    ours.load_state_dict(ours.state_dict())  # the undecorated load round-trips


def test_a_one_process_run_never_loads_torch_dynamo(tmp_path):
    """About 2 s of every training process's start: torch's optimizers and its checkpoint helpers
    load `torch._dynamo` on their first call; a plain run keeps clear of both."""
    import subprocess
    import sys

    script = f"""
import sys
from pathlib import Path
from test_train_loop import SyntheticBatches, make_trainer
make_trainer(Path({str(tmp_path)!r}), SyntheticBatches(), max_steps=2, save_every=1).run()
print("torch._dynamo" in sys.modules, "torch.distributed.tensor" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["False", "False"], result.stdout


def test_a_resumed_run_loads_the_optimizer_as_torch_does_without_torch_dynamo(tmp_path):
    """Resuming reads the optimizer state by parameter name; torch's set_optimizer_state_dict would
    import torch._dynamo (about 2 s). Both give the optimizer the same state, and the run continues."""
    import subprocess
    import sys

    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    from llmkit.train import checkpoint as ckpt
    from llmkit.train.optim import build_optimizer

    make_trainer(tmp_path, SyntheticBatches(), max_steps=2, save_every=1, weight_decay=0.1).run()
    _, named, _, _ = ckpt.read_training_state(ckpt.latest_checkpoint(tmp_path))
    loaded = []
    for load in (lambda m, o: ckpt.load_optimizer_state(m, o, named, distributed=False),
                 lambda m, o: set_optimizer_state_dict(m, o, named)):
        model = build_model(model_config())
        optimizer = build_optimizer(model, "adamw", lr=3e-3, weight_decay=0.1)
        load(model, optimizer)
        loaded.append(optimizer.state_dict())
    ours, torchs = loaded
    assert ours["param_groups"] == torchs["param_groups"] and ours["state"].keys() == torchs["state"].keys()
    assert ours["state"] and all(torch.equal(ours["state"][i][k], torchs["state"][i][k]) for i in ours["state"] for k in ours["state"][i])
    script = f"""
import sys
from pathlib import Path
from test_train_loop import SyntheticBatches, make_trainer
make_trainer(Path({str(tmp_path)!r}), SyntheticBatches(), max_steps=3, save_every=1, weight_decay=0.1, resume=True).run()
print("torch._dynamo" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "False", result.stdout


def test_accumulation_derived_from_global_batch():
    s = loop_settings(max_steps=1, global_batch=64, micro_batch=8, tokens_per_sample=16)
    assert accumulation_steps(s, 1) == 8 and accumulation_steps(s, 2) == 4
    from llmkit.errors import UserError

    with pytest.raises(UserError, match="does not split into micro-batches of 4, 1 at a time"):
        accumulation_steps(loop_settings(max_steps=1, global_batch=10, micro_batch=4, tokens_per_sample=16), 1)


def test_a_batch_no_micro_batch_splits_is_not_said_to_fail_a_micro_batch_no_one_typed():
    """16 sequences over 3 processes at --micro-batch 8 "did not split into micro-batches of 5" (the micro-batch
    shrunk to the share), which no one asked for and none would split."""
    from llmkit.errors import UsageError
    from llmkit.train.launch import split_batch

    with pytest.raises(UsageError) as refused:
        split_batch(16, 8, 3, what="--batch-tokens 1024", fix=lambda multiple: f"choose a multiple of {multiple}")
    said = str(refused.value)
    assert "--batch-tokens 1024 does not split evenly into 3 shares" in said and "of 5" not in said
    assert "choose a multiple of 24" in said
    assert split_batch(24, 8, 3, what="", fix=str) == (8, 1) and split_batch(15, 8, 3, what="", fix=str) == (5, 1)


def test_a_batch_that_does_not_split_is_given_fixes_that_split_it():
    """The hint was computed from the micro-batch after it shrank to the batch: multiples of it that
    reach the micro-batch asked for failed again, with a new hint."""
    import re

    from llmkit.errors import UserError
    from llmkit.train.launch import split_batch

    def split(global_batch, micro_batch, world):
        return split_batch(global_batch, micro_batch, world, what="the batch", fix=lambda m: f"choose a multiple of {m}")

    refused = 0
    for world in (1, 2, 3, 4, 6):
        for micro_batch in (1, 3, 4, 8, 16):
            for global_batch in range(1, 100):
                try:
                    split(global_batch, micro_batch, world)
                except UserError as exc:
                    refused += 1
                    multiple = int(re.search(r"multiple of (\d+)", str(exc))[1])
                    for times in (1, 2, 3, 5, 7):
                        split(times * multiple, micro_batch, world)
                    kept = re.search(r"pass --micro-batch (\d+)", str(exc))
                    assert kept or global_batch % world, str(exc)
                    if kept:
                        split(global_batch, int(kept[1]), world)
    assert refused > 100


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_overfits_one_batch(tmp_path, arch):
    config = model_config(arch=arch, n_head=1, n_embd=64) if arch == "lstm" else None
    trainer = make_trainer(tmp_path, SyntheticBatches(same_batch=True), max_steps=150, config=config,
                           lr=1e-2, schedule="constant", weight_decay=0.0)
    result = trainer.run()
    assert result.loss < 0.1, result.loss
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 151))
    assert lines[0]["loss"] > 3.0 and {"loss", "lr", "tokens_per_s"} <= set(lines[0])


def test_sgd_momentum_lowers_loss(tmp_path):
    result = make_trainer(tmp_path, SyntheticBatches(same_batch=True), max_steps=60, optimizer="sgd", lr=0.5,
                          weight_decay=0.0, schedule="constant").run()
    assert result.loss < 2.0


def test_final_run_dir_is_checkpoint_and_loads_without_pickle(tmp_path, monkeypatch):
    make_trainer(tmp_path, SyntheticBatches(), max_steps=6, save_every=2, keep_last=2).run()
    art = artifacts.load(tmp_path, kind="checkpoint")
    assert {"model.safetensors", "model_config.json"} <= set(art.manifest.files) and set(art.manifest.state_files) == {STATE_JSON, STATE_TENSORS}
    assert "metrics.jsonl" not in art.manifest.files  # wall-clock figures stay out of the fingerprint
    assert artifacts.verify(tmp_path).ok
    steps = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert steps == ["step_0000002", "step_0000004", "step_0000006"]  # keep_last=2, and the final step's copy
    # Loading must never unpickle: make torch.load fail loudly.
    import pickle

    def no_unpickling(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    from llmkit.model.io import load_model

    model = load_model(tmp_path)
    assert model.config == model_config() and not model.training
    progress, optim_state, rng, _ = read_training_state(latest_checkpoint(tmp_path))
    assert progress["step"] == 6 and progress["samples_seen"] == 48 and progress["world_size"] == 1
    assert set(optim_state["state"]["tok_emb.weight"]) == {"step", "exp_avg", "exp_avg_sq"}
    assert len(rng["cpu"]) == 1


def test_resume_after_crash_is_bitwise_exact(tmp_path):
    """Crash mid-step (after checkpoint 4), resume, and match an uninterrupted run bit for bit."""
    kw = dict(max_steps=10, save_every=2, config=model_config(dropout=0.1))
    straight = make_trainer(tmp_path / "a", SyntheticBatches(), **kw)
    straight.run()
    crash = make_trainer(tmp_path / "b", SyntheticBatches(fail_at=5 * 8 + 3), **kw)
    with pytest.raises(KeyboardInterrupt):
        crash.run()
    assert latest_checkpoint(tmp_path / "b").name == "step_0000004"
    resumed = make_trainer(tmp_path / "b", SyntheticBatches(), resume=True, **kw)
    assert resumed.start_step == 4
    resumed.run()
    a = straight.raw.state_dict()
    b = resumed.raw.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))


def test_the_run_a_force_run_replaced_goes_with_its_first_checkpoint(tmp_path):
    """What docs/pretrain.md promises: the replaced run is deleted once the new one has a checkpoint
    (it used to stay, as big as a whole run, until the new run ended)."""
    (tmp_path / ".run.replaced-x" / "run").mkdir(parents=True)
    crash = make_trainer(tmp_path / "run", SyntheticBatches(fail_at=3 * 8), max_steps=10, save_every=2)
    with pytest.raises(KeyboardInterrupt):
        crash.run()
    assert latest_checkpoint(tmp_path / "run").name == "step_0000002"
    assert not (tmp_path / ".run.replaced-x").exists()


def test_nonfinite_loss_stops_and_names_step(tmp_path):
    class Poisoned(SyntheticBatches):
        def __call__(self, indices):
            x, y = super().__call__(indices)
            return x, y

    def nan_after_three(model, batch):
        loss = lm_loss(model, batch)
        return loss * float("nan") if trainer.optimizer.state and next(iter(trainer.optimizer.state.values()))["step"] >= 3 else loss

    trainer = make_trainer(tmp_path, Poisoned(), max_steps=10, save_every=2, loss_fn=nan_after_three)
    from llmkit.train.loop import NonFiniteLoss

    with pytest.raises(NonFiniteLoss, match=r"at step 4; .*step_0000002"):
        trainer.run()
    assert not (tmp_path / "manifest.json").exists()
    assert artifacts.verify(tmp_path / "checkpoints" / "step_0000002").ok


def test_a_nonfinite_loss_whose_weights_were_saved_names_that_checkpoint(tmp_path):
    """The weights after step 2 give the first NaN loss, and step 2 was a save step: the message used
    to say that no checkpoint was written and nothing is kept, beside that very checkpoint."""
    from llmkit.train.loop import NonFiniteLoss

    def nan_from_the_third_step(model, batch):
        loss = lm_loss(model, batch)
        return loss * float("nan") if trainer.optimizer.state and next(iter(trainer.optimizer.state.values()))["step"] >= 2 else loss

    trainer = make_trainer(tmp_path, SyntheticBatches(), max_steps=10, save_every=2, loss_fn=nan_from_the_third_step)
    with pytest.raises(NonFiniteLoss, match=r"at step 3; .*step_0000002, holds the weights that failed .*--force") as caught:
        trainer.run()
    assert "nothing is kept" not in str(caught.value)
    assert artifacts.verify(tmp_path / "checkpoints" / "step_0000002").ok


def test_a_nonfinite_gradient_under_a_finite_loss_stops_before_the_update(tmp_path):
    """sqrt at 0 has an infinite slope: the loss stays finite, its gradient is not. The step must
    not be taken (clipping a NaN norm would write NaN into every weight)."""
    from llmkit.train.loop import NonFiniteLoss

    def poisoned_gradient(model, batch):
        loss = lm_loss(model, batch)
        if trainer.optimizer.state and next(iter(trainer.optimizer.state.values()))["step"] >= 3:
            loss = loss + torch.sqrt(0.0 * next(model.parameters()).sum())
        return loss

    trainer = make_trainer(tmp_path, SyntheticBatches(), max_steps=10, save_every=2, loss_fn=poisoned_gradient)
    before = {k: v.clone() for k, v in trainer.raw.state_dict().items()}
    with pytest.raises(NonFiniteLoss, match=r"gradient norm became nan at step 4 .*step_0000002"):
        trainer.run()
    # the weights are those after step 3: finite, and not those of the start
    after = trainer.raw.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not (tmp_path / "manifest.json").exists()


def test_a_nonfinite_validation_loss_stops_the_run_unsaved(tmp_path):
    from llmkit.train.loop import NonFiniteLoss

    trainer = make_trainer(tmp_path, SyntheticBatches(), max_steps=6, eval_every=3, save_every=3)
    trainer.val_batches, trainer.val_size = SyntheticBatches(), 4
    trainer.engine.evaluate = lambda *args: float("nan")  # the model's validation diverged
    with pytest.raises(NonFiniteLoss, match=r"validation loss became nan after step 3.*no checkpoint was written yet"):
        trainer.run()
    assert not (tmp_path / "manifest.json").exists() and not (tmp_path / "checkpoints").exists()
    assert '"val_loss": NaN' in (tmp_path / "metrics.jsonl").read_text()


def test_mlm_masking_is_deterministic_80_10_10():
    tokens = torch.randint(10, 1000, (64, 128))
    specials = [0, 1, 2, 3]
    tokens[:, 0] = 1  # a special token is never masked
    inputs, targets = mlm_mask(tokens, range(64), seed=5, mask_id=3, vocab_size=1000, special_ids=specials)
    again, _ = mlm_mask(tokens, range(64), seed=5, mask_id=3, vocab_size=1000, special_ids=specials)
    assert torch.equal(inputs, again)
    chosen = targets != IGNORE_INDEX
    assert not chosen[:, 0].any()
    assert math.isclose(chosen.float().mean().item(), 0.15, abs_tol=0.01)
    assert torch.equal(targets[chosen], tokens[chosen])
    masked = (inputs == 3) & chosen
    kept = (inputs == tokens) & chosen
    assert math.isclose(masked.sum().item() / chosen.sum().item(), 0.8, abs_tol=0.03)
    assert math.isclose(kept.sum().item() / chosen.sum().item(), 0.1 + 0.1 / 990 * 0, abs_tol=0.03)
    assert torch.equal(inputs[~chosen], tokens[~chosen])


def test_cuda_oom_names_the_knob(tmp_path):
    def out_of_memory(model, batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    trainer = make_trainer(tmp_path, SyntheticBatches(), max_steps=3, loss_fn=out_of_memory)
    from llmkit.errors import UserError

    with pytest.raises(UserError, match=r"out of memory at step 1 with --micro-batch 4: lower --micro-batch") as raised:
        trainer.run()
    assert not (tmp_path / "manifest.json").exists()
    from llmkit.errors import kept_run_can_go_on

    assert kept_run_can_go_on(raised.value)  # (a run is kept for --resume under a smaller --micro-batch)


def test_tensorboard_events_are_written_and_left_out_of_the_artifact(tmp_path):
    make_trainer(tmp_path, SyntheticBatches(), max_steps=3, tensorboard=True).run()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert not any(name.startswith("tensorboard") for name in artifacts.load(tmp_path).manifest.files)


def test_a_full_disk_in_a_worker_or_a_sweep_gets_the_advice_that_fits(tmp_path, monkeypatch):
    """A kept run's full disk says --resume; a worker's comes back as its one line (not an OSError) and
    got no advice; a sweep has no --resume (the same command goes on)."""
    from llmkit import artifacts
    from llmkit.errors import UserError, advice_of
    from llmkit.train import distributed
    from llmkit.train.launch import run_directory

    def torchrun(command, env, held):
        failure = {"message": "no space left on the device", "exit_code": 1, "keeps_work": True}
        (tmp_path / "launch" / "error.txt").write_text(json.dumps(failure) + "\n")
        return 1

    monkeypatch.setattr(distributed, "_run_torchrun", torchrun)
    for kind, force, said in (("checkpoint", False, "rerun the command with --resume to"),
                              ("checkpoint", True, "rerun the command with --resume in place of --force"),
                              ("sweep", False, "rerun the same command to continue"),
                              ("sweep", True, "rerun the command without --force to continue")):
        out = tmp_path / f"{kind}-{force}"
        with pytest.raises(UserError) as raised:
            with run_directory(out, resume=False, force=force, inputs=[], kind=kind):
                # (as the run writes its own checkpoints: holding the run's lock, not taking one)
                with artifacts.create(out / "checkpoints" / "step_0000001", "checkpoint", lock=False) as build:
                    (build.dir / "model.safetensors").write_bytes(b"x")
                distributed.relaunch("mod:fn", {}, tmp_path / "launch", nproc=2)
        assert raised.value.keeps_work and said in advice_of(raised.value) and out.is_dir(), advice_of(raised.value)

    # safetensors reports a full disk in its own type, not an OSError: the run kept was not said, nor --resume
    from safetensors import SafetensorError

    from llmkit.errors import kept_run_can_go_on, one_line

    full = SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on "
                           "device\" }) (os error 28)")
    assert kept_run_can_go_on(full) and kept_run_can_go_on(MemoryError())
    assert not kept_run_can_go_on(ValueError("a bug")) and not kept_run_can_go_on(UserError("bad input"))
    out = tmp_path / "in-process"
    with pytest.raises(SafetensorError) as raised:
        with run_directory(out, resume=False, force=False, inputs=[], kind="checkpoint"):
            with artifacts.create(out / "checkpoints" / "step_0000001", "checkpoint", lock=False) as build:
                (build.dir / "model.safetensors").write_bytes(b"x")
            raise full
    assert "rerun the command with --resume to" in advice_of(raised.value) and "no space left" in one_line(raised.value)


def test_multi_node_addresses_are_asked_for_only_where_llmkit_meets_the_nodes(monkeypatch):
    """--nnodes 2 needs --master-addr where llmkit starts torchrun; under a scheduler's torchrun, torchrun
    meets the nodes and --nnodes only counts them (for --tp over nodes): it was refused there too."""
    from llmkit.errors import UsageError
    from llmkit.pretrain.config import PretrainConfig

    for name in ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="multi-node training needs --master-addr"):
        PretrainConfig.build(nnodes=2)
    with pytest.raises(UsageError, match="--master-port would change nothing here"):
        PretrainConfig.build(master_port=1234)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    assert PretrainConfig.build(nnodes=2).devices.nnodes == 2


def test_relaunch_builds_torchrun_command(tmp_path, monkeypatch, capsys):
    from llmkit.errors import UserError
    from llmkit.train import distributed

    calls = []

    monkeypatch.setattr(distributed, "_run_torchrun", lambda command, env, held: calls.append(command) or 0)
    distributed.relaunch("mod:fn", {"a": 1}, tmp_path / "launch", nproc=8, nnodes=2, node_rank=1,
                         master_addr="10.0.0.1", master_port=1234)
    command = calls[-1]
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert {"--nproc-per-node=8", "--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.1", "--master-port=1234",
            "--rdzv-conf=timeout=600"} <= set(command)
    assert command[-3:] == ["-m", "llmkit.train.worker", str(tmp_path / "launch" / "launch.json")]
    spec = json.loads((tmp_path / "launch" / "launch.json").read_text())
    assert spec["entry"] == "mod:fn" and spec["arguments"] == {"a": 1}
    distributed.relaunch("mod:fn", {}, tmp_path / "launch", nproc=2)
    assert "--standalone" in calls[-1] and not any(c.startswith("--nnodes") for c in calls[-1])
    with pytest.raises(UserError, match="--master-addr"):
        distributed.relaunch("mod:fn", {}, tmp_path / "launch", nproc=2, nnodes=2)

    def fail(exit_code):
        def torchrun(command, env, held):
            message = {"message": "the worker's one-line message", "exit_code": exit_code}
            (tmp_path / "launch" / "error.txt").write_text(json.dumps(message) + "\n")
            held.append("Traceback (most recent call last):\n  torchrun's own\n")
            return 1
        return torchrun

    from llmkit.errors import UsageError

    monkeypatch.setattr(distributed, "_run_torchrun", fail(1))
    with pytest.raises(UserError, match="^the worker's one-line message$") as raised:
        distributed.relaunch("mod:fn", {}, tmp_path / "launch", nproc=2)
    assert raised.value.exit_code == 1
    assert "torchrun's own" not in capsys.readouterr().err  # a worker explained the failure: torchrun's traceback stays hidden
    monkeypatch.setattr(distributed, "_run_torchrun", fail(2))  # a worker's usage error exits 2 here too
    with pytest.raises(UsageError, match="^the worker's one-line message$"):
        distributed.relaunch("mod:fn", {}, tmp_path / "launch", nproc=2)


def test_the_nodes_compare_their_inputs_by_content_not_path(tmp_path):
    """An artifact by fingerprint; a plain file the stage reads (finetune's data, --val-data, template) by the
    digest its launcher computed once for the node, in place of its path: a node's own copy at another path
    is the same input (a copy of the data was refused as "different options"), other data is not."""
    import shutil

    from llmkit import artifacts
    from llmkit.train.worker import _options_digest

    for name in ("a", "b"):
        with artifacts.create(tmp_path / name, "tokens") as build:
            (build.dir / "ids.bin").write_bytes(name.encode())
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    digest = {name: _options_digest({"config": {"seed": 0}, "tokens": str(tmp_path / name)}) for name in ("a", "b", "copy")}
    assert digest["a"] == digest["copy"] != digest["b"]  # (a copy at another path: the same fingerprint)

    def finetune(val_path, data_sha, val_sha):
        return _options_digest({"config": {"seed": 0, "val_data": val_path}, "data": f"/node/{val_path}/train.jsonl"},
                               {"data": data_sha, "val_data": val_sha})

    assert finetune("/n0/val.jsonl", "d", "v") == finetune("/n1/elsewhere.jsonl", "d", "v")
    assert finetune("/n0/val.jsonl", "d", "v") != finetune("/n0/val.jsonl", "d", "other")
    assert _options_digest({"config": {}, "data": "org/hub-name"}) != _options_digest({"config": {}, "data": "org/other"})


def test_finished_run_continues_with_more_steps_and_survives_a_cut_metrics_line(tmp_path):
    make_trainer(tmp_path, SyntheticBatches(), max_steps=4, save_every=0).run()
    assert artifacts.load(tmp_path).stats["step"] == 4
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 5, "lo')  # what a kill in mid-write leaves
    more = make_trainer(tmp_path, SyntheticBatches(), max_steps=6, save_every=0, resume=True)
    assert more.start_step == 4
    more.run()
    assert artifacts.load(tmp_path).stats["step"] == 6 and artifacts.verify(tmp_path).ok
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == list(range(1, 7))


def test_resume_refuses_another_model_or_seed(tmp_path):
    from llmkit.errors import UserError

    make_trainer(tmp_path, SyntheticBatches(), max_steps=2, save_every=2).run()
    with pytest.raises(UserError, match=r"cannot resume .*n_layer 2 -> 3"):
        make_trainer(tmp_path, SyntheticBatches(), max_steps=4, resume=True, config=model_config(n_layer=3))
    with pytest.raises(UserError, match=r"cannot resume .*seed 0 -> 1"):
        make_trainer(tmp_path, SyntheticBatches(), max_steps=4, resume=True, seed=1)


def test_prune_removes_what_killed_writes_and_prunes_left(tmp_path):
    """A hidden folder (a checkpoint being written when the process died) and a step folder without
    its manifest (a prune cut short: it removes the manifest first) are leftovers, not checkpoints."""
    from llmkit.train import checkpoint as ckpt

    root = tmp_path / "checkpoints"
    for name, complete in (("step_0000002", True), ("step_0000004", False), (".step_0000006.tmp", False), ("step_0000008", True)):
        (root / name).mkdir(parents=True)
        (root / name / "model.safetensors").write_bytes(b"x")
        if complete:
            (root / name / "manifest.json").write_text("{}")
    ckpt.prune(tmp_path, keep_last=0)
    assert sorted(p.name for p in root.iterdir()) == ["step_0000002", "step_0000008"]


def test_speed_counts_the_training_steps_not_checkpoint_writes(tmp_path, monkeypatch):
    """tokens/s (and MFU) time the steps themselves: a slow checkpoint write or validation in the
    same log window used to count as training time."""
    import time as clock

    trainer = make_trainer(tmp_path, SyntheticBatches(), max_steps=6, save_every=2, log_every=1000)
    saving = trainer.save_intermediate

    def slow_save(*args, **kwargs):
        clock.sleep(1.0)
        return saving(*args, **kwargs)

    monkeypatch.setattr(trainer, "save_intermediate", slow_save)
    trainer.run()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    tokens_per_step = 8 * SEQ
    # After two writes of a second each, the speed still says a step takes well under a second
    assert lines[-1]["tokens_per_s"] > 4 * tokens_per_step, lines[-1]


def test_the_progress_line_shows_the_gradient_norm_and_tags_an_earlier_validation(tmp_path, capsys):
    """A logged line at step 6 repeated step 4's validation loss as if measured then; the gradient
    norm (before clipping), the first sign of instability, was in metrics.jsonl only."""
    from llmkit.train.metrics import MetricsLogger

    logger = MetricsLogger(tmp_path, enabled=True, tensorboard=False, resume_step=0, max_steps=6, log_every=2)
    for step in range(1, 7):
        values = {"loss": 2.0, "lr": 1e-3, "grad_norm": 0.5 * step, "tokens_per_s": 100.0}
        if step == 4:
            values["val_loss"] = 1.75
        logger.log(step, values)
    logger.close()
    lines = {int(line.split()[1].split("/")[0]): line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")}
    assert "gnorm 2" in lines[4] and "| val 1.7500 |" in lines[4], lines
    assert "| val@4 1.7500 |" in lines[6] and "gnorm 3 " in lines[6], lines
    assert "val" not in lines[2]
