/**
 * Scoring JSONL rows: per-token log-probabilities (and the reward at the last
 * token when the model has a score head). Rows are tokenised exactly as
 * `rlhf-native sft` tokenises them (lib/data/sft-data.ts: TRL's tokenization
 * by default, EOS appended to completions and texts): `{"input_ids"}` (every
 * token after the first scored, or the `labels` positions), `{"text"}`,
 * `{"prompt", "completion"}` (strings or chat messages: the completion's
 * tokens scored) and `{"messages"}` (every token, or the assistant turns with
 * assistantOnlyLoss). The scored tokens are those SFT would train on.
 */
import { RlhfError } from '../errors';
import { dataError, JsonlRow } from '../data/jsonl';
import { prepareSftRow, type SftDataOptions } from '../data/sft-data';
import type { Tokenizer } from '../tokenizer/tokenizer';
import type { Model } from './model';

export interface ScoreRow {
  logprobs: number[];
  sum: number;
  reward?: number;
}

interface Prepared {
  ids: number[];
  /** [ids.length - 1]: 1 where logp[t] (the prediction of ids[t+1]) is reported. */
  mask: Float32Array;
}

/** Options of the tokenization, as the sft stage takes them (tokenize mode, assistant-only loss). */
export type ScoreTokenizeOptions = Pick<SftDataOptions, 'tokenize' | 'assistantOnlyLoss' | 'eosTokenId' | 'fallbackEosTokenId'>;

export function prepareScoreRow(row: JsonlRow, file: string, tok: Tokenizer | null, vocab: number, maxLen: number, o: ScoreTokenizeOptions = {}): Prepared {
  const getTok = () => {
    if (!tok) throw dataError(file, row.line, 'rows of text need the model folder to have a tokenizer.json');
    return tok;
  };
  // No truncation here: a row longer than the context is refused by the caller, not cut.
  const ex = prepareSftRow(row, file, { ...o, tokenizer: tok, maxLen: Number.MAX_SAFE_INTEGER, vocabSize: vocab }, getTok);
  if (ex.ids.length > maxLen) throw dataError(file, row.line, `sequence of ${ex.ids.length} tokens is longer than the model's context (${maxLen})`);
  if (ex.targets === 0) throw dataError(file, row.line, 'the row has no token to score');
  return { ids: ex.ids, mask: ex.lossMask };
}

export async function scoreRows(model: Model, rows: JsonlRow[], file: string, tok: Tokenizer | null, batchSize = 8, o: ScoreTokenizeOptions = {}): Promise<ScoreRow[]> {
  const hasLm = model.config.head === 'lm';
  const hasScore = model.config.head === 'score';
  const maxLen = model.config.maxSequenceLength;
  const fallbackEosTokenId = model.config.eosTokenIds[0] ?? null;
  const prepared = rows.map((r) => prepareScoreRow(r, file, tok, model.config.vocabSize, maxLen, { fallbackEosTokenId, ...o }));
  if (!hasLm && !hasScore) throw new RlhfError('E_MODEL', 'the model has neither an LM head nor a score head');
  const out: ScoreRow[] = [];
  for (let i = 0; i < prepared.length; i += batchSize) {
    const batch = prepared.slice(i, i + batchSize);
    const f = await model.forward({ inputIds: batch.map((p) => p.ids), logp: hasLm, values: hasScore });
    batch.forEach((p, b) => {
      const logprobs = hasLm ? Array.from(f.logp![b].subarray(0, p.ids.length - 1)).filter((_, t) => p.mask[t] > 0) : [];
      const row: ScoreRow = { logprobs, sum: logprobs.reduce((s, x) => s + x, 0) };
      if (hasScore) row.reward = f.values![b][p.ids.length - 1];
      out.push(row);
    });
  }
  return out;
}
