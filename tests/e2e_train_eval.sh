#!/usr/bin/env bash
# End to end on the CPU: documents -> shards -> a tiny model trained by
# `pgolf train` -> checkpoint -> `pgolf eval` (standard and sliding) ->
# `pgolf inspect`. Checks that training lowers the bpb well below the untrained
# model's and that the evaluator reproduces the trainer's validation number.
set -euo pipefail
PGOLF=$1
SHARED=$2
TOK=$SHARED/data/fineweb_8192_bpe.model
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
json() { sed -n "s/.*\"$2\":\([-0-9.eE+]*\).*/\1/p" <<<"$1"; }
fail() { echo "FAIL: $*"; exit 1; }

# The first 60 validation documents for validation, the other 856 for training.
"$PGOLF" data build --docs "$SHARED/data/corpus/docs_val.jsonl" --tokenizer "$TOK" --out "$T/shards" --val-docs 60
SET=(--set vocab_size=8192 --set num_layers=2 --set model_dim=64 --set num_heads=2 --set num_kv_heads=1 --set train_seq_len=128)
"$PGOLF" init "${SET[@]}" --out "$T/init.h5"
base=$("$PGOLF" eval --model "$T/init.h5" --val "$T/shards/fineweb_val_*.bin" --tokenizer "$TOK" --json --quiet)
trained=$("$PGOLF" train --train "$T/shards/fineweb_train_*.bin" --val "$T/shards/fineweb_val_*.bin" --tokenizer "$TOK" \
  --out "$T/model.h5" "${SET[@]}" --iterations 120 --batch-tokens 1024 --warmdown-iters 30 --log-every 40 --json)
std=$("$PGOLF" eval --model "$T/model.h5" --val "$T/shards/fineweb_val_*.bin" --tokenizer "$TOK" --json --quiet)
sw=$("$PGOLF" eval --model "$T/model.h5" --val "$T/shards/fineweb_val_*.bin" --tokenizer "$TOK" --stride 32 --doc-mask --json --quiet)
"$PGOLF" inspect "$T/model.h5" --json >/dev/null

b0=$(json "$base" bpb); b1=$(json "$std" bpb); bt=$(json "$trained" val_bpb); bs=$(json "$sw" bpb)
echo "untrained bpb $b0 | trained: train's val_bpb $bt, eval standard $b1, eval sliding+doc-mask $bs"
awk -v a="$b0" 'BEGIN{exit !(a > 4.0 && a < 5.5)}' || fail "untrained bpb $b0 is not near log2(8192)/bytes-per-token"
awk -v a="$b1" -v b="$b0" 'BEGIN{exit !(a < b - 1.0)}' || fail "training did not lower bpb enough ($b0 -> $b1)"
awk -v a="$b1" -v b="$bt" 'BEGIN{d=a-b; if (d<0) d=-d; exit !(d < 1e-6)}' || fail "eval ($b1) != train's validation ($bt)"
awk -v a="$bs" -v b="$b1" 'BEGIN{exit !(a < b + 0.05)}' || fail "sliding eval ($bs) is not at least as good as standard ($b1)"
# The JSON's timing keys; on the CPU there is no device warm-up to report.
for k in seconds eval_seconds warmup_seconds targets_per_second; do
  [ -n "$(json "$std" $k)" ] || fail "eval --json has no $k"
done
awk -v w="$(json "$std" warmup_seconds)" 'BEGIN{exit !(w == 0)}' || fail "a CPU eval reported a device warm-up ($(json "$std" warmup_seconds) s)"

# SIGINT mid-run: the step finishes, the model is validated and saved, exit 0
# (with gradient accumulation and an EMA of the weights on the way).
"$PGOLF" train --train "$T/shards/fineweb_train_*.bin" --val "$T/shards/fineweb_val_*.bin" --tokenizer "$TOK" \
  --out "$T/stopped.h5" "${SET[@]}" --iterations 1000000 --batch-tokens 1024 --grad-accum 2 --ema-decay 0.9 \
  --log-every 1 --json >"$T/stopped.json" 2>"$T/stopped.log" &
pid=$!
for _ in $(seq 600); do grep -q "^3/1000000" "$T/stopped.log" && break; sleep 0.1; done
kill -INT "$pid"
wait "$pid" || fail "pgolf train exited with $? after SIGINT: $(tail -3 "$T/stopped.log")"
grep -q "interrupted after step" "$T/stopped.log" || fail "no interruption message: $(tail -3 "$T/stopped.log")"
grep -q '"interrupted":true' "$T/stopped.json" || fail "the JSON summary does not say interrupted"
[ -f "$T/stopped.h5" ] || fail "no checkpoint after SIGINT"
"$PGOLF" eval --model "$T/stopped.h5" --val "$T/shards/fineweb_val_*.bin" --tokenizer "$TOK" --json --quiet >/dev/null ||
  fail "the checkpoint saved after SIGINT does not evaluate"
echo "SIGINT: stopped after $(grep -c "train_loss" "$T/stopped.log") logged steps, checkpoint saved"

# --preset frontier: the frontier's training recipe, each value overridable.
fr=$("$PGOLF" train --preset frontier --set vocab_size=8192 --set model_dim=64 --set embedding_dim=64 --set num_heads=2 \
  --set num_kv_heads=1 --set train_seq_len=128 --train "$T/shards/fineweb_train_*.bin" --val "$T/shards/fineweb_val_*.bin" \
  --tokenizer "$TOK" --out "$T/frontier.h5" --iterations 3 --batch-tokens 256 --muon-wd 0 --json 2>/dev/null)
python3 - "$fr" <<'PY' || fail "frontier recipe: $fr"
import json, sys
d = json.loads(sys.argv[1]); r = d["recipe"]
want = {"matrix_lr": 0.022, "scalar_lr": 0.02, "tied_embed_lr": 0.03, "muon_momentum": 0.97, "muon_row_normalize": True, "muon_bf16_momentum": True,
        "muon_wd": 0.0, "embed_wd": 0.095, "adam_wd": 0.02, "grad_clip_norm": 0.3, "warmdown_frac": 0.667,
        "enable_looping_at": 0.35, "pack_documents": True}
bad = {k: (r.get(k), v) for k, v in want.items() if r.get(k) != v}
assert not bad and d["ema_decay"] == 0.997 and d["steps"] == 3, bad
PY
echo "frontier recipe: applied, --muon-wd 0 kept"
echo "3 passed, 0 failed"
