/**
 * The start of a stage that samples its policy and finetunes on the samples
 * (rejection sampling, ReST): the earlier-run check of its folder, the
 * policy's config, tokenizer and stop ids, and the training and held-out
 * prompts, read and checked before any weights load or anything is written.
 */
import * as fs from 'node:fs';
import { RlhfError } from '../../errors';
import { openModelFolder } from '../../model/folder';
import { loadTokenizer, type Tokenizer } from '../../tokenizer/tokenizer';
import { loadPrompts, type PromptRow } from '../../data/prompts';
import { splitEval } from '../../data/sft-data';
import type { RewardSource } from '../../reward/sources';
import { stopTokenIds } from './sampling';

/** An earlier run of the stage in `out` (files matching `isRunFile`) is continued only with --resume. */
export function refuseEarlierRun(out: string, resume: boolean, isRunFile: (name: string) => boolean, what: string): void {
  if (!fs.existsSync(out)) return;
  const earlier = fs.readdirSync(out).filter(isRunFile);
  if (earlier.length && !resume)
    throw new RlhfError('E_ARGUMENT', `--out ${out} already holds ${what} (${earlier.slice(0, 3).join(', ')}); choose a new folder, or continue it with --resume (nothing there was changed)`, {
      where: out,
    });
}

export interface PromptSetOptions {
  model: string;
  data: string;
  evalData: string | null;
  evalFraction: number;
  maxNewTokens: number;
  seed: number;
}

export interface PromptSet {
  tok: Tokenizer;
  eosIds: number[];
  train: PromptRow[];
  held: PromptRow[];
}

/**
 * The policy's tokenizer and stop ids and the prompts: E_MODEL for a policy
 * without a causal LM head, E_DATA naming file:line for a bad row (a prompt
 * longer than the context leaves after --max-new-tokens, or than a given
 * reward source's context does). The held-out prompts are `evalData`, or a
 * seeded `evalFraction` of `data`.
 */
export function loadPromptSet(o: PromptSetOptions, reward?: RewardSource): PromptSet {
  const folder = openModelFolder(o.model);
  const mcfg = folder.config;
  folder.close();
  if (mcfg.head !== 'lm') throw new RlhfError('E_MODEL', `--model ${o.model}: the policy needs a causal LM head (this is a ${mcfg.architecture})`, { where: o.model });
  const tok = loadTokenizer(o.model);
  const eosIds = stopTokenIds(o.model);
  let maxPromptTokens = mcfg.maxSequenceLength - o.maxNewTokens;
  if (maxPromptTokens < 1) throw new RlhfError('E_ARGUMENT', `--max-new-tokens ${o.maxNewTokens} leaves no room for a prompt in the model's context (${mcfg.maxSequenceLength})`);
  if (reward?.maxTokens !== undefined) maxPromptTokens = Math.min(maxPromptTokens, reward.maxTokens - o.maxNewTokens);
  const popts = {
    maxPromptTokens,
    vocabSize: mcfg.vocabSize,
    tooLong: (n: number, max: number) => `the prompt is ${n} tokens, more than the ${max} that the context leaves after --max-new-tokens`,
    missing: 'expected {"prompt": "..."} or {"messages": [...]} (a prompt row; "prompt" is missing)',
  };
  const all = loadPrompts(o.data, tok, popts);
  let train = all, held: PromptRow[] = [];
  if (o.evalData) held = loadPrompts(o.evalData, tok, popts);
  else if (o.evalFraction > 0) {
    const split = splitEval(all.length, o.evalFraction, o.seed);
    train = split.train.map((i) => all[i]);
    held = split.eval.map((i) => all[i]);
  }
  return { tok, eosIds, train, held };
}

/** A reward model the stage opened itself: every prompt plus --max-new-tokens must fit its context. */
export function checkRewardContext(reward: RewardSource, set: PromptSet, maxNewTokens: number): void {
  if (reward.maxTokens === undefined) return;
  const worst = [...set.train, ...set.held].reduce((a, p) => Math.max(a, p.ids.length), 0) + maxNewTokens;
  if (worst > reward.maxTokens) throw new RlhfError('E_ARGUMENT', `a prompt plus --max-new-tokens ${maxNewTokens} is ${worst} tokens, longer than the reward model's context (${reward.maxTokens})`);
}
