"""A judge's soft preference labels computed with transformers in float64,
the reference of test/label-judge.test.ts.

Reads JSON on stdin: the judge model folder, the body template, the cue,
an optional system message, the answers, and pairs {prompt, a, b}. For each
pair and each order (a first, then b first) it builds the judge prompt from
the template, renders it with the tokenizer's chat template
(`apply_chat_template(..., continue_final_message=True)`), encodes prompt +
answer as one string, sums the float64 log-probs of each answer's tokens
after the prefix every answer shares with the prompt's own tokens, and takes
P(a better) = softmax over the two answers: the first order's P("1"), the
second order's P("2"), and their mean. Writes JSON: per pair the rendered
prompts, their token ids, and the three probabilities.

With "scores" instead of "pairs" (items {prompt, response}, the template
holding {prompt} and {response}): direct RLAIF's expected score over the
answers (whose values are "values"), sum_s s p(s), and its normalised
reward 2 (mean - min) / (max - min) - 1, per item.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

inp = json.load(sys.stdin)
tok = AutoTokenizer.from_pretrained(inp["model"])
model = AutoModelForCausalLM.from_pretrained(inp["model"], dtype=torch.float64)
model.eval()
answers = inp["answers"]


def render(body):
    msgs = ([{"role": "system", "content": inp["system"]}] if inp.get("system") else []) + [
        {"role": "user", "content": body},
        {"role": "assistant", "content": inp["cue"]},
    ]
    return tok.apply_chat_template(msgs, tokenize=False, continue_final_message=True)


def encode(text):
    return tok(text, add_special_tokens=False)["input_ids"]


def answer_logps(prompt):
    p_ids = encode(prompt)
    seqs = [encode(prompt + a) for a in answers]
    start = len(p_ids)
    for s in seqs:
        k = 0
        while k < start and k < len(s) - 1 and s[k] == p_ids[k]:
            k += 1
        start = min(start, k)
    out = []
    with torch.no_grad():
        for s in seqs:
            logits = model(torch.tensor([s])).logits[0].double()
            lp = torch.log_softmax(logits, dim=-1)
            out.append(sum(float(lp[t - 1, s[t]]) for t in range(start, len(s))))
    return out, p_ids


def softmax(v):
    t = torch.tensor(v, dtype=torch.float64)
    return torch.softmax(t, dim=0).tolist()


if "scores" in inp:
    vals = inp["values"]
    out = []
    for x in inp["scores"]:
        prompt = render(inp["template"].replace("{prompt}", x["prompt"]).replace("{response}", x["response"]))
        lps, _ = answer_logps(prompt)
        p = softmax(lps)
        mean = sum(pi * v for pi, v in zip(p, vals))
        out.append({"prompt": prompt, "mean": mean, "reward": 2 * (mean - min(vals)) / (max(vals) - min(vals)) - 1})
    json.dump(out, sys.stdout)
    sys.exit(0)

res = []
for p in inp["pairs"]:
    fill = lambda r1, r2: inp["template"].replace("{prompt}", p["prompt"]).replace("{response_1}", r1).replace("{response_2}", r2).replace("{examples}", "")
    ab, ba = render(fill(p["a"], p["b"])), render(fill(p["b"], p["a"]))
    lab, ids_ab = answer_logps(ab)
    lba, ids_ba = answer_logps(ba)
    p_ab, p_ba = softmax(lab)[0], softmax(lba)[1]
    res.append({"prompts": [ab, ba], "ids": [ids_ab, ids_ba], "p_ab": p_ab, "p_ba": p_ba, "prob": (p_ab + p_ba) / 2})
json.dump(res, sys.stdout)
