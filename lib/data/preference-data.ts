/**
 * Preference data: JSONL rows of a prompt with a chosen and a rejected
 * completion, in TRL's conventions, turned into token ids for DPO and reward
 * modelling. See docs/preference-data.md.
 *
 * Row formats (the first matching shape wins, in this order):
 *   {"prompt_ids"?: [...], "chosen_ids": [...], "rejected_ids": [...]}
 *       pre-tokenised; with prompt_ids the two lists are completions of it,
 *       without it they are whole sequences (implicit prompt, below). Used
 *       as given: no EOS is appended.
 *   {"input_ids_chosen": [...], "input_ids_rejected": [...]}
 *       TRL RewardTrainer's pre-tokenised columns: whole sequences.
 *   {"prompt"?: "...", "chosen": "...", "rejected": "..."}
 *       standard: TRL mode (default) encodes prompt + completion + EOS as
 *       one string with special tokens, the prompt's tokens (encoded alone)
 *       being the prompt; 'separate' mode encodes the prompt with special
 *       tokens, each completion without, then EOS (when appendEos).
 *   {"prompt"?: [msgs], "chosen": [msgs], "rejected": [msgs]}
 *       conversational: rendered with the chat template; the completion is
 *       every token after the prompt's generation prompt.
 *
 * Implicit prompt (no "prompt"/"prompt_ids", TRL's extract_prompt): for
 * messages, the longest common list of leading messages; for strings, the
 * longest common character prefix (TRL mode) or token prefix ('separate');
 * for ids, the longest common token prefix (kept short of either
 * sequence's end, so each completion has a token).
 *
 * Optional per-row fields: "margin" (number) or "rating" (Llama 2's
 * preference strength, mapped to a margin by Touvron et al. 2023, Table 27),
 * "safe" (boolean) and "category" (string), passed through.
 */
import { RlhfError } from '../errors';
import { dataError, intList, isMessages, readJsonl, type JsonlRow } from './jsonl';
import { chatTokens, IGNORE_INDEX } from './sft-data';
import type { Tokenizer } from '../tokenizer/tokenizer';
import type { ChatMessage } from '../tokenizer/chat-template';
import { eosPlan, extractPromptChars, trlChatPair, trlTextPair, type EosPlan, type TokenizeMode, type TruncationMode } from './trl-tokens';

export type PreferenceFormat = 'tokens' | 'standard' | 'implicit_prompt' | 'conversational' | 'conversational_implicit_prompt';

export interface PreferenceExample {
  /** 1-based line of the row in its file. */
  line: number;
  format: PreferenceFormat;
  /** The prompt's ids (the common prefix of chosen and rejected). */
  prompt: number[];
  /** Whole sequences: prompt + completion (+ EOS when appended), after truncation. */
  chosen: number[];
  rejected: number[];
  /** Index of the first completion token in chosen / rejected (= prompt.length). */
  chosenFrom: number;
  rejectedFrom: number;
  /** The row's margin (given, or mapped from its rating); null when it has neither. */
  margin: number | null;
  /** The row's "rating", when given. */
  rating?: string;
  /** The row's soft label "label_prob", P(chosen better) in [0, 1] (AI feedback: rlhf-native label), when given. */
  labelProb?: number;
  safe?: boolean;
  category?: string;
  /** The prompt as text: the string prompt, or the rendered chat prompt with its generation prompt. */
  promptText?: string;
  /** Tokens cut off the end of chosen and of rejected (0 when they fit). */
  truncated: { chosen: number; rejected: number };
}

/**
 * Llama 2's margin for each preference rating (Touvron et al. 2023, Table 27):
 * 'small' is the table's "Margin Small" column, 'large' its "Margin Large".
 * "negligibly better" and "unsure" share the last row.
 */
export const LLAMA2_MARGINS = {
  small: { 'significantly better': 1, better: 2 / 3, 'slightly better': 1 / 3, 'negligibly better': 0, unsure: 0 },
  large: { 'significantly better': 3, better: 2, 'slightly better': 1, 'negligibly better': 0, unsure: 0 },
} as const;

export type MarginScale = keyof typeof LLAMA2_MARGINS;
export type PreferenceRating = keyof (typeof LLAMA2_MARGINS)['small'];

