"""Tensor and pipeline parallelism on gloo: every layout trains the model one process trains.

Weights are compared after SGD steps: AdamW divides each gradient by its own running RMS, so a
coordinate whose true gradient is ~0 (the key biases, exactly 0 in exact arithmetic) turns
summation-order noise of 1e-9 into a full learning-rate step; with SGD every layout agrees with
one process to ~1e-7. The AdamW runs (sharded optimizer state, resume across layouts) compare
losses per step.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from llmkit import artifacts
from test_pretrain import metrics, shakespeare  # noqa: F401  (the session fixture)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("model_parallel")]

# Two accumulated micro-batches a step, a checkpoint and a validation half-way: each split layer's
# collectives cost gloo about a millisecond, so every micro-batch saved is a second or so of a run.
RUN = ["--n-layer", "4", "--n-embd", "64", "--n-head", "4", "--seq-len", "64", "--batch-tokens", "1024",
       "--micro-batch", "8", "--eval-tokens", "1024", "--log-every", "50", "--max-steps", "4", "--eval-every", "2",
       "--save-every", "2"]
SGD = ["--optimizer", "sgd", "--lr", "0.5"]
LLAMA = ["--model", "tiny", "--n-kv-head", "2"]  # RMSNorm, RoPE, SwiGLU, grouped-query attention, tied
GPT2 = ["--model", "gpt2-tiny"]  # LayerNorm, learned positions, GELU, biases, tied


def _weights(run):
    from llmkit.model.io import load_model

    return load_model(run).state_dict()


def _stored_names(run):
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


def assert_same_training(reference, run, *, weights: bool = True):
    a, b = metrics(reference), metrics(run)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert abs(ra["loss"] - rb["loss"]) <= 1e-5 * abs(ra["loss"]), (ra, rb)
        assert abs(ra["grad_norm"] - rb["grad_norm"]) <= 1e-5 * ra["grad_norm"], (ra, rb)
        if "val_loss" in ra:
            assert abs(ra["val_loss"] - rb["val_loss"]) <= 1e-5 * ra["val_loss"], (ra, rb)
    if weights:
        wa, wb = _weights(reference), _weights(run)
        assert wa.keys() == wb.keys()
        for name in wa:
            assert torch.allclose(wa[name], wb[name], rtol=1e-5, atol=1e-5), name


@pytest.fixture(scope="module")
def references(shakespeare, tmp_path_factory):  # noqa: F811
    """One-process SGD runs of both presets, which every layout must reproduce."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    root = tmp_path_factory.mktemp("references")
    runs = {}
    for name, preset in (("llama", LLAMA), ("gpt2", GPT2)):
        out = root / name
        result = CliRunner().invoke(app, ["pretrain", str(shakespeare["tokens"]), "-o", str(out), *preset, *RUN, *SGD])
        assert result.exit_code == 0, result.output
        runs[name] = out
    return runs


@pytest.mark.parametrize("preset,layout", [
    ("llama", ["--nproc", "2", "--tp", "2", "--compile"]),
    ("llama", ["--nproc", "2", "--pp", "2", "--pp-schedule", "gpipe"]),
    ("llama", ["--nproc", "2", "--pp", "2", "--pp-schedule", "1f1b", "--pp-microbatches", "4", "--micro-batch", "2"]),
    ("llama", ["--nproc", "2", "--pp", "2", "--pp-schedule", "interleaved-1f1b", "--activation-checkpointing"]),
    ("llama", ["--nproc", "4", "--tp", "2", "--strategy", "fsdp"]),
    ("llama", ["--nproc", "4", "--tp", "2", "--pp", "2"]),
    ("gpt2", ["--nproc", "4", "--pp", "2", "--strategy", "fsdp"]),  # (the pipeline of a GPT-2, in each of two FSDP replicas)
    ("gpt2", ["--nproc", "4", "--tp", "2"]),  # (tp 2 inside each of two DDP replicas: a tp-2 run alone adds nothing)
], ids=["llama-tp2-compiled", "llama-pp2-gpipe", "llama-pp2-1f1b", "llama-pp2-interleaved-ac", "llama-dp2xtp2-fsdp",
        "llama-tp2xpp2", "gpt2-dp2xpp2-fsdp", "gpt2-dp2xtp2"])
