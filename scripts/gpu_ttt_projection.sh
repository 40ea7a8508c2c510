#!/usr/bin/env bash
# One GPU call: varlen-0410 TTT's time on documents shaped like FineWeb's
# validation set (scripts/fineweb_shaped_val.py: the 50,000 documents' lengths
# from the reference's log, 40,540,160 tokens), projected to the whole set on
# 8 GPUs. Builds and runs the GPU tests first (scripts/gpu_build.sh, QUICK=1)
# unless SKIP_BUILD=1. Model: a freshly initialised frontier-shaped model (the
# time does not depend on the weights). Runs, each `pgolf ttt --recipe
# varlen-0410 --no-base` (the reference's work):
#   shared64   the shared validation set, chunk 64 (comparable with earlier runs)
#   fineweb64  every EVERY64-th (8) FineWeb-shaped document, chunk 64 (the reference log's)
#   fineweb32  every EVERY32-th (32) FineWeb-shaped document, chunk 32 (SPEC's)
# and lora-0317 on a fresh baseline-shaped model. Projection = seconds x K / 8.
# Prints a table last; logs and JSON in $OUT/projection.tgz.
set -euo pipefail
cd "$(dirname "$0")/.."
O=/tmp/pgolf-projection
rm -rf "$O" && mkdir -p "$O"
trap 'tar czf "${OUT:-/tmp}/projection.tgz" -C "$O" . 2>/dev/null || true' EXIT
B=${BUILD_DIR:-build-gpu}
C=$PWD/.carry
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  OUT=$O QUICK=1 BENCH=0 bash scripts/gpu_build.sh >"$O/gpu_build.txt" 2>&1 || { tail -60 "$O/gpu_build.txt"; exit 1; }
  grep -E "tests passed|FAILED|Failure" -A3 "$O/gpu_build.txt" | head -20 || true
fi
P="$B/pgolf"
VAL="$C/shared/data/corpus/fineweb_val_000000.bin"; TOK="$C/shared/data/fineweb_8192_bpe.model"
E64=${EVERY64:-8}; E32=${EVERY32:-32}
SRC=("$C"/shared/data/corpus/fineweb_train_*.bin)
python3 scripts/fineweb_shaped_val.py --tokens "${SRC[@]}" --every "$E64" --out /tmp/fineweb64.bin
python3 scripts/fineweb_shaped_val.py --tokens "${SRC[@]}" --every "$E32" --out /tmp/fineweb32.bin
"$P" init --preset frontier --set vocab_size=8192 --out /tmp/frontier.h5 >/dev/null
"$P" init --set vocab_size=8192 --out /tmp/base8192.h5 >/dev/null
ttt() {  # name, then pgolf ttt arguments
  local name=$1; shift
  timeout "${TTT_TIMEOUT:-300}" "$P" ttt --tokenizer "$TOK" --json --quiet "$@" >"$O/$name.json" 2>"$O/$name.log" ||
    { echo "$name failed:"; tail -5 "$O/$name.log"; }
}
ttt lora0317 --model /tmp/base8192.h5 --val "$VAL" --recipe lora-0317
ttt shared64 --model /tmp/frontier.h5 --val "$VAL" --recipe varlen-0410 --no-base --chunk 64
ttt fineweb64 --model /tmp/frontier.h5 --val /tmp/fineweb64.bin --recipe varlen-0410 --no-base --chunk 64
ttt fineweb32 --model /tmp/frontier.h5 --val /tmp/fineweb32.bin --recipe varlen-0410 --no-base --chunk 32
row() {  # name, K (0: no projection)
  [ -s "$O/$1.json" ] || { echo "| $1 | (no result) |"; return 0; }
  python3 - "$O/$1.json" "$1" "$2" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1])); k = int(sys.argv[3])
proj = f"{d['ttt_seconds'] * k / 8:.0f} s" if k else "-"
print(f"| {sys.argv[2]} | {d.get('docs')} | {d['targets']} | {d['ttt_seconds']:.2f} | {d['targets_per_second']:.0f} | "
      f"{d.get('graph_replays')}/{d.get('steps')} | {d['bpb']:.6f} | {proj} |")
EOF
}
echo "| run | docs | targets | TTT s | targets/s | replays/steps | bpb | 50,000 docs on 8 GPUs |"
echo "|---|---|---|---|---|---|---|---|"
row lora0317 0
row shared64 0
row fineweb64 "$E64"
row fineweb32 "$E32"
