"""`llmkit finetune` on real data: SFT masking, templates + eval, classification on SST-2, resume, errors.

The base checkpoint is made by the real stages: `llmkit tokenizer train` and `llmkit tokenize`
functions on the SST-2 and Multi30k texts, then `pretrain` of a tiny model for 300 steps.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import built_once
from llmkit import artifacts

torch.set_num_threads(1)


def build_corpus(texts: list[str], out: Path) -> Path:
    """A corpus artifact per contract 1 (one document per text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with artifacts.create(out, "corpus") as build:
        (build.dir / "shards").mkdir()
        table = pa.table({"id": [f"doc-{i}" for i in range(len(texts))], "text": texts, "source": ["test"] * len(texts)})
        pq.write_table(table, build.dir / "shards" / "part-00000.parquet")
        build.stats = {"documents": len(texts), "bytes": sum(len(t.encode()) for t in texts)}
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def build_base(shared_data: Path, tmp_path_factory) -> dict[str, Path]:
    """The tiny base checkpoint, built once per test run (and shared by test_lora / test_chat)."""
    root = built_once(tmp_path_factory, "finetune-base", lambda folder: _build_base(shared_data, folder))
    return {"checkpoint": root / "ckpt", "root": root}


def _build_base(shared_data: Path, root: Path) -> None:
    from llmkit.tokenizer.encode_corpus import TokenizeConfig, tokenize_corpus
    from llmkit.tokenizer.train import TokenizerTrainConfig, train_tokenizer
    from llmkit.pretrain.stage import PretrainConfig, pretrain

    texts = [r["text"] + "\n" for r in read_jsonl(shared_data / "sentiment" / "train.jsonl")]
    texts += [r["source"] + "\n" + r["target"] + "\n" for r in read_jsonl(shared_data / "translation" / "train.jsonl")]
    texts += [r["document"] + "\n" + r["summary"] + "\n" for r in read_jsonl(shared_data / "summarization" / "train.jsonl")]
    corpus = build_corpus(texts, root / "corpus")
    tokenizer = train_tokenizer([corpus], root / "tokenizer", TokenizerTrainConfig(vocab_size=512))
    tokens = tokenize_corpus(corpus, tokenizer, root / "tokens", TokenizeConfig(val_fraction=0.05, workers=1))
    config = PretrainConfig.build(model="tiny", n_layer=2, n_embd=64, n_head=4, context_length=256, seq_len=64, batch_tokens=1024,
                            micro_batch=16, max_steps=300, lr=3e-3, eval_every=0, save_every=0, log_every=100)
    pretrain(tokens, root / "ckpt", config)


@pytest.fixture(scope="session")
def base(shared_data, tmp_path_factory) -> dict[str, Path]:
    return build_base(shared_data, tmp_path_factory)


def _tokenizer(base):
    from llmkit.data.tokenizer import load_tokenizer

    return load_tokenizer(base["checkpoint"] / "tokenizer")


# -- masking -------------------------------------------------------------------------------------


def test_text_template_learns_only_response_tokens_token_by_token(base):
    from llmkit.finetune.data import SFTBatches
    from llmkit.data.templates import encode_example, resolve_template
    from llmkit.model.gpt import IGNORE_INDEX

    tok = _tokenizer(base)
    template = resolve_template("translate")
    records = [{"source": "Zwei Hunde spielen.", "target": "Two dogs play."},
               {"source": "Ein Mann mit einem roten Hut steht vor einem Haus.", "target": "A man."}]
    examples = [encode_example(template, r, tok, "test") for r in records]
    x, y = SFTBatches(examples, pad_id=tok.pad_id, seed=0, shuffle=False)([0, 1])
    for b, record in enumerate(records):
        prompt = [tok.bos_id] + tok.encode(f"Translate:\n{record['source']}\nTranslation:")
        response = tok.encode(" " + record["target"]) + [tok.eos_id]
        full = prompt + response
        for t in range(x.shape[1]):
            if t < len(full) - 1:
                assert x[b, t] == full[t]
            else:
                assert x[b, t] == tok.pad_id and y[b, t] == IGNORE_INDEX  # padding: never a target
                continue
            target_is_response = t + 1 >= len(prompt)
            assert y[b, t] == (full[t + 1] if target_is_response else IGNORE_INDEX), (b, t)
        assert int((y[b] != IGNORE_INDEX).sum()) == len(response)


def test_chat_template_learns_assistant_turns_and_their_ends(base):
    from llmkit.finetune.data import SFTBatches
    from llmkit.data.templates import encode_chat_prompt, encode_example, resolve_template
    from llmkit.model.gpt import IGNORE_INDEX

    tok = _tokenizer(base)
    s = tok.special_ids
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Goodbye!"}]
    example = encode_example(resolve_template("chat"), {"messages": messages}, tok, "test")
    x, y = SFTBatches([example], pad_id=tok.pad_id, seed=0, shuffle=False)([0])
    expected_ids, expected_learn = [tok.bos_id], [False]
    for i, m in enumerate(messages):
        expected_ids.append(s[f"<|{m['role']}|>"])
        expected_learn.append(i > 0 and messages[i - 1]["role"] == "assistant")  # ends the assistant's turn
        content = tok.encode(m["content"])
        expected_ids += content
        expected_learn += [m["role"] == "assistant"] * len(content)
    expected_ids.append(tok.eos_id)
    expected_learn.append(True)
    assert x[0].tolist() == expected_ids[:-1]
    for t in range(len(expected_ids) - 1):
        assert y[0, t] == (expected_ids[t + 1] if expected_learn[t + 1] else IGNORE_INDEX), t
    learned = [tok.decode([i]) for i, flag in zip(expected_ids, expected_learn) if flag]
    assert "".join(learned) == "Hello.<|user|>Goodbye!<|eos|>"
    # A training conversation is its generation prompt (the one chat renderer) followed by the learned reply.
    last_turn = len(expected_ids) - 1 - len(tok.encode("Goodbye!")) - 1
    assert encode_chat_prompt(messages[:4], tok) == expected_ids[: last_turn + 1]


def test_sft_loss_ignores_prompt_tokens(base):
    """The loss equals the cross-entropy over response positions alone, and prompt logits get no gradient."""
    from llmkit.finetune.data import SFTBatches
    from llmkit.finetune.stage import sft_loss
    from llmkit.data.templates import encode_example, resolve_template
    from llmkit.model.io import load_checkpoint

    tok = _tokenizer(base)
    model = load_checkpoint(base["checkpoint"]).model
    examples = [encode_example(resolve_template("plain"), {"prompt": p, "response": r}, tok, "t")
                for p, r in [("a great movie", "positive"), ("dull and far too long", "negative review")]]
    x, y = SFTBatches(examples, pad_id=tok.pad_id, seed=0, shuffle=False)([0, 1])
    loss = sft_loss(model, (x, y))
    with torch.no_grad():
        logits, _ = model(x)
    manual = []
    for b, example in enumerate(examples):
        start = example.prompt_length - 1  # the position that predicts the first response token
        for t in range(start, len(example.ids) - 1):
            manual.append(torch.nn.functional.cross_entropy(logits[b, t], torch.tensor(example.ids[t + 1])))
    assert loss.item() == pytest.approx(torch.stack(manual).mean().item(), rel=1e-5)
    embeddings = model.tok_emb.weight
    hidden = model.hidden_states(x).detach().requires_grad_(True)
    out = torch.nn.functional.cross_entropy(model.lm_head(hidden).reshape(-1, embeddings.shape[0]), y.reshape(-1), ignore_index=-100)
    out.backward()
    for b, example in enumerate(examples):
        assert hidden.grad[b, : example.prompt_length - 1].abs().sum() == 0  # positions predicting prompt tokens
        assert hidden.grad[b, example.prompt_length - 1].abs().sum() > 0


# -- SFT with a template, then eval with the same template ------------------------------------------


@pytest.mark.parametrize(
    "name, folder, metric, fields",
    [("translate", "translation", "bleu", ("source", "target")), ("summarize", "summarization", "rouge", ("document", "summary"))],
)
def test_template_finetune_then_eval_uses_the_stored_template(base, shared_data, cli, tmp_path, name, folder, metric, fields):
    def rows(split, count):
        records = read_jsonl(shared_data / folder / f"{split}.jsonl")
        return [r for r in records if len(r[fields[0]]) < 400][:count]  # well within the tiny model's 256 tokens

    train = write_jsonl(tmp_path / "train.jsonl", rows("train", 400))
    run = tmp_path / "run"
    result = cli("finetune", base["checkpoint"], "--data", train, "-o", run, "--template", name, "--max-steps", "30",
                 "--batch-size", "16", "--micro-batch", "16", "--lr", "2e-3", "--eval-every", "15", "--truncate", "--log-every", "15")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # (what a fine-tuned chat model goes on with)
    assert f"next: llmkit chat {run}; or llmkit generate {run} -p TEXT; or llmkit eval {run} --data TEST.jsonl" in said, said
    metric_rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in metric_rows if "val_loss" in r]
    assert len(val) == 2 and val[1] < val[0]
    art = artifacts.load(run, kind="checkpoint")
    assert {i["role"] for i in art.manifest.inputs} == {"base"} and artifacts.verify(run).ok
    task = json.loads((run / "task.json").read_text())
    assert task["task"] == "sft" and task["template"]["name"] == name
    assert (task["template"]["input_field"], task["template"]["target_field"]) == fields
    assert task["prompt_template"] == task["template"]["prompt"] and "{" + fields[0] + "}" in task["prompt_template"]
    test = write_jsonl(tmp_path / "test.jsonl", rows("test", 8))
    result = cli("eval", run, "--metric", metric, "--data", test, "-o", tmp_path / "eval", "--max-new-tokens", "16", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'eval'} (fingerprint {artifacts.load(tmp_path / 'eval').short_fingerprint})" in result.output
    predictions = read_jsonl(tmp_path / "eval" / "predictions.jsonl")
    first = read_jsonl(test)[0]
    assert predictions[0]["prompt"] == task["template"]["prompt"].format_map(first)  # the training template, not eval's default
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert any(k.startswith(metric) for k in metrics), metrics


