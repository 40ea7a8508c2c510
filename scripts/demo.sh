#!/usr/bin/env bash
# pgolf's main job on a fresh Debian 12 machine. Until the model, eval and
# TTT modules land it runs the data pipeline end to end: fetch the demo
# corpus, train a tokenizer on its training documents, build the shards and
# account for every byte, then print one table.
set -euo pipefail
cd "$(dirname "$0")/.."
VAL_DOCS=${VAL_DOCS:-916}
VOCAB=${VOCAB:-1024}
D=build/demo
t0=$EPOCHREALTIME
bash scripts/install-deps.sh
bash scripts/build.sh
PG=build/pgolf
secs() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}'; }
s=$EPOCHREALTIME; $PG data fetch-demo --out $D/docs.jsonl; t_fetch=$(secs $s)
s=$EPOCHREALTIME
$PG data train-tokenizer --docs $D/docs.jsonl --skip-docs "$VAL_DOCS" --vocab-size "$VOCAB" --out $D/tok$VOCAB
t_tok=$(secs $s)
s=$EPOCHREALTIME
$PG data build --docs $D/docs.jsonl --tokenizer $D/tok$VOCAB.model --out $D/shards --val-docs "$VAL_DOCS"
t_build=$(secs $s)
head -n "$VAL_DOCS" $D/docs.jsonl >$D/docs_val.jsonl
$PG data bytes --val "$D/shards/fineweb_val_*.bin" --tokenizer $D/tok$VOCAB.model --docs $D/docs_val.jsonl --json >$D/val_bytes.json
$PG data bytes --val "$D/shards/fineweb_train_*.bin" --tokenizer $D/tok$VOCAB.model --json >$D/train_bytes.json
j() { sed -n "s/.*\"$2\":\([0-9-]*\).*/\1/p" "$1"; }
echo
printf '%-8s %10s %12s %12s %10s %14s %10s\n' split documents targets bytes bytes/tok "raw UTF-8" gap
for split in val train; do
  f=$D/${split}_bytes.json
  raw=$(j "$f" raw_utf8_bytes); gap=$(j "$f" gap)
  awk -v s="$split" -v d="$(j "$f" documents)" -v t="$(j "$f" targets)" -v b="$(j "$f" bytes)" -v r="${raw:--}" -v g="${gap:--}" \
    'BEGIN{printf "%-8s %10d %12d %12d %10.3f %14s %10s\n", s, d, t, b, b/t, r, g}'
done
echo "fetch ${t_fetch}s | tokenizer ($VOCAB pieces) ${t_tok}s | shards ${t_build}s | total $(secs "$t0")s"
