"""Ensembles of checkpoints in `llmkit eval` and `llmkit generate` (llmkit.model.ensemble)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from llmkit import artifacts
from llmkit.model.ensemble import Ensemble, ensemble_of

MODEL = ["--model", "tiny", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--context-length", "64"]
RUN = ["--max-steps", "12", "--batch-tokens", "512", "--micro-batch", "8", "--eval-every", "0"]


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    from typer.testing import CliRunner

    from llmkit.cli import app

    def cli(*args):
        return _ok(CliRunner().invoke(app, [str(a) for a in args]))

    root = tmp_path_factory.mktemp("ens")
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    (root / "book.txt").write_text(text[:80_000], encoding="utf-8")
    (root / "held_out.txt").write_text(text[200_000:203_000], encoding="utf-8")
    (root / "short.txt").write_text(text[300_000:300_060], encoding="utf-8")
    cli("clean", root / "book.txt", "--doc-per", "blank-line", "-o", root / "corpus")
    cli("tokenizer", "train", root / "corpus", "-o", root / "tok", "--vocab-size", "300")
    cli("tokenize", root / "corpus", "-t", root / "tok", "-o", root / "tokens")
    cli("pretrain", root / "tokens", "-o", root / "a", *MODEL, *RUN, "--seed", "0")
    cli("pretrain", root / "tokens", "-o", root / "b", *MODEL, *RUN, "--seed", "1", "--lr", "3e-3")
    cli("tokenizer", "train", root / "corpus", "-o", root / "tok2", "--vocab-size", "280")
    cli("tokenize", root / "corpus", "-t", root / "tok2", "-o", root / "tokens2")
    cli("pretrain", root / "tokens2", "-o", root / "other_tokenizer", *MODEL, "--max-steps", "1", "--batch-tokens", "512",
        "--micro-batch", "8", "--eval-every", "0")
    cli("pretrain", root / "tokens", "-o", root / "other_context", *MODEL[:-1], "32", "--max-steps", "1", "--batch-tokens",
        "512", "--micro-batch", "8", "--eval-every", "0")
    cli("tokenize", root / "corpus", "-t", root / "tok", "-o", root / "tokens_bos", "--add-bos")
    cli("pretrain", root / "tokens_bos", "-o", root / "after_bos", *MODEL, "--max-steps", "1", "--batch-tokens", "512",
        "--micro-batch", "8", "--eval-every", "0")
    return root


def _eval(cli, out, *args):
    _ok(cli("eval", *args, "-m", "perplexity", "-o", out))
    return json.loads((out / "metrics.json").read_text()), artifacts.load(out, kind="eval")


def _document_logprobs(path, text):
    """Per-token log p of a document that fits in one window, computed directly."""
    from llmkit.eval.model_tasks import start_id
    from llmkit.model.io import load_checkpoint

    loaded = load_checkpoint(path)
    tokens = loaded.tokenizer.encode(text)
    assert len(tokens) < 64  # one window: no rolling needed for the hand computation
    inputs = torch.tensor([[start_id(loaded)] + tokens[:-1]])
    with torch.no_grad():
        logits, _ = loaded.model(inputs)
    return F.log_softmax(logits[0].double(), dim=-1), torch.tensor(tokens)


def test_two_checkpoint_ensemble_equals_the_hand_computed_mixture_and_beats_their_mean_nll(cli, runs, tmp_path):
    text = (runs / "short.txt").read_text(encoding="utf-8")
    (lp_a, targets), (lp_b, _) = _document_logprobs(runs / "a", text), _document_logprobs(runs / "b", text)
    rows = torch.arange(len(targets))
    nll_a, nll_b = -lp_a[rows, targets].sum(), -lp_b[rows, targets].sum()
    assert abs(float(nll_a - nll_b)) > 1.0  # the members really differ

    _, art = _eval(cli, tmp_path / "mix", runs / "a", runs / "b", "--data", runs / "short.txt", "--weights", "1,3")
    mixture = torch.logaddexp(lp_a + math.log(0.25), lp_b + math.log(0.75))
    assert art.manifest.stats["nll"] == pytest.approx(float(-mixture[rows, targets].sum()), rel=1e-5)

    _, art = _eval(cli, tmp_path / "pool", runs / "a", runs / "b", "--data", runs / "short.txt", "--ensemble-mode", "logprob")
    pooled = F.log_softmax(0.5 * lp_a + 0.5 * lp_b, dim=-1)
    assert art.manifest.stats["nll"] == pytest.approx(float(-pooled[rows, targets].sum()), rel=1e-5)

    # on a held-out page (many windows): the mixture's NLL is at most the members' mean NLL
    _, art_a = _eval(cli, tmp_path / "ea", runs / "a", "--data", runs / "held_out.txt")
    _, art_b = _eval(cli, tmp_path / "eb", runs / "b", "--data", runs / "held_out.txt")
    _, art_ab = _eval(cli, tmp_path / "eab", runs / "a", "--ensemble", runs / "b", "--data", runs / "held_out.txt")
    assert art_ab.manifest.stats["nll"] <= 0.5 * (art_a.manifest.stats["nll"] + art_b.manifest.stats["nll"])


def test_the_eval_lineage_lists_every_member_and_the_config_the_weights(cli, runs, tmp_path):
    _, art = _eval(cli, tmp_path / "e", runs / "a", runs / "b", "--data", runs / "short.txt", "--weights", "1,3")
    roles = {ref["role"]: ref["fingerprint"] for ref in art.manifest.inputs}
    # in the fingerprint order they are mixed in, each weight beside its member
    fingerprints = {artifacts.load(runs / name).fingerprint: weight for name, weight in (("a", 0.25), ("b", 0.75))}
    assert [roles["checkpoint:0"], roles["checkpoint:1"]] == sorted(fingerprints)
    assert art.config["ensemble"] == {"members": 2, "weights": [fingerprints[f] for f in sorted(fingerprints)], "mode": "prob"}
    # the order typed changes no score (the mixture is summed in fingerprint order), so not the artifact either
    _, swapped = _eval(cli, tmp_path / "s", runs / "b", runs / "a", "--data", runs / "short.txt", "--weights", "3,1")
    assert swapped.fingerprint == art.fingerprint
    _, other = _eval(cli, tmp_path / "o", runs / "b", runs / "a", "--data", runs / "short.txt", "--weights", "1,3")
    assert other.fingerprint != art.fingerprint


def test_three_members_score_the_same_to_the_bit_in_any_order(cli, runs, tmp_path):
    """A float32 running mixture of three rounds by its order (A B C and C B A differed in the 9th
    digit): the members are mixed in fingerprint order, whatever order they are typed in."""
    weights = {runs / "a": "1", runs / "b": "2", runs / "other_context": "3"}
    members = list(weights)
    scores = set()
    for number, order in enumerate([members, members[::-1], [members[1], members[2], members[0]]]):
        metrics, art = _eval(cli, tmp_path / f"e{number}", *order, "--data", runs / "held_out.txt",
                             "--weights", ",".join(weights[m] for m in order))
        scores.add((metrics["perplexity"], art.manifest.stats["nll"], art.fingerprint))
    assert len(scores) == 1, scores


def test_an_ensemble_of_one_checkpoint_is_that_checkpoint(cli, runs, tmp_path):
    from llmkit.model.io import load_checkpoint

    model = load_checkpoint(runs / "a").model
    idx = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        logits, _ = model(idx)
        alone, _ = Ensemble([model], [1.0])(idx)
    assert torch.allclose(alone, F.log_softmax(logits.float(), dim=-1), atol=1e-6)

    single, art = _eval(cli, tmp_path / "one", runs / "a", "--data", runs / "held_out.txt")
    twice, _ = _eval(cli, tmp_path / "twice", runs / "a", runs / "a", "--data", runs / "held_out.txt")
    assert twice["perplexity"] == pytest.approx(single["perplexity"], rel=1e-5)
    # a checkpoint given twice is said to be one (as average says it; it was taken for two members unsaid)
    said = " ".join(cli("eval", runs / "a", runs / "b", runs / "a", "-m", "perplexity", "--data", runs / "held_out.txt",
                        "-o", tmp_path / "copies").output.split())
    assert f"{runs / 'a'} and {runs / 'a'} are one checkpoint (the same fingerprint), so it takes 0.6667 of the mixture" in said
    # a weight of zero leaves a member out
    zero, _ = _eval(cli, tmp_path / "zero", runs / "a", runs / "b", "--weights", "1,0", "--data", runs / "held_out.txt")
    assert zero["perplexity"] == pytest.approx(single["perplexity"], rel=1e-5)
    assert "ensemble" not in art.config and [r["role"] for r in art.manifest.inputs] == ["checkpoint"]


def test_multiple_choice_on_an_ensemble_scores_the_mixture(cli, runs, tmp_path):
    records = [{"question": "ROMEO: I", "choices": [" am", " zebra", " will"], "label": 0},
               {"question": "The king", "choices": [" is", " qqq"], "label": 0}]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    _ok(cli("eval", runs / "a", "-m", "accuracy", "--data", tmp_path / "mc.jsonl", "-o", tmp_path / "one"))
    _ok(cli("eval", runs / "a", runs / "a", "-m", "accuracy", "--data", tmp_path / "mc.jsonl", "-o", tmp_path / "two"))
    one = [json.loads(line)["logliks"] for line in (tmp_path / "one" / "predictions.jsonl").read_text().splitlines()]
    two = [json.loads(line)["logliks"] for line in (tmp_path / "two" / "predictions.jsonl").read_text().splitlines()]
    assert all(x == pytest.approx(y, rel=1e-5) for xs, ys in zip(one, two) for x, y in zip(xs, ys))


def test_generate_with_an_ensemble_uses_every_members_cache(cli, runs, tmp_path):
    def greedy(*checkpoints, extra=()):
        out = tmp_path / f"g{len(list(tmp_path.iterdir()))}.jsonl"
        _ok(cli("generate", *checkpoints, "-p", "ROMEO:", "-p", "To be", "--greedy", "-n", "24", "-o", out, *extra))
        return [json.loads(line)["completion"] for line in out.read_text().splitlines()]

    alone = greedy(runs / "a")
    assert greedy(runs / "a", runs / "a") == alone
    assert greedy(runs / "a", "--ensemble", runs / "b", extra=("--weights", "1,0")) == alone
    mixed = greedy(runs / "a", runs / "b")
    assert len(mixed) == 2 and all(isinstance(c, str) for c in mixed)


def test_generate_ensemble_matches_the_mixture_step_by_step(runs):
    """Cached decoding through the ensemble picks, at every step, the argmax of the uncached mixture."""
    from llmkit.inference.engine import GenerationParams, generate_ids
    from llmkit.model.io import load_checkpoint

    a, b = load_checkpoint(runs / "a").model, load_checkpoint(runs / "b").model
    model = Ensemble([a, b], [0.5, 0.5])
    prompt = [5, 17, 42, 9]
    [row] = generate_ids(model, [prompt], GenerationParams(max_new_tokens=10, temperature=0.0, stop_at_eos=False), pad_id=0)
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(10):
            idx = torch.tensor([sequence])
            mix = torch.logaddexp(F.log_softmax(a(idx)[0][0, -1], -1), F.log_softmax(b(idx)[0][0, -1], -1))
            sequence.append(int(mix.argmax()))
    assert row.token_ids == sequence[len(prompt):]


def test_the_repetition_penalty_means_for_an_ensemble_what_it_means_for_one_model(cli, runs, tmp_path):
    """The penalty (CTRL / HF) is a rule on a model's logits; it acted on the ensemble's mixed
    log-probabilities instead (never positive, so always multiplied: far stronger). A weight-0 member
    is left out, so --weights 1,0 gives the first checkpoint's text, and a checkpoint ensembled with
    itself gives its own: the penalty acts on each member's logits, then they are mixed."""
    def greedy(*args):
        out = tmp_path / f"r{len(list(tmp_path.iterdir()))}.jsonl"
        _ok(cli("generate", *args, "-p", "ROMEO:", "-p", "To be", "--greedy", "-n", "24", "--repetition-penalty", "1.5",
                "--ignore-eos", "-o", out))
        return [json.loads(line)["completion"] for line in out.read_text().splitlines()]

    alone = greedy(runs / "a")
    assert greedy(runs / "a", runs / "b", "--weights", "1,0") == alone
    assert greedy(runs / "a", runs / "a") == alone


