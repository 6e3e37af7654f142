#!/usr/bin/env bash
# Quickstart: the documentation that ships with Python through every stage, on a CPU, in minutes.
#   clean -> tokenizer train -> tokenize -> pretrain -> finetune (SFT) -> generate -> eval
# Needs no network and no data set: the corpus is `builtin:python-docs`.
[ -n "${BASH_VERSION:-}" ] || { echo "error: $0 is a bash script: run it with bash $0" >&2; exit 2; }
source "$(dirname "$0")/common.sh"
need_python  # (its data-preparation script, checked before any stage runs)

if [ "$SIZE" = tiny ]; then
  VOCAB=512; MODEL=(--model tiny --n-layer 1 --n-embd 32 --n-head 2 --context-length 64)
  PRETRAIN=(--max-steps 8 --batch-tokens 1024 --micro-batch 8 --eval-every 4 --save-every 4)
  FINETUNE=(--max-steps 4 --batch-size 8 --eval-every 2 --save-every 2); QA=(--max-rows 300); NEW=8
else
  VOCAB=4096; MODEL=(--model tiny --context-length 128)
  PRETRAIN=(--max-steps 500 --batch-tokens 4096 --micro-batch 32 --lr 3e-3 --eval-every 100 --save-every 250)
  FINETUNE=(--max-steps 150 --batch-size 32 --lr 1e-3 --eval-every 50 --save-every 50); QA=(); NEW=40
fi

stage clean;           llmkit clean builtin:python-docs -o "$OUT/corpus" --seed "$SEED" --force
stage tokenizer train; llmkit tokenizer train "$OUT/corpus" -o "$OUT/tokenizer" --vocab-size "$VOCAB" --seed "$SEED" --force
stage tokenize;        llmkit tokenize "$OUT/corpus" --tokenizer "$OUT/tokenizer" -o "$OUT/tokens" --seed "$SEED" --force
stage pretrain;        llmkit pretrain "$OUT/tokens" -o "$OUT/pretrain" "${MODEL[@]}" "${PRETRAIN[@]}" --seed "$SEED" --force
stage "instruction data from the corpus"
"$PYTHON" "$REPO/recipes/docs_qa.py" "$OUT/corpus" "$OUT/qa" ${QA[@]+"${QA[@]}"}
stage finetune;        llmkit finetune "$OUT/pretrain" --task sft --template plain --data "$OUT/qa/train.jsonl" --truncate \
                         -o "$OUT/sft" "${FINETUNE[@]}" --seed "$SEED" --force
stage "generate: the pretrained model continues a text"
llmkit generate "$OUT/pretrain" --prompt "The list type" --max-new-tokens "$NEW" --greedy --seed "$SEED"
stage "generate: the fine-tuned model answers a question (prompt, then answer)"
llmkit generate "$OUT/sft" --prompt "Describe json.dumps." --max-new-tokens "$NEW" --greedy --seed "$SEED"
stage eval
llmkit eval "$OUT/pretrain" --metric perplexity --metric bpb --data "$OUT/tokens" -o "$OUT/eval-lm" --seed "$SEED" --force
llmkit eval "$OUT/sft" --metric rouge --data "$OUT/qa/test.jsonl" --field prompt --reference-field response \
  --max-new-tokens "$NEW" -o "$OUT/eval-sft" --seed "$SEED" --force

stage results
llmkit report "$OUT"/{corpus,tokenizer,tokens,pretrain,sft,eval-lm,eval-sft}