@pytest.mark.parametrize("template", ["chat", "translate", "summarize"])
def test_eval_perplexity_of_a_fine_tunes_own_examples_is_its_validation_loss(base, shared_data, cli, tmp_path, template):
    """Held-out conversations (or a template's records) are scored on what the fine-tune learned to
    write, each reply and its end, after the rest: exp(the validation loss) on the same examples.
    eval refused conversations before (perplexity scored plain text only)."""
    rows = [r for r in read_jsonl(shared_data / "translation" / "train.jsonl") if len(r["source"]) < 100]
    if template == "summarize":  # (its input field is `document`, a text field plain perplexity reads: it scored that)
        rows = [{"document": r["source"], "summary": r["target"]} for r in rows]
    if template == "chat":
        def example(r, i):
            turns = [{"role": "user", "content": r["source"]}, {"role": "assistant", "content": r["target"]}]
            return {"messages": ([{"role": "system", "content": "Translate."}] if i % 3 == 0 else []) + turns + turns}
        rows = [example(r, i) for i, r in enumerate(rows)]
    train, val = write_jsonl(tmp_path / "train.jsonl", rows[:64]), write_jsonl(tmp_path / "val.jsonl", rows[64:80])
    run = tmp_path / "run"
    result = cli("finetune", base["checkpoint"], "--data", train, "--val-data", val, "-o", run, "--template", template,
                 "--max-steps", "4", "--batch-size", "8", "--micro-batch", "8", "--eval-every", "100")
    assert result.exit_code == 0, result.output
    stats = artifacts.load(run, kind="checkpoint").stats
    assert stats["val_step"] == 4
    result = cli("eval", run, "-m", "perplexity", "--data", val, "-o", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert math.log(metrics["perplexity"]) == pytest.approx(stats["val_loss"], rel=1e-5)
    assert "longer than the model's context" not in result.output
    if template == "translate":  # one example past the context: scored whole, where finetune cuts it; said
        longer = write_jsonl(tmp_path / "longer.jsonl", [*read_jsonl(val), {**read_jsonl(val)[0], "target": "word " * 400}])
        said = " ".join(cli("eval", run, "-m", "perplexity", "--data", longer, "-o", tmp_path / "eval-long").output.split())
        assert "1 of 17 examples are longer than the" in said and "positions the fine-tune read" in said, said
    records = read_jsonl(tmp_path / "eval" / "predictions.jsonl")
    replies = [m["content"] for r in read_jsonl(val) for m in r["messages"] if m["role"] == "assistant"] if template == "chat" \
        else [r["summary" if template == "summarize" else "target"] for r in read_jsonl(val)]
    assert len(records) == 16 and sum(r["words"] for r in records) == sum(len(reply.split()) for reply in replies)
    # a base model has no replies of its own: said, not scored as text (a summarize set's documents are text it scores)
    refused = cli("eval", base["checkpoint"], "-m", "perplexity", "--data", val, "-o", tmp_path / "eval2")
    assert (refused.exit_code == 0) == (template == "summarize"), refused.output
    if template == "chat":
        assert "which a chat fine-tune's perplexity scores" in " ".join(refused.output.split()), refused.output
        # prompt/response records, which chat fine-tunes train on too; a conversation ending with a user message
        pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Hello there.", "response": "Hi."}])
        scored = cli("eval", run, "-m", "perplexity", "--data", pairs, "-o", tmp_path / "pairs-eval")
        assert scored.exit_code == 0 and read_jsonl(tmp_path / "pairs-eval" / "predictions.jsonl")[0]["words"] == 1, scored.output
        open_ended = write_jsonl(tmp_path / "open.jsonl", [{"messages": [{"role": "user", "content": "Hello."}]}])
        refused = cli("eval", run, "-m", "perplexity", "--data", open_ended, "-o", tmp_path / "open-eval")
        assert refused.exit_code == 1 and "open.jsonl:1: its conversation ends with a user message" in refused.output


def test_eval_gives_a_custom_templates_response_wording_with_the_prompt(base, shared_data, cli, tmp_path, monkeypatch):
    """A response "\\nEnglish: {target}." is the model's to write around the target: eval prompts with
    its lead as training encoded it (a "\\n" lead once stopped every prediction at once, and "English:"
    was scored as part of it) and cuts its tail; --field names the data's field for the trained {source}."""
    from llmkit.data.templates import encode_text_example, resolve_template
    from llmkit.eval.model_tasks import generate_predictions
    from llmkit.eval.config import EvalConfig
    from llmkit.model.io import load_checkpoint

    (tmp_path / "template.json").write_text(json.dumps({"prompt": "German: {source}", "response": "\nEnglish: {target}."}))
    rows = [r for r in read_jsonl(shared_data / "translation" / "train.jsonl") if len(r["source"]) < 200][:64]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    run = tmp_path / "run"
    result = cli("finetune", base["checkpoint"], "--data", train, "-o", run, "--template", tmp_path / "template.json",
                 "--max-steps", "2", "--batch-size", "16", "--eval-every", "0", "--truncate")
    assert result.exit_code == 0, result.output
    test = write_jsonl(tmp_path / "test.jsonl", [{"de": r["source"], "en": r["target"]} for r in rows[:3]])
    loaded = load_checkpoint(run)
    config = EvalConfig.build(metrics=["bleu"], data=str(test), text_field="de", reference_field="en", max_new_tokens=6)
    predictions, references, extras = generate_predictions(loaded, config)
    assert references[0] == [rows[0]["target"]]
    assert extras[0]["prompt"] == f"German: {rows[0]['source']}\nEnglish:"  # the trained prompt, its field from --field
    # the tokens given are those training put before the target's
    template, tok = resolve_template(str(tmp_path / "template.json")), loaded.tokenizer
    trained = encode_text_example(template, rows[0], tok, "row").ids
    given = [tok.bos_id] + tok.encode(f"German: {rows[0]['source']}") + tok.encode_continuation("\nEnglish:")
    assert trained[:len(given)] == given and tok.decode(trained[len(given):]).startswith(" ")
    # The response's tail is cut from what the model writes (a model trained 2 steps never writes it: a stand-in does).
    from llmkit.eval import model_tasks

    def written(loaded, cfg, prompts, references, chat):
        assert prompts[0][1:] == given[1:]  # token ids: the prompt, then the lead (after the start token)
        return ["A dog runs.", "No end"], references, [{}, {}]  # as _generate gives them: stripped

    monkeypatch.setattr(model_tasks, "_generate", written)
    two = EvalConfig.build(metrics=["bleu"], data=str(test), text_field="de", reference_field="en", limit=2)
    assert generate_predictions(loaded, two)[0] == ["A dog runs", "No end"]


def test_a_template_reaches_into_nested_records_by_dotted_names(base, shared_data, cli, tmp_path):
    """Hub translation sets nest each pair ({"translation": {"de": ..., "en": ...}}): a template file's
    {translation.de} trains on them as {de} trains on flat records (the same tokens, cuts included),
    and eval, perplexity and generate then find the fine-tune's nested fields in such records."""
    from llmkit.data.templates import resolve_template
    from llmkit.finetune.data import sft_examples

    rows = [r for r in read_jsonl(shared_data / "translation" / "train.jsonl") if len(r["source"]) < 200][:48]
    flat = [{"de": r["source"], "en": r["target"]} for r in rows]
    nested = [{"translation": {"de": r["source"], "en": r["target"]}} for r in rows]
    (tmp_path / "flat.json").write_text(json.dumps({"prompt": "German: {de}\nEnglish:", "response": " {en}"}))
    (tmp_path / "nested.json").write_text(json.dumps({"prompt": "German: {translation.de}\nEnglish:",
                                                      "response": " {translation.en}"}))
    tok = _tokenizer(base)
    for max_len in (256, 32):  # (32: German sentences cut to fit, a dotted field cut as a flat one)
        expected = sft_examples(flat, resolve_template(str(tmp_path / "flat.json")), tok, max_len, truncate=True,
                                name="training", verbose=False)
        assert max_len > 32 or sum(len(e.ids) < len(tok.encode(r["de"])) for e, r in zip(expected, flat)) > 10
        assert sft_examples(nested, resolve_template(str(tmp_path / "nested.json")), tok, max_len, truncate=True,
                            name="training", verbose=False) == expected
    run = tmp_path / "run"
    result = cli("finetune", base["checkpoint"], "--data", write_jsonl(tmp_path / "nested.jsonl", nested), "-o", run,
                 "--template", tmp_path / "nested.json", "--max-steps", "2", "--batch-size", "16", "--eval-every", "0")
    assert result.exit_code == 0, result.output
    template = json.loads((run / "task.json").read_text())["template"]
    assert (template["input_field"], template["target_field"]) == ("translation.de", "translation.en")
    test = write_jsonl(tmp_path / "test.jsonl", nested[:3])
    result = cli("eval", run, "-m", "bleu", "--data", test, "--max-new-tokens", "6", "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    predictions = read_jsonl(tmp_path / "ev" / "predictions.jsonl")
    assert [p["prompt"] for p in predictions] == [f"German: {r['de']}\nEnglish:" for r in flat[:3]]
    assert [p["references"] for p in predictions] == [[r["en"]] for r in flat[:3]]
    result = cli("eval", run, "--data", test, "-o", tmp_path / "ppl")  # the fine-tune's own examples: its replies scored
    assert result.exit_code == 0, result.output
    stats = artifacts.load(tmp_path / "ppl").manifest.stats
    assert stats["bytes"] == sum(len((" " + r["en"]).encode()) for r in flat[:3]), stats
    result = cli("generate", run, "--prompts", test, "--max-new-tokens", "4", "--seed", "1", "-o", tmp_path / "gen.jsonl")
    assert result.exit_code == 0 and "left empty" not in result.output, result.output
    typed = cli("generate", run, "--prompt", flat[0]["de"], "--max-new-tokens", "4", "--seed", "1", "-o", tmp_path / "typed.jsonl")
    assert typed.exit_code == 0, typed.output
    assert read_jsonl(tmp_path / "gen.jsonl")[0]["completion"] == read_jsonl(tmp_path / "typed.jsonl")[0]["completion"]
    generated = read_jsonl(tmp_path / "gen.jsonl")[0]
    # the input shown once, as `prompt`; the rest of the record copied as a flat record's is
    assert generated["prompt"] == flat[0]["de"] and generated["translation"] == {"en": flat[0]["en"]}, generated
    # a record with neither a prompt field nor the template's: refused in one line, the template's fields named
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"fr": "Bonjour"}])
    for model in (run, base["checkpoint"]):
        result = cli("generate", model, "--prompts", wrong, "-o", tmp_path / "wrong-out.jsonl")
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and "wrong.jsonl:1 has no prompt" in lines[0], result.output
        assert ("template: translation.de)" in lines[0]) == (model == run), lines
    assert not (tmp_path / "wrong-out.jsonl").exists()


# -- classification -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_classification_beats_chance_on_sst2_dev(base, shared_data, tmp_path, cli):
    from llmkit.model.io import load_checkpoint
    from llmkit.finetune.stage import FinetuneConfig, finetune

    dev = shared_data / "sentiment" / "test.jsonl"
    config = FinetuneConfig.build(task="classify", val_data=str(dev), batch_size=32, micro_batch=32, epochs=4, lr=1e-3,
                            eval_every=125, log_every=125, truncate=True)
    run = finetune(base["checkpoint"], shared_data / "sentiment" / "train.jsonl", tmp_path / "cls", config)
    dev_rows = read_jsonl(dev)
    n = len(dev_rows)
    majority = max(sum(r["label"] == 1 for r in dev_rows), sum(r["label"] == 0 for r in dev_rows)) / n
    # Three standard errors above the majority-class rate: a chance classifier passes with p < 0.002.
    threshold = majority + 3 * math.sqrt(majority * (1 - majority) / n)
    stats = artifacts.load(run, kind="checkpoint").stats
    assert stats["val_accuracy"] > threshold, (stats["val_accuracy"], threshold)
    assert stats["labels"] == ["0", "1"] and 0 < stats["val_f1"] <= 1
    # the figure to read it against, kept beside it: the accuracy of always answering training's commonest class
    train_rows = read_jsonl(shared_data / "sentiment" / "train.jsonl")
    by_class = {str(label): sum(r["label"] == label for r in train_rows) for label in (0, 1)}
    assert stats["class_counts"] == {"training": by_class,
                                     "validation": {str(label): sum(r["label"] == label for r in dev_rows) for label in (0, 1)}}
    commonest = max((0, 1), key=lambda label: by_class[str(label)])
    assert stats["val_majority_accuracy"] == sum(r["label"] == commonest for r in dev_rows) / n
    assert stats["examples"]["training"] == {"records": len(train_rows), "kept": len(train_rows), "blank": 0,
                                             "truncated": stats["examples"]["training"]["truncated"], "repeated": 0}
    history = read_jsonl(run / "val_metrics.jsonl")
    assert [h["step"] for h in history] == [125, 250]

    # The checkpoint loads as a classifier whose .classify (what `llmkit eval` calls) reproduces the figure.
    loaded = load_checkpoint(run)
    assert loaded.task.head == {"type": "linear", "prefix": "classifier.", "pooling": "last", "num_labels": 2}
    result = cli("eval", run, "--metric", "accuracy", "--metric", "f1", "--data", dev, "-o", tmp_path / "eval", "--device", "cpu",
                 "--batch-size", "32")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(stats["val_accuracy"], abs=1e-9)
    assert metrics["f1"] == pytest.approx(stats["val_f1"], abs=1e-9)
    # names for labels the classifier does not have (or too few) would silently drop or misname classes
    wrong = cli("eval", run, "--metric", "accuracy", "--data", dev, "-o", tmp_path / "wrong", "--labels", "neg,pos,neutral")
    assert wrong.exit_code != 0 and "--labels names 3 labels but the classifier was trained on 2 (0, 1)" in wrong.output
    assert not (tmp_path / "wrong").exists()


def test_classifier_pools_first_token_for_mlm_and_last_real_token_for_clm(base):
    from llmkit.model.classifier import SequenceClassifier
    from llmkit.model.gpt import GPT, ModelConfig

    torch.manual_seed(0)
    for objective in ("clm", "mlm"):
        clf = SequenceClassifier(GPT(ModelConfig(vocab_size=50, context_length=16, n_layer=1, n_head=2, n_embd=16, objective=objective)), 3).eval()
        row = torch.tensor([[1, 7, 8, 9]])
        padded = torch.tensor([[1, 7, 8, 9, 2, 2]])
        mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
        alone = clf.classify(row)
        assert torch.allclose(clf.classify(padded, attention_mask=mask), alone, atol=1e-5)
        hidden = clf.lm.hidden_states(row)
        pooled = hidden[:, 0] if objective == "mlm" else hidden[:, -1]
        assert torch.allclose(clf.classifier(pooled), alone, atol=1e-6)
        assert set(clf.state_dict()) - set(clf.lm.state_dict()) == {"classifier.weight", "classifier.bias"}
        # Moving the classifier moves the language model's own buffers too (RoPE tables; .cuda() alike).
        clf.to(torch.float64)
        assert clf.lm.rope_cos.dtype == torch.float64 and clf.classify(row).dtype == torch.float64


# -- resume ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [["--task", "sft", "--template", "plain", "--dropout", "0.1"],
                                     ["--task", "classify", "--lora-rank", "4", "--dropout", "0.1"]], ids=["sft", "classify-lora"])
def test_resume_of_a_finetune_is_exact(base, shared_data, cli, tmp_path, variant):
    rows = read_jsonl(shared_data / "sentiment" / "train.jsonl")[:200]
    if "sft" in variant:
        rows = [{"prompt": r["text"], "response": "positive" if r["label"] else "negative"} for r in rows]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    common = [*variant, "--data", data, "--max-steps", "8", "--save-every", "4", "--eval-every", "4", "--batch-size", "8",
              "--micro-batch", "4", "--truncate", "--lr", "1e-3"]
    straight = tmp_path / "straight"
    assert cli("finetune", base["checkpoint"], "-o", straight, *common).exit_code == 0
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "step_0000004", resumed / "checkpoints" / "step_0000004")
    result = cli("finetune", base["checkpoint"], "-o", resumed, *common, "--resume")
    assert result.exit_code == 0, result.output
    # a run that ignored the checkpoint and trained from step 0 would end on the same bytes: the
    # resumed run must say where it started and log only the steps after it
    assert "resumed from step 4" in result.output
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(steps)) == [5, 6, 7, 8]
    assert (straight / "model.safetensors").read_bytes() == (resumed / "model.safetensors").read_bytes()
    assert artifacts.load(straight).fingerprint == artifacts.load(resumed).fingerprint
    first = json.loads((straight / "training_state.json").read_text())
    assert first["step"] == 8


def test_sft_micro_batch_does_not_change_the_artifact(base, shared_data, cli, tmp_path):
    """SFT under per-sequence gradients (the CPU default): responses of different lengths, so
    micro-batches hold different target counts; every token weighs the same whatever the split,
    and the weights are the same to the bit (full fine-tuning and LoRA), on 1 or 2 threads (a
    response of a few tokens made products of fewer rows than MKL's thread-independent kernels need)."""
    rows = read_jsonl(shared_data / "sentiment" / "train.jsonl")[:64]
    rows = [{"prompt": r["text"], "response": "positive, clearly" if r["label"] else "negative"} for r in rows]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    for lora in ([], ["--lora-rank", "4"]):
        prints, losses = set(), []
        for micro, threads in (("1", "2"), ("3", "1"), ("12", "2"), ("12", "1")):
            out = tmp_path / f"sft-{micro}-{threads}-{len(lora)}"
            result = cli("finetune", base["checkpoint"], "-o", out, "--task", "sft", "--template", "plain", "--data", data,
                         "--max-steps", "3", "--eval-every", "3", "--batch-size", "12", "--micro-batch", micro,
                         "--threads", threads, "--truncate", "--lr", "1e-3", "--val-fraction", "0.2", *lora)
            assert result.exit_code == 0, result.output
            assert artifacts.load(out).manifest.runtime["batch_invariant"] is True
            prints.add(artifacts.load(out).fingerprint)
            stats = artifacts.load(out).stats
            losses.append((stats["train_loss"], stats["val_loss"]))
        assert len(prints) == 1, lora
        # the reported losses are means over the response tokens too (they were means of micro-batch means)
        for train, val in losses[1:]:
            assert train == pytest.approx(losses[0][0], rel=1e-6) and val == pytest.approx(losses[0][1], rel=1e-6), losses


def test_classification_micro_batch_does_not_change_the_artifact(base, shared_data, cli, tmp_path):
    """A classifier under per-sequence gradients: texts of different lengths (padded to the
    step's longest), micro-batches of 1 to 8 examples, whose head products then have 1 to 8 rows;
    the weights are the same to the bit (full fine-tuning, and LoRA with dropout on its input and
    the head trained)."""
    data = write_jsonl(tmp_path / "data.jsonl", read_jsonl(shared_data / "sentiment" / "train.jsonl")[:64])
    for lora in ([], ["--lora-rank", "4", "--lora-dropout", "0.2"]):
        prints = set()
        for micro in ("1", "2", "8"):
            out = tmp_path / f"classify-{micro}-{len(lora)}"
            result = cli("finetune", base["checkpoint"], "-o", out, "--task", "classify", "--data", data, "--max-steps", "3",
                         "--eval-every", "0", "--batch-size", "8", "--micro-batch", micro, "--truncate", "--lr", "1e-3", *lora)
            assert result.exit_code == 0, result.output
            assert artifacts.load(out).manifest.runtime["batch_invariant"] is True
            prints.add(artifacts.load(out).fingerprint)
        assert len(prints) == 1, lora


