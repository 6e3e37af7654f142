"""`llmkit eval CKPT`: perplexity/bpb against hand computation and transformers, tokens artifacts,
multiple choice, label scoring, generated BLEU/ROUGE."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
import torch
import torch.nn.functional as F

from conftest import resign
from llmkit import artifacts
from llmkit.eval.perplexity import rolling_windows
from test_generate import GPT2_SHAPE, make_checkpoint, save_classifier_checkpoint

torch.set_num_threads(1)
CONTEXT = 64


@pytest.fixture(scope="module")
def shakespeare(shared_data) -> str:
    return (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def gpt2_ckpt(tmp_path_factory, shakespeare) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ev") / "gpt2", shakespeare[:60_000], context_length=CONTEXT, **GPT2_SHAPE)


@pytest.fixture(scope="module")
def loaded(gpt2_ckpt):
    from llmkit.model.io import load_checkpoint

    return load_checkpoint(gpt2_ckpt)


def _metrics(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def _records(path: Path) -> list[dict]:
    return [json.loads(l) for l in (path / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("n, L, c", [(1, 8, 1), (8, 8, 1), (9, 8, 1), (50, 8, 1), (50, 8, 3), (17, 4, 4)])
def test_rolling_windows_score_every_token_once(n, L, c):
    tokens = list(range(100, 100 + n))
    scored = []
    for req in rolling_windows(tokens, prefix_token=0, max_seq_len=L, context_len=c):
        assert len(req.seq) - 1 <= L  # the model never sees more than its context
        targets = req.seq[-req.n :]
        scored.extend(targets)
        if targets[0] != tokens[0]:  # later chunks: at least c tokens of context before each chunk
            assert len(req.seq) - req.n >= c
    assert scored == tokens


def test_rolling_windows_match_lm_eval_gold():
    # lm-evaluation-harness's own expected windows (tests/test_utils.py, test_get_rolling_token_windows_v1)
    gold = [
        ([-100, 0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ([9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]),
        ([19, 20, 21, 22, 23, 24, 25, 26, 27, 28], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29]),
        ([23, 24, 25, 26, 27, 28, 29, 30, 31, 32], [30, 31, 32, 33]),
    ]
    windows = [(r.seq[:-1], r.seq[-r.n :]) for r in rolling_windows(list(range(34)), prefix_token=-100, max_seq_len=10)]
    assert windows == gold


def _hand_nll(model, tokens: list[int], bos: int, L: int) -> float:
    """lm-eval's disjoint chunks written out directly: chunk k predicts tokens[kL:(k+1)L]."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(tokens), L):
            end = min(start + L, len(tokens))
            inputs = ([bos] + tokens[: end - 1]) if start == 0 else tokens[end - L - 1 : end - 1]
            logits, _ = model(torch.tensor([inputs]))
            logp = F.log_softmax(logits[0].double(), dim=-1)
            for t in range(start, end):
                position = len(inputs) - (end - t)
                total -= float(logp[position, tokens[t]])
    return total


def test_perplexity_and_bpb_equal_hand_computation(cli, gpt2_ckpt, loaded, shakespeare, tmp_path):
    text = shakespeare[100_000:104_000]
    (tmp_path / "doc.txt").write_text(text, encoding="utf-8")
    result = cli("eval", gpt2_ckpt, "-m", "perplexity", "-m", "bpb", "--data", tmp_path / "doc.txt", "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    metrics = _metrics(tmp_path / "ev")
    tokens = loaded.tokenizer.encode(text)
    assert len(tokens) > 5 * CONTEXT  # several windows
    nll = _hand_nll(loaded.model, tokens, loaded.tokenizer.bos_id, CONTEXT)
    n_bytes, n_words = len(text.encode("utf-8")), len(text.split())
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / len(tokens)), rel=1e-6)
    assert metrics["word_perplexity"] == pytest.approx(math.exp(nll / n_words), rel=1e-6)
    assert metrics["byte_perplexity"] == pytest.approx(math.exp(nll / n_bytes), rel=1e-6)
    assert metrics["bpb"] == pytest.approx(nll / n_bytes / math.log(2), rel=1e-6)
    # bpb is consistent with perplexity and the counts the artifact stores
    stats = artifacts.load(tmp_path / "ev").stats
    assert stats["tokens"] == len(tokens) and stats["bytes"] == n_bytes and stats["words"] == n_words
    assert metrics["bpb"] == pytest.approx(math.log2(metrics["byte_perplexity"]), rel=1e-12)
    assert metrics["bpb"] == pytest.approx(math.log2(metrics["perplexity"]) * stats["tokens"] / stats["bytes"], rel=1e-9)
    assert "perplexity" in result.output and "bpb" in result.output  # the table


