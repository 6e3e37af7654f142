#!/usr/bin/env bash
# SST-2 sentiment: pretrain on the review sentences, fine-tune a classifier, score accuracy/F1 on dev.
#   clean -> tokenizer train -> tokenize -> pretrain -> finetune --task classify -> eval
# With a network, every stage reads the hub's `imdb` too (clean --dataset imdb --split train, finetune --data imdb,
# eval --data imdb --split test).
[ -n "${BASH_VERSION:-}" ] || { echo "error: $0 is a bash script: run it with bash $0" >&2; exit 2; }
source "$(dirname "$0")/common.sh"
need_data sentiment/train.jsonl sentiment/test.jsonl

if [ "$SIZE" = tiny ]; then
  VOCAB=512; MODEL=(--model tiny --n-layer 1 --n-embd 32 --n-head 2 --context-length 64)
  PRETRAIN=(--max-steps 8 --batch-tokens 1024 --micro-batch 8 --eval-every 4 --save-every 4)
  FINETUNE=(--max-steps 6 --batch-size 16 --micro-batch 16 --eval-every 3 --save-every 3)
else
  VOCAB=2048; MODEL=(--model tiny --n-layer 2 --n-embd 64 --context-length 128)
  PRETRAIN=(--max-steps 300 --batch-tokens 4096 --micro-batch 32 --lr 3e-3 --eval-every 100 --save-every 100)
  FINETUNE=(--epochs 4 --batch-size 32 --micro-batch 32 --lr 1e-3 --eval-every 50 --save-every 100)
fi

stage clean;           llmkit clean "$DATA/sentiment/train.jsonl" --text-field text -o "$OUT/corpus" --seed "$SEED" --force
stage tokenizer train; llmkit tokenizer train "$OUT/corpus" -o "$OUT/tokenizer" --vocab-size "$VOCAB" --seed "$SEED" --force
stage tokenize;        llmkit tokenize "$OUT/corpus" --tokenizer "$OUT/tokenizer" -o "$OUT/tokens" --seed "$SEED" --force
stage pretrain;        llmkit pretrain "$OUT/tokens" -o "$OUT/pretrain" "${MODEL[@]}" "${PRETRAIN[@]}" --seed "$SEED" --force
stage finetune;        llmkit finetune "$OUT/pretrain" --task classify --data "$DATA/sentiment/train.jsonl" \
                         --val-data "$DATA/sentiment/test.jsonl" --truncate -o "$OUT/classifier" "${FINETUNE[@]}" --seed "$SEED" --force
stage eval;            llmkit eval "$OUT/classifier" --metric accuracy --metric f1 --data "$DATA/sentiment/test.jsonl" \
                         -o "$OUT/eval" --seed "$SEED" --force
stage results;         llmkit report "$OUT"/{corpus,tokenizer,tokens,pretrain,classifier,eval}
