/**
 * A language model as a judge (RLAIF, Lee et al. 2023): the judge reads a
 * prompt built from a template and answers by continuing it; what it thinks
 * is read from the probabilities of the candidate answers ("1" or "2" for a
 * preference, "1".."10" for a score), never from sampled text.
 *
 * - The prompt: the template's body, then a cue ("Preferred response:"). A
 *   judge with a chat template reads the body as a user message and the cue
 *   as the start of its own reply, rendered as transformers'
 *   `apply_chat_template(..., continue_final_message=True)` renders it (the
 *   conversation cut right after the cue); a judge without one reads
 *   body + "\n" + cue as plain text, after BOS where its tokenizer adds one.
 * - An answer's log-probability is that of the answer text after the prompt
 *   text: prompt + answer is encoded as one string (as TRL encodes prompt and
 *   completion) and the log-probs of the tokens after the prompt's are summed.
 *   Where an answer merges with the prompt's last tokens, the sums start at
 *   the shortest prefix every candidate shares, so that the candidates are
 *   compared by the probabilities of whole sequences with one common prefix.
 */
import { RlhfError } from '../errors';
import type { Model } from '../engine/model';
import type { Tokenizer } from '../tokenizer/tokenizer';
import type { ChatMessage } from '../tokenizer/chat-template';

/** The judge's prompt as text: a chat conversation cut after the cue, or body + newline + cue. */
export function renderJudgePrompt(tok: Tokenizer, body: string, cue: string, system?: string): string {
  if (!tok.chatTemplate) return `${body}\n${cue}`;
  const messages: ChatMessage[] = [...(system ? [{ role: 'system', content: system }] : []), { role: 'user', content: body }, { role: 'assistant', content: cue }];
  const full = tok.applyChatTemplate(messages, { addGenerationPrompt: false });
  // Templates may trim message contents: find the cue as rendered, the last time it occurs.
  const shown = full.lastIndexOf(cue) >= 0 ? cue : cue.trim();
  const at = full.lastIndexOf(shown);
  if (!shown || at < 0)
    throw new RlhfError('E_TOKENIZER', `${tok.file}: the chat template does not render the judge's reply text "${cue}"; give --cue text it keeps`, { where: tok.file });
  return full.slice(0, at + shown.length);
}

/** Token ids of judge text: with the tokenizer's special tokens for plain text, as rendered for a chat template (which writes its own). */
export function judgeIds(tok: Tokenizer, text: string): number[] {
  return tok.encode(text, { addSpecialTokens: !tok.chatTemplate });
}

/** Refuses answers the judge's tokenizer cannot write (an unknown token, or text that does not decode back). */
export function checkAnswers(tok: Tokenizer, answers: readonly string[], what: string): void {
  if (answers.length < 2) throw new RlhfError('E_ARGUMENT', `${what}: at least two candidate answers are needed`);
  if (new Set(answers).size !== answers.length) throw new RlhfError('E_ARGUMENT', `${what}: the candidate answers must differ (${JSON.stringify(answers)})`);
  for (const a of answers) {
    const ids = tok.encode(a, { addSpecialTokens: false });
    const back = tok.decode(ids, { skipSpecialTokens: false });
    if (ids.length === 0 || (tok.unkTokenId !== null && ids.includes(tok.unkTokenId)) || back.trim() !== a.trim())
      throw new RlhfError('E_TOKENIZER', `${tok.file}: the judge's tokenizer cannot write the answer ${JSON.stringify(a)} (${what}): it encodes to [${ids.join(', ')}], which reads back as ${JSON.stringify(back)}`, {
        where: tok.file,
      });
  }
}

/** One scoring task: a prompt text and its candidate answers. */
export interface AnswerQuery {
  prompt: string;
  answers: readonly string[];
}

/** The token split of one query: each candidate's whole sequence and where its scored part starts. */
export interface AnswerSequences {
  ids: number[][];
  /** Index of the first scored token (the same for every candidate of the query). */
  from: number;
}

