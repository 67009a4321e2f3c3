#!/usr/bin/env bash
# GPU check of the CUDA backend: every CUDA op against its CPU twin, then the
# fused-kernel benchmarks against PyTorch on the same card (when python3 with
# a CUDA torch is there). Results: OUT_DIR/{env,parity,bench,torch,summary}.json,
# OUT_DIR/gpu-check.log, OUT_DIR/nvidia-smi.txt; a short table is printed last.
#
#   bash scripts/gpu-check.sh OUT_DIR [--dry-run] [--quick] [--no-torch] [--no-train] [--no-model]
#
# Needs only dist/, build/ and the production node_modules of the package.
# NODE=/path/to/node picks the Node binary (e.g. one unpacked beside the
# package on a machine without Node); PYTHON=... the Python for the torch peer.
# Without a GPU (or with --dry-run) it runs end to end on the CPU backend
# through the same code path and skips the GPU-only benchmarks.
set -uo pipefail
if [ $# -lt 1 ] || [ "${1#--}" != "$1" ]; then
  echo "usage: bash scripts/gpu-check.sh OUT_DIR [--dry-run] [--quick] [--no-torch] [--no-train] [--no-model]" >&2
  exit 2
fi
OUT="$1"
shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NODE_BIN="${NODE:-node}"
if ! command -v "$NODE_BIN" >/dev/null 2>&1 && [ ! -x "$NODE_BIN" ]; then
  echo "gpu-check: no Node.js ('$NODE_BIN'); set NODE=/path/to/node" >&2
  exit 2
fi
mkdir -p "$OUT"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
else
  echo "nvidia-smi not found" >"$OUT/nvidia-smi.txt"
fi
for d in dist build/Release; do
  [ -e "$ROOT/$d" ] || echo "gpu-check: warning: $ROOT/$d is missing" >&2
done
# Hard stop well inside the 6-minute budget, whatever happens.
LIMIT="${GPU_CHECK_TIMEOUT_S:-350}"
if command -v timeout >/dev/null 2>&1; then
  timeout --kill-after=10 "$LIMIT" "$NODE_BIN" "$ROOT/scripts/gpu-check.js" "$OUT" "$@" 2>&1 | tee "$OUT/gpu-check.log"
else
  "$NODE_BIN" "$ROOT/scripts/gpu-check.js" "$OUT" "$@" 2>&1 | tee "$OUT/gpu-check.log"
fi
status=${PIPESTATUS[0]}
[ "$status" -eq 124 ] && echo "gpu-check: stopped after ${LIMIT} s" | tee -a "$OUT/gpu-check.log"
exit "$status"