def _gpt2_from_llmkit(model):
    """Copy an llmkit GPT-2-shaped model's weights into transformers' GPT2LMHeadModel."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=c.vocab_size, n_positions=c.context_length, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
            n_inner=c.mlp_hidden, activation_function="gelu_new", layer_norm_epsilon=c.norm_eps,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
        )
    ).eval()
    sd = model.state_dict()
    new = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"]}
    for i in range(c.n_layer):
        p, h = f"blocks.{i}.", f"transformer.h.{i}."
        new[h + "ln_1.weight"], new[h + "ln_1.bias"] = sd[p + "attn_norm.weight"], sd[p + "attn_norm.bias"]
        new[h + "ln_2.weight"], new[h + "ln_2.bias"] = sd[p + "mlp_norm.weight"], sd[p + "mlp_norm.bias"]
        # Conv1D stores [in, out]: transpose; q, k, v side by side in c_attn
        new[h + "attn.c_attn.weight"] = torch.cat([sd[p + "attn.q_proj.weight"], sd[p + "attn.kv_proj.weight"]]).T
        new[h + "attn.c_attn.bias"] = torch.cat([sd[p + "attn.q_proj.bias"], sd[p + "attn.kv_proj.bias"]])
        new[h + "attn.c_proj.weight"], new[h + "attn.c_proj.bias"] = sd[p + "attn.out_proj.weight"].T, sd[p + "attn.out_proj.bias"]
        new[h + "mlp.c_fc.weight"], new[h + "mlp.c_fc.bias"] = sd[p + "mlp.up_proj.weight"].T, sd[p + "mlp.up_proj.bias"]
        new[h + "mlp.c_proj.weight"], new[h + "mlp.c_proj.bias"] = sd[p + "mlp.down_proj.weight"].T, sd[p + "mlp.down_proj.bias"]
    new["transformer.ln_f.weight"], new["transformer.ln_f.bias"] = sd["final_norm.weight"], sd["final_norm.bias"]
    missing, unexpected = hf.load_state_dict({k: v.contiguous() for k, v in new.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    hf.tie_weights()
    return hf


def test_perplexity_equals_transformers(cli, gpt2_ckpt, loaded, shakespeare, tmp_path):
    docs = [shakespeare[200_000 + 3000 * i : 200_000 + 3000 * i + 1500 + 500 * i] for i in range(3)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    result = cli("eval", gpt2_ckpt, "-m", "perplexity", "--data", tmp_path / "docs.jsonl", "-o", tmp_path / "ev", "--batch-size", "3")
    assert result.exit_code == 0, result.output
    ours = _metrics(tmp_path / "ev")
    hf = _gpt2_from_llmkit(loaded.model)
    tok = loaded.tokenizer
    nll, count = 0.0, 0
    with torch.no_grad():
        for doc in docs:
            ids = tok.encode(doc)
            for req in rolling_windows(ids, tok.bos_id, CONTEXT):
                logits = hf(torch.tensor([req.seq[:-1]])).logits[0].double()
                logp = F.log_softmax(logits, dim=-1)[-req.n :]
                nll -= float(logp.gather(1, torch.tensor(req.seq[-req.n :])[:, None]).sum())
                count += req.n
    assert ours["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert [r["tokens"] for r in _records(tmp_path / "ev")] == [len(tok.encode(d)) for d in docs]


def _write_tokens_artifact(out: Path, tokenizer, docs: list[str]) -> Path:
    from llmkit.data.shards import ShardWriter, token_dtype

    with artifacts.create(out, "tokens") as build:
        dtype = token_dtype(tokenizer.vocab_size)
        ids = [[tokenizer.bos_id] + tokenizer.encode(d) + [tokenizer.eos_id] for d in docs]
        for split in ("train", "val"):
            writer = ShardWriter(build.dir / split, dtype, shard_tokens=300)  # several shards
            writer.write(np.concatenate(ids), np.array([len(x) for x in ids]))
            writer.close()
        (build.dir / "tokenizer").mkdir()
        for name in ("tokenizer.json", "token_bytes.npy"):
            (build.dir / "tokenizer" / name).write_bytes((tokenizer.path / name).read_bytes())
        build.stats = {"dtype": np.dtype(dtype).name, "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id, "bos_id": tokenizer.bos_id}
    return out


def test_tokens_artifact_val_split_equals_raw_text(cli, gpt2_ckpt, loaded, shakespeare, tmp_path):
    docs = [shakespeare[300_000 + 2000 * i : 300_000 + 2000 * i + 400 + 300 * i] for i in range(4)]
    tokens = _write_tokens_artifact(tmp_path / "tokens", loaded.tokenizer, docs)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    a = cli("eval", gpt2_ckpt, "-m", "bpb", "--data", tokens, "-o", tmp_path / "a")
    b = cli("eval", gpt2_ckpt, "-m", "bpb", "--data", tmp_path / "docs.jsonl", "-o", tmp_path / "b")
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    ma, mb = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert ma.keys() == mb.keys() == {"perplexity", "word_perplexity", "byte_perplexity", "bpb"}
    for key in ma:
        assert ma[key] == pytest.approx(mb[key], rel=1e-9)
    sa, sb = artifacts.load(tmp_path / "a").stats, artifacts.load(tmp_path / "b").stats
    assert (sa["tokens"], sa["bytes"], sa["words"], sa["documents"]) == (sb["tokens"], sb["bytes"], sb["words"], 4)
    assert sa["bytes"] == sum(len(d.encode()) for d in docs)  # token_bytes add up to the UTF-8 bytes
    roles = {i["role"] for i in artifacts.load(tmp_path / "a").manifest.inputs}
    assert roles == {"checkpoint", "data"}


def test_a_damaged_shard_with_an_id_outside_the_vocabulary_is_one_line(cli, gpt2_ckpt, loaded, shakespeare, tmp_path):
    """A flipped bit made an id past the vocabulary: an IndexError, "unexpected", where pretrain says it."""
    tokens = _write_tokens_artifact(tmp_path / "tokens", loaded.tokenizer, [shakespeare[:600]])
    shard = sorted((tokens / "val").glob("*.bin"))[0]
    data = np.fromfile(shard, dtype=np.dtype(artifacts.load(tokens).stats["dtype"]))
    data[3] = np.iinfo(data.dtype).max
    data.tofile(shard)
    result = cli("eval", gpt2_ckpt, "-m", "perplexity", "--data", tokens, "-o", tmp_path / "ev")
    assert result.exit_code == 1 and "outside the vocabulary" in result.output and "unexpected" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "ev").exists()


def test_tokens_made_with_another_tokenizer_are_refused(cli, gpt2_ckpt, loaded, shakespeare, tmp_path):
    """The same vocabulary size is not the same tokenizer: other ids for the same text."""
    from llmkit.data.tokenizer import load_tokenizer

    other = json.loads((loaded.tokenizer.path / "tokenizer.json").read_text())
    merges = other["model"]["merges"]
    other["model"]["merges"] = merges[1:] + merges[:1]  # one merge moved: another tokenizer, the same vocabulary
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(other))
    (tmp_path / "tok" / "token_bytes.npy").write_bytes((loaded.tokenizer.path / "token_bytes.npy").read_bytes())
    _write_tokens_artifact(tmp_path / "other", load_tokenizer(tmp_path / "tok"), [shakespeare[:500]])
    result = cli("eval", gpt2_ckpt, "-m", "perplexity", "--data", tmp_path / "other", "-o", tmp_path / "ev")
    assert result.exit_code != 0 and "was made with another tokenizer" in result.output and not (tmp_path / "ev").exists()


@pytest.mark.parametrize("labels, message", [("same,same", "same is given more than once"),
                                             ("negative,,positive", "a label name is empty")])
def test_label_names_must_be_distinct_and_non_empty(cli, gpt2_ckpt, shared_data, tmp_path, labels, message):
    result = cli("eval", gpt2_ckpt, "-m", "accuracy", "--data", shared_data / "sentiment" / "test.jsonl", "--labels", labels,
                 "--limit", "4", "-o", tmp_path / "ev")
    assert result.exit_code != 0 and message in result.output and not (tmp_path / "ev").exists()
    # a config file's list, which no parser reads, is held to the same (`[same, same]` scored two classes as one)
    names = labels.split(",")
    (tmp_path / "c.yaml").write_text("labels: [" + ", ".join(json.dumps(n) for n in names) + "]\n")
    result = cli("eval", gpt2_ckpt, "-m", "accuracy", "--data", shared_data / "sentiment" / "test.jsonl", "--config",
                 tmp_path / "c.yaml", "--limit", "4", "-o", tmp_path / "ev")
    assert result.exit_code == 2 and message in result.output and "c.yaml" in result.output, result.output
    assert not (tmp_path / "ev").exists()


def test_perplexity_records_are_numbered_by_input_record_past_empty_ones(cli, gpt2_ckpt, tmp_path):
    rows = ["", "The list type is mutable.", "", "Return a new dict."]
    (tmp_path / "gaps.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    result = cli("eval", gpt2_ckpt, "--data", tmp_path / "gaps.jsonl", "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    assert [r["document"] for r in _records(tmp_path / "ev")] == [1, 3]  # (0-based: they were numbered 0 and 1)
    # (said: "scored 2 documents" of a file of 4 was all a run told)
    said = " ".join(result.output.split())
    assert "2 of the 4 records have an empty 'text' (the first, " in said and "gaps.jsonl:1)" in said, result.output


def test_perplexity_deterministic_fingerprint(cli, gpt2_ckpt, shakespeare, tmp_path):
    """Same inputs, same fingerprint, whatever --batch-size (it changes no number: runtime) and
    --seed (perplexity draws nothing: the manifest's seed is null)."""
    (tmp_path / "d.txt").write_text(shakespeare[:3000])
    for name, batch, seed in (("a", "8", "0"), ("b", "8", "0"), ("c", "1", "0"), ("d", "3", "5")):
        assert cli("eval", gpt2_ckpt, "--data", tmp_path / "d.txt", "--rolling-context", "16", "--batch-size", batch,
                   "--seed", seed, "-o", tmp_path / name).exit_code == 0
    made = [artifacts.load(tmp_path / name) for name in "abcd"]
    assert len({art.fingerprint for art in made}) == 1 and made[0].manifest.seed is None
    assert len({(tmp_path / name / "metrics.json").read_bytes() for name in "abcd"}) == 1
    assert [art.manifest.runtime["batch_size"] for art in made] == [8, 8, 1, 3]


@pytest.mark.parametrize("arch", ["gpt2", "lstm"])
def test_batch_size_changes_no_bit_of_loglikelihood_scores(cli, gpt2_ckpt, shakespeare, tmp_path, arch):
    """Requests of many lengths (documents shorter and longer than the context, choices of
    several lengths): --batch-size 1, 3 and 8 give one metrics.json, one predictions.jsonl and one
    fingerprint. (Each batch padded to its longest request, a request ran at other widths, and an
    LSTM's one-row batch at another kernel: other last bits.)"""
    ckpt = gpt2_ckpt if arch == "gpt2" else make_checkpoint(
        tmp_path / "lstm", shakespeare[:20_000], arch="lstm", n_layer=1, context_length=CONTEXT)
    sizes = (7, 19, 33, 48, 60, 95, 140, 230, 12, 400, 51, 1300, 75, 26)
    docs = [shakespeare[1_000 * i : 1_000 * i + n] for i, n in enumerate(sizes)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    contexts = [shakespeare[3_000 * i + 20_000 : 3_000 * i + 20_000 + n] for i, n in enumerate((9, 40, 120, 23, 70, 300))]
    choices = [" a", " the king", " what light through yonder window breaks", " speak", " no, my lord, not so", " 12"]
    rows = [{"query": c, "choices": choices[i % 3 :] + choices[: i % 3], "label": i % 4} for i, c in enumerate(contexts)]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, args in (("ppl", ["-m", "perplexity,bpb", "--data", tmp_path / "docs.jsonl"]),
                       ("mc", ["-m", "accuracy,accuracy_norm", "--data", tmp_path / "mc.jsonl"])):
        outs = [tmp_path / f"{name}-{batch}" for batch in ("1", "3", "8")]
        for out in outs:
            result = cli("eval", ckpt, *args, "--batch-size", out.name.split("-")[1], "-o", out)
            assert result.exit_code == 0, result.output
        assert len({artifacts.load(out).fingerprint for out in outs}) == 1, name
        for file in ("metrics.json", "predictions.jsonl"):
            assert len({(out / file).read_bytes() for out in outs}) == 1, (name, file)


def test_multiple_choice_loglikelihood(cli, gpt2_ckpt, loaded, tmp_path):
    from sklearn.metrics import accuracy_score

    from llmkit.eval.choice import continuation, encode_pair

    rows = [
        {"query": "First Citizen: Before we proceed any further, hear me", "choices": [" speak.", " xq zz.", " the king"], "label": 0},
        {"query": "ROMEO: What light through yonder", "choices": [" window breaks", " a", " running fast today"], "label": 0},
        {"query": "To be, or not to be:", "choices": [" that is the question", " no", " 12345"], "label": 2},
        {"query": "KING RICHARD III: Now is the winter of our", "choices": [" discontent", " content", " tent"], "label": 1},
        {"query": "Two and two make", "choices": ["1", "2", "3", "4"], "label": 3},  # choices that are numbers: an index
    ]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("eval", gpt2_ckpt, "-m", "accuracy,accuracy_norm,f1", "--data", tmp_path / "mc.jsonl", "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    tok, model = loaded.tokenizer, loaded.model
    preds, preds_norm = [], []
    with torch.no_grad():
        for r in rows:
            scores = []
            for choice in r["choices"]:
                ctx, cont = encode_pair(tok, r["query"], continuation(r["query"], choice))  # (behind a space)
                seq = [tok.bos_id] + ctx + cont
                logp = F.log_softmax(model(torch.tensor([seq[:-1]]))[0][0].double(), -1)
                scores.append(sum(float(logp[len(ctx) + i, t]) for i, t in enumerate(cont)))
            preds.append(int(np.argmax(scores)))
            preds_norm.append(int(np.argmax([s / len(c) for s, c in zip(scores, r["choices"])])))
    metrics = _metrics(tmp_path / "ev")
    gold = [r["label"] for r in rows]
    assert [r["prediction"] for r in _records(tmp_path / "ev")] == preds
    assert [r["label"] for r in _records(tmp_path / "ev")] == [r["label"] for r in rows]  # (the numbers' row: 3, not "3"'s 2)
    assert metrics["accuracy"] == accuracy_score(gold, preds)
    assert metrics["accuracy_norm"] == accuracy_score(gold, preds_norm)
    # a damaged checkpoint whose outputs are NaN: each choice "loses" to choice 0 and the accuracy looked plausible
    import shutil

    from safetensors.torch import load_file, save_file

    damaged = tmp_path / "damaged"
    shutil.copytree(gpt2_ckpt, damaged)
    weights = load_file(str(damaged / "model.safetensors"))
    norm = next(name for name in weights if "norm" in name and name.endswith("weight") and not name.startswith("blocks"))
    weights[norm][:] = float("nan")
    save_file(weights, str(damaged / "model.safetensors"), metadata={"format": "pt"})
    resign(damaged)  # (as a diverged run writes them: unsigned, the file is refused as it is read)
    result = cli("eval", damaged, "-m", "accuracy", "--data", tmp_path / "mc.jsonl", "-o", tmp_path / "ev-nan")
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and f"outputs are not finite (NaN or infinity): its weight {norm} holds NaN or inf" in said, said
    assert not (tmp_path / "ev-nan").exists()
    # the checkpoint to blame is named in an ensemble (by path: its members are mixed in fingerprint order), and
    # perplexity's NaN names the weight too (it said the weights "may" hold NaN)
    said = " ".join(cli("eval", gpt2_ckpt, damaged, "-m", "accuracy", "--data", tmp_path / "mc.jsonl", "-o",
                        tmp_path / "ev-nan").output.split())
    assert f"{damaged}'s weight {norm} holds NaN or inf" in said, said
    (tmp_path / "text.txt").write_text("To be, or not to be, that is the question.\n")
    said = " ".join(cli("eval", damaged, "-m", "perplexity", "--data", tmp_path / "text.txt", "-o", tmp_path / "ev-nan").output.split())
    assert f"perplexity came out as nan: the model's outputs are not finite (NaN or infinity): its weight {norm}" in said, said
    weights[norm][:] = 3e38  # finite, and the outputs overflow: the weights are not said to hold NaN
    save_file(weights, str(damaged / "model.safetensors"), metadata={"format": "pt"})
    resign(damaged)
    said = " ".join(cli("eval", damaged, "-m", "accuracy", "--data", tmp_path / "mc.jsonl", "-o", tmp_path / "ev-nan").output.split())
    assert "not finite (NaN or infinity), its weights being finite (the largest 3e+38): they overflow" in said, said
    assert not (tmp_path / "ev-nan").exists()
    # zero-shot labels: the predictions hold names only, yet the scores behind them are NaN
    (tmp_path / "labelled.jsonl").write_text("".join(json.dumps({"text": r["query"], "label": i % 2}) + "\n"
                                                     for i, r in enumerate(rows)))
    result = cli("eval", damaged, "-m", "accuracy", "--labels", "no,yes", "--data", tmp_path / "labelled.jsonl", "-o",
                 tmp_path / "ev-nan")
    assert result.exit_code == 1 and "outputs are not finite" in result.output, result.output


def test_bootstrap_intervals_of_perplexity_and_accuracy_norm_are_sized_as_theory_says(cli, gpt2_ckpt, shakespeare, tmp_path):
    """--bootstrap gives perplexity, word_perplexity, byte_perplexity and bpb (the scored windows resampled) and multiple choice's
    accuracy_norm their intervals too: within 15% of the delta method's (perplexity: a ratio of sums) and of
    1.96·√(p(1−p)/n) on 400 one-window documents and 300 questions."""
    import math

    lines = [line for line in shakespeare[100_000:].splitlines() if len(line.split()) >= 6][:400]
    (tmp_path / "lines.jsonl").write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    result = cli("eval", gpt2_ckpt, "--data", tmp_path / "lines.jsonl", "--bootstrap", "1000", "-o", tmp_path / "ppl")
    assert result.exit_code == 0, result.output
    metrics, documents = _metrics(tmp_path / "ppl"), _records(tmp_path / "ppl")
    assert len(documents) == 400 and all(d["tokens"] < CONTEXT for d in documents)  # one window each
    nll, tokens, n_bytes, words = (np.array([d[key] for d in documents], dtype=float) for key in ("nll", "tokens", "bytes", "words"))
    theory = {}
    for name, units in (("perplexity_ci95", tokens), ("word_perplexity_ci95", words)):  # exp(a ratio of sums)
        rate = nll.sum() / units.sum()
        theory[name] = 1.96 * math.exp(rate) * math.sqrt(((nll - rate * units) ** 2).sum()) / units.sum()
    bpb = nll.sum() / (n_bytes.sum() * math.log(2))
    theory["bpb_ci95"] = 1.96 * math.sqrt(((nll / math.log(2) - bpb * n_bytes) ** 2).sum()) / n_bytes.sum()
    for name, expected in theory.items():
        assert abs(metrics[name] - expected) < 0.15 * expected, (name, metrics[name], expected)
    assert metrics["byte_perplexity_ci95"] > 0
    for name in ("perplexity", "word_perplexity", "byte_perplexity"):  # exp of a mean: the interval itself, not centred
        low, high = metrics[f"{name}_ci95_low"], metrics[f"{name}_ci95_high"]
        assert low < metrics[name] < high and high - low == pytest.approx(2 * metrics[f"{name}_ci95"])
        assert high - metrics[name] > metrics[name] - low, name  # (skewed up: score ± half-width misplaced both ends)
    # one window: no interval, said (every resample would be that window: 0 would look exact)
    (tmp_path / "short.txt").write_text(lines[0])
    result = cli("eval", gpt2_ckpt, "--data", tmp_path / "short.txt", "--bootstrap", "100", "-o", tmp_path / "short")
    assert result.exit_code == 0 and "no interval for perplexity" in " ".join(result.output.split()), result.output
    assert not any(name.endswith("_ci95") for name in _metrics(tmp_path / "short"))
    # ... and the same artifact as without --bootstrap (a review: recorded, another fingerprint for the same scores)
    assert cli("eval", gpt2_ckpt, "--data", tmp_path / "short.txt", "-o", tmp_path / "plain").exit_code == 0
    assert artifacts.load(tmp_path / "short").fingerprint == artifacts.load(tmp_path / "plain").fingerprint
    # one long text: its windows are resampled
    (tmp_path / "book.txt").write_text(shakespeare[100_000:130_000])
    result = cli("eval", gpt2_ckpt, "--data", tmp_path / "book.txt", "--bootstrap", "200", "-o", tmp_path / "book")
    book = _metrics(tmp_path / "book")
    assert result.exit_code == 0 and 0 < book["perplexity_ci95"] < 0.2 * book["perplexity"]
    assert 0 < book["word_perplexity_ci95"] < 0.2 * book["word_perplexity"]  # (a window's words: its share of the book's)
    # multiple choice: a line's end against another line's
    rows = []
    for i in range(300):
        words, other = lines[i].split(), lines[(i + 7) % 400].split()
        half = len(words) // 2
        choices = [" ".join(words[half:]), " ".join(other[len(other) // 2 :])]
        rows.append({"query": " ".join(words[:half]), "choices": choices[:: 1 if i % 2 else -1], "label": 0 if i % 2 else 1})
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("eval", gpt2_ckpt, "-m", "accuracy", "--data", tmp_path / "mc.jsonl", "--bootstrap", "1000", "-o", tmp_path / "mc")
    assert result.exit_code == 0, result.output
    metrics = _metrics(tmp_path / "mc")
    p = metrics["accuracy_norm"]
    expected = 1.96 * math.sqrt(p * (1 - p) / 300)
    assert 0.2 < p < 0.9 and abs(metrics["accuracy_norm_ci95"] - expected) < 0.15 * expected, (metrics, expected)


def test_the_bootstrap_of_many_long_documents_resamples_documents(cli, gpt2_ckpt, shakespeare, tmp_path):
    """A document's windows share its style and topic: resampled as if apart, the intervals of DialogSum's
    dialogues (~5 windows each) came out 28% narrow (a review). From 30 documents on the documents are
    resampled: the interval is a numpy bootstrap of the per-document records, sacrebleu's seed and ends."""
    from llmkit.eval.metrics._refs import BOOTSTRAP_SEED

    paragraphs = [p for p in shakespeare[60_000:].split("\n\n") if len(p) > 400][:36]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs))
    result = cli("eval", gpt2_ckpt, "--data", tmp_path / "docs.jsonl", "--bootstrap", "400", "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    documents = _records(tmp_path / "ev")
    assert len(documents) == 36 and sum(d["tokens"] > CONTEXT for d in documents) >= 30  # several windows each
    nll, tokens, n_bytes = (np.array([d[key] for d in documents], dtype=float) for key in ("nll", "tokens", "bytes"))
    draws = np.random.default_rng(BOOTSTRAP_SEED).choice(len(documents), size=(400, len(documents)), replace=True)
    for name, samples in (("perplexity", np.exp(nll[draws].sum(1) / tokens[draws].sum(1))),
                          ("bpb", nll[draws].sum(1) / (n_bytes[draws].sum(1) * math.log(2)))):
        ordered = np.sort(samples)
        low, high = ordered[len(ordered) // 40], ordered[len(ordered) - len(ordered) // 40 - 1]
        assert _metrics(tmp_path / "ev")[f"{name}_ci95"] == pytest.approx(0.5 * (high - low), rel=1e-9), name


def test_a_label_is_scored_after_the_text_the_model_reads(loaded, shared_data):
    """The default label template ends the text in "\n": "." then "\n" alone, but ".\n" one token once
    a label follows. lm-eval's split scored the label right after the "." (the "\n" in neither
    part); the tokens from where the encodings part are scored, and the pair is the whole text."""
    from llmkit.eval.choice import encode_pair

    tok = loaded.tokenizer
    rows = [json.loads(line) for line in (shared_data / "sentiment" / "test.jsonl").read_text().splitlines()[:40]]
    parted = 0
    for row in rows:
        context, label = row["text"] + "\n", "negative"
        ids, continuation = encode_pair(tok, context, label, as_read=True)
        assert ids + continuation == tok.encode(context + label)
        parted += ids != tok.encode(context)
        # multiple choice keeps lm-eval's split: acc_norm divides each choice's sum by its length (a review: a term
        # common to every choice changed 15 of 40 acc_norm picks)
        bare = tok.encode(row["text"])  # (lm-eval's: the context's trailing "\n" moved to the continuation)
        assert encode_pair(tok, context, label) == (bare, tok.encode(context + label)[len(bare):])
    assert parted > 0  # (the case arises in this data with this tokenizer)


def test_label_likelihood_classification_on_sentiment(cli, gpt2_ckpt, shared_data, tmp_path):
    from sklearn.metrics import accuracy_score, f1_score

    result = cli(
        "eval", gpt2_ckpt, "-m", "accuracy", "-m", "f1", "--data", shared_data / "sentiment" / "test.jsonl",
        "--labels", "negative,positive", "--limit", "24", "-o", tmp_path / "ev",
    )
    assert result.exit_code == 0, result.output
    records = _records(tmp_path / "ev")
    assert len(records) == 24 and {r["method"] for r in records} == {"label likelihood"}
    gold, pred = [r["label"] for r in records], [r["prediction"] for r in records]
    metrics = _metrics(tmp_path / "ev")
    assert metrics["accuracy"] == accuracy_score(gold, pred)
    assert metrics["f1"] == pytest.approx(f1_score(gold, pred, average="macro", labels=sorted(set(gold) | set(pred)), zero_division=0))
    # each label name's log-likelihood behind the prediction, as docs/eval.md says the records hold
    assert all(len(r["logliks"]) == 2 and ["negative", "positive"][int(np.argmax(r["logliks"]))] == r["prediction"]
               for r in records)
    # conversations scored for perplexity: the errors sent one round (no text field; --field messages is no text)
    (tmp_path / "chat.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    for extra in ([], ["--field", "messages"]):
        chat = cli("eval", gpt2_ckpt, "-m", "perplexity", "--data", tmp_path / "chat.jsonl", *extra, "-o", tmp_path / "c")
        said = " ".join(chat.output.split())
        assert chat.exit_code == 1 and "holds conversations ('messages'), which a chat fine-tune's perplexity scores" in said, said
    # choices in a later record but not the first: they were ignored (the first record decided the kind)
    (tmp_path / "mixed.jsonl").write_text('{"text": "hello", "label": 0}\n{"text": "bye", "label": 1, "choices": ["a", "b"]}\n')
    mixed = cli("eval", gpt2_ckpt, "-m", "accuracy", "--data", tmp_path / "mixed.jsonl", "--labels", "a,b", "-o", tmp_path / "m")
    said = " ".join(mixed.output.split())
    assert mixed.exit_code == 1 and "mixed.jsonl:2 has 'choices' and" in said and "mixed.jsonl:1 has none" in said, said
    missing = cli("eval", gpt2_ckpt, "-m", "accuracy", "--data", shared_data / "sentiment" / "test.jsonl", "-o", tmp_path / "x")
    assert missing.exit_code != 0 and "needs label names" in missing.output
    # a base model's labels read through a prompt template: it is used (and changes the scores)
    templated = cli("eval", gpt2_ckpt, "-m", "accuracy", "--data", shared_data / "sentiment" / "test.jsonl", "--labels",
                    "negative,positive", "--limit", "8", "--prompt-template", "Review: {text}\nSentiment:", "-o", tmp_path / "t")
    assert templated.exit_code == 0, templated.output
    assert len(_records(tmp_path / "t")) == 8
    assert artifacts.load(tmp_path / "t").config["prompt_template"] == "Review: {text}\nSentiment:"


def _short_rows(path: Path, tmp_path: Path, count: int, tokenizer, template: str, new_tokens: int) -> Path:
    """The `count` shortest records whose prompt fits the context beside `new_tokens` (longer ones
    would be cut to fit, which test_bad_input covers), as a JSONL file."""
    rows = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda r: len(r["source"]))[:count]
    assert all(1 + len(tokenizer.encode(template.format(**r))) <= CONTEXT - new_tokens for r in rows)
    out = tmp_path / f"short-{path.name}"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_generated_bleu_and_rouge(cli, gpt2_ckpt, loaded, shared_data, tmp_path):
    from llmkit.inference.engine import GenerationParams, Generator

    data = _short_rows(shared_data / "translation" / "test.jsonl", tmp_path, 6, loaded.tokenizer, "German: {source}\nEnglish:", 12)
    result = cli(
        "eval", gpt2_ckpt, "-m", "bleu,chrf,rouge", "--data", data, "--limit", "6", "--max-new-tokens", "12",
        "--prompt-template", "German: {source}\nEnglish:", "-o", tmp_path / "ev",
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(l) for l in data.read_text().splitlines()[:6]]
    prompts = [f"German: {r['source']}\nEnglish:" for r in rows]
    generated = Generator(loaded.model, loaded.tokenizer).complete(prompts, GenerationParams(max_new_tokens=12, stop=["\n"]))
    predictions = [g.text.strip() for g in generated]
    records = _records(tmp_path / "ev")
    assert [r["prediction"] for r in records] == predictions and records[0]["prompt"] == prompts[0]
    metrics = _metrics(tmp_path / "ev")
    assert metrics["bleu"] == sacrebleu.corpus_bleu(predictions, [[r["target"] for r in rows]]).score
    assert metrics["chrf"] == sacrebleu.corpus_chrf(predictions, [[r["target"] for r in rows]]).score
    assert {"rouge1", "rouge2", "rougeL", "rougeLsum"} <= set(metrics)
    # --compile: the same predictions from the compiled decode step, and the same artifact
    result = cli(
        "eval", gpt2_ckpt, "-m", "bleu,chrf,rouge", "--data", data, "--limit", "6", "--max-new-tokens", "12",
        "--prompt-template", "German: {source}\nEnglish:", "-o", tmp_path / "ev-compiled", "--compile",
    )
    assert result.exit_code == 0, result.output
    assert [r["prediction"] for r in _records(tmp_path / "ev-compiled")] == predictions
    assert artifacts.load(tmp_path / "ev-compiled").fingerprint == artifacts.load(tmp_path / "ev").fingerprint
    # wording that cannot fit beside --max-new-tokens even without its input: refused (the engine cut the instruction off)
    wordy = "Translate this German sentence into fluent English please. " * 20 + "German: {source}\nEnglish:"
    result = cli("eval", gpt2_ckpt, "-m", "bleu", "--data", data, "--limit", "2", "--max-new-tokens", "12",
                 "--prompt-template", wordy, "-o", tmp_path / "wordy")
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and "even with its 'source' cut, the prompt does not fit" in lines[0], result.output
    assert not (tmp_path / "wordy").exists()
    # --max-new-tokens past the context: the refusal gives a value to type (the flag may be its default, untyped)
    result = cli("eval", gpt2_ckpt, "-m", "bleu", "--data", data, "--limit", "2", "--max-new-tokens", "100000",
                 "--prompt-template", "German: {source}\nEnglish:", "-o", tmp_path / "roomless")
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and f"is as long as the model's context ({CONTEXT} tokens) or longer: each prediction would " \
        f"slide past its whole prompt; give a lower one, such as --max-new-tokens {CONTEXT // 4}" in said, said
    # --stop '' is none (the end token ends a prediction); a reference holding the stop string is counted in a note
    multiline = tmp_path / "multiline.jsonl"
    multiline.write_text("".join(json.dumps({"source": r["source"], "target": r["target"] + "\nSecond line."}) + "\n" for r in rows))
    noted = cli("eval", gpt2_ckpt, "-m", "bleu", "--data", multiline, "--max-new-tokens", "12",
                "--prompt-template", "German: {source}\nEnglish:", "-o", tmp_path / "multiline")
    assert noted.exit_code == 0 and "note: 6 of 6 references hold the stop string '\\n' (--stop)" in noted.output, noted.output
    unstopped = cli("eval", gpt2_ckpt, "-m", "bleu", "--data", data, "--limit", "2", "--max-new-tokens", "12", "--stop", "",
                    "--prompt-template", "German: {source}\nEnglish:", "-o", tmp_path / "unstopped")
    assert unstopped.exit_code == 0 and artifacts.load(tmp_path / "unstopped").config["stop"] == [], unstopped.output
    free = Generator(loaded.model, loaded.tokenizer).complete(prompts[:2], GenerationParams(max_new_tokens=12))
    assert [r["prediction"] for r in _records(tmp_path / "unstopped")] == [g.text.strip() for g in free]
    # a template names its input: records of other field names (flat, or nested as the hub's) need no --field
    # (it was "cannot find the model input (source/document) in the data; pass --field NAME")
    flat, nested = tmp_path / "flat.jsonl", tmp_path / "nested.jsonl"
    flat.write_text("".join(json.dumps({"id": i, "de": r["source"], "en": r["target"]}) + "\n" for i, r in enumerate(rows)))
    nested.write_text("".join(json.dumps({"translation": {"de": r["source"], "en": r["target"]}}) + "\n" for r in rows))
    for name, data, template, reference in (("flat", flat, "German: {de}\nEnglish:", "en"),
                                            ("numbered", flat, "{id}German: {de}\nEnglish:", "en"),
                                            ("nested", nested, "German: {translation.de}\nEnglish:", "translation.en")):
        result = cli("eval", gpt2_ckpt, "-m", "bleu", "--data", data, "--max-new-tokens", "12", "--prompt-template", template,
                     "--reference-field", reference, "-o", tmp_path / name)
        assert result.exit_code == 0, (name, result.output)
        if name == "numbered":  # (a number first in the template is no input: it was "field 'id' is a number")
            assert _records(tmp_path / name)[1]["prompt"] == f"1German: {rows[1]['source']}\nEnglish:"
        else:
            assert [r["prediction"] for r in _records(tmp_path / name)] == predictions, name


def test_nested_fields_are_reached_by_dotted_names(cli, gpt2_ckpt, loaded, shared_data, tmp_path):
    """Hub translation sets nest each pair (`{"translation": {"de": ..., "en": ...}}`): `--field translation.de
    --reference-field translation.en` scores the same predictions as the flattened records; a field name that
    is no placeholder name gets the default prompt too (it was refused as a bad --prompt-template, never given)."""
    flat = _short_rows(shared_data / "translation" / "test.jsonl", tmp_path, 4, loaded.tokenizer, "{source}\n", 12)
    rows = [json.loads(line) for line in flat.read_text().splitlines()]
    nested = tmp_path / "nested.jsonl"
    nested.write_text("".join(json.dumps({"translation": {"de": r["source"], "en": r["target"]}}) + "\n" for r in rows))
    hyphen = tmp_path / "hyphen.jsonl"
    hyphen.write_text("".join(json.dumps({"de-text": r["source"], "en-text": r["target"]}) + "\n" for r in rows))
    beside = tmp_path / "beside.jsonl"  # a record's own "input" is not what --field names (the default prompt's {input})
    beside.write_text("".join(json.dumps({"input": "other text", "translation": {"de": r["source"], "en": r["target"]}}) + "\n"
                              for r in rows))
    runs = {"flat": (flat, []), "nested": (nested, ["--field", "translation.de", "--reference-field", "translation.en"]),
            "hyphen": (hyphen, ["--field", "de-text", "--reference-field", "en-text"]),
            "beside": (beside, ["--field", "translation.de", "--reference-field", "translation.en"]),
            # {input} typed is the dotted input field too, not the record's own "input" (as for a hyphenated name)
            "typed": (beside, ["--field", "translation.de", "--reference-field", "translation.en", "--prompt-template", "{input}\n"])}
    for name, (data, flags) in runs.items():
        result = cli("eval", gpt2_ckpt, "-m", "bleu,chrf", "--data", data, "--max-new-tokens", "12", *flags, "-o", tmp_path / name)
        assert result.exit_code == 0, result.output
    expected = _records(tmp_path / "flat")
    assert [r["prompt"] for r in expected] == [r["source"] + "\n" for r in rows]
    for name in ("nested", "hyphen", "beside", "typed"):
        assert _records(tmp_path / name) == expected and _metrics(tmp_path / name) == _metrics(tmp_path / "flat")
    # labelled texts: the label-likelihood prompt of a nested or hyphenated field (refused as a bad template before)
    labelled = {"nested": {"meta": {"sentence": "a fine day"}, "gold": {"y": 1}}, "hyphen": {"the-text": "a fine day", "y": 1}}
    scores = []
    for name, record in labelled.items():
        (tmp_path / f"{name}-labels.jsonl").write_text(json.dumps(record) + "\n" + json.dumps(record) + "\n")
        field, label = ("meta.sentence", "gold.y") if name == "nested" else ("the-text", "y")
        result = cli("eval", gpt2_ckpt, "-m", "accuracy", "--labels", "no,yes", "--data", tmp_path / f"{name}-labels.jsonl",
                     "--field", field, "--label-field", label, "-o", tmp_path / f"{name}-labels")
        assert result.exit_code == 0, result.output
        scores.append([r["logliks"] for r in _records(tmp_path / f"{name}-labels")])
    assert scores[0] == scores[1]
    # a field of that very name in some record is the field (never overwritten by a nested value)
    from llmkit.eval.textio import pick_field

    records = [{"a": {"b": "nested"}, "a.b": "own"}, {"a": {"b": "nested too"}, "a.b": "own too"}]
    assert pick_field(records, "a.b", (), "text", "--field") == "a.b" and [r["a.b"] for r in records] == ["own", "own too"]
    # a path that leads nowhere names the record's fields
    result = cli("eval", gpt2_ckpt, "-m", "bleu", "--data", nested, "--field", "translation.fr", "--reference-field",
                 "translation.en", "-o", tmp_path / "nowhere")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "no field 'translation.fr'" in lines[0], result.output
    # predictions scored without a model reach into their records the same way
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"out": {"text": r["prediction"]}, "ref": {"en": row["target"]}}) + "\n"
                                   for r, row in zip(expected, rows)))
    result = cli("eval", "--predictions", predictions, "--references", predictions, "--field", "out.text",
                 "--reference-field", "ref.en", "-m", "bleu,chrf", "-o", tmp_path / "scored")
    assert result.exit_code == 0, result.output
    assert {k: v for k, v in _metrics(tmp_path / "scored").items() if k in ("bleu", "chrf")} == \
        {k: v for k, v in _metrics(tmp_path / "flat").items() if k in ("bleu", "chrf")}


def test_a_prompt_is_cut_only_past_what_generation_attends_to(loaded):
    """The last new token is never fed back, so a prompt of context - new + 1 tokens fits whole,
    as `llmkit generate` keeps it; one token more is cut."""
    from llmkit.eval.model_tasks import _fit_prompts
    from llmkit.inference.engine import needs_window

    template = "German: {source}\nEnglish:"
    record = {"source": "Ein Mann geht mit seinem Hund durch den Park und ruft laut nach ihm."}
    length = 1 + len(loaded.tokenizer.encode(template.format(**record)))
    new = CONTEXT - length + 1
    assert not needs_window(length, new, CONTEXT) and needs_window(length, new + 1, CONTEXT)
    assert _fit_prompts([record], template, "source", loaded, False, new)[0] is record
    (cut,) = _fit_prompts([record], template, "source", loaded, False, new + 1)
    assert cut is not record and record["source"].startswith(cut["source"])


def test_a_prompt_of_several_fields_loses_the_end_of_its_longest_as_training_cut_it(loaded):
    """An Alpaca-style prompt: the long input gives way, the instruction stays whole (as finetune
    --truncate cuts), where the first field alone was cut before and the record then refused."""
    from llmkit.eval.model_tasks import _fit_prompts

    template = "Instruction: {instruction}\nInput: {input}\nAnswer:"
    record = {"instruction": "Say what the text is about.", "input": "Ein Mann geht mit seinem Hund durch den Park. " * 6}
    wording = 1 + len(loaded.tokenizer.encode(template.format(instruction=record["instruction"], input="")))
    new = CONTEXT - (wording + 8) + 1  # room for the instruction and 8 tokens of the input
    (cut,) = _fit_prompts([record], template, "instruction", loaded, False, new)
    assert cut["instruction"] == record["instruction"] and record["input"].startswith(cut["input"])
    assert 0 < len(cut["input"]) < len(record["input"])


def test_a_cut_input_never_ends_inside_a_character(loaded):
    """A byte-level cut may fall inside a character; its decoding ends in U+FFFD, which the model
    would then read. The cut goes before that character instead, at every budget."""
    from llmkit.data.templates import fit_field

    tokenizer = loaded.tokenizer
    record = {"source": "满纸荒唐言，一把辛酸泪！都云作者痴，谁解其中味？" * 3}
    encode = lambda r: tokenizer.encode("Translate: " + r["source"])  # noqa: E731
    full = len(encode(record))
    endings = set()
    for budget in range(len(encode({"source": ""})), full):
        cut = fit_field(encode, record, "source", tokenizer, budget)["source"]
        assert "\ufffd" not in cut and record["source"].startswith(cut) and len(encode({"source": cut})) <= budget
        endings.add(len(cut))
    assert len(endings) > 10  # cuts at many places, each whole characters


def test_lstm_checkpoint_perplexity(cli, tmp_path, shakespeare):
    ckpt = make_checkpoint(tmp_path / "lstm", shakespeare[:20_000], arch="lstm", n_layer=1, context_length=32)
    (tmp_path / "d.txt").write_text(shakespeare[50_000:51_000])
    result = cli("eval", ckpt, "-m", "perplexity", "--data", tmp_path / "d.txt", "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    metrics = _metrics(tmp_path / "ev")
    assert 1 < metrics["perplexity"] < 10_000 and metrics["bpb"] > 0
    # the same text with Windows line ends scores the same: read as clean reads it (the \r were scored, bpb +1.2%)
    (tmp_path / "crlf.txt").write_bytes(shakespeare[50_000:51_000].replace("\n", "\r\n").encode())
    assert cli("eval", ckpt, "-m", "perplexity", "--data", tmp_path / "crlf.txt", "-o", tmp_path / "ev-crlf").exit_code == 0
    assert _metrics(tmp_path / "ev-crlf") == metrics


def test_a_wrong_product_switch_is_a_one_line_error_that_writes_nothing(cli, gpt2_ckpt, tmp_path, product_switch):
    """A typo in LLMKIT_CPU_GEMM (llmkit/model/cpu_gemm.py) would otherwise keep the default silently."""
    (tmp_path / "d.txt").write_text("some text here\n")
    product_switch("mlk")
    result = cli("eval", gpt2_ckpt, "-m", "perplexity", "--data", tmp_path / "d.txt", "-o", tmp_path / "ev")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "LLMKIT_CPU_GEMM='mlk' is not one of auto, onednn, mkl" in lines[0], result.output
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["-m", "perplexity"], "perplexity on a checkpoint needs --data"),
        (["-m", "bleu", "--data", "{tmp}/d.txt"], "cannot find the references"),
        (["-m", "perplexity", "--data", "{tmp}/nothing.jsonl"], "no such file"),
        (["-m", "bleu", "--data", "{tmp}/d.txt", "-r", "{tmp}/d.txt"], "--references goes with --predictions"),
        (["-m", "perplexity", "--data", "{tmp}/d.txt", "--rolling-context", "1000"], "exceeds the model's context length 64; give 64 or less"),
        (["-m", "perplexity", "--data", "{tmp}/d.txt", "--labels", "a,b"], "--labels would change nothing here"),
        (["-m", "perplexity", "--data", "{tmp}/d.txt", "--stemmer", "--prompt-template", "Q:"],
         "--prompt-template, --stemmer would change nothing here"),
        (["-m", "perplexity", "--data", "{tmp}/d.txt", "--weights", "2"], "--weights would change nothing here"),
        (["-m", "perplexity", "--data", "{tmp}/d.txt", "--split", "test"], "--split would change nothing here"),
        (["-m", "perplexity", "--data", "{tmp}/d.txt", "--reference-field", "x"], "--reference-field would change nothing"),
        (["-m", "perplexity", "--data", "{tmp}/tokens", "--field", "text"], "--field would change nothing here"),
        (["-m", "perplexity", "--data", "{tmp}/d.txt", "--compile"], "--compile would change nothing here"),
    ],
)
def test_eval_checkpoint_bad_inputs(cli, gpt2_ckpt, tmp_path, args, message):
    from llmkit import artifacts

    (tmp_path / "d.txt").write_text("some text here\n")
    with artifacts.create(tmp_path / "tokens", "tokens") as build:  # an artifact as --data: tokens, no fields
        (build.dir / "a.bin").write_bytes(b"")
    result = cli("eval", gpt2_ckpt, *[a.format(tmp=tmp_path) for a in args], "-o", tmp_path / "out")
    # bad option values and a command line missing what it needs: 2
    usage = "would change nothing" in message or "goes with" in message or "or less" in message or "needs --data" in message
    assert result.exit_code == (2 if usage else 1), result.output
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_a_classifiers_logits_keep_their_bits_whatever_the_batch_size(shakespeare, shared_data, tmp_path, monkeypatch, arch):
    """--batch-size changes no bit (its help says so): each text runs at a width of its own and the
    head at one row count, an LSTM at 16 sequences or more a forward. Padded to its batch's longest
    text, and with the head's product at the batch's rows, 20-60 of 64 texts' logits differed in the
    last bits between batch 1 and 3 or 8; an LSTM's one sequence alone, 41 of 48."""
    from types import SimpleNamespace

    from llmkit.eval.model_tasks import _classifier_predictions
    from llmkit.model.classifier import SequenceClassifier
    from llmkit.model.io import load_checkpoint

    shape = {"arch": "lstm", "n_layer": 1} if arch == "lstm" else {}
    loaded = load_checkpoint(make_checkpoint(tmp_path / "base", shakespeare[:20_000], **shape))
    torch.manual_seed(1)
    classifier = SequenceClassifier(loaded.model, 2).eval()
    with torch.no_grad():
        classifier.classifier.weight.normal_(std=2.0)
    texts = [json.loads(line)["text"] for line in (shared_data / "sentiment" / "test.jsonl").read_text().splitlines()[:48]]
    seen: dict[int, dict[tuple, torch.Tensor]] = {}
    real = classifier.classify

    def logits_of(batch_size):
        seen[batch_size] = {}

        def classify(idx, attention_mask=None):
            logits = real(idx, attention_mask=attention_mask)
            for row, ids, mask in zip(logits, idx, attention_mask):
                if int(mask.sum()) == 1:
                    continue  # (an LSTM's filler row)
                seen[batch_size][tuple(ids[: int(mask.sum())].tolist())] = row.clone()
            return logits

        monkeypatch.setattr(classifier, "classify", classify)
        return _classifier_predictions(SimpleNamespace(**{**vars(loaded), "model": classifier}), texts, batch_size)

    predictions = {b: logits_of(b) for b in (1, 3, 8, 48)}
    assert len(seen[1]) == len(set(texts)) and {len(v) for v in seen.values()} == {len(seen[1])}
    for batch_size in (3, 8, 48):
        assert predictions[batch_size] == predictions[1]
        assert all(torch.equal(seen[batch_size][key], row) for key, row in seen[1].items()), batch_size