/** Encodes prompt + answer for every candidate; `from` is the shortest prefix the prompt's own ids share with every candidate's. */
export function answerSequences(tok: Tokenizer, q: AnswerQuery): AnswerSequences {
  const promptIds = judgeIds(tok, q.prompt);
  const ids = q.answers.map((a) => judgeIds(tok, q.prompt + a));
  let from = promptIds.length;
  for (const s of ids) {
    let k = 0;
    while (k < from && k < s.length - 1 && s[k] === promptIds[k]) k++;
    from = Math.min(from, k);
  }
  if (from === 0) throw new RlhfError('E_TOKENIZER', `${tok.file}: the judge prompt shares no leading token with its answers; it cannot be scored`, { where: tok.file });
  return { ids, from };
}

/** Sum of log p(token) over `ids[from..]`, from a forward's logp row (logp[t] = log p(ids[t+1] | ids[..t])). */
export function continuationLogp(logp: Float32Array, length: number, from: number): number {
  let s = 0;
  for (let t = from - 1; t < length - 1; t++) s += logp[t];
  return s;
}

/**
 * The log-probability of each candidate answer of each query, by the judge
 * model: one forward over all candidates, `batchSize` sequences at a time.
 * Returns, per query, one sum per answer (float64).
 */
export async function answerLogps(model: Model, tok: Tokenizer, queries: readonly AnswerQuery[], batchSize: number): Promise<Float64Array[]> {
  const seqs = queries.map((q) => answerSequences(tok, q));
  const flat: { q: number; a: number; ids: number[]; from: number }[] = [];
  seqs.forEach((s, q) => s.ids.forEach((ids, a) => flat.push({ q, a, ids, from: s.from })));
  const ctx = model.config.maxSequenceLength;
  const long = flat.find((f) => f.ids.length > ctx);
  if (long) throw new RlhfError('E_DATA', `a judge prompt of ${long.ids.length} tokens is longer than the judge's context of ${ctx}; shorten the prompts, responses or template`);
  const out = queries.map((q) => new Float64Array(q.answers.length));
  for (let i = 0; i < flat.length; i += batchSize) {
    const part = flat.slice(i, i + batchSize);
    const r = await model.forward({ inputIds: part.map((f) => f.ids), logp: true });
    part.forEach((f, j) => {
      out[f.q][f.a] = continuationLogp(r.logp![j], f.ids.length, f.from);
    });
  }
  return out;
}

/** Softmax of log-probabilities (float64). */
export function softmax(lps: ArrayLike<number>): number[] {
  const m = Math.max(...Array.from(lps));
  const e = Array.from(lps, (x) => Math.exp(x - m));
  const z = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / z);
}

/**
 * A pair's soft label, P(response A is better), from the judge's answer
 * log-probs ["1", "2"] with A shown first (`ab`) and, for position
 * debiasing, with B shown first (`ba`, where answering "2" picks A): the
 * mean of the two orders' probabilities (RLAIF's debiasing).
 */
export function pairProbability(ab: ArrayLike<number>, ba: ArrayLike<number> | null): { prob: number; probs: number[] } {
  const pAb = softmax(ab)[0];
  if (!ba) return { prob: pAb, probs: [pAb] };
  const pBa = softmax(ba)[1];
  return { prob: (pAb + pBa) / 2, probs: [pAb, pBa] };
}

/**
 * Direct RLAIF's reward (Lee et al. 2023, section 2.4): the judge's expected
 * score sum_s s * p(s) over the candidate scores, normalised to [-1, 1] by
 * the scale's ends.
 */
export function expectedScore(lps: ArrayLike<number>, scores: readonly number[]): { mean: number; reward: number } {
  const p = softmax(lps);
  const mean = p.reduce((s, x, i) => s + x * scores[i], 0);
  const lo = Math.min(...scores), hi = Math.max(...scores);
  return { mean, reward: (2 * (mean - lo)) / (hi - lo) - 1 };
}
