/**
 * SFT data: JSONL rows in TRL's formats, turned into token ids plus Hugging
 * Face labels (the token id where the loss counts, -100 where it does not),
 * and the batch plan (file order or seeded shuffle, micro-batches grouped
 * into optimizer steps). See docs/sft.md.
 *
 * Row formats (the first matching key wins, in this order):
 *   {"input_ids": [...], "labels": [...]}  pre-tokenised; labels optional (all
 *                                         tokens), -100 = ignored; a label that
 *                                         is not -100 must equal the id there.
 *   {"messages": [{role, content}, ...]}  chat template; loss on every token
 *                                         (TRL's default), or on the assistant
 *                                         turns only (assistantOnlyLoss, and
 *                                         always in 'separate' mode).
 *   {"prompt": "...", "completion": "..."} loss on the completion (+ EOS) only;
 *                                         TRL mode: prompt + completion + EOS
 *                                         encoded as one string, the prompt's
 *                                         tokens (encoded alone) masked.
 *   {"prompt": [msgs], "completion": [msgs]} conversational prompt/completion
 *                                         (chat template; loss on the completion).
 *   {"text": "..."}                       loss on every token (+ EOS).
 *
 * Our forward's logp[t] is log p(ids[t+1] | ids[..t]), so logp[t] counts in
 * the loss when labels[t+1] != -100: the shift of transformers' causal-LM
 * loss. labels[0] is never a target (nothing predicts the first token).
 */
import { RlhfError } from '../errors';
import { dataError, intList, isMessages, readJsonl, type JsonlRow } from './jsonl';
import type { Tokenizer } from '../tokenizer/tokenizer';
import type { ChatMessage } from '../tokenizer/chat-template';
import { eosPlan, trlChatPair, trlTextPair, truncate, withEosId, withEosText, type TokenizeMode, type TruncationMode } from './trl-tokens';

export const IGNORE_INDEX = -100;

export type SftFormat = 'tokens' | 'messages' | 'prompt_completion' | 'conversational_prompt_completion' | 'text';

export interface SftExample {
  /** 1-based line of the row in its file. */
  line: number;
  format: SftFormat;
  ids: number[];
  /** Same length as ids: ids[t] where the token is a target, -100 where it is not. */
  labels: number[];
  /** [ids.length - 1]: 1 where logp[t] (the prediction of ids[t+1]) is in the loss, else 0. */
  lossMask: Float32Array;
  /** Number of target tokens: the sum of lossMask. */
  targets: number;
  /** Tokens cut off by truncation (0 when the row fits). */
  truncated: number;
}

export interface SftDataOptions {
  /**
   * The model's tokenizer; needed by every format but pre-tokenised rows. A
   * function is called once, on the first row that needs it.
   */
  tokenizer?: Tokenizer | (() => Tokenizer) | null;
  /** Longest sequence kept (longer rows are cut at the end). */
  maxLen: number;
  /** The model's vocabulary size: every id must be below it. */
  vocabSize: number;
  /**
   * Appended to completions and texts (TRL's behaviour); null: nothing is
   * appended. Default: the tokenizer's eos_token, else `fallbackEosTokenId`.
   */
  eosTokenId?: number | null;
  /** The EOS id when the tokenizer names none (e.g. the model config's eos_token_id). */
  fallbackEosTokenId?: number | null;
  /**
   * 'trl' (default): TRL 1.13's SFTTrainer tokenization (prompt + completion
   * + EOS as one string; {"messages"} rows train on every token unless
   * assistantOnlyLoss). 'separate': prompt and completion encoded apart and
   * concatenated, {"messages"} rows on assistant turns only.
   */
  tokenize?: TokenizeMode;
  /** {"messages"} rows in 'trl' mode: loss on the assistant turns only (TRL's assistant_only_loss). Default false. */
  assistantOnlyLoss?: boolean;
  /** A row longer than maxLen keeps its start (default) or its end. */
  truncationMode?: TruncationMode;
}

export interface SftDataStats {
  rows: number;
  /** Input tokens over all rows (after truncation). */
  tokens: number;
  /** Target tokens over all rows. */
  targets: number;
  /** Rows cut by truncation. */
  truncatedRows: number;
  /** Rows left with no target token (e.g. a prompt longer than maxLen). */
  noTargetRows: number;
  formats: Partial<Record<SftFormat, number>>;
}

export interface SftDataset {
  file: string;
  examples: SftExample[];
  stats: SftDataStats;
}

/** labels -> the loss mask over logp positions (labels[t + 1] != -100). */
export function lossMaskFromLabels(labels: readonly number[]): Float32Array {
  return Float32Array.from(labels.slice(1), (l) => (l === IGNORE_INDEX ? 0 : 1));
}