def test_a_classifier_trained_on_short_cuts_is_evaluated_on_the_same_cuts(base, shared_data, cli, tmp_path):
    """--seq-len 12 cuts every text to 12 tokens in training; eval cuts there too (task.json
    max_tokens), so it reproduces the validation figures (it cut at the context length)."""
    data = write_jsonl(tmp_path / "data.jsonl", read_jsonl(shared_data / "sentiment" / "train.jsonl")[:96])
    val = write_jsonl(tmp_path / "val.jsonl", read_jsonl(shared_data / "sentiment" / "test.jsonl")[:96])
    run = tmp_path / "cls"
    result = cli("finetune", base["checkpoint"], "-o", run, "--task", "classify", "--data", data, "--val-data", val,
                 "--seq-len", "12", "--truncate", "--max-steps", "6", "--batch-size", "16", "--eval-every", "6", "--lr", "3e-3")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "task.json").read_text())["max_tokens"] == 12
    stats = artifacts.load(run).stats
    assert cli("eval", run, "-m", "accuracy,f1", "--data", val, "-o", tmp_path / "ev").exit_code == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert (metrics["accuracy"], metrics["f1"]) == pytest.approx((stats["val_accuracy"], stats["val_f1"]), abs=1e-9)
    assert "val_loss" in stats and "val_ppl" not in stats  # exp of a loss over labels names nothing
    assert not any("val_ppl" in line for line in (run / "metrics.jsonl").read_text().splitlines())
    # --seq-len 1 leaves the start token alone: refused, as SFT refuses examples with no response token in reach
    for cut in (["--truncate"], []):  # (without --truncate: its advice to pass --truncate led to this refusal)
        result = cli("finetune", base["checkpoint"], "-o", tmp_path / "cls1", "--task", "classify", "--data", data,
                     "--seq-len", "1", "--max-steps", "1", *cut)
        assert result.exit_code == 1 and not (tmp_path / "cls1").exists(), result.output
        assert "1 position (--seq-len 1) holds the start token alone: the classifier would read none of the texts; raise " \
               "--seq-len" in " ".join(result.output.split()), result.output


def test_validation_past_eval_examples_scores_a_drawn_subset_not_the_files_head(base, shared_data, cli, tmp_path):
    """With more held-out examples than --eval-examples, validation scored the first ones in file
    order, unsaid (a file sorted by label gave a biased figure): now a subset drawn once, noted,
    counted in stats.val_scored, and eval of those examples reproduces the figure."""
    import numpy as np

    from llmkit.finetune.stage import VAL_SUBSET_SEED

    data = write_jsonl(tmp_path / "data.jsonl", read_jsonl(shared_data / "sentiment" / "train.jsonl")[:96])
    held = sorted(read_jsonl(shared_data / "sentiment" / "test.jsonl")[:96], key=lambda r: r["label"])
    val = write_jsonl(tmp_path / "val.jsonl", held)
    run = tmp_path / "cls"
    result = cli("finetune", base["checkpoint"], "-o", run, "--task", "classify", "--data", data, "--val-data", val,
                 "--seq-len", "12", "--truncate", "--max-steps", "4", "--batch-size", "16", "--eval-every", "4",
                 "--eval-examples", "40")
    assert result.exit_code == 0, result.output
    assert "validation scores 40 of the 96 validation examples (--eval-examples 40)" in " ".join(result.output.split())
    stats = artifacts.load(run).stats
    assert (stats["val_examples"], stats["val_scored"]) == (96, 40)
    chosen = np.sort(np.random.default_rng(VAL_SUBSET_SEED).choice(96, size=40, replace=False))
    assert {held[i]["label"] for i in chosen} == {0, 1}  # (the file's first 40 hold one label)
    scored = write_jsonl(tmp_path / "scored.jsonl", [held[i] for i in chosen])
    assert cli("eval", run, "-m", "accuracy,f1", "--data", scored, "-o", tmp_path / "ev").exit_code == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert (metrics["accuracy"], metrics["f1"]) == pytest.approx((stats["val_accuracy"], stats["val_f1"]), abs=1e-9)


def test_eval_reads_a_classifiers_labels_as_its_fine_tune_read_its_validation_data(base, shared_data, cli, tmp_path):
    """Classes "1", "2" and "neg" (strings), validation labels the integers 1 and 2: the fine-tune read 2 as
    the class "2", eval (its names not all digits) as the index of "neg", and the two accuracies differed
    (0.35 against 0.45 in a review). One reader now: the same figures, and a label of no class is one line
    naming the file and the way out."""
    texts = [r["text"] for r in read_jsonl(shared_data / "sentiment" / "train.jsonl")[:150]]
    data = write_jsonl(tmp_path / "data.jsonl", [{"text": t, "label": ("1", "2", "neg")[i % 3]} for i, t in enumerate(texts)])
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": t, "label": 1 + i % 2} for i, t in enumerate(texts[:40])])
    run = tmp_path / "cls"
    result = cli("finetune", base["checkpoint"], "-o", run, "--task", "classify", "--data", data, "--val-data", val,
                 "--truncate", "--max-steps", "4", "--batch-size", "16", "--eval-every", "4", "--lr", "3e-3")
    assert result.exit_code == 0, result.output
    stats = artifacts.load(run).stats
    assert cli("eval", run, "-m", "accuracy,f1", "--data", val, "-o", tmp_path / "ev").exit_code == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert (metrics["accuracy"], metrics["f1"]) == pytest.approx((stats["val_accuracy"], stats["val_f1"]), abs=1e-9)
    assert metrics["support_neg"] == 0 and metrics["support_2"] == 20  # (2 is the class "2", never "neg")
    unseen = write_jsonl(tmp_path / "unseen.jsonl", [{"text": "fine", "label": "1"}, {"text": "bad", "label": 3}])
    result = cli("eval", run, "-m", "accuracy", "--data", unseen, "-o", tmp_path / "ev3")
    assert result.exit_code == 1 and not (tmp_path / "ev3").exists()
    assert f'{unseen}:2: label 3 is not one of the training labels "1", "2", "neg"; fix or drop the record, or ' \
           "name the classes with --labels" in " ".join(result.output.split())


def test_labels_renaming_a_classifiers_own_classes_out_of_order_is_refused(base, shared_data, cli, tmp_path):
    """--labels renames a classifier's classes by position: its own names in another order swapped them silently."""
    rows = [{"text": r["text"], "label": ["neg", "pos"][r["label"]]} for r in read_jsonl(shared_data / "sentiment" / "train.jsonl")[:32]]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    run = tmp_path / "cls"
    assert cli("finetune", base["checkpoint"], "-o", run, "--task", "classify", "--data", data, "--max-steps", "1",
               "--batch-size", "16", "--eval-every", "0", "--truncate").exit_code == 0
    refused = cli("eval", run, "-m", "accuracy", "--data", data, "--labels", "pos,neg", "-o", tmp_path / "swapped")
    assert refused.exit_code != 0 and "its classes are neg, pos in that order" in " ".join(refused.output.split())
    assert not (tmp_path / "swapped").exists()
    renamed = [{"text": r["text"], "label": {"neg": "bad", "pos": "good"}[r["label"]]} for r in rows]
    kept = cli("eval", run, "-m", "accuracy", "--data", data, "-o", tmp_path / "kept")
    named = cli("eval", run, "-m", "accuracy", "--data", write_jsonl(tmp_path / "renamed.jsonl", renamed), "--labels", "bad,good",
                "-o", tmp_path / "named")
    assert kept.exit_code == 0 and named.exit_code == 0, named.output
    assert json.loads((tmp_path / "kept" / "metrics.json").read_text())["accuracy"] == \
        json.loads((tmp_path / "named" / "metrics.json").read_text())["accuracy"]


def test_the_split_does_not_change_the_objective_on_the_usual_path(base, shared_data, cli, tmp_path):
    """Without per-sequence gradients the bits differ between splits, but the objective does not:
    every response token of a step weighs the same whether its micro-batch holds 1 or 12 examples
    (a mean of micro-batch means would not), so the weights agree to float rounding."""
    from llmkit.model.io import load_model

    rows = read_jsonl(shared_data / "sentiment" / "train.jsonl")[:48]
    rows = [{"prompt": r["text"], "response": "positive, clearly and without doubt" if r["label"] else "no"} for r in rows]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    weights = []
    for micro in ("1", "12"):
        out = tmp_path / f"usual-{micro}"
        result = cli("finetune", base["checkpoint"], "-o", out, "--task", "sft", "--template", "plain", "--data", data,
                     "--max-steps", "3", "--eval-every", "0", "--batch-size", "12", "--micro-batch", micro, "--truncate",
                     "--lr", "3e-3", "--no-batch-invariant", "--optimizer", "sgd")
        assert result.exit_code == 0, result.output
        weights.append(load_model(out).state_dict())
    start = load_model(base["checkpoint"]).state_dict()
    for name, a in weights[0].items():
        moved = float((a - start[name]).abs().max())
        assert torch.allclose(a, weights[1][name], rtol=0, atol=1e-4 * moved + 1e-7), name


# -- one-line errors -----------------------------------------------------------------------------------


def test_a_record_a_template_does_not_fit_names_another_template_only_where_one_can_be_given():
    """eval, scoring a fine-tune on its own template, pointed to a --template it does not have."""
    from types import SimpleNamespace

    from llmkit.data.templates import encode_example, resolve_template
    from llmkit.errors import UserError

    record, template = {"source": "a"}, resolve_template("translate")
    with pytest.raises(UserError, match="has no field 'target' that the template needs; fields: source; for other fields "
                                        "give --template FILE.json"):
        encode_example(template, record, None, "d.jsonl:1")
    with pytest.raises(UserError) as plain:  # (render's own message: it fails before anything is encoded)
        encode_example(template, record, SimpleNamespace(bos_id=0, encode_after_special=list, encode_continuation=list), "d.jsonl:1", suggest_template=False)
    assert str(plain.value) == "d.jsonl:1 has no field 'target' that the template needs; fields: source"
    with pytest.raises(UserError) as chat:  # (the chat template's own error too)
        encode_example(resolve_template("chat"), {"source": "a", "target": "b"}, None, "d.jsonl:1", suggest_template=False)
    assert str(chat.value) == "d.jsonl:1 has neither a \"messages\" list nor \"prompt\" and \"response\" strings"
    with pytest.raises(UserError, match="its fields fit --template translate"):
        encode_example(resolve_template("chat"), {"source": "a", "target": "b"}, None, "d.jsonl:1")