/** A rating string ('Significantly better', 'slightly_better', ...) -> the table's key, or null. */
export function normalizeRating(r: string): PreferenceRating | null {
  const k = r.trim().toLowerCase().replace(/[_-]+/g, ' ').replace(/\s+/g, ' ');
  return k in LLAMA2_MARGINS.small ? (k as PreferenceRating) : null;
}

export interface PreferenceDataOptions {
  /** The model's tokenizer; needed by every format but pre-tokenised rows. A function is called once, when a row needs it. */
  tokenizer?: Tokenizer | (() => Tokenizer) | null;
  /** Longest sequence kept: longer chosen/rejected sequences are cut at the end; a prompt must be shorter. */
  maxLen: number;
  /** The model's vocabulary size: every id must be below it. */
  vocabSize: number;
  /** Appended to string completions when appendEos. Default: the tokenizer's eos_token, else `fallbackEosTokenId`. */
  eosTokenId?: number | null;
  /** The EOS id when the tokenizer names none (e.g. the model config's eos_token_id). */
  fallbackEosTokenId?: number | null;
  /** Append EOS to string completions (TRL's DPOTrainer and RewardTrainer do). Default true. */
  appendEos?: boolean;
  /**
   * Token ids generation stops at (the model's EOS ids, e.g. a chat
   * template's end-of-turn). A chat-template completion is cut right after
   * its last one, dropping what the template writes after the end of the
   * turn (typically a newline): a policy's sampled response ends at that
   * token, so a reward read at the last token is read at the same kind of
   * token in training and in PPO / rejection sampling. Default: none.
   */
  stopTokenIds?: readonly number[];
  /** Which column of Llama 2's Table 27 maps a "rating" to a margin. Default 'small'. */
  marginScale?: MarginScale;
  /**
   * A row whose chosen and rejected sequences are identical (after
   * truncation) teaches nothing and scores as a wrong preference:
   * 'skip' drops it and records its line in the stats (default), 'error'
   * fails with E_DATA naming file:line.
   */
  identical?: 'skip' | 'error';
  /**
   * 'trl' (default): TRL 1.13's tokenization (prompt + completion + EOS as
   * one string, the boundary where the prompt encoded alone ends; an
   * implicit string prompt is TRL's extract_prompt, a common character
   * prefix). 'separate': prompt and completion encoded apart and
   * concatenated, an implicit prompt the common token prefix.
   */
  tokenize?: TokenizeMode;
  /**
   * 'trl' mode: each sequence as TRL's RewardTrainer encodes it (prompt +
   * completion, one string, whole) instead of DPOTrainer's prompt ids +
   * the completion's part of that encoding. The two differ only where the
   * prompt's tokens are not a prefix of the whole. Default false.
   */
  wholeSequence?: boolean;
  /**
   * A sequence longer than maxLen keeps its start (default; a prompt as
   * long as maxLen is then an error) or its end (TRL's keep_end: the
   * prompt's start goes first, and the first kept token is never a target).
   */
  truncationMode?: TruncationMode;
  /** A prompt longer than this many tokens keeps its last ones (0 or absent: no limit). */
  maxPromptLength?: number;
}

export interface PreferenceDataStats {
  /** Rows kept. */
  rows: number;
  /** Input tokens over chosen and rejected sequences (after truncation). */
  tokens: number;
  /** Completion tokens over chosen and rejected. */
  completionTokens: number;
  /** Rows with chosen or rejected cut by truncation. */
  truncatedRows: number;
  /** Rows dropped because chosen and rejected were identical, and their lines. */
  identicalRows: number;
  identicalLines: number[];
  /** Rows with a margin (given or from a rating). */
  marginRows: number;
  /** Rows with "safe": true / false. */
  safeRows: number;
  unsafeRows: number;
  formats: Partial<Record<PreferenceFormat, number>>;
}

export interface PreferenceDataset {
  file: string;
  examples: PreferenceExample[];
  stats: PreferenceDataStats;
}

function sameMessage(a: ChatMessage, b: ChatMessage): boolean {
  return a.role === b.role && a.content === b.content;
}

/** Length of the common prefix of two id lists, kept below both lengths (each suffix keeps a token). */
function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length) - 1;
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return Math.max(0, i);
}

function eosIdOf(opts: PreferenceDataOptions, tok: Tokenizer): number | null {
  return opts.eosTokenId !== undefined ? opts.eosTokenId : (tok.eosTokenId ?? opts.fallbackEosTokenId ?? null);
}

