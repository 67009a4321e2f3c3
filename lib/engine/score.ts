/**
 * Scoring JSONL rows: per-token log-probabilities (and the reward at the last
 * token when the model has a score head). Rows are `{"input_ids": [...]}`
 * (scored as given) or `{"prompt", "completion"}` (tokenised; only the
 * completion's tokens are scored).
 */
import { RlhfError } from '../errors';
import { dataError, intList, JsonlRow } from '../data/jsonl';
import type { Tokenizer } from '../tokenizer/tokenizer';
import type { Model } from './model';

export interface ScoreRow {
  logprobs: number[];
  sum: number;
  reward?: number;
}

interface Prepared {
  ids: number[];
  /** index in `ids` of the first token whose log-prob is reported */
  from: number;
}

export function prepareScoreRow(row: JsonlRow, file: string, tok: Tokenizer | null, vocab: number): Prepared {
  const v = row.value;
  let ids: number[];
  let from = 1;
  if ('input_ids' in v) {
    ids = intList(v.input_ids, 'input_ids', file, row.line);
  } else if (typeof v.prompt === 'string' && typeof v.completion === 'string') {
    if (!tok) throw dataError(file, row.line, 'prompt/completion rows need the model folder to have a tokenizer.json');
    const p = tok.encode(v.prompt, { addSpecialTokens: true });
    const c = tok.encode(v.completion, { addSpecialTokens: false });
    if (c.length === 0) throw dataError(file, row.line, '"completion" encodes to no tokens');
    ids = [...p, ...c];
    from = Math.max(1, p.length);
  } else {
    throw dataError(file, row.line, 'expected {"input_ids": [...]} or {"prompt": "...", "completion": "..."}');
  }
  if (ids.length === 0) throw dataError(file, row.line, 'the sequence is empty');
  const bad = ids.find((x) => x < 0 || x >= vocab);
  if (bad !== undefined) throw dataError(file, row.line, `token id ${bad} is outside the vocabulary (size ${vocab})`);
  return { ids, from };
}

export async function scoreRows(model: Model, rows: JsonlRow[], file: string, tok: Tokenizer | null, batchSize = 8): Promise<ScoreRow[]> {
  const hasLm = model.config.head === 'lm';
  const hasScore = model.config.head === 'score';
  const maxLen = model.config.maxSequenceLength;
  const prepared = rows.map((r) => {
    const p = prepareScoreRow(r, file, tok, model.config.vocabSize);
    if (p.ids.length > maxLen) throw dataError(file, r.line, `sequence of ${p.ids.length} tokens is longer than the model's context (${maxLen})`);
    return p;
  });
  if (!hasLm && !hasScore) throw new RlhfError('E_MODEL', 'the model has neither an LM head nor a score head');
  const out: ScoreRow[] = [];
  for (let i = 0; i < prepared.length; i += batchSize) {
    const batch = prepared.slice(i, i + batchSize);
    const f = await model.forward({ inputIds: batch.map((p) => p.ids), logp: hasLm, values: hasScore });
    batch.forEach((p, b) => {
      const logprobs = hasLm ? Array.from(f.logp![b].subarray(p.from - 1, p.ids.length - 1)) : [];
      const row: ScoreRow = { logprobs, sum: logprobs.reduce((s, x) => s + x, 0) };
      if (hasScore) row.reward = f.values![b][p.ids.length - 1];
      out.push(row);
    });
  }
  return out;
}
