#!/usr/bin/env bash
# Evaluation speed against the batch size (tokens per forward) and CUDA graphs
# on the GPU machine: the baseline shape (vocab 8192, 9x512, L=1024) for
# standard and sliding S=64 evaluation (also with --doc-mask), the frontier
# shape (L=2048) for standard evaluation, freshly initialised models over
# ../shared's val shard.
# SKIP_BUILD=1 reuses build-gpu. Prints one row per run last.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD_DIR:-build-gpu}
C=$PWD/.carry
O=${OUT:-/tmp}
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  OUT=$O QUICK=1 BENCH=0 bash scripts/gpu_build.sh >"$O/gpu_build.txt" 2>&1 || { tail -60 "$O/gpu_build.txt"; exit 1; }
  grep -E "tests passed|FAILED" "$O/gpu_build.txt" | head -20 || true
fi
P="$B/pgolf"
VAL="$C/shared/data/corpus/fineweb_val_000000.bin"; TOK="$C/shared/data/fineweb_8192_bpe.model"
"$P" init --set vocab_size=8192 --out /tmp/base.h5 >/dev/null
"$P" init --preset frontier --set vocab_size=8192 --out /tmp/frontier.h5 >/dev/null
rows=()
one() {  # label model batch_tokens extra-args...
  local label=$1 model=$2 bt=$3; shift 3
  local j
  j=$("$P" eval --model "$model" --val "$VAL" --tokenizer "$TOK" --batch-tokens "$bt" --json --quiet "$@" 2>"$O/err.txt") \
    || { rows+=("| $label | $bt | $* | failed: $(tail -1 "$O/err.txt") |"); return; }
  rows+=("$(python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print("| %s | %s | %s | %.3f | %.3f | %.0f | %d | %.9f |" % (sys.argv[2], sys.argv[3], sys.argv[4], j["eval_seconds"], j["warmup_seconds"], j["targets_per_second"], j["graph_replays"], j["bpb"]))' "$j" "$label" "$bt" "$*")")
}
for bt in ${STD_BATCHES:-32768 65536 131072 262144 524288}; do
  one baseline-standard /tmp/base.h5 "$bt"
  one baseline-standard /tmp/base.h5 "$bt" --no-cuda-graphs
done
for bt in ${SW_BATCHES:-32768 131072 262144}; do
  one baseline-sliding64 /tmp/base.h5 "$bt" --stride 64
  one baseline-sliding64 /tmp/base.h5 "$bt" --stride 64 --no-cuda-graphs
done
# Document-masked attention (varlen flash; no CUDA graphs): sliding windows and
# standard evaluation, the frontier record's evaluation mode.
one baseline-sliding64-docmask /tmp/base.h5 32768 --stride 64 --doc-mask
one baseline-sliding64-docmask /tmp/base.h5 131072 --stride 64 --doc-mask
one baseline-standard-docmask /tmp/base.h5 32768 --doc-mask
one frontier-standard-docmask /tmp/frontier.h5 65536 --doc-mask
for bt in ${FR_BATCHES:-65536 262144 524288}; do
  one frontier-standard /tmp/frontier.h5 "$bt"
  one frontier-standard /tmp/frontier.h5 "$bt" --no-cuda-graphs
done
echo
echo "| job | batch tokens | flags | eval seconds | warm-up | targets/s | graph replays | bpb |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
