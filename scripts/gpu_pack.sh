#!/usr/bin/env bash
# Packs what a GPU machine needs to run grpo's GPU checks (scripts/gpu_check.sh) without building
# there: the binaries of this build (with its CUDA backend, sm_90 by default) and every shared
# library they load apart from the C/C++ runtime and CUDA's own (the GPU machine brings those).
# Written to .gpu/pack.tar.xz (ignored by git); carry `.gpu` to the machine with the repo.
# Usage: bash scripts/gpu_pack.sh          (BUILD_DIR, default build, must have found nvcc)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
[ -x "$BUILD_DIR/tests/grpo_gpu_tests" ] || {
  echo "gpu_pack: $BUILD_DIR has no grpo_gpu_tests: configure it where nvcc is found" >&2
  exit 1
}
cmake --build "$BUILD_DIR" --target grpo grpo_gpu_tests cuda_model_bench rollout_bench \
  weight_sync_bench >/dev/null
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib"
cp "$BUILD_DIR/cli/grpo" "$BUILD_DIR/tests/grpo_gpu_tests" "$BUILD_DIR/bench/cuda_model_bench" \
  "$BUILD_DIR/bench/rollout_bench" "$BUILD_DIR/bench/weight_sync_bench" "$stage/bin/"
for b in "$stage"/bin/*; do
  ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'
done | sort -u |
  grep -vE '/(libc|libm|libstdc\+\+|libgcc_s|ld-linux-x86-64|libpthread|libdl|librt)\.so|/cuda' |
  while read -r lib; do cp -L "$lib" "$stage/lib/"; done
mkdir -p .gpu
tar -cJf .gpu/pack.tar.xz -C "$stage" .
echo "gpu_pack: .gpu/pack.tar.xz ($(du -h .gpu/pack.tar.xz | cut -f1)): $(ls "$stage/bin" | tr '\n' ' ')" \
  "+ $(ls "$stage/lib" | wc -l) libraries"
