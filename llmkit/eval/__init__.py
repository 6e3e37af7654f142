"""Evaluation: the `llmkit eval` stage and llmkit's offline `evaluate` metrics.

metrics/ (evaluate.Metric subclasses: BLEU, chrF, ROUGE, SQuAD, classification), text_scores.py,
perplexity.py (lm-eval rolling windows, perplexity / bpb), choice.py (multiple choice by
log-likelihood), loglik.py (batched continuation log-likelihoods), model_tasks.py (what runs a
checkpoint), sources.py / textio.py (reading data), stage.py (`run_eval`), command.py (the CLI).
See docs/eval.md.
"""