@pytest.mark.parametrize(
    "rows, extra, message",
    [
        ([{"prompt": "x " * 600, "response": "y"}] * 4, [], "longer than 257 tokens (the longest, "),
        ([{"prompt": "a", "response": "b"}] * 4, ["--seq-len", "4096"], "longer than the checkpoint's context length 256"),
        ([{"text": "a", "label": 0}] * 4, ["--task", "classify"], "single label"),
        ([{"question": "a", "answer": "b"}] * 4, ["--val-fraction", "0.5"], ":1 has neither a \"messages\" list nor \"prompt\" and \"response\" strings; for "
                                                     "other fields give --template FILE.json"),
        ([{"source": "ein Hund", "target": "a dog"}] * 4, [], "its fields fit --template translate"),
        # a classifier's data without --task classify (pretrain's next: names no task): that task named
        ([{"sentence": "good", "label": i % 2} for i in range(4)], [], "a text and its label: fine-tune a classifier with --task classify"),
        ([{"source": "a"}] * 4, ["--template", "translate"], "no field 'target'"),
        ([{"prompt": "a", "response": "b"}] * 4, ["--template", "nonesuch"], "unknown template"),
        ([{"prompt": "a", "response": "b"}] * 4, ["--lora-rank", "2", "--lora-targets", "nothing_here"], "matches no linear layer"),
        ([{"prompt": "a", "response": "b"}] * 4, ["--freeze", "nothing_here"],
         "matches no parameter of this model; use a group (embeddings, attention, mlp, norms, lm_head) or a name glob such as blocks.0.*"),
        ([{"prompt": "a", "response": None}] * 4, ["--template", "plain"], "field 'response' is null, not text"),
        # without a template the hint was --template plain, which then refused the same record
        ([{"prompt": "a", "response": None}] * 4, [], "field 'response' is null, not text; fix the record or leave it out"),
        # options at their defaults that would do nothing, typed: refused as other values are
        ([{"text": "a", "label": i % 2} for i in range(4)], ["--task", "classify", "--template", "chat"],
         "--template renders SFT examples"),
        ([{"prompt": "a", "response": "b"}] * 4, ["--lora-targets", "q_proj,kv_proj,out_proj"],
         "--lora-targets sets up LoRA adapters, which only --lora-rank N adds"),
        ([{"text": "a", "label": 1}] * 4, ["--task", "classify"], "single label 1"),
        ([{"text": "a", "label": 0}, {"text": "b", "label": 5}] * 2, ["--task", "classify"], "no example of class 1, 2, 3, ..."),
        # a system prompt that is no text was dropped, unsaid
        ([{"prompt": "a", "response": "b", "system": 5}] * 4, [], "data.jsonl:1 field 'system' is a number, not text"),
        ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "system": "Be terse."}] * 4, [],
         "data.jsonl:1 has a 'system' field beside 'messages'; put the system message first in 'messages'"),
        # an exchange beside "messages" was left out of training without a word
        ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "prompt": "c",
           "response": "d"}] * 4, [], "data.jsonl:1 has 'prompt' and 'response' beside 'messages'"),
        # "pos " was a third class beside "pos", unsaid
        ([{"text": "a", "label": ["pos", "neg", "pos "][i % 3]} for i in range(6)], ["--task", "classify"],
         "data.jsonl:3), the same but for spaces around them; write each class one way"),
        ([{"prompt": "a", "response": "b"}] * 4, ["--lora-rank", "100000"], "--lora-rank 100000 exceeds the smallest dimension"),
        ([{"prompt": "a", "response": "b"}] * 4, ["--epochs", "2"], "--epochs sets the run's length when --max-steps"),
        ([{"prompt": "a", "response": "b"}] * 4, ["--epochs", "1"], "--epochs sets the run's length when --max-steps"),
        # 8 records, 2 held out by seed 4: records 3 and 8, the only "neutral" one among them
        ([{"text": "a", "label": ["neg", "pos"][i % 2] if i != 7 else "neutral"} for i in range(8)],
         ["--task", "classify", "--val-fraction", "0.25", "--seed", "4"],
         "data.jsonl:8: class 'neutral' has no training example once --val-fraction 0.25 holds out its examples"),
        # two classes, the one "pos" held out: the training share's single label is the draw's doing, not the data's
        ([{"text": "a", "label": "neg" if i != 7 else "pos"} for i in range(8)],
         ["--task", "classify", "--val-fraction", "0.25", "--seed", "4"],
         "data.jsonl:8: class 'pos' has no training example once --val-fraction 0.25 holds out its examples"),
        # no text field at all, the held-out draw taking a class's only example: the text named (the draw was blamed)
        ([{"foo": "a", "label": "neg" if i != 7 else "pos"} for i in range(8)],
         ["--task", "classify", "--val-fraction", "0.25", "--seed", "4"], "data.jsonl:1 has no 'text' string"),
        # each target on its own: v_proj (another library's name) beside q_proj trained q_proj alone, unsaid
        ([{"prompt": "a", "response": "b"}] * 4, ["--lora-rank", "2", "--lora-targets", "q_proj,v_proj"],
         "--lora-targets v_proj matches no linear layer"),
        ([{"prompt": "a", "response": "b"}] * 4, ["--lora-rank", "2", "--lora-targets", ","], "--lora-targets names no layer"),
        # a JSON escape of half a surrogate pair reached the tokenizer: an "unexpected TypeError"
        ([{"prompt": "hi \ud800 there", "response": "ok"}] + [{"prompt": "a", "response": "b"}] * 3, [],
         "data.jsonl:1 is not valid Unicode text (a lone surrogate, \\ud800)"),
        ([{"text": "a \udfff", "label": 0}] + [{"text": "b", "label": 1}] * 3, ["--task", "classify"],
         "data.jsonl:1 is not valid Unicode text"),
        # named by its line in the file, not by its place among the records the --val-fraction draw kept
        ([{"prompt": "a", "response": "b"}] * 7 + [{"question": "a", "answer": "b"}], ["--val-fraction", "0.25"],
         "data.jsonl:8 has neither"),
        # label errors name a record (they named none), and one field for the text (eval read another than training)
        ([{"text": "a", "label": 0}, {"text": "b", "label": "pos"}] * 2, ["--task", "classify", "--val-fraction", "0"],
         "data.jsonl:2 'pos'); use one kind"),
        ([{"text": "a", "label": 0}, {"text": "b", "label": -1}] * 2, ["--task", "classify", "--val-fraction", "0"],
         "data.jsonl:2); integer labels are class ids"),
        ([{"text": "a", "label": 0}, {"sentence": "b", "label": 1}] * 2, ["--task", "classify", "--val-fraction", "0"],
         "data.jsonl:1 has 'text': use one name in every record)"),
        # a null text beside a sentence is a null text, not two names
        ([{"text": None, "sentence": "a", "label": 0}, {"text": "b", "label": 1}] * 2, ["--task", "classify", "--val-fraction", "0"],
         "data.jsonl:1 has no 'text' string; classification data is"),
        # Python's JSON reader takes NaN: it trained as the text "nan"
        ([{"prompt": "a", "response": float("nan")}] * 4, ["--template", "plain"], "field 'response' is nan (which is no JSON number)"),
        # a built-in template the records do not fit names the one they fit, as the chat template's error does
        ([{"source": "a", "target": "b"}] * 4, ["--template", "plain"],
         "data.jsonl:1 has no field 'prompt' that the template needs; fields: source, target; its fields fit --template translate"),
        # a classifier of blank texts reported an accuracy, having seen [BOS] alone
        ([{"text": " ", "label": i % 2} for i in range(4)], ["--task", "classify", "--val-fraction", "0"],
         "every training text is empty (or only whitespace)"),
        # one process: "micro-batches of 3, 1 at a time (one per process, ...)" read as a puzzle
        ([{"prompt": "a", "response": "b"}] * 4, ["--batch-size", "8", "--micro-batch", "3"],
         "--batch-size 8 does not split into micro-batches of 3; choose"),
    ],
    ids=["too-long", "seq-len", "one-label", "no-fields", "translation-fields", "classify-fields", "template-field", "template-name", "lora-targets", "freeze",
         "null-field", "null-response", "template-typed-for-classify", "lora-targets-typed-without-rank", "int-label-alone",
         "int-label-gap", "system-not-text", "system-beside-messages", "exchange-beside-messages", "label-spaces", "lora-rank", "epochs-and-steps", "default-epochs-and-steps", "label-only-held-out", "second-class-held-out", "no-text-class-held-out",
         "lora-target-among-good-ones", "lora-targets-none", "lone-surrogate", "lone-surrogate-classify", "record-named-by-line",
         "labels-mixed", "label-negative", "text-fields-mixed", "null-text-beside-sentence", "nan-response",
         "template-fields-fit-another", "blank-texts", "micro-batch-one-process"],
)
def test_bad_input_is_one_line_error(base, cli, tmp_path, rows, extra, message):
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    result = cli("finetune", base["checkpoint"], "--data", data, "-o", tmp_path / "run", "--max-steps", "1", *extra)
    assert result.exit_code != 0
    assert message in result.output and result.output.count("error:") == 1, result.output
    assert not (tmp_path / "run" / "manifest.json").exists()


# -- other bases: masked LM (BERT recipe), imported Hugging Face weights -------------------------------


def test_masked_lm_base_classifies_on_its_first_token_and_refuses_sft(base, shared_data, cli, tmp_path):
    from llmkit.model.io import load_checkpoint
    from llmkit.pretrain.stage import PretrainConfig, pretrain

    config = PretrainConfig.build(model="tiny", objective="mlm", n_layer=1, n_embd=32, n_head=2, context_length=128, seq_len=64,
                            batch_tokens=512, micro_batch=8, max_steps=10, lr=3e-3, eval_every=0, save_every=0)
    mlm = pretrain(base["root"] / "tokens", tmp_path / "mlm", config)
    rows = read_jsonl(shared_data / "sentiment" / "train.jsonl")[:128]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    run = tmp_path / "cls"
    result = cli("finetune", mlm, "--data", data, "-o", run, "--task", "classify", "--max-steps", "6", "--batch-size", "16",
                 "--eval-every", "3", "--truncate", "--lr", "1e-3")
    assert result.exit_code == 0, result.output
    loaded = load_checkpoint(run)
    assert loaded.task.head["pooling"] == "first" and loaded.config.objective == "mlm"
    tok = loaded.tokenizer
    text = [tok.bos_id] + tok.encode("a fine , moving film")
    padded = torch.tensor([text + [tok.pad_id] * 5])
    mask = torch.tensor([[1] * len(text) + [0] * 5])
    with torch.no_grad():  # bidirectional attention: padding must be masked out to give the unpadded result
        assert torch.allclose(loaded.model.classify(padded, mask), loaded.model.classify(torch.tensor([text])), atol=1e-5)
    chat = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "response": "b"}] * 4)
    result = cli("finetune", mlm, "--data", chat, "-o", tmp_path / "sft", "--max-steps", "1")
    assert result.exit_code != 0 and "masked language model" in result.output


def test_finetune_from_imported_hugging_face_weights(base, cli, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from llmkit.model.io import load_checkpoint

    tok = _tokenizer(base)
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                    bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)).eval()
    hf.save_pretrained(tmp_path / "hf")
    PreTrainedTokenizerFast(tokenizer_file=str(base["checkpoint"] / "tokenizer" / "tokenizer.json"), bos_token="<|bos|>",
                            eos_token="<|eos|>", pad_token="<|pad|>").save_pretrained(tmp_path / "hf")
    result = cli("import", tmp_path / "hf", "-o", tmp_path / "imported")
    assert result.exit_code == 0, result.output
    rows = [{"prompt": f"say {w}", "response": f"{w} {w}"} for w in ["red", "green", "blue", "dog", "cat", "tree", "film", "sun"]]
    data = write_jsonl(tmp_path / "sft.jsonl", rows * 4)
    run = tmp_path / "run"
    result = cli("finetune", tmp_path / "imported", "--data", data, "-o", run, "--template", "chat", "--max-steps", "15",
                 "--batch-size", "8", "--lr", "3e-3", "--val-fraction", "0.25", "--eval-every", "5")
    assert result.exit_code == 0, result.output
    val = [json.loads(line)["val_loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if "val_loss" in line]
    assert val[-1] < val[0] - 0.5
    assert load_checkpoint(run).config.pos == "learned"  # the GPT-2 architecture came through
    # A context mismatch names both lengths.
    long_rows = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "word " * 70, "response": "x"}] * 4)
    result = cli("finetune", tmp_path / "imported", "--data", long_rows, "-o", tmp_path / "long", "--max-steps", "1")
    assert result.exit_code != 0 and "longer than 65 tokens" in result.output and "reads 64" in result.output


@pytest.mark.slow
def test_gloo_two_processes_match_one(base, shared_data, cli, tmp_path):
    rows = read_jsonl(shared_data / "sentiment" / "train.jsonl")[:160]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    common = ["--data", data, "--task", "classify", "--lora-rank", "4", "--max-steps", "6", "--batch-size", "8",
              "--micro-batch", "4", "--eval-every", "3", "--save-every", "3", "--truncate", "--lr", "1e-3", "--val-fraction", "0.2"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli("finetune", base["checkpoint"], "-o", one, *common).exit_code == 0
    result = cli("finetune", base["checkpoint"], "-o", two, *common, "--nproc", "2")
    assert result.exit_code == 0, result.output
    a = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert abs(ra["loss"] - rb["loss"]) < 1e-5, (ra, rb)
    sa, sb = artifacts.load(one).stats, artifacts.load(two).stats
    assert sa["val_accuracy"] == sb["val_accuracy"] and abs(sa["val_loss"] - sb["val_loss"]) < 1e-5
    # every validation's scores, each sample counted once on the rank that scored it (the per-sample
    # validation gave rank r the samples r, r+2, ...: counted by micro-batch chunks, half were left out)
    assert (one / "val_metrics.jsonl").read_text() == (two / "val_metrics.jsonl").read_text()
    assert artifacts.load(two).manifest.runtime["world_size"] == 2
    # Per-sequence gradients (4 examples a process, the CPU default): the same classifier to the bit.
    assert artifacts.load(two).manifest.runtime["batch_invariant"] is True
    assert artifacts.load(one).fingerprint == artifacts.load(two).fingerprint
    # 3 examples a process do not cut into runs of 4: refused when asked for, naming finetune's own option
    refused = cli("finetune", base["checkpoint"], "-o", tmp_path / "three", *common, "--batch-size", "6", "--nproc", "2",
                  "--batch-invariant")
    said = " ".join(refused.output.split())
    assert refused.exit_code != 0 and "(3 sequences) must be a multiple of 4; change --batch-size" in said, refused.output


# -- determinism, config files, freezing ------------------------------------------------------------------


def test_same_seed_same_fingerprint_config_file_and_freeze(base, shared_data, cli, tmp_path):
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "data.jsonl", read_jsonl(shared_data / "sentiment" / "train.jsonl")[:64])
    (tmp_path / "ft.toml").write_text('[finetune]\ntask = "classify"\nmax_steps = 3\nbatch_size = 8\nfreeze = ["embeddings", "blocks.0.*"]\n'
                                      'truncate = true\neval_every = 0\n')

    def run(name, *extra):
        result = cli("finetune", base["checkpoint"], "--data", data, "-o", tmp_path / name, "--config", tmp_path / "ft.toml", *extra)
        assert result.exit_code == 0, result.output
        art = artifacts.load(tmp_path / name, kind="checkpoint")
        said = " ".join(result.output.split())  # (a classifier is evaluated on labelled examples; it does not generate)
        assert f"fingerprint {art.short_fingerprint}" in said and "parameters trained" in said, said
        assert f"next: llmkit eval {tmp_path / name} --data TEST.jsonl -o EVAL" in said and "generate" not in said, said
        return art

    a, b, c = run("a"), run("b"), run("c", "--seed", "1")
    assert a.fingerprint == b.fingerprint != c.fingerprint
    # a classifier to pretrain on from: refused, naming the checkpoint it was fine-tuned from (no way on was said)
    refused = cli("pretrain", base["root"] / "tokens", "--init-from", a.path, "-o", tmp_path / "on", "--max-steps", "1")
    said = " ".join(refused.output.split())
    assert refused.exit_code == 1 and f"give the one it was fine-tuned from ({base['checkpoint']})" in said, said
    assert a.config["task"] == "classify" and a.config["freeze"] == ["embeddings", "blocks.0.*"]
    before, after = load_file(str(base["checkpoint"] / "model.safetensors")), load_file(str(a.path / "model.safetensors"))
    for key, value in before.items():
        frozen = key.startswith(("tok_emb.", "blocks.0."))
        assert torch.equal(after[key], value) == frozen, key
    assert a.stats["trainable_params"] < a.stats["params"]
    # --lr left out means 1e-4 here (no LoRA): a resume typing it is the same run; another is named by that default
    common = ["--data", data, "-o", tmp_path / "a", "--config", tmp_path / "ft.toml", "--resume"]
    assert cli("finetune", base["checkpoint"], *common, "--lr", "1e-4").exit_code == 0
    refused = cli("finetune", base["checkpoint"], *common, "--lr", "0.01")
    assert refused.exit_code == 1 and "--lr default (0.0001) -> 0.01" in refused.output, refused.output


def test_validation_scores_equal_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score

    from llmkit.finetune.stage import confusion_scores

    g = torch.Generator().manual_seed(0)
    for classes in (2, 3, 5):
        gold = torch.randint(0, classes, (200,), generator=g)
        predicted = torch.where(torch.rand(200, generator=g) < 0.6, gold, torch.randint(0, classes - 1, (200,), generator=g))
        confusion = torch.zeros(classes + 1, classes + 1)  # one class never seen: left out of the macro average
        for p, t in zip(predicted.tolist(), gold.tolist()):
            confusion[t, p] += 1
        scores = confusion_scores(confusion)
        assert scores["val_accuracy"] == pytest.approx(accuracy_score(gold, predicted), abs=1e-12)
        assert scores["val_f1"] == pytest.approx(f1_score(gold, predicted, average="macro", zero_division=0), abs=1e-12)
    # eval's scores of the same predictions, by class id with the trained names (as eval of a classifier scores
    # them), to the bit: names sorted as text ("10" before "2") moved the mean's last bit from 11 classes on
    from llmkit.eval.metrics import classification_scores

    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        gold = torch.randint(0, 23, (300,), generator=g)
        predicted = torch.where(torch.rand(300, generator=g) < 0.5, gold, torch.randint(0, 23, (300,), generator=g))
        confusion = torch.zeros(23, 23)
        for p, t in zip(predicted.tolist(), gold.tolist()):
            confusion[t, p] += 1
        names = {i: str(i) for i in range(23)}
        assert classification_scores(predicted.tolist(), gold.tolist(), label_names=names)["f1"] == confusion_scores(confusion)["val_f1"]


