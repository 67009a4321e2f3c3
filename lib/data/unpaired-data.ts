/**
 * Unpaired preference data for KTO (Ethayarajh et al. 2024): JSONL rows of a
 * prompt, one completion and a binary label (desirable or not), in TRL
 * KTOTrainer's format, turned into token ids. See docs/preference-data.md.
 *
 * Row formats:
 *   {"prompt_ids": [...], "completion_ids": [...], "label": bool}
 *       pre-tokenised: used as given, no EOS appended.
 *   {"prompt": "...", "completion": "...", "label": bool}
 *       TRL mode (default): prompt + completion + EOS encoded as one string,
 *       the prompt being its tokens encoded alone (KTOTrainer's way);
 *       'separate': prompt encoded with special tokens, completion without,
 *       then EOS (when appendEos).
 *   {"prompt": [msgs], "completion": [msgs], "label": bool}
 *       chat template over prompt + completion; the completion is every
 *       token after the prompt rendered with its generation prompt.
 *
 * The tokenization is the one of lib/data/preference-data.ts, so the same
 * prompt and completion give the same ids whether they come as a pair for
 * DPO or as an unpaired row for KTO. Paired files load here too: each pair
 * becomes a desirable and an undesirable row (`unpairPreferences`).
 */
import { RlhfError } from '../errors';
import { dataError, intList, isMessages, readJsonl, type JsonlRow } from './jsonl';
import { chatTokens, IGNORE_INDEX } from './sft-data';
import { eosPlan, trlChatPair, trlTextPair } from './trl-tokens';
import { loadPreferenceData, type PreferenceDataOptions, type PreferenceDataStats, type PreferenceExample, type PreferenceFormat } from './preference-data';
import type { Tokenizer } from '../tokenizer/tokenizer';

/**
 * Unpaired rows are 'tokens', 'standard' or 'conversational'; rows made by
 * `unpairPreferences` keep the format of their pair (implicit prompts too).
 */
export type UnpairedFormat = PreferenceFormat;

export interface UnpairedExample {
  /** 1-based line of the row (or of its pair) in its file. */
  line: number;
  format: UnpairedFormat;
  /** The prompt's ids. */
  prompt: number[];
  /** The whole sequence: prompt + completion (+ EOS when appended), after truncation. */
  ids: number[];
  /** Index of the first completion token in ids (= prompt.length). */
  from: number;
  /** true: a desirable completion; false: an undesirable one. */
  label: boolean;
  /** The prompt as text: the string prompt, or the rendered chat prompt with its generation prompt. */
  promptText?: string;
  /** Tokens cut off the end of ids (0 when it fits). */
  truncated: number;
}

/** The options of `loadPreferenceData` that concern tokenization, with the same meaning. */
export type UnpairedDataOptions = Pick<PreferenceDataOptions, 'tokenizer' | 'maxLen' | 'vocabSize' | 'eosTokenId' | 'fallbackEosTokenId' | 'appendEos' | 'stopTokenIds' | 'tokenize' | 'truncationMode' | 'maxPromptLength'>;

export interface UnpairedDataStats {
  /** Rows kept. */
  rows: number;
  /** Rows labelled true / false. A file may hold only one kind; these make that visible. */
  desirable: number;
  undesirable: number;
  /** Input tokens over all rows (after truncation). */
  tokens: number;
  /** Completion tokens over all rows. */
  completionTokens: number;
  /** Rows cut by truncation. */
  truncatedRows: number;
  formats: Partial<Record<UnpairedFormat, number>>;
}

export interface UnpairedDataset {
  file: string;
  examples: UnpairedExample[];
  stats: UnpairedDataStats;
}

export interface KtoDataset extends UnpairedDataset {
  /** The file's shape: unpaired rows, or preference pairs that were unpaired. */
  source: 'unpaired' | 'paired';
  /** For a paired file: the pair loader's stats (identical pairs skipped, margins...). */
  pairStats?: PreferenceDataStats;
}

interface Tokenized {
  format: UnpairedFormat;
  ids: number[];
  from: number;
  promptText?: string;
  /** String completions get EOS; chat rows end with the template's end of turn, ids are used as given. */
  eos: boolean;
}

