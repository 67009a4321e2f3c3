/**
 * `rlhf-native label`: preference pairs labelled by a judge model (RLAIF).
 *
 * Each input row is a prompt with two responses, given as a pair to relabel
 * (`chosen`, `rejected`) or as `responses: [a, b]`. The judge reads the
 * template with the prompt and the two responses and is asked which is
 * better; the soft label is the softmax of its log-probs of the answers "1"
 * and "2" (lib/label/judge.ts). Position debiasing (on by default) asks again
 * with the responses swapped and averages the two orders' P(A better).
 * Chain-of-thought first lets the judge write a rationale (greedy) after the
 * body, then reads the answer after it. Few-shot examples are rendered into
 * the body where the template says `{examples}`.
 *
 * Output: TRL's preference format, the response the judge prefers as
 * `chosen`, plus `label_prob` (P(chosen better) >= 0.5), `margin`
 * (2 * label_prob - 1, a preference strength in [0, 1] for a margin loss),
 * `label_probs` (each order's P(chosen better)) and the row's other fields.
 */
import { RlhfError } from '../errors';
import { dataError, isMessages, readJsonl, type JsonlRow } from '../data/jsonl';
import type { Model } from '../engine/model';
import type { Tokenizer } from '../tokenizer/tokenizer';
import { answerLogps, checkAnswers, judgeIds, pairProbability, renderJudgePrompt, type AnswerQuery } from './judge';

/** The default body: a rubric that suits an assistant's answers, then the sample. */
export const DEFAULT_PAIR_TEMPLATE = [
  'Compare two responses to the same request. The better response does what was asked correctly and helpfully, and refuses a request for something harmful.',
  '{examples}Request: {prompt}',
  'Response 1: {response_1}',
  'Response 2: {response_2}',
  'Which response is better, 1 or 2?',
].join('\n');
export const DEFAULT_PAIR_CUE = 'Preferred response:';
export const PAIR_ANSWERS = [' 1', ' 2'] as const;
export const COT_CUE = 'Rationale:';

export interface LabelOptions {
  /** Body template with {prompt}, {response_1}, {response_2} and optionally {examples}. */
  template?: string;
  /** The start of the judge's reply, after which it answers " 1" or " 2". */
  cue?: string;
  /** A system message for judges with a chat template. */
  system?: string;
  /** Ask in both orders and average (default true). */
  debias?: boolean;
  /** Let the judge write a rationale first, up to this many tokens (0: none, the default). */
  cotTokens?: number;
  /** Few-shot examples: rows {prompt, response_1, response_2, preferred: 1 | 2, rationale?}. */
  examples?: readonly FewShotExample[];
  batchSize?: number;
}

export interface FewShotExample {
  prompt: string;
  response_1: string;
  response_2: string;
  preferred: 1 | 2;
  rationale?: string;
}

/** A pair to label: the prompt's text, two responses, and the row it came from. */
export interface LabelPair {
  prompt: string;
  a: string;
  b: string;
  /** The row's fields other than the prompt and responses, passed through. */
  extra: Record<string, unknown>;
  /** The input's own preference when it was a chosen/rejected pair (a is chosen). */
  givenChosen: boolean;
  line: number;
}

export interface LabelledPair {
  row: Record<string, unknown>;
  /** P(a better), debiased when asked. */
  prob: number;
  /** P(a better) with a shown first, then (debiased) with b shown first. */
  probs: number[];
}

/** Text of a prompt or completion: a string, or chat messages (the last user / assistant content; earlier turns as "role: content" lines). */
function textOf(v: unknown, key: string, file: string, line: number): string {
  if (typeof v === 'string') return v;
  if (isMessages(v)) return v.length === 1 ? v[0].content : v.map((m) => `${m.role}: ${m.content}`).join('\n');
  throw dataError(file, line, `"${key}" must be a string or a list of {"role", "content"} messages`);
}

/** Reads the pairs to label: {prompt, chosen, rejected} or {prompt, responses: [a, b]}. */
export function readLabelPairs(file: string): LabelPair[] {
  return readJsonl(file).map(({ line, value }: JsonlRow) => {
    if (!('prompt' in value)) throw dataError(file, line, 'needs "prompt" and either "chosen" + "rejected" or "responses": [a, b]');
    const prompt = textOf(value.prompt, 'prompt', file, line);
    const { prompt: _p, chosen, rejected, responses, label_prob: _l, label_probs: _ls, margin: _m, ...extra } = value;
    if (responses !== undefined) {
      if (!Array.isArray(responses) || responses.length !== 2) throw dataError(file, line, '"responses" must be a list of exactly two responses');
      return { prompt, a: textOf(responses[0], 'responses[0]', file, line), b: textOf(responses[1], 'responses[1]', file, line), extra, givenChosen: false, line };
    }
    if (chosen === undefined || rejected === undefined) throw dataError(file, line, 'needs "chosen" and "rejected", or "responses": [a, b]');
    return { prompt, a: textOf(chosen, 'chosen', file, line), b: textOf(rejected, 'rejected', file, line), extra, givenChosen: true, line };
  });
}

/** Reads few-shot examples, checking every field. */
export function readFewShot(file: string): FewShotExample[] {
  return readJsonl(file).map(({ line, value: v }) => {
    for (const k of ['prompt', 'response_1', 'response_2'])
      if (typeof v[k] !== 'string') throw dataError(file, line, `a few-shot example needs "${k}" as a string`);
    if (v.preferred !== 1 && v.preferred !== 2) throw dataError(file, line, '"preferred" must be 1 or 2');
    if (v.rationale !== undefined && typeof v.rationale !== 'string') throw dataError(file, line, '"rationale" must be a string');
    return v as unknown as FewShotExample;
  });
}