def test_an_sft_example_may_hold_one_token_more_than_the_positions_it_takes(base):
    """The model reads all of an example's tokens but its last, which is only predicted: at max_len
    positions an example of max_len + 1 tokens trains whole, its end token with it (it was refused,
    or cut by that end token under --truncate, though `chat` writes replies that long)."""
    from llmkit.data.templates import encode_example, resolve_template
    from llmkit.errors import UserError
    from llmkit.finetune.data import SFTBatches, sft_examples

    tok = _tokenizer(base)
    template = resolve_template("plain")
    record = {"prompt": "a b c", "response": " d e f g"}
    n = len(encode_example(template, record, tok, "test").ids)
    (whole,) = sft_examples([record], template, tok, n - 1, truncate=False, name="training", verbose=False)
    assert len(whole.ids) == n and whole.ids[-1] == tok.eos_id and whole.learn[-1]
    (kept,) = sft_examples([record], template, tok, n - 1, truncate=True, name="training", verbose=False)
    assert kept.ids == whole.ids
    with pytest.raises(UserError, match=f"longer than {n - 1} tokens"):
        sft_examples([record], template, tok, n - 2, truncate=False, name="training", verbose=False)
    inputs, targets = SFTBatches([whole], pad_id=0, seed=0, shuffle=False)([0])
    assert inputs.shape == (1, n - 1) and int(targets[0, -1]) == tok.eos_id


def test_truncate_shortens_the_document_and_keeps_the_template_and_response(base):
    from llmkit.finetune.data import sft_examples
    from llmkit.data.templates import resolve_template

    tok = _tokenizer(base)
    template = resolve_template("summarize")
    record = {"document": "#Person1#: " + "We met them in Bermuda last May and the dogs were there. " * 20, "summary": "They met in May."}
    with pytest.raises(Exception, match="longer than 65 tokens"):
        sft_examples([record], template, tok, 64, truncate=False, name="training", verbose=False)
    (example,) = sft_examples([record], template, tok, 64, truncate=True, name="training", verbose=False)
    assert 61 <= len(example.ids) <= 65  # 64 inputs, and the last token, only predicted
    response = tok.encode(" They met in May.") + [tok.eos_id]
    assert example.ids[-len(response):] == response and example.learn[-len(response):] == [True] * len(response)
    prompt = tok.decode(example.ids[1 : example.prompt_length])
    assert prompt.startswith("Summarize:\n#Person1#: We met them") and prompt.endswith("\nSummary:")


def test_truncate_cuts_a_chat_as_chat_cuts_a_conversation_and_keeps_the_last_reply(base):
    """A chat too long gives up its oldest exchanges (the system message stays), then the end of
    the message the reply answers, as `chat` and `generate` fit a conversation into the context: the
    last reply and its end token stay whole and learned (it was cut from its end: the reply went
    first, and the example was left out). Where even that message emptied leaves the reply too
    long, the example with it empty is cut from its end."""
    from llmkit.data.templates import encode_chat_example, fit_conversation, resolve_template
    from llmkit.finetune.data import sft_examples

    tok = _tokenizer(base)
    template = resolve_template("chat")
    reply = {"role": "assistant", "content": "They met in May."}
    system = {"role": "system", "content": "Answer briefly."}
    old = [{"role": "user", "content": "the dogs were there " * 6}, {"role": "assistant", "content": "Yes, they were."}]
    question = {"role": "user", "content": "When did they meet? " + "Tell me about the dogs and the beach. " * 4}
    record = {"messages": [system, *old, question, reply]}
    reply_ids = encode_chat_example([system, reply], tok)
    reply_tokens = reply_ids.ids[-sum(reply_ids.learn):]  # the reply, then <|eos|>
    without_old = len(encode_chat_example([system, question, reply], tok).ids)
    max_len = without_old - 1  # the oldest exchange must go, and no more: the question fits whole
    (example,) = sft_examples([record], template, tok, max_len, truncate=True, name="training", verbose=False)
    assert example.ids == encode_chat_example([system, question, reply], tok).ids
    assert example.ids[-len(reply_tokens):] == reply_tokens and all(example.learn[-len(reply_tokens):])
    (shorter,) = sft_examples([record], template, tok, max_len - 8, truncate=True, name="training", verbose=False)
    kept, dropped, cut = fit_conversation([system, *old, question], tok, max_len - 7,
                                          encode=lambda m: encode_chat_example([*m, reply], tok).ids)
    assert dropped == 2 and cut and kept[0] == system and kept[-1]["content"] != question["content"]
    assert shorter.ids == encode_chat_example([*kept, reply], tok).ids and len(shorter.ids) <= max_len - 7
    assert shorter.ids[-len(reply_tokens):] == reply_tokens and all(shorter.learn[-len(reply_tokens):])
    budget = len(encode_chat_example([system, dict(question, content=""), reply], tok).ids) - 3
    (emptied,) = sft_examples([record], template, tok, budget - 1, truncate=True, name="training", verbose=False)
    assert emptied.ids == encode_chat_example([system, dict(question, content=""), reply], tok).ids[:budget]
    assert 0 < sum(emptied.learn) < len(reply_tokens)
    # an assistant's message cut at its end (the one the last reply follows) is not learned, nor the role token
    # ending it: the model learnt to end a turn mid-sentence
    said = {"role": "assistant", "content": "the king is dead and long live the king " * 6}
    record = {"messages": [{"role": "user", "content": "q"}, said, reply]}
    whole = encode_chat_example([*record["messages"]], tok)
    (cut,) = sft_examples([record], template, tok, len(whole.ids) - 9, truncate=True, name="training", verbose=False)
    assert cut.ids[-len(reply_tokens):] == reply_tokens and all(cut.learn[-len(reply_tokens):])
    assert not any(cut.learn[:-len(reply_tokens)]) and len(cut.ids) < len(whole.ids)


def test_truncate_empties_the_document_when_only_that_fits_and_then_keeps_the_responses_start(base):
    """An empty input field is the last thing tried before cutting from the end; and what is cut
    from the end is the example without its input, so the wording and the response's start stay."""
    from llmkit.data.templates import encode_example, resolve_template
    from llmkit.finetune.data import sft_examples

    tok = _tokenizer(base)
    template = resolve_template("summarize")
    record = {"document": "The dogs were there. " * 30, "summary": "They met in May, in Bermuda, with the dogs."}
    emptied = encode_example(template, dict(record, document=""), tok, "test")
    # (max_len counts the positions the model reads: all of an example's tokens but its last)
    (example,) = sft_examples([record], template, tok, len(emptied.ids) - 1, truncate=True, name="training", verbose=False)
    assert example.ids == emptied.ids and example.learn == emptied.learn
    budget = emptied.prompt_length + 4  # the response alone does not fit
    (cut,) = sft_examples([record], template, tok, budget - 1, truncate=True, name="training", verbose=False)
    assert cut.ids == emptied.ids[:budget] and cut.learn == emptied.learn[:budget] and sum(cut.learn) == 4


def test_freezing_a_tied_head_names_the_embedding_it_freezes_too(base, cli, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "a", "response": "b"}] * 4)
    result = cli("finetune", base["checkpoint"], "--data", data, "-o", tmp_path / "run", "--max-steps", "1",
                 "--freeze", "lm_head", "--eval-every", "0")
    assert result.exit_code == 0, result.output
    assert "--freeze lm_head also freezes tok_emb.weight: the model ties them" in " ".join(result.output.split())


def test_validation_labels_of_the_other_kind_name_the_same_classes_as_eval_takes_them(capsys):
    """Training labels "0"/"1" (strings) and a validation file's 0/1 (integers), or the other way
    round, are the same classes, as `llmkit eval` reads them; a label of neither is refused with the
    training labels written as the data writes them."""
    from llmkit.errors import UserError
    from llmkit.finetune.data import label_set

    strings = label_set([{"label": "1"}, {"label": "0"}], "training")
    integers = label_set([{"label": 1}, {"label": 0}], "training")
    assert [strings.index(v, "val") for v in (0, 1, "0", "1")] == [0, 1, 0, 1]
    assert [integers.index(v, "val") for v in (0, 1, "0", "1")] == [0, 1, 0, 1]
    names = label_set([{"label": "pos"}, {"label": "neg"}], "training")
    assert [names.index(v, "val") for v in (0, 1, "0", " 1", "neg", "pos ")] == [0, 1, 0, 1, 0, 1]  # (no class a number)
    # which is a guess (MNLI numbers entailment 0, which sorts second): said once, with the mapping
    nli = label_set([{"label": "entailment"}, {"label": "neutral"}, {"label": "contradiction"}], "training")
    capsys.readouterr()
    assert [nli.index(v, "val.jsonl:1") for v in (0, 1, 2)] == [0, 1, 2]
    said = " ".join(capsys.readouterr().err.split())
    assert said.count("note:") == 1 and ('val.jsonl:1: label 0 names none of the training labels, so numbers are read as '
                                         'positions among them (0 = "contradiction", 1 = "entailment", '
                                         '2 = "neutral"); if the data numbers its classes otherwise, write the class names') in said, said
    # (text as the data has it, not escaped: the shared data holds Chinese classes)
    chinese = label_set([{"label": "正面"}, {"label": "负面"}], "training")
    with pytest.raises(UserError, match='label "中性" is not one of the training labels "正面", "负面"'):
        chinese.index("中性", "val.jsonl:1")
    with pytest.raises(UserError, match='label 2 is not one of the training labels "neg", "pos"'):
        names.index(2, "val.jsonl:1")
    mixed = label_set([{"label": "1"}, {"label": "2"}, {"label": "neg"}], "training")
    assert [mixed.index(v, "val") for v in (1, 2, "neg")] == [0, 1, 2]  # (numbers name classes, never index them)
    with pytest.raises(UserError, match='label 0 is not one of the training labels "1", "2", "neg"'):
        mixed.index(0, "val.jsonl:1")
    with pytest.raises(UserError, match='label "2" is not one of the training labels 0, 1; a class the training data lacks'):
        integers.index("2", "val.jsonl:1")


def test_truncate_cuts_the_longest_prompt_field_first(base, tmp_path, capsys):
    """An Alpaca-style template (instruction, input): the long input gives up its end and the short
    instruction stays whole; where the response alone takes the tokens, the note counts the examples
    kept without their prompt's text."""
    from llmkit.data.templates import encode_example, resolve_template
    from llmkit.finetune.data import sft_examples

    tok = _tokenizer(base)
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps({"prompt": "Instruction: {instruction}\nInput: {input}\nAnswer:", "response": " {output}"}))
    template = resolve_template(str(path))
    record = {"instruction": "Summarize this text please", "input": "the dogs were there " * 40, "output": "short answer here"}
    (example,) = sft_examples([record], template, tok, 64, truncate=True, name="training", verbose=False)
    prompt = tok.decode(example.ids[1 : example.prompt_length])
    assert prompt.startswith("Instruction: Summarize this text please\nInput: the dogs were there") and prompt.endswith("\nAnswer:")
    assert 61 <= len(example.ids) <= 65 and sum(example.learn) == len(tok.encode_continuation(" short answer here")) + 1
    # where the instruction is the longer text, it gives way first; where even its absence is not
    # enough, the input gives way next
    record = {"instruction": "Summarize the text below in your own words " * 8, "input": "the dogs were there " * 3,
              "output": "short answer here"}
    no_instruction = len(encode_example(template, dict(record, instruction=""), tok, "test").ids)
    (example,) = sft_examples([record], template, tok, no_instruction + 3, truncate=True, name="training", verbose=False)
    prompt = tok.decode(example.ids[1 : example.prompt_length])
    assert prompt.startswith("Instruction: Summ") and prompt.endswith("\nInput: " + record["input"] + "\nAnswer:")
    emptied = encode_example(template, dict(record, instruction="", input=""), tok, "test")
    (example,) = sft_examples([record], template, tok, len(emptied.ids) + 2, truncate=True, name="training", verbose=False)
    prompt = tok.decode(example.ids[1 : example.prompt_length])
    assert prompt.startswith("Instruction: \nInput: the") and len(example.ids) <= len(emptied.ids) + 3
    assert example.learn[-sum(emptied.learn):] == emptied.learn[-sum(emptied.learn):]
    sft_examples([record], template, tok, emptied.prompt_length + 1, truncate=True, name="training")
    assert "1 kept without their prompt's text" in capsys.readouterr().err


# -- options shared with pretrain, and the one launcher -----------------------------------------------


def test_finetune_takes_momentum_and_threads(base, shared_data, cli, tmp_path):
    """Both reach fine-tuning through the option groups it shares with pretrain."""
    data = write_jsonl(tmp_path / "data.jsonl", read_jsonl(shared_data / "sentiment" / "train.jsonl")[:32])
    threads = torch.get_num_threads()

    def run(name, momentum):
        result = cli("finetune", base["checkpoint"], "--data", data, "-o", tmp_path / name, "--task", "classify",
                     "--optimizer", "sgd", "--momentum", momentum, "--lr", "0.05", "--threads", "1", "--max-steps", "3",
                     "--batch-size", "8", "--eval-every", "0", "--save-every", "0")
        assert result.exit_code == 0, result.output
        return artifacts.load(tmp_path / name, kind="checkpoint")

    try:
        slow = run("momentum", "0.5")
        assert torch.get_num_threads() == 1  # --threads set this process's threads
        none = run("no-momentum", "0")
    finally:
        torch.set_num_threads(threads)
    assert slow.config["momentum"] == 0.5 and slow.config["optimizer"] == "sgd" and slow.manifest.runtime["threads"] == 1
    state = json.loads((slow.path / "training_state.json").read_text())
    assert {group["momentum"] for group in state["optimizer"]["param_groups"]} == {0.5}
    assert slow.fingerprint != none.fingerprint  # momentum changed the updates


def test_finetune_on_another_node_leaves_the_shared_run_directory_to_node_0(base, shared_data, tmp_path, monkeypatch):
    from llmkit.errors import UserError
    from llmkit.finetune.config import FinetuneConfig
    from llmkit.finetune.stage import finetune
    from llmkit.train import distributed
    from llmkit.train.launch import first_process

    data = write_jsonl(tmp_path / "data.jsonl", read_jsonl(shared_data / "sentiment" / "train.jsonl")[:16])
    run = tmp_path / "shared-run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("written by node 0\n")
    (run / ".llmkit-run").touch()  # (node 0 marks the run directory it made)
    launched = []
    monkeypatch.setattr(distributed, "relaunch", lambda entry, arguments, launch_dir, **kw: launched.append((entry, kw)))
    config = FinetuneConfig.build(task="classify", nnodes=2, node_rank=1, master_addr="10.0.0.1", max_steps=1)
    finetune(base["checkpoint"], data, run, config, force=True)
    assert (run / "metrics.jsonl").read_text() == "written by node 0\n"  # neither emptied nor refused
    from llmkit.finetune.data import file_digest

    assert launched == [("llmkit.finetune.stage:_train", dict(nproc=1, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29500,
                                                              join_timeout=600, compared={"data": file_digest(data)}))]
    with pytest.raises(UserError, match="already exists"):  # node 0 owns it, as in a one-node run
        finetune(base["checkpoint"], data, run, FinetuneConfig.build(task="classify", nnodes=2, master_addr="10.0.0.1"))
    # Started by an outside torchrun, only global rank 0 prepares it.
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    for rank, owner in (("0", True), ("2", False)):
        monkeypatch.setenv("RANK", rank)
        assert first_process(config.devices) is owner


