/**
 * The GRPO family's rollout and scoring: G samples of each prompt from the
 * policy (the log-probs the sampler recorded kept as the old policy's), the
 * rewards, the reference's log-probs when beta > 0, then the advantages of
 * the estimator (lib/grpo/advantages.ts).
 */
import { RlhfError } from '../../errors';
import type { Model } from '../../engine/model';
import type { Trainer } from '../../engine/train';
import type { Tokenizer } from '../../tokenizer/tokenizer';
import type { PromptIds } from '../../data/prompts';
import { mixSeed } from '../../data/batches';
import { promptRewardInput, type RewardInput, type RewardSource } from '../../reward/sources';
import { klPerToken } from '../../ppo/gae';
import { grpoAdvantages, reinforcePlusPlusAdvantages, rlooAdvantages } from '../../grpo/advantages';
import { perToken } from '../ppo/rollout';
import type { ResolvedGrpoConfig } from './config';
import type { GrpoSample } from './loss';

export interface GrpoEnv {
  cfg: ResolvedGrpoConfig;
  model: Model;
  trainer: Trainer;
  tok: Tokenizer;
  reward: RewardSource;
  eosIds: number[];
}

/** An iteration's samples: prompt g's j-th sample at g*G + j. */
export interface GrpoBatch {
  rows: PromptIds[];
  responses: number[][];
  eos: boolean[];
  /** The sampler's log-prob of each response token (tempered full softmax). */
  logprobs: Float32Array[];
  genTokens: number;
}

export const mean = (xs: ArrayLike<number>): number => {
  let s = 0;
  for (let i = 0; i < xs.length; i++) s += xs[i];
  return xs.length ? s / xs.length : 0;
};

/** `copies` samples of each prompt, in generate calls of forwardBatchSize rows; call c is seeded mixSeed(seed, c). */
export async function sampleGroups(env: GrpoEnv, prompts: PromptIds[], copies: number, seed: number, temperature = env.cfg.temperature): Promise<GrpoBatch> {
  const { cfg, model, trainer } = env;
  trainer.useAdapter('policy');
  const rows = prompts.flatMap((p) => Array.from({ length: copies }, () => p));
  const responses: number[][] = [], eos: boolean[] = [], logprobs: Float32Array[] = [];
  for (let i = 0, c = 0; i < rows.length; i += cfg.forwardBatchSize, c++) {
    const chunk = rows.slice(i, i + cfg.forwardBatchSize);
    const g = await model.generate({ prompts: chunk.map((p) => p.ids), maxNewTokens: cfg.maxNewTokens, temperature, topK: cfg.topK, topP: cfg.topP, seed: mixSeed(seed, c), eosIds: env.eosIds });
    g.tokens.forEach((t, b) => {
      responses.push(Array.from(t));
      eos.push(g.finish[b] === 'eos');
      logprobs.push(Float32Array.from(g.logprobs[b]));
    });
  }
  return { rows, responses, eos, logprobs, genTokens: responses.reduce((s, r) => s + r.length, 0) };
}

/** The reward of each sample (finite, one each) and its parts. */
export async function scoreSamples(env: GrpoEnv, b: GrpoBatch, file: string): Promise<{ reward: Float64Array; parts: Record<string, Float64Array> }> {
  const inputs: RewardInput[] = b.rows.map((p, i) => promptRewardInput(p, env.tok.decode(b.responses[i], { skipSpecialTokens: true }), b.responses[i]));
  const s = await env.reward.score(inputs);
  if (s.reward.length !== b.rows.length) throw new RlhfError('E_ARGUMENT', `the reward source returned ${s.reward.length} rewards for ${b.rows.length} samples`);
  const bad = Array.from(s.reward).findIndex((x) => !Number.isFinite(x));
  if (bad >= 0) throw new RlhfError('E_ARGUMENT', `the reward source returned ${s.reward[bad]} for a response to ${file}:${b.rows[bad].line} (rewards must be finite)`);
  return { reward: s.reward, parts: s.parts ?? {} };
}

