"""`llmkit finetune` training steps beside the loop a user would write around transformers (+ peft).

    .venv/bin/python benchmarks/finetune.py                      # LoRA, Llama-shaped `mini`, CPU
    .venv/bin/python benchmarks/finetune.py --method full        # full fine-tuning
    .venv/bin/python benchmarks/finetune.py --method full --family gpt2 --preset tiny
    .venv/bin/python benchmarks/finetune.py --task dpo           # preference pairs (DPO), LoRA

Both sides train the same weights (an llmkit GPT copied into the matching transformers class,
`llmkit.model.hf_weights`) on the same batches: DialogSum dialogues and summaries (../shared/data/
summarization) in the `summarize` template, encoded by a tokenizer trained here, right-padded,
with the loss on the summary tokens only (`llmkit.finetune.data.SFTBatches`). Per step, on both:
forward, next-token cross-entropy, backward, gradient-norm clipping at 1.0, a fused AdamW step
(lr 1e-3 for LoRA, 1e-4 in full; betas 0.9/0.999; no weight decay: finetune's defaults),
zero_grad(set_to_none=True).

  llmkit        the training loop's own `Trainer.train_step` over llmkit's model, with LoRA from
                `llmkit.finetune.lora.apply_lora` (what `llmkit finetune --lora-rank R` runs)
  transformers  `AutoModelForCausalLM` in a plain loop; LoRA by peft (`get_peft_model`), the
                library a user would reach for; the fastest such loop we know (no Trainer, no
                accelerate, the loss computed once from the logits)

LoRA adapts the layers that mean the same on both sides (attention query and output, MLP down:
llmkit's q_proj/out_proj/down_proj, Llama's q_proj/o_proj/down_proj) at rank --rank, alpha 2 x
rank, no dropout, and peft's adapters start from llmkit's initial values, so the losses of the
two sides agree (checked: the first step to 1e-5 relative, every step to 1e-2). The two sides
alternate over --rounds rounds of --steps steps each, in one process; each round's ratio is taken
and the median printed, with wall time and CPU time (all threads) per trained token (real,
unpadded positions).

With --task dpo both sides train DPO on preference pairs of the same dialogues: the chosen reply is
a dialogue's own summary, the rejected one another dialogue's (`llmkit.finetune.preference`:
`PreferenceBatches`, the starting model's log-probabilities scored once, `PreferenceLoss`, beta
0.1); the transformers loop is TRL's loss written out (a concatenated forward of both replies'
rows, each reply's log-probability summed over its tokens, -log sigmoid of beta x the difference
of the log-ratios), with the same precomputed reference. TRL's DPOTrainer itself is not timed: its
Trainer loop adds per-step work no plain loop has; its loss equals llmkit's (tests/test_preference.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("LLMKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
LORA_TARGETS = {"q_proj": "q_proj", "out_proj": "o_proj", "down_proj": "down_proj"}  # llmkit name -> Llama's


def dialogsum(count: int) -> list[dict]:
    path = DATA / "summarization" / "train.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} not found; set LLMKIT_SHARED_DATA to the folder holding summarization/train.jsonl")
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for _, line in zip(range(count), handle)]


def copy_adapters(model, peft_model) -> None:
    """Give peft's adapters llmkit's initial values (both are Kaiming-uniform A and zero B, drawn differently)."""
    theirs = dict(peft_model.named_parameters())
    copied = 0
    for name, param in model.named_parameters():
        if ".lora_" not in name:
            continue
        layer, _, which = name.rpartition(".")  # blocks.0.attn.q_proj, lora_A
        block, _, leaf = layer.rpartition(".")
        index = block.split(".")[1]
        kind = "self_attn" if leaf in ("q_proj", "out_proj") else "mlp"
        target = f"base_model.model.model.layers.{index}.{kind}.{LORA_TARGETS[leaf]}.{which}.default.weight"
        with torch.no_grad():
            theirs[target].copy_(param)
        copied += 1
    assert copied == sum(".lora_" in n for n in theirs), "every peft adapter has an llmkit counterpart"


def reference_step(hf, optimizer, params, batch, beta: float | None = None) -> float:
    if beta is None:  # SFT: next-token cross-entropy on the response tokens
        inputs, targets = batch
        logits = hf(input_ids=inputs).logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-100)
    else:  # DPO (TRL's sigmoid loss) on rows chosen, rejected, chosen, ...
        inputs, targets, reference, _ = batch
        logits = hf(input_ids=inputs).logits
        nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="none")
        ratios = -nll.view(targets.shape).sum(1).view(-1, 2) - reference
        loss = -F.logsigmoid(beta * (ratios[:, 0] - ratios[:, 1])).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("lora", "full"), default="lora")
    parser.add_argument("--task", choices=("sft", "dpo"), default="sft")
    parser.add_argument("--no-batch-invariant", action="store_true",
                        help="llmkit sums gradients as usual (what a GPU run does), not per sequence (a CPU run's default)")
    parser.add_argument("--family", choices=("llama", "gpt2"), default="llama")
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512, help="longest example in tokens (longer ones are cut)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="training steps per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.method == "lora" and args.family != "llama":
        parser.error("--method lora compares against peft on the Llama family only (GPT-2's fused c_attn has no "
                     "one-to-one counterpart of llmkit's q_proj)")
    torch.set_num_threads(args.threads)

    from generate import shaped_model, transformers_copy  # benchmarks/generate.py: the same pair of models
    from paired import alternate, report

    from llmkit.data.corpus import write_corpus_artifact
    from llmkit.data.templates import resolve_template
    from llmkit.data.tokenizer import load_tokenizer
    from llmkit.finetune.config import FinetuneConfig
    from llmkit.finetune.data import SFTBatches, sft_examples
    from llmkit.finetune.lora import apply_lora
    from llmkit.finetune.stage import sft_loss
    from llmkit.tokenizer.train import TokenizerTrainConfig, train_tokenizer
    from llmkit.train.distributed import DistInfo
    from llmkit.train.loop import ArtifactSpec, LoopSettings, Trainer

    records = dialogsum(args.batch_size * args.steps)
    with tempfile.TemporaryDirectory() as work:
        corpus = write_corpus_artifact(Path(work) / "corpus", [f"{r['document']}\n{r['summary']}" for r in records]).path
        tok = load_tokenizer(train_tokenizer([corpus], Path(work) / "tok", TokenizerTrainConfig(vocab_size=args.vocab_size)))
    dpo = args.task == "dpo"
    if dpo:
        from llmkit.finetune.preference import PreferenceBatches, PreferenceLoss, preference_pairs

        pairs = [{"document": r["document"], "chosen": r["summary"], "rejected": records[(i + 1) % len(records)]["summary"]}
                 for i, r in enumerate(records)]
        examples = preference_pairs(pairs, resolve_template("summarize"), tok, args.seq_len, True, "benchmark", verbose=False)
        batches = PreferenceBatches(examples, pad_id=tok.pad_id, seed=0)
    else:
        examples = sft_examples(records, resolve_template("summarize"), tok, args.seq_len, True, "benchmark", verbose=False)
        batches = SFTBatches(examples, pad_id=tok.pad_id, seed=0)

    lora = args.method == "lora"
    adapters = dict(lora_rank=args.rank, lora_targets=list(LORA_TARGETS)) if lora else {}
    config = FinetuneConfig.build(task=args.task, batch_size=args.batch_size, schedule="constant", warmup_steps=0,
                                  micro_batch=args.batch_size, eval_every=0, save_every=0, **adapters,
                                  **({"batch_invariant": False} if args.no_batch_invariant else {}))
    model = shaped_model(args.preset, args.family, tok.vocab_size, context_length=args.seq_len)
    if dpo:  # (both sides start from these weights: the reference scored once, as the run does before its first step)
        from llmkit.finetune.preference import reference_log_probs

        reference_log_probs(model, [examples], DistInfo(device=torch.device("cpu")), "fp32")
    loss_fn = PreferenceLoss(config.beta) if dpo else sft_loss
    hf = transformers_copy(model).train()
    torch.manual_seed(config.seed)
    if lora:
        from peft import LoraConfig, get_peft_model

        apply_lora(model, config.lora_targets, config.lora_rank, config.lora_scale_alpha)
        hf = get_peft_model(hf, LoraConfig(r=args.rank, lora_alpha=config.lora_scale_alpha, lora_dropout=0.0,
                                           target_modules=list(LORA_TARGETS.values()), bias="none"))
        copy_adapters(model, hf)
    total_steps = args.steps * (args.rounds + 1)  # the first `steps` are the warm-up
    settings = LoopSettings.for_stage(config, max_steps=total_steps, global_batch=args.batch_size,
                                      micro_batch=args.batch_size, tokens_per_sample=args.seq_len, warmup_steps=0,
                                      lr=config.peak_lr)
    params = [p for p in hf.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in params), (trainable, sum(p.numel() for p in params))
    optimizer = torch.optim.AdamW(params, lr=config.peak_lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True)
    # Every round trains on the same `steps` batches (the same work per round), as an epoch loop would.
    cycle = args.steps * args.batch_size
    step_batches = [batches(range(step * args.batch_size, (step + 1) * args.batch_size)) for step in range(args.steps)]
    tokens_per_round = sum(int((batch[0] != tok.pad_id).sum()) for batch in step_batches)
    widths = sorted(batch[0].shape[1] for batch in step_batches)

    with tempfile.TemporaryDirectory() as work:
        trainer = Trainer(model, settings, info=DistInfo(device=torch.device("cpu")), run_dir=Path(work) / "run",
                          batches=lambda indices: batches([k % cycle for k in indices]), loss_fn=loss_fn,
                          spec=ArtifactSpec(config={}, seed=0))
        step_fns = {
            "llmkit": lambda step: trainer.train_step(step)[0],
            "transformers": lambda step: reference_step(hf, optimizer, params, step_batches[step % args.steps],
                                                        beta=config.beta if dpo else None),
        }

        def steps_of(name: str, first: int) -> list[float]:
            return [step_fns[name](step) for step in range(first, first + args.steps)]

        warm = {name: steps_of(name, 0) for name in step_fns}
        what = "preference pairs of DialogSum summaries (two rows each)" if dpo else "DialogSum examples"
        print(f"{args.method} {'DPO' if dpo else 'SFT'} of {args.family} `{args.preset}` ({model.num_params() / 1e6:.1f}M parameters, "
              f"{trainable:,} trainable), batches of {args.batch_size} {what} padded to {widths[0]}-{widths[-1]} "
              f"tokens, {args.steps} steps per round ({tokens_per_round:,} real tokens), {args.threads} thread(s), "
              f"torch {torch.__version__}")
        runs = alternate({name: lambda r, name=name: steps_of(name, (r + 1) * args.steps) for name in step_fns}, args.rounds)
    report(runs, tokens_per_round, "tok", describe=lambda losses: f"last loss {losses[-1]:.4f}")
    # The same weights, batches and updates: the first step's losses agree to float rounding, and the
    # rest stay close (Adam's updates carry rounding differences forward, so the bound widens).
    ours = warm["llmkit"] + [loss for t in runs["llmkit"] for loss in t.result]
    theirs = warm["transformers"] + [loss for t in runs["transformers"] for loss in t.result]
    first = abs(ours[0] - theirs[0]) / abs(theirs[0])
    worst = max(abs(a - b) / abs(b) for a, b in zip(ours, theirs))
    if first > 1e-5 or worst > 1e-2:
        raise SystemExit(f"the two sides' losses differ (first step {first:.1e}, at most {worst:.1e}, relative): "
                         "they did not do the same work")
    print(f"  losses agree: first step to {first:.1e} relative, all {len(ours)} steps to {worst:.1e}")

if __name__ == "__main__":
    main()