def test_layout_trains_the_same_model_as_one_process(references, preset, layout, shakespeare, cli, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    result = cli("pretrain", shakespeare["tokens"], "-o", run, *(LLAMA if preset == "llama" else GPT2), *RUN, *SGD, *layout)
    assert result.exit_code == 0, result.output
    # the header says why the CPU run sums gradients as usual (its bits follow the layout)
    assert "gradients summed as usual" in result.output and "split across processes" in " ".join(result.output.split())
    assert "Warning" not in result.output, result.output  # (FSDP over pipeline stages: torch's "returned a view tensor")
    assert_same_training(references[preset], run)
    manifest = artifacts.load(run, kind="checkpoint").manifest
    tp = int(layout[layout.index("--tp") + 1]) if "--tp" in layout else 1
    pp = int(layout[layout.index("--pp") + 1]) if "--pp" in layout else 1
    world = int(layout[layout.index("--nproc") + 1])
    assert manifest.runtime["layout"]["tp"] == tp and manifest.runtime["layout"]["pp"] == pp
    assert manifest.runtime["layout"]["dp"] == world // (tp * pp)
    # One full model.safetensors with the usual names and row order: it loads as any checkpoint.
    assert set(_weights(run)) == set(_weights(references[preset]))
    assert _stored_names(run) == _stored_names(references[preset])  # a tied head is not stored twice
    assert artifacts.load(run).manifest.config == artifacts.load(references[preset]).manifest.config


def test_adamw_sharded_state_activation_checkpointing_and_resume_across_layouts(shakespeare, cli, tmp_path):  # noqa: F811
    """AdamW's moments live in tp shards (and in fused rows reordered for them); a checkpoint holds
    them in the one-process layout, so a run resumes under another layout and continues the curve."""
    one, tp = tmp_path / "one", tmp_path / "tp"
    assert cli("pretrain", shakespeare["tokens"], "-o", one, *LLAMA, *RUN).exit_code == 0
    result = cli("pretrain", shakespeare["tokens"], "-o", tp, *LLAMA, *RUN, "--nproc", "2", "--tp", "2",
                 "--activation-checkpointing")
    assert result.exit_code == 0, result.output
    assert_same_training(one, tp, weights=False)
    state = json.loads((tp / "training_state.json").read_text())
    assert state["world_size"] == 2

    def resume_from(source, name, *layout):
        run = tmp_path / name
        (run / "checkpoints").mkdir(parents=True)
        shutil.copytree(source / "checkpoints" / "step_0000002", run / "checkpoints" / "step_0000002")
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics(source)[:2]))
        result = cli("pretrain", shakespeare["tokens"], "-o", run, *LLAMA, *RUN, "--resume", *layout)
        assert result.exit_code == 0, result.output
        assert "resumed from step 2" in result.output
        return run

    # The same layout resumes exactly: the same artifact as the run that never stopped.
    same = resume_from(tp, "same", "--nproc", "2", "--tp", "2", "--activation-checkpointing")
    assert artifacts.load(same).fingerprint == artifacts.load(tp).fingerprint
    # Saved at tp 2, resumed in one process; saved in one process, resumed as a pipeline.
    assert_same_training(one, resume_from(tp, "to-one"), weights=False)
    assert_same_training(one, resume_from(one, "to-pp", "--nproc", "2", "--pp", "2"), weights=False)


