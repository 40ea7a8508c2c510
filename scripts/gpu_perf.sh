#!/usr/bin/env bash
# One GPU call for the speed work: build + GPU tests (scripts/gpu_build.sh,
# QUICK=1), the kernel check program, then training, TTT and evaluation speed
# on the baseline shape (vocab 8192, 9x512, L=1024) over ../shared's corpus.
# TTT scores .carry/models/base_gptq.pgz (a 9x512 model trained by pgolf,
# copied there by hand) when present, else a freshly initialised model.
# Prints a table last; logs and JSON come back in $OUT/results.tgz.
set -euo pipefail
cd "$(dirname "$0")/.."
O=/tmp/pgolf-out
rm -rf "$O" && mkdir -p "$O"
trap 'exit 143' TERM INT
trap 'tar czf "${OUT:-/tmp}/results.tgz" -C "$O" . 2>/dev/null || true' EXIT
B=${BUILD_DIR:-build-gpu}
C=$PWD/.carry
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  OUT=$O QUICK=1 BENCH=0 bash scripts/gpu_build.sh >"$O/gpu_build.txt" 2>&1 || { tail -60 "$O/gpu_build.txt"; exit 1; }
  grep -E "tests passed|FAILED|Failure" -A3 "$O/gpu_build.txt" | head -40 || true
fi
P="$B/pgolf"
"$B/tests/pgolf_gpu_tests" --gtest_filter='Cuda.Streaming*:Cuda.Trimmed*:Cuda.EvalCuda*' 2>&1 | grep -E "streaming bpb|OK \]|FAILED|Failure" -A2 || true
VAL="$C/shared/data/corpus/fineweb_val_000000.bin"; TOK="$C/shared/data/fineweb_8192_bpe.model"
"$B/pgolf_fused_check" >"$O/fused_check.txt" 2>&1 || echo "pgolf_fused_check failed"
"$P" env --bench --json >"$O/env.json" 2>/dev/null || true
"$P" init --set vocab_size=8192 --out /tmp/base8192.h5 >/dev/null
MODEL=/tmp/base8192.h5
[ -f "$C/models/base_gptq.pgz" ] && MODEL="$C/models/base_gptq.pgz"
# BASE_STEPS=N (no base_gptq.pgz carried): train that model here -- N steps on
# every training shard, int6 GPTQ with an int8 embedding -- and send it back
# in $OUT so later calls carry it.
if [ "$MODEL" = /tmp/base8192.h5 ] && [ "${BASE_STEPS:-0}" -gt 0 ]; then
  "$P" train --train "$C/shared/data/corpus/fineweb_train_*.bin" --val "$VAL" --tokenizer "$TOK" --out /tmp/base.h5 \
    --set vocab_size=8192 --iterations "$BASE_STEPS" --warmdown-iters $((BASE_STEPS / 3)) --batch-tokens 131072 \
    --log-every 100 --json >"$O/base_train.json" 2>"$O/base_train.log" || tail -20 "$O/base_train.log"
  "$P" quantize --checkpoint /tmp/base.h5 --calib "$C/shared/data/corpus/fineweb_train_*.bin" --calib-batches 64 \
    --calib-rows 1 --calib-seq-len 2048 --method gptq --tokenizer "$TOK" --out /tmp/base_gptq.pgz --json \
    >"$O/base_quant.json" 2>"$O/base_quant.log" || tail -20 "$O/base_quant.log"
  [ -f /tmp/base_gptq.pgz ] && MODEL=/tmp/base_gptq.pgz && cp /tmp/base_gptq.pgz "${OUT:-/tmp}/"
fi
"$P" train --train "$C/shared/data/corpus/fineweb_train_000000.bin" --val "$VAL" --tokenizer "$TOK" --out /tmp/t.h5 \
  --set vocab_size=8192 --iterations ${TRAIN_STEPS:-40} --batch-tokens 131072 --log-every 10 --json \
  >"$O/train.json" 2>"$O/train.log" || tail -20 "$O/train.log"
# --timeline: per-step host and device times (scripts/timeline_summary.py), no profiler.
"$P" ttt --model "$MODEL" --val "$VAL" --tokenizer "$TOK" --recipe lora-0317 --seed 0 --json --quiet \
  --timeline "$O/ttt_timeline.tsv" >"$O/ttt.json" 2>"$O/ttt.log" || tail -20 "$O/ttt.log"
