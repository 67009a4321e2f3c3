#!/usr/bin/env bash
# The Python peers the tests compare against (torch, transformers, peft, trl,
# safetensors, tokenizers), in a virtual environment kept outside the clone so
# that CI runs and fresh clones on the same machine reuse it. Prints the
# venv's python on the last line. Offline machines: pip's configured package
# indexes are used as they are; when extra (local) indexes are configured,
# the first becomes the main index so that pip does not wait on an
# unreachable default one.
#   RLHF_PEER_VENV   where the venv lives (default ~/.cache/rlhf-native/peers-<requirements hash>)
set -euo pipefail
cd "$(dirname "$0")/.."
req=test/peers/requirements.txt
hash=$(sha256sum "$req" | cut -c1-12)
venv="${RLHF_PEER_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/rlhf-native/peers-$hash}"
mkdir -p "$(dirname "$venv")"
# One build at a time: test files run in parallel, and a second caller must
# wait for the first build instead of removing it half-made.
exec 9>"$venv.lock"
flock 9
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "peer-venv: creating $venv" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  idx=()
  extra=$(python3 -m pip config get global.extra-index-url 2>/dev/null || true)
  if [ -n "$extra" ]; then
    read -r -a urls <<<"$extra"
    idx=(--index-url "${urls[0]}")
    for u in "${urls[@]:1}"; do idx+=(--extra-index-url "$u"); done
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "${idx[@]}" -r "$req" >&2
  touch "$venv/.complete"
fi
"$venv/bin/python" -c 'import torch, transformers, peft, trl; print("peer-venv: torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "trl", trl.__version__)' >&2
echo "$venv/bin/python"