def test_classification_checkpoint_accuracy_f1(cli, shakespeare, shared_data, tmp_path):
    from llmkit.model import classifier as heads
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    from llmkit.data.tokenizer import load_tokenizer

    base = make_checkpoint(tmp_path / "base", shakespeare[:20_000])
    tok = load_tokenizer(base / "tokenizer")
    from llmkit.model.io import load_checkpoint

    lm = load_checkpoint(base).model
    torch.manual_seed(1)
    classifier = heads.SequenceClassifier(lm, 2).eval()
    with torch.no_grad():
        classifier.classifier.weight.normal_(std=2.0)  # a head with an opinion, so both classes occur
    ckpt = save_classifier_checkpoint(classifier, base, tmp_path / "cls")
    data = shared_data / "sentiment" / "test.jsonl"
    result = cli("eval", ckpt, "-m", "accuracy,precision,recall,f1", "--data", data, "--limit", "40", "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    rows = [json.loads(l) for l in data.read_text().splitlines()[:40]]
    with torch.no_grad():
        expected = [
            ["negative", "positive"][int(classifier.classify(torch.tensor([([tok.bos_id] + tok.encode(r["text"]))[:CONTEXT]])).argmax())]
            for r in rows
        ]
    records = _records(tmp_path / "ev")
    assert [r["prediction"] for r in records] == expected and {r["method"] for r in records} == {"classifier"}
    gold = [["negative", "positive"][r["label"]] for r in rows]
    metrics = _metrics(tmp_path / "ev")
    assert metrics["accuracy"] == accuracy_score(gold, expected)
    p, r, f, _ = precision_recall_fscore_support(gold, expected, average="macro", zero_division=0)
    assert (metrics["precision"], metrics["recall"], metrics["f1"]) == pytest.approx((p, r, f))
    assert "f1_positive" in metrics and "f1_negative" in metrics
    # 12 classes named by their ids (integer labels): eval's macro F1 is the fine-tune's val_f1 to the bit, the classes
    # taken in id order (names sorted as text put "10" before "2", and the mean's last bit moved)
    from llmkit.finetune.stage import confusion_scores

    torch.manual_seed(2)
    many = heads.SequenceClassifier(lm, 12).eval()
    with torch.no_grad():
        many.classifier.weight.normal_(std=3.0)
    ckpt12 = save_classifier_checkpoint(many, base, tmp_path / "cls12", labels=[str(i) for i in range(12)])
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines()[:300]]
    labelled = tmp_path / "twelve.jsonl"
    labelled.write_text("".join(json.dumps({"text": t, "label": (7 * i) % 12}) + "\n" for i, t in enumerate(texts)))
    assert cli("eval", ckpt12, "-m", "f1", "--data", labelled, "-o", tmp_path / "ev12").exit_code == 0
    confusion = torch.zeros(12, 12)
    for record in _records(tmp_path / "ev12"):
        confusion[int(record["label"]), int(record["prediction"])] += 1
    assert _metrics(tmp_path / "ev12")["f1"] == confusion_scores(confusion)["val_f1"]
    # and from its predictions file (names "0".."11" sorted as the numbers they are): the same figure, keys in one order
    scored = tmp_path / "ev12" / "predictions.jsonl"
    again = cli("eval", "--predictions", scored, "--references", scored, "--field", "prediction", "--reference-field", "label",
                "-m", "f1", "-o", tmp_path / "ev12-file")
    assert again.exit_code == 0, again.output
    assert list(_metrics(tmp_path / "ev12-file").items()) == list(_metrics(tmp_path / "ev12").items())
    # records with a `document` and a `sentence`: the classifier reads the sentence, as its fine-tune does (it read
    # the document, the first of eval's own text fields)
    both = tmp_path / "both.jsonl"
    both.write_text("".join(json.dumps({"document": "nothing like it", "sentence": r["text"], "label": r["label"]}) + "\n"
                            for r in rows))
    assert cli("eval", ckpt, "-m", "accuracy", "--data", both, "-o", tmp_path / "ev-both").exit_code == 0
    assert [r["prediction"] for r in _records(tmp_path / "ev-both")] == expected and len(set(expected)) == 2
    wrong = cli("eval", ckpt, "-m", "perplexity", "--data", data, "-o", tmp_path / "x")
    assert wrong.exit_code != 0 and "classification checkpoint" in wrong.output
    gen = cli("generate", ckpt, "-p", "hello")
    assert gen.exit_code != 0 and "classification checkpoint" in gen.output
    # multiple-choice records need a language-model head; accuracy_norm needs multiple choice (it was left out silently)
    (tmp_path / "mc.jsonl").write_text(json.dumps({"question": "Sky?", "choices": ["blue", "green"], "label": 0}) + "\n")
    for args, said in ((["-m", "accuracy", "--data", tmp_path / "mc.jsonl"], "evaluate its base checkpoint, or give labelled"),
                       (["-m", "accuracy_norm", "--data", data], "accuracy_norm scores multiple-choice records")):
        refused = cli("eval", ckpt, *args, "-o", tmp_path / "refused")
        lines = refused.output.strip().splitlines()
        assert refused.exit_code != 0 and len(lines) == 1 and said in lines[0], refused.output
        assert not (tmp_path / "refused").exists()


