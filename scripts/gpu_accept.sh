#!/usr/bin/env bash
# The GPU acceptance run, in one call (the GPU machine is bare at each call):
# build + GPU tests + kernel check (scripts/gpu_build.sh with QUICK=1), then on
# the baseline shape (vocab 8192, 9x512, L=1024) over ../shared's corpus:
# train for TRAIN_SECONDS, evaluate, quantize (GPTQ and RTN, int6 / int8
# embedding), evaluate the artifacts, size them against the reference's
# layout, and run lora-0317 TTT. Prints a table last; JSON lands in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
# Results collect in one folder and come back as one tarball (the machine returns
# only a limited number of files from $OUT), also when a step fails or times out.
O=/tmp/pgolf-out
rm -rf "$O" && mkdir -p "$O"
trap 'exit 143' TERM INT
trap 'tar czf "${OUT:-/tmp}/results.tgz" -C "$O" . 2>/dev/null || true' EXIT
B=${BUILD_DIR:-build-gpu}
C=$PWD/.carry
# SKIP_BUILD=1: the machine is still warm from a call that built $B.
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  OUT=$O QUICK=1 bash scripts/gpu_build.sh >"$O/gpu_build.txt" 2>&1 || { tail -40 "$O/gpu_build.txt"; exit 1; }
  tail -32 "$O/gpu_build.txt"
fi
P="$B/pgolf"
# DEMO=1: regenerate the demo's shipped artifact (scripts/make-demo-model.sh) and stop.
if [ "${DEMO:-0}" = 1 ]; then
  PG=$P CACHE=$C/cache WORK=/tmp/demo-model bash scripts/make-demo-model.sh model 2>"$O/demo_model.log" ||
    { tail -30 "$O/demo_model.log"; exit 1; }
  grep -E "step|val_bpb" "$O/demo_model.log" | tail -12
  cp demo/model.pgz demo/model.json /tmp/demo-model/model.h5 "${OUT:-/tmp}/"
  exit 0
fi
VAL="$C/shared/data/corpus/fineweb_val_000000.bin"; TOK="$C/shared/data/fineweb_8192_bpe.model"
TRAIN="$C/shared/data/corpus/fineweb_train_*.bin"
S=${TRAIN_SECONDS:-170}
t0=$EPOCHREALTIME
"$P" train --train "$TRAIN" --val "$VAL" --tokenizer "$TOK" --out /tmp/base.h5 --set vocab_size=8192 \
  --iterations 20000 --warmdown-iters 1200 --batch-tokens 131072 --max-seconds "$S" --log-every 100 --json \
  >"$O/train.json" 2>"$O/train.log" || { tail -20 "$O/train.log"; exit 1; }
tail -4 "$O/train.log"
"$P" eval --model /tmp/base.h5 --val "$VAL" --tokenizer "$TOK" --json --quiet >"$O/eval_float.json"
"$P" eval --model /tmp/base.h5 --val "$VAL" --tokenizer "$TOK" --stride 64 --batch-tokens 131072 --json --quiet \
  >"$O/eval_float_sw.json"
for m in gptq rtn; do
  "$P" quantize --checkpoint /tmp/base.h5 --calib "$TRAIN" --calib-batches 64 --calib-rows 1 --calib-seq-len 2048 \
    --method $m --tokenizer "$TOK" --out /tmp/base_$m.pgz --json >"$O/quant_$m.json" 2>"$O/quant_$m.log" ||
    { tail -20 "$O/quant_$m.log"; exit 1; }
  "$P" eval --model /tmp/base_$m.pgz --val "$VAL" --tokenizer "$TOK" --json --quiet >"$O/eval_$m.json"
done
tail -12 "$O/quant_gptq.log"
"$P" inspect /tmp/base_gptq.pgz --reference-layout --json >"$O/inspect_gptq.json" 2>"$O/inspect_gptq.log"
tail -4 "$O/inspect_gptq.log"
cp /tmp/base_gptq.pgz "${OUT:-/tmp}/"   # for offline study of the value coding
"$P" ttt --model /tmp/base.h5 --val "$VAL" --tokenizer "$TOK" --recipe lora-0317 --seed 0 --json --quiet \
  >"$O/ttt0.json" 2>"$O/ttt0.log" || tail -20 "$O/ttt0.log"
t1=$EPOCHREALTIME
j() { python3 -c "import json,sys; d=json.load(open('$1')); print(' '.join(str(d.get(k)) for k in sys.argv[1:]))" "${@:2}"; }
echo
echo "| run | numbers |"
echo "|---|---|"
echo "| train ${S}s | $(j "$O/train.json" steps seconds val_bpb val_loss) |"
echo "| eval float standard | $(j "$O/eval_float.json" bpb bpb_stderr eval_seconds targets_per_second) |"
echo "| eval float sliding S=64 | $(j "$O/eval_float_sw.json" bpb eval_seconds targets_per_second) |"
for m in gptq rtn; do
  echo "| quantize $m | $(python3 -c "import json; d=json.load(open('$O/quant_$m.json')); print({k: d[k] for k in d if not isinstance(d[k], (list, dict))})") |"
  echo "| eval $m standard | $(j "$O/eval_$m.json" bpb bpb_stderr) |"
done
echo "| inspect gptq | $(j "$O/inspect_gptq.json" file_bytes reference_layout_bytes entropy_floor_bytes) |"
echo "| ttt lora-0317 seed 0 | $(j "$O/ttt0.json" bpb bpb_base seconds) |"
echo "| wall after build | $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f s", b-a}') |"