export interface ScoredGroups {
  samples: GrpoSample[];
  reward: Float64Array;
  parts: Record<string, Float64Array>;
  groupStd: Float64Array;
  zeroStd: boolean[];
  /** Mean per-token k3 KL of the sampled policy to the reference (0 with beta 0). */
  kl: number;
  batch: GrpoBatch;
}

/**
 * Rewards, the old policy's and the reference's log-probs, the advantages
 * of `cfg.estimator`; with dropZeroVariance the groups whose rewards are all
 * equal are left out of the samples.
 */
export async function scoreGroups(env: GrpoEnv, b: GrpoBatch): Promise<ScoredGroups> {
  const { cfg, model, trainer } = env;
  const G = cfg.numGenerations;
  const { reward, parts } = await scoreSamples(env, b, cfg.data);
  const seqs = b.rows.map((p, i) => [...p.ids, ...b.responses[i]]);
  const pl = b.rows.map((p) => p.ids.length), rl = b.responses.map((r) => r.length);
  let oldLogp = b.logprobs;
  if (!cfg.rolloutLogprobs) {
    trainer.useAdapter('policy');
    oldLogp = await perToken(model, seqs, pl, rl, 'logp', cfg.temperature, cfg.forwardBatchSize);
  }
  let refLogp: Float32Array[] | null = null;
  if (cfg.beta > 0) {
    trainer.useAdapter(null);
    refLogp = await perToken(model, seqs, pl, rl, 'logp', cfg.temperature, cfg.forwardBatchSize);
    trainer.useAdapter('policy');
  }
  const kl3 = refLogp ? refLogp.map((r, i) => klPerToken(oldLogp[i], r, 'k3')) : null;
  const tokens = rl.reduce((s, n) => s + n, 0);
  const kl = kl3 ? kl3.reduce((s, r) => s + r.reduce((a, x) => a + x, 0), 0) / Math.max(1, tokens) : 0;

  // Advantages: per sequence (grpo, rloo) or per token (reinforce_pp). rloo and reinforce_pp put the KL in the rewards (k1).
  let seqAdv: Float64Array, tokAdv: Float64Array[] | null = null, groupStd: Float64Array, zeroStd: boolean[];
  const k1 = refLogp ? refLogp.map((r, i) => klPerToken(oldLogp[i], r, 'k1')) : b.responses.map((r) => new Float64Array(r.length));
  if (cfg.estimator === 'grpo') {
    ({ advantages: seqAdv, groupStd, zeroStd } = grpoAdvantages(reward, G, cfg.scaleRewards));
  } else if (cfg.estimator === 'rloo') {
    const shaped = Float64Array.from(reward, (r, i) => r - cfg.beta * k1[i].reduce((a, x) => a + x, 0));
    ({ advantages: seqAdv, groupStd, zeroStd } = rlooAdvantages(shaped, G, cfg.normalizeAdvantages));
  } else {
    ({ groupStd, zeroStd } = grpoAdvantages(reward, G, 'none'));
    tokAdv = reinforcePlusPlusAdvantages(reward, k1, cfg.beta);
    seqAdv = new Float64Array(reward.length);
  }
  const samples: GrpoSample[] = [];
  b.rows.forEach((p, i) => {
    if (cfg.dropZeroVariance && zeroStd[Math.floor(i / G)]) return;
    const n = b.responses[i].length;
    samples.push({
      prompt: p,
      response: b.responses[i],
      eos: b.eos[i],
      reward: reward[i],
      oldLogp: oldLogp[i],
      refLogp: refLogp ? refLogp[i] : null,
      advantages: tokAdv ? Float32Array.from(tokAdv[i]) : new Float32Array(n).fill(seqAdv[i]),
      advantage: seqAdv[i],
    });
  });
  return { samples, reward, parts, groupStd, zeroStd, kl, batch: b };
}
