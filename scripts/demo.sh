#!/usr/bin/env bash
# pgolf's main job on a fresh Debian 12 machine, end to end on the CPU: fetch
# the demo corpus, train a tokenizer on its training documents, build the
# shards, train a small model, and score it (standard and sliding-window bpb),
# printing one table. (TTT and the shipped GPTQ artifact join when they land.)
set -euo pipefail
cd "$(dirname "$0")/.."
VAL_DOCS=${VAL_DOCS:-100}      # documents scored (the first of the shuffled corpus)
VOCAB=${VOCAB:-1024}
STEPS=${STEPS:-300}
TTT_DOCS=${TTT_DOCS:-20}       # documents for the TTT row (score-first LoRA is ~30x the cost of standard eval)
D=build/demo
t0=$EPOCHREALTIME
bash scripts/install-deps.sh
bash scripts/build.sh
PG=build/pgolf
secs() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}'; }
j() { sed -n "s/.*\"$2\":\([-0-9.eE+]*\).*/\1/p" <<<"$1"; }

s=$EPOCHREALTIME; $PG data fetch-demo --out $D/docs.jsonl; t_fetch=$(secs $s)
s=$EPOCHREALTIME
$PG data train-tokenizer --docs $D/docs.jsonl --skip-docs "$VAL_DOCS" --vocab-size "$VOCAB" --out $D/tok$VOCAB 2>/dev/null
$PG data build --docs $D/docs.jsonl --tokenizer $D/tok$VOCAB.model --out $D/shards --val-docs "$VAL_DOCS"
t_data=$(secs $s)
head -n "$VAL_DOCS" $D/docs.jsonl >$D/docs_val.jsonl
bytes=$($PG data bytes --val "$D/shards/fineweb_val_*.bin" --tokenizer $D/tok$VOCAB.model --docs $D/docs_val.jsonl --json)

MODEL=(--set vocab_size=$VOCAB --set num_layers=4 --set model_dim=128 --set num_heads=4 --set num_kv_heads=2 --set train_seq_len=256)
s=$EPOCHREALTIME
LOG=$D/demo.log; : >"$LOG"
train=$($PG train --train "$D/shards/fineweb_train_*.bin" --val "$D/shards/fineweb_val_*.bin" --tokenizer $D/tok$VOCAB.model \
  --out $D/model.h5 "${MODEL[@]}" --iterations "$STEPS" --batch-tokens 2048 --warmdown-iters 60 --log-every 100 --json 2>>"$LOG")
t_train=$(secs $s)
EV=(--model $D/model.h5 --val "$D/shards/fineweb_val_*.bin" --tokenizer $D/tok$VOCAB.model --json --quiet)
std=$($PG eval "${EV[@]}" 2>>"$LOG")
sw=$($PG eval "${EV[@]}" --stride 64 2>>"$LOG")
swd=$($PG eval "${EV[@]}" --stride 64 --doc-mask 2>>"$LOG")
ttt=$($PG ttt "${EV[@]}" --recipe lora-0317 --context 256 --chunk 128 --max-docs "$TTT_DOCS" 2>>"$LOG")

echo
echo "demo: $VAL_DOCS validation documents, $(j "$bytes" targets) targets, $(j "$bytes" bytes) bytes (raw UTF-8 $(j "$bytes" raw_utf8_bytes))"
echo "model: 4 x 128, vocab $VOCAB, trained $STEPS steps of 2048 tokens on the CPU in ${t_train}s"
printf '%-34s %9s %9s %12s %9s\n' mode bpb "± stderr" targets seconds
for row in "standard (L=256)|$std" "sliding (L=256, S=64)|$sw" "sliding + document mask|$swd"; do
  name=${row%%|*}; r=${row#*|}
  printf '%-34s %9.4f %9.4f %12d %9.1f\n' "$name" "$(j "$r" bpb)" "$(j "$r" bpb_stderr)" "$(j "$r" targets)" "$(j "$r" seconds)"
done
printf '%-34s %9.4f %9.4f %12d %9.1f\n' "TTT lora-0317 (first $TTT_DOCS docs)" "$(j "$ttt" bpb)" "$(j "$ttt" bpb_stderr)" \
  "$(j "$ttt" targets)" "$(j "$ttt" seconds)"
printf '%-34s %9.4f %9s %12d\n' "  same $TTT_DOCS docs without TTT" "$(j "$ttt" bpb_base)" "" "$(j "$ttt" targets)"
echo "(training and evaluation logs: $LOG)"
echo "fetch ${t_fetch}s | tokenizer + shards ${t_data}s | training ${t_train}s | total $(secs "$t0")s"
