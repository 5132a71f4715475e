#!/usr/bin/env bash
# Runs grpo's GPU checks on a GPU machine that has CUDA but no build tools or libraries of ours:
# unpacks .gpu/pack.tar.xz (made here by scripts/gpu_pack.sh) and runs, from the repo root:
#   tests: grpo_gpu_tests (every CUDA op vs its CPU twin, the GPU model, rollout engine and learner
#          step vs the CPU), tests/cli/device_cli_test.sh and tests/cli/gpu_train_test.sh (every
#          stage of grpo train on the GPU);
#   bench: bench/cuda_bench.sh (training and decode vs transformers, roofline, MFU) and the rollout
#          engine on the GPU (build/bench/rollout_bench --device cuda).
# Each step's output goes to $OUT/NAME.log (OUT: the device tool's folder, else /tmp/gpu/out) and
# ends with its exit code; the script's exit code is the number of steps that failed.
# Usage (device tool, carry [".gpu"]): bash scripts/gpu_check.sh [tests] [bench]   (default: both)
set -uo pipefail
cd "$(dirname "$0")/.."
what=${*:-tests bench}
root=/tmp/gpu
rm -rf "$root/bin" "$root/lib"
mkdir -p "$root"
tar -xJf .gpu/pack.tar.xz -C "$root" || { echo "gpu_check: no .gpu/pack.tar.xz (scripts/gpu_pack.sh)"; exit 1; }
export LD_LIBRARY_PATH=$root/lib:${LD_LIBRARY_PATH:-}
out=${OUT:-$root/out}
mkdir -p "$out"
bin=$root/bin
nvidia-smi -L || true
failed=0
step() {
  local name=$1
  shift
  echo "=== $name: $*"
  local t0=$SECONDS
  "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.log"
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
  [ $rc = 0 ] || failed=$((failed + 1))
}
if [[ $what == *tests* ]]; then
  step gpu_tests "$bin/grpo_gpu_tests"
  step device_cli bash tests/cli/device_cli_test.sh "$bin/grpo"
  step gpu_train bash tests/cli/gpu_train_test.sh "$bin/grpo"
fi
if [[ $what == *bench* ]]; then
  step cuda_bench env BENCH="$bin/cuda_model_bench" bash bench/cuda_bench.sh
  # The same decode with every op launched (no CUDA graphs), for the graphs' share of a step.
  step cuda_bench_no_graphs "$bin/cuda_model_bench" --config configs/bench_moe.json \
    --train-steps 1 --decode-batches 16,64 --prompt 32 --decode-tokens 64 --decode-graphs 0
  step rollout_bench "$bin/rollout_bench" --device cuda --config configs/bench_moe.json \
    --batches 1,16,64 --prompt 32 --decode-tokens 64 --repeats 3 --weights bf16
fi
echo "gpu_check: $failed step(s) failed"
exit $failed
