#!/usr/bin/env bash
# A scaling law on a 2-core CPU: an IsoFLOP sweep of small models on the embedded corpus, the
# Chinchilla fit (approaches 3 and 2), its plots, and the model size it recommends for a budget.
#   clean -> tokenizer train -> tokenize -> sweep -> scaling fit -> report
# Needs no network and no data set. Default size: 6 to 19 minutes on 2 cores, by the CPU (docs/scaling.md).
[ -n "${BASH_VERSION:-}" ] || { echo "error: $0 is a bash script: run it with bash $0" >&2; exit 2; }
source "$(dirname "$0")/common.sh"

if [ "$SIZE" = tiny ]; then
  VOCAB=300; SIZES=1x16,1x24,1x32; FLOPS=2e9,6e9; PER_BUDGET=3; EVAL=2048; FIT=(--grid coarse --bootstrap 10)
else
  VOCAB=320; SIZES=1x16,1x24,1x32,1x48,2x48,2x64,3x64,3x96; FLOPS=1e11,3e11,1e12,2e12; PER_BUDGET=4; EVAL=32768; FIT=()
fi
# Characters-level BPE (vocab 320) gives the most tokens from 2.4 MB; models from 7k to 160k
# non-embedding parameters; learning rate 3e-3 at width 128, scaled by 128 / width; batches of
# 2048 tokens (at least 100 steps a run); IsoFLOP sizes centred on 60 tokens per parameter.
SWEEP=(--flops "$FLOPS" --per-budget "$PER_BUDGET" --tokens-per-param 60 --sizes "$SIZES" --head-dim 16
       --seq-len 128 --context-length 128 --lr 3e-3 --batch-tokens 2048 --micro-batch 16 --min-steps 100
       --eval-tokens "$EVAL" --parallel 2)

stage clean;           llmkit clean builtin:python-docs -o "$OUT/corpus" --seed "$SEED" --force
stage tokenizer train; llmkit tokenizer train "$OUT/corpus" -o "$OUT/tokenizer" --vocab-size "$VOCAB" --seed "$SEED" --force
stage tokenize;        llmkit tokenize "$OUT/corpus" --tokenizer "$OUT/tokenizer" -o "$OUT/tokens" --seed "$SEED" --force
stage sweep;           llmkit sweep "$OUT/tokens" -o "$OUT/sweep" "${SWEEP[@]}" --seed "$SEED" --force
stage scaling fit;     llmkit scaling fit "$OUT/sweep" -o "$OUT/fit" --budget 1e13,1e14 ${FIT[@]+"${FIT[@]}"} --seed "$SEED" --force
stage results;         llmkit report "$OUT"/{corpus,tokenizer,tokens,sweep,fit}
