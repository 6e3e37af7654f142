"""LoRA: only adapters train, the base stays bit-identical, and merging gives the same logits."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from llmkit import artifacts
from test_finetune import build_base, read_jsonl, write_jsonl

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def base(shared_data, tmp_path_factory):
    return build_base(shared_data, tmp_path_factory)


def _tiny_gpt(**overrides):
    from llmkit.model.gpt import GPT, ModelConfig

    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=64, context_length=32, n_layer=2, n_head=2, n_embd=32, **overrides))


@pytest.mark.parametrize("overrides", [{}, {"bias": True, "activation": "gelu", "norm": "layernorm", "pos": "learned"}],
                         ids=["llama-style", "gpt2-style"])
def test_adapters_start_at_the_base_train_alone_and_merge_to_the_same_logits(overrides):
    from llmkit.finetune.lora import LoRALinear, apply_lora, count_parameters, merge_lora
    from llmkit.model.adapters import merge_state_dict

    model = _tiny_gpt(**overrides)
    evaluated = _tiny_gpt(**overrides).eval()
    apply_lora(evaluated, ["all"], rank=2, alpha=4.0, dropout=0.5)
    assert not any(m.training for m in evaluated.modules())  # an adapter on an eval-mode model drops nothing
    idx = torch.randint(0, 64, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before, _ = model(idx)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = apply_lora(model, ["q_proj", "kv_proj", "up_proj"], rank=4, alpha=8.0)
    assert sorted(adapted) == sorted(f"blocks.{i}.{m}" for i in range(2) for m in ("attn.q_proj", "attn.kv_proj", "mlp.up_proj"))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], before)  # B = 0: exactly the base model
    trainable, total = count_parameters(model)
    lora_params = {n for n, p in model.named_parameters() if p.requires_grad}
    assert lora_params == {f"{a}.lora_{x}" for a in adapted for x in "AB"}
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n in lora_params) < total / 5

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    state = model.state_dict()
    for key, value in base_state.items():
        assert torch.equal(state[key], value), key  # every base tensor is bit-identical
    assert all(state[f"{a}.lora_B"].abs().sum() > 0 for a in adapted)
    with torch.no_grad():
        adapted_logits, _ = model(idx)
    assert not torch.allclose(adapted_logits, before, atol=1e-4)

    merged_state = merge_state_dict(state, scaling=2.0)
    assert set(merged_state) == set(base_state)
    plain = _tiny_gpt(**overrides)
    plain.load_state_dict(merged_state)
    model.eval()
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert not any(m.training for m in model.modules()) and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        assert torch.allclose(plain(idx)[0], adapted_logits, atol=1e-5, rtol=0)
        assert torch.equal(model(idx)[0], plain(idx)[0])  # merging in memory and on file agree bit for bit
    for key in base_state:
        changed = not torch.equal(merged_state[key], base_state[key])
        assert changed == any(key == f"{a}.weight" for a in adapted), key


def test_lora_on_an_lstm_says_to_fine_tune_it_in_full():
    """Its gates are no linear layers: the refusal listed the layers as "(none: LoRA needs a Transformer)"."""
    from llmkit.errors import UsageError
    from llmkit.finetune.lora import apply_lora
    from llmkit.model.gpt import ModelConfig
    from llmkit.model.lstm import LSTMLM

    lstm = LSTMLM(ModelConfig(arch="lstm", vocab_size=64, context_length=32, n_layer=1, n_embd=32))
    with pytest.raises(UsageError, match="this model has none \\(an LSTM\\); leave out --lora-rank to fine-tune it in full"):
        apply_lora(lstm, ["all"], rank=2, alpha=4.0)


def test_freeze_offers_the_groups_and_names_the_model_has():
    """An LSTM was offered attention, mlp, norms and blocks.0.*, none of which it has."""
    from llmkit.errors import UsageError
    from llmkit.finetune.lora import freeze
    from llmkit.model.gpt import ModelConfig
    from llmkit.model.lstm import LSTMLM

    lstm = LSTMLM(ModelConfig(arch="lstm", vocab_size=64, context_length=32, n_layer=2, n_embd=32))
    with pytest.raises(UsageError, match=r"--freeze attention matches no parameter of this model; use a group "
                                         r"\(embeddings, lm_head\) or a name glob such as lstm\.\*$"):
        freeze(lstm, ["attention"])
    assert freeze(lstm, ["lstm.*"]) and not any(p.requires_grad for n, p in lstm.named_parameters() if n.startswith("lstm."))


def test_lora_finetune_trains_adapters_and_exports_merged_weights(base, shared_data, cli, tmp_path):
    from llmkit.finetune.lora import apply_lora
    from llmkit.model.io import load_checkpoint

    rows = [{"prompt": r["text"], "response": "positive" if r["label"] else "negative"}
            for r in read_jsonl(shared_data / "sentiment" / "train.jsonl")[:256]]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    run = tmp_path / "run"
    result = cli("finetune", base["checkpoint"], "--data", data, "-o", run, "--lora-rank", "4", "--lora-alpha", "8",
                 "--lora-targets", "q_proj,kv_proj", "--lora-targets", "out_proj", "--max-steps", "12", "--batch-size", "16",
                 "--micro-batch", "16", "--save-every", "12", "--keep-last", "0", "--eval-every", "6", "--truncate")
    assert result.exit_code == 0, result.output
    stats = artifacts.load(run, kind="checkpoint").stats
    adapters = sum(t.numel() for k, t in load_file(str(run / "checkpoints" / "step_0000012" / "model.safetensors")).items()
                   if k.endswith((".lora_A", ".lora_B")))
    # printed at the start, as peft counts (adapters included); the artifact's `params` are its merged model's
    assert f"{stats['trainable_params']:,} of {stats['params'] + adapters:,} parameters trainable" in result.output
    assert f"the adapters fold into the {stats['params']:,} of the model" in " ".join(result.output.split())  # (its end line's)
    assert stats["params"] == sum(t.numel() for t in load_file(str(run / "model.safetensors")).values())
    assert stats["frozen_params"] == stats["params"] + adapters - stats["trainable_params"] > 0  # the whole base
    assert 0 < stats["trainable_params"] < stats["params"] / 5 and stats["lora_layers"] == 6
    val = [json.loads(line)["val_loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if "val_loss" in line]
    assert val[1] < val[0]

    base_state = load_file(str(base["checkpoint"] / "model.safetensors"))
    # The intermediate checkpoint at the last step keeps the adapters alone (the base tensors are
    # untouched: a resume takes them from the base), a fraction of the model on disk.
    step_weights = run / "checkpoints" / "step_0000012" / "model.safetensors"
    intermediate = load_file(str(step_weights))
    adapter_keys = {k for k in intermediate if k.endswith((".lora_A", ".lora_B"))}
    assert len(adapter_keys) == 12 and set(intermediate) == adapter_keys
    assert step_weights.stat().st_size < (base["checkpoint"] / "model.safetensors").stat().st_size / 5
    assert json.loads((step_weights.parent / "training_state.json").read_text())["weights"] == "trainable"
    # The final checkpoint holds merged plain weights: only the adapted layers differ from the base.
    final = load_file(str(run / "model.safetensors"))
    assert set(final) == set(base_state)
    adapted_weights = {k[: -len(".lora_A")] + ".weight" for k in adapter_keys if k.endswith(".lora_A")}
    for key in base_state:
        assert torch.equal(final[key], base_state[key]) != (key in adapted_weights), key
    task = json.loads((run / "task.json").read_text())
    assert task["lora"] == {"rank": 4, "alpha": 8.0, "targets": ["q_proj", "kv_proj", "out_proj"], "layers": 6, "merged": True}

    merged = load_checkpoint(run)  # an ordinary checkpoint: nothing LoRA-specific to load it
    # the step checkpoint loads as its base with the adapters merged: the run's own final weights, to the bit
    step = load_checkpoint(run / "checkpoints" / "step_0000012")
    assert step.model.state_dict().keys() == merged.model.state_dict().keys()
    assert all(torch.equal(value, merged.model.state_dict()[key]) for key, value in step.model.state_dict().items())
    said = [cli("generate", path, "-p", "a gripping film", "-n", "6", "--temperature", "0") for path in (run, step.artifact.path)]
    assert said[0].exit_code == 0 and said[0].output == said[1].output, said[1].output
    # exported, its weights are merged: imported again, it is no step of adapters (it was "damaged: no input 'base'")
    assert cli("export", step.artifact.path, "-o", run.parent / "step-hf").exit_code == 0
    assert cli("import", run.parent / "step-hf", "-o", run.parent / "step-back").exit_code == 0
    back = load_checkpoint(run.parent / "step-back")
    assert back.task.lora.merged and back.model.state_dict().keys() == merged.model.state_dict().keys()
    assert all(torch.equal(value, merged.model.state_dict()[key]) for key, value in back.model.state_dict().items())
    with_adapters = load_checkpoint(base["checkpoint"]).model
    apply_lora(with_adapters, ["q_proj", "kv_proj", "out_proj"], rank=4, alpha=8.0)
    missing, unexpected = with_adapters.load_state_dict(intermediate, strict=False)
    assert set(missing) == set(base_state) | {"lm_head.weight"} and not unexpected  # the base's, as built
    idx = torch.tensor([merged.tokenizer.encode("a gripping , funny and moving film")])
    with torch.no_grad():
        assert torch.allclose(merged.model(idx)[0], with_adapters.eval()(idx)[0], atol=1e-5, rtol=0)


def test_a_finished_lora_run_resumes_and_extends_as_a_straight_run(base, shared_data, cli, tmp_path):
    """The final weights are merged, so they cannot go on training: the last step is also kept as an
    unmerged step checkpoint (even when it is not a --save-every step), which --resume continues from.
    (It used to load the merged weights into the adapted model: "the checkpoint is damaged".)"""
    rows = [{"prompt": r["text"], "response": "positive" if r["label"] else "negative"}
            for r in read_jsonl(shared_data / "sentiment" / "train.jsonl")[:64]]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    flags = ["--data", data, "--lora-rank", "4", "--batch-size", "8", "--micro-batch", "8", "--eval-every", "0", "--truncate",
             "--schedule", "constant"]  # (a decay over the run's length would differ between 3 + 2 steps and 5)
    run, straight = tmp_path / "run", tmp_path / "straight"
    assert cli("finetune", base["checkpoint"], *flags, "--max-steps", "3", "-o", run).exit_code == 0
    assert (run / "checkpoints" / "step_0000003").is_dir()  # (the default --save-every is 200)
    again = cli("finetune", base["checkpoint"], *flags, "--max-steps", "3", "-o", run, "--resume")
    assert again.exit_code == 0 and "finished at step 3 already" in again.output, again.output
    # the saved run's defaults are its own: --lora-alpha 8 is what rank 4 trained at, not a change from rank 8's 16
    other = [*flags[:flags.index("--lora-rank")], "--lora-rank", "8", "--lora-alpha", "8", *flags[flags.index("--lora-rank") + 2:]]
    refused = cli("finetune", base["checkpoint"], *other, "--max-steps", "5", "-o", run, "--resume")
    assert refused.exit_code == 1 and "(--lora-rank 4 -> 8)" in refused.output, refused.output
    longer = cli("finetune", base["checkpoint"], *flags, "--max-steps", "5", "-o", run, "--resume")
    assert longer.exit_code == 0 and "resumed from step 3" in longer.output, longer.output
    assert cli("finetune", base["checkpoint"], *flags, "--max-steps", "5", "-o", straight).exit_code == 0
    # a run made before the last step was kept unmerged (no step folder): refused, not retrained from step 0
    import shutil

    old = tmp_path / "old"
    shutil.copytree(straight, old)
    shutil.rmtree(old / "checkpoints")
    refused = cli("finetune", base["checkpoint"], *flags, "--max-steps", "6", "-o", old, "--resume")
    assert refused.exit_code != 0 and "holds only its merged final weights" in refused.output, refused.output
    assert artifacts.load(old).fingerprint == artifacts.load(straight).fingerprint  # left as it was
    assert load_file(str(run / "model.safetensors")).keys() == load_file(str(straight / "model.safetensors")).keys()
    for key, value in load_file(str(straight / "model.safetensors")).items():
        assert torch.equal(load_file(str(run / "model.safetensors"))[key], value), key


def test_adapters_on_some_layers_resume_and_their_step_is_named_as_adapters(base, shared_data, cli, tmp_path):
    """A step checkpoint keeps the trainable tensors only: with --lora-targets on the first block, its
    weights hold one layer of a deeper model, which a check of the config against the weights took
    for a damaged checkpoint (the resume failed; generate said "rebuild it")."""
    rows = [{"prompt": r["text"], "response": "positive" if r["label"] else "negative"}
            for r in read_jsonl(shared_data / "sentiment" / "train.jsonl")[:32]]
    flags = ["--data", write_jsonl(tmp_path / "data.jsonl", rows), "--lora-rank", "2", "--lora-targets", "blocks.0.*",
             "--batch-size", "8", "--eval-every", "0", "--truncate", "-o", tmp_path / "run"]
    assert cli("finetune", base["checkpoint"], *flags, "--max-steps", "2").exit_code == 0
    resumed = cli("finetune", base["checkpoint"], *flags, "--max-steps", "3", "--resume")
    assert resumed.exit_code == 0 and "resumed from step 2" in resumed.output, resumed.output
    step = tmp_path / "run" / "checkpoints" / "step_0000002"
    said = cli("generate", step, "-p", "x", "-n", "2")
    assert said.exit_code == 0, said.output  # (its base with the adapters merged)
    # a step copied away from its base: the adapters alone are no model, and the message says what is missing
    import shutil

    moved = tmp_path / "elsewhere" / "step"  # (one folder less deep than the run's steps: its base path leads nowhere)
    shutil.copytree(step, moved)
    said = cli("generate", moved, "-p", "x", "-n", "2")
    lines = said.output.strip().splitlines()
    assert said.exit_code == 1 and len(lines) == 1 and "is a LoRA step checkpoint (its adapters only)" in lines[0], said.output
    assert "that base is not there; put it back where the run read it (a finished run's own directory holds merged weights" in lines[0]


@pytest.mark.parametrize("method", ["lora", "full", "dpo"])
def test_training_steps_match_transformers_and_peft(shared_data, method):
    """benchmarks/finetune.py at a tiny size: llmkit's training step (and LoRA) against
    transformers (+ peft's LoRA) from the same weights on the same DialogSum batches. LoRA's losses
    agree to float rounding at every step; full fine-tuning's first step does, and Adam carries
    rounding differences forward after it. DPO (LoRA): TRL's loss written out over transformers."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "finetune.py"
    task = ["--task", "dpo", "--method", "lora"] if method == "dpo" else ["--method", method]
    command = [sys.executable, str(script), *task, "--preset", "tiny", "--steps", "2", "--rounds", "1",
               "--seq-len", "128", "--vocab-size", "512", "--batch-size", "4", "--threads", "1"]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, LLMKIT_SHARED_DATA=str(shared_data)))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    first, worst = map(float, re.search(r"first step to (\S+) relative, all \d+ steps to (\S+)", result.stdout).groups())
    # (DPO's loss is a difference of sums over whole replies: its rounding, relative to a loss near log 2, a little more)
    assert first < (1e-5 if method == "dpo" else 1e-6) and worst < (1e-2 if method == "full" else 1e-5), result.stdout