def test_full_rolling_context_equals_sliding_window_by_hand(cli, gpt2_ckpt, loaded, shakespeare, tmp_path):
    text = shakespeare[500_000:500_400]
    (tmp_path / "d.txt").write_text(text)
    result = cli("eval", gpt2_ckpt, "--data", tmp_path / "d.txt", "--rolling-context", str(CONTEXT), "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    tok = loaded.tokenizer
    ids = tok.encode(text)
    assert len(ids) > CONTEXT + 20
    # every token after the first window sees exactly CONTEXT tokens before it
    nll = 0.0
    with torch.no_grad():
        first = [tok.bos_id] + ids[: CONTEXT - 1]
        logp = F.log_softmax(loaded.model(torch.tensor([first]))[0][0].double(), -1)
        nll -= sum(float(logp[i, ids[i]]) for i in range(CONTEXT))
        for t in range(CONTEXT, len(ids)):
            logits = loaded.model(torch.tensor([ids[t - CONTEXT : t]]))[0][0, -1].double()
            nll -= float(F.log_softmax(logits, -1)[ids[t]])
    assert _metrics(tmp_path / "ev")["perplexity"] == pytest.approx(math.exp(nll / len(ids)), rel=1e-6)


def test_uncached_dataset_name_is_a_one_line_error(cli, gpt2_ckpt, tmp_path):
    result = cli("eval", gpt2_ckpt, "-m", "perplexity", "--data", "no_such_dataset_llmkit:cfg", "-o", tmp_path / "ev")
    assert result.exit_code != 0
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "could not load data set 'no_such_dataset_llmkit'" in lines[0]


def test_generated_predictions_use_the_checkpoint_template(cli, shakespeare, shared_data, tmp_path):
    task = {
        "task": "sft",
        "template": {"type": "text", "prompt": "Translate:\n{source}\nTranslation:", "response": " {target}", "input_field": "source"},
        "prompt_template": "Translate:\n{source}\nTranslation:",
    }
    ckpt = make_checkpoint(tmp_path / "sft", shakespeare[:20_000], task=task)
    from llmkit.model.io import load_checkpoint

    data = _short_rows(shared_data / "translation" / "test.jsonl", tmp_path, 3, load_checkpoint(ckpt).tokenizer,
                       "Translate:\n{source}\nTranslation:", 5)
    result = cli("eval", ckpt, "-m", "bleu", "--data", data, "--limit", "3", "--max-new-tokens", "5", "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    rows = [json.loads(l) for l in data.read_text().splitlines()[:3]]
    prompts = [r["prompt"] for r in _records(tmp_path / "ev")]
    assert prompts == [f"Translate:\n{r['source']}\nTranslation:" for r in rows]
    chat = make_checkpoint(tmp_path / "chat", shakespeare[:20_000], task={"task": "sft", "template": {"type": "chat"}})
    result = cli("eval", chat, "-m", "rouge", "--data", data, "--limit", "2", "--max-new-tokens", "5", "-o", tmp_path / "ev2")
    assert result.exit_code == 0, result.output
    prompts = [r["prompt"] for r in _records(tmp_path / "ev2")]
    assert prompts == [f"<|bos|><|user|>{r['source']}<|assistant|>" for r in rows[:2]]
    # Conversations, as finetune trains on them: the history is the prompt, the last reply the reference.
    talks = tmp_path / "talks.jsonl"
    talks.write_text("".join(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": f"What is {i}+1?"},
                                                     {"role": "assistant", "content": f"It is {i + 1}."}]}) + "\n"
                             for i in range(3)))
    result = cli("eval", chat, "-m", "rouge", "--data", talks, "--max-new-tokens", "4", "-o", tmp_path / "ev3")
    assert result.exit_code == 0, result.output
    scored = _records(tmp_path / "ev3")
    assert [r["prompt"] for r in scored] == [f"<|bos|><|system|>Be brief.<|user|>What is {i}+1?<|assistant|>" for i in range(3)]
    assert [r["references"] for r in scored] == [[f"It is {i + 1}."] for i in range(3)]
    refused = cli("eval", ckpt, "-m", "rouge", "--data", talks, "-o", tmp_path / "ev4")
    assert refused.exit_code != 0 and "only a chat fine-tune reads" in refused.output
    templated = cli("eval", chat, "-m", "rouge", "--data", talks, "--prompt-template", "Q: {prompt}", "-o", tmp_path / "ev6")
    assert templated.exit_code != 0 and "conversations" in templated.output
    # a conversation longer than the context loses its oldest messages (the system message stays), as chat does
    long = tmp_path / "long.jsonl"
    history = [{"role": "user" if j % 2 == 0 else "assistant", "content": f"message {j} " + "word " * 10} for j in range(12)]
    long.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief."}, *history,
                                             {"role": "user", "content": "last?"}, {"role": "assistant", "content": "yes"}]}) + "\n")
    result = cli("eval", chat, "-m", "rouge", "--data", long, "--max-new-tokens", "4", "-o", tmp_path / "ev7")
    assert result.exit_code == 0 and "earlier message(s) were left out" in result.output, result.output
    prompt = _records(tmp_path / "ev7")[0]["prompt"]
    assert prompt.startswith("<|bos|><|system|>Be brief.") and prompt.endswith("<|user|>last?<|assistant|>")
    # a last message too long for the context loses its end, as chat cuts one (eval refused it, lowering -n no help)
    (tmp_path / "longlast.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "word " * 200},
                                                                      {"role": "assistant", "content": "yes"}]}) + "\n")
    result = cli("eval", chat, "-m", "rouge", "--data", tmp_path / "longlast.jsonl", "--max-new-tokens", "4", "-o", tmp_path / "ev8")
    assert result.exit_code == 0 and "kept too long a last message for the context: its end was left out" in \
        " ".join(result.output.split()), result.output
    assert _records(tmp_path / "ev8")[0]["prompt"].startswith("<|bos|><|user|>word word")
    # llmkit's own SFT records: the reference is the response
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"say {i}", "response": f"{i}", **({"system": "Be brief."} if i else {})})
                             + "\n" for i in range(2)))
    result = cli("eval", chat, "-m", "rouge", "--data", pairs, "--max-new-tokens", "3", "-o", tmp_path / "ev5")
    assert result.exit_code == 0 and [r["references"] for r in _records(tmp_path / "ev5")] == [["0"], ["1"]], result.output
    # a record's "system" message is part of the prompt, as finetune trained on it
    assert [r["prompt"] for r in _records(tmp_path / "ev5")] == ["<|bos|><|user|>say 0<|assistant|>",
                                                                 "<|bos|><|system|>Be brief.<|user|>say 1<|assistant|>"]


