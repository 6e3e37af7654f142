#!/usr/bin/env bash
# GPU checks, one script, most important first (a later step may be cut by the time limit):
#   env        the GPU, torch, CUDA, whether SDPA's flash kernel is on
#   flash      profiles one bf16 training step and checks that attention ran a flash kernel
#   data       clean -> tokenizer train -> tokenize on tinyshakespeare (CPU stages)
#   pretrain   GPT-2-small shape (12 x 768, seq 1024) on CUDA: bf16 autocast + torch.compile, then eager;
#              tokens/s and MFU read from metrics.jsonl; --ema and --average-last companions;
#              `llmkit plan`'s memory estimate beside the measured peak
#   ac         the same with --activation-checkpointing (eager): speed, and memory against the plan
#   torchrun   `--gpus 1` through torchrun (the NCCL process group of a multi-GPU launch)
#   fsdp       --strategy fsdp on one GPU (FSDP2 shards only across processes: this runs unwrapped)
#   eval       perplexity, an ensemble (run + its EMA), and every bundled benchmark in full
#   generate   llmkit generate with an ensemble; benchmarks/generate.py (llmkit vs transformers) on CUDA
#   bench      benchmarks/pretrain.py --gpu-only (llmkit vs a transformers GPT-2 loop, both compiled)
#   layouts    with 2+ GPUs: --tp 2 and --pp 2 (NCCL, bf16) beside --gpus 2 data parallel, and
#              benchmarks/parallel.py --gpus 2; skipped (and said so) on one GPU
#
#   PY=python3 LLMKIT_SHARED_DATA=../shared/data OUT=gpu-out bash benchmarks/gpu_check.sh
# Each step's log is in $OUT/<step>.log; a summary of figures is in $OUT/summary.txt.
set -u
PY=${PY:-python3}
OUT=${OUT:-gpu-out}
DATA=${LLMKIT_SHARED_DATA:-../shared/data}
STEPS=${STEPS:-"env flash data pretrain ac torchrun fsdp eval generate bench layouts"}
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
[ "${SMOKE:-0}" = 1 ] && GPT2="--model tiny --n-layer 1 --n-embd 32 --n-head 2 --context-length 64 --seq-len 64 --micro-batch 8 --batch-tokens 512 --eval-every 0 --log-every 10" \
  && GPT2_PLAN="--model tiny --n-layer 1 --n-embd 32 --n-head 2 --context-length 64 --seq-len 64 --micro-batch 8 --vocab-size 8192"
GPT2=${GPT2:-"--model gpt2 --context-length 1024 --seq-len 1024 --micro-batch 32 --batch-tokens 131072 --lr 6e-4 --eval-every 0 --log-every 10"}
GPT2_PLAN=${GPT2_PLAN:-"--model gpt2 --vocab-size 8192 --seq-len 1024 --micro-batch 32"}

step_pretrain() {
  llmkit pretrain "$WORK/tokens" -o "$WORK/run" $GPT2 --compile --max-steps ${PRETRAIN_STEPS:-120} --save-every 60 --ema 0.99 --average-last 2 &&
  llmkit pretrain "$WORK/tokens" -o "$WORK/eager" $GPT2 --max-steps 40 &&
  note "$(last_metrics "$WORK/run") [compiled]" && note "$(last_metrics "$WORK/eager") [eager]" &&
  note "$(plan_vs_measured "$WORK/run")" && note "$(plan_vs_measured "$WORK/eager")"
}

step_flash() {
  "$PY" - <<'EOF'
import torch
from torch.profiler import ProfilerActivity, profile

from llmkit.model.presets import resolve_model_config, build_model

model = build_model(resolve_model_config("gpt2", 8192)).cuda()
idx = torch.randint(0, 8192, (8, 1024), device="cuda")
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(idx, idx)[1]
    loss.backward()
    torch.cuda.synchronize()
names = {e.key for e in prof.key_averages()}
attention = sorted(n for n in names if "flash" in n.lower() or "fmha" in n.lower() or "attention" in n.lower())
print("attention kernels:", *attention[:6], sep="\n  ")
assert any("flash" in n.lower() for n in attention), "no flash-attention kernel ran"
print("flash attention: yes")
EOF
}

