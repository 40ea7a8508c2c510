#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu_build.sh has built $BUILD_DIR
# (build-gpu): pgolf's import of files written by the parameter-golf scripts'
# own code, checked against the reference forward's per-token NLL.
#   1. scripts/ref_import_check.py (CUDA, bf16 autocast, torch.compile as the
#      reference evaluates) writes final_model.pt + final_model.int8.ptz
#      (baseline) and final_model.pt + final_model.int6.ptz (frontier, GPTQ
#      calibrated on the shared training shard) with the reference scripts'
#      code from .carry/ref/, and each file's reference NLL on a fixed batch;
#   2. pgolf_ref_import_check imports each file and compares: with the run's
#      --set overrides, then with the config from the tensors and preset only.
# Needs .carry/ref/{train_gpt.py,2026-04-10_VarLenAttn/train_gpt.py} (copies of
# the reference scripts; never in the repository) and .carry/shared/data/corpus
# (scripts/gpu_carry.sh). The model files (~240 MB) go to $REF_IMPORT_DIR
# (/tmp/ref_import); logs, the manifest, tokens and NLL arrays to ${OUT:-/tmp};
# the tables are printed last; the exit code is the check's. REF_DEVICE=cpu
# PYTHON=... runs the same on a CPU machine (float32 on both sides).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD_DIR:-build-gpu}
O=${OUT:-/tmp}
mkdir -p "$O"
R=${REF_IMPORT_DIR:-/tmp/ref_import}
for f in .carry/ref/train_gpt.py .carry/ref/2026-04-10_VarLenAttn/train_gpt.py \
         .carry/shared/data/corpus/fineweb_val_000000.bin .carry/shared/data/corpus/fineweb_train_000000.bin; do
  [ -f "$f" ] || { echo "gpu_ref_import: missing $f" >&2; exit 2; }
done
if ! cmake --build "$B" --target pgolf_ref_import_check >"$O/ref_import_build.log" 2>&1; then
  grep -E -A8 "error|FAILED" "$O/ref_import_build.log" | head -60
  exit 2
fi
t0=$EPOCHREALTIME
if ! "${PYTHON:-python3}" scripts/ref_import_check.py --ref-dir .carry/ref --data .carry/shared/data/corpus \
     --out "$R" --device "${REF_DEVICE:-cuda}" ${REF_IMPORT_ARGS:-} >"$O/ref_import_py.log" 2>&1; then
  tail -40 "$O/ref_import_py.log"
  exit 2
fi
t1=$EPOCHREALTIME
rc=0
"$B/pgolf_ref_import_check" "$R" >"$O/ref_import_table.txt" 2>"$O/ref_import_check.log" || rc=$?
rc2=0
"$B/pgolf_ref_import_check" "$R" --no-sets >"$O/ref_import_table_nosets.txt" 2>>"$O/ref_import_check.log" || rc2=$?
[ "$rc" -ne 0 ] || rc=$rc2
t2=$EPOCHREALTIME
mkdir -p "$O/ref_import" && cp "$R"/manifest.json "$R"/*.i32 "$R"/*.f32 "$O/ref_import/"
grep -E "^ref_import_check|mean reference NLL|wrote" "$O/ref_import_py.log" || true
awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN{printf "reference side %.0f s, pgolf side %.0f s\n", b-a, c-b}'
sort -u "$O/ref_import_check.log"
cat "$O/ref_import_table_nosets.txt"
cat "$O/ref_import_table.txt"
exit $rc