def test_word_perplexity_left_out_when_text_has_almost_no_whitespace_words():
    import math

    from llmkit.eval.perplexity import PerplexityResult

    # 3,000 tokens of Chinese at 6 nats each, but only 2 whitespace-separated "words".
    result = PerplexityResult(nll=18000.0, tokens=3000, words=2, bytes=9000, documents=1)
    metrics = result.metrics
    assert "word_perplexity" not in metrics
    assert math.isclose(metrics["perplexity"], math.exp(6.0))
    assert math.isclose(metrics["bpb"], 18000.0 / (9000 * math.log(2)))
    spaced = PerplexityResult(nll=300.0, tokens=100, words=60, bytes=400, documents=1).metrics
    assert math.isclose(spaced["word_perplexity"], math.exp(5.0))


def test_word_perplexity_asked_for_and_left_out_is_said(cli, gpt2_ckpt, shared_data, tmp_path):
    text = tmp_path / "zh.txt"
    text.write_text((shared_data / "chinese.txt").read_text(encoding="utf-8")[:1500].replace(" ", "").replace("\n", ""), encoding="utf-8")
    result = cli("eval", gpt2_ckpt, "-m", "word_perplexity", "--data", text, "-o", tmp_path / "zh")
    assert result.exit_code == 0 and "word_perplexity" not in _metrics(tmp_path / "zh"), result.output
    assert "note: word_perplexity left out: 3 whitespace-separated words for 4,392 tokens" in " ".join(result.output.split()), result.output
    (tmp_path / "blank.txt").write_text("   \n\t \n", encoding="utf-8")  # (no word: said so, not "written without spaces")
    result = cli("eval", gpt2_ckpt, "-m", "perplexity,word_perplexity", "--data", tmp_path / "blank.txt", "-o", tmp_path / "blank")
    flat = " ".join(result.output.split())
    assert result.exit_code == 0 and "word_perplexity left out: the text holds no word (only whitespace)" in flat, flat


