#!/usr/bin/env bash
# On the CPU machine: fills .carry/ (git-ignored) with what scripts/gpu_build.sh
# needs on the GPU machine, which has no package registry and no ../shared.
set -euo pipefail
cd "$(dirname "$0")/.."
C=.carry
mkdir -p $C/debs $C/shared/data/corpus $C/cache/demo
ls $C/debs/libbrotli-dev_*.deb >/dev/null 2>&1 || (cd $C/debs && apt-get download libbrotli-dev)
for f in data/fineweb_8192_bpe.model data/fineweb_8192_bpe.bytes.tsv data/corpus/fineweb_val_000000.bin \
         data/corpus/fineweb_train_000000.bin data/corpus/fineweb_train_000001.bin data/corpus/fineweb_train_000002.bin \
         data/corpus/docs_val.jsonl; do
  cp -u ../shared/$f $C/shared/$f
done
build/pgolf data fetch-demo --cache $C/cache --out /tmp/pgolf-carry-docs.jsonl >/dev/null
du -sh $C
