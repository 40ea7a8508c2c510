#!/usr/bin/env bash
# Multi-GPU check and scaling (issue 7) on the GPU machine, after
# scripts/gpu_build.sh: the same eval, TTT and training jobs on 1 GPU and on N
# (torchrun --standalone --nproc_per_node=N --no-python), the numbers compared
# (eval |d bpb| <= 1e-6; TTT bpb, base bpb and standard errors identical) and
# the speed-up and scaling efficiency printed as a table. Environment:
# BUILD_DIR (build-gpu), NPROC (all GPUs), MODEL (a baseline-shaped model, made
# if missing), TTT_DOCS (256), RECIPE (varlen-0410).
set -euo pipefail
cd "$(dirname "$0")/.."
# NVLink multicast stays off on these machines (the device notes say why).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
B=${BUILD_DIR:-build-gpu}
N=${NPROC:-$(nvidia-smi -L | wc -l)}
C=$PWD/.carry
VAL="$C/shared/data/corpus/fineweb_val_000000.bin"
TRAIN="$C/shared/data/corpus/fineweb_train_000000.bin"
TOK="$C/shared/data/fineweb_8192_bpe.model"
MODEL=${MODEL:-/tmp/base8192.h5}
O=${OUT:-/tmp}
[ "$N" -ge 2 ] || { echo "gpu_multi_rank: needs 2+ GPUs, $N visible" >&2; exit 1; }
[ -e "$MODEL" ] || "$B/pgolf" init --set vocab_size=8192 --out "$MODEL" 2>/dev/null

# launch NPROC NAME ARGS...: rank 0's stdout in $O/mr_NAME_NPROC.json, stderr in .log.
launch() {
  local n=$1 name=$2
  shift 2
  if [ "$n" = 1 ]; then
    "$B/pgolf" "$@" >"$O/mr_${name}_1.json" 2>"$O/mr_${name}_1.log"
  else
    torchrun --standalone --nproc_per_node="$n" --no-python "$B/pgolf" "$@" >"$O/mr_${name}_$n.json" \
      2>"$O/mr_${name}_$n.log"
  fi
}

EVAL=(eval --model "$MODEL" --val "$VAL" --tokenizer "$TOK" --json --quiet)
TTT=(ttt --model "$MODEL" --val "$VAL" --tokenizer "$TOK" --recipe "${RECIPE:-varlen-0410}" --max-docs "${TTT_DOCS:-256}"
     --json --quiet)
TRAIN_ARGS=(train --train "$TRAIN" --val "$VAL" --tokenizer "$TOK" --set vocab_size=8192 --iterations 30
            --batch-tokens 131072 --log-every 10 --json)
for n in 1 "$N"; do
  launch "$n" eval_std "${EVAL[@]}"
  launch "$n" eval_sw "${EVAL[@]}" --stride 64
  launch "$n" ttt "${TTT[@]}"
  launch "$n" train "${TRAIN_ARGS[@]}" --out "/tmp/mr_train_$n.h5"
done

python3 - "$O" "$N" <<'EOF'
import json, sys
out, n = sys.argv[1], int(sys.argv[2])
load = lambda name, k: json.load(open(f"{out}/mr_{name}_{k}.json"))
print(f"| job | 1 GPU s | {n} GPUs s | speed-up | efficiency | numbers |")
print("|---|---|---|---|---|---|")
ok = True
for name, secs in (("eval_std", "eval_seconds"), ("eval_sw", "eval_seconds"), ("ttt", "ttt_seconds"), ("train", "seconds")):
    a, b = load(name, 1), load(name, n)
    if name.startswith("eval"):
        same = abs(a["bpb"] - b["bpb"]) <= 1e-6 and a["targets"] == b["targets"] and a["bytes"] == b["bytes"]
        what = f"bpb {a['bpb']:.8f} / {b['bpb']:.8f}"
    elif name == "ttt":
        same = all(a[k] == b[k] for k in ("bpb", "bpb_base", "bpb_stderr", "gain_stderr", "targets", "bytes"))
        what = f"bpb {a['bpb']:.8f} / {b['bpb']:.8f}"
    else:
        same = abs(a["last_train_loss"] - b["last_train_loss"]) < 0.05
        what = f"loss {a['last_train_loss']:.4f} / {b['last_train_loss']:.4f}"
    ok &= same
    s = a[secs] / b[secs]
    print(f"| {name} | {a[secs]:.2f} | {b[secs]:.2f} | {s:.2f}x | {100 * s / n:.0f}% | {what} {'ok' if same else 'DIFFER'} |")
sys.exit(0 if ok else 1)
EOF
