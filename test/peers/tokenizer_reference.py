"""transformers' tokenizers on a text set, the reference of
test/tokenizers-real.test.ts: reads {dir, texts, conversations} and writes,
per text, the ids with and without special tokens and both decodings of
the ids with special tokens (skip_special_tokens false, then true); per
conversation, the chat template rendered with and without the generation
prompt (null where the tokenizer has no chat template)."""
import json
import sys

from transformers import AutoTokenizer

inp = json.load(sys.stdin)
tok = AutoTokenizer.from_pretrained(inp["dir"])
texts = []
if inp.get("engine") == "tokenizers":
    # The file as written, by the tokenizers library; BOS first where
    # tokenizer_config.json sets add_bos_token (transformers 4's Llama rule).
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(inp["dir"] + "/tokenizer.json")
    cfg = json.load(open(inp["dir"] + "/tokenizer_config.json"))
    bos = [tok.bos_token_id] if cfg.get("add_bos_token") else []
    for t in inp["texts"]:
        without = raw.encode(t, add_special_tokens=False).ids
        with_special = bos + raw.encode(t, add_special_tokens=True).ids
        texts.append({
            "with": with_special,
            "without": without,
            "decoded": raw.decode(with_special, skip_special_tokens=False),
            "decoded_skip": raw.decode(with_special, skip_special_tokens=True),
        })
for t in inp["texts"] if not texts else []:
    with_special = tok(t, add_special_tokens=True)["input_ids"]
    texts.append({
        "with": with_special,
        "without": tok(t, add_special_tokens=False)["input_ids"],
        "decoded": tok.decode(with_special, skip_special_tokens=False),
        "decoded_skip": tok.decode(with_special, skip_special_tokens=True),
    })
chats = []
for c in inp["conversations"]:
    if not tok.chat_template:
        chats.append(None)
        continue
    chats.append([tok.apply_chat_template(c, tokenize=False, add_generation_prompt=g) for g in (False, True)])
json.dump({"texts": texts, "chats": chats}, sys.stdout)