"$P" ttt --model "$MODEL" --val "$VAL" --tokenizer "$TOK" --recipe lora-0317 --seed 0 --no-base --json --quiet \
  --timeline "$O/ttt_nobase_timeline.tsv" >"$O/ttt_nobase.json" 2>"$O/ttt_nobase.log" || tail -20 "$O/ttt_nobase.log"
for s in ${TTT_SEEDS:-}; do  # TTT_SEEDS="1 2": more seeds (the noise floor of the gain)
  "$P" ttt --model "$MODEL" --val "$VAL" --tokenizer "$TOK" --recipe lora-0317 --seed "$s" --json --quiet \
    >"$O/ttt_seed$s.json" 2>"$O/ttt_seed$s.log" || tail -20 "$O/ttt_seed$s.log"
done
if [ "${VARLEN_DOCS:-0}" -gt 0 ]; then  # varlen-0410's speed on a frontier-shaped model (random weights)
  "$P" init --preset frontier --set vocab_size=8192 --out /tmp/frontier.h5 >/dev/null
  # VARLEN_BASE=1: with the scores without TTT (the comparison) too; VARLEN_CHUNK=C: another chunk
  NB=--no-base; [ "${VARLEN_BASE:-0}" = 1 ] && NB=
  [ -n "${VARLEN_CHUNK:-}" ] && NB="$NB --chunk $VARLEN_CHUNK"
  timeout "${VARLEN_TIMEOUT:-150}" "$P" ttt --model /tmp/frontier.h5 --val "$VAL" --tokenizer "$TOK" --recipe varlen-0410 $NB \
    --max-docs "$VARLEN_DOCS" --json --quiet --timeline "$O/ttt_varlen_timeline.tsv" >"$O/ttt_varlen.json" \
    2>"$O/ttt_varlen.log" || tail -5 "$O/ttt_varlen.log"
fi
for t in ttt ttt_nobase ttt_varlen; do
  [ -f "$O/${t}_timeline.tsv" ] && python3 scripts/timeline_summary.py "$O/${t}_timeline.tsv" >"$O/${t}_timeline.txt" 2>&1
done
"$P" ttt --model "$MODEL" --val "$VAL" --tokenizer "$TOK" --recipe lora-0317 --seed 0 --no-cuda-graphs --json --quiet \
  >"$O/ttt_nograph.json" 2>"$O/ttt_nograph.log" || tail -20 "$O/ttt_nograph.log"
if [ "${PROFILE:-1}" = 1 ]; then
  "$P" ttt --model "$MODEL" --val "$VAL" --tokenizer "$TOK" --recipe lora-0317 --max-docs ${PROFILE_DOCS:-192} --quiet \
    --profile /tmp/ttt_trace.json >/dev/null 2>&1 && python3 scripts/trace_summary.py /tmp/ttt_trace.json 30 >"$O/trace_ttt.txt" 2>&1 || true
fi
if [ "${VARLEN_PROFILE:-0}" -gt 0 ]; then  # VARLEN_PROFILE=N: a profile of varlen-0410 over the first N documents
  [ -f /tmp/frontier.h5 ] || "$P" init --preset frontier --set vocab_size=8192 --out /tmp/frontier.h5 >/dev/null
  "$P" ttt --model /tmp/frontier.h5 --val "$VAL" --tokenizer "$TOK" --recipe varlen-0410 --no-base --max-docs "$VARLEN_PROFILE" \
    --quiet --profile /tmp/varlen_trace.json >/dev/null 2>&1 && python3 scripts/trace_summary.py /tmp/varlen_trace.json 40 \
    >"$O/trace_varlen.txt" 2>&1 || true
