/**
 * PPO's rollout and scoring: sample one response per prompt with the
 * policy, score the responses with the reward source, read the per-token
 * arrays the update needs (old log-probs under the policy: the sampler's, or
 * a forward with rolloutLogprobs false; reference log-probs with the
 * adapters off; the critic's values), then the KL-shaped rewards, GAE
 * advantages and returns.
 */
import { RlhfError } from '../../errors';
import type { Model } from '../../engine/model';
import type { Trainer } from '../../engine/train';
import type { Tokenizer } from '../../tokenizer/tokenizer';
import type { PromptIds } from '../../data/prompts';
import { mixSeed } from '../../data/batches';
import { promptRewardInput, type RewardInput, type RewardScores, type RewardSource } from '../../reward/sources';
import { gae, klPerToken, maskedWhiten, shapeRewards } from '../../ppo/gae';
import type { Rollout } from './loss';
import type { PpoEvalResult, ResolvedPpoConfig } from './config';

/** An iteration's samples: one response per prompt. */
export interface PpoSamples {
  rows: PromptIds[];
  responses: number[][];
  /** Generation ended with EOS (the response then holds it). */
  eos: boolean[];
  /** The sampler's log-prob of each response token (the tempered full softmax, as the training forward's). */
  logprobs: Float32Array[];
  genTokens: number;
}

/** The samples with their scores and per-token arrays (each of a response's length). */
export interface PpoScored extends PpoSamples {
  scored: Required<RewardScores>;
  seqs: number[][];
  oldLogp: Float32Array[];
  refLogp: Float32Array[];
  oldValues: Float32Array[];
}

/** What rollouts need of the run. */
export interface RolloutEnv {
  cfg: ResolvedPpoConfig;
  model: Model;
  trainer: Trainer;
  tok: Tokenizer;
  reward: RewardSource;
  eosIds: number[];
}

export const mean = (xs: ArrayLike<number>): number => {
  let s = 0;
  for (let i = 0; i < xs.length; i++) s += xs[i];
  return xs.length ? s / xs.length : 0;
};

/** One response per prompt from the policy, in generate calls of forwardBatchSize; call c is seeded mixSeed(seed, c). */
export async function sampleResponses(env: RolloutEnv, rows: PromptIds[], seed: number): Promise<PpoSamples> {
  const { cfg, model, trainer } = env;
  trainer.useAdapter('policy');
  const responses: number[][] = [], eos: boolean[] = [], logprobs: Float32Array[] = [];
  for (let i = 0, c = 0; i < rows.length; i += cfg.forwardBatchSize, c++) {
    const chunk = rows.slice(i, i + cfg.forwardBatchSize);
    const g = await model.generate({ prompts: chunk.map((p) => p.ids), maxNewTokens: cfg.maxNewTokens, temperature: cfg.temperature, topK: cfg.topK, topP: cfg.topP, seed: mixSeed(seed, c), eosIds: env.eosIds });
    g.tokens.forEach((t, b) => {
      responses.push(Array.from(t));
      eos.push(g.finish[b] === 'eos');
      logprobs.push(Float32Array.from(g.logprobs[b]));
    });
  }
  return { rows, responses, eos, logprobs, genTokens: responses.reduce((s, r) => s + r.length, 0) };
}

/**
 * Scores the responses (rewards must be finite, one per response) and reads the per-token arrays; values only `withValues`.
 * `samplerLogprobs`: old_logp is what the sampler recorded (no policy forward); otherwise a policy forward over the responses.
 */
export async function scoreResponses(env: RolloutEnv, s: PpoSamples, file: string, withValues: boolean, samplerLogprobs = env.cfg.rolloutLogprobs): Promise<PpoScored> {
  const { cfg, model, trainer, tok } = env;
  const { rows, responses } = s;
  const inputs: RewardInput[] = rows.map((p, b) => promptRewardInput(p, tok.decode(responses[b], { skipSpecialTokens: true }), responses[b]));
  const scored = await env.reward.score(inputs);
  if (scored.reward.length !== rows.length) throw new RlhfError('E_ARGUMENT', `the reward source returned ${scored.reward.length} rewards for ${rows.length} responses`);
  const bad = Array.from(scored.reward).findIndex((x) => !Number.isFinite(x));
  if (bad >= 0) throw new RlhfError('E_ARGUMENT', `the reward source returned ${scored.reward[bad]} for the response to ${file}:${rows[bad].line} (rewards must be finite)`);
  const parts = scored.parts ?? {};
  const seqs = rows.map((p, b) => [...p.ids, ...responses[b]]);
  const pl = rows.map((p) => p.ids.length), rl = responses.map((r) => r.length);
  trainer.useAdapter('policy');
  const oldLogp = samplerLogprobs ? s.logprobs : await perToken(model, seqs, pl, rl, 'logp', cfg.temperature, cfg.forwardBatchSize);
  trainer.useAdapter(null);
  const refLogp = await perToken(model, seqs, pl, rl, 'logp', cfg.temperature, cfg.forwardBatchSize);
  let oldValues: Float32Array[] = [];
  if (withValues) {
    trainer.useAdapter('critic');
    oldValues = await perToken(model, seqs, pl, rl, 'values', cfg.temperature, cfg.forwardBatchSize);
  }
  return { ...s, scored: { reward: scored.reward, parts }, seqs, oldLogp, refLogp, oldValues };
}

