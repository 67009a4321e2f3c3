/**
 * What the stages that finetune on their own samples share (rejection
 * sampling, ReST): K samples per prompt from the policy (seeded per generate
 * call), their rewards, the samples file and its figures, the held-out
 * evaluation, and the SFT rows of the kept samples.
 */
import * as fs from 'node:fs';
import { RlhfError } from '../../errors';
import type { Model } from '../../engine/model';
import { openModelFolder } from '../../model/folder';
import type { Tokenizer } from '../../tokenizer/tokenizer';
import type { PromptRow } from '../../data/prompts';
import { mixSeed } from '../../data/batches';
import { IGNORE_INDEX } from '../../data/sft-data';
import { promptRewardInput, type RewardInput, type RewardSource } from '../../reward/sources';

/** The ids generation stops at: config.json's eos_token_id plus generation_config.json's. */
export function stopTokenIds(dir: string): number[] {
  const f = openModelFolder(dir);
  const ids = new Set(f.config.eosTokenIds);
  const g = f.generationConfig?.eos_token_id;
  f.close();
  for (const x of Array.isArray(g) ? g : [g]) if (Number.isInteger(x)) ids.add(x as number);
  return [...ids];
}

export interface SampleOptions {
  k: number;
  temperature: number;
  topP: number;
  topK: number;
  maxNewTokens: number;
  batchSize: number;
  seed: number;
  eosIds: number[];
  /** Checked between generate calls: true stops early (the result is then incomplete). */
  shouldStop?: () => boolean;
}

export interface Sample {
  /** Index of the prompt in the list sampled from. */
  prompt: number;
  /** 0..k-1 */
  index: number;
  ids: number[];
  text: string;
  finish: string;
}

/** K samples per prompt, prompt-major, in generate calls of `batchSize` sequences; call c is seeded mixSeed(seed, c). */
export async function samplePolicy(model: Model, tok: Tokenizer, prompts: readonly PromptRow[], o: SampleOptions): Promise<{ samples: Sample[]; complete: boolean }> {
  const jobs: { prompt: number; index: number }[] = [];
  prompts.forEach((_, p) => {
    for (let j = 0; j < o.k; j++) jobs.push({ prompt: p, index: j });
  });
  const samples: Sample[] = [];
  for (let i = 0, c = 0; i < jobs.length; i += o.batchSize, c++) {
    if (o.shouldStop?.()) return { samples, complete: false };
    const chunk = jobs.slice(i, i + o.batchSize);
    const g = await model.generate({
      prompts: chunk.map((j) => prompts[j.prompt].ids),
      maxNewTokens: o.maxNewTokens,
      temperature: o.temperature,
      topP: o.topP,
      topK: o.topK,
      seed: mixSeed(o.seed, c),
      eosIds: o.eosIds,
    });
    chunk.forEach((j, b) => {
      const ids = Array.from(g.tokens[b]);
      samples.push({ ...j, ids, text: tok.decode(ids, { skipSpecialTokens: true }), finish: g.finish[b] });
    });
  }
  return { samples, complete: true };
}

export function rewardInputs(prompts: readonly PromptRow[], samples: readonly Sample[]): RewardInput[] {
  return samples.map((s) => promptRewardInput(prompts[s.prompt], s.text, s.ids));
}

export async function scoreAll(reward: RewardSource, inputs: RewardInput[]): Promise<{ reward: Float64Array; parts: Record<string, Float64Array> }> {
  const r = await reward.score(inputs);
  if (!(r.reward instanceof Float64Array) || r.reward.length !== inputs.length)
    throw new RlhfError('E_ARGUMENT', `the reward source returned ${r.reward?.length} rewards for ${inputs.length} samples`);
  const bad = r.reward.findIndex((x) => !Number.isFinite(x));
  if (bad >= 0) throw new RlhfError('E_ARGUMENT', `the reward source returned ${r.reward[bad]} for sample ${bad} (rewards must be finite)`);
  return r;
}

export const mean = (xs: ArrayLike<number>) => (xs.length ? Array.from(xs).reduce((a, b) => a + b, 0) / xs.length : 0);
export const partMeans = (parts: Record<string, Float64Array>) => Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, mean(v)]));

