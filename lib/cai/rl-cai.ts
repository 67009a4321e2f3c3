/**
 * RL-CAI's AI harmlessness labels (Bai et al. 2022, section 4): two sampled
 * answers per red-team prompt, compared by a feedback model under
 * principles drawn at random. Each principle's comparison question goes into
 * the judge template and the soft label comes from `labelPairs`
 * (lib/label/label.ts: answer log-probs, both orders averaged); the labels
 * of `perLabel` drawn principles are averaged (the paper's ensemble over
 * principles). With chain-of-thought the paper found the probabilities too
 * confident and clamped them to [0.4, 0.6]: so does `clamp` (on by default
 * with a rationale).
 */
import { mixSeed, seededRandom } from '../data/batches';
import type { Model } from '../engine/model';
import type { Tokenizer } from '../tokenizer/tokenizer';
import { labelPairs, type LabelPair } from '../label/label';
import { DEFAULT_COMPARISON, type Principle } from './constitution';
import { generateTexts, renderTurns, type SampleOptions } from './sl-cai';

/** The judge's body for a principle: the exchange, the principle's question, the two answers. */
export const comparisonTemplate = (p: Principle) =>
  ['Consider a conversation between a human and an assistant.', 'Human: {prompt}', p.comparison ?? DEFAULT_COMPARISON, 'Response 1: {response_1}', 'Response 2: {response_2}'].join('\n');

export interface HarmlessnessOptions extends SampleOptions {
  /** Principles drawn per pair, their labels averaged. Default 1. */
  perLabel?: number;
  /** The judge writes a rationale of up to this many tokens first (0: none). */
  cotTokens?: number;
  /** Clamp each principle's probability to [0.4, 0.6]; default: with a rationale. */
  clamp?: boolean;
  debias?: boolean;
}

export interface HarmlessnessRow {
  prompt: string;
  chosen: string;
  rejected: string;
  label_prob: number;
  margin: number;
  principles: string[];
}

/** Samples two answers per prompt from `policy` and labels them with `judge` (see the file comment). */
export async function harmlessnessPairs(
  policy: Model,
  tok: Tokenizer,
  judge: Model,
  judgeTok: Tokenizer,
  prompts: readonly string[],
  principles: readonly Principle[],
  o: HarmlessnessOptions,
): Promise<HarmlessnessRow[]> {
  const asked = prompts.map((p) => renderTurns(tok, [{ role: 'user', content: p, label: 'Human' }], 'Assistant'));
  const [a, b] = [await generateTexts(policy, tok, asked, o, 0x61), await generateTexts(policy, tok, asked, o, 0x62)];
  const perLabel = o.perLabel ?? 1;
  const clamp = o.clamp ?? (o.cotTokens ?? 0) > 0;
  const sum = new Float64Array(prompts.length);
  const names: string[][] = prompts.map(() => []);
  for (let k = 0; k < perLabel; k++) {
    const drawn = prompts.map((_, i) => Math.floor(seededRandom(mixSeed(o.seed, 0xc0a, i, k))() * principles.length));
    for (let j = 0; j < principles.length; j++) {
      const idx = drawn.map((d, i) => (d === j ? i : -1)).filter((i) => i >= 0);
      if (!idx.length) continue;
      const pairs: LabelPair[] = idx.map((i) => ({ prompt: prompts[i], a: a[i], b: b[i], extra: {}, givenChosen: false, line: i + 1 }));
      const labelled = await labelPairs(judge, judgeTok, pairs, { template: comparisonTemplate(principles[j]), cotTokens: o.cotTokens, debias: o.debias, batchSize: o.batchSize });
      labelled.forEach((l, n) => {
        sum[idx[n]] += clamp ? Math.min(0.6, Math.max(0.4, l.prob)) : l.prob;
        names[idx[n]].push(principles[j].name);
      });
    }
  }
  return prompts.map((prompt, i) => {
    const p = sum[i] / perLabel;
    const aBetter = p >= 0.5;
    return { prompt, chosen: aBetter ? a[i] : b[i], rejected: aBetter ? b[i] : a[i], label_prob: aBetter ? p : 1 - p, margin: Math.abs(2 * p - 1), principles: names[i] };
  });
}