def test_a_resumed_classifier_rewrites_its_validation_history_from_the_checkpoint(base, shared_data, cli, tmp_path):
    """val_metrics.jsonl is cut back to the checkpoint's step on --resume, as metrics.jsonl is
    (the steps after it were logged twice)."""
    data = write_jsonl(tmp_path / "data.jsonl", read_jsonl(shared_data / "sentiment" / "train.jsonl")[:48])
    run = tmp_path / "cls"
    args = ["finetune", base["checkpoint"], "-o", run, "--task", "classify", "--data", data, "--max-steps", "5",
            "--eval-every", "1", "--save-every", "2", "--batch-size", "8", "--micro-batch", "8", "--truncate"]
    assert cli(*args).exit_code == 0
    (run / "manifest.json").unlink()  # as if killed after step 5's validation, before the final save
    resumed = cli(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    steps = [json.loads(line)["step"] for line in (run / "val_metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_a_resumed_classifier_keeps_its_scores_and_its_companions_report_none(base, shared_data, cli, tmp_path):
    """A checkpoint saved between validations carries the latest accuracy and F1, resumed or not;
    RUN/ema and RUN/average carry none (the run's were measured on other weights)."""
    data = write_jsonl(tmp_path / "data.jsonl", read_jsonl(shared_data / "sentiment" / "train.jsonl")[:64])
    common = ["--task", "classify", "--data", data, "--max-steps", "7", "--eval-every", "4", "--save-every", "2",
              "--keep-last", "0", "--batch-size", "8", "--truncate", "--ema", "0.5", "--average-last", "2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli("finetune", base["checkpoint"], "-o", straight, *common).exit_code == 0
    shutil.copytree(straight / "checkpoints" / "step_0000004", resumed / "checkpoints" / "step_0000004")
    result = cli("finetune", base["checkpoint"], "-o", resumed, *common, "--resume")
    assert result.exit_code == 0, result.output
    step6 = [artifacts.load(run / "checkpoints" / "step_0000006").stats for run in (straight, resumed)]
    assert step6[0]["val_step"] == 4 and step6[0]["val_f1"] is not None
    assert all(step6[1][key] == step6[0][key] for key in ("val_step", "val_loss", "val_accuracy", "val_f1"))
    for name in ("ema", "average"):
        stats = artifacts.load(straight / name).stats
        assert stats["step"] == 7 and not {"val_loss", "val_accuracy", "val_f1"} & set(stats)
    # verify and report take them with the run (a byte changed in RUN/ema passed `verify RUN`, and report left them out)
    rows = json.loads(cli("report", straight, straight / "average", "--json").output)  # (the one given: once)
    assert [Path(row["path"]).relative_to(straight).as_posix() for row in rows] == [".", "ema", "average"]
    assert "so do the 2 artifacts inside it" in cli("verify", straight).output
    weights = bytearray((straight / "ema" / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (straight / "ema" / "model.safetensors").write_bytes(bytes(weights))
    said = cli("verify", straight)
    assert said.exit_code == 1 and "ema: changed file: model.safetensors" in said.output, said.output
    shutil.rmtree(straight / "ema")
    (straight / "ema").symlink_to(resumed / "ema", target_is_directory=True)  # (another run's: a link out of this one)
    said = cli("verify", straight)
    assert said.exit_code == 1 and "ema: a link out of the run" in said.output, said.output


def test_validation_data_is_never_the_training_data(base, shared_data, cli, tmp_path):
    """A folder as --val-data validated on its train.jsonl, the training data (loss, accuracy and
    F1 of the training rows, unsaid): a folder gives its validation.jsonl or val.jsonl, and the
    training data itself is refused. A validation record without a label is a one-line error."""
    rows = read_jsonl(shared_data / "sentiment" / "train.jsonl")
    folder = tmp_path / "sst"
    folder.mkdir()
    train = write_jsonl(folder / "train.jsonl", rows[:64])
    common = ["--task", "classify", "--max-steps", "1", "--batch-size", "8", "--truncate", "--eval-every", "1"]
    for val, message in ((folder, "is a folder without validation.jsonl or val.jsonl"),
                         (train, "is the training data itself"),
                         (write_jsonl(tmp_path / "copy.jsonl", rows[:64]), "is the training data itself")):
        result = cli("finetune", base["checkpoint"], "--data", folder, "--val-data", val, "-o", tmp_path / "run", *common)
        assert result.exit_code != 0 and message in result.output and result.output.count("error:") == 1, result.output
        assert not (tmp_path / "run").exists()
    validation = write_jsonl(folder / "validation.jsonl", rows[100:116])
    result = cli("finetune", base["checkpoint"], "--data", folder, "--val-data", folder, "-o", tmp_path / "run", *common)
    assert result.exit_code == 0, result.output
    config = artifacts.load(tmp_path / "run").manifest.config
    assert config["val_data_sha256"] == artifacts.sha256_file(validation) != config["data_sha256"]
    unlabelled = write_jsonl(tmp_path / "v.jsonl", [{"text": "good", "label": 1}, {"text": "no label here"}])
    result = cli("finetune", base["checkpoint"], "--data", train, "--val-data", unlabelled, "-o", tmp_path / "run2", *common)
    assert result.exit_code != 0 and "v.jsonl:2 has no 'label'" in result.output and result.output.count("error:") == 1, result.output


def test_a_resume_with_the_template_file_edited_is_refused(base, cli, tmp_path):
    """Only the file's name was recorded: the run resumed on another template, and task.json named
    only the second."""
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"prompt": "Q: {prompt}\nA:", "response": " {response}"}))
    data = write_jsonl(tmp_path / "data.jsonl", [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(32)])
    args = ["finetune", base["checkpoint"], "--template", template, "--data", data, "-o", tmp_path / "run", "--batch-size", "8",
            "--eval-every", "0", "--save-every", "2"]
    assert cli(*args, "--max-steps", "2").exit_code == 0
    template.write_text(json.dumps({"prompt": "Question: {prompt}\nAnswer:", "response": " {response}"}))
    result = cli(*args, "--max-steps", "4", "--resume")
    assert result.exit_code != 0 and "cannot resume" in result.output and "the template's content changed" in result.output, result.output
    # the data changed: its examples differ as a consequence, which blamed the llmkit version as well
    template.write_text(json.dumps({"prompt": "Q: {prompt}\nA:", "response": " {response}"}))
    write_jsonl(data, [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(24)])
    said = " ".join(cli(*args, "--max-steps", "4", "--resume").output.split())
    assert "(the data's content changed);" in said and "llmkit version" not in said, said
    # so did another option that shapes the examples (--val-fraction, --template): named alone
    write_jsonl(data, [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(32)])
    said = " ".join(cli(*args, "--max-steps", "4", "--resume", "--val-fraction", "0.1").output.split())
    assert "--val-fraction" in said and "llmkit version" not in said, said


def test_a_resume_of_examples_encoded_otherwise_is_refused(base, cli, tmp_path):
    """The same data and options are other examples where an llmkit version encodes them otherwise
    (--truncate's cut changed): the resumed steps trained on another data order without a word. A
    run's checkpoints record a digest of its encoded examples; one saved before it, with --truncate,
    or with another digest, is refused; without --truncate (encoded as before) it resumes."""
    data = write_jsonl(tmp_path / "data.jsonl", [{"prompt": f"question {i} " * 30, "response": f"answer {i}"} for i in range(32)])
    for truncate in ([], ["--truncate"]):
        run = tmp_path / f"run{len(truncate)}"
        args = ["finetune", base["checkpoint"], "--data", data, "-o", run, "--batch-size", "8", "--eval-every", "0",
                "--save-every", "2", "--seq-len", "48", "--template", "plain", *truncate]
        if not truncate:
            data = write_jsonl(tmp_path / "short.jsonl", [{"prompt": f"q {i}", "response": f"a {i}"} for i in range(32)])
            args[args.index(tmp_path / "data.jsonl")] = data
        assert cli(*args, "--max-steps", "2").exit_code == 0
        manifest_path = run / "checkpoints" / "step_0000002" / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        assert len(manifest["runtime"]["examples_sha256"]) == 64
        del manifest["runtime"]["examples_sha256"]  # as an earlier llmkit saved it
        manifest_path.write_text(json.dumps(manifest))
        result = cli(*args, "--max-steps", "4", "--resume")
        if truncate:
            assert result.exit_code != 0 and "the training examples as encoded" in result.output, result.output
        else:
            assert result.exit_code == 0, result.output


def test_speed_and_tokens_seen_count_each_examples_own_tokens(base, cli, tmp_path):
    """Every example counted as --seq-len tokens: tok/s and tokens_seen 1.8x too high in the review's run."""
    from llmkit.data.templates import encode_example, resolve_template

    record = {"prompt": "a short question", "response": "a short answer"}
    data = write_jsonl(tmp_path / "data.jsonl", [record] * 40)
    run = tmp_path / "run"
    args = ["finetune", base["checkpoint"], "--template", "plain", "--data", data, "-o", run, "--batch-size", "8",
            "--eval-every", "0", "--save-every", "1", "--log-every", "1"]
    result = cli(*args, "--max-steps", "3")
    assert result.exit_code == 0, result.output
    inputs = len(encode_example(resolve_template("plain"), record, _tokenizer(base), "record").ids) - 1  # the last is only a target
    assert inputs < 20
    assert artifacts.load(run).manifest.stats["tokens_seen"] == 3 * 8 * inputs
    # a resumed run counts the steps before it as the uninterrupted one did
    assert cli(*args, "--max-steps", "5", "--resume").exit_code == 0
    assert artifacts.load(run).manifest.stats["tokens_seen"] == 5 * 8 * inputs


def test_a_resume_that_leaves_out_the_length_keeps_the_runs(base, cli, tmp_path):
    """Without --max-steps or --epochs a resume re-planned the run at one epoch: a 3-epoch run
    resumed that way ended at a third of its length."""
    data = write_jsonl(tmp_path / "data.jsonl", [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(16)])
    run = tmp_path / "run"
    args = ["finetune", base["checkpoint"], "--template", "plain", "--data", data, "-o", run, "--batch-size", "8",
            "--eval-every", "0", "--save-every", "1", "--keep-last", "0", "--val-fraction", "0"]
    assert cli(*args, "--epochs", "3").exit_code == 0
    finished = artifacts.load(run)
    assert finished.stats["step"] == 6
    shutil.rmtree(run / "checkpoints" / "step_0000006")  # as if killed after step 5's save
    (run / "manifest.json").unlink()
    typed = cli(*args, "--resume", "--epochs", "1")  # typed at its default: a length given, 2 steps, below step 5
    assert typed.exit_code != 0 and "more than this run's 2" in typed.output, typed.output
    assert "give more --epochs (or --max-steps above 5)" in " ".join(typed.output.split())  # the length it counts in
    result = cli(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert "the run's length is kept as the run recorded it (--epochs 3.0)" in result.output
    again = artifacts.load(run)
    assert again.stats["step"] == 6 and again.fingerprint == finished.fingerprint


def test_examples_with_an_empty_response_are_left_out_and_said(base, cli, tmp_path):
    """An empty or blank response trained the end-of-text alone ("stop at once"), with no word; every record
    blank is an error naming the field."""
    records = [{"prompt": f"What is {i} plus one?", "response": str(i + 1)} for i in range(12)]
    records[2]["response"], records[5]["response"] = "", "   "
    data = write_jsonl(tmp_path / "data.jsonl", records)
    run = tmp_path / "run"
    result = cli("finetune", base["checkpoint"], "--template", "plain", "--data", data, "--max-steps", "1", "--batch-size", "4",
                 "--val-fraction", "0", "-o", run)
    assert result.exit_code == 0, result.output
    assert "2 of 12 training examples left out: their response (or an assistant reply of the conversation) is empty or only " \
        "whitespace" in " ".join(result.output.split())
    # a conversation whose last (or any) assistant reply is blank: the earlier replies' text hid it, and it was trained
    chats = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                           {"role": "user", "content": f"Bye {i}"}, {"role": "assistant", "content": "Bye." if i % 4 else " "}]}
             for i in range(12)]
    result = cli("finetune", base["checkpoint"], "--data", write_jsonl(tmp_path / "chats.jsonl", chats), "--max-steps", "1",
                 "--batch-size", "4", "--val-fraction", "0", "-o", tmp_path / "chat")
    assert result.exit_code == 0 and "3 of 12 training examples left out" in " ".join(result.output.split()), result.output
    assert artifacts.load(tmp_path / "chat").stats["train_examples"] == 9
    blank = write_jsonl(tmp_path / "blank.jsonl", [dict(r, response=" ") for r in records])
    result = cli("finetune", base["checkpoint"], "--template", "plain", "--data", blank, "--max-steps", "1", "-o", tmp_path / "b")
    assert result.exit_code == 1 and "every training example's response is empty" in " ".join(result.output.split())
    assert not (tmp_path / "b").exists()


def test_a_blank_target_in_a_template_files_wording_is_left_out_and_the_manifest_counts_it(base, cli, tmp_path):
    """A template file with wording around its target (`English: {target}.`) trained an empty target's
    record on the wording alone, unsaid, where a built-in template left it out: the same data gave
    another training set by template. The manifest now keeps how the records became examples."""
    records = [{"source": f"Satz {i}", "target": "" if i % 2 else f"Sentence {i}"} for i in range(12)]
    template = tmp_path / "template.json"
    template.write_text(json.dumps({"prompt": "German: {source}\n", "response": "English: {target}."}), encoding="utf-8")
    data = write_jsonl(tmp_path / "data.jsonl", records)
    counts = {}
    for name, chosen in (("file", str(template)), ("builtin", "translate")):
        result = cli("finetune", base["checkpoint"], "--template", chosen, "--data", data, "--max-steps", "1",
                     "--batch-size", "4", "--val-fraction", "0", "-o", tmp_path / name)
        assert result.exit_code == 0 and "6 of 12 training examples left out" in " ".join(result.output.split()), result.output
        counts[name] = artifacts.load(tmp_path / name).stats["examples"]["training"]
    assert counts["file"] == counts["builtin"] == {"records": 12, "kept": 6, "blank": 6, "truncated": 0, "no_room": 0,
                                                   "prompt_emptied": 0, "repeated": 0}


def test_repeated_training_examples_are_counted_and_said(base, cli, tmp_path):
    """A data set concatenated with itself trained each example twice, unsaid (only validation's overlap with
    training was checked)."""
    records = [{"prompt": f"What is {i} plus one?", "response": str(i + 1)} for i in range(10)]
    data = write_jsonl(tmp_path / "data.jsonl", records + records[:4])
    result = cli("finetune", base["checkpoint"], "--template", "plain", "--data", data, "--max-steps", "1", "--batch-size", "4",
                 "--val-fraction", "0", "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "4 of the 14 training examples repeat an earlier one" in " ".join(result.output.split())
    assert artifacts.load(tmp_path / "run").stats["examples"]["training"]["repeated"] == 4
    once = cli("finetune", base["checkpoint"], "--template", "plain", "--data", write_jsonl(tmp_path / "once.jsonl", records),
               "--max-steps", "1", "--batch-size", "4", "--val-fraction", "0", "-o", tmp_path / "once")
    assert once.exit_code == 0 and "repeat an earlier one" not in once.output


def test_a_prompt_cut_to_nothing_that_then_fits_counts_as_emptied(base):
    """--truncate: a prompt whose every token must go, the example then fitting exactly, was kept without
    its prompt's text but not counted so (only one where even the empty prompt did not fit was)."""
    from llmkit.data.templates import chat_format_for, encode_example, resolve_template
    from llmkit.finetune.data import sft_examples

    tok = _tokenizer(base)
    for template, record, empty in (
            (resolve_template("plain"), {"prompt": "word " * 40, "response": "yes"}, {"prompt": "", "response": "yes"}),
            (chat_format_for(tok), {"messages": [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "yes"}]},
             {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "yes"}]})):
        fits = len(encode_example(template, empty, tok, "empty").ids)  # the example with its prompt emptied, exactly
        examples = sft_examples([record], template, tok, fits - 1, True, "training", verbose=False)
        assert len(examples) == 1 and len(examples[0].ids) == fits
        assert examples.counts["prompt_emptied"] == 1 and examples.counts["truncated"] == 1, template["type"]


