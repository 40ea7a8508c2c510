#!/usr/bin/env bash
# Builds, tests and measures pgolf on the GPU machine (Ubuntu 24.04, CUDA 13,
# libtorch 2.11 inside the PyTorch wheel, no package registry). Prints a short
# table last. Inputs that machine lacks travel in .carry/ (see
# scripts/gpu_carry.sh, run on the CPU machine): the Debian libbrotli-dev
# package (headers only; the runtime libbrotli is there), a copy of the
# shared/ files the tests read, and the demo-corpus cache.
set -euo pipefail
cd "$(dirname "$0")/.."
C=$PWD/.carry
B=${BUILD_DIR:-build-gpu}
PREFIX=$C/prefix

# brotli headers from the Debian package; link names to the system runtime.
rm -rf "$PREFIX" "$C/unpack" && mkdir -p "$PREFIX/lib"
dpkg -x "$(ls "$C"/debs/libbrotli-dev_*.deb | head -1)" "$C/unpack"
cp -r "$C/unpack/usr/include" "$PREFIX/"
for l in brotlienc brotlidec brotlicommon; do
  so=$(ldconfig -p | awk -v n="lib$l.so.1" '$1 == n {print $NF; exit}')
  [ -n "$so" ] || { echo "gpu_build: runtime lib$l.so.1 not found" >&2; exit 1; }
  ln -sf "$so" "$PREFIX/lib/lib$l.so"
done

TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
export CUDACXX=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
export TORCH_CUDA_ARCH_LIST=9.0
export PGOLF_CACHE=$C/cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

rm -rf "$B"
t0=$EPOCHREALTIME
cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;$PREFIX" \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DPGOLF_SHARED_DIR="$C/shared" ${PGOLF_CMAKE_ARGS:-} 2>&1 | tail -5
t1=$EPOCHREALTIME
if ! cmake --build "$B" -j "$(nproc)" >"${OUT:-/tmp}/build.log" 2>&1; then
  grep -E -A8 "error|FAILED" "${OUT:-/tmp}/build.log" | head -80
  exit 1
fi
t2=$EPOCHREALTIME
# QUICK=1: only the GPU-labelled tests (the CPU suite runs in CI). Fuzzing needs clang: not here.
if [ "${QUICK:-0}" = 1 ]; then
  ctest --test-dir "$B" --output-on-failure -L gpu >"${OUT:-/tmp}/ctest.log" 2>&1 || true
else
  ctest --test-dir "$B" --output-on-failure -j 8 --label-exclude fuzz >"${OUT:-/tmp}/ctest.log" 2>&1 || true
fi
grep -E -A6 "Failure$|^\[  FAILED|tests passed" "${OUT:-/tmp}/ctest.log" | head -60 || true
t3=$EPOCHREALTIME
[ "${BENCH:-1}" = 1 ] || exit 0   # BENCH=0: build and tests only
touch data/shard.cpp && cmake --build "$B" 2>&1 | tail -1
t4=$EPOCHREALTIME
"$B/pgolf" env --bench --json >"${OUT:-/tmp}/env.json"
"$B/pgolf_fused_check" >"${OUT:-/tmp}/fused_check.txt" 2>&1 || echo "pgolf_fused_check failed"
# Eval speed on a baseline-shaped model (vocab 8192, 9x512, L=1024) over the shared val set.
"$B/pgolf" init --set vocab_size=8192 --out /tmp/base8192.h5
VAL="$C/shared/data/corpus/fineweb_val_000000.bin"; TOK="$C/shared/data/fineweb_8192_bpe.model"
"$B/pgolf" eval --model /tmp/base8192.h5 --val "$VAL" --tokenizer "$TOK" --json --quiet >"${OUT:-/tmp}/eval_std.json"
"$B/pgolf" eval --model /tmp/base8192.h5 --val "$VAL" --tokenizer "$TOK" --quiet --profile /tmp/trace_std.json 2>/dev/null
python3 scripts/trace_summary.py /tmp/trace_std.json 30 >"${OUT:-/tmp}/trace_std.txt" 2>&1 || true
"$B/pgolf" eval --model /tmp/base8192.h5 --val "$VAL" --tokenizer "$TOK" --stride 64 --json --quiet >"${OUT:-/tmp}/eval_sw.json"
"$B/pgolf" eval --model /tmp/base8192.h5 --val "$VAL" --tokenizer "$TOK" --stride 64 --batch-tokens 131072 --json --quiet >"${OUT:-/tmp}/eval_sw128.json"
"$B/pgolf" eval --model /tmp/base8192.h5 --val "$VAL" --tokenizer "$TOK" --stride 64 --doc-mask --json --quiet >"${OUT:-/tmp}/eval_swd.json"
# Training speed, same shape: 30 steps of 64 x 1024 tokens.
"$B/pgolf" train --train "$C/shared/data/corpus/fineweb_train_000000.bin" --val "$VAL" --tokenizer "$TOK" \
  --out /tmp/trained.h5 --set vocab_size=8192 --iterations 30 --batch-tokens 65536 --log-every 10 --json \
  >"${OUT:-/tmp}/train.json"
t5=$EPOCHREALTIME

d() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
echo
echo "| step | seconds |"
echo "|---|---|"
echo "| configure | $(d "$t0" "$t1") |"
echo "| clean build ($(nproc) cores) | $(d "$t1" "$t2") |"
echo "| ctest | $(d "$t2" "$t3") |"
echo "| rebuild after touching one data/ file | $(d "$t3" "$t4") |"
echo "env: $(cat "${OUT:-/tmp}/env.json")"
echo "eval standard: $(cat "${OUT:-/tmp}/eval_std.json")"
echo "eval sliding S=64: $(cat "${OUT:-/tmp}/eval_sw.json")"
echo "eval sliding S=64 batch 128 windows: $(cat "${OUT:-/tmp}/eval_sw128.json")"
echo "eval sliding S=64 doc-mask: $(cat "${OUT:-/tmp}/eval_swd.json")"
cat "${OUT:-/tmp}/fused_check.txt"
cat "${OUT:-/tmp}/trace_std.txt"
echo "train 30 steps: $(cat "${OUT:-/tmp}/train.json")"
