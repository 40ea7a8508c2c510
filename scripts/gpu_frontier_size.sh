#!/usr/bin/env bash
# Artifact size against the reference's int6.ptz on a trained frontier-shaped
# model (11 x 512, MLP 4x, the layout the reference's int6.ptz was made for),
# in one GPU call: build (scripts/gpu_build.sh, QUICK=1 BENCH=0), train for
# TRAIN_SECONDS on ../shared's corpus, GPTQ (int6 matrices, int8 embedding,
# 64 x 2048 calibration tokens), then the same values three ways: pgolf's
# `auto` coding, `entropy` only, and the reference's file (`pgolf export`).
# Prints a table last.
set -euo pipefail
cd "$(dirname "$0")/.."
O=${OUT:-/tmp}/frontier && mkdir -p "$O"
B=${BUILD_DIR:-build-gpu}
C=$PWD/.carry
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  OUT=$O QUICK=1 BENCH=0 bash scripts/gpu_build.sh >"$O/gpu_build.txt" 2>&1 || { tail -40 "$O/gpu_build.txt"; exit 1; }
  tail -4 "$O/gpu_build.txt"
fi
P="$B/pgolf"
VAL="$C/shared/data/corpus/fineweb_val_000000.bin"; TOK="$C/shared/data/fineweb_8192_bpe.model"
TRAIN="$C/shared/data/corpus/fineweb_train_*.bin"
S=${TRAIN_SECONDS:-120}
"$P" train --preset frontier --train "$TRAIN" --val "$VAL" --tokenizer "$TOK" --out /tmp/frontier.h5 \
  --iterations 20000 --warmdown-iters 1200 --batch-tokens 131072 --max-seconds "$S" --log-every 100 --json \
  >"$O/train.json" 2>"$O/train.log" || { tail -20 "$O/train.log"; exit 1; }
tail -3 "$O/train.log"
"$P" quantize --checkpoint /tmp/frontier.h5 --calib "$TRAIN" --calib-batches 64 --calib-rows 1 --calib-seq-len 2048 \
  --tokenizer "$TOK" --out /tmp/frontier.pgz --json >"$O/quant.json" 2>"$O/quant.log" || { tail -20 "$O/quant.log"; exit 1; }
"$P" export /tmp/frontier.pgz --format pgz --codec entropy --out /tmp/frontier.entropy.pgz 2>"$O/entropy.log"
"$P" export /tmp/frontier.pgz --out /tmp/frontier.int6.ptz 2>"$O/export.log"
"$P" inspect /tmp/frontier.pgz --reference-layout >"$O/inspect.txt" 2>&1
size() { stat -c %s "$1"; }
ref=$(size /tmp/frontier.int6.ptz)
pct() { python3 -c "print(f'{100 * (1 - $1 / $ref):.2f}%')"; }
echo
echo "| file | bytes | smaller than the reference's file by |"
echo "|---|---|---|"
echo "| reference int6.ptz (pgolf export) | $ref | — |"
echo "| pgolf, --codec entropy | $(size /tmp/frontier.entropy.pgz) | $(pct "$(size /tmp/frontier.entropy.pgz)") |"
echo "| pgolf, --codec auto | $(size /tmp/frontier.pgz) | $(pct "$(size /tmp/frontier.pgz)") |"
grep -E "order-0 entropy|reference layout|^tensors:" "$O/inspect.txt" || true
grep -E " int[0-9] +(context|entropy|packed)" "$O/inspect.txt" | awk '{c[$4]++} END {for (k in c) printf "%s %d  ", k, c[k]; print ""}'
