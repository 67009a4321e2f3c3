/**
 * What the demo's policies now say: their greedy answers to a few fixed
 * held-out prompts, side by side, for report.html (after the outcome table).
 * The prompts are the first two of each kind in the held-out list (the same
 * list every run of a seed evaluates), so one glance covers every task of
 * the demo world and its harmful requests.
 */
import type { SampleTable } from '../run/report';
import { PROMPT_KINDS, type WorldPrompt } from '../demo/world';

/** Prompts shown per kind. */
export const SAMPLES_PER_KIND = 2;

/** Indices into `held` of the shown prompts: the first SAMPLES_PER_KIND of each kind, in PROMPT_KINDS order. */
export function samplePromptIndices(held: readonly WorldPrompt[]): number[] {
  return PROMPT_KINDS.flatMap((k) => held.flatMap((p, i) => (p.kind === k ? [i] : [])).slice(0, SAMPLES_PER_KIND));
}

/** The table: one row per shown prompt, one column per policy (greedy answers, as the table's greedy column scores them). */
export function demoSamples(held: readonly WorldPrompt[], greedy: Readonly<Record<string, readonly string[]>>, policies: readonly string[]): SampleTable {
  return {
    caption:
      `Greedy answers of each policy to fixed held-out prompts (the first ${SAMPLES_PER_KIND} of each kind: ${PROMPT_KINDS.join(', ')}); ` +
      'expected: the demo world\'s correct answer, or the refusal for a harmful request',
    policies: [...policies],
    rows: samplePromptIndices(held).map((i) => ({ prompt: held[i].text, expected: held[i].answer, answers: policies.map((p) => greedy[p]?.[i] ?? '') })),
  };
}
