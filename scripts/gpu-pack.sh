#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a GPU machine that has no Node.js
# and no network, into gpu-pack/ (ignored by git): this machine's `node`
# compressed with xz, and the runtime dependencies the check loads (the
# tokenizer, the chat-template engine, YAML, the addon loader). With the
# built addon and dist/ they fit the device tool's 64 MiB carry:
#
#   bash scripts/gpu-pack.sh            # after npm install (addon built with nvcc) and npm run build
#   carry: build/Release/rlhf_native.node, dist, gpu-pack
#   run:   bash scripts/gpu-pack.sh --unpack && NODE=gpu-pack/node bash scripts/gpu-check.sh "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=gpu-pack
if [ "${1:-}" = "--unpack" ]; then
  [ -x "$PACK/node" ] || xz -d -k -f "$PACK/node.xz"
  chmod +x "$PACK/node"
  [ -e node_modules ] || ln -s "$PACK/node_modules" node_modules
  "$PACK/node" --version
  exit 0
fi
for f in build/Release/rlhf_native.node dist/lib/native.js; do
  [ -e "$f" ] || { echo "gpu-pack: $f is missing (npm install && npm run build first)" >&2; exit 1; }
done
rm -rf "$PACK"
mkdir -p "$PACK/node_modules/@huggingface"
xz -T2 -6 -c "$(command -v node)" >"$PACK/node.xz"
for m in @huggingface/jinja @huggingface/tokenizers yaml node-gyp-build; do
  cp -r "node_modules/$m" "$PACK/node_modules/$m"
done
du -sh "$PACK" build/Release/rlhf_native.node dist | sed 's/^/gpu-pack: /'
node -e "const a=require('./build/Release/rlhf_native.node').info(); console.log('gpu-pack: addon backends', a.backends.join(', '), '; CUDA archs', (a.cuda.archs||[]).join(' ') || 'none')"
