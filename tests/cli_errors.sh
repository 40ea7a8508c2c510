#!/usr/bin/env bash
# The pgolf binary's contract for bad input: exit code 1, exactly one line on
# stderr that names the file and the problem, nothing on stdout, and no
# partial output left behind.
set -u
PGOLF=$1
SHARED=$2
TOK=$SHARED/data/fineweb_8192_bpe.model
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
failures=0 count=0

# expect_error NAME PATTERN -- command...
expect_error() {
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

shard() {  # shard FILE MAGIC VERSION COUNT PAYLOAD_TOKENS [EXTRA_BYTES]
  perl -e 'my ($f, $m, $v, $n, $p, $x) = @ARGV; open(my $o, ">:raw", $f) or die;
           print $o pack("l<256", $m, $v, $n, (0) x 253), pack("v*", map { ($_ * 31 + 1) % 8192 } 0 .. $p - 1), "\0" x ($x // 0);' "$@"
}

shard "$T/magic.bin" 1234 1 8 8
shard "$T/version.bin" 20240520 7 8 8
shard "$T/trunc.bin" 20240520 1 100 8
shard "$T/odd.bin" 20240520 1 8 8 1
shard "$T/ok.bin" 20240520 1 8 8
perl -e 'open(my $o, ">:raw", $ARGV[0]) or die; print $o pack("l<256", 20240520, 1, 3, (0) x 253), pack("v*", 1, 9000, 5);' "$T/bigid.bin"
printf 'not a model\n' >"$T/text.model"
printf '{"text": "fine"}\n{"body": "no text"}\n' >"$T/notext.jsonl"
printf '{"text": "fine"}\n{"text": "broken\n' >"$T/badjson.jsonl"

expect_error wrong-magic "$T/magic.bin: wrong magic 1234" -- "$PGOLF" data inspect "$T/magic.bin"
expect_error wrong-version "$T/version.bin: unsupported shard version 7" -- "$PGOLF" data inspect "$T/version.bin"
expect_error truncated "$T/trunc.bin: truncated shard" -- "$PGOLF" data inspect "$T/trunc.bin"
expect_error odd-size "$T/odd.bin: odd-sized shard" -- "$PGOLF" data inspect "$T/odd.bin"
expect_error id-above-vocab "$T/bigid.bin: token id 9000 at position 1 is >= vocab size 8192" -- \
  "$PGOLF" data bytes --val "$T/bigid.bin" --tokenizer "$TOK"
expect_error not-a-tokenizer "$T/text.model: not a SentencePiece model" -- \
  "$PGOLF" data bytes --val "$T/ok.bin" --tokenizer "$T/text.model"
expect_error shard-as-tokenizer "$T/ok.bin: not a SentencePiece model" -- \
  "$PGOLF" data inspect "$T/ok.bin" --tokenizer "$T/ok.bin"
expect_error empty-glob "$T/nothing_*.bin: glob matches no files" -- "$PGOLF" data inspect "$T/nothing_*.bin"
expect_error missing-file "$T/missing.bin: no such file" -- "$PGOLF" data inspect "$T/missing.bin"

mkdir -p "$T/out"
shard "$T/out/fineweb_val_000000.bin" 20240520 1 8 8
before=$(sha256sum "$T/out/fineweb_val_000000.bin")
expect_error json-without-text "$T/notext.jsonl:2: no \"text\" field" -- \
  "$PGOLF" data build --docs "$T/notext.jsonl" --tokenizer "$TOK" --out "$T/out" --val-docs 1 --shard-tokens 2
expect_error invalid-json "$T/badjson.jsonl:2: invalid JSON" -- \
  "$PGOLF" data build --docs "$T/badjson.jsonl" --tokenizer "$TOK" --out "$T/out" --val-docs 1
expect_error build-bad-tokenizer "$T/text.model: not a SentencePiece model" -- \
  "$PGOLF" data build --docs "$T/notext.jsonl" --tokenizer "$T/text.model" --out "$T/out" --val-docs 1
count=$((count + 1))
if [ "$(ls -A "$T/out")" != "fineweb_val_000000.bin" ] || [ "$(sha256sum "$T/out/fineweb_val_000000.bin")" != "$before" ]; then
  echo "FAIL build left partial output: $(ls -A "$T/out")"
  failures=$((failures + 1))
else
  echo "ok   failed builds left the output directory as it was"
fi
expect_error train-json-without-text "$T/notext.jsonl:2: no \"text\" field" -- \
  "$PGOLF" data train-tokenizer --docs "$T/notext.jsonl" --vocab-size 300 --out "$T/tok"
count=$((count + 1))
if ls "$T"/tok.* >/dev/null 2>&1; then
  echo "FAIL train-tokenizer left files behind"; failures=$((failures + 1))
fi

# pgolf ttt: bad knobs are refused before anything is loaded; then eval's model/tokenizer/val checks.
expect_error ttt-rank-zero "ttt: the LoRA rank must be >= 1, got 0" -- \
  "$PGOLF" ttt --model "$T/missing.h5" --val "$T/ok.bin" --tokenizer "$TOK" --rank 0
expect_error ttt-chunk-over-context "ttt: chunk size 300 exceeds the context length 256" -- \
  "$PGOLF" ttt --model "$T/missing.h5" --val "$T/ok.bin" --tokenizer "$TOK" --chunk 300 --context 256
expect_error ttt-unknown-target "ttt: unknown LoRA target 'x'" -- \
  "$PGOLF" ttt --model "$T/missing.h5" --val "$T/ok.bin" --tokenizer "$TOK" --targets q,x
"$PGOLF" init --set vocab_size=512 --set num_layers=1 --set model_dim=32 --out "$T/small.h5" >/dev/null 2>&1
expect_error ttt-wrong-tokenizer "$TOK: tokenizer has 8192 pieces but the model's vocab_size is 512" -- \
  "$PGOLF" ttt --model "$T/small.h5" --val "$T/ok.bin" --tokenizer "$TOK" --device cpu
"$PGOLF" init --set vocab_size=8192 --set num_layers=1 --set model_dim=32 --out "$T/small8k.h5" >/dev/null 2>&1
expect_error ttt-empty-glob "$T/nothing_*.bin: glob matches no files" -- \
  "$PGOLF" ttt --model "$T/small8k.h5" --val "$T/nothing_*.bin" --tokenizer "$TOK" --device cpu

# pgolf eval --compare-to: models of one vocabulary (and, for --per-class, one config).
expect_error compare-vocab "$T/small.h5: vocab_size 512 but $T/small8k.h5 has 8192: models compared must share a tokenizer" -- \
  "$PGOLF" eval --model "$T/small8k.h5" --compare-to "$T/small.h5" --val "$T/ok.bin" --tokenizer "$TOK" --device cpu
"$PGOLF" init --set vocab_size=8192 --set num_layers=2 --set model_dim=32 --out "$T/small8k2.h5" >/dev/null 2>&1
expect_error compare-per-class-config "$T/small8k2.h5: config differs from $T/small8k.h5's (\"num_layers\": 2 against \"num_layers\": 1)" -- \
  "$PGOLF" eval --model "$T/small8k.h5" --compare-to "$T/small8k2.h5" --per-class --val "$T/ok.bin" --tokenizer "$TOK" --device cpu
expect_error per-class-alone "--per-class needs --compare-to" -- \
  "$PGOLF" eval --model "$T/small8k.h5" --val "$T/ok.bin" --tokenizer "$TOK" --per-class

# pgolf eval --plan: names, and what the streaming plan does not take.
expect_error eval-plan-unknown "--plan must be current, legacy or streaming, got 'x'" -- \
  "$PGOLF" eval --model "$T/small8k.h5" --val "$T/ok.bin" --tokenizer "$TOK" --device cpu --stride 4 --plan x
expect_error eval-streaming-doc-mask "--doc-mask does not apply to --plan streaming" -- \
  "$PGOLF" eval --model "$T/small8k.h5" --val "$T/ok.bin" --tokenizer "$TOK" --device cpu --plan streaming --doc-mask
expect_error eval-streaming-chunk "--stride (the streaming chunk) must be in [1, L=1024]" -- \
  "$PGOLF" eval --model "$T/small8k.h5" --val "$T/ok.bin" --tokenizer "$TOK" --device cpu --plan streaming --stride 5000
expect_error compare-streaming "--compare-to runs on window plans, not --plan streaming" -- \
  "$PGOLF" eval --model "$T/small8k.h5" --compare-to "$T/small8k2.h5" --val "$T/ok.bin" --tokenizer "$TOK" --device cpu --plan streaming

# pgolf train: bad training options, before any step.
TRAIN=(train --device cpu --train "$T/ok.bin" --val "$T/ok.bin" --tokenizer "$TOK" --set vocab_size=8192
       --set num_layers=1 --set model_dim=16 --set num_heads=2 --set num_kv_heads=1 --set train_seq_len=4 --out "$T/t.h5")
expect_error train-rank-shapes-syntax "--rank-shapes: '5x' is not ROWSxLENGTH or COUNT*ROWSxLENGTH with positive numbers" -- \
  "$PGOLF" "${TRAIN[@]}" --rank-shapes 5x
expect_error train-rank-shapes-count "train: --rank-shapes gives 2 shapes for 1 ranks" -- \
  "$PGOLF" "${TRAIN[@]}" --rank-shapes 1x4,1x4
expect_error train-grad-accum "train: --grad-accum 3 needs at least that many rows of 4 tokens per rank; this rank has 2" -- \
  "$PGOLF" "${TRAIN[@]}" --batch-tokens 8 --grad-accum 3
expect_error train-ema "train: --ema-decay must be in [0, 1)" -- "$PGOLF" "${TRAIN[@]}" --ema-decay 1.5

# pgolf report: a file that is not an HDF5 eval dump.
expect_error report-not-hdf5 "$T/ok.bin: not an HDF5 file" -- "$PGOLF" report "$T/ok.bin" --out "$T/fig"

echo "$((count - failures)) passed, $failures failed"
[ "$failures" -eq 0 ]
