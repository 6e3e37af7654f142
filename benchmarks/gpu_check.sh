#!/usr/bin/env bash
# GPU checks, one script, most important first (a later step may be cut by the time limit):
#   env        the GPU, torch, CUDA, whether SDPA's flash kernel is on
#   data       clean -> tokenizer train -> tokenize on tinyshakespeare (CPU stages)
#   pretrain   GPT-2-small shape (12 x 768, seq 1024) on CUDA: bf16 autocast + torch.compile, then eager;
#              tokens/s and MFU read from metrics.jsonl; --ema and --average-last companions
#   fsdp       the same model for a few steps under --strategy fsdp (FSDP2 on one GPU)
#   eval       perplexity, an ensemble (run + its EMA), and every bundled benchmark in full
#   generate   llmkit generate with an ensemble; benchmarks/generate.py (llmkit vs transformers) on CUDA
#   bench      benchmarks/pretrain.py --gpu-only (llmkit vs a transformers GPT-2 loop, both compiled)
#
#   PY=python3 LLMKIT_SHARED_DATA=../shared/data OUT=gpu-out bash benchmarks/gpu_check.sh
# Each step's log is in $OUT/<step>.log; a summary of figures is in $OUT/summary.txt.
set -u
PY=${PY:-python3}
OUT=${OUT:-gpu-out}
DATA=${LLMKIT_SHARED_DATA:-../shared/data}
STEPS=${STEPS:-"env data pretrain fsdp eval generate bench"}
mkdir -p "$OUT"
WORK=$(mktemp -d)
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
llmkit() { "$PY" -m llmkit "$@"; }

note() { echo "$*" | tee -a "$SUMMARY"; }

run_step() {  # run_step NAME TIMEOUT_S: the function step_NAME in a shell of its own, cut at the limit
  local name=$1 limit=$2
  local start=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout "$limit" bash -c "step_$name" >"$OUT/$name.log" 2>&1
  local rc=$?
  note "step $name: rc=$rc, $((SECONDS - start)) s"
  tail -n 30 "$OUT/$name.log"
  return $rc
}

last_metrics() {  # the last training line of a run's metrics.jsonl: tokens/s, MFU, loss
  "$PY" - "$1" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl") if '"tokens_per_s"' in l]
tail = rows[-3:]
if tail:
    tps = sum(r["tokens_per_s"] for r in tail) / len(tail)
    mfu = sum(r.get("mfu", 0.0) for r in tail) / len(tail)
    print(f"{sys.argv[1]}: {tps:,.0f} tokens/s, MFU {mfu:.3f}, loss {tail[-1].get('loss', float('nan')):.3f} (mean of the last {len(tail)} log lines)")
EOF
}

step_env() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), 'flash sdp', torch.backends.cuda.flash_sdp_enabled())"
}

step_data() {
  llmkit clean "$DATA/tinyshakespeare.txt" --doc-per blank-line -o "$WORK/corpus" &&
  llmkit tokenizer train "$WORK/corpus" --vocab-size 8192 -o "$WORK/tok" &&
  llmkit tokenize "$WORK/corpus" -t "$WORK/tok" -o "$WORK/tokens"
}

# SMOKE=1: a tiny model, to try the script on a CPU before spending GPU time.
[ "${SMOKE:-0}" = 1 ] && GPT2="--model tiny --n-layer 1 --n-embd 32 --n-head 2 --context-length 64 --seq-len 64 --micro-batch 8 --batch-tokens 512 --eval-every 0 --log-every 10"
GPT2=${GPT2:-"--model gpt2 --context-length 1024 --seq-len 1024 --micro-batch 32 --batch-tokens 131072 --lr 6e-4 --eval-every 0 --log-every 10"}

step_pretrain() {
  llmkit pretrain "$WORK/tokens" -o "$WORK/run" $GPT2 --compile --max-steps 120 --save-every 60 --ema 0.99 --average-last 2 &&
  llmkit pretrain "$WORK/tokens" -o "$WORK/eager" $GPT2 --max-steps 40 &&
  note "$(last_metrics "$WORK/run") [compiled]" && note "$(last_metrics "$WORK/eager") [eager]"
}

step_fsdp() {
  llmkit pretrain "$WORK/tokens" -o "$WORK/fsdp" $GPT2 --strategy fsdp --max-steps 30 && note "$(last_metrics "$WORK/fsdp") [fsdp]"
}

step_eval() {
  llmkit eval "$WORK/run" -m perplexity,bpb --data "$WORK/tokens" -o "$WORK/ev-ppl" --batch-size 32 &&
  llmkit eval "$WORK/run" "$WORK/run/ema" -m perplexity,bpb --data "$WORK/tokens" -o "$WORK/ev-ens" --batch-size 32 &&
  local start=$SECONDS &&
  llmkit eval "$WORK/run" --task all --batch-size 64 -o "$WORK/ev-suite" &&
  note "benchmark suite (every bundled task, all examples, 0-shot) on CUDA: $((SECONDS - start)) s" &&
  cp "$WORK/ev-suite/metrics.json" "$OUT/suite-metrics.json"
}

step_generate() {
  llmkit generate "$WORK/run" "$WORK/run/ema" -p "ROMEO:" -p "JULIET:" --greedy -n 64 -o "$OUT/generate-ensemble.jsonl" &&
  "$PY" benchmarks/generate.py --device cuda --preset gpt2 --repeats 3
}

step_bench() {
  "$PY" benchmarks/pretrain.py --gpu-only --steps 40 --rounds 1
}

export PY OUT DATA WORK SUMMARY GPT2
export -f llmkit note last_metrics step_env step_data step_pretrain step_fsdp step_eval step_generate step_bench
declare -A LIMIT=([env]=60 [data]=120 [pretrain]=240 [fsdp]=120 [eval]=240 [generate]=180 [bench]=300)
for step in $STEPS; do
  run_step "$step" "${LIMIT[$step]}"
done
echo "=== summary"
cat "$SUMMARY"