def test_an_ensemble_penalises_each_members_logits_then_mixes_them(runs):
    from llmkit.inference.engine import GenerationParams, generate_ids
    from llmkit.inference.sampling import apply_repetition_penalty
    from llmkit.model.io import load_checkpoint

    loaded = load_checkpoint(runs / "a")
    a, b = loaded.model, load_checkpoint(runs / "b").model
    weights = [0.3, 0.7]
    prompt = [loaded.tokenizer.eos_id] + loaded.tokenizer.encode("ROMEO:")
    params = GenerationParams(max_new_tokens=10, temperature=0.0, repetition_penalty=1.2, stop_at_eos=False)
    [row] = generate_ids(Ensemble([a, b], weights), [prompt], params, pad_id=0)
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(10):
            idx = torch.tensor([sequence])
            seen = torch.zeros(1, a.config.vocab_size, dtype=torch.bool)
            seen[0, sequence] = True
            parts = [math.log(w) + F.log_softmax(apply_repetition_penalty(m(idx)[0][:, -1], seen, 1.2), -1)
                     for m, w in zip((a, b), weights)]
            sequence.append(int(torch.logaddexp(*parts).argmax()))
    assert row.token_ids == sequence[len(prompt):]


def test_classifier_ensembles_average_class_probabilities():
    from llmkit.model.classifier import SequenceClassifier
    from llmkit.model.gpt import GPT, ModelConfig

    config = ModelConfig(vocab_size=50, context_length=16, n_layer=1, n_head=2, n_embd=16)
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(SequenceClassifier(GPT(config), 3).eval())
    ensemble = ensemble_of(members, [0.3, 0.7])
    idx, mask = torch.randint(0, 50, (4, 10)), torch.ones(4, 10, dtype=torch.long)
    with torch.no_grad():
        expected = 0.3 * members[0].classify(idx, mask).softmax(-1) + 0.7 * members[1].classify(idx, mask).softmax(-1)
        got = ensemble.classify(idx, attention_mask=mask).exp()
    assert torch.allclose(got, expected, atol=1e-6)
    assert not hasattr(ensemble_of([GPT(config)], [1.0]), "classify")  # a language-model ensemble does not classify


