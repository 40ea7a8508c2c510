#!/usr/bin/env bash
# Installs what pgolf needs on Debian 12 (idempotent; quiet when all is there).
set -euo pipefail
PKGS=(build-essential cmake ninja-build ccache
      libtorch-dev libopenblas0-pthread   # without OpenBLAS libtorch's matmul runs ~28x slower
      libgloo-dev                         # headers of libtorch's ProcessGroupGloo (multi-rank CPU runs)
      libzstd-dev libbrotli-dev libhdf5-dev libsentencepiece-dev zlib1g-dev
      nlohmann-json3-dev libcli11-dev libgtest-dev
      python3-h5py                           # the test that h5py reads pgolf checkpoints
      clang libclang-rt-dev)                 # libFuzzer + sanitizers (scripts/fuzz.sh)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done
command -v npm >/dev/null || missing+=(npm)   # `pgolf data fetch-demo` uses the npm client
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "installing: ${missing[*]}" >&2
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