/**
 * Where the tokens of `prefixText` end inside the full conversation `ids`:
 * the prefix must render as a string prefix of `fullText` and encode as a
 * token prefix of `ids`, or the spans cannot be located.
 */
function prefixTokens(tok: Tokenizer, prefixText: string, fullText: string, ids: readonly number[], what: string): number {
  const why = `the chat template does not render ${what} as a prefix of the whole conversation, so the assistant tokens cannot be located`;
  if (!fullText.startsWith(prefixText)) throw new RlhfError('E_DATA', why);
  const p = tok.encode(prefixText, { addSpecialTokens: false });
  if (p.length > ids.length || p.some((x, i) => x !== ids[i])) throw new RlhfError('E_DATA', `${why} (the tokenisation differs at the boundary)`);
  return p.length;
}

/**
 * Token ids and labels of a conversation, loss on assistant turns only.
 *
 * Method: render the whole conversation (no generation prompt) and encode it
 * without special tokens (as `apply_chat_template(tokenize=True)` does). For
 * the assistant message i, render messages[0..i) with the generation prompt
 * (where the assistant's tokens begin) and messages[0..i] without it (where
 * they end); the tokens between the two prefix lengths are targets. So a
 * ChatML turn trains on `content<|im_end|>\n`: everything the template emits
 * for the message after `<|im_start|>assistant\n`. `fromMessage` (for the
 * conversational prompt/completion format) instead makes every token after
 * the generation prompt that follows messages[0..fromMessage) a target.
 */
export function chatTokens(tok: Tokenizer, messages: readonly ChatMessage[], fromMessage?: number): { ids: number[]; labels: number[] } {
  const full = tok.applyChatTemplate(messages, { addGenerationPrompt: false });
  const ids = tok.encode(full, { addSpecialTokens: false });
  const labels = new Array<number>(ids.length).fill(IGNORE_INDEX);
  const mark = (a: number, b: number) => {
    for (let t = a; t < b; t++) labels[t] = ids[t];
  };
  if (fromMessage !== undefined) {
    const start = prefixTokens(tok, tok.applyChatTemplate(messages.slice(0, fromMessage), { addGenerationPrompt: true }), full, ids, 'the prompt');
    mark(start, ids.length);
    return { ids, labels };
  }
  messages.forEach((m, i) => {
    if (m.role !== 'assistant') return;
    const start = prefixTokens(tok, tok.applyChatTemplate(messages.slice(0, i), { addGenerationPrompt: true }), full, ids, `the messages before message ${i}`);
    const end = prefixTokens(tok, tok.applyChatTemplate(messages.slice(0, i + 1), { addGenerationPrompt: false }), full, ids, `the messages up to message ${i}`);
    mark(start, end);
  });
  return { ids, labels };
}

function eosId(opts: SftDataOptions, tok: Tokenizer): number | null {
  return opts.eosTokenId !== undefined ? opts.eosTokenId : (tok.eosTokenId ?? opts.fallbackEosTokenId ?? null);
}

function withEos(ids: number[], eos: number | null): number[] {
  return eos === null || ids[ids.length - 1] === eos ? ids : [...ids, eos];
}

/**
 * TRL's completion mask: the whole sequence as encoded, the first
 * promptIds.length tokens out of the loss (the prompt encoded alone; TRL
 * only warns when it is not a prefix of the whole, and so do we not fail).
 */
function maskPrompt({ promptIds, ids }: { promptIds: number[]; ids: number[] }): { ids: number[]; labels: number[] } {
  return { ids, labels: ids.map((x, t) => (t < promptIds.length ? IGNORE_INDEX : x)) };
}