plan_vs_measured() {  # plan_vs_measured RUN [plan flags...]: the plan's tensors against the run's peak allocation
  local run=$1
  shift
  "$PY" -m llmkit plan $GPT2_PLAN --gpu h200 --json "$@" >"$WORK/plan.json" &&
  "$PY" - "$run" "$WORK/plan.json" <<'EOF'
import json, sys
peak = max(json.loads(l).get("peak_memory_gb") or 0 for l in open(sys.argv[1] + "/metrics.jsonl"))
m = json.load(open(sys.argv[2]))["memory"]
tensors = m["total_gb"] - m["allowance_gb"]
print(f"{sys.argv[1]}: measured peak allocated {peak:.2f} GB; llmkit plan: tensors {tensors:.2f} GB ({tensors / peak - 1:+.1%}), "
      f"with allowance {m['total_gb']:.2f} GB")
EOF
}

step_ac() {
  llmkit pretrain "$WORK/tokens" -o "$WORK/ac" $GPT2 --activation-checkpointing --max-steps 30 &&
  note "$(last_metrics "$WORK/ac") [eager, activation checkpointing]" &&
  note "$(plan_vs_measured "$WORK/ac" --activation-checkpointing)"
}

step_torchrun() {
  # An outside torchrun with one process: the worker joins an NCCL process group as in a multi-GPU launch.
  "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m llmkit pretrain "$WORK/tokens" -o "$WORK/nccl" $GPT2 \
    --max-steps 20 --gpus 1 &&
  grep -h '"world_size"\|"backend"\|"strategy"' "$WORK/nccl/manifest.json" | head -5 &&
  note "$(last_metrics "$WORK/nccl") [torchrun, NCCL, world size 1]"
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
  "$PY" benchmarks/generate.py --device cuda --preset gpt2 --repeats 3 &&
  "$PY" benchmarks/generate.py --device cuda --preset gpt2 --repeats 3 --batches 1 --compile
}

step_bench() {
  "$PY" benchmarks/pretrain.py --gpu-only --steps 40 --rounds 1
}

step_layouts() {
  local gpus
  gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
  if [ "$gpus" -lt 2 ]; then note "layouts: skipped, $gpus GPU (tensor and pipeline parallelism need 2+)"; return 0; fi
  llmkit pretrain "$WORK/tokens" -o "$WORK/dp2" $GPT2 --max-steps 30 --gpus 2 && note "$(last_metrics "$WORK/dp2") [dp 2]" &&
  llmkit pretrain "$WORK/tokens" -o "$WORK/tp2" $GPT2 --max-steps 30 --gpus 2 --tp 2 && note "$(last_metrics "$WORK/tp2") [tp 2]" &&
  llmkit pretrain "$WORK/tokens" -o "$WORK/pp2" $GPT2 --max-steps 30 --gpus 2 --pp 2 --pp-microbatches 8 --micro-batch 4 &&
  note "$(last_metrics "$WORK/pp2") [pp 2, 1f1b, 8 micro-batches]"
}

export PY OUT DATA WORK SUMMARY GPT2 GPT2_PLAN
export -f llmkit note last_metrics plan_vs_measured step_env step_flash step_data step_pretrain step_ac step_torchrun step_fsdp \
  step_eval step_generate step_bench step_layouts
declare -A LIMIT=([env]=60 [flash]=90 [data]=120 [pretrain]=240 [ac]=120 [torchrun]=120 [fsdp]=120 [eval]=240 [generate]=180 [bench]=300
  [layouts]=300)
for step in $STEPS; do
  run_step "$step" "${LIMIT[$step]}"
done
echo "=== summary"
cat "$SUMMARY"