def test_sft_under_tp_and_pp_matches_one_process(references, shakespeare, cli, tmp_path, shared_data):  # noqa: F811
    """Fine-tuning batches are as long as their longest example; under a split model they are
    right-padded to --seq-len without targets, which changes no loss. Frozen weights stay frozen
    (tensor parallelism remakes the norms' parameters), and a pipeline stage left nothing to train
    takes part in the gradient norm with a zero."""
    rows = [json.loads(line) for line in (shared_data / "sentiment" / "train.jsonl").read_text().splitlines()[:120]]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["text"][:80], "response": str(r["label"])}) + "\n" for r in rows))
    base = references["llama"]
    common = ["--data", data, "--max-steps", "4", "--batch-size", "8", "--micro-batch", "4", "--eval-every", "2",
              "--save-every", "0", "--truncate", "--val-fraction", "0.2", "--seq-len", "64", "--freeze", "norms", *SGD,
              # the first pipeline stage (embeddings, blocks 0-1) then trains nothing: its norm is a zero of its own
              "--freeze", "embeddings", "--freeze", "blocks.0.*", "--freeze", "blocks.1.*"]
    runs = {}
    for name, layout in (("one", []), ("tp", ["--nproc", "2", "--tp", "2"]), ("pp", ["--nproc", "2", "--pp", "2"])):
        runs[name] = tmp_path / name
        result = cli("finetune", base, "-o", runs[name], *common, *layout)
        assert result.exit_code == 0, result.output
        if name != "one":  # the header line names the split, as pretrain's does
            assert f"on 2 processes (dp 1 x {name} 2" in result.output, result.output
    assert_same_training(runs["one"], runs["tp"])
    assert_same_training(runs["one"], runs["pp"])
    from safetensors.torch import load_file

    before = load_file(str(base / "model.safetensors"))
    for run in runs.values():
        after = load_file(str(run / "model.safetensors"))
        frozen = [k for k in before if "norm" in k or k.startswith(("blocks.0.", "blocks.1.", "tok_emb"))]
        assert frozen and all(torch.equal(before[k], after[k]) for k in frozen), run
        assert not torch.equal(before["blocks.2.attn.q_proj.weight"], after["blocks.2.attn.q_proj.weight"]), run


# -- the pieces, without processes ---------------------------------------------------------------------


def test_fused_rows_reorder_for_column_sharding_and_back():
    from llmkit.train.parallelize import part_major, rank_major

    k, v = torch.arange(8.0).reshape(4, 2), 100 + torch.arange(8.0).reshape(4, 2)  # 4 rows each: 2 heads x 2 dims
    fused = torch.cat([k, v])
    shards = rank_major(fused, parts=2, tp=2).chunk(2)  # what ColwiseParallel gives each rank
    assert torch.equal(shards[0], torch.cat([k[:2], v[:2]])) and torch.equal(shards[1], torch.cat([k[2:], v[2:]]))
    assert torch.equal(part_major(rank_major(fused, 2, 2), 2, 2), fused)
    bias = torch.arange(12.0)
    assert torch.equal(part_major(rank_major(bias, 2, 3), 2, 3), bias)


def test_layers_split_evenly_and_ranks_map_onto_the_mesh():
    from llmkit.train.layout import coordinates, rank_at
    from llmkit.train.layout import stage_layers

    assert stage_layers(4, 2) == [range(0, 2), range(2, 4)]
    assert stage_layers(5, 2) == [range(0, 3), range(3, 5)]
    assert [len(r) for r in stage_layers(12, 8)] == [2, 2, 2, 2, 1, 1, 1, 1]
    # Every rank has one place on the (pp, dp, tp) mesh, tp innermost (neighbouring ranks share a node).
    seen = {coordinates(rank, dp=2, tp=2) for rank in range(8)}
    assert len(seen) == 8 and coordinates(1, dp=2, tp=2) == (0, 0, 1) and coordinates(2, dp=2, tp=2) == (0, 1, 0)
    assert all(rank_at(*coordinates(rank, dp=3, tp=2), dp=3, tp=2) == rank for rank in range(12))