/** The batch as rollouts: KL-shaped rewards (coefficient `klCoef`), GAE advantages (whitened) and returns, in float64. */
export function toRollouts(cfg: ResolvedPpoConfig, ro: PpoScored, klCoef: number): { rollouts: Rollout[]; scores: Float64Array; klSums: number[] } {
  const klRows = ro.oldLogp.map((lp, b) => klPerToken(lp, ro.refLogp[b], cfg.klEstimator));
  const scores = Float64Array.from(ro.scored.reward, (s, b) => (cfg.missingEosPenalty !== null && !ro.eos[b] ? s - cfg.missingEosPenalty : s));
  let rewards = shapeRewards(klRows, scores, klCoef);
  if (cfg.whitenRewards) rewards = maskedWhiten(rewards, false);
  const values64 = ro.oldValues.map((v) => Float64Array.from(v));
  const g = gae(rewards, values64, cfg.gamma, cfg.lam);
  const adv = cfg.whitenAdvantages ? maskedWhiten(g.advantages, true) : g.advantages;
  const klSums = klRows.map((r) => r.reduce((s, x) => s + x, 0));
  const rollouts: Rollout[] = ro.rows.map((p, b) => ({
    prompt: p,
    response: ro.responses[b],
    eos: ro.eos[b],
    score: ro.scored.reward[b],
    parts: Object.fromEntries(Object.entries(ro.scored.parts).map(([k, v]) => [k, v[b]])),
    oldLogp: ro.oldLogp[b],
    refLogp: ro.refLogp[b],
    oldValues: ro.oldValues[b],
    advantages: Float32Array.from(adv[b]),
    returns: Float32Array.from(g.returns[b]),
    klSum: klSums[b],
  }));
  return { rollouts, scores, klSums };
}

/**
 * Held-out evaluation: one response per prompt (a fixed seed), its mean score and summed k1 KL to the reference;
 * the policy's log-probs from a forward whatever rolloutLogprobs says, so the held-out figures do not depend on it.
 */
export async function evaluatePrompts(env: RolloutEnv, rows: PromptIds[], file: string): Promise<PpoEvalResult> {
  const s = await sampleResponses(env, rows, mixSeed(env.cfg.seed, 0xe7a1));
  const r = await scoreResponses(env, s, file, false, false);
  const kls = r.oldLogp.map((lp, b) => klPerToken(lp, r.refLogp[b], 'k1').reduce((a, x) => a + x, 0));
  return { reward: mean(r.scored.reward), kl: mean(kls), responseLength: mean(r.responses.map((x) => x.length)) };
}

/**
 * Per-token outputs of `seqs` (prompt + response) at the response positions:
 * token j of a response of a prompt of length P is predicted at position
 * P - 1 + j, where logp[P - 1 + j] = log p(response[j] | prefix) and the
 * critic's value is that of the same prefix (TRL: values[context_length - 1 : -1]).
 */
function responseSlices(rows: readonly Float32Array[], promptLens: readonly number[], respLens: readonly number[]): Float32Array[] {
  return rows.map((r, b) => Float32Array.from(r.subarray(promptLens[b] - 1, promptLens[b] - 1 + respLens[b])));
}

export async function perToken(
  model: Model,
  seqs: readonly number[][],
  promptLens: readonly number[],
  respLens: readonly number[],
  what: 'logp' | 'values',
  temperature: number,
  chunk: number,
): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (let i = 0; i < seqs.length; i += chunk) {
    const rows = seqs.slice(i, i + chunk) as number[][];
    const f = await model.forward(what === 'logp' ? { inputIds: rows, logp: true, temperature } : { inputIds: rows, logp: false, values: true });
    out.push(...responseSlices(what === 'logp' ? f.logp! : f.values!, promptLens.slice(i, i + chunk), respLens.slice(i, i + chunk)));
  }
  return out;
}