def test_integer_labels_name_classes_whose_names_are_numbers():
    """--labels 1,2 with records labelled 1 and 2: a 1 was the index of "2" (and 2 out of range). Classes
    are read by the fine-tune's reader (Labels): with --labels, on a classifier's own classes, and where
    some names are numbers and some not (1, 2, neg: 2 is the class "2"), or signed (+1, -1: 1 is "+1"'s
    reading, never the index of "-1")."""
    from llmkit.errors import UserError
    from llmkit.eval.model_tasks import _choice_index
    from llmkit.model.records import Labels

    def read(names, values):
        return [Labels(names=names, original=list(names), called="the classes").index(v, "record 1") for v in values]

    assert read(["1", "2"], (1, 2, "1", "2")) == [0, 1, 0, 1]
    assert read(["1", "0"], (0, 1)) == [1, 0]
    assert read(["neg", "pos"], (0, 1, "pos", "1")) == [0, 1, 1, 1]  # other names: an index
    assert read(["1", "2", "neg"], (1, 2, "1", " 2", "neg")) == [0, 1, 0, 1, 2]
    assert read(["+1", "-1"], (-1, "-1", "+1", " +1")) == [1, 1, 0, 0]
    assert read(["neg", "nan"], (0, 1, "1")) == [0, 1, 1]  # (nan, inf, 1e3 are words here, not numbers)
    # a CSV's ` 1` (a space after the comma; its cells are read as text): the label 1
    assert read(["0", "1"], (" 1", "0 ")) == [1, 0]
    for value, names, message in ((0, ["1", "2"], 'label 0 is not one of the classes "1", "2"'),
                                  (None, ["neg", "pos"], "label null must be an integer or a string"),
                                  (2, ["neg", "pos"], 'label 2 is not one of the classes "neg", "pos"'),
                                  (1, ["+1", "-1"], 'label 1 is not one of the classes "[+]1", "-1"')):
        with pytest.raises(UserError, match=message):
            read(names, [value])
    # a multiple-choice record's label is the right choice's index, whatever the choices say (arithmetic: numbers)
    assert [_choice_index(v, ["1", "2", "3", "4"], "record 1") for v in (1, 3)] == [1, 3]
    # digits as text are an index too (they were read as a choice's text first: "1" was "1"'s index 2); where they are
    # another choice's text as well, the label is refused, not guessed; a choice's text still names it
    assert [_choice_index(v, ["4", "2", "9"], "record 1") for v in ("1", "0", "9")] == [1, 0, 2]
    with pytest.raises(UserError, match="label '1' is the index of choice 2 .'2'. and the text of choice 3"):
        _choice_index("1", ["4", "2", "1"], "record 1")
    with pytest.raises(UserError, match="label null is not a choice's index or text"):
        _choice_index(None, ["a", "b"], "record 1")


