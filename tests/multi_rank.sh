#!/usr/bin/env bash
# Multi-rank on the CPU (model/distributed.h): every command run by 1 process
# and by 2 Gloo processes launched as torchrun would (RANK, WORLD_SIZE,
# LOCAL_RANK, MASTER_ADDR, MASTER_PORT), the results compared:
# - eval, standard and sliding (+ doc-mask, + legacy): |d bpb| <= 1e-6, the same
#   targets and bytes, and the sliding --dump's per-token arrays identical;
# - ttt (both recipes, scaled down): bpb, base bpb and their standard errors
#   bit-identical (the standard errors are sums over per-document totals, so
#   they check every document's numbers);
# - train, data parallel: a checkpoint with the same tensors, losses close;
#   the gradient all-reduce overlapped with backward (default) and after it
#   (--no-overlap-allreduce), with one bucket and with several: the same
#   checkpoint bytes and losses (with 2 ranks every sum is a + b, whatever the
#   buckets; with 3, Gloo's ring adds in an order that depends on a value's
#   place in its bucket, so there overlap on/off is compared at equal buckets);
# - a rank that fails (a bad --val on one rank) stops both, non-zero, < 60 s,
#   and a killed store host (rank 0) stops rank 1;
# - ttt --audit refuses more than one rank.
# Both sides run 1 thread per process, as torchrun sets OMP_NUM_THREADS=1, on
# the CPU (--device cpu: Gloo also in CUDA builds; exit 77, skipped, in a build
# without Gloo).
set -euo pipefail
PGOLF=$1
SHARED=$2
TOK=$SHARED/data/fineweb_8192_bpe.model
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=1 PGOLF_DIST_TIMEOUT=120
fail() { echo "FAIL: $*"; exit 1; }
json() { sed -n "s/.*\"$2\":\([-0-9.eE+]*\).*/\1/p" <<<"$1"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Runs `pgolf ARGS` as 2 ranks (NR ranks when set); rank r's stdout/stderr in
# $T/$NAME.r.out/.err. ARGS may contain @R@, replaced by the rank. Sets RC0,
# RC1 (the first failure of the other ranks) and SECONDS2.
run2() {
  local name=$1 n=${NR:-2}
  shift
  local port start r rc pids=()
  port=$(free_port)
  start=$EPOCHREALTIME
  for ((r = 0; r < n; r++)); do
    local args=("${@//@R@/$r}")
    WORLD_SIZE=$n RANK=$r LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      timeout 300 "$PGOLF" "${args[@]}" >"$T/$name.$r.out" 2>"$T/$name.$r.err" &
    pids+=($!)
  done
  RC0=0 RC1=0
  wait "${pids[0]}" || RC0=$?
  for ((r = 1; r < n; r++)); do
    rc=0
    wait "${pids[$r]}" || rc=$?
    [ "$RC1" != 0 ] || RC1=$rc
  done
  SECONDS2=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b - a}')
}
run2_ok() {
  run2 "$@"
  if [ "$RC0" != 0 ] || [ "$RC1" != 0 ]; then
    if grep -q "multi-rank CPU runs need Gloo, and this build has none" "$T/$1.0.err"; then
      echo "skipped: this build has no Gloo"
      exit 77
    fi
    tail -5 "$T/$1.0.err" "$T/$1.1.err"
    fail "$1: 2 ranks exited $RC0 / $RC1"
  fi
  [ -s "$T/$1.1.out" ] && fail "$1: rank 1 printed on stdout: $(cat "$T/$1.1.out")"
  return 0
}
same_bpb() {  # name one two: |d bpb| <= 1e-6, same targets and bytes
  local b1 b2
  b1=$(json "$2" bpb)
  b2=$(json "$3" bpb)
  awk -v a="$b1" -v b="$b2" 'BEGIN{d=a-b; if (d<0) d=-d; exit !(d <= 1e-6)}' || fail "$1: bpb $b1 (1 rank) vs $b2 (2 ranks)"
  for k in targets bytes windows; do
    [ "$(json "$2" $k)" = "$(json "$3" $k)" ] || fail "$1: $k $(json "$2" $k) vs $(json "$3" $k)"
  done
  echo "$1: bpb 1 rank $b1, 2 ranks $b2 (|d| = $(awk -v a="$b1" -v b="$b2" 'BEGIN{d=a-b; if (d<0) d=-d; printf "%.3g", d}'))"
}