export interface PolicyEvaluation {
  meanReward: number;
  prompts: number;
  samples: number;
  meanResponseTokens: number;
  parts: Record<string, number>;
}

/** Mean reward of the policy's samples on `prompts` (seeded: the same seed samples with the same random numbers). */
export async function evaluatePolicy(model: Model, tok: Tokenizer, prompts: readonly PromptRow[], reward: RewardSource, o: SampleOptions): Promise<PolicyEvaluation> {
  const { samples } = await samplePolicy(model, tok, prompts, { ...o, shouldStop: undefined });
  const r = await scoreAll(reward, rewardInputs(prompts, samples));
  return { meanReward: mean(r.reward), prompts: prompts.length, samples: samples.length, meanResponseTokens: mean(samples.map((s) => s.ids.length)), parts: partMeans(r.parts) };
}

/** A prompt's kept sample: the best of its K (of every round so far, with accumulate). */
export interface Kept {
  prompt: number;
  round: number;
  reward: number;
  sample: Sample;
}

/**
 * The SFT row of a kept sample: the text for people, the exact sampled ids
 * for training; `tags` (e.g. the round it was sampled in) go between the
 * reward and the source line.
 */
export function sftRow(p: PromptRow, sample: Sample, reward: number, tags: Record<string, unknown>): Record<string, unknown> {
  const ids = [...p.ids, ...sample.ids];
  const labels = [...new Array<number>(p.ids.length).fill(IGNORE_INDEX), ...sample.ids];
  const head = typeof p.prompt === 'string' ? { prompt: p.prompt, completion: sample.text } : { messages: [...p.prompt, { role: 'assistant', content: sample.text }] };
  // "input_ids" wins in the SFT loader: training sees exactly the sampled ids; the text is for people.
  return { ...head, input_ids: ids, labels, reward, ...tags, source_line: p.line };
}

/** Writes an SFT data file of rows (empty when there are none). */
export function writeSftRows(file: string, rows: readonly Record<string, unknown>[]): void {
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + (rows.length ? '\n' : ''));
}

/** samples.jsonl: every sample with its reward and the reward's parts. */
export function writeSamples(file: string, prompts: readonly PromptRow[], samples: readonly Sample[], scored: { reward: Float64Array; parts: Record<string, Float64Array> }): void {
  fs.writeFileSync(
    file,
    samples
      .map((s, i) =>
        JSON.stringify({
          source_line: prompts[s.prompt].line,
          sample: s.index,
          completion: s.text,
          tokens: s.ids.length,
          finish: s.finish,
          reward: scored.reward[i],
          parts: Object.fromEntries(Object.entries(scored.parts).map(([k, v]) => [k, v[i]])),
        }),
      )
      .join('\n') + '\n',
  );
}

/** The figures of a scored sample set that every sampling stage's metrics record holds (a type, so a metrics record may spread it). */
export type SampleFigures = {
  mean_reward: number;
  max_reward: number;
  min_reward: number;
  mean_response_tokens: number;
  /** Fraction of samples that ended with an EOS token (the rest hit maxNewTokens). */
  eos_fraction: number;
  samples_per_sec: number;
  generate_s: number;
  score_s: number;
  parts: Record<string, number>;
};

export function sampleFigures(samples: readonly Sample[], scored: { reward: Float64Array; parts: Record<string, Float64Array> }, generateSeconds: number, scoreSeconds: number): SampleFigures {
  return {
    mean_reward: mean(scored.reward),
    // A loop, not Math.max(...): a spread of a large sample set overflows the call stack.
    max_reward: scored.reward.reduce((a, b) => Math.max(a, b), -Infinity),
    min_reward: scored.reward.reduce((a, b) => Math.min(a, b), Infinity),
    mean_response_tokens: mean(samples.map((s) => s.ids.length)),
    eos_fraction: samples.filter((s) => s.finish === 'eos').length / samples.length,
    samples_per_sec: generateSeconds > 0 ? samples.length / generateSeconds : 0,
    generate_s: generateSeconds,
    score_s: scoreSeconds,
    parts: partMeans(scored.parts),
  };
}