const fill = (template: string, vars: Record<string, string>) => template.replace(/\{(prompt|response_1|response_2|examples)\}/g, (_m, k: string) => vars[k]);

/** The few-shot block: each example as the sample is shown, with its answer. */
export function examplesBlock(examples: readonly FewShotExample[], cue: string): string {
  return examples
    .map((e) => [`Request: ${e.prompt}`, `Response 1: ${e.response_1}`, `Response 2: ${e.response_2}`, ...(e.rationale ? [`${COT_CUE} ${e.rationale}`] : []), `${cue} ${e.preferred}`, ''].join('\n') + '\n')
    .join('');
}

/** Checks a template before any work: the placeholders it must hold. */
export function checkTemplate(template: string, where: string): void {
  for (const k of ['{prompt}', '{response_1}', '{response_2}'])
    if (!template.includes(k)) throw new RlhfError('E_ARGUMENT', `${where}: the judge template has no ${k}; it needs {prompt}, {response_1} and {response_2}`, { where });
}

/** Labels every pair with the judge (see the file comment). `onProgress` gets the pairs done so far. */
export async function labelPairs(model: Model, tok: Tokenizer, pairs: readonly LabelPair[], o: LabelOptions = {}, onProgress?: (done: number) => void): Promise<LabelledPair[]> {
  const template = o.template ?? DEFAULT_PAIR_TEMPLATE;
  const cue = o.cue ?? DEFAULT_PAIR_CUE;
  const debias = o.debias ?? true;
  const batchSize = o.batchSize ?? 16;
  checkTemplate(template, 'label');
  checkAnswers(tok, PAIR_ANSWERS, 'the preference answers');
  const examples = o.examples?.length ? examplesBlock(o.examples, cue) : '';
  const orders = debias ? 2 : 1;
  const out: LabelledPair[] = [];
  const chunk = Math.max(1, Math.floor(batchSize / (2 * orders)));
  for (let i = 0; i < pairs.length; i += chunk) {
    const part = pairs.slice(i, i + chunk);
    const bodies = part.flatMap((p) => {
      const ab = fill(template, { prompt: p.prompt, response_1: p.a, response_2: p.b, examples });
      const ba = fill(template, { prompt: p.prompt, response_1: p.b, response_2: p.a, examples });
      return debias ? [ab, ba] : [ab];
    });
    const cues = o.cotTokens ? await rationales(model, tok, bodies, cue, o) : bodies.map(() => cue);
    const queries: AnswerQuery[] = bodies.map((body, k) => ({ prompt: renderJudgePrompt(tok, body, cues[k], o.system), answers: PAIR_ANSWERS }));
    const lps = await answerLogps(model, tok, queries, batchSize);
    part.forEach((p, j) => {
      const { prob, probs } = pairProbability(lps[j * orders], debias ? lps[j * orders + 1] : null);
      const aBetter = prob >= 0.5;
      const row = {
        prompt: p.prompt,
        chosen: aBetter ? p.a : p.b,
        rejected: aBetter ? p.b : p.a,
        ...p.extra,
        label_prob: aBetter ? prob : 1 - prob,
        margin: Math.abs(2 * prob - 1),
        label_probs: probs.map((x) => (aBetter ? x : 1 - x)),
      };
      out.push({ row, prob, probs });
    });
    onProgress?.(out.length);
  }
  return out;
}

/** Chain-of-thought: the judge's greedy rationale after "Rationale:", then the cue on a new line. */
async function rationales(model: Model, tok: Tokenizer, bodies: readonly string[], cue: string, o: LabelOptions): Promise<string[]> {
  const prompts = bodies.map((b) => judgeIds(tok, renderJudgePrompt(tok, b, COT_CUE, o.system)));
  const eos = tok.eosTokenId !== null ? [tok.eosTokenId] : model.config.eosTokenIds;
  const out: string[] = [];
  const bs = o.batchSize ?? 16;
  for (let i = 0; i < prompts.length; i += bs) {
    const r = await model.generate({ prompts: prompts.slice(i, i + bs), maxNewTokens: o.cotTokens, temperature: 0, eosIds: eos });
    for (const t of r.tokens) {
      // The rationale ends where the judge starts a new paragraph or writes the cue itself.
      let text = tok.decode(Array.from(t), { skipSpecialTokens: true });
      const cut = [text.indexOf('\n\n'), text.indexOf(cue)].filter((k) => k >= 0);
      if (cut.length) text = text.slice(0, Math.min(...cut));
      out.push(`${COT_CUE} ${text.trim()}\n${cue}`);
    }
  }
  return out;
}

/** Agreement of the judge with the pairs' own labels (input pairs only): debiased, and from the first order alone. */
export function agreement(pairs: readonly LabelPair[], labelled: readonly LabelledPair[]): { pairs: number; debiased: number; firstOrder: number } | null {
  const idx = pairs.map((p, i) => (p.givenChosen ? i : -1)).filter((i) => i >= 0);
  if (!idx.length) return null;
  const agree = (f: (l: LabelledPair) => number) => idx.filter((i) => f(labelled[i]) > 0.5).length / idx.length;
  return { pairs: idx.length, debiased: agree((l) => l.prob), firstOrder: agree((l) => l.probs[0]) };
}