/** One JSONL row -> an SftExample (E_DATA naming file:line on any problem). */
export function prepareSftRow(row: JsonlRow, file: string, opts: SftDataOptions, getTok: () => Tokenizer): SftExample {
  const v = row.value;
  const err = (msg: string) => dataError(file, row.line, msg);
  const trl = (opts.tokenize ?? 'trl') === 'trl';
  let ids: number[], labels: number[], format: SftFormat;
  try {
    if ('input_ids' in v) {
      format = 'tokens';
      ids = intList(v.input_ids, 'input_ids', file, row.line);
      if (v.labels === undefined || v.labels === null) labels = [...ids];
      else {
        labels = intList(v.labels, 'labels', file, row.line);
        if (labels.length !== ids.length) throw err(`"labels" has ${labels.length} entries but "input_ids" has ${ids.length}`);
        const bad = labels.findIndex((l, t) => l !== IGNORE_INDEX && l !== ids[t]);
        if (bad >= 0)
          throw err(
            `labels[${bad}] = ${labels[bad]} differs from input_ids[${bad}] = ${ids[bad]}; labels must be the input ids (or -100 to ignore a position), unshifted, as in transformers`,
          );
      }
    } else if ('messages' in v) {
      format = 'messages';
      if (!isMessages(v.messages)) throw err('"messages" must be a non-empty list of {"role": string, "content": string}');
      if (!v.messages.some((m) => m.role === 'assistant')) throw err('"messages" has no assistant message: nothing to train on');
      if (trl && !opts.assistantOnlyLoss) {
        const tok = getTok();
        ids = tok.encode(tok.applyChatTemplate(v.messages, { addGenerationPrompt: false }), { addSpecialTokens: false });
        labels = [...ids];
      } else ({ ids, labels } = chatTokens(getTok(), v.messages));
    } else if ('prompt' in v && 'completion' in v) {
      if (typeof v.prompt === 'string' && typeof v.completion === 'string') {
        format = 'prompt_completion';
        const tok = getTok();
        if (trl) ({ ids, labels } = maskPrompt(trlTextPair(tok, v.prompt, v.completion, eosPlan(tok, eosId(opts, tok)))));
        else {
          const p = tok.encode(v.prompt, { addSpecialTokens: true });
          const c = withEos(tok.encode(v.completion, { addSpecialTokens: false }), eosId(opts, tok));
          ids = [...p, ...c];
          labels = [...new Array<number>(p.length).fill(IGNORE_INDEX), ...c];
        }
      } else if (isMessages(v.prompt) && isMessages(v.completion)) {
        format = 'conversational_prompt_completion';
        if (trl) ({ ids, labels } = maskPrompt(trlChatPair(getTok(), v.prompt, v.completion)));
        else ({ ids, labels } = chatTokens(getTok(), [...v.prompt, ...v.completion], v.prompt.length));
      } else {
        throw err('"prompt" and "completion" must both be strings, or both lists of {"role", "content"} messages');
      }
    } else if ('text' in v) {
      format = 'text';
      if (typeof v.text !== 'string') throw err('"text" must be a string');
      const tok = getTok();
      if (trl) {
        const eos = eosPlan(tok, eosId(opts, tok));
        ids = withEosId(tok.encode(withEosText(v.text, eos), { addSpecialTokens: true }), eos);
      } else ids = withEos(tok.encode(v.text, { addSpecialTokens: true }), eosId(opts, tok));
      labels = [...ids];
    } else {
      throw err('expected one of {"prompt", "completion"}, {"messages"}, {"text"} or {"input_ids", "labels"}');
    }
  } catch (e) {
    // Tokenizer and template errors get the row's location too.
    if (e instanceof RlhfError && !e.message.startsWith(`${file}:`)) throw err(e.message);
    throw e;
  }
  const bad = ids.find((x) => x < 0 || x >= opts.vocabSize);
  if (bad !== undefined) throw err(`token id ${bad} is outside the model's vocabulary (size ${opts.vocabSize})`);
  const truncated = Math.max(0, ids.length - opts.maxLen);
  if (truncated > 0) {
    ids = truncate(ids, opts.maxLen, opts.truncationMode ?? 'keep_start');
    labels = truncate(labels, opts.maxLen, opts.truncationMode ?? 'keep_start');
  }
  if (ids.length < 2) throw err(`the row has ${ids.length} token${ids.length === 1 ? '' : 's'}; at least 2 are needed to predict anything`);
  const lossMask = lossMaskFromLabels(labels);
  const targets = labels.reduce((s, l, t) => s + (t > 0 && l !== IGNORE_INDEX ? 1 : 0), 0);
  return { line: row.line, format, ids, labels, lossMask, targets, truncated };
}

/** Reads and prepares a whole SFT JSONL file. */
export function loadSftData(file: string, opts: SftDataOptions): SftDataset {
  if (!Number.isInteger(opts.maxLen) || opts.maxLen < 2) throw new RlhfError('E_ARGUMENT', `max length must be an integer >= 2, got ${opts.maxLen}`);
  const rows = readJsonl(file);
  // Load the tokenizer up front (its own errors keep their code), only when a row needs it.
  const t = opts.tokenizer;
  const tok = rows.some((r) => !('input_ids' in r.value)) && t ? (typeof t === 'function' ? t() : t) : null;
  const getTok = (): Tokenizer => {
    if (!tok) throw new RlhfError('E_DATA', 'this row format needs the model folder to have a tokenizer (tokenizer.json); give pre-tokenised {"input_ids", "labels"} rows otherwise');
    return tok;
  };
  const examples = rows.map((r) => prepareSftRow(r, file, opts, getTok));
  const stats: SftDataStats = { rows: examples.length, tokens: 0, targets: 0, truncatedRows: 0, noTargetRows: 0, formats: {} };
  for (const e of examples) {
    stats.tokens += e.ids.length;
    stats.targets += e.targets;
    if (e.truncated) stats.truncatedRows++;
    if (!e.targets) stats.noTargetRows++;
    stats.formats[e.format] = (stats.formats[e.format] ?? 0) + 1;
  }
  return { file, examples, stats };
}

