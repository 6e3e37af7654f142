#!/usr/bin/env bash
# Multi30k German -> English: pretrain on both sides, fine-tune with the translate template, BLEU/chrF.
#   clean -> tokenizer train -> tokenize -> pretrain -> finetune --template translate -> generate -> eval
# With a network: the hub's `bentrevett/multi30k` is the same data, fields de/en (docs/recipes.md).
[ -n "${BASH_VERSION:-}" ] || { echo "error: $0 is a bash script: run it with bash $0" >&2; exit 2; }
source "$(dirname "$0")/common.sh"
need_python  # (its data-preparation script, checked before any stage runs)
need_data translation/train.jsonl translation/test.jsonl

if [ "$SIZE" = tiny ]; then
  VOCAB=512; MODEL=(--model tiny --n-layer 1 --n-embd 32 --n-head 2 --context-length 128)
  PRETRAIN=(--max-steps 8 --batch-tokens 1024 --micro-batch 8 --eval-every 4 --save-every 4)
  FINETUNE=(--max-steps 6 --batch-size 16 --eval-every 3 --save-every 3); EVAL=(--limit 20); NEW=16
else
  VOCAB=4096; MODEL=(--model tiny --context-length 128)
  PRETRAIN=(--max-steps 600 --batch-tokens 8192 --micro-batch 16 --lr 3e-3 --eval-every 200 --save-every 200)
  FINETUNE=(--epochs 2 --batch-size 32 --lr 1e-3 --eval-every 100 --save-every 200); EVAL=(); NEW=48
fi

stage "pretraining text from both sides"
"$PYTHON" "$REPO/recipes/jsonl_text.py" "$OUT/bitext.txt" "$DATA/translation/train.jsonl" source target
stage clean;           llmkit clean "$OUT/bitext.txt" --doc-per blank-line -o "$OUT/corpus" --seed "$SEED" --force
stage tokenizer train; llmkit tokenizer train "$OUT/corpus" -o "$OUT/tokenizer" --vocab-size "$VOCAB" --seed "$SEED" --force
stage tokenize;        llmkit tokenize "$OUT/corpus" --tokenizer "$OUT/tokenizer" -o "$OUT/tokens" --seed "$SEED" --force
stage pretrain;        llmkit pretrain "$OUT/tokens" -o "$OUT/pretrain" "${MODEL[@]}" "${PRETRAIN[@]}" --seed "$SEED" --force
stage finetune;        llmkit finetune "$OUT/pretrain" --task sft --template translate --data "$DATA/translation/train.jsonl" \
                         --truncate -o "$OUT/sft" "${FINETUNE[@]}" --seed "$SEED" --force
stage generate;        llmkit generate "$OUT/sft" --prompt "Ein Hund läuft über eine Wiese." --max-new-tokens "$NEW" --greedy --seed "$SEED"
stage eval;            llmkit eval "$OUT/sft" --metric bleu --metric chrf --data "$DATA/translation/test.jsonl" \
                         --max-new-tokens "$NEW" ${EVAL[@]+"${EVAL[@]}"} -o "$OUT/eval" --seed "$SEED" --force
stage results;         llmkit report "$OUT"/{corpus,tokenizer,tokens,pretrain,sft,eval}