def test_a_step_checkpoint_of_adapters_loads_over_the_base_and_refuses_another_set(tmp_path):
    """Step checkpoints of a LoRA run hold only what trains; a resume copies them over the model
    built from the base, and a file that is not exactly that set is a one-line error."""
    from safetensors.torch import save_file

    from llmkit.errors import UserError
    from llmkit.finetune.lora import apply_lora
    from llmkit.train.checkpoint import load_trainable_weights

    torch.manual_seed(0)
    trained, fresh = _tiny_gpt(), _tiny_gpt()
    fresh.load_state_dict(trained.state_dict())
    for model in (trained, fresh):
        apply_lora(model, ["q_proj"], rank=2, alpha=4.0)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if param.requires_grad:
                param.normal_()
    adapters = {name: param.detach().clone() for name, param in trained.named_parameters() if param.requires_grad}
    save_file(adapters, str(tmp_path / "step.safetensors"))
    load_trainable_weights(fresh, tmp_path / "step.safetensors")
    for (name, a), b in zip(trained.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    save_file(dict(list(adapters.items())[1:]), str(tmp_path / "short.safetensors"))
    with pytest.raises(UserError, match="does not hold this run's trainable parameters"):
        load_trainable_weights(fresh, tmp_path / "short.safetensors")


def test_a_step_over_a_bf16_base_loads_as_the_run_merges_it(base, shared_data, cli, tmp_path):
    """A base imported in bf16 trains upcast to float32, and the run merges its adapters there; a step
    checkpoint's load merged them into the bf16 weights, rounding away a tenth of the update."""
    from llmkit.model.io import load_checkpoint

    rows = [{"prompt": r["text"], "response": "positive" if r["label"] else "negative"}
            for r in read_jsonl(shared_data / "sentiment" / "train.jsonl")[:32]]
    assert cli("export", base["checkpoint"], "-o", tmp_path / "hf").exit_code == 0
    assert cli("import", tmp_path / "hf", "--dtype", "bfloat16", "-o", tmp_path / "bf16").exit_code == 0
    flags = ["--data", write_jsonl(tmp_path / "data.jsonl", rows), "--lora-rank", "4", "--batch-size", "8", "--eval-every", "0",
             "--truncate", "--max-steps", "2", "--save-every", "2", "--keep-last", "0", "--lr", "0.05", "-o", tmp_path / "run"]
    assert cli("finetune", tmp_path / "bf16", *flags).exit_code == 0
    step, final = (load_checkpoint(path).model.state_dict() for path in (tmp_path / "run" / "checkpoints" / "step_0000002",
                                                                         tmp_path / "run"))
    assert step.keys() == final.keys() and all(torch.equal(step[key], final[key]) for key in final)


def test_a_lora_runs_saved_steps_average_merged_as_generate_loads_them(base, shared_data, cli, tmp_path):
    """--average-last and llmkit average take a LoRA run's step checkpoints (adapters and the trained
    head alone) as their base with the adapters merged, W + (alpha / r) B A: refused before ("holds
    unmerged LoRA adapters"), so a LoRA run had no weight average at all."""
    from llmkit.model.averaging import mean_state

    rows = read_jsonl(shared_data / "sentiment" / "train.jsonl")[:48]
    run = tmp_path / "run"
    flags = ["--task", "classify", "--data", write_jsonl(tmp_path / "data.jsonl", rows), "--lora-rank", "2", "--lora-alpha", "6",
             "--batch-size", "8", "--eval-every", "0", "--truncate", "--max-steps", "6", "--save-every", "2", "--keep-last", "0",
             "--lr", "0.05"]
    assert cli("finetune", base["checkpoint"], *flags, "--average-last", "3", "-o", run).exit_code == 0
    base_weights = load_file(str(base["checkpoint"] / "model.safetensors"))

    def merged_by_hand(step):
        trained = load_file(str(run / "checkpoints" / f"step_{step:07d}" / "model.safetensors"))
        assert any(key.endswith(".lora_A") for key in trained) and any(key.startswith("classifier.") for key in trained)
        state = {**{k: v.float() for k, v in base_weights.items() if not k.startswith("classifier.")},
                 **{k: v for k, v in trained.items() if not k.endswith((".lora_A", ".lora_B"))}}
        for key in [k for k in trained if k.endswith(".lora_A")]:
            layer = key[: -len(".lora_A")]
            state[f"{layer}.weight"] = state[f"{layer}.weight"] + 3.0 * (trained[f"{layer}.lora_B"] @ trained[key])
        return state

    members = {artifacts.load(run / "checkpoints" / f"step_{s:07d}").fingerprint: merged_by_hand(s) for s in (2, 4)}
    members[artifacts.load(run).fingerprint] = load_file(str(run / "model.safetensors"))
    by_hand = mean_state([members[key] for key in sorted(members)], [1 / 3] * 3)  # (summed in fingerprint order)
    average = load_file(str(run / "average" / "model.safetensors"))
    assert average.keys() == by_hand.keys()
    assert all(torch.allclose(average[key], by_hand[key], rtol=0, atol=1e-6) for key in by_hand)
    # as generate and eval load a step: the same weights, bit for bit, whichever reads them
    steps = [run / "checkpoints" / f"step_{s:07d}" for s in (2, 4)]
    assert cli("average", *steps, run, "-o", tmp_path / "soup").exit_code == 0
    assert all(torch.equal(load_file(str(tmp_path / "soup" / "model.safetensors"))[key], average[key]) for key in average)
    soup = artifacts.load(tmp_path / "soup")
    assert json.loads((soup.path / "task.json").read_text())["lora"]["merged"] is True  # (plain weights: loaded as such)
    scored = cli("eval", tmp_path / "soup", "--data", write_jsonl(tmp_path / "test.jsonl", rows[:16]), "-o", tmp_path / "eval")
    assert scored.exit_code == 0, scored.output


def test_a_lora_runs_moving_average_is_of_its_merged_weights_and_resumes_exactly(base, shared_data, cli, tmp_path):
    """--ema under LoRA averages each adapted layer's merged weight W + (alpha / r) B A after every
    update (refused before: the adapters alone cannot be averaged, a mean of A's and B's is not the
    mean of their products); RUN/ema holds plain weights, and a resume goes on averaging exactly."""
    rows = [{"prompt": r["text"], "response": "positive" if r["label"] else "negative"}
            for r in read_jsonl(shared_data / "sentiment" / "train.jsonl")[:32]]
    flags = ["--data", write_jsonl(tmp_path / "data.jsonl", rows), "--lora-rank", "2", "--lora-alpha", "6", "--batch-size", "8",
             "--eval-every", "0", "--truncate", "--save-every", "1", "--keep-last", "0", "--lr", "0.05",
             "--schedule", "constant", "--ema", "0.5"]
    made = cli("finetune", base["checkpoint"], *flags, "--max-steps", "4", "-o", tmp_path / "run")
    assert made.exit_code == 0, made.output
    base_weights = {k: v.float() for k, v in load_file(str(base["checkpoint"] / "model.safetensors")).items()}

    def merged(step):
        trained = load_file(str(tmp_path / "run" / "checkpoints" / f"step_{step:07d}" / "model.safetensors"))
        return {f"{key[:-len('.lora_A')]}.weight": base_weights[f"{key[:-len('.lora_A')]}.weight"]
                + 3.0 * (trained[f"{key[:-len('.lora_A')]}.lora_B"] @ trained[key]) for key in trained if key.endswith(".lora_A")}

    average = {key: base_weights[key].clone() for key in merged(1)}  # (B starts at zero: the base)
    for update in range(1, 5):
        decay = min(0.5, (1 + update) / (10 + update))
        average = {key: torch.lerp(value, merged(update)[key], 1 - decay) for key, value in average.items()}
    ema = load_file(str(tmp_path / "run" / "ema" / "model.safetensors"))
    assert ema.keys() == load_file(str(tmp_path / "run" / "model.safetensors")).keys()  # plain weights, no adapters
    assert len(average) == 6 and all(torch.allclose(ema[key], average[key], rtol=0, atol=1e-6) for key in average)
    assert all(not torch.equal(ema[key], merged(4)[key]) for key in average)  # an average, not the last weights
    assert all(torch.equal(ema[key], base_weights[key]) for key in ema if key not in average)
    resumed = tmp_path / "resumed"
    assert cli("finetune", base["checkpoint"], *flags, "--max-steps", "2", "-o", resumed).exit_code == 0
    assert cli("finetune", base["checkpoint"], *flags, "--max-steps", "4", "-o", resumed, "--resume").exit_code == 0
    assert artifacts.load(resumed / "ema").fingerprint == artifacts.load(tmp_path / "run" / "ema").fingerprint


def test_a_lora_step_fine_tunes_as_generate_loads_it_and_its_own_steps_load_through_it(base, shared_data, cli, tmp_path):
    """A LoRA run's step checkpoint is a base to fine-tune from, its model its base with the adapters
    merged (refused before: "an intermediate LoRA checkpoint"); the steps of that fine-tune load
    through it in turn (their base a step itself), as its own merge made them."""
    from llmkit.model.io import load_checkpoint

    rows = [{"prompt": r["text"], "response": "positive" if r["label"] else "negative"}
            for r in read_jsonl(shared_data / "sentiment" / "train.jsonl")[:32]]
    flags = ["--data", write_jsonl(tmp_path / "data.jsonl", rows), "--lora-rank", "2", "--batch-size", "8", "--eval-every", "0",
             "--truncate", "--save-every", "2", "--keep-last", "0", "--lr", "0.05"]
    assert cli("finetune", base["checkpoint"], *flags, "--lora-targets", "all", "--max-steps", "4", "-o", tmp_path / "first").exit_code == 0
    step = tmp_path / "first" / "checkpoints" / "step_0000002"
    made = cli("finetune", step, *flags, "--max-steps", "2", "-o", tmp_path / "second")
    assert made.exit_code == 0, made.output
    assert artifacts.load(tmp_path / "second").recorded_input("base").path == step.resolve()
    started_from = load_checkpoint(step).model.state_dict()
    base_weights = load_file(str(base["checkpoint"] / "model.safetensors"))
    second = load_file(str(tmp_path / "second" / "model.safetensors"))
    mlp = "blocks.0.mlp.down_proj.weight"  # adapted by the first run, not by the second (default targets)
    assert mlp in second and not torch.equal(started_from[mlp], base_weights[mlp].float())
    assert torch.equal(second[mlp], started_from[mlp])
    # the second run's step is its base (the first run's step, merged) with its own adapters merged
    nested = load_checkpoint(tmp_path / "second" / "checkpoints" / "step_0000002").model.state_dict()
    assert all(torch.equal(nested[key], second[key]) for key in second)
    assert cli("average", tmp_path / "second" / "checkpoints" / "step_0000002", tmp_path / "second",
               "-o", tmp_path / "soup").exit_code == 0
    soup = load_file(str(tmp_path / "soup" / "model.safetensors"))
    assert all(torch.equal(soup[key], second[key]) for key in second)  # (the mean of one model twice)


def _lora_run_on_a_copy_of_the_base(base, shared_data, cli, tmp_path, steps: int) -> list:
    """A LoRA SFT run of `steps` steps, each saved, on a copy of the base (tmp_path/base, free to damage)
    into tmp_path/run; its flags."""
    import shutil

    shutil.copytree(base["checkpoint"], tmp_path / "base")
    rows = [{"prompt": r["text"], "response": "positive" if r["label"] else "negative"}
            for r in read_jsonl(shared_data / "sentiment" / "train.jsonl")[:16]]
    flags = ["--data", write_jsonl(tmp_path / "data.jsonl", rows), "--lora-rank", "2", "--batch-size", "8", "--eval-every", "0",
             "--truncate", "--max-steps", str(steps), "--save-every", "1"]
    assert cli("finetune", tmp_path / "base", *flags, "-o", tmp_path / "run").exit_code == 0
    return flags


def test_a_step_over_a_base_edited_in_place_is_refused_where_it_is_read(base, shared_data, cli, tmp_path):
    """A same-size edit of a LoRA step's base was fine-tuned on (and generated from) unsaid: its bytes
    were read, not checked against the base's manifest, as the base's own loads check them."""
    flags = _lora_run_on_a_copy_of_the_base(base, shared_data, cli, tmp_path, steps=2)
    weights = tmp_path / "base" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 1
    weights.write_bytes(bytes(data))
    step = tmp_path / "run" / "checkpoints" / "step_0000001"
    for command in (["finetune", step, *flags, "-o", tmp_path / "again"], ["generate", step, "-p", "Hi", "-n", "2"]):
        refused = cli(*command)
        assert refused.exit_code == 1 and "was changed after the artifact" in refused.output, (command[0], refused.output)
    assert not (tmp_path / "again").exists()


def test_no_stage_reading_a_step_writes_over_the_base_it_reads(base, shared_data, cli, tmp_path):
    """-o naming a LoRA step's base (an input of its input, read for its weights) with --force moved that
    base aside, and the stage then failed to read it, or wrote into it: the output guard knew the step
    alone (finetune alone added the bases, by hand), for every stage that reads a step."""
    flags = _lora_run_on_a_copy_of_the_base(base, shared_data, cli, tmp_path, steps=1)
    step = tmp_path / "run" / "checkpoints" / "step_0000001"
    before = {p.name: p.read_bytes() for p in (tmp_path / "base").iterdir() if p.is_file()}
    for command, said in ((["finetune", step, *flags], "is the base"), (["export", step], "is the base"),
                          (["average", step, tmp_path / "run"], "is the base"),
                          (["eval", step, "--data", tmp_path / "data.jsonl"], "is the base"),
                          (["generate", step, "-p", "Hi", "-n", "2"], "lies inside the base")):
        out = tmp_path / "base" / "out.jsonl" if command[0] == "generate" else tmp_path / "base"
        refused = cli(*command, "-o", out, "--force")
        assert refused.exit_code != 0 and f"{said} {tmp_path / 'base'} that the input {step} is read from" in refused.output, \
            (command[0], refused.output)
        assert {p.name: p.read_bytes() for p in (tmp_path / "base").iterdir() if p.is_file()} == before, command[0]
        assert not list(tmp_path.glob(".base*")), command[0]  # (nothing moved aside)
    # a base whose manifest is damaged is guarded too (it was moved aside, then put back as the run failed)
    manifest = tmp_path / "base" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"kind"', '"kinds"', 1))
    refused = cli("finetune", step, *flags, "-o", tmp_path / "base", "--force")
    assert refused.exit_code != 0 and "is the base" in refused.output and "kept aside" not in refused.output, refused.output
    assert not list(tmp_path.glob(".base*"))
