/**
 * Loads a model folder's tokenizer (tokenizer.json + tokenizer_config.json,
 * the Hugging Face `tokenizers` format) with the @huggingface/tokenizers
 * package, and exposes what the stages need: encode, decode, vocab size,
 * special-token ids and the chat template.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RlhfError } from '../errors';
import { applyChatTemplate, type ChatMessage } from './chat-template';
import { readModelConfig, type ModelConfig } from '../model/config';

type TokenizersModule = typeof import('@huggingface/tokenizers', { with: { 'resolution-mode': 'import' } });
// The package ships a CommonJS build; only its types are ESM-only.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const tokenizers = require('@huggingface/tokenizers') as TokenizersModule;

export interface Tokenizer {
  /** The tokenizer.json it was loaded from. */
  file: string;
  /** Highest id + 1 over the vocabulary and added tokens (the embedding needs at least this many rows). */
  vocabSize: number;
  bosTokenId: number | null;
  eosTokenId: number | null;
  padTokenId: number | null;
  unkTokenId: number | null;
  /** Every special added token: content -> id. */
  specialTokens: Record<string, number>;
  bosToken: string | null;
  eosToken: string | null;
  padToken: string | null;
  /** From tokenizer_config.json `chat_template` (or chat_template.jinja); null when the model has none. */
  chatTemplate: string | null;
  /** `addSpecialTokens` (default true, as in transformers) runs the post-processor (e.g. adds BOS for Llama tokenizers). */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  decode(ids: readonly number[], opts?: { skipSpecialTokens?: boolean }): string;
  tokenToId(token: string): number | undefined;
  idToToken(id: number): string | undefined;
  /** Renders the chat template with this tokenizer's bos/eos tokens. */
  applyChatTemplate(messages: readonly ChatMessage[], opts?: { addGenerationPrompt?: boolean; extra?: Record<string, unknown> }): string;
}

function readJson(file: string): unknown {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    const what = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : (e as Error).message;
    throw new RlhfError('E_TOKENIZER', `${file}: ${what}`, { where: file, cause: e });
  }
}