/** A micro-batch ready for the trainer: ragged ids (right-padded by the engine) and the flat [B * (T - 1)] loss mask. */
export interface SftBatch {
  inputIds: number[][];
  /** T: the longest row. */
  seq: number;
  mask: Float32Array;
  /** Target tokens (sum of mask). */
  targets: number;
  /** Real (non-padding) input tokens. */
  tokens: number;
}

export function packSftBatch(examples: readonly SftExample[]): SftBatch {
  if (examples.length === 0) throw new RlhfError('E_ARGUMENT', 'an SFT batch needs at least one row');
  const seq = Math.max(...examples.map((e) => e.ids.length));
  const mask = new Float32Array(examples.length * (seq - 1));
  let targets = 0, tokens = 0;
  examples.forEach((e, b) => {
    mask.set(e.lossMask, b * (seq - 1));
    targets += e.targets;
    tokens += e.ids.length;
  });
  return { inputIds: examples.map((e) => e.ids), seq, mask, targets, tokens };
}

/** mulberry32: a small seeded PRNG, uniform in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A seeded Fisher–Yates permutation of 0..n-1. */
export function permutation(n: number, seed: number): number[] {
  const rand = seededRandom(seed);
  const p = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [p[i], p[j]] = [p[j], p[i]];
  }
  return p;
}

/** The row order of one epoch: file order, or a permutation seeded by (seed, epoch). */
export function epochOrder(n: number, epoch: number, shuffle: boolean, seed: number): number[] {
  return shuffle ? permutation(n, (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(epoch + 1, 0x85ebca6b)) >>> 0) : Array.from({ length: n }, (_, i) => i);
}

/**
 * Splits rows into train and eval: `round(fraction * n)` rows (at least 1)
 * picked by a permutation seeded with `seed`; both parts keep file order.
 */
export function splitEval(n: number, fraction: number, seed: number): { train: number[]; eval: number[] } {
  if (!(fraction > 0 && fraction < 1)) throw new RlhfError('E_ARGUMENT', `--eval-fraction must be in (0, 1), got ${fraction}`);
  const k = Math.max(1, Math.round(fraction * n));
  if (k >= n) throw new RlhfError('E_ARGUMENT', `--eval-fraction ${fraction} of ${n} rows leaves no training rows`);
  const p = permutation(n, (seed ^ 0x5eed) >>> 0);
  const ev = p.slice(0, k).sort((a, b) => a - b);
  const inEval = new Set(ev);
  return { train: Array.from({ length: n }, (_, i) => i).filter((i) => !inEval.has(i)), eval: ev };
}

export interface BatchPlanOptions {
  batchSize: number;
  gradAccum: number;
  shuffle: boolean;
  seed: number;
}

/** Optimizer steps per epoch: ceil(micro-batches / accumulation), as the Hugging Face Trainer counts them. */
export function stepsPerEpoch(n: number, batchSize: number, gradAccum: number): number {
  return Math.max(1, Math.ceil(Math.ceil(n / batchSize) / gradAccum));
}

export interface PlannedStep {
  /** 1-based optimizer step. */
  step: number;
  /** 0-based epoch this step belongs to. */
  epoch: number;
  /** Epochs completed after this step (fractional). */
  epochProgress: number;
  /** Row indices (into the training rows) of each micro-batch. */
  micro: number[][];
}

/**
 * The optimizer steps of a run: each epoch walks the rows (in file order or
 * shuffled per epoch), cuts them into micro-batches of batchSize (the last one
 * may be smaller) and groups gradAccum consecutive micro-batches into a step
 * (the last step of an epoch may have fewer). Epochs repeat until totalSteps.
 */
export function* planSteps(n: number, totalSteps: number, opts: BatchPlanOptions): Generator<PlannedStep> {
  if (n < 1) throw new RlhfError('E_DATA', 'no training rows');
  const spe = stepsPerEpoch(n, opts.batchSize, opts.gradAccum);
  let step = 0;
  for (let epoch = 0; step < totalSteps; epoch++) {
    const order = epochOrder(n, epoch, opts.shuffle, opts.seed);
    const micro: number[][] = [];
    for (let i = 0; i < n; i += opts.batchSize) micro.push(order.slice(i, i + opts.batchSize));
    for (let j = 0; j < spe && step < totalSteps; j++) {
      step++;
      yield { step, epoch, epochProgress: epoch + (j + 1) / spe, micro: micro.slice(j * opts.gradAccum, (j + 1) * opts.gradAccum) };
    }
  }
}
