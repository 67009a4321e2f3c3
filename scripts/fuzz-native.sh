#!/usr/bin/env bash
# Builds and runs the native fuzzer of the safetensors and JSON parsers
# (native/fuzz/fuzz_safetensors.cc) under AddressSanitizer and
# UndefinedBehaviorSanitizer, for a time budget. See docs/reliability.md.
#
#   scripts/fuzz-native.sh [SECONDS] [extra fuzzer arguments...]
#
# SECONDS defaults to 25 (RLHF_FUZZ_SECONDS overrides it). The seed defaults
# to the current time and is printed, so a run can be repeated with
# --seed N. Inputs that crash or break an invariant are saved under
# build-fuzz/findings/ and the exit status is 1.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-${RLHF_FUZZ_SECONDS:-25}}"
[ $# -gt 0 ] && shift
cxx="${CXX:-g++}"
out=build-fuzz
mkdir -p "$out/findings"

san=(-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
common=(-std=c++17 -g -O1 -Inative "${san[@]}")
# Coverage feedback: basic-block callbacks in the code under test only.
cov=(-fsanitize-coverage=trace-pc)
if ! echo "int f(int x){return x?1:2;}" | "$cxx" -x c++ -c - "${cov[@]}" -o "$out/.probe" 2>/dev/null; then
  echo "fuzz: $cxx has no -fsanitize-coverage=trace-pc; running without coverage feedback"
  cov=()
fi
rm -f "$out/.probe"

stamp="$out/.stamp"
srcs=(native/safetensors.cc native/json.cc native/fuzz/fuzz_safetensors.cc native/safetensors.h native/json.h native/error.h)
if [ ! -x "$out/fuzz_safetensors" ] || [ -n "$(find "${srcs[@]}" -newer "$stamp" 2>/dev/null)" ]; then
  echo "fuzz: building $out/fuzz_safetensors"
  "$cxx" "${common[@]}" "${cov[@]}" -c native/safetensors.cc -o "$out/safetensors.o"
  "$cxx" "${common[@]}" "${cov[@]}" -c native/json.cc -o "$out/json.o"
  "$cxx" "${common[@]}" -c native/fuzz/fuzz_safetensors.cc -o "$out/driver.o"
  "$cxx" "${san[@]}" "$out/driver.o" "$out/safetensors.o" "$out/json.o" -o "$out/fuzz_safetensors"
  touch "$stamp"
fi

seed_files=()
for f in test/fixtures/safetensors/*.safetensors test/fixtures/golden/*/model.safetensors; do
  [ -f "$f" ] && [ "$(stat -c %s "$f")" -le 8192 ] && seed_files+=("$f")
done
seed="${RLHF_FUZZ_SEED:-$(date +%s)}"
echo "fuzz: ${seconds}s, seed $seed, ${#seed_files[@]} seed files"
ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}" \
  "$out/fuzz_safetensors" --seconds "$seconds" --seed "$seed" --out "$out/findings" "$@" "${seed_files[@]}"