const sameIds = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((x, i) => x === b[i]);

interface Tokenized {
  format: PreferenceFormat;
  chosen: number[];
  rejected: number[];
  from: number;
  promptText?: string;
  /** Chat rows end with the template's end of turn: no EOS. */
  eos: boolean;
  /** No "prompt" / "prompt_ids": the prompt is the common prefix. */
  implicit?: boolean;
}

/** A string or conversational pair, TRL's way (EOS already in place, see trl-tokens.ts). */
function trlPair(
  tok: Tokenizer,
  pair: { prompt: string; chosen: string; rejected: string; eos: EosPlan } | { prompt: ChatMessage[]; chosen: ChatMessage[]; rejected: ChatMessage[] },
  whole: boolean,
): { chosen: number[]; rejected: number[]; from: number } {
  const enc = (completion: string | ChatMessage[]) =>
    typeof completion === 'string' ? trlTextPair(tok, pair.prompt as string, completion, (pair as { eos: EosPlan }).eos) : trlChatPair(tok, pair.prompt as ChatMessage[], completion);
  const c = enc(pair.chosen), r = enc(pair.rejected);
  // DPOTrainer keeps the prompt's own ids and the rest of each whole encoding; RewardTrainer the whole encoding.
  const seq = (x: { promptIds: number[]; ids: number[] }) => (whole ? x.ids : [...x.promptIds, ...x.ids.slice(x.promptIds.length)]);
  return { chosen: seq(c), rejected: seq(r), from: c.promptIds.length };
}