/** A special-token entry of tokenizer_config.json: a string, or an AddedToken dict {content, ...}. */
function tokenString(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

function pickTemplate(v: unknown, file: string): string | null {
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') return v;
  // Named templates: [{name, template}]; transformers uses "default".
  if (Array.isArray(v)) {
    const named = v as { name?: unknown; template?: unknown }[];
    const t = named.find((x) => x.name === 'default') ?? named[0];
    if (t && typeof t.template === 'string') return t.template;
  }
  throw new RlhfError('E_TOKENIZER', `${file}: "chat_template" must be a string or a list of {name, template}`, { where: file });
}

/** eos_token_id of generation_config.json as a list (empty when absent or unreadable). */
function generationEosIds(dir: string): number[] {
  try {
    const g = JSON.parse(fs.readFileSync(path.join(dir, 'generation_config.json'), 'utf8')).eos_token_id;
    return (Array.isArray(g) ? g : [g]).filter((x): x is number => Number.isInteger(x));
  } catch {
    return [];
  }
}

/**
 * A tokenizer against the model it feeds (E_TOKENIZER naming both files and
 * what to do): every id it can produce must have an embedding row
 * (vocab_size), and the special tokens both files name must be the same ids:
 * the tokenizer's EOS one of the model's eos_token_id (config.json or
 * generation_config.json), its BOS the model's bos_token_id. SFT data ends
 * rows with the tokenizer's EOS and generation stops at the model's, so a
 * disagreement means a model that never stops.
 */
export function checkTokenizerMatchesModel(
  tok: { file: string; configFile?: string; vocabSize: number; bosTokenId: number | null; eosTokenId: number | null; padTokenId: number | null },
  cfg: ModelConfig,
  modelDir: string,
): void {
  const configJson = path.join(modelDir, 'config.json');
  const tokCfg = tok.configFile ?? path.join(path.dirname(tok.file), 'tokenizer_config.json');
  if (tok.vocabSize > cfg.vocabSize)
    throw new RlhfError(
      'E_TOKENIZER',
      `${tok.file}: the tokenizer has ids up to ${tok.vocabSize - 1} but ${configJson} has vocab_size ${cfg.vocabSize}: ` +
        `those ids have no embedding row; use the tokenizer the model was trained with, or resize the model's embeddings to at least ${tok.vocabSize} rows`,
      { where: tok.file },
    );
  const eos = [...cfg.eosTokenIds, ...generationEosIds(modelDir)];
  if (tok.eosTokenId !== null && eos.length > 0 && !eos.includes(tok.eosTokenId))
    throw new RlhfError(
      'E_TOKENIZER',
      `${tokCfg}: eos_token is id ${tok.eosTokenId} but ${configJson} has eos_token_id ${JSON.stringify(cfg.eosTokenIds.length === 1 ? cfg.eosTokenIds[0] : cfg.eosTokenIds)}: ` +
        `training data would end rows with a token generation does not stop at; make eos_token in tokenizer_config.json and eos_token_id in config.json name the same token`,
      { where: tokCfg },
    );
  if (tok.bosTokenId !== null && cfg.bosTokenId !== null && tok.bosTokenId !== cfg.bosTokenId)
    throw new RlhfError(
      'E_TOKENIZER',
      `${tokCfg}: bos_token is id ${tok.bosTokenId} but ${configJson} has bos_token_id ${cfg.bosTokenId}; make them name the same token`,
      { where: tokCfg },
    );
}

/**
 * 'transformers' (default): the tokenizer as transformers 5 builds it from
 * the folder (see `asTransformersBuildsIt`); 'raw': tokenizer.json as written.
 */
export type TokenizerSemantics = 'transformers' | 'raw';

/**
 * transformers 5 does not run a LlamaTokenizer(Fast)'s tokenizer.json
 * pipeline as written: it keeps the BPE vocabulary and merges and rebuilds
 * the rest, with no normalizer and a Metaspace pre-tokenizer whose prepend
 * scheme comes from tokenizer_config.json (add_prefix_space, default true;
 * legacy: 'always', else 'first'). A Llama 2 tokenizer.json instead prepends
 * "▁" and replaces spaces in a normalizer, so a text starting with a space
 * encodes with an extra "▁" token ("▁", "▁leading" where transformers gives
 * "▁leading"). Other tokenizer classes are used as written, and so is a
 * byte-level BPE file whose config names the Llama class (DeepSeek V3):
 * transformers 5 rebuilds it with the Metaspace pipeline too and then
 * splits "Hello world" into "H", "ellow", "orld"; the tokenizers library and
 * the model's own code read the file as written, and so do we.
 */
export function asTransformersBuildsIt(json: Record<string, unknown>, config: Record<string, unknown>): Record<string, unknown> {
  const cls = config.tokenizer_class;
  const model = json.model as { type?: string } | undefined;
  if ((cls !== 'LlamaTokenizer' && cls !== 'LlamaTokenizerFast') || model?.type !== 'BPE' || isByteLevel(json)) return json;
  const addPrefixSpace = config.add_prefix_space === undefined || config.add_prefix_space === null ? true : Boolean(config.add_prefix_space);
  const scheme = addPrefixSpace ? (config.legacy === true ? 'always' : 'first') : 'never';
  return {
    ...json,
    normalizer: null,
    pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: scheme, split: false },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        ...(addPrefixSpace ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : []),
      ],
    },
  };
}

/** The pipeline is byte-level BPE (GPT-2 style), by its pre-tokenizer or decoder. */
function isByteLevel(json: Record<string, unknown>): boolean {
  return JSON.stringify([json.pre_tokenizer ?? null, json.decoder ?? null]).includes('"ByteLevel"');
}