def test_a_validation_of_one_predicted_class_says_so():
    """Accuracy 0.506 from a classifier answering one class read as a figure, unsaid."""
    from types import SimpleNamespace

    from llmkit.finetune.stage import ClassifyTrainer
    from llmkit.model.records import Labels

    trainer = SimpleNamespace(labels=Labels(names=["neg", "pos"], original=["neg", "pos"]))
    one = torch.tensor([[0.0, 248.0], [0.0, 252.0]], dtype=torch.float64)  # (rows gold, columns predicted)
    assert "every prediction is 'pos', whose share of these examples is 0.5040" in ClassifyTrainer._one_class(trainer, one)
    assert ClassifyTrainer._one_class(trainer, torch.tensor([[200.0, 48.0], [2.0, 250.0]], dtype=torch.float64)) == ""


def test_eval_of_a_classifier_answering_one_class_says_so(base, shared_data, cli, tmp_path, monkeypatch):
    """finetune's validation line said so, and eval of the same predictions printed accuracy 0.52 alone."""
    from llmkit.eval import model_tasks

    rows = read_jsonl(shared_data / "sentiment" / "train.jsonl")[:24]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    made = cli("finetune", base["checkpoint"], "--task", "classify", "--data", data, "--max-steps", "1", "--batch-size", "8",
               "--truncate", "-o", tmp_path / "cls")
    assert made.exit_code == 0, made.output
    scored = cli("eval", tmp_path / "cls", "--data", data, "-o", tmp_path / "mixed")
    assert scored.exit_code == 0 and "every prediction is" not in scored.output
    monkeypatch.setattr(model_tasks, "_classifier_predictions", lambda loaded, texts, batch_size: [1] * len(texts))
    scored = cli("eval", tmp_path / "cls", "--data", data, "-o", tmp_path / "one")
    share = sum(r["label"] == 1 for r in rows) / len(rows)
    assert scored.exit_code == 0 and f"every prediction is '1', whose share of these examples is {share:.4f}: the classifier " \
        "answers one class whatever the text" in " ".join(scored.output.split()), scored.output
    # an SFT run from the classifier leaves its head out, and says so now (the docs did; the run did not)
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": r["text"], "response": "ok"} for r in rows])
    tuned = cli("finetune", tmp_path / "cls", "--data", sft, "--max-steps", "1", "--batch-size", "8", "--truncate",
                "-o", tmp_path / "sft")
    assert tuned.exit_code == 0 and "is a classifier of 2 classes (0, 1); its head is left out (an SFT run generates" in \
        " ".join(tuned.output.split()), tuned.output


def test_an_interrupted_lora_run_names_the_step_its_resume_trains_on(base, shared_data, cli, tmp_path, monkeypatch):
    """A LoRA run's merged final weights are no point a --resume trains on: interrupted, a resumed
    run whose newest step checkpoint is older than its end (a run made before LoRA runs kept their
    last step unmerged) named the run itself, and --resume then went on from the older step."""
    import shutil

    from conftest import interrupt_training_at
    from llmkit.train.checkpoint import step_dirs

    data = write_jsonl(tmp_path / "data.jsonl", read_jsonl(shared_data / "sentiment" / "train.jsonl")[:64])
    run = tmp_path / "lora"
    common = ["finetune", base["checkpoint"], "-o", run, "--task", "classify", "--data", data, "--batch-size", "8",
              "--eval-every", "0", "--save-every", "2", "--keep-last", "0", "--truncate", "--lora-rank", "4"]
    assert cli(*common, "--max-steps", "4").exit_code == 0
    shutil.rmtree(step_dirs(run)[-1])  # (its last step's unmerged copy gone: only step 2 trains on)
    interrupt_training_at(monkeypatch, 3)  # (the 4th step: before its checkpoint)
    result = cli(*common, "--max-steps", "8", "--resume")
    flat = " ".join(result.output.split())
    assert result.exit_code == 130 and "resumed from step 2" in flat, result.output
    assert f"its last checkpoint is step 2 ({step_dirs(run)[-1]}): rerun with --resume" in flat, result.output


def test_a_run_without_validation_or_with_fewer_examples_than_a_batch_says_so(base, cli, tmp_path):
    """pretrain said it would not validate; finetune with --val-fraction 0 said nothing, and a batch larger
    than the data read the same examples several times a step without a word."""
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(3)])
    result = cli("finetune", base["checkpoint"], "--data", data, "-o", tmp_path / "run", "--batch-size", "8",
                 "--max-steps", "1", "--val-fraction", "0")
    said = " ".join(result.output.split())
    assert result.exit_code == 0, said
    assert "--val-fraction 0 and no --val-data: the run does not validate, whatever --eval-every 100 says" in said
    assert "3 training example(s), fewer than --batch-size 8: each step reads them about 2.7 times" in said
    one = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "question", "response": "answer"}])  # (the 5 % of one: none)
    said = " ".join(cli("finetune", base["checkpoint"], "--data", one, "-o", tmp_path / "one", "--batch-size", "8",
                        "--max-steps", "1").output.split())
    assert "--val-fraction 0.05 holds back no example of so few and no --val-data: the run does not validate" in said, said


def test_a_template_files_wording_names_the_tokenizers_special_tokens(base):
    """A template file written in a model's own chat format (ChatML's <|im_start|> for an import) is
    encoded with those special tokens, as its Jinja template would be; the same names in a record's
    text stay text. The generation prompt is the training prompt, token for token."""
    from llmkit.data.templates import encode_example, encode_text_prompt, text_template

    tok = _tokenizer(base)
    user, assistant = tok.special_ids["<|user|>"], tok.special_ids["<|assistant|>"]
    template = text_template("own", "<|user|>\n{prompt}\n<|assistant|>", "{response}<|user|>")
    record = {"prompt": "Say <|user|> please", "response": "Hi"}
    example = encode_example(template, record, tok, "test")
    prompt = [tok.bos_id, user] + tok.encode_after_special("\nSay <|user|> please\n") + [assistant]
    response = tok.encode_continuation("Hi") + [user, tok.eos_id]
    assert example.ids == prompt + response
    assert example.learn == [False] * len(prompt) + [True] * len(response)
    assert example.ids.count(user) == 2  # (the wording's two; the record's "<|user|>" is text)
    assert encode_text_prompt(template, "Say <|user|> please", tok) == prompt
    # without such a name the wording encodes with its text, as before
    plain = text_template("plain2", "Q: {prompt}\n", "{response}")
    assert encode_example(plain, record, tok, "test").ids[:-len(response) + 1] == [tok.bos_id] + tok.encode("Q: Say <|user|> please\n")


def test_validation_records_that_are_training_records_are_found_by_their_tokens(base, shared_data, cli, tmp_path):
    """The training data rewritten (shuffled, spaced otherwise) as --val-data measured nothing held
    out, unsaid: refused; a partial overlap, or data that repeats itself, is noted with its count."""
    import json
    import random

    rows = [json.loads(line) for line in (shared_data / "sentiment" / "train.jsonl").read_text().splitlines()[:40]]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r, indent=None, separators=(" ,", " : ")) + " \n" for r in shuffled))
    flags = ["--task", "classify", "--data", data, "--max-steps", "1", "--batch-size", "8"]
    result = cli("finetune", base["checkpoint"], *flags, "--val-data", tmp_path / "val.jsonl", "-o", tmp_path / "out" / "run")
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "every one of the 40 validation examples (--val-data) is also a training example" in said
    assert not (tmp_path / "out").exists()
    write_jsonl(tmp_path / "val.jsonl", rows[:3] + [{"text": "an unseen review , held out", "label": 1}])
    result = cli("finetune", base["checkpoint"], *flags, "--val-data", tmp_path / "val.jsonl", "-o", tmp_path / "run")
    assert result.exit_code == 0 and "3 of the 4 validation examples (--val-data) are also training examples" in " ".join(result.output.split())
    # a held-out share of data that repeats its records: the user chose none of them, so a note
    write_jsonl(tmp_path / "twice.jsonl", rows[:20] * 2)
    result = cli("finetune", base["checkpoint"], *flags[:2], "--data", tmp_path / "twice.jsonl", *flags[4:], "-o", tmp_path / "run2")
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "validation examples (the held-out --val-fraction of --data) are also training examples" in said
    assert "--data repeats its records" in said


def test_text_the_tokenizer_has_no_token_for_is_counted_and_a_template_of_it_refused(capsys):
    """A tokenizer without byte fallback (an imported WordPiece or Unigram vocabulary) writes <unk> for
    text it has no token for: the model learnt to read and write <unk>, unsaid."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from llmkit.data.templates import text_template
    from llmkit.data.tokenizer import TextTokenizer, token_byte_lengths
    from llmkit.finetune.data import classify_examples, sft_examples
    from llmkit.model.records import Labels

    words = ["<unk>", "<|bos|>", "<|eos|>", "<|pad|>", "hello", "world", "Q", ":", "A"]
    hf = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_special_tokens(words[:4])
    tok = TextTokenizer(hf, np.asarray(token_byte_lengths(hf)), roles={"bos": "<|bos|>", "eos": "<|eos|>", "pad": "<|pad|>"})
    template = text_template("qa", "Q: {prompt} A:", " {response}")
    records = [{"prompt": "hello", "response": "world"}, {"prompt": "hello ☃", "response": "☃ world ☃"},
               {"prompt": "☃", "response": "hello"}]
    examples = sft_examples(records, template, tok, 64, False, "training", places=["d.jsonl:1", "d.jsonl:2", "d.jsonl:3"])
    said = " ".join(capsys.readouterr().err.split())
    assert len(examples) == 3
    assert ("2 of 3 training examples hold text this tokenizer has no token for (4 <unk> tokens, 2 of them in what the "
            "model learns to write; the first: d.jsonl:2)") in said
    sft_examples(records[:1], text_template("de", "Übersetze:\n{prompt}", " {response}"), tok, 64, False, "training")
    said = " ".join(capsys.readouterr().err.split())
    assert "the template's wording holds 'Übersetze', which this tokenizer has no token for: every example carries <unk> there" in said
    classify_examples([{"text": "hello ☃", "label": 0}, {"text": "world", "label": 1}], Labels(["0", "1"], [0, 1]), tok, 64,
                      False, "training", places=["c.jsonl:1", "c.jsonl:2"])
    said = " ".join(capsys.readouterr().err.split())
    assert "1 of 2 training texts holds text this tokenizer has no token for (1 <unk> token; the first: c.jsonl:1)" in said


def test_a_prompt_beside_messages_that_repeats_the_first_user_message_is_no_other_exchange(base):
    """UltraChat-200k and no_robots keep "prompt" (the first user message) beside "messages": refused
    as an exchange beside the conversation, they could not be fine-tuned on at all."""
    from llmkit.data.templates import encode_example, resolve_template
    from llmkit.errors import UserError

    tok, chat = _tokenizer(base), resolve_template("chat")
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    alone = encode_example(chat, {"messages": messages}, tok, "d.jsonl:1")
    assert encode_example(chat, {"prompt": "q", "prompt_id": "0", "messages": messages}, tok, "d.jsonl:1") == alone
    with pytest.raises(UserError, match="has 'prompt' beside 'messages', .* and it differs from its first user message"):
        encode_example(chat, {"prompt": "another", "messages": messages}, tok, "d.jsonl:1")


def test_a_template_files_special_token_that_strips_takes_the_whitespace_beside_it(base):
    """Phi-3's role tokens strip the whitespace beside them inside one string (lstrip/rstrip), as
    `apply_chat_template` encodes it; the template file's wording kept it, other ids than the
    exported model's template gives."""
    from tokenizers import AddedToken, Tokenizer

    from llmkit.data.templates import encode_text_prompt, text_template
    from llmkit.data.tokenizer import TextTokenizer, token_byte_lengths

    hf = Tokenizer.from_file(str(base["checkpoint"] / "tokenizer" / "tokenizer.json"))
    hf.add_special_tokens([AddedToken("<|sep|>", lstrip=True, rstrip=True, special=True)])
    tok = TextTokenizer(hf, np.asarray(token_byte_lengths(hf)))
    sep = tok.special_ids["<|sep|>"]
    ids = encode_text_prompt(text_template("own", "Q: {prompt} \n<|sep|>\n A:", " {response}"), "the king", tok)
    assert ids == [tok.bos_id] + tok.encode_after_special("Q: the king") + [sep] + tok.encode_after_special("A:")
    # as the tokenizer encodes the same string, special tokens read as such (TextTokenizer reads them as text)
    again = Tokenizer.from_file(str(base["checkpoint"] / "tokenizer" / "tokenizer.json"))
    again.add_special_tokens([AddedToken("<|sep|>", lstrip=True, rstrip=True, special=True)])
    assert ids[1:] == again.encode("Q: the king \n<|sep|>\n A:", add_special_tokens=False).ids
    # across the seam: a prompt ending in such a token takes the whitespace the response starts with
    from llmkit.data.templates import encode_example

    example = encode_example(text_template("seam", "Q: {prompt}<|sep|>", " {response}"), {"prompt": "the king", "response": "yes"},
                             tok, "test")
    assert example.ids[1:-1] == again.encode("Q: the king<|sep|> yes", add_special_tokens=False).ids


