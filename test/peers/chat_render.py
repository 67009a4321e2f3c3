"""Chat-template rendering by transformers, the reference of test/cai.test.ts:
reads {model, conversations: [[{role, content}]]} and writes the rendered
strings (apply_chat_template, tokenize=False, add_generation_prompt=True)."""
import json
import sys

from transformers import AutoTokenizer

inp = json.load(sys.stdin)
tok = AutoTokenizer.from_pretrained(inp["model"])
json.dump([tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in inp["conversations"]], sys.stdout)