fi
if [ "${TTT_ONLY:-0}" != 1 ]; then  # TTT_ONLY=1: skip the evaluation runs
"$P" eval --model "$MODEL" --val "$VAL" --tokenizer "$TOK" --json --quiet >"$O/eval_std.json" || echo "eval failed: eval_std.json"
"$P" eval --model "$MODEL" --val "$VAL" --tokenizer "$TOK" --stride 64 --batch-tokens 131072 --json --quiet >"$O/eval_sw.json" || echo "eval failed: eval_sw.json"
"$P" eval --model "$MODEL" --val "$VAL" --tokenizer "$TOK" --no-cuda-graphs --json --quiet >"$O/eval_std_nograph.json" || echo "eval failed: eval_std_nograph.json"
"$P" eval --model "$MODEL" --val "$VAL" --tokenizer "$TOK" --plan streaming --json --quiet >"$O/eval_stream.json" || echo "eval failed: eval_stream.json"
"$P" eval --model "$MODEL" --val "$VAL" --tokenizer "$TOK" --plan streaming --stride 256 --batch-tokens 65536 --json --quiet >"$O/eval_stream256.json" || echo "eval failed: eval_stream256.json"
if [ "${PROFILE:-1}" = 1 ]; then
  "$P" eval --model "$MODEL" --val "$VAL" --tokenizer "$TOK" --stride 64 --batch-tokens 131072 --quiet \
    --profile /tmp/sw_trace.json >/dev/null 2>&1 && python3 scripts/trace_summary.py /tmp/sw_trace.json 30 >"$O/trace_sw.txt" 2>&1 || true
  "$P" eval --model "$MODEL" --val "$VAL" --tokenizer "$TOK" --quiet \
    --profile /tmp/std_trace.json >/dev/null 2>&1 && python3 scripts/trace_summary.py /tmp/std_trace.json 30 >"$O/trace_std.txt" 2>&1 || true
fi
fi
j() { [ -s "$1" ] || return 0; python3 -c "import json,sys; d=json.load(open('$1')); print(' '.join(str(d.get(k)) for k in sys.argv[1:]))" "${@:2}"; }
echo
sed -n "/^attention/,\$p" "$O/fused_check.txt"
[ -f "$O/trace_ttt.txt" ] && head -100 "$O/trace_ttt.txt"
for t in ttt ttt_nobase; do [ -f "$O/${t}_timeline.txt" ] && echo "$t:" && cat "$O/${t}_timeline.txt"; done
[ -f "$O/ttt_varlen_timeline.txt" ] && echo "ttt_varlen:" && head -3 "$O/ttt_varlen_timeline.txt" && tail -1 "$O/ttt_varlen_timeline.txt" | cut -c1-1500
[ -f "$O/trace_varlen.txt" ] && head -55 "$O/trace_varlen.txt"
[ -f "$O/trace_sw.txt" ] && head -40 "$O/trace_sw.txt"
[ -f "$O/trace_std.txt" ] && head -30 "$O/trace_std.txt"
[ -f "$O/base_train.log" ] && tail -3 "$O/base_train.log"
grep -E "^(1|10|20|30|40)/" "$O/train.log" || tail -4 "$O/train.log"
echo "| run | numbers |"
echo "|---|---|"
echo "| model | $MODEL |"
echo "| env | $(cat "$O/env.json" 2>/dev/null) |"
echo "| train | $(j "$O/train.json" steps seconds last_train_loss val_bpb) |"
echo "| ttt lora-0317 | $(j "$O/ttt.json" bpb bpb_base seconds ttt_seconds targets_per_second steps graph_replays graph_captures host_seconds) |"
for s in ${TTT_SEEDS:-}; do
  echo "| ttt lora-0317 seed $s | $(j "$O/ttt_seed$s.json" bpb bpb_base gain gain_stderr seconds ttt_seconds) |"
done
echo "| ttt varlen-0410 frontier (docs targets s tok/s steps replays captures bpb bpb_base) | $(j "$O/ttt_varlen.json" docs targets ttt_seconds targets_per_second steps graph_replays graph_captures bpb bpb_base) |"
echo "| ttt lora-0317 --no-cuda-graphs | $(j "$O/ttt_nograph.json" bpb bpb_base seconds ttt_seconds targets_per_second host_seconds) |"
echo "| ttt lora-0317 --no-base | $(j "$O/ttt_nobase.json" bpb seconds ttt_seconds targets_per_second host_seconds) |"
echo "| eval standard (bpb s tok/s replays) | $(j "$O/eval_std.json" bpb eval_seconds warmup_seconds targets_per_second graph_replays host_seconds) |"
echo "| eval standard --no-cuda-graphs | $(j "$O/eval_std_nograph.json" bpb eval_seconds warmup_seconds targets_per_second host_seconds) |"
echo "| eval sliding S=64 | $(j "$O/eval_sw.json" bpb eval_seconds warmup_seconds targets_per_second graph_replays host_seconds) |"
echo "| eval streaming C=L | $(j "$O/eval_stream.json" bpb eval_seconds warmup_seconds targets_per_second host_seconds) |"
echo "| eval streaming C=256 | $(j "$O/eval_stream256.json" bpb eval_seconds targets_per_second) |"