function tokenizeRow(v: Record<string, unknown>, err: (m: string) => RlhfError, file: string, line: number, getTok: () => Tokenizer, opts: PreferenceDataOptions): Tokenized {
  const trl = (opts.tokenize ?? 'trl') === 'trl';
  if ('chosen_ids' in v || 'rejected_ids' in v || 'prompt_ids' in v) {
    for (const k of ['chosen_ids', 'rejected_ids']) if (!(k in v)) throw err(`missing "${k}" (pre-tokenised rows need "chosen_ids" and "rejected_ids", with an optional "prompt_ids")`);
    const c = intList(v.chosen_ids, 'chosen_ids', file, line), r = intList(v.rejected_ids, 'rejected_ids', file, line);
    if (v.prompt_ids === undefined || v.prompt_ids === null) {
      if (c.length === 0 || r.length === 0) throw err(`"${c.length === 0 ? 'chosen_ids' : 'rejected_ids'}" is empty`);
      return { format: 'tokens', chosen: c, rejected: r, from: commonPrefix(c, r), eos: false, implicit: true };
    }
    const p = intList(v.prompt_ids, 'prompt_ids', file, line);
    if (c.length === 0 || r.length === 0) throw err(`"${c.length === 0 ? 'chosen_ids' : 'rejected_ids'}" is empty: the completion needs at least one token`);
    return { format: 'tokens', chosen: [...p, ...c], rejected: [...p, ...r], from: p.length, eos: false };
  }
  if ('input_ids_chosen' in v || 'input_ids_rejected' in v) {
    for (const k of ['input_ids_chosen', 'input_ids_rejected']) if (!(k in v)) throw err(`missing "${k}"`);
    const c = intList(v.input_ids_chosen, 'input_ids_chosen', file, line), r = intList(v.input_ids_rejected, 'input_ids_rejected', file, line);
    if (c.length === 0 || r.length === 0) throw err(`"${c.length === 0 ? 'input_ids_chosen' : 'input_ids_rejected'}" is empty`);
    return { format: 'tokens', chosen: c, rejected: r, from: commonPrefix(c, r), eos: false, implicit: true };
  }
  for (const k of ['chosen', 'rejected'])
    if (!(k in v)) throw err(`missing "${k}": expected {"prompt", "chosen", "rejected"} (strings or message lists) or pre-tokenised {"prompt_ids", "chosen_ids", "rejected_ids"}`);
  const { prompt, chosen, rejected } = v;
  const hasPrompt = prompt !== undefined && prompt !== null;
  if (typeof chosen === 'string' && typeof rejected === 'string') {
    if (hasPrompt && typeof prompt !== 'string') throw err('"prompt" must be a string when "chosen" and "rejected" are strings');
    const tok = getTok();
    if (trl) {
      const eos = (opts.appendEos ?? true) ? eosPlan(tok, eosIdOf(opts, tok)) : eosPlan(tok, null);
      const k = hasPrompt ? 0 : extractPromptChars(chosen, rejected);
      const p = hasPrompt ? (prompt as string) : chosen.slice(0, k);
      const t = trlPair(tok, { prompt: p, chosen: chosen.slice(k), rejected: rejected.slice(k), eos }, opts.wholeSequence ?? false);
      return { format: hasPrompt ? 'standard' : 'implicit_prompt', ...t, promptText: p, eos: false, implicit: !hasPrompt };
    }
    if (hasPrompt) {
      const p = tok.encode(prompt as string, { addSpecialTokens: true });
      const c = tok.encode(chosen, { addSpecialTokens: false }), r = tok.encode(rejected, { addSpecialTokens: false });
      return { format: 'standard', chosen: [...p, ...c], rejected: [...p, ...r], from: p.length, promptText: prompt as string, eos: true };
    }
    const c = tok.encode(chosen, { addSpecialTokens: true }), r = tok.encode(rejected, { addSpecialTokens: true });
    return { format: 'implicit_prompt', chosen: c, rejected: r, from: -1, eos: true, implicit: true };
  }
  if (isMessages(chosen) && isMessages(rejected)) {
    const tok = getTok();
    let promptMsgs: ChatMessage[], c: ChatMessage[], r: ChatMessage[], format: PreferenceFormat;
    if (hasPrompt) {
      if (!isMessages(prompt)) throw err('"prompt" must be a non-empty list of {"role": string, "content": string} when "chosen" and "rejected" are messages');
      promptMsgs = prompt;
      c = [...prompt, ...chosen];
      r = [...prompt, ...rejected];
      format = 'conversational';
    } else {
      let k = 0;
      while (k < chosen.length - 1 && k < rejected.length - 1 && sameMessage(chosen[k], rejected[k])) k++;
      if (k === 0) throw err('chosen and rejected share no leading message, so there is no prompt; give a "prompt" (a message list)');
      promptMsgs = chosen.slice(0, k);
      c = chosen;
      r = rejected;
      format = 'conversational_implicit_prompt';
    }
    const promptText = tok.applyChatTemplate(promptMsgs, { addGenerationPrompt: true });
    if (trl) {
      const t = trlPair(tok, { prompt: promptMsgs, chosen: c.slice(promptMsgs.length), rejected: r.slice(promptMsgs.length) }, opts.wholeSequence ?? false);
      return { format, ...t, promptText, eos: false };
    }
    const ct = chatTokens(tok, c, promptMsgs.length), rt = chatTokens(tok, r, promptMsgs.length);
    const from = ct.labels.findIndex((l) => l !== IGNORE_INDEX);
    const rFrom = rt.labels.findIndex((l) => l !== IGNORE_INDEX);
    if (from < 0 || rFrom < 0) throw err(`the chat template renders no tokens for the ${from < 0 ? 'chosen' : 'rejected'} completion`);
    if (from !== rFrom) throw err('the chat template renders the prompt differently before the chosen and the rejected completion');
    return { format, chosen: ct.ids, rejected: rt.ids, from, promptText, eos: false };
  }
  const kind = (x: unknown) => (typeof x === 'string' ? 'a string' : isMessages(x) ? 'a message list' : Array.isArray(x) ? 'a list that is not {role, content} messages' : x === null ? 'null' : typeof x);
  throw err(`"chosen" and "rejected" must both be strings or both non-empty lists of {"role", "content"} messages (got ${kind(chosen)} and ${kind(rejected)})`);
}