def test_a_classifier_ensemble_reads_each_text_as_each_member_was_fine_tuned(cli, runs, tmp_path, shared_data):
    """Each member cuts a text where its fine-tuning cut them (--seq-len): the first member's cut
    used to be every member's, so the predictions changed with the members' order."""
    lines = (shared_data / "sentiment" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:64]) + "\n", encoding="utf-8")
    (tmp_path / "test.jsonl").write_text("\n".join(lines[-24:]) + "\n", encoding="utf-8")
    tune = ["--task", "classify", "--data", tmp_path / "train.jsonl", "--val-fraction", "0", "--truncate",
            "--max-steps", "3", "--batch-size", "16", "--lr", "3e-3"]
    _ok(cli("finetune", runs / "a", *tune, "--seq-len", "8", "-o", tmp_path / "short"))
    _ok(cli("finetune", runs / "b", *tune, "-o", tmp_path / "long"))
    scores = {}
    for name, members in (("short-long", ("short", "long")), ("long-short", ("long", "short"))):
        _ok(cli("eval", *(tmp_path / m for m in members), "--data", tmp_path / "test.jsonl", "-m", "accuracy", "-o", tmp_path / name))
        scores[name] = [json.loads(line)["prediction"] for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
    assert scores["short-long"] == scores["long-short"]

    from llmkit.eval.model_tasks import _classifier_predictions
    from llmkit.model.ensemble import load_ensemble

    texts = [json.loads(line)["text"] for line in lines[-24:]]
    loaded = [load_ensemble([tmp_path / m], device="cpu", purpose=None) for m in ("short", "long")]
    both = load_ensemble([tmp_path / "short", tmp_path / "long"], device="cpu", purpose=None)
    assert sorted(both.model.input_limits) == [8, 64]  # (in the members' fingerprint order, as they are mixed)

    def probabilities(item, rows: int) -> torch.Tensor:  # each member alone, its own cut of each text
        from llmkit.eval.model_tasks import start_id

        ids = [([start_id(item)] + item.tokenizer.encode(t))[:rows] for t in texts]
        width = max(map(len, ids))
        idx = torch.tensor([row + [0] * (width - len(row)) for row in ids])
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
        with torch.no_grad():
            return item.model.classify(idx, attention_mask=mask).softmax(-1)

    mixed = 0.5 * probabilities(loaded[0], 8) + 0.5 * probabilities(loaded[1], 64)
    assert _classifier_predictions(both, texts, batch_size=5) == mixed.argmax(-1).tolist()


def test_checkpoints_of_one_tokenizer_and_different_output_sizes_are_a_one_line_error(cli, runs, tmp_path):
    """An import may pad its embeddings to a round size: one tokenizer, more output rows."""
    from safetensors.torch import load_file, save_file

    source = artifacts.load(runs / "a", kind="checkpoint")
    with artifacts.create(tmp_path / "padded", "checkpoint") as build:
        for name in source.manifest.files:
            (build.dir / name).parent.mkdir(parents=True, exist_ok=True)
            (build.dir / name).write_bytes((runs / "a" / name).read_bytes())
        config = json.loads((build.dir / "model_config.json").read_text())
        weights = load_file(str(build.dir / "model.safetensors"))
        for key, tensor in weights.items():
            if tensor.shape[0] == config["vocab_size"]:
                weights[key] = torch.cat([tensor, torch.zeros(20, *tensor.shape[1:], dtype=tensor.dtype)])
        save_file(weights, str(build.dir / "model.safetensors"))
        (build.dir / "model_config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 20}))
    _ok(cli("eval", tmp_path / "padded", "--data", runs / "short.txt", "-m", "perplexity", "-o", tmp_path / "alone"))
    result = cli("eval", runs / "a", tmp_path / "padded", "--data", runs / "short.txt", "-m", "perplexity", "-o", tmp_path / "e")
    message = result.output.strip()
    assert result.exit_code != 0 and len(message.splitlines()) == 1, message
    assert "different numbers of tokens" in message and f"{runs / 'a'} 300" in message, message
    assert not (tmp_path / "e").exists()


def test_members_of_different_contexts_say_the_ensemble_reads_the_shortest(cli, runs, tmp_path):
    result = _ok(cli("eval", runs / "a", runs / "other_context", "--data", runs / "short.txt", "-m", "perplexity",
                     "-o", tmp_path / "e"))
    assert "the members' contexts differ (32, 64 tokens)" in result.output, result.output


def test_checkpoints_with_different_tokenizers_are_a_one_line_error(cli, runs, tmp_path):
    for command in (["eval", runs / "a", runs / "other_tokenizer", "--data", runs / "short.txt", "-o", tmp_path / "e"],
                    ["generate", runs / "a", runs / "other_tokenizer", "-p", "hi"]):
        result = cli(*command)
        assert result.exit_code != 0
        message = result.output.strip()
        assert "another tokenizer" in message and len(message.splitlines()) == 1, message
    assert not (tmp_path / "e").exists()
    result = cli("eval", runs / "a", runs / "b", "--weights", "1,2,3", "--data", runs / "short.txt", "-o", tmp_path / "w")
    assert result.exit_code != 0 and "--weights has 3 values for 2" in result.output
    # one checkpoint ignores the ensemble options: refused in generate as in eval
    for flags in (["--weights", "2"], ["--ensemble-mode", "logprob"]):
        result = cli("generate", runs / "a", "-p", "hi", "-n", "2", *flags)
        assert result.exit_code != 0 and f"{flags[0]} would change nothing here" in result.output, result.output


def test_members_that_start_documents_after_other_tokens_are_refused_and_a_weight_0_member_decides_nothing(cli, runs, tmp_path):
    """Every document is scored after one start token, which the first member used to decide: an
    ensemble with a member pretrained on --add-bos shards changed with the members' order."""
    for command in (["eval", runs / "a", runs / "after_bos", "--data", runs / "short.txt", "-o", tmp_path / "e"],
                    ["generate", runs / "after_bos", runs / "a", "-p", "hi"],
                    ["eval", runs / "a", runs / "a", runs / "after_bos", "--data", runs / "short.txt", "-o", tmp_path / "e"]):
        result = cli(*command)  # (one line: a copy's note waits for the members to be accepted)
        message = result.output.strip()
        assert result.exit_code != 0 and len(message.splitlines()) == 1, message
        assert "after <|bos|>" in message and "after <|eos|>" in message and "--add-bos" in message, message
    assert not (tmp_path / "e").exists()
    _, alone = _eval(cli, tmp_path / "b", runs / "b", "--data", runs / "short.txt")
    _, weighted = _eval(cli, tmp_path / "0b", runs / "a", runs / "b", "--data", runs / "short.txt", "--weights", "0,1")
    assert weighted.manifest.stats["nll"] == pytest.approx(alone.manifest.stats["nll"], rel=1e-6)  # (the mixture of one: rounding)


def test_generated_metrics_run_on_the_ensemble(cli, runs, tmp_path):
    records = [{"source": "ROMEO: what light", "target": "through yonder window breaks"},
               {"source": "JULIET: O Romeo", "target": "wherefore art thou Romeo"}]
    (tmp_path / "mt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    common = ["-m", "bleu,rouge", "--data", tmp_path / "mt.jsonl", "--max-new-tokens", "8"]
    _ok(cli("eval", runs / "a", *common, "-o", tmp_path / "one"))
    _ok(cli("eval", runs / "a", runs / "a", *common, "-o", tmp_path / "two"))
    _ok(cli("eval", runs / "a", runs / "b", *common, "-o", tmp_path / "mix"))
    predictions = lambda p: [json.loads(line)["prediction"] for line in (tmp_path / p / "predictions.jsonl").read_text().splitlines()]  # noqa: E731
    assert predictions("one") == predictions("two")
    assert json.loads((tmp_path / "one" / "metrics.json").read_text()) == json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert len(predictions("mix")) == 2
