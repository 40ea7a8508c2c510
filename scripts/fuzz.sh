#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, clang++ with ASan + UBSan) and runs
# each for SECONDS (default 60) on a corpus seeded at run time. Exits non-zero
# on any crash, sanitizer report, leak, timeout or out-of-memory; the input
# that caused it is left in $DIR/crashes/.
#   bash scripts/fuzz.sh [SECONDS]        DIR: $PGOLF_FUZZ_DIR, default build/fuzz
# The corpus ($DIR/corpus/<target>) persists between runs, so later runs start
# where earlier ones stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-60}"
DIR="${PGOLF_FUZZ_DIR:-build/fuzz}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ is missing (run scripts/install-deps.sh)" >&2; exit 1; }

cmake -S tests/fuzz -B "$DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ >/dev/null
cmake --build "$DIR" -j "$(nproc)" >&2

status=0
# target:max_len -- room for the seeds plus growth.
for spec in fuzz_artifact:8192 fuzz_torch_archive:4096; do
  t="${spec%%:*}" max_len="${spec##*:}"
  corpus="$DIR/corpus/$t" seeds="$DIR/seeds/$t"
  rm -rf "$seeds"
  mkdir -p "$corpus" "$seeds" "$DIR/crashes"
  PGOLF_FUZZ_WRITE_SEEDS="$seeds" "$DIR/$t"
  echo "fuzz.sh: $t for ${SECS}s (log: $DIR/$t.log)" >&2
  if "$DIR/$t" -max_total_time="$SECS" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
       -artifact_prefix="$DIR/crashes/$t-" -print_final_stats=1 "$corpus" "$seeds" >"$DIR/$t.log" 2>&1; then
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$DIR/$t.log" | tr '\n' ' ' >&2
    echo >&2
  else
    status=1
    echo "fuzz.sh: $t FAILED; the end of its log:" >&2
    tail -n 60 "$DIR/$t.log" >&2
  fi
done
exit "$status"
