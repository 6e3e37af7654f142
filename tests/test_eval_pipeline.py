"""The end of the quickstart chain on real stages: tokens -> pretrain -> generate -> eval."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from llmkit import artifacts

torch.set_num_threads(1)

FAST = ["--model", "tiny", "--n-layer", "2", "--n-embd", "64", "--n-head", "4", "--seq-len", "64",
        "--batch-tokens", "1024", "--micro-batch", "8", "--eval-tokens", "2048", "--log-every", "50"]


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    from llmkit.tokenizer.encode_corpus import TokenizeConfig, tokenize_corpus
    from llmkit.tokenizer.train import TokenizerTrainConfig, train_tokenizer
    from test_pretrain import build_corpus

    from typer.testing import CliRunner

    from llmkit.cli import app

    root = tmp_path_factory.mktemp("pipeline")
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:400_000]
    docs = [p.strip() + "\n" for p in text.split("\n\n") if p.strip()]
    corpus = build_corpus(docs, root / "corpus")
    tokenizer = train_tokenizer([corpus], root / "tokenizer", TokenizerTrainConfig(vocab_size=512))
    tokens = tokenize_corpus(corpus, tokenizer, root / "tokens", TokenizeConfig(val_fraction=0.05, workers=1))
    result = CliRunner().invoke(app, ["pretrain", str(tokens), "-o", str(root / "run"), *FAST, "--max-steps", "150", "--lr", "3e-3"])
    assert result.exit_code == 0, result.output
    return {"tokens": Path(tokens), "run": root / "run", "root": root}


@pytest.mark.slow
def test_generate_and_eval_a_pretrained_checkpoint(cli, trained, tmp_path):
    from llmkit.inference.prompts import document_start_id
    from llmkit.model.io import load_checkpoint

    run, tokens = trained["run"], trained["tokens"]
    loaded = load_checkpoint(run)
    # default shards are `text <|eos|>`: documents start after EOS, and generation/eval follow that
    assert artifacts.load(tokens).stats["add_bos"] is False
    assert document_start_id(loaded.tokenizer, loaded.artifact, loaded.task) == loaded.tokenizer.eos_id

    first = cli("generate", run, "-p", "ROMEO:", "-n", "30", "--seed", "3")
    again = cli("generate", run, "-p", "ROMEO:", "-n", "30", "--seed", "3")
    assert first.exit_code == 0 and first.output == again.output and len(first.output) > len("ROMEO:") + 10

    ev = tmp_path / "ev"
    result = cli("eval", run, "-m", "perplexity", "-m", "bpb", "--data", tokens, "-o", ev)
    assert result.exit_code == 0, result.output
    metrics = json.loads((ev / "metrics.json").read_text())
    # a model trained for 150 steps is far better than uniform over 512 tokens (perplexity 512), and its val loss
    # (pretrain's own, over full windows) is in the same range as the rolling-window perplexity
    assert metrics["perplexity"] < 512 / 2.5
    val_loss = artifacts.load(run).stats["val_loss"]
    assert 0.6 < metrics["perplexity"] / math.exp(val_loss) < 1.6
    assert metrics["bpb"] == pytest.approx(math.log2(metrics["byte_perplexity"]))
    assert "bpb" in result.output and "perplexity" in result.output
