"""The reference safetensors reader on many files, the reference of
test/safetensors-reference.test.ts: reads {"files": [path, ...]} and writes,
per file, null when `safe_open` reads its header (and its tensor names and
metadata), else the error's text."""
import json
import sys

from safetensors import safe_open

out = []
for f in json.load(sys.stdin)["files"]:
    try:
        with safe_open(f, "np") as s:
            list(s.keys())
            s.metadata()
        out.append(None)
    except Exception as e:  # the reference's refusal, whatever its type
        out.append(f"{type(e).__name__}: {e}"[:300])
json.dump(out, sys.stdout)
