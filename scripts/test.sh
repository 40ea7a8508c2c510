#!/usr/bin/env bash
# The whole CPU test suite: installs dependencies, builds, fetches the demo
# corpus into the cache (so its end-to-end test runs), and runs every CTest
# test that does not need a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
[ -d ../shared/data ] || { echo "test.sh: ../shared (tokenizer and corpus) is missing" >&2; exit 1; }
build/pgolf data fetch-demo --out build/demo/docs.jsonl
ctest --test-dir build --label-exclude gpu --output-on-failure -j "$(nproc)"
