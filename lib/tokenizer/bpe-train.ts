/**
 * Byte-level BPE training (GPT-2 style) and the Hugging Face `tokenizers`
 * files it becomes: `tokenizer.json` (format "1.0") and
 * `tokenizer_config.json`.
 *
 * Text is split with GPT-2's regex, each piece's UTF-8 bytes are mapped to
 * GPT-2's 256 printable stand-in characters, and merges are learned greedily:
 * at each step the most frequent adjacent pair (counting every position, over
 * the whole corpus) becomes a new token; ties go to the pair with the smaller
 * (left id, right id), as in HF tokenizers' BpeTrainer. Training stops at the
 * target vocab size or when no pair occurs `minFrequency` times.
 *
 * Ids: special tokens first (0..k-1, as BpeTrainer assigns them), then the 256
 * byte symbols in code-point order (GPT-2's own order), then merges in order.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RlhfError } from '../errors';

/** GPT-2's pre-tokenizer split (the same pattern HF's ByteLevel uses with use_regex). */
export const GPT2_SPLIT_PATTERN = String.raw`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`;

/** GPT-2's byte -> character map: printable Latin-1 bytes stand for themselves, the rest move to U+0100.. */
export function bytesToUnicode(): string[] {
  const out: string[] = new Array(256);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    out[b] = String.fromCodePoint(printable ? b : 256 + n++);
  }
  return out;
}

const BYTE_CHARS = bytesToUnicode();
const ENCODER = new TextEncoder();

/** Splits text as ByteLevel does and maps each piece to its byte characters. */
export function byteLevelPieces(text: string): string[] {
  const re = new RegExp(GPT2_SPLIT_PATTERN, 'gu');
  return (text.match(re) ?? []).map((piece) => Array.from(ENCODER.encode(piece), (b) => BYTE_CHARS[b]).join(''));
}

export interface BpeTrainOptions {
  corpus: string;
  /** Target size including special tokens and the 256 byte symbols. */
  vocabSize: number;
  /** Added first, with ids 0..k-1; never split and never produced by merges. */
  specialTokens?: string[];
  /** A pair must occur at least this often to be merged (default 2). */
  minFrequency?: number;
}

export interface BpeModel {
  /** token -> id for the BPE model (specials included, as HF's trainer keeps them). */
  vocab: Map<string, number>;
  /** Merges in rank order. */
  merges: [string, string][];
  specialTokens: string[];
}

/** Trains a byte-level BPE (see the file comment). Deterministic: same options, same model. */
export function trainBpe(opts: BpeTrainOptions): BpeModel {
  const specials = opts.specialTokens ?? [];
  const minFrequency = opts.minFrequency ?? 2;
  if (new Set(specials).size !== specials.length) throw new RlhfError('E_ARGUMENT', `special tokens must be distinct: ${specials.join(', ')}`);
  if (!Number.isInteger(opts.vocabSize) || opts.vocabSize < specials.length + 256)
    throw new RlhfError('E_ARGUMENT', `vocabSize must be an integer >= ${specials.length + 256} (special tokens + 256 bytes), got ${opts.vocabSize}`);
  const tokens: string[] = [...specials, ...[...BYTE_CHARS].sort((a, b) => a.codePointAt(0)! - b.codePointAt(0)!)];
  const vocab = new Map(tokens.map((t, i) => [t, i]));

  // Unique pieces with their counts, as arrays of symbol ids. Special tokens in
  // the corpus are cut out first, as the tokenizer does before pre-tokenizing.
  const counts = new Map<string, number>();
  for (const section of splitOnSpecials(opts.corpus, specials))
    for (const p of byteLevelPieces(section)) counts.set(p, (counts.get(p) ?? 0) + 1);
  const words: { ids: number[]; count: number }[] = [];
  for (const [p, count] of counts) words.push({ ids: Array.from(p, (ch) => vocab.get(ch)!), count });

  const merges: [string, string][] = [];
  // A pair key packs two ids (< 2^21 each) into one safe integer.
  const key = (a: number, b: number) => a * 2097152 + b;
  while (vocab.size < opts.vocabSize) {
    const pairCounts = new Map<number, number>();
    for (const w of words)
      for (let i = 0; i + 1 < w.ids.length; i++) {
        const k = key(w.ids[i], w.ids[i + 1]);
        pairCounts.set(k, (pairCounts.get(k) ?? 0) + w.count);
      }
    let best = -1;
    let bestCount = 0;
    for (const [k, c] of pairCounts)
      if (c > bestCount || (c === bestCount && k < best)) {
        best = k;
        bestCount = c;
      }
    if (best < 0 || bestCount < minFrequency) break;
    const a = Math.floor(best / 2097152);
    const b = best % 2097152;
    const merged = tokens[a] + tokens[b];
    // Different merge paths can spell the same token; it keeps its first id.
    let id = vocab.get(merged);
    if (id === undefined) {
      id = tokens.length;
      tokens.push(merged);
      vocab.set(merged, id);
    }
    merges.push([tokens[a], tokens[b]]);
    for (const w of words) {
      const ids = w.ids;
      let j = 0;
      for (let i = 0; i < ids.length; i++) {
        if (i + 1 < ids.length && ids[i] === a && ids[i + 1] === b) {
          ids[j++] = id;
          i++;
        } else ids[j++] = ids[i];
      }
      ids.length = j;
    }
  }
  return { vocab, merges, specialTokens: specials };
}

