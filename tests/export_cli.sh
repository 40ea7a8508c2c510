#!/usr/bin/env bash
# `pgolf export`: a quantized artifact -> the reference's final_model.int6.ptz,
# or the same artifact with its values coded again (--format pgz).
#  - `pgolf eval` of the export gives the .pgz's bpb: exactly for a model in
#    the reference's dtypes (tok_emb bf16, the rest float32), and within the
#    bf16 rounding of tok_emb (which the reference's loader applies) for a
#    float32 model;
#  - the --raw torch.save archive passes tests/export_check.py (CPython's
#    pickler and zipfile as judges) when python3 is there;
#  - bad input: one line on stderr naming the file, exit code 1, no output.
set -u
PGOLF=$1
SHARED=$2
HERE=$(cd "$(dirname "$0")" && pwd)
TOK=$SHARED/data/fineweb_8192_bpe.model
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
failures=0 count=0
json() { sed -n "s/.*\"$2\":\([-0-9.eE+]*\).*/\1/p" <<<"$1"; }
check() {  # check NAME CONDITION-COMMAND...
  local name=$1
  shift
  count=$((count + 1))
  if "$@"; then echo "ok   $name"; else echo "FAIL $name"; failures=$((failures + 1)); fi
}
expect_error() {  # expect_error NAME PATTERN -- command...
  local name=$1 pattern=$2
  shift 3
  count=$((count + 1))
  "$@" >"$T/.stdout" 2>"$T/err"
  local rc=$? lines
  lines=$(wc -l <"$T/err")
  if [ "$rc" -ne 1 ] || [ "$lines" -ne 1 ] || ! grep -qF -- "$pattern" "$T/err" || [ -s "$T/.stdout" ]; then
    echo "FAIL $name: rc=$rc, $lines stderr line(s), want '$pattern'"
    sed 's/^/    /' "$T/err" | head -5
    failures=$((failures + 1))
  else
    echo "ok   $name: $(cat "$T/err")"
  fi
}
run() {  # run quietly; on failure show the output and stop
  if ! "$@" >"$T/.out" 2>&1; then
    echo "FAIL: $*"
    sed 's/^/    /' "$T/.out" | tail -5
    exit 1
  fi
}

# 16,384 targets of the shared validation shard (its first 16,385 tokens).
perl -e 'open(my $i, "<:raw", $ARGV[0]) or die; read($i, my $h, 1024); read($i, my $t, 2 * 16385);
         open(my $o, ">:raw", $ARGV[1]) or die; print $o pack("l<256", 20240520, 1, 16385, (0) x 253), $t;' \
  "$SHARED/data/corpus/fineweb_val_000000.bin" "$T/val.bin"
EVAL=(--val "$T/val.bin" --tokenizer "$TOK" --json --quiet)

# A float32 model, quantized with the reference's widths (int6 matrices, int8 tok_emb).
run "$PGOLF" init --set vocab_size=8192 --set num_layers=2 --set model_dim=32 --set num_heads=2 --set num_kv_heads=1 \
  --out "$T/m.h5"
run "$PGOLF" quantize --checkpoint "$T/m.h5" --method rtn --passthrough-max-numel 100 --out "$T/a.pgz" --quiet
out=$("$PGOLF" export "$T/a.pgz" --out "$T/a.int6.ptz" --json 2>"$T/a.log")
check "export writes final_model.int6.ptz and reports it" \
  test -s "$T/a.int6.ptz" -a "$(json "$out" quantized)" = 13 -a "$(json "$out" passthrough)" = 9
b_pgz=$("$PGOLF" eval --model "$T/a.pgz" "${EVAL[@]}" 2>/dev/null)
b_ptz=$("$PGOLF" eval --model "$T/a.int6.ptz" "${EVAL[@]}" 2>/dev/null)
p=$(json "$b_pgz" bpb) q=$(json "$b_ptz" bpb)
echo "     float32 model: bpb .pgz $p, .int6.ptz $q (tok_emb read as bf16, as the reference does)"
check "float32 model: the export's bpb is the .pgz's within tok_emb's bf16 rounding" \
  awk -v a="$p" -v b="$q" 'BEGIN{d=a-b; if (d<0) d=-d; exit !(a > 0 && d < 1e-4)}'
check "the export says so" grep -q "rounded to bf16" "$T/a.log"