const present = (v: Record<string, unknown>, k: string) => v[k] !== undefined && v[k] !== null;

function tokenizeRow(v: Record<string, unknown>, err: (m: string) => RlhfError, file: string, line: number, getTok: () => Tokenizer, opts: UnpairedDataOptions): Tokenized {
  const trl = (opts.tokenize ?? 'trl') === 'trl';
  // KTOTrainer's sequence: the prompt's own ids, then the rest of prompt + completion (+ EOS) encoded as one string.
  const joined = (x: { promptIds: number[]; ids: number[] }) => ({ ids: [...x.promptIds, ...x.ids.slice(x.promptIds.length)], from: x.promptIds.length });
  if ('prompt_ids' in v || 'completion_ids' in v) {
    if (!present(v, 'completion_ids')) throw err('missing "completion_ids" (pre-tokenised rows need "prompt_ids" and "completion_ids")');
    if (!present(v, 'prompt_ids')) throw err('missing "prompt_ids": KTO scores a completion given its prompt');
    const p = intList(v.prompt_ids, 'prompt_ids', file, line), c = intList(v.completion_ids, 'completion_ids', file, line);
    if (c.length === 0) throw err('"completion_ids" is empty: the completion needs at least one token');
    return { format: 'tokens', ids: [...p, ...c], from: p.length, eos: false };
  }
  const { prompt, completion } = v;
  if (!present(v, 'completion')) throw err('missing "completion": expected {"prompt", "completion", "label"} (strings or message lists) or pre-tokenised {"prompt_ids", "completion_ids", "label"}');
  if (completion === '' || (Array.isArray(completion) && completion.length === 0)) throw err('"completion" is empty');
  // TRL's KTOTrainer has no implicit-prompt form for unpaired rows: the prompt is required.
  if (!present(v, 'prompt')) throw err('missing "prompt": KTO scores a completion given its prompt');
  if (typeof prompt === 'string' && typeof completion === 'string') {
    const tok = getTok();
    if (trl) {
      const eosId = (opts.appendEos ?? true) ? (opts.eosTokenId !== undefined ? opts.eosTokenId : (tok.eosTokenId ?? opts.fallbackEosTokenId ?? null)) : null;
      return { format: 'standard', ...joined(trlTextPair(tok, prompt, completion, eosPlan(tok, eosId))), promptText: prompt, eos: false };
    }
    const p = tok.encode(prompt, { addSpecialTokens: true }), c = tok.encode(completion, { addSpecialTokens: false });
    return { format: 'standard', ids: [...p, ...c], from: p.length, promptText: prompt, eos: true };
  }
  if (isMessages(prompt) && isMessages(completion)) {
    const tok = getTok();
    if (trl) return { format: 'conversational', ...joined(trlChatPair(tok, prompt, completion)), promptText: tok.applyChatTemplate(prompt, { addGenerationPrompt: true }), eos: false };
    const t = chatTokens(tok, [...prompt, ...completion], prompt.length);
    const from = t.labels.findIndex((l) => l !== IGNORE_INDEX);
    if (from < 0) throw err('the chat template renders no tokens for the completion');
    return { format: 'conversational', ids: t.ids, from, promptText: tok.applyChatTemplate(prompt, { addGenerationPrompt: true }), eos: false };
  }
  const kind = (x: unknown) => (typeof x === 'string' ? 'a string' : isMessages(x) ? 'a message list' : Array.isArray(x) ? 'a list that is not {role, content} messages' : typeof x);
  throw err(`"prompt" and "completion" must both be strings or both non-empty lists of {"role", "content"} messages (got ${kind(prompt)} and ${kind(completion)})`);
}

