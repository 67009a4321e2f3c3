#!/usr/bin/env bash
# Builds the addon with AddressSanitizer + UndefinedBehaviorSanitizer (CPU
# backend only, in build-asan/, beside the normal build) and runs the
# native-facing tests against it. See docs/reliability.md.
#
#   scripts/sanitize-native.sh [test files...]
#
# Without arguments it runs the list below. Node loads the addon through
# RLHF_NATIVE_PATH, with libasan preloaded (a sanitized shared object needs
# the ASan runtime first in the process). Leak checking is off (Node itself
# keeps allocations until exit); any ASan error or undefined behaviour
# aborts the test process, which fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

out=build-asan
addon="$out/Release/rlhf_native.node"
log="$out/sanitize-build.log"
mkdir -p "$out"
echo "== sanitizer build ($out)"
node node_modules/cmake-js/bin/cmake-js compile --directory . --out "$out" \
  --parallel "$(nproc 2>/dev/null || echo 2)" --CDRLHF_CUDA=OFF --CDRLHF_SANITIZE=ON >"$log" 2>&1 || {
  tail -40 "$log"
  echo "sanitizer build failed (log: $log)"
  exit 1
}
libasan="$(${CXX:-g++} -print-file-name=libasan.so)"
if [ ! -f "$libasan" ]; then
  echo "no libasan.so next to ${CXX:-g++}; install the compiler's sanitizer runtime"
  exit 1
fi

# The tests that drive native code: parsers and the writer, every op family,
# the engine (forward, generation, training steps), and the reliability tests
# (out-of-memory, NaN steps, checkpoints, signals, bad input).
default_tests=(
  test/errors.test.ts
  test/safetensors-malformed.test.ts
  test/safetensors-fuzz.test.ts
  test/safetensors-roundtrip.test.ts
  test/safetensors-fixtures.test.ts
  test/ops-gemm.test.ts
  test/ops-norm.test.ts
  test/ops-attention.test.ts
  test/ops-loss.test.ts
  test/ops-misc.test.ts
  test/ops-optim.test.ts
  test/ops-sample.test.ts
  test/ops-heads.test.ts
  test/ops-lora.test.ts
  test/device-guarded.test.ts
  test/engine-objectives.test.ts
  test/engine-eval-loss.test.ts
  test/engine-golden.test.ts
  test/engine-generate.test.ts
  test/engine-adapter.test.ts
  test/train-golden.test.ts
  test/train-heads.test.ts
  test/train-adapters.test.ts
  test/stage-sft-resume.test.ts
  test/reliability-input.test.ts
  test/reliability-memory.test.ts
  test/reliability-numerics.test.ts
  test/reliability-checkpoints.test.ts
)
tests=("$@")
[ ${#tests[@]} -eq 0 ] && tests=("${default_tests[@]}")

echo "== native-facing tests against $addon (ASan + UBSan)"
LD_PRELOAD="$libasan" ASAN_OPTIONS=detect_leaks=0 RLHF_NATIVE_PATH="$PWD/$addon" node -e "
  const i = require('./dist/lib/native.js').native().info();
  if (!i.sanitize) { console.error('the addon at $addon is not the sanitizer build'); process.exit(1); }
  console.log('loaded the sanitizer build (' + i.compiler + ')');
"
export LD_PRELOAD="$libasan"
export RLHF_NATIVE_PATH="$PWD/$addon"
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:detect_stack_use_after_return=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export RLHF_SANITIZE_RUN=1
node scripts/run-tests.js "${tests[@]}"
