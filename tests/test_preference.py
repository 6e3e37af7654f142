"""`llmkit finetune --task dpo`: preference pairs read in TRL's shapes, DPO's loss and rewards equal
to TRL's DPOTrainer on the same pairs and models, a held-out preference learned, and the artifact
the same whatever the split, the process count or a resume.

The pairs are Multi30k's (../shared/data/translation): a German sentence, its English translation
as the chosen reply and the translation's words in reverse order as the rejected one, a
preference a tiny model learns in a few steps and that holds on sentences it was not trained on.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from llmkit import artifacts
from test_finetune import build_base, read_jsonl, write_jsonl

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def base(shared_data, tmp_path_factory) -> dict[str, Path]:
    return build_base(shared_data, tmp_path_factory)


@pytest.fixture(scope="session")
def reversed_pairs(shared_data) -> list[dict]:
    rows = [r for r in read_jsonl(shared_data / "translation" / "train.jsonl") if len(r["source"]) < 90 and len(r["target"]) < 90]
    return [{"source": r["source"], "chosen": r["target"], "rejected": " ".join(reversed(r["target"].split()))}
            for r in rows[:400]]


def _tokenizer(base):
    from llmkit.data.tokenizer import load_tokenizer

    return load_tokenizer(base["checkpoint"] / "tokenizer")


def _template(name: str, tokenizer) -> dict:
    from llmkit.data.templates import chat_format_for, resolve_template

    template = resolve_template(name)
    return chat_format_for(tokenizer) if template["type"] == "chat" else template


def _metrics(run: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def _dpo(cli, base, out: Path, train: Path, *extra: str):
    result = cli("finetune", base["checkpoint"] if isinstance(base, dict) else base, "-o", out, "--task", "dpo", "--template", "translate", "--data", train, *extra)
    assert result.exit_code == 0, result.output
    return result


# -- reading pairs ---------------------------------------------------------------------------------

def test_the_shapes_trl_reads_give_the_same_pairs_and_only_the_reply_is_scored(base):
    """Text prompt, a conversation as "messages" or as "prompt", replies as text or as one assistant
    message, and two whole conversations sharing all but their last message: one encoding. Only the
    reply (and the end of its turn) is scored, not an earlier assistant turn of the prompt."""
    from llmkit.finetune.preference import preference_pairs

    tokenizer = _tokenizer(base)
    template = _template("chat", tokenizer)
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello there."}, {"role": "user", "content": "Name a colour."}]
    good, bad = "Blue.", "I would rather not say."
    shapes = [
        {"messages": history, "chosen": good, "rejected": bad},
        {"prompt": history, "chosen": [{"role": "assistant", "content": good}], "rejected": [{"role": "assistant", "content": bad}]},
        {"chosen": [*history, {"role": "assistant", "content": good}], "rejected": [*history, {"role": "assistant", "content": bad}]},
    ]
    pairs = preference_pairs(shapes, template, tokenizer, 256, False, "training", verbose=False)
    assert len(pairs) == 3
    for pair in pairs[1:]:
        assert (pair.chosen, pair.rejected) == (pairs[0].chosen, pairs[0].rejected)
    specials = set(tokenizer.special_ids.values())
    for reply, text in ((pairs[0].chosen, good), (pairs[0].rejected, bad)):
        scored = [token for token, learned in zip(reply.ids, reply.learn) if learned]
        assert tokenizer.decode([t for t in scored if t not in specials]) == text
        assert scored[-1] == tokenizer.eos_id  # the end of the turn is scored with it
        assert reply.learn[-len(scored):] == [True] * len(scored) and sum(reply.learn) == len(scored)
    # a plain text prompt with a system field is that conversation's first exchange
    one = preference_pairs([{"system": "Be brief.", "prompt": "Name a colour.", "chosen": good, "rejected": bad},
                            {"messages": [history[0], history[3]], "chosen": good, "rejected": bad}],
                           template, tokenizer, 256, False, "training", verbose=False)
    assert one[0].chosen == one[1].chosen and one[0].rejected == one[1].rejected


def test_a_text_template_puts_each_reply_where_its_response_goes(base):
    from llmkit.data.templates import encode_example
    from llmkit.finetune.preference import preference_pairs

    tokenizer = _tokenizer(base)
    template = _template("translate", tokenizer)
    record = {"source": "Ein Hund.", "chosen": "A dog.", "rejected": "dog. A"}
    pair = preference_pairs([record], template, tokenizer, 256, False, "training", verbose=False)[0]
    assert pair.chosen == encode_example(template, {"source": "Ein Hund.", "target": "A dog."}, tokenizer, "r")
    assert pair.rejected == encode_example(template, {"source": "Ein Hund.", "target": "dog. A"}, tokenizer, "r")


def test_truncate_cuts_one_prompt_for_both_replies(base):
    """A long chosen reply beside a short rejected one: cut one at a time, the short reply kept the whole
    prompt the long one lost, and the pair compared answers to different questions (a review)."""
    from llmkit.finetune.preference import preference_pairs

    tokenizer = _tokenizer(base)
    template = _template("translate", tokenizer)
    source = "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt, steht neben einem Baum im Park am See."
    record = {"source": source, "chosen": "A man in an orange hat staring at something stands beside a tree in the park.",
              "rejected": "No."}
    whole = preference_pairs([record], template, tokenizer, 256, False, "training", verbose=False)[0]
    fits = len(whole.chosen.ids) - 8  # (the source's end gives way; the reply stays whole)
    pair = preference_pairs([record], template, tokenizer, fits - 1, True, "training", verbose=False)[0]
    prompts = [reply.ids[:reply.prompt_length] for reply in pair.replies]
    assert prompts[0] == prompts[1] and len(pair.chosen.ids) <= fits
    assert len(prompts[0]) < whole.chosen.prompt_length  # the source was cut, for both
    for cut, full in zip(pair.replies, whole.replies):  # each reply whole after it
        assert cut.ids[cut.prompt_length:] == full.ids[full.prompt_length:]


def test_pairs_that_prefer_nothing_are_left_out_and_counted(base, cli, tmp_path, reversed_pairs):
    rows = [*reversed_pairs[:40], {"source": "Ein Hund.", "chosen": "A dog.", "rejected": "A dog."},
            {"source": "Ein Hund.", "chosen": " ", "rejected": "A dog."}]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    result = _dpo(cli, base, tmp_path / "run", data, "--max-steps", "1", "--val-fraction", "0", "--batch-size", "8")
    said = " ".join(result.output.split())
    assert "1 of 42 training preference pairs left out: their two replies are the same" in said
    assert "1 of 42 training preference pairs left out: a reply is empty" in said
    counts = artifacts.load(tmp_path / "run").stats["examples"]["training"]
    assert (counts["records"], counts["kept"], counts["same_replies"], counts["blank"]) == (42, 40, 1, 1)


# -- the loss against TRL ----------------------------------------------------------------------------

def test_validation_loss_and_rewards_equal_trls_dpo_trainer(base, cli, tmp_path, reversed_pairs):
    """The same validation pairs (as llmkit encodes them), the fine-tuned model and its starting
    point exported to transformers: TRL's DPOTrainer.evaluate() gives llmkit's val_loss and its
    rewards (chosen, rejected, accuracy, margin), at two betas."""
    import datasets
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    from llmkit.finetune.preference import preference_pairs

    train = write_jsonl(tmp_path / "train.jsonl", reversed_pairs[:360])
    val_rows = reversed_pairs[360:]
    val = write_jsonl(tmp_path / "val.jsonl", val_rows)
    starting = tmp_path / "hf-base"
    assert cli("export", base["checkpoint"], "-o", starting).exit_code == 0
    tokenizer = _tokenizer(base)
    template = {**_template("translate", tokenizer), "bos": tokenizer.hf.id_to_token(tokenizer.bos_id),
                "eos": tokenizer.hf.id_to_token(tokenizer.eos_id)}
    rows = []
    for pair in preference_pairs(val_rows, template, tokenizer, 256, False, "validation", verbose=False):
        n = pair.chosen.prompt_length
        assert pair.rejected.ids[:n] == pair.chosen.ids[:n]
        rows.append({"prompt_ids": pair.chosen.ids[:n], "chosen_ids": pair.chosen.ids[n:], "rejected_ids": pair.rejected.ids[n:]})
    assert len(rows) == len(val_rows)
    for beta in (0.1, 0.5):
        run, exported = tmp_path / f"dpo-{beta}", tmp_path / f"hf-dpo-{beta}"
        _dpo(cli, base, run, train, "--val-data", val, "--max-steps", "4", "--eval-every", "4", "--batch-size", "16",
             "--lr", "3e-4", "--dpo-beta", str(beta))
        assert cli("export", run, "-o", exported).exit_code == 0
        ours = _metrics(run, "val_metrics.jsonl")[-1]
        hf_tokenizer = PreTrainedTokenizerFast.from_pretrained(exported)
        hf_tokenizer.pad_token = hf_tokenizer.pad_token or hf_tokenizer.eos_token
        # the pairs are given tokenized: TRL's own tokenization of the texts is not what is compared
        original = DPOTrainer._prepare_dataset
        DPOTrainer._prepare_dataset = lambda self, dataset, *args, **kwargs: dataset
        try:
            trainer = DPOTrainer(
                model=AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32),
                ref_model=AutoModelForCausalLM.from_pretrained(starting, dtype=torch.float32),
                args=DPOConfig(output_dir=str(tmp_path / "trl"), per_device_eval_batch_size=len(rows), report_to=[], beta=beta,
                               use_cpu=True, bf16=False, max_length=None),
                train_dataset=datasets.Dataset.from_list(rows), eval_dataset=datasets.Dataset.from_list(rows),
                processing_class=hf_tokenizer)
            theirs = trainer.evaluate()
        finally:
            DPOTrainer._prepare_dataset = original
        assert ours["val_loss"] == pytest.approx(theirs["eval_loss"], abs=1e-5)
        assert ours["val_chosen_reward"] == pytest.approx(theirs["eval_rewards/chosen"], abs=1e-5)
        assert ours["val_rejected_reward"] == pytest.approx(theirs["eval_rewards/rejected"], abs=1e-5)
        assert ours["val_reward_margin"] == pytest.approx(theirs["eval_rewards/margins"], abs=1e-5)
        assert ours["val_reward_accuracy"] == pytest.approx(theirs["eval_rewards/accuracies"], abs=1e-9)
        assert artifacts.load(run).config["dpo_beta"] == beta


def test_a_held_out_preference_is_learned_from_even_odds(base, cli, tmp_path, reversed_pairs):
    """The first step's loss is log 2 (the model is its own reference, without dropout by default as in
    TRL, however the checkpoint was trained); ten steps later the chosen reply out-scores the rejected
    one on held-out pairs, and the model still writes English."""
    train = write_jsonl(tmp_path / "train.jsonl", reversed_pairs[:360])
    val = write_jsonl(tmp_path / "val.jsonl", reversed_pairs[360:])
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"source": r["source"], "target": r["chosen"]} for r in reversed_pairs[:16]])
    dropped = tmp_path / "dropped"  # a checkpoint that trains with dropout 0.1
    assert cli("finetune", base["checkpoint"], "-o", dropped, "--template", "translate", "--data", sft, "--max-steps", "1",
               "--batch-size", "8", "--val-fraction", "0", "--dropout", "0.1").exit_code == 0
    run = tmp_path / "run"
    _dpo(cli, dropped, run, train, "--val-data", val, "--max-steps", "10", "--eval-every", "10", "--batch-size", "16",
         "--lr", "1e-3", "--log-every", "1")
    assert _metrics(run)[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    noisy = tmp_path / "noisy"
    _dpo(cli, dropped, noisy, train, "--max-steps", "1", "--batch-size", "16", "--log-every", "1", "--dropout", "0.1")
    assert abs(_metrics(noisy)[0]["loss"] - math.log(2)) > 1e-3  # (what the default keeps off)
    scores = _metrics(run, "val_metrics.jsonl")[-1]
    assert scores["val_reward_accuracy"] >= 0.9 and scores["val_loss"] < 0.3, scores
    art = artifacts.load(run)
    assert art.stats["task"] == "dpo" and art.stats["val_reward_accuracy"] == scores["val_reward_accuracy"]
    assert json.loads((run / "task.json").read_text())["task"] == "dpo"
    result = cli("generate", run, "-p", "Ein Hund rennt.", "--max-new-tokens", "8", "--seed", "0")
    assert result.exit_code == 0, result.output


def test_eval_scores_pairs_as_the_run_validated_them(base, cli, tmp_path, reversed_pairs):
    """`eval RUN -m preference --reference BASE` on the run's validation pairs: its reward figures are
    the run's last validation's over beta (TRL's rewards carry beta; eval's do not), its preference
    accuracy the share of pairs whose chosen reply is likelier, its intervals a numpy bootstrap of the
    pairs; --batch-size changes no bit."""
    from llmkit.eval.metrics._refs import BOOTSTRAP_SEED

    train = write_jsonl(tmp_path / "train.jsonl", reversed_pairs[:360])
    val = write_jsonl(tmp_path / "val.jsonl", reversed_pairs[360:])
    run = tmp_path / "run"
    _dpo(cli, base, run, train, "--val-data", val, "--max-steps", "3", "--eval-every", "3", "--batch-size", "16", "--lr", "3e-4",
         "--dpo-beta", "0.2")
    validated = _metrics(run, "val_metrics.jsonl")[-1]
    outs = []
    for batch in ("8", "3"):
        out = tmp_path / f"ev{batch}"
        result = cli("eval", run, "-m", "preference", "--data", val, "--reference", base["checkpoint"], "--bootstrap", "200",
                     "--batch-size", batch, "-o", out)
        assert result.exit_code == 0, result.output
        outs.append(out)
    assert artifacts.load(outs[0]).fingerprint == artifacts.load(outs[1]).fingerprint
    scores = json.loads((outs[0] / "metrics.json").read_text())
    assert scores["reward_accuracy"] == validated["val_reward_accuracy"]
    assert scores["reward_margin"] * 0.2 == pytest.approx(validated["val_reward_margin"], abs=1e-5)
    records = [json.loads(line) for line in (outs[0] / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 40 and "reference" in {i["role"] for i in artifacts.load(outs[0]).manifest.inputs}
    margins = np.array([r["chosen_logprob"] - r["rejected_logprob"] for r in records])
    assert scores["preference_accuracy"] == np.mean(margins > 0) and scores["preference_margin"] == pytest.approx(margins.mean())
    draws = np.random.default_rng(BOOTSTRAP_SEED).choice(40, size=(200, 40), replace=True)
    means = np.sort(margins[draws].mean(axis=1))
    assert scores["preference_margin_ci95"] == pytest.approx(0.5 * (means[194] - means[5]), rel=1e-9)
    # pairs that prefer nothing are left out as finetune leaves them out, said, the others numbered by their record
    rows = [{"source": "Ein Hund.", "chosen": "A dog.", "rejected": "A dog."}, *reversed_pairs[360:363],
            {"source": "Ein Hund.", "chosen": " ", "rejected": "A dog."}]
    mixed = cli("eval", run, "-m", "preference", "--data", write_jsonl(tmp_path / "mixed.jsonl", rows), "-o", tmp_path / "mixed")
    said = " ".join(mixed.output.split())
    assert mixed.exit_code == 0 and "2 of 5 pairs left out, as finetune --task dpo leaves them out: 1 with a blank reply, 1 " \
        "with the same reply twice" in said, said
    assert [json.loads(line)["index"] for line in (tmp_path / "mixed" / "predictions.jsonl").read_text().splitlines()] == [1, 2, 3]
    # --reference belongs to -m preference; -m preference to a model
    alone = cli("eval", run, "--data", val, "--reference", base["checkpoint"], "-o", tmp_path / "x")
    assert alone.exit_code != 0 and "--reference" in alone.output and "preference" in alone.output, alone.output
    scored = cli("eval", "-m", "preference", "--predictions", val, "--references", val, "-o", tmp_path / "y")
    assert scored.exit_code != 0 and "preference needs a model" in " ".join(scored.output.split()), scored.output


# -- determinism ---------------------------------------------------------------------------------------

def test_the_split_the_threads_and_the_processes_do_not_change_the_artifact(base, cli, tmp_path, reversed_pairs):
    """Per-sequence gradients with a pair's replies at positions 2k and 2k + 1: micro-batches of 1, 3
    and 6 pairs on 1 or 2 threads, and two processes, give the same weights to the bit (full and LoRA)."""
    data = write_jsonl(tmp_path / "pairs.jsonl", reversed_pairs[:120])
    for lora in ([], ["--lora-rank", "4"]):
        prints, curves = set(), set()
        for micro, threads, nproc in (("1", "2", "1"), ("3", "1", "1"), ("6", "2", "1"), ("2", "1", "2")):
            out = tmp_path / f"run-{micro}-{threads}-{nproc}-{len(lora)}"
            _dpo(cli, base, out, data, "--max-steps", "3", "--eval-every", "3", "--batch-size", "12", "--micro-batch", micro,
                 "--threads", threads, "--nproc", nproc, "--lr", "1e-3", "--val-fraction", "0.1", "--log-every", "1", *lora)
            art = artifacts.load(out)
            assert art.manifest.runtime["batch_invariant"] is True and art.manifest.runtime["world_size"] == int(nproc)
            prints.add(art.fingerprint)
            curves.add(tuple(record["loss"] for record in _metrics(out)))  # (each pair's loss added in one order)
        assert len(prints) == 1 and len(curves) == 1, (lora, curves)


def test_a_resumed_run_ends_on_the_same_bytes(base, cli, tmp_path, reversed_pairs):
    """The reference is the starting model's, scored again on resume: not the resumed weights."""
    data = write_jsonl(tmp_path / "pairs.jsonl", reversed_pairs[:80])
    common = ["--max-steps", "6", "--save-every", "3", "--eval-every", "3", "--batch-size", "8", "--micro-batch", "4",
              "--lr", "1e-3", "--dropout", "0.1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _dpo(cli, base, straight, data, *common)
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "step_0000003", resumed / "checkpoints" / "step_0000003")
    result = _dpo(cli, base, resumed, data, *common, "--resume")
    assert "resumed from step 3" in result.output
    assert (straight / "model.safetensors").read_bytes() == (resumed / "model.safetensors").read_bytes()
    assert artifacts.load(straight).fingerprint == artifacts.load(resumed).fingerprint
    # (only the checkpoint was copied over: the resumed run's history starts after it)
    assert _metrics(straight, "val_metrics.jsonl")[-1] == _metrics(resumed, "val_metrics.jsonl")[-1]


