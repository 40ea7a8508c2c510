#!/usr/bin/env bash
# pgolf's main job on a fresh Debian 12 machine, end to end: install, build,
# fetch the demo corpus (cached), build its validation shard with the shipped
# tokenizer, and score the shipped GPTQ artifact (demo/model.pgz): standard,
# sliding-window, document-masked sliding and streaming bpb, then score-first
# LoRA TTT.
# Prints one table. The GPU is used when there is one.
#
#   bash scripts/demo.sh          # the first 100 validation documents (a few minutes on 2 CPU cores)
#   bash scripts/demo.sh --full   # all 500 validation documents, TTT on all of them
#
# demo/ holds the tokenizer and the artifact; scripts/make-demo-model.sh regenerates both.
# PG=path/to/pgolf uses that binary instead of installing and building (default
# on a GPU machine with build-gpu/pgolf from scripts/gpu_build.sh); CACHE=DIR a
# filled fetch-demo cache.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCS=100; TTT_DOCS=20
case "${1:-}" in
  "") ;;
  --full) DOCS=500; TTT_DOCS=500 ;;
  *) echo "usage: $0 [--full]" >&2; exit 2 ;;
esac
D=build/demo
t0=$EPOCHREALTIME
# On a GPU machine where scripts/gpu_build.sh has built pgolf, use that build.
if [ -z "${PG:-}" ] && [ -x build-gpu/pgolf ] && nvidia-smi -L >/dev/null 2>&1; then PG=build-gpu/pgolf; fi
if [ -z "${PG:-}" ]; then
  bash scripts/install-deps.sh
  bash scripts/build.sh
  PG=build/pgolf
fi
TOK=demo/tok1024.model
MODEL=demo/model.pgz
secs() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}'; }
j() { sed -n "s/.*\"$2\":\([-0-9.eE+]*\).*/\1/p" <<<"$1"; }
t_build=$(secs "$t0")

s=$EPOCHREALTIME
mkdir -p $D
$PG data fetch-demo --out $D/docs.jsonl ${CACHE:+--cache "$CACHE"}
# The corpus's first 500 documents are the validation split (the tokenizer and
# the model never saw them); the demo scores the first $DOCS.
head -n $DOCS $D/docs.jsonl >$D/docs_val.jsonl
rm -rf $D/val && $PG data build --docs $D/docs_val.jsonl --tokenizer $TOK --out $D/val --val-docs $DOCS >/dev/null
VAL="$D/val/fineweb_val_*.bin"
bytes=$($PG data bytes --val "$VAL" --tokenizer $TOK --docs $D/docs_val.jsonl --json)
t_data=$(secs $s)

LOG=$D/demo.log; : >"$LOG"
EV=(--model $MODEL --val "$VAL" --tokenizer $TOK --json --quiet)
std=$($PG eval "${EV[@]}" 2>>"$LOG")
sw=$($PG eval "${EV[@]}" --stride 64 2>>"$LOG")
swd=$($PG eval "${EV[@]}" --stride 64 --doc-mask 2>>"$LOG")
stream=$($PG eval "${EV[@]}" --plan streaming 2>>"$LOG")
ttt=$($PG ttt "${EV[@]}" --recipe lora-0317 --context 256 --chunk 128 --max-docs $TTT_DOCS 2>>"$LOG")

echo
echo "demo: $DOCS validation documents, $(j "$bytes" targets) targets, $(j "$bytes" bytes) bytes (raw UTF-8 $(j "$bytes" raw_utf8_bytes))"
echo "model: $MODEL ($(stat -c %s $MODEL) bytes; 6 x 256, vocab 1024, GPTQ int6 / int8 embedding; see demo/README.md)"
printf '%-36s %9s %9s %12s %9s\n' mode bpb "± stderr" targets seconds
row() { printf '%-36s %9.4f %9.4f %12d %9.1f\n' "$1" "$(j "$2" bpb)" "$(j "$2" bpb_stderr)" "$(j "$2" targets)" "$(j "$2" seconds)"; }
row "standard (L=256)" "$std"
row "sliding (L=256, S=64)" "$sw"
row "sliding + document mask" "$swd"
row "streaming (KV cache, L=256)" "$stream"
row "TTT lora-0317 (first $TTT_DOCS docs)" "$ttt"
printf '%-36s %9.4f %9s %12d\n' "  same $TTT_DOCS docs without TTT" "$(j "$ttt" bpb_base)" "" "$(j "$ttt" targets)"
echo "(evaluation logs: $LOG)"
echo "install + build ${t_build}s | corpus + shard ${t_data}s | total $(secs "$t0")s"