def test_multiple_choice_records_need_two_choices_and_repeated_choices_are_said(cli, gpt2_ckpt, tmp_path):
    """One choice is always right (accuracy 1.0 from records that measure nothing): refused. A choice
    given twice ties with its copy and the tie goes to the first, so a label naming the later copy
    always scores wrong: said, with the first such record."""
    rows = [{"query": "Sky?", "choices": ["blue", "green"], "label": 0}, {"query": "Grass?", "choices": ["green"], "label": 0}]
    (tmp_path / "one.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("eval", gpt2_ckpt, "-m", "accuracy", "--data", tmp_path / "one.jsonl", "-o", tmp_path / "ev")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "'choices' holds 1 choice; a multiple-choice record needs two or more" in lines[0]
    assert "one.jsonl" in lines[0] and "2" in lines[0] and not (tmp_path / "ev").exists()
    rows[1]["choices"] = ["green", "blue", "green"]
    (tmp_path / "twice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("eval", gpt2_ckpt, "-m", "accuracy", "--data", tmp_path / "twice.jsonl", "-o", tmp_path / "ev")
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "1 of 2 records give a choice twice" in said and "a tie goes to the first copy" in said, said


def test_bootstrap_of_one_example_gives_no_interval(cli, tmp_path):
    """Every resample of one example is that example: an interval of 0 would look exact (perplexity
    already left its interval out for one window). The scores are written, without *_ci95."""
    (tmp_path / "p.txt").write_text("the cat sat on the mat\n")
    (tmp_path / "r.txt").write_text("the cat sat on a mat\n")
    result = cli("eval", "-m", "bleu,rouge1", "--bootstrap", "100", "--predictions", tmp_path / "p.txt", "-r", tmp_path / "r.txt",
                 "-o", tmp_path / "text")
    assert result.exit_code == 0 and "no intervals: one example was scored" in " ".join(result.output.split()), result.output
    metrics = _metrics(tmp_path / "text")
    assert "bleu" in metrics and "rouge1" in metrics and not [k for k in metrics if k.endswith("_ci95")]
    (tmp_path / "label.txt").write_text("pos\n")
    result = cli("eval", "-m", "accuracy", "--bootstrap", "100", "--predictions", tmp_path / "label.txt", "-r", tmp_path / "label.txt",
                 "-o", tmp_path / "labels")
    assert result.exit_code == 0 and "no intervals" in result.output, result.output
    metrics = _metrics(tmp_path / "labels")
    assert metrics["accuracy"] == 1.0 and not [k for k in metrics if k.endswith("_ci95")]


def test_a_fine_tune_scores_labels_and_choices_in_the_format_it_was_trained_in(cli, shakespeare, tmp_path):
    """A chat fine-tune's labels were scored after bare text (`<bos>text\\n`), a format it never saw; a
    text-template one's labels in its template (refused where the data named its input otherwise)
    and its choices in none: each now in its trained format, checked against a hand computation."""
    from llmkit.data.templates import encode_rendered, message_ids
    from llmkit.model.io import load_checkpoint

    rows = [{"sentence": "a gentle and noble lord", "label": "good"}, {"sentence": "a villain and a traitor", "label": "bad"}]
    (tmp_path / "labelled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "mc.jsonl").write_text(json.dumps({"question": "Who is the king", "choices": ["Richard", "a horse"],
                                                   "label": 0}) + "\n")
    text_task = {"task": "sft", "template": {"type": "text", "prompt": "Say: {text}\nVerdict:", "response": " {verdict}",
                                             "input_field": "text", "target_field": "verdict"}}
    # a fine-tune in an imported model's own chat template: the reply's " " is the template's, learned with the reply
    own = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
           "{% if add_generation_prompt %}assistant:{% endif %}")
    own_task = {"task": "sft", "template": {"name": "chat", "type": "chat", "jinja": own}}
    for name, task in (("chat", {"task": "sft", "template": {"type": "chat"}}), ("text", text_task), ("own", own_task)):
        ckpt = make_checkpoint(tmp_path / name, shakespeare[:20_000], task=task)
        loaded = load_checkpoint(ckpt)
        tok, model = loaded.tokenizer, loaded.model

        def by_hand(text: str, choice: str) -> float:
            if name == "chat":
                context = [tok.bos_id, tok.special_ids["<|user|>"]] + tok.encode_after_special(text) + [tok.special_ids["<|assistant|>"]]
                reply = message_ids(choice, context[-1], tok.eos_id, tok)
            elif name == "own":  # (lm-eval's _encode_pair over the rendered text: the prompt, then " " and the reply)
                from tokenizers import Tokenizer

                raw = Tokenizer.from_file(str(ckpt / "tokenizer" / "tokenizer.json"))
                context = raw.encode(f"user: {text}\nassistant:", add_special_tokens=False).ids
                reply = raw.encode(f"user: {text}\nassistant: {choice}", add_special_tokens=False).ids[len(context):]
            else:
                context = [tok.bos_id] + encode_rendered(f"Say: {text}\nVerdict:", tok)
                reply = tok.encode_continuation(" " + choice)
            seq = context + reply
            with torch.no_grad():
                logp = F.log_softmax(model(torch.tensor([seq[:-1]]))[0][0].double(), -1)
            return sum(float(logp[len(context) - 1 + i, t]) for i, t in enumerate(reply))

        result = cli("eval", ckpt, "-m", "accuracy", "--labels", "good,bad", "--data", tmp_path / "labelled.jsonl",
                     "-o", tmp_path / f"{name}-labels")
        assert result.exit_code == 0, result.output
        for row, scored in zip(rows, _records(tmp_path / f"{name}-labels")):
            assert scored["logliks"] == pytest.approx([by_hand(row["sentence"], label) for label in ("good", "bad")], abs=1e-4)
        result = cli("eval", ckpt, "-m", "accuracy", "--data", tmp_path / "mc.jsonl", "-o", tmp_path / f"{name}-mc")
        assert result.exit_code == 0, result.output
        assert _records(tmp_path / f"{name}-mc")[0]["logliks"] == pytest.approx(
            [by_hand("Who is the king", choice) for choice in ("Richard", "a horse")], abs=1e-4)
    # a text too long for the context loses its end, as finetune --truncate cuts it, not its start token and template
    (tmp_path / "long.jsonl").write_text(json.dumps({"sentence": "a gentle and noble lord " * 60, "label": "good"}) + "\n")
    result = cli("eval", tmp_path / "text", "-m", "accuracy", "--labels", "good,bad", "--data", tmp_path / "long.jsonl",
                 "-o", tmp_path / "long")
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "1 of 1 texts did not fit in the model's context" in said and "their end was left out" in said
    assert "the start of its prompt was left out" not in said, said
    # --prompt-template scores plain text, as a base model's
    plain = cli("eval", ckpt, "-m", "accuracy", "--labels", "good,bad", "--data", tmp_path / "labelled.jsonl",
                "--prompt-template", "{sentence}\n", "-o", tmp_path / "plain")
    assert plain.exit_code == 0 and _records(tmp_path / "plain")[0]["logliks"] != _records(tmp_path / "text-labels")[0]["logliks"]