/** Cuts `text` at every occurrence of a special token (longest first), dropping them. */
function splitOnSpecials(text: string, specials: string[]): string[] {
  if (!specials.length) return [text];
  const escaped = [...specials].sort((a, b) => b.length - a.length).map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  return text.split(new RegExp(escaped.join('|'), 'u'));
}

const BYTE_LEVEL = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };

/**
 * The tokenizer.json object. Merges are written as "left right" strings: every
 * version of HF tokenizers reads that form (versions before 0.20 read only
 * it), and byte-level symbols never contain a space, so it is unambiguous.
 */
export function bpeTokenizerJson(model: BpeModel): Record<string, unknown> {
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: model.specialTokens.map((content) => ({
      id: model.vocab.get(content)!,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: BYTE_LEVEL,
    post_processor: BYTE_LEVEL,
    decoder: BYTE_LEVEL,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(model.vocab),
      merges: model.merges.map(([a, b]) => `${a} ${b}`),
    },
  };
}

export interface TokenizerConfigOptions {
  bosToken: string | null;
  eosToken: string;
  padToken: string | null;
  /** Special tokens beyond bos/eos/pad (e.g. the chat markers). */
  additionalSpecialTokens?: string[];
  modelMaxLength: number;
  chatTemplate: string | null;
}

/**
 * tokenizer_config.json for transformers' PreTrainedTokenizerFast. The
 * tokenizer adds no BOS/EOS when encoding (GPT-2 / Qwen2 behaviour); the chat
 * template and the training stages place them explicitly.
 */
export function tokenizerConfigJson(model: BpeModel, o: TokenizerConfigOptions): Record<string, unknown> {
  for (const t of [o.bosToken, o.eosToken, o.padToken, ...(o.additionalSpecialTokens ?? [])])
    if (t !== null && !model.specialTokens.includes(t)) throw new RlhfError('E_ARGUMENT', `${t} is not one of the tokenizer's special tokens (${model.specialTokens.join(', ')})`);
  const decoder: Record<string, unknown> = {};
  for (const t of model.specialTokens)
    decoder[String(model.vocab.get(t))] = { content: t, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true };
  const out: Record<string, unknown> = {
    tokenizer_class: 'PreTrainedTokenizerFast',
    added_tokens_decoder: decoder,
    bos_token: o.bosToken,
    eos_token: o.eosToken,
    pad_token: o.padToken,
    unk_token: null,
    additional_special_tokens: o.additionalSpecialTokens ?? [],
    add_bos_token: false,
    add_eos_token: false,
    add_prefix_space: false,
    // Decoding must give back exactly the text that was encoded.
    clean_up_tokenization_spaces: false,
    model_max_length: o.modelMaxLength,
  };
  if (o.chatTemplate !== null) out.chat_template = o.chatTemplate;
  return out;
}

/** Writes tokenizer.json and tokenizer_config.json into `dir`; returns their paths. */
export function writeTokenizerFiles(dir: string, model: BpeModel, o: TokenizerConfigOptions): { json: string; config: string } {
  const json = path.join(dir, 'tokenizer.json');
  const config = path.join(dir, 'tokenizer_config.json');
  try {
    fs.writeFileSync(json, JSON.stringify(bpeTokenizerJson(model), null, 2) + '\n');
    fs.writeFileSync(config, JSON.stringify(tokenizerConfigJson(model, o), null, 2) + '\n');
  } catch (e) {
    throw new RlhfError('E_IO', `cannot write the tokenizer into ${dir}: ${(e as Error).message}`, { where: dir, cause: e });
  }
  return { json, config };
}