# The first 24 of 200 documents for validation, the rest for training.
head -n 200 "$SHARED/data/corpus/docs_val.jsonl" >"$T/docs.jsonl"
"$PGOLF" data build --docs "$T/docs.jsonl" --tokenizer "$TOK" --out "$T/shards" --val-docs 24 2>/dev/null
VAL="$T/shards/fineweb_val_*.bin"
TRAIN="$T/shards/fineweb_train_*.bin"
SET=(--set vocab_size=8192 --set num_layers=2 --set model_dim=64 --set num_heads=2 --set num_kv_heads=1 --set train_seq_len=128)

# ---- train: 1 rank against 2 (the same global batches: 10 rows of 128).
TRAIN_ARGS=(train --device cpu --train "$TRAIN" --val "$VAL" --tokenizer "$TOK" "${SET[@]}" --iterations 24 --batch-tokens 1280
            --warmdown-iters 8 --val-every 12 --log-every 100 --json)
t1=$("$PGOLF" "${TRAIN_ARGS[@]}" --out "$T/m1.h5" 2>"$T/train1.err")
run2_ok train2 "${TRAIN_ARGS[@]}" --out "$T/train2.h5"
t2=$(cat "$T/train2.0.out")
[ -e "$T/train2.h5" ] || fail "train: rank 0 wrote no checkpoint"
layout() { "$PGOLF" inspect "$1" --json 2>/dev/null | sed 's/"file":"[^"]*",//'; }  # config, tensors, shapes
[ "$(layout "$T/m1.h5")" = "$(layout "$T/train2.h5")" ] || fail "train: the checkpoints differ in config or tensors"
for k in first_train_loss last_train_loss val_bpb; do
  awk -v a="$(json "$t1" $k)" -v b="$(json "$t2" $k)" 'BEGIN{d=a-b; if (d<0) d=-d; exit !(d < 0.02)}' ||
    fail "train: $k $(json "$t1" $k) (1 rank) vs $(json "$t2" $k) (2 ranks)"
done
echo "train: last loss 1 rank $(json "$t1" last_train_loss), 2 ranks $(json "$t2" last_train_loss);" \
  "val_bpb $(json "$t1" val_bpb) vs $(json "$t2" val_bpb) (2 ranks: $SECONDS2 s)"