/** One JSONL row -> an UnpairedExample (E_DATA naming file:line on any problem). */
export function prepareUnpairedRow(row: JsonlRow, file: string, opts: UnpairedDataOptions, getTok: () => Tokenizer): UnpairedExample {
  const v = row.value;
  const err = (msg: string) => dataError(file, row.line, msg);
  // TRL's "label" column is bool; 1/0 or "true" are refused rather than guessed at.
  if (!('label' in v)) throw err('missing "label": each row needs "label": true (a desirable completion) or false (an undesirable one)');
  if (typeof v.label !== 'boolean') throw err(`"label" must be true or false, got ${JSON.stringify(v.label)}`);

  let t: Tokenized;
  try {
    t = tokenizeRow(v, err, file, row.line, getTok, opts);
  } catch (e) {
    // Tokenizer and template errors get the row's location too.
    if (e instanceof RlhfError && !e.message.startsWith(`${file}:`)) throw err(e.message);
    throw e;
  }
  let { ids, from } = t;
  // As preference-data does: a chat completion ends at its last stop token, where a sampled response stops.
  if (t.format === 'conversational' && opts.stopTokenIds?.length) {
    for (let i = ids.length - 1; i >= from; i--)
      if (opts.stopTokenIds.includes(ids[i])) {
        ids = ids.slice(0, i + 1);
        break;
      }
  }
  if (t.eos && (opts.appendEos ?? true)) {
    const eos = opts.eosTokenId !== undefined ? opts.eosTokenId : (getTok().eosTokenId ?? opts.fallbackEosTokenId ?? null);
    if (eos !== null && ids[ids.length - 1] !== eos) ids = [...ids, eos];
  }
  const bad = ids.find((x) => x < 0 || x >= opts.vocabSize);
  if (bad !== undefined) throw err(`token id ${bad} is outside the model's vocabulary (size ${opts.vocabSize})`);
  if (ids.length <= from) throw err('the completion has no tokens');
  if (from === 0) throw err('the prompt has no tokens: nothing predicts the first completion token');
  if (opts.maxPromptLength && from > opts.maxPromptLength) {
    ids = ids.slice(from - opts.maxPromptLength);
    from = opts.maxPromptLength;
  }
  const keepEnd = opts.truncationMode === 'keep_end';
  if (from >= opts.maxLen && !keepEnd)
    throw err(
      `the prompt has ${from} tokens, which leaves no room for a completion within the maximum length ${opts.maxLen}; shorten the prompt, raise --max-len, or cut prompts with --max-prompt-length or --truncation-mode keep_end`,
    );
  const truncated = Math.max(0, ids.length - opts.maxLen);
  if (truncated && keepEnd) {
    ids = ids.slice(truncated);
    from = Math.max(1, from - truncated);
  } else if (truncated) ids = ids.slice(0, opts.maxLen);
  const ex: UnpairedExample = { line: row.line, format: t.format, prompt: ids.slice(0, from), ids, from, label: v.label, truncated };
  if (t.promptText !== undefined) ex.promptText = t.promptText;
  return ex;
}

function checkMaxLen(maxLen: number): void {
  if (!Number.isInteger(maxLen) || maxLen < 2) throw new RlhfError('E_ARGUMENT', `max length must be an integer >= 2, got ${maxLen}`);
}

function statsOf(examples: readonly UnpairedExample[]): UnpairedDataStats {
  const s: UnpairedDataStats = { rows: examples.length, desirable: 0, undesirable: 0, tokens: 0, completionTokens: 0, truncatedRows: 0, formats: {} };
  for (const e of examples) {
    if (e.label) s.desirable++;
    else s.undesirable++;
    s.tokens += e.ids.length;
    s.completionTokens += e.ids.length - e.from;
    if (e.truncated) s.truncatedRows++;
    s.formats[e.format] = (s.formats[e.format] ?? 0) + 1;
  }
  return s;
}

function prepareRows(rows: readonly JsonlRow[], file: string, opts: UnpairedDataOptions): UnpairedDataset {
  // Load the tokenizer once, and only when a row needs it (its own errors keep their code).
  const t = opts.tokenizer;
  const tok = rows.some((r) => !('prompt_ids' in r.value || 'completion_ids' in r.value)) && t ? (typeof t === 'function' ? t() : t) : null;
  const getTok = (): Tokenizer => {
    if (!tok) throw new RlhfError('E_DATA', 'this row format needs the model folder to have a tokenizer (tokenizer.json); give pre-tokenised {"prompt_ids", "completion_ids", "label"} rows otherwise');
    return tok;
  };
  const examples = rows.map((r) => prepareUnpairedRow(r, file, opts, getTok));
  return { file, examples, stats: statsOf(examples) };
}