/** One JSONL row -> a PreferenceExample, or null for an identical pair that is skipped (E_DATA naming file:line on any problem). */
export function preparePreferenceRow(row: JsonlRow, file: string, opts: PreferenceDataOptions, getTok: () => Tokenizer): PreferenceExample | null {
  const v = row.value;
  const err = (msg: string) => dataError(file, row.line, msg);

  // Side fields first: cheap, and independent of the format.
  let margin: number | null = null;
  let rating: string | undefined;
  if (v.margin !== undefined && v.margin !== null) {
    if (typeof v.margin !== 'number' || !Number.isFinite(v.margin)) throw err(`"margin" must be a finite number, got ${JSON.stringify(v.margin)}`);
    margin = v.margin;
  }
  if (v.rating !== undefined && v.rating !== null) {
    if (margin !== null) throw err('give "margin" or "rating", not both');
    const key = typeof v.rating === 'string' ? normalizeRating(v.rating) : null;
    if (!key) throw err(`"rating" must be one of ${Object.keys(LLAMA2_MARGINS.small).map((k) => `"${k}"`).join(', ')}, got ${JSON.stringify(v.rating)}`);
    rating = v.rating as string;
    margin = LLAMA2_MARGINS[opts.marginScale ?? 'small'][key];
  }
  if (v.label_prob !== undefined && v.label_prob !== null && (typeof v.label_prob !== 'number' || !(v.label_prob >= 0 && v.label_prob <= 1)))
    throw err(`"label_prob" must be a probability in [0, 1], got ${JSON.stringify(v.label_prob)}`);
  if (v.safe !== undefined && v.safe !== null && typeof v.safe !== 'boolean') throw err(`"safe" must be true or false, got ${JSON.stringify(v.safe)}`);
  if (v.category !== undefined && v.category !== null && typeof v.category !== 'string') throw err(`"category" must be a string, got ${JSON.stringify(v.category)}`);

  let t: Tokenized;
  try {
    t = tokenizeRow(v, err, file, row.line, getTok, opts);
  } catch (e) {
    // Tokenizer and template errors get the row's location too.
    if (e instanceof RlhfError && !e.message.startsWith(`${file}:`)) throw err(e.message);
    throw e;
  }
  let { chosen, rejected, from } = t;
  if (t.format.startsWith('conversational') && opts.stopTokenIds?.length) {
    const cut = (ids: number[]) => {
      for (let i = ids.length - 1; i >= from; i--) if (opts.stopTokenIds!.includes(ids[i])) return ids.slice(0, i + 1);
      return ids;
    };
    chosen = cut(chosen);
    rejected = cut(rejected);
  }
  if (t.eos && (opts.appendEos ?? true)) {
    const eos = eosIdOf(opts, getTok());
    if (eos !== null) {
      if (chosen[chosen.length - 1] !== eos) chosen = [...chosen, eos];
      if (rejected[rejected.length - 1] !== eos) rejected = [...rejected, eos];
    }
  }
  if (from < 0) from = commonPrefix(chosen, rejected); // implicit string prompt: after EOS, as the sequences are scored
  if (opts.maxPromptLength && from > opts.maxPromptLength) {
    const cut = from - opts.maxPromptLength;
    chosen = chosen.slice(cut);
    rejected = rejected.slice(cut);
    from = opts.maxPromptLength;
  }
  const keepEnd = opts.truncationMode === 'keep_end';

  for (const [name, ids] of [['chosen', chosen], ['rejected', rejected]] as const) {
    const bad = ids.find((x) => x < 0 || x >= opts.vocabSize);
    if (bad !== undefined) throw err(`${name}: token id ${bad} is outside the model's vocabulary (size ${opts.vocabSize})`);
  }
  if (chosen.length <= from || rejected.length <= from) throw err(`the ${chosen.length <= from ? 'chosen' : 'rejected'} completion has no tokens`);
  if (from === 0)
    throw err(
      t.implicit
        ? 'chosen and rejected share no leading token, so there is no prompt and nothing predicts the first completion token; give a "prompt"'
        : 'the prompt has no tokens: nothing predicts the first completion token',
    );
  if (from >= opts.maxLen && !keepEnd)
    throw err(
      `the prompt has ${from} tokens, which leaves no room for a completion within the maximum length ${opts.maxLen}; shorten the prompt, raise --max-len, or cut prompts with --max-prompt-length or --truncation-mode keep_end`,
    );

  const truncated = { chosen: Math.max(0, chosen.length - opts.maxLen), rejected: Math.max(0, rejected.length - opts.maxLen) };
  // keep_end cuts the start: the completion begins `cut` tokens earlier, and at 1 at the least (nothing predicts token 0).
  const chosenFrom = keepEnd ? Math.max(1, from - truncated.chosen) : from;
  const rejectedFrom = keepEnd ? Math.max(1, from - truncated.rejected) : from;
  if (truncated.chosen) chosen = keepEnd ? chosen.slice(truncated.chosen) : chosen.slice(0, opts.maxLen);
  if (truncated.rejected) rejected = keepEnd ? rejected.slice(truncated.rejected) : rejected.slice(0, opts.maxLen);
  if (sameIds(chosen, rejected)) {
    if ((opts.identical ?? 'skip') === 'error')
      throw err(`chosen and rejected are identical${truncated.chosen || truncated.rejected ? ` after truncation to ${opts.maxLen} tokens` : ''}: the pair expresses no preference`);
    return null;
  }
  const ex: PreferenceExample = {
    line: row.line,
    format: t.format,
    prompt: chosen.slice(0, chosenFrom),
    chosen,
    rejected,
    chosenFrom,
    rejectedFrom,
    margin,
    truncated,
  };
  if (rating !== undefined) ex.rating = rating;
  if (typeof v.label_prob === 'number') ex.labelProb = v.label_prob;
  if (typeof v.safe === 'boolean') ex.safe = v.safe;
  if (typeof v.category === 'string') ex.category = v.category;
  if (t.promptText !== undefined) ex.promptText = t.promptText;
  return ex;
}