# The same model as the reference holds it (read back from the export: tok_emb
# bf16, the rest float32), quantized again: now every tensor's dtype is the
# reference's and the export must score exactly as the .pgz.
run "$PGOLF" quantize --checkpoint "$T/a.int6.ptz" --method rtn --passthrough-max-numel 100 --out "$T/r.pgz" --quiet
run "$PGOLF" export "$T/r.pgz" --out "$T/r.int6.ptz"
b_pgz=$("$PGOLF" eval --model "$T/r.pgz" "${EVAL[@]}" 2>/dev/null)
b_ptz=$("$PGOLF" eval --model "$T/r.int6.ptz" "${EVAL[@]}" 2>/dev/null)
p=$(json "$b_pgz" bpb) q=$(json "$b_ptz" bpb)
echo "     reference dtypes: bpb .pgz $p, .int6.ptz $q"
check "reference dtypes: pgolf eval of the export gives the .pgz's bpb exactly" test -n "$p" -a "$p" = "$q"
check "... and the same loss" test "$(json "$b_pgz" loss)" = "$(json "$b_ptz" loss)"

# --format pgz: each coding gives the same model (bpb and loss to the last digit);
# a trained-like tensor is not needed for that, only for the sizes.
for c in context context+linear entropy brotli auto; do
  out=$("$PGOLF" export "$T/r.pgz" --format pgz --codec $c --out "$T/r.$c.pgz" --json 2>/dev/null)
  e=$("$PGOLF" eval --model "$T/r.$c.pgz" "${EVAL[@]}" 2>/dev/null)
  check "--format pgz --codec $c: the same bpb and loss" \
    test -n "$(json "$e" bpb)" -a "$(json "$e" bpb)" = "$(json "$b_pgz" bpb)" -a "$(json "$e" loss)" = "$(json "$b_pgz" loss)"
  check "--format pgz --codec $c: reports the file's size" test "$(json "$out" file_bytes)" = "$(stat -c %s "$T/r.$c.pgz")"
done
check "--codec auto is no larger than any single coding" test "$(stat -c %s "$T/r.auto.pgz")" -le "$(stat -c %s "$T/r.context.pgz")" \
  -a "$(stat -c %s "$T/r.auto.pgz")" -le "$(stat -c %s "$T/r.entropy.pgz")" -a "$(stat -c %s "$T/r.auto.pgz")" -le "$(stat -c %s "$T/r.brotli.pgz")"
check "--codec context codes every quantized tensor that way" grep -q '"codings":{"context":13}' \
  <("$PGOLF" export "$T/r.pgz" --format pgz --codec context --out "$T/r.context2.pgz" --json 2>/dev/null)

# The torch.save archive itself, judged by CPython.
run "$PGOLF" export "$T/r.pgz" --out "$T/r.raw" --raw
if command -v python3 >/dev/null; then
  count=$((count + 1))
  if python3 "$HERE/export_check.py" "$T/r.raw" >"$T/py.log" 2>&1; then
    echo "ok   export_check.py (CPython pickle + zipfile):"
    sed 's/^/       /' "$T/py.log"
  else
    echo "FAIL export_check.py"
    sed 's/^/    /' "$T/py.log"
    failures=$((failures + 1))
  fi
else
  echo "skip export_check.py: no python3"
fi

# Errors: one line naming the file, exit 1, nothing written.
expect_error export-checkpoint "$T/m.h5: not a pgolf artifact" -- "$PGOLF" export "$T/m.h5" --out "$T/x.int6.ptz"
expect_error export-format "--format: unknown format 'int8.ptz'" -- \
  "$PGOLF" export "$T/a.pgz" --format int8.ptz --out "$T/x.int6.ptz"
expect_error export-codec "--codec must be auto, context, context+linear, entropy, brotli or zstd, got 'lzma'" -- \
  "$PGOLF" export "$T/a.pgz" --format pgz --codec lzma --out "$T/x.pgz"
expect_error export-codec-format "--codec applies to --format pgz only" -- \
  "$PGOLF" export "$T/a.pgz" --codec context --out "$T/x.int6.ptz"
head -c 1000 "$T/a.pgz" >"$T/trunc.pgz"
expect_error export-truncated "$T/trunc.pgz: " -- "$PGOLF" export "$T/trunc.pgz" --out "$T/x.int6.ptz"
check "failed exports left nothing behind" test -z "$(ls "$T" | grep '^x\.')"

echo "$((count - failures)) passed, $failures failed"
[ "$failures" -eq 0 ]
