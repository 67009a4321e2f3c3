"""TRL 1.13's GRPOTrainer / RLOOTrainer on fixed batches, the reference of
test/grpo-trl-parity.test.ts.

Reads JSON on stdin: the model folder, a folder to save the policy adapter
in, G, the prompt and completion token ids (sample j of prompt g at g*G + j),
a reward per sample, and cases (trainer 'grpo' or 'rloo' and its options).
The policy is the model with a PEFT LoRA adapter whose B matrices are set to
seeded random values (so the policy differs from the reference, the model
with adapters off); it is saved for the engine to load. Per case the
trainer's own generation is replaced by the given ids; everything after it
(rewards -> advantages, reference log-probs, the loss) is TRL's code. The loss
is computed twice: with the old log-probs equal to the policy's (ratio 1) and
with old = policy + the case's per-token shifts. Writes JSON per case: the
advantages, both losses and the shifted old log-probs.
"""
import json
import sys
import tempfile

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

inp = json.load(sys.stdin)
G = inp["G"]
prompts, completions, rewards = inp["prompts"], inp["completions"], inp["rewards"]
n = len(completions)
tok = AutoTokenizer.from_pretrained(inp["model"])
if tok.pad_token is None:
    tok.pad_token = tok.eos_token
rows = [{"prompt": f"p{g}", "idx": g * G + j} for g in range(n // G) for j in range(G)]
texts = tok.batch_decode(completions, skip_special_tokens=True)
lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")


def fixed_reward(completions, idx, **kwargs):
    return [float(rewards[i]) for i in idx]


def make_trainer(case):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(inp["model"], dtype=torch.float32)
    o = case["options"]
    common = dict(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=n,
        num_generations=G,
        max_completion_length=o["max_completion_length"],
        temperature=o["temperature"],
        beta=o["beta"],
        epsilon=o["epsilon"],
        epsilon_high=o["epsilon_high"],
        report_to=[],
        use_cpu=True,
        bf16=False,
    )
    ds = Dataset.from_list(rows)
    if case["trainer"] == "grpo":
        args = GRPOConfig(**common, loss_type=o["loss_type"], scale_rewards=o["scale_rewards"], use_bias_correction_kl=o["use_bias_correction_kl"])
        t = GRPOTrainer(model=model, reward_funcs=fixed_reward, args=args, train_dataset=ds, processing_class=tok, peft_config=lora)
    else:
        args = RLOOConfig(**common, normalize_advantages=o["normalize_advantages"])
        t = RLOOTrainer(model=model, reward_funcs=fixed_reward, args=args, train_dataset=ds, processing_class=tok, peft_config=lora)
    # The same seeded B matrices in every case: the policy is a fixed point away from the reference.
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in sorted(t.model.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return t


by_prompt = {f"p{g}": g for g in range(n // G)}
results = []
for ci, case in enumerate(inp["cases"]):
    t = make_trainer(case)
    if ci == 0:
        t.model.save_pretrained(inp["adapter_dir"])
    grpo = case["trainer"] == "grpo"

    def fixed_generate(prompt_texts):
        p_ids = [prompts[by_prompt[p]] for p in prompt_texts]
        return (p_ids, completions, None, texts, None, {}, None, None) if grpo else (p_ids, completions, texts)

    t._generate = fixed_generate
    t.model.train()
    t.current_gradient_accumulation_steps = 1
    out = t._generate_and_score_completions(rows)
    mask = out["completion_mask"]
    prompt_completion = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attention = torch.cat([out["prompt_mask"], mask], dim=1)
    with torch.no_grad():
        current, _, _ = t._get_per_token_logps_and_entropies(t.model, prompt_completion, attention, mask.size(1))
        shift = torch.zeros_like(current)
        for i, row in enumerate(case["shifts"]):
            shift[i, : len(row)] = torch.tensor(row, dtype=torch.float32)
        old = (current + shift) * mask
        r = {"advantages": out["advantages"].tolist()}
        base = dict(out)
        if grpo:
            base["old_per_token_logps"] = None
        r["loss_ratio_one"] = t._compute_loss(t.model, base).item()
        shifted = dict(out)
        if grpo:
            shifted["old_per_token_logps"] = old
        else:
            shifted["old_logps"] = old.sum(1)
        r["loss"] = t._compute_loss(t.model, shifted).item()
        r["old_per_token"] = [old[i, : int(mask[i].sum())].tolist() for i in range(n)]
    results.append(r)

json.dump(results, sys.stdout)