/** Reads and prepares a whole file of unpaired rows ({prompt, completion, label}). */
export function loadUnpairedData(file: string, opts: UnpairedDataOptions): UnpairedDataset {
  checkMaxLen(opts.maxLen);
  return prepareRows(readJsonl(file), file, opts);
}

/**
 * TRL's `unpair_preference_dataset`: each pair gives a row with the chosen
 * completion (label true) and one with the rejected (label false), both
 * keeping the pair's line. The order is TRL's too: every chosen row, then
 * every rejected row. It keeps a pair's two rows apart, so the neighbour
 * `klPairs` takes a completion from belongs to another prompt (except with
 * a single pair).
 */
export function unpairPreferences(examples: readonly PreferenceExample[]): UnpairedExample[] {
  const side = (e: PreferenceExample, label: boolean): UnpairedExample => {
    const ids = label ? e.chosen : e.rejected;
    const ex: UnpairedExample = { line: e.line, format: e.format, prompt: e.prompt, ids, from: label ? e.chosenFrom : e.rejectedFrom, label, truncated: label ? e.truncated.chosen : e.truncated.rejected };
    if (e.promptText !== undefined) ex.promptText = e.promptText;
    return ex;
  };
  return [...examples.map((e) => side(e, true)), ...examples.map((e) => side(e, false))];
}

const PAIRED_KEYS = ['chosen', 'rejected', 'chosen_ids', 'rejected_ids', 'input_ids_chosen', 'input_ids_rejected'];

/**
 * The KTO stage's data: a file of unpaired rows, or of preference pairs
 * (loaded by `loadPreferenceData`, identical pairs skipped as there, then
 * unpaired). A row with "label" is unpaired, one with chosen/rejected keys
 * a pair; the first such row decides the file's shape, and a row of the
 * other shape is an error naming its line (rows with neither are errors of
 * the file's loader: a missing "label", or a missing "chosen").
 */
export function loadKtoData(file: string, opts: UnpairedDataOptions & Pick<PreferenceDataOptions, 'identical'>): KtoDataset {
  checkMaxLen(opts.maxLen);
  const rows = readJsonl(file);
  const shape = (r: JsonlRow) => ('label' in r.value ? 'unpaired' : PAIRED_KEYS.some((k) => k in r.value) ? 'paired' : null);
  const first = rows.find((r) => shape(r) !== null);
  const source = first ? shape(first)! : 'unpaired';
  const other = rows.find((r) => shape(r) !== null && shape(r) !== source);
  if (first && other) {
    const what = { unpaired: 'an unpaired row ("label")', paired: 'a preference pair ("chosen"/"rejected")' };
    throw dataError(file, other.line, `${what[shape(other)!]} in a file whose line ${first.line} is ${what[source]}; keep one kind of row per file`);
  }
  if (source === 'unpaired') return { ...prepareRows(rows, file, opts), source };
  // The pair loader reads the file again: simpler than sharing its row loop, and small next to tokenization.
  const pairs = loadPreferenceData(file, opts);
  const examples = unpairPreferences(pairs.examples);
  return { file, examples, stats: statsOf(examples), source, pairStats: pairs.stats };
}

/**
 * The mismatched sequences of KTO's KL estimate: for example i, its prompt
 * followed by the completion of example (i + 1) mod N, cut at the end to
 * maxLen as rows are. TRL's KTOTrainer rotates completions by one within
 * each training batch; here the rotation runs over the whole dataset, so
 * each example has one fixed KL sequence and the reference model's
 * log-probs for it are computed once, not once per batch. With a single
 * example the sequence is the example itself.
 */
export function klPairs(examples: readonly UnpairedExample[], maxLen: number): { ids: number[]; from: number }[] {
  checkMaxLen(maxLen);
  return examples.map((e, i) => {
    const next = examples[(i + 1) % examples.length];
    // Each completion has a token, so a prompt shorter than maxLen keeps at least one after the cut.
    if (e.prompt.length >= maxLen) throw new RlhfError('E_ARGUMENT', `line ${e.line}: the prompt has ${e.prompt.length} tokens, which leaves no room for a completion within ${maxLen}`);
    return { ids: [...e.prompt, ...next.ids.slice(next.from)].slice(0, maxLen), from: e.prompt.length };
  });
}