/** Loads the tokenizer of a model folder (or a tokenizer.json path). Throws E_TOKENIZER naming the file. */
export function loadTokenizer(dirOrFile: string, opts: { semantics?: TokenizerSemantics } = {}): Tokenizer {
  const dir = dirOrFile.endsWith('.json') ? path.dirname(dirOrFile) : dirOrFile;
  const file = dirOrFile.endsWith('.json') ? dirOrFile : path.join(dir, 'tokenizer.json');
  const configFile = path.join(dir, 'tokenizer_config.json');
  if (!fs.existsSync(file))
    throw new RlhfError('E_TOKENIZER', `${file} does not exist (only the fast-tokenizer format tokenizer.json is supported)`, { where: file });
  const json = readJson(file) as { model?: unknown; added_tokens?: { id: number; content: string; special?: boolean }[] };
  if (!json || typeof json !== 'object' || !json.model) throw new RlhfError('E_TOKENIZER', `${file}: not a tokenizers JSON file (no "model")`, { where: file });
  const config = (fs.existsSync(configFile) ? readJson(configFile) : {}) as Record<string, unknown>;
  let tok: InstanceType<TokenizersModule['Tokenizer']>;
  try {
    tok = new tokenizers.Tokenizer((opts.semantics ?? 'transformers') === 'raw' ? json : asTransformersBuildsIt(json as Record<string, unknown>, config), config);
  } catch (e) {
    throw new RlhfError('E_TOKENIZER', `${file}: cannot build the tokenizer: ${(e as Error).message}`, { where: file, cause: e });
  }
  const vocab = tok.get_vocab(true);
  let vocabSize = 0;
  for (const id of vocab.values()) if (id + 1 > vocabSize) vocabSize = id + 1;
  const specialTokens: Record<string, number> = {};
  for (const t of json.added_tokens ?? []) if (t.special) specialTokens[t.content] = t.id;
  const special = (key: string): [string | null, number | null] => {
    const s = tokenString(config[key]);
    if (s === null) return [null, null];
    const id = tok.token_to_id(s);
    if (id === undefined) throw new RlhfError('E_TOKENIZER', `${configFile}: ${key} ${JSON.stringify(s)} is not in the vocabulary of ${file}`, { where: configFile });
    return [s, id];
  };
  const [bosToken, bosTokenId] = special('bos_token');
  const [eosToken, eosTokenId] = special('eos_token');
  const [padToken, padTokenId] = special('pad_token');
  const [, unkTokenId] = special('unk_token');
  if (fs.existsSync(path.join(dir, 'config.json'))) {
    // The model beside it: its embedding must cover every id, and the special tokens must agree.
    // (A config.json that does not parse is reported by whatever loads the model.)
    let cfg: ModelConfig | null = null;
    try {
      cfg = readModelConfig(dir);
    } catch {
      cfg = null;
    }
    if (cfg) checkTokenizerMatchesModel({ file, configFile, vocabSize, bosTokenId, eosTokenId, padTokenId }, cfg, dir);
  }
  // A Llama-class config with add_bos_token over a file whose post-processor
  // adds no BOS (DeepSeek V3's byte-level file): BOS is added, as the Llama
  // tokenizer classes of transformers 4 did from that flag.
  const llamaClass = config.tokenizer_class === 'LlamaTokenizer' || config.tokenizer_class === 'LlamaTokenizerFast';
  const probe = tok.encode('a', { add_special_tokens: true }).ids;
  const prependBos = llamaClass && config.add_bos_token === true && bosTokenId !== null && probe[0] !== bosTokenId;
  const encode = (text: string, add: boolean): number[] => {
    const ids = tok.encode(text, { add_special_tokens: add }).ids;
    return add && prependBos ? [bosTokenId!, ...ids] : ids;
  };
  const jinjaFile = path.join(dir, 'chat_template.jinja');
  // Newer transformers save the template as its own file instead of the config key.
  const chatTemplate = fs.existsSync(jinjaFile) ? fs.readFileSync(jinjaFile, 'utf8') : pickTemplate(config.chat_template, configFile);
  return {
    file,
    vocabSize,
    bosTokenId,
    eosTokenId,
    padTokenId,
    unkTokenId,
    specialTokens,
    bosToken,
    eosToken,
    padToken,
    chatTemplate,
    encode: (text, opts) => encode(text, opts?.addSpecialTokens ?? true),
    // tokenizers.js rejects an empty list; an empty sequence is simply ''.
    decode: (ids, opts) => (ids.length ? tok.decode([...ids], { skip_special_tokens: opts?.skipSpecialTokens ?? false }) : ''),
    tokenToId: (t) => tok.token_to_id(t),
    idToToken: (id) => tok.id_to_token(id),
    applyChatTemplate(messages, opts) {
      if (chatTemplate === null) throw new RlhfError('E_TOKENIZER', `${configFile}: the tokenizer has no chat_template`, { where: configFile });
      return applyChatTemplate(chatTemplate, messages, { addGenerationPrompt: opts?.addGenerationPrompt, bosToken, eosToken, extra: opts?.extra });
    },
  };
}
