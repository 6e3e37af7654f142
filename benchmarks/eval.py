"""`llmkit eval`'s perplexity scoring beside the loop a user would write around transformers.

    .venv/bin/python benchmarks/eval.py                          # Llama-shaped `mini`, CPU
    .venv/bin/python benchmarks/eval.py --family gpt2 --preset tiny --rounds 5

Both sides score the same documents (tinyshakespeare, tokenized by a tokenizer trained here) with
the same weights (an llmkit GPT copied into the matching transformers class, `llmkit.model.hf_weights`)
over the same rolling windows (lm-evaluation-harness's `loglikelihood_rolling`, which
`llmkit.eval.perplexity.rolling_windows` reproduces), in batches of the same size:

  llmkit       `llmkit.eval.perplexity.score_documents` (what `llmkit eval --metric perplexity` runs)
  transformers each batch of windows right-padded with an attention mask through the model,
               log-softmax over the vocabulary, the targets' log-probabilities gathered: the loop of
               lm-evaluation-harness's HFLM, without its caching and its sorting by length, and with
               an attention mask, which HFLM does not pass (the same values: the padding comes after
               every scored token, and at the default sizes every window is full)

The two sides alternate over --rounds rounds in one process; each round's ratio is taken and the
median printed, with wall time and CPU time (all threads) per scored token. The total
log-likelihoods are checked to agree (1e-4 relative), so both sides do the same work.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("LLMKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


def documents(count: int, chars: int) -> list[str]:
    """`count` documents of about `chars` characters: consecutive paragraphs of tinyshakespeare."""
    paragraphs = [p for p in (DATA / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()]
    docs, current = [], ""
    for paragraph in paragraphs:
        current = f"{current}\n\n{paragraph}" if current else paragraph
        if len(current) >= chars:
            docs.append(current)
            current = ""
            if len(docs) == count:
                break
    return docs


def transformers_side(hf, requests, pad_id: int, batch_size: int) -> float:
    """Sum of the targets' log-probabilities, as an lm-eval-style loop over transformers computes it."""
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(requests), batch_size):
            batch = requests[start : start + batch_size]
            width = max(len(r.seq) for r in batch) - 1
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, r in enumerate(batch):
                ids[row, : len(r.seq) - 1] = torch.tensor(r.seq[:-1])
                mask[row, : len(r.seq) - 1] = 1
            logprobs = torch.log_softmax(hf(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            for row, r in enumerate(batch):
                length = len(r.seq) - 1
                targets = torch.tensor(r.seq[length - r.n + 1 :])
                total += float(logprobs[row, length - r.n : length].gather(1, targets[:, None]).sum())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("llama", "gpt2"), default="llama")
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--context", type=int, default=256, help="the model's context length (the window)")
    parser.add_argument("--docs", type=int, default=24)
    parser.add_argument("--doc-chars", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from generate import shaped_model, transformers_copy  # benchmarks/generate.py: the same pair of models
    from paired import alternate, report

    from llmkit.data.corpus import write_corpus_artifact
    from llmkit.data.tokenizer import load_tokenizer
    from llmkit.eval.perplexity import document_from_text, rolling_windows, score_documents
    from llmkit.tokenizer.train import TokenizerTrainConfig, train_tokenizer

    texts = documents(args.docs, args.doc_chars)
    with tempfile.TemporaryDirectory() as work:
        corpus = write_corpus_artifact(Path(work) / "corpus", texts).path
        tok = load_tokenizer(train_tokenizer([corpus], Path(work) / "tok", TokenizerTrainConfig(vocab_size=args.vocab_size)))
    docs = [document_from_text(text, tok) for text in texts]
    model = shaped_model(args.preset, args.family, tok.vocab_size, context_length=args.context).eval()
    hf = transformers_copy(model)
    requests = [r for doc in docs for r in rolling_windows(doc.tokens, tok.bos_id, args.context)]
    tokens = sum(r.n for r in requests)
    print(f"{len(docs)} documents, {tokens:,} scored tokens in {len(requests)} windows of up to {args.context}; "
          f"{args.family} `{args.preset}` ({model.num_params() / 1e6:.1f}M parameters), batch {args.batch_size}, "
          f"{args.threads} thread(s), torch {torch.__version__}")

    def ours() -> float:
        result = score_documents(model, docs, prefix_token=tok.bos_id, token_bytes=tok.token_bytes, pad_id=tok.pad_id,
                                 batch_size=args.batch_size)
        return -result.nll

    sides = {"llmkit": lambda r: ours(), "transformers": lambda r: transformers_side(hf, requests, tok.pad_id, args.batch_size)}
    sides["llmkit"](0), sides["transformers"](0)  # warm-up
    runs = alternate(sides, args.rounds)
    report(runs, tokens, "tok", describe=lambda loglik: f"log-likelihood {loglik:.2f}")
    ours_ll, theirs_ll = runs["llmkit"][-1].result, runs["transformers"][-1].result
    if abs(ours_ll - theirs_ll) > 1e-4 * abs(theirs_ll):
        raise SystemExit(f"the two sides scored different log-likelihoods ({ours_ll:.4f} vs {theirs_ll:.4f}, 1e-4 relative)")
    print("  log-likelihoods agree (1e-4 relative)")


if __name__ == "__main__":
    main()
