#!/usr/bin/env bash
# Tiny Shakespeare: a character-rich English corpus, speech by speech.
#   clean -> tokenizer train -> tokenize -> pretrain -> generate -> eval (perplexity, bits per byte)
[ -n "${BASH_VERSION:-}" ] || { echo "error: $0 is a bash script: run it with bash $0" >&2; exit 2; }
source "$(dirname "$0")/common.sh"
need_data tinyshakespeare.txt

if [ "$SIZE" = tiny ]; then
  VOCAB=512; MODEL=(--model tiny --n-layer 1 --n-embd 32 --n-head 2 --context-length 64)
  PRETRAIN=(--max-steps 8 --batch-tokens 1024 --micro-batch 8 --eval-every 4 --save-every 4); NEW=16
else
  VOCAB=2048; MODEL=(--model tiny --context-length 256)
  PRETRAIN=(--max-steps 600 --batch-tokens 8192 --micro-batch 16 --lr 3e-3 --eval-every 200 --save-every 200); NEW=120
fi

stage clean;           llmkit clean "$DATA/tinyshakespeare.txt" --doc-per blank-line -o "$OUT/corpus" --seed "$SEED" --force
stage tokenizer train; llmkit tokenizer train "$OUT/corpus" -o "$OUT/tokenizer" --vocab-size "$VOCAB" --seed "$SEED" --force
stage tokenize;        llmkit tokenize "$OUT/corpus" --tokenizer "$OUT/tokenizer" -o "$OUT/tokens" --seed "$SEED" --force
stage pretrain;        llmkit pretrain "$OUT/tokens" -o "$OUT/pretrain" "${MODEL[@]}" "${PRETRAIN[@]}" --seed "$SEED" --force
stage generate;        llmkit generate "$OUT/pretrain" --prompt "ROMEO:" --max-new-tokens "$NEW" --temperature 0.8 --top-k 50 --seed "$SEED"
stage eval;            llmkit eval "$OUT/pretrain" --metric perplexity --metric bpb --data "$OUT/tokens" -o "$OUT/eval" --seed "$SEED" --force
stage results;         llmkit report "$OUT"/{corpus,tokenizer,tokens,pretrain,eval}