# The gradient all-reduce overlapped with backward or after it: the same bits.
# SMALL: 0.05 MB buckets, several per step (the default 25 MB holds this model in one).
SMALL=(--allreduce-bucket-mb 0.05)
same_training() {  # what: the checkpoints and losses of runs $2 and $3 identical
  cmp -s "$T/$2.h5" "$T/$3.h5" || fail "train $1: the checkpoints differ"
  local a b
  a=$(cat "$T/$2.0.out")
  b=$(cat "$T/$3.0.out")
  for k in first_train_loss last_train_loss val_bpb; do
    [ "$(json "$a" $k)" = "$(json "$b" $k)" ] || fail "train $1: $k $(json "$a" $k) vs $(json "$b" $k)"
  done
}
buckets() { echo "$(json "$(cat "$T/$1.0.out")" allreduce_buckets_in_backward)/$(json "$(cat "$T/$1.0.out")" allreduce_buckets)"; }
run2_ok train2_small "${TRAIN_ARGS[@]}" "${SMALL[@]}" --out "$T/train2_small.h5"
small_s=$SECONDS2
run2_ok train2_after "${TRAIN_ARGS[@]}" "${SMALL[@]}" --no-overlap-allreduce --out "$T/train2_after.h5"
grep -q "gradient all-reduce overlapped with backward" "$T/train2_small.0.err" || fail "train: the log does not say overlapped"
grep -q "gradient all-reduce after backward" "$T/train2_after.0.err" || fail "train: the log does not say after backward"
case $(buckets train2_small) in 0/* | */1) fail "train: overlap started $(buckets train2_small) buckets during backward" ;; esac
case $(buckets train2_after) in 0/*) ;; *) fail "train --no-overlap-allreduce started $(buckets train2_after) during backward" ;; esac
same_training "2 ranks, overlap: 1 bucket vs $(buckets train2_small | cut -d/ -f2)" train2 train2_small
same_training "2 ranks: overlap vs after backward" train2_small train2_after
echo "train: 2 ranks, all-reduce overlapped ($(buckets train2_small) buckets started during backward," \
  "$small_s s) and after backward ($SECONDS2 s): identical checkpoints and losses"
NR=3 run2_ok train3_small "${TRAIN_ARGS[@]}" "${SMALL[@]}" --out "$T/train3_small.h5"
small_s=$SECONDS2
NR=3 run2_ok train3_after "${TRAIN_ARGS[@]}" "${SMALL[@]}" --no-overlap-allreduce --out "$T/train3_after.h5"
same_training "3 ranks: overlap vs after backward" train3_small train3_after
echo "train: 3 ranks, all-reduce overlapped ($(buckets train3_small), $small_s s) and after backward" \
  "($SECONDS2 s): identical checkpoints and losses"

# --rank-shapes: listing the even split's shapes is the even split, bit for
# bit; mixed lengths (one rank 2 rows of 256, the other 6 of 128: 1,280 tokens)
# train and store the longest length in the config.
run2_ok train2_shapes "${TRAIN_ARGS[@]}" --rank-shapes 5x128,5x128 --out "$T/train2_shapes.h5"
same_training "2 ranks: --rank-shapes 5x128,5x128 vs the even split" train2 train2_shapes
run2_ok train2_mixed "${TRAIN_ARGS[@]}" --rank-shapes 2x256,6x128 --out "$T/train2_mixed.h5"
mixed=$(cat "$T/train2_mixed.0.out")
"$PGOLF" inspect "$T/train2_mixed.h5" --json | grep -q '"train_seq_len":256' || fail "train: mixed shapes did not store L = 256"
awk -v a="$(json "$mixed" last_train_loss)" -v b="$(json "$mixed" first_train_loss)" 'BEGIN{exit !(a < b)}' ||
  fail "train: mixed shapes did not lower the loss: $mixed"
echo "train: --rank-shapes 5x128,5x128 = the even split; 2x256,6x128: loss $(json "$mixed" first_train_loss) ->" \
  "$(json "$mixed" last_train_loss), train_seq_len 256 stored"

# ---- eval: standard, sliding with doc-mask (+ dumps), legacy.
EVAL=(eval --device cpu --model "$T/m1.h5" --val "$VAL" --tokenizer "$TOK" --json --quiet)
for variant in "standard" "sliding --stride 32 --doc-mask" "legacy --stride 48 --plan legacy"; do
  name=${variant%% *}
  read -r -a extra <<<"${variant#"$name"}"
  dump=()
  [ "$name" = sliding ] && dump=(--dump "$T/dump@R@.h5")
  one=$("$PGOLF" "${EVAL[@]}" "${extra[@]}" "${dump[@]//@R@/1}" 2>"$T/eval1.err")
  run2_ok "eval_$name" "${EVAL[@]}" "${extra[@]}" "${dump[@]//@R@/2}"
  same_bpb "eval $name" "$one" "$(cat "$T/eval_$name.0.out")"
done
# The first python3 with h5py: PATH's, then Debian's python3-h5py.
PY=
for p in python3 /usr/bin/python3; do
  if "$p" -c 'import h5py, numpy' 2>/dev/null; then PY=$p; break; fi
done
if [ -z "$PY" ]; then
  echo "eval --dump: not compared (no python3 with h5py: apt-get install python3-h5py)"
else "$PY" - "$T/dump1.h5" "$T/dump2.h5" <<'EOF' || fail "eval --dump: 2 ranks' per-token arrays differ from 1 rank's"
import sys, h5py, numpy as np
a, b = (h5py.File(p, "r") for p in sys.argv[1:])
for k in ("tokens/position", "tokens/nll", "tokens/bytes", "tokens/doc", "docs/bytes", "docs/targets"):
    if not np.array_equal(a[k][()], b[k][()]): print("differs:", k); sys.exit(1)
# Per-document sums: rank boundaries split documents, so the float64 order differs.
if not np.allclose(a["docs/nll"][()], b["docs/nll"][()], rtol=1e-12, atol=0): print("differs: docs/nll"); sys.exit(1)
print("eval --dump: per-token arrays identical for 1 and 2 ranks (%d scorings)" % len(a["tokens/nll"]))
EOF
fi

# ---- ttt: both recipes, scaled down; the numbers must be the same bits.
for recipe in lora-0317 varlen-0410; do
  TTT=(ttt --device cpu --model "$T/m1.h5" --val "$VAL" --tokenizer "$TOK" --recipe "$recipe" --rank 4 --chunk 32 --context 128
       --batch-docs 4 --trim 128 --json --quiet)
  dump=()
  [ "$recipe" = lora-0317 ] && dump=(--dump "$T/ttt_dump@R@.h5" --timeline "$T/ttt_timeline@R@.tsv")
  one=$("$PGOLF" "${TTT[@]}" "${dump[@]//@R@/1}" 2>"$T/ttt1.err")
  run2_ok "ttt_$recipe" "${TTT[@]}" "${dump[@]//@R@/2}"
  two=$(cat "$T/ttt_$recipe.0.out")
  for k in bpb bpb_base bpb_stderr gain_stderr targets bytes docs batches steps updates; do
    [ "$(json "$one" $k)" = "$(json "$two" $k)" ] || fail "ttt $recipe: $k $(json "$one" $k) (1 rank) vs $(json "$two" $k) (2 ranks)"
  done
  if [ "$recipe" = lora-0317 ]; then  # --timeline: a header and one line per step (rank 0's)
    lines=$(wc -l <"$T/ttt_timeline1.tsv")
    [ "$lines" = $(($(json "$one" steps) + 1)) ] || fail "ttt --timeline: $lines lines for $(json "$one" steps) steps"
    [ "$(head -1 "$T/ttt_timeline1.tsv" | cut -f10)" = device_end_ms ] || fail "ttt --timeline: bad header"
  fi
  echo "ttt $recipe: bpb $(json "$one" bpb) ± $(json "$one" bpb_stderr), identical on 2 ranks" \
    "($(json "$one" docs) documents in $(json "$one" batches) batches; 2 ranks: $SECONDS2 s)"
done

# ttt --dump: per-document and per-chunk arrays the same bits on 1 and 2 ranks; report draws the gain by chunk.
if [ -n "$PY" ]; then
  "$PY" - "$T/ttt_dump1.h5" "$T/ttt_dump2.h5" <<'EOF' || fail "ttt --dump: 2 ranks' arrays differ from 1 rank's"
import sys, h5py, numpy as np
a, b = (h5py.File(p, "r") for p in sys.argv[1:])
assert a.attrs["kind"] == "ttt", a.attrs["kind"]
keys = ("docs/start", "docs/length", "docs/nll", "docs/nll_base", "docs/bytes", "docs/targets",
        "chunks/doc", "chunks/index", "chunks/nll", "chunks/nll_base", "chunks/bytes")
for k in keys:
    if not np.array_equal(a[k][()], b[k][()]): print("differs:", k); sys.exit(1)
if not np.isclose(a["chunks/nll"][()].sum(), a["docs/nll"][()].sum(), rtol=1e-12): print("chunks do not sum to docs"); sys.exit(1)
print("ttt --dump: %d documents, %d chunks, identical for 1 and 2 ranks" % (len(a["docs/nll"]), len(a["chunks/nll"])))
EOF
fi
"$PGOLF" report "$T/ttt_dump1.h5" --out "$T/ttt_fig" >/dev/null 2>"$T/report.err" || fail "report of the ttt dump: $(cat "$T/report.err")"
[ -s "$T/ttt_fig_ttt_gain.svg" ] || fail "report of the ttt dump wrote no ttt_gain figure"

# ---- failure: a bad --val on one rank stops both ranks, non-zero, in bounded time.
# Rank `bad` gets a glob that matches nothing, the other the real shards; rank 0
# hosts the store, so both directions are tried.
for bad in 1 0; do
  ok=$(ls $VAL | head -1)
  port=$(free_port)
  start=$EPOCHREALTIME
  pids=()
  for r in 0 1; do
    v=$ok
    [ "$r" = "$bad" ] && v="$T/missing_*.bin"
    WORLD_SIZE=2 RANK=$r LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      timeout 60 "$PGOLF" eval --device cpu --model "$T/m1.h5" --val "$v" --tokenizer "$TOK" --stride 16 --quiet \
      >/dev/null 2>"$T/fail$bad.$r.err" &
    pids+=($!)
  done
  rc0=0 rc1=0
  wait "${pids[0]}" || rc0=$?
  wait "${pids[1]}" || rc1=$?
  took=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b - a}')
  [ "$rc0" != 0 ] && [ "$rc1" != 0 ] || fail "failure on rank $bad: exit codes $rc0 / $rc1"
  [ "$rc0" != 124 ] && [ "$rc1" != 124 ] || fail "failure on rank $bad: a rank hung until the 60 s timeout"
  grep -q "pgolf: error: rank $bad: .*missing_\*.bin: glob matches no files" "$T/fail$bad.$bad.err" ||
    fail "failure on rank $bad: its error: $(cat "$T/fail$bad.$bad.err")"
  other=$((1 - bad))
  grep -q "pgolf: error: rank $other: stopping" "$T/fail$bad.$other.err" ||
    fail "failure on rank $bad: rank $other said: $(cat "$T/fail$bad.$other.err")"
  echo "failure on rank $bad: both ranks exited non-zero ($rc0 / $rc1) after $took s; rank $other: $(head -1 "$T/fail$bad.$other.err")"
done

# ---- a crashed store host (rank 0 killed mid-run, no error path): rank 1 stops.
port=$(free_port)
KILL_EVAL=(eval --device cpu --model "$T/m1.h5" --val "$VAL" --tokenizer "$TOK" --stride 1 --quiet)
WORLD_SIZE=2 RANK=0 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "$PGOLF" "${KILL_EVAL[@]}" \
  >/dev/null 2>"$T/kill.0.err" &
kpid0=$!
# (A short store timeout: should rank 0 die before rank 1 joined, rank 1 stops too.)
PGOLF_DIST_TIMEOUT=20 WORLD_SIZE=2 RANK=1 LOCAL_RANK=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
  timeout 60 "$PGOLF" "${KILL_EVAL[@]}" \
  >/dev/null 2>"$T/kill.1.err" &
kpid1=$!
sleep 3
kill -9 "$kpid0"
start=$EPOCHREALTIME
{ wait "$kpid0"; } 2>/dev/null || true  # (quiet: bash reports the kill)
rc1=0
wait "$kpid1" || rc1=$?
took=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b - a}')
[ "$rc1" != 0 ] && [ "$rc1" != 124 ] || fail "rank 0 killed: rank 1 exited $rc1 (124: hung)"
grep -q "pgolf: error: rank 1: .*\(stopping: lost\|cannot reach\) the job's store" "$T/kill.1.err" || fail "rank 0 killed: rank 1 said: $(cat "$T/kill.1.err")"
echo "rank 0 killed: rank 1 exited $rc1 after $took s: $(head -1 "$T/kill.1.err")"

# ---- ttt --audit is single-rank.
WORLD_SIZE=2 RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 "$PGOLF" ttt --model "$T/m1.h5" --val "$VAL" \
  --tokenizer "$TOK" --audit 2>"$T/audit.err" && fail "ttt --audit ran with WORLD_SIZE=2"
grep -q "ttt --audit runs on one rank" "$T/audit.err" || fail "ttt --audit: $(cat "$T/audit.err")"
echo "1 passed, 0 failed"