def test_chat_trains_in_an_imported_models_own_template_but_llmkits_own_in_llmkits(base):
    """llmkit's chat fine-tune exported, re-saved by transformers (no llmkit record) and imported again
    has llmkit's chat format as its own template: trained in that format as before (the own-template
    path refused its multi-turn data); another model's template is trained in."""
    from llmkit.data.templates import LLMKIT_CHAT_TEMPLATES, chat_format_for, chat_template, own_chat_format

    tok = _tokenizer(base)
    assert chat_format_for(tok) == chat_template()
    for exported in LLMKIT_CHAT_TEMPLATES:  # (the one exported until 2026-12-06 too)
        tok.own_chat_template = exported
        assert chat_format_for(tok) == chat_template()
    tok.own_chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert chat_format_for(tok) == own_chat_format(tok.own_chat_template)


def test_a_classifier_trains_from_csv_and_parquet_on_named_fields_and_eval_reads_them_so(base, shared_data, cli, tmp_path):
    """finetune read JSON Lines alone, with fixed field names, where eval read CSV and Parquet and took
    --field/--label-field: a classifier could be scored on a file it could not be trained on. The same
    records in any of the three, under any names, train the same weights; the classifier records the
    names, so eval of the same file needs none."""
    import csv

    import datasets
    from safetensors.torch import load_file

    rows = read_jsonl(shared_data / "sentiment" / "train.jsonl")[:24]
    renamed = [{"review": r["text"], "meta": {"stars": r["label"]}} for r in rows]
    datasets.Dataset.from_list(renamed).to_parquet(str(tmp_path / "data.parquet"))
    with open(tmp_path / "data.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentiment", "review"])
        writer.writerows([[r["label"], r["text"]] for r in rows])
    common = ["--task", "classify", "--max-steps", "2", "--batch-size", "8", "--truncate", "--val-fraction", "0.25",
              "--eval-every", "2", "--lr", "1e-3"]
    runs = {"jsonl": (write_jsonl(tmp_path / "data.jsonl", rows), []),
            "parquet": (tmp_path / "data.parquet", ["--field", "review", "--label-field", "meta.stars"]),
            "csv": (tmp_path / "data.csv", ["--field", "review", "--label-field", "sentiment"])}
    for name, (data, fields) in runs.items():
        made = cli("finetune", base["checkpoint"], "--data", data, *common, *fields, "-o", tmp_path / name)
        assert made.exit_code == 0, made.output
    weights = {name: load_file(str(tmp_path / name / "model.safetensors")) for name in runs}
    for name in ("parquet", "csv"):  # (the CSV's labels are its cells' text, "0" and "1": the same classes)
        assert all(torch.equal(weights[name][key], weights["jsonl"][key]) for key in weights["jsonl"]), name
    task = json.loads((tmp_path / "parquet" / "task.json").read_text())
    assert (task["text_field"], task["label_field"]) == ("review", "meta.stars")
    assert "text_field" not in json.loads((tmp_path / "jsonl" / "task.json").read_text())
    assert artifacts.load(tmp_path / "parquet").config["label_field"] == "meta.stars"
    assert "label_field" not in artifacts.load(tmp_path / "jsonl").config  # (runs on the default fields: as before)
    scored = cli("eval", tmp_path / "parquet", "--data", tmp_path / "data.parquet", "-o", tmp_path / "eval")
    assert scored.exit_code == 0, scored.output
    by_hand = cli("eval", tmp_path / "jsonl", "--data", runs["jsonl"][0], "-o", tmp_path / "eval-jsonl")
    assert by_hand.exit_code == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == \
        json.loads((tmp_path / "eval-jsonl" / "metrics.json").read_text())
    # named fields a record lacks, or an SFT run given them: one line each, nothing written
    missing = cli("finetune", base["checkpoint"], "--data", tmp_path / "data.csv", *common, "--field", "body", "-o", tmp_path / "m")
    assert missing.exit_code == 1 and "record 1 has no 'body' (--field); its fields: sentiment, review" in missing.output
    unnamed = cli("finetune", base["checkpoint"], "--data", tmp_path / "data.csv", *common, "-o", tmp_path / "u")
    assert unnamed.exit_code == 1 and "(or name the field holding the text: --field NAME)" in " ".join(unnamed.output.split())
    sft = cli("finetune", base["checkpoint"], "--data", tmp_path / "data.csv", "--field", "review", "-o", tmp_path / "s")
    assert sft.exit_code == 2 and "--field name(s) a classifier's fields" in " ".join(sft.output.split())
    assert not any((tmp_path / name).exists() for name in ("m", "u", "s"))


def test_an_empty_record_and_a_device_given_as_data_are_named_as_such(base, cli, tmp_path):
    """`{}` was "has no field 'prompt' ...; fields: " (an empty list), and --data /dev/null "not found"."""
    data = write_jsonl(tmp_path / "empty.jsonl", [{}, {}])
    result = cli("finetune", base["checkpoint"], "--template", "plain", "--data", data, "-o", tmp_path / "a")
    assert result.exit_code == 1 and "fields: none" in result.output, result.output
    result = cli("finetune", base["checkpoint"], "--data", "/dev/null", "-o", tmp_path / "b")
    assert result.exit_code == 1 and "--data /dev/null is not a regular file" in result.output, result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_table_labels_are_the_classes_json_numbers_are_and_a_blank_cell_is_no_class(base, shared_data, cli, tmp_path):
    """A CSV's cells are text: labels 0..11 sorted as text ("10" before "2") gave another head order, so
    other weights, than the same records in JSONL; an empty label cell became a class named ""."""
    import csv

    from safetensors.torch import load_file

    rows = [{"text": r["text"], "label": i % 12} for i, r in enumerate(read_jsonl(shared_data / "sentiment" / "train.jsonl")[:48])]
    folder = tmp_path / "folder"
    folder.mkdir()
    with open(folder / "train.csv", "w", newline="", encoding="utf-8") as handle:  # (a folder's train.csv is its data)
        csv.writer(handle).writerows([["text", "label"], *[[r["text"], r["label"]] for r in rows]])
    common = ["--task", "classify", "--max-steps", "2", "--batch-size", "8", "--truncate", "--val-fraction", "0", "--lr", "1e-3"]
    for name, data in (("jsonl", write_jsonl(tmp_path / "data.jsonl", rows)), ("csv", folder)):
        made = cli("finetune", base["checkpoint"], "--data", data, *common, "-o", tmp_path / name)
        assert made.exit_code == 0, made.output
    tasks = {name: json.loads((tmp_path / name / "task.json").read_text()) for name in ("jsonl", "csv")}
    assert tasks["csv"]["labels"] == tasks["jsonl"]["labels"] == [str(i) for i in range(12)]
    weights = {name: load_file(str(tmp_path / name / "model.safetensors")) for name in ("jsonl", "csv")}
    assert all(torch.equal(weights["csv"][key], weights["jsonl"][key]) for key in weights["jsonl"])
    lines = (folder / "train.csv").read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ","  # (row 3's label cell left empty)
    (tmp_path / "blank.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    refused = cli("finetune", base["checkpoint"], "--data", tmp_path / "blank.csv", *common, "-o", tmp_path / "blank")
    assert refused.exit_code == 1 and "blank.csv record 3 has an empty label" in refused.output, refused.output
    assert not (tmp_path / "blank").exists()
    # the default field typed is the same run; a resume that leaves a given field out names its flag
    again = cli("finetune", base["checkpoint"], "--data", tmp_path / "data.jsonl", *common, "--label-field", "label",
                "-o", tmp_path / "typed")
    assert again.exit_code == 0 and artifacts.load(tmp_path / "typed").fingerprint == artifacts.load(tmp_path / "jsonl").fingerprint


def test_texts_cut_to_one_start_are_said_to_repeat_because_of_the_cut(base, capsys):
    """SST-2 has no repeated text; cut to 12 tokens, 8 of its examples were, and the note blamed the data."""
    from llmkit.finetune.data import classify_examples, label_set

    tok = _tokenizer(base)
    records = [{"text": f"the same long opening of a review, and then {word}", "label": i % 2}
               for i, word in enumerate(("good", "bad", "fine", "poor"))]
    examples = classify_examples(records, label_set(records, "training"), tok, 6, True, "training")
    said = " ".join(capsys.readouterr().err.split())
    assert examples.counts["repeated"] == 2 and "once --truncate cut 4 of them to fit" in said and "llmkit clean" not in said


def test_a_resumed_run_or_a_classifier_base_keeps_its_head_order(tmp_path):
    """Digit-string labels sort as numbers since 2026-12-07 ("2" before "10"); a run saved before, its head
    in text order ("1", "10", "2"), resumed with the new order read its head's rows as other classes,
    unsaid, and a classifier base of that order lost its head. The order a run or base has is kept."""
    from llmkit.finetune.data import label_set
    from llmkit.finetune.stage import _in_a_known_order, _saved_label_order
    from llmkit.model.records import TaskRecord

    records = [{"text": "t", "label": label} for label in ("1", "2", "10", "2")]
    labels = label_set(records, "training")
    assert labels.names == ["1", "2", "10"]
    step = tmp_path / "run" / "checkpoints" / "step_0000002"
    step.parent.mkdir(parents=True)
    with artifacts.create(step, "checkpoint") as build:  # (a saved step's record, as the run wrote it)
        TaskRecord(task="classify", labels=["1", "10", "2"], label_values=["1", "10", "2"]).write(build.dir)
    saved = _saved_label_order(tmp_path / "run")
    assert saved == ["1", "10", "2"]
    kept = _in_a_known_order(labels, [saved, None])
    assert (kept.names, kept.original) == (["1", "10", "2"], ["1", "10", "2"])
    assert kept.index("10", "r") == 1 and kept.index("2", "r") == 2
    assert _in_a_known_order(labels, [None, ["1", "10", "2"]]).names == ["1", "10", "2"]  # a base's
    assert _in_a_known_order(labels, [["1", "2"], ["a", "b", "c"]]).names == labels.names  # other classes: its own


def test_a_folder_holding_two_training_files_is_refused_naming_them(tmp_path):
    """A folder's train.jsonl beside its train.csv: one was read, the other passed over unsaid."""
    from llmkit.errors import UserError
    from llmkit.finetune.data import data_file

    (tmp_path / "train.csv").write_text("text,label\na,0\n")
    assert data_file(tmp_path) == tmp_path / "train.csv"
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": 0}\n')
    with pytest.raises(UserError, match="holds train.jsonl and train.csv; pass the file to read"):
        data_file(tmp_path)
    (tmp_path / "val.parquet").write_bytes(b"")
    assert data_file(tmp_path, validation=True) == tmp_path / "val.parquet"


def test_an_empty_field_name_is_refused_as_an_option():
    """--label-field "" trained a classifier whose task.json no reader took (an empty field name)."""
    from llmkit.finetune.config import FinetuneConfig

    for flag, name in (("--field", "text_field"), ("--label-field", "label_field")):
        with pytest.raises(ValueError, match=f"{flag} needs a field name, got ' '"):
            FinetuneConfig.build(task="classify", **{name: " "})
    assert FinetuneConfig.build(task="classify", label_field="label").label_field is None  # (the default, typed)


def test_a_data_set_name_trains_as_its_records_in_files_do(base, shared_data, cli, tmp_path):
    """finetune read files alone where eval took a `datasets` name: --data NAME[:CONFIG] is its train
    split, --val-data NAME its validation split (from llmkit's datasets cache here: tests are offline),
    recorded by the records' content; the same records in files train the same weights."""
    from safetensors.torch import load_file

    from conftest import cached_as_a_hub_dataset

    rows = read_jsonl(shared_data / "sentiment" / "train.jsonl")
    train, val = write_jsonl(tmp_path / "train.jsonl", rows[:24]), write_jsonl(tmp_path / "val.jsonl", rows[24:32])
    cached_as_a_hub_dataset("someorg/sst-mini", {"train": train, "validation": val}, tmp_path / "build")
    common = ["--task", "classify", "--max-steps", "2", "--batch-size", "8", "--truncate", "--eval-every", "2", "--lr", "1e-3"]
    for name, data in (("files", [train, "--val-data", val]), ("named", ["someorg/sst-mini", "--val-data", "someorg/sst-mini"])):
        made = cli("finetune", base["checkpoint"], "--data", *data, *common, "-o", tmp_path / name)
        assert made.exit_code == 0, made.output
    named, files = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("named", "files"))
    assert all(torch.equal(named[key], files[key]) for key in files)
    stats = artifacts.load(tmp_path / "named").manifest.stats
    assert (stats["train_examples"], stats["val_examples"]) == (24, 8)
    config = artifacts.load(tmp_path / "named").config
    assert config["data_sha256"] != config["val_data_sha256"]
    # a run of it stopped after one step and resumed is the same run (its records' hash unchanged)
    named = ["--data", "someorg/sst-mini", "--val-data", "someorg/sst-mini", *common]
    assert cli("finetune", base["checkpoint"], *named, "--save-every", "1", "--max-steps", "1", "-o", tmp_path / "again").exit_code == 0
    resumed = cli("finetune", base["checkpoint"], *named, "-o", tmp_path / "again", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert artifacts.load(tmp_path / "again").fingerprint == artifacts.load(tmp_path / "named").fingerprint
    # a name the cache lacks (offline), or a split the set lacks: one line each, nothing written
    missing = cli("finetune", base["checkpoint"], "--data", "someorg/absent", *common, "-o", tmp_path / "m")
    assert missing.exit_code == 1 and "could not load data set 'someorg/absent' split 'train'" in missing.output, missing.output
    cached_as_a_hub_dataset("someorg/sst-train-only", {"train": train}, tmp_path / "build-train")
    no_split = cli("finetune", base["checkpoint"], "--data", train, "--val-data", "someorg/sst-train-only", *common, "-o", tmp_path / "s")
    assert no_split.exit_code == 1 and "'someorg/sst-train-only' has no split 'validation'" in no_split.output, no_split.output
    assert not (tmp_path / "m").exists() and not (tmp_path / "s").exists()


def test_a_data_sets_values_json_cannot_hold_are_recorded_by_content():
    """An Image column's values were hashed as str(), which names their address in memory: another
    data hash every run, and every resume refused."""
    import numpy as np
    from PIL import Image

    from llmkit.errors import UserError
    from llmkit.finetune.data import _stable_form

    assert _stable_form(Image.new("RGB", (2, 2))) == _stable_form(Image.new("RGB", (2, 2))) != _stable_form(Image.new("L", (2, 2)))
    assert _stable_form(np.arange(3)) == _stable_form(np.arange(3)) != _stable_form(np.arange(3.0))
    assert _stable_form(b"ab") == _stable_form(bytearray(b"ab")) != _stable_form(b"ba")
    with pytest.raises(UserError, match="have no stable form"):
        _stable_form(object())
