#!/usr/bin/env bash
# Regenerates what the demo ships in demo/: the tokenizer (any machine, a few
# seconds) and the GPTQ artifact (trained on a GPU, ~2 minutes on one H100).
#
#   bash scripts/make-demo-model.sh tokenizer   # demo/tok1024.model
#   bash scripts/make-demo-model.sh model       # demo/model.pgz (+ demo/model.json, the run's numbers)
#
# The demo corpus's first VAL_DOCS documents are the validation split: the
# tokenizer and the model never see them. PG names the pgolf binary, CACHE the
# fetch-demo cache (the GPU machine has no registry: pass a filled cache).
set -euo pipefail
cd "$(dirname "$0")/.."
PG=${PG:-build/pgolf}
CACHE=${CACHE:-$HOME/.cache/pgolf}
VAL_DOCS=500
W=${WORK:-build/demo-model}
mkdir -p "$W" demo
"$PG" data fetch-demo --cache "$CACHE" --out "$W/docs.jsonl"

case "${1:-}" in
tokenizer)
  "$PG" data train-tokenizer --docs "$W/docs.jsonl" --skip-docs $VAL_DOCS --vocab-size 1024 --out "$W/tok1024"
  cp "$W/tok1024.model" demo/tok1024.model
  ;;
model)
  TOK=demo/tok1024.model
  "$PG" data build --docs "$W/docs.jsonl" --tokenizer $TOK --out "$W/shards" --val-docs $VAL_DOCS
  # 6 x 256 (3.0M parameters), sequences of 256: sliding-window evaluation of the
  # demo's slice stays about a minute on 2 CPU cores.
  "$PG" train --train "$W/shards/fineweb_train_*.bin" --val "$W/shards/fineweb_val_*.bin" --tokenizer $TOK \
    --out "$W/model.h5" --set vocab_size=1024 --set num_layers=6 --set model_dim=256 --set num_heads=4 \
    --set num_kv_heads=2 --set train_seq_len=256 --batch-tokens 65536 --iterations ${STEPS:-2000} \
    --warmdown-iters 500 --val-every 250 --log-every 100 --seed 1337 --json >"$W/train.json"
  "$PG" quantize --checkpoint "$W/model.h5" --calib "$W/shards/fineweb_train_*.bin" --tokenizer $TOK \
    --method gptq --bits matrices=6,embed=8 --passthrough-max-numel 4096 --calib-batches 16 --out "$W/model.pgz" --json >"$W/quantize.json"
  EV=(--val "$W/shards/fineweb_val_*.bin" --tokenizer $TOK --json --quiet)
  float=$("$PG" eval --model "$W/model.h5" "${EV[@]}")
  quant=$("$PG" eval --model "$W/model.pgz" "${EV[@]}")
  cp "$W/model.pgz" demo/model.pgz
  printf '{"train":%s,\n "quantize":%s,\n "eval_float":%s,\n "eval_gptq":%s}\n' \
    "$(cat "$W/train.json")" "$(cat "$W/quantize.json")" "$float" "$quant" >demo/model.json
  echo "float $(grep -o '"bpb":[0-9.]*' <<<"$float") | gptq $(grep -o '"bpb":[0-9.]*' <<<"$quant") | $(stat -c %s demo/model.pgz) bytes"
  ;;
*) echo "usage: $0 tokenizer|model" >&2; exit 2 ;;
esac
