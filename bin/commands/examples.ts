/**
 * One example line per command, shown under "Examples:" in its --help.
 * Kept together so that they read alike: the folders follow the pipeline
 * (base -> sft-out -> sft-merged -> rm-out -> a policy stage), and every flag
 * is one the command has (test/cli-help.test.ts checks each against the
 * command's own help).
 */
import type { Argv } from 'yargs';

export const EXAMPLES: Record<string, [command: string, what: string]> = {
  train: ['$0 train --scale quick', "the built-in demo (Llama 2's recipe on a small model) at its quick size"],
  info: ['$0 info --json', 'what this build can run on, as JSON'],
  inspect: ['$0 inspect ./base', "a model folder's tensors: names, dtypes, shapes"],
  init: ['$0 init --arch llama --preset tiny --out ./base', 'a random tiny Llama with a tokenizer, to try the commands on'],
  cai: ['$0 cai --model ./sft-model --constitution constitution.yaml --prompts red-team.jsonl --out cai-data --pairs', 'critique -> revision SFT data and AI harmlessness pairs'],
  label: ['$0 label --judge ./judge-model --data pairs.jsonl --out ai-pairs.jsonl', 'relabel preference pairs with a judge model, both orders averaged'],
  score: ['$0 score --model ./sft-merged --data rows.jsonl --out scores.jsonl', 'per-token log-probabilities of each row'],
  generate: ['$0 generate --model ./sft-merged --prompt "Add 2 and 7." --max-new-tokens 16', 'a greedy completion'],
  bench: ['$0 bench --smoke --no-peer', 'every workload once on a tiny model (a check, not a measurement)'],
  merge: ['$0 merge --model ./base --adapter ./sft-out --out ./sft-merged', 'fold the SFT LoRA adapter into its base'],
  sft: ['$0 sft --model ./base --data demos.jsonl --out ./sft-out --epochs 3', 'a LoRA adapter trained on demonstrations'],
  rm: ['$0 rm --model ./sft-merged --data pairs.jsonl --out ./rm-out', 'a reward model trained on preference pairs'],
  dpo: ['$0 dpo --model ./sft-merged --data pairs.jsonl --out ./dpo-out --beta 0.1', 'DPO on preference pairs, the model itself as reference'],
  kto: ['$0 kto --model ./sft-merged --data labelled.jsonl --out ./kto-out', 'KTO on completions labelled desirable or not'],
  orpo: ['$0 orpo --model ./base --data pairs.jsonl --out ./orpo-out', 'ORPO straight from the base model (no SFT, no reference)'],
  rs: ['$0 rs --model ./sft-merged --data prompts.jsonl --reward-model ./rm-out --out ./rs-out -k 4', 'best of 4 samples per prompt, then SFT on them'],
  rest: ['$0 rest --model ./sft-merged --data prompts.jsonl --reward-model ./rm-out --out ./rest-out', 'ReST: Grow and Improve steps'],
  hir: ['$0 hir --model ./sft-merged --data prompts.jsonl --reward-function exact --out ./hir-out', 'HIR, the exact-match check against each row\'s answer as the checker'],
  ppo: ['$0 ppo --model ./sft-merged --data prompts.jsonl --reward-model ./rm-out --out ./ppo-out', 'PPO against a reward model'],
  grpo: ['$0 grpo --model ./sft-merged --data prompts.jsonl --reward-function exact --out ./grpo-out', 'GRPO with a verifiable reward (exact match against each row\'s answer)'],
  rloo: ['$0 rloo --model ./sft-merged --data prompts.jsonl --reward-function exact --out ./rloo-out', 'RLOO with a verifiable reward'],
};

/** Adds the command's example to its --help. */
export function withExample<T>(y: Argv<T>, command: string): Argv<T> {
  const e = EXAMPLES[command];
  return e ? y.example(e[0], e[1]) : y;
}