def test_bad_layouts_are_one_line_errors(shakespeare, cli, tmp_path):  # noqa: F811
    tokens = shakespeare["tokens"]
    cases = [
        # the model's limit before the process count: the count's advice (--nproc 3) led into the model's refusal
        (["--tp", "3", "--nproc", "2"], "--tp 3 does not divide --n-head (4)"),
        (["--tp", "2"], "--tp 2 needs a multiple of 2 processes, this run has 1"),
        (["--tp", "4", "--nproc", "4"], "--tp 4 does not divide --n-kv-head (2)"),
        (["--pp", "2", "--nproc", "2", "--n-layer", "1"], "makes 2 stages but the model has 1 layers"),
        (["--pp", "2", "--nproc", "2", "--pp-schedule", "interleaved-1f1b", "--pp-microbatches", "3"],
         "needs --pp-microbatches a multiple of --pp 2"),
        (["--tp", "2", "--nproc", "2", "--ema", "0.99"], "--ema keeps full weights"),
        # 16 sequences a step, 3 pipeline micro-batches of 2 at a time (not "on 3 processes": there are 2)
        (["--pp", "2", "--nproc", "2", "--micro-batch", "2", "--pp-microbatches", "3"],
         "does not split evenly into 3 shares (one per process, or per replica and pipeline micro-batch)"),
        (["--pp", "2", "--nproc", "2", "--pp-microbatches", "1"], "needs at least as many --pp-microbatches as stages (2)"),
        (["--nproc", "2", "--pp-schedule", "gpipe"], "--pp-schedule gpipe shapes a pipeline, and there is none without --pp"),
        (["--pp-microbatches", "4"], "--pp-microbatches shapes a pipeline, and there is none without --pp"),
        # the model's limit first, not a batch split that cannot mend it
        (["--pp", "3", "--nproc", "3", "--n-layer", "2"], "makes 3 stages but the model has 2 layers"),
    ]
    for extra, message in cases:
        out = tmp_path / "bad"
        result = cli("pretrain", tokens, "-o", out, *LLAMA, *RUN, *extra)
        assert result.exit_code == 2, (extra, result.exit_code)  # options that do not go together, whichever rule says so
        assert message in result.output, (extra, result.output)
        assert "Traceback" not in result.output and not out.exists()
    # finetune says so too, before it starts any process (as pretrain does)
    base = tmp_path / "base"
    assert cli("pretrain", tokens, "-o", base, *LLAMA, *RUN[:-6], "--max-steps", "1", "--eval-every", "0").exit_code == 0
    data = tmp_path / "sft.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n' * 8)
    for extra, message in [
        (["--tp", "2", "--nproc", "2", "--lora-rank", "4"], "this run trains a classifier head or LoRA adapters"),
        (["--tp", "2", "--nproc", "2", "--task", "classify"], "this run trains a classifier head or LoRA adapters"),
        (["--pp", "2", "--nproc", "2", "--pp-microbatches", "1"], "needs at least as many --pp-microbatches as stages (2)"),
        (["--tp", "4", "--nproc", "4"], "--tp 4 does not divide --n-kv-head (2)"),
    ]:
        out = tmp_path / "tuned"
        result = cli("finetune", base, "--data", data, "-o", out, "--batch-size", "8", *extra)
        assert result.exit_code == 2 and message in result.output, (extra, result.output)
        assert "Traceback" not in result.output and not out.exists()
    # llmkit plan refuses the same layouts in the same words (one rule for both; it used to call some "fits")
    for extra, message in [
        (["--tp", "4", "--gpus", "4"], "--tp 4 does not divide --n-kv-head (2)"),
        (["--tp", "2", "--gpus", "2", "--seq-len", "63"], "does not divide --seq-len 63"),
        (["--pp", "2", "--gpus", "2", "--n-layer", "1"], "makes 2 stages but the model has 1 layers"),
        (["--pp", "2", "--gpus", "2", "--pp-schedule", "interleaved-1f1b", "--pp-microbatches", "3"], "a multiple of --pp 2"),
        (["--pp", "2", "--gpus", "2", "--pp-microbatches", "1"], "needs at least as many --pp-microbatches as stages (2)"),
    ]:
        planned = cli("plan", *LLAMA, "--gpu", "cpu", *extra)
        assert planned.exit_code != 0 and message in planned.output, (extra, planned.output)


def test_init_from_under_tp_reads_each_part_from_the_checkpoint(references, shakespeare, cli, tmp_path):  # noqa: F811
    """A split model is built on the meta device; with --init-from every rank reads its shards from
    the checkpoint's file, one tensor at a time, and trains what one process trains from it."""
    training = RUN[6:]  # RUN without the model flags, which --init-from takes from the checkpoint
    base = tmp_path / "base"
    assert cli("pretrain", shakespeare["tokens"], "-o", base, *LLAMA, *RUN[:6], *training[:-6], "--max-steps", "2").exit_code == 0
    runs = {}
    for name, layout in (("one", []), ("tp", ["--nproc", "2", "--tp", "2"])):
        runs[name] = tmp_path / name
        result = cli("pretrain", shakespeare["tokens"], "-o", runs[name], "--init-from", base, *training, *SGD, *layout)
        assert result.exit_code == 0, result.output
    assert_same_training(runs["one"], runs["tp"])
    # the weights came from the checkpoint, not from a fresh initialisation
    assert metrics(runs["tp"])[0]["loss"] < metrics(references["llama"])[0]["loss"] - 0.1