def test_beta_is_recorded_for_dpo_alone(base, cli, tmp_path, reversed_pairs):
    data = write_jsonl(tmp_path / "pairs.jsonl", reversed_pairs[:40])
    for beta in (None, "0.1", "0.3"):
        _dpo(cli, base, tmp_path / f"b{beta}", data, "--max-steps", "1", "--batch-size", "8", "--val-fraction", "0",
             *(["--dpo-beta", beta] if beta else []))
    assert artifacts.load(tmp_path / "bNone").fingerprint == artifacts.load(tmp_path / "b0.1").fingerprint
    assert artifacts.load(tmp_path / "b0.3").fingerprint != artifacts.load(tmp_path / "b0.1").fingerprint
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"source": r["source"], "target": r["chosen"]} for r in reversed_pairs[:16]])
    assert cli("finetune", base["checkpoint"], "-o", tmp_path / "sft", "--template", "translate", "--data", sft,
               "--max-steps", "1", "--batch-size", "8", "--val-fraction", "0").exit_code == 0
    assert "dpo_beta" not in artifacts.load(tmp_path / "sft").config


# -- bad input -----------------------------------------------------------------------------------------

PAIR = {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No."}


@pytest.mark.parametrize(
    "rows, extra, message",
    [
        ([{"prompt": "a", "chosen": "b"}] * 4, [], "data.jsonl:1 has no 'rejected' field: a preference pair is a prompt"),
        ([{"chosen": "b", "rejected": "c"}] * 4, [], "data.jsonl:1 has no prompt: give 'prompt'"),
        ([{**PAIR, "prompt": 5}] * 4, [], "data.jsonl:1 field 'prompt' is a number: the prompt is text, or a list of"),
        ([{**PAIR, "messages": [{"role": "user", "content": "a"}]}] * 4, [], "has both 'prompt' and 'messages'"),
        ([{**PAIR, "chosen": 3}] * 4, [], "data.jsonl:1 field 'chosen' is a number: a reply is text"),
        ([{**PAIR, "response": "x"}] * 4, [], "data.jsonl:1 has 'response' beside 'chosen' and 'rejected'"),
        ([{"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "chosen": "c",
           "rejected": "d"}] * 4, [], "the prompt's last message must be the user's"),
        ([{"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
           "rejected": [{"role": "user", "content": "z"}, {"role": "assistant", "content": "c"}]}] * 4, [],
         "'chosen' and 'rejected' are conversations that differ before their last message"),
        ([{"source": "a", "target": "t", "chosen": "b", "rejected": "c"}] * 4, ["--template", "translate"],
         "has 'target' beside 'chosen' and 'rejected'"),
        ([{**PAIR, "chosen": "Same.", "rejected": "Same."}] * 4, [], "no training preference pair is left to train on"),
        ([PAIR] * 4, ["--task", "sft", "--dpo-beta", "0.2"], "--dpo-beta weighs preference pairs (--task dpo)"),
        ([PAIR] * 4, ["--dpo-beta", "0"], "--dpo-beta"),
        ([PAIR] * 4, ["--tp", "2", "--nproc", "2"], "--task dpo scores each pair's replies with the whole model"),
    ],
    ids=["no-rejected", "no-prompt", "prompt-number", "prompt-and-messages", "reply-number", "response-beside", "prompt-ends-assistant", "conversations-differ",
         "target-beside", "all-same", "beta-without-dpo", "beta-zero", "tensor-parallel"],
)
def test_bad_pairs_are_a_one_line_error(base, cli, tmp_path, rows, extra, message):
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    task = [] if "--task" in extra else ["--task", "dpo"]
    result = cli("finetune", base["checkpoint"], "--data", data, "-o", tmp_path / "run", "--max-steps", "1", *task, *extra)
    said = " ".join(result.output.split())
    assert result.exit_code != 0 and message in said and result.output.count("error:") == 1, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