/** Reads and prepares a whole preference JSONL file. */
export function loadPreferenceData(file: string, opts: PreferenceDataOptions): PreferenceDataset {
  if (!Number.isInteger(opts.maxLen) || opts.maxLen < 2) throw new RlhfError('E_ARGUMENT', `max length must be an integer >= 2, got ${opts.maxLen}`);
  if (opts.marginScale !== undefined && !(opts.marginScale in LLAMA2_MARGINS)) throw new RlhfError('E_ARGUMENT', `margin scale must be small or large, got ${opts.marginScale}`);
  const rows = readJsonl(file);
  const pretokenised = (r: JsonlRow) => ['chosen_ids', 'rejected_ids', 'prompt_ids', 'input_ids_chosen', 'input_ids_rejected'].some((k) => k in r.value);
  const t = opts.tokenizer;
  const tok = rows.some((r) => !pretokenised(r)) && t ? (typeof t === 'function' ? t() : t) : null;
  const getTok = (): Tokenizer => {
    if (!tok) throw new RlhfError('E_DATA', 'this row format needs the model folder to have a tokenizer (tokenizer.json); give pre-tokenised {"prompt_ids", "chosen_ids", "rejected_ids"} rows otherwise');
    return tok;
  };
  const stats: PreferenceDataStats = { rows: 0, tokens: 0, completionTokens: 0, truncatedRows: 0, identicalRows: 0, identicalLines: [], marginRows: 0, safeRows: 0, unsafeRows: 0, formats: {} };
  const examples: PreferenceExample[] = [];
  for (const r of rows) {
    const e = preparePreferenceRow(r, file, opts, getTok);
    if (!e) {
      stats.identicalRows++;
      stats.identicalLines.push(r.line);
      continue;
    }
    examples.push(e);
    stats.tokens += e.chosen.length + e.rejected.length;
    stats.completionTokens += e.chosen.length - e.chosenFrom + e.rejected.length - e.rejectedFrom;
    if (e.truncated.chosen || e.truncated.rejected) stats.truncatedRows++;
    if (e.margin !== null) stats.marginRows++;
    if (e.safe === true) stats.safeRows++;
    if (e.safe === false) stats.unsafeRows++;
    stats.formats[e.format] = (stats.formats[e.format] ?? 0) + 1;
  }
  stats.rows = examples.length;
  if (examples.length === 0) throw new RlhfError('E_DATA', `${file}: no usable rows (every pair's chosen and rejected are identical)`, { where: file });
  return { file, examples, stats };
}

/** `file:line` of the first few skipped identical pairs, for a warning line; null when none were skipped. */
export function identicalWarning(file: string, stats: PreferenceDataStats, show = 3): string | null {
  if (!stats.identicalRows) return null;
  const lines = stats.identicalLines.slice(0, show).map((l) => `${file}:${l}`).join(', ');
  const more = stats.identicalRows - Math.min(show, stats.identicalRows);
  return `skipped ${stats.identicalRows} pair${stats.identicalRows === 1 ? '' : 's'} whose chosen and rejected are identical (${lines}${more ? ` and ${more} more` : ''})`;
}
