/**
 * Opens a Hugging Face model folder: config.json, the weights
 * (`model.safetensors`, or shards listed in `model.safetensors.index.json`),
 * tokenizer files and generation_config.json. Everything is validated up
 * front — config, every shard's header, the index against the shards, and
 * every tensor's name and shape against the architecture — so that a bad
 * folder fails here with a message naming the file, not later in the engine.
 *
 * Only safetensors headers are read; tensor data stays in the files (the
 * engine mmaps them natively). `readTensor` copies one tensor for inspection.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RlhfError } from '../errors';
import { openSafetensors } from '../safetensors';
import { readModelConfig, type ModelConfig } from './config';
import { checkTensors, type TensorKind } from './tensors';

export const SAFE_WEIGHTS_NAME = 'model.safetensors';
export const SAFE_WEIGHTS_INDEX_NAME = 'model.safetensors.index.json';

export interface ModelTensor {
  /** The name in the file. */
  name: string;
  /** The name expectedTensors() uses (adds `transformer.` for unprefixed GPT-2 files). */
  canonical: string;
  kind: TensorKind;
  dtype: string;
  shape: number[];
  /** Absolute path of the .safetensors file holding it. */
  file: string;
}

export interface ModelFolder {
  dir: string;
  config: ModelConfig;
  /** Expected tensors only, in file order (ignorable extras are in `ignoredTensors`). */
  tensors: ModelTensor[];
  ignoredTensors: string[];
  /** The weight files, in index order (one entry when unsharded). */
  weightFiles: string[];
  tokenizer: { json: string | null; config: string | null };
  /** Parsed generation_config.json, or null when absent. */
  generationConfig: Record<string, unknown> | null;
  /** A copy of one tensor's raw bytes (by file or canonical name), for inspection and tests. */
  readTensor(name: string): Buffer;
  /** Closes the files readTensor opened. */
  close(): void;
}

function readJson(file: string, code: 'E_MODEL' | 'E_CONFIG'): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new RlhfError('E_IO', `cannot read ${file}: ${(e as Error).message}`, { where: file, cause: e });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new RlhfError(code, `${file}: invalid JSON: ${(e as Error).message}`, { where: file, cause: e });
  }
}

function optional(dir: string, name: string): string | null {
  const p = path.join(dir, name);
  return fs.existsSync(p) ? p : null;
}

/** Reads the index's weight_map: tensor -> shard file name. */
function readIndex(indexFile: string, dir: string): Map<string, string> {
  const idx = readJson(indexFile, 'E_MODEL') as { weight_map?: unknown };
  const wm = idx?.weight_map;
  if (!wm || typeof wm !== 'object' || Array.isArray(wm))
    throw new RlhfError('E_MODEL', `${indexFile}: no "weight_map" object (tensor name -> shard file)`, { where: indexFile });
  const map = new Map<string, string>();
  for (const [tensor, shard] of Object.entries(wm as Record<string, unknown>)) {
    // A shard path must stay inside the folder: the index is data, not a licence to read elsewhere.
    if (typeof shard !== 'string' || shard.includes('/') || shard.includes('\\') || shard === '..' || !shard.endsWith('.safetensors'))
      throw new RlhfError('E_MODEL', `${indexFile}: weight_map["${tensor}"] must be a .safetensors file name in ${dir}, got ${JSON.stringify(shard)}`, {
        where: indexFile,
      });
    map.set(tensor, shard);
  }
  if (map.size === 0) throw new RlhfError('E_MODEL', `${indexFile}: "weight_map" is empty`, { where: indexFile });
  return map;
}

/** Headers of the weight files: [{file, tensors}]; validates a sharded index against its shards. */
function readWeights(dir: string): { files: string[]; entries: { name: string; dtype: string; shape: number[]; file: string }[] } {
  const single = path.join(dir, SAFE_WEIGHTS_NAME);
  const indexFile = path.join(dir, SAFE_WEIGHTS_INDEX_NAME);
  const headerOf = (file: string) => {
    const f = openSafetensors(file);
    try {
      return f.header.tensors.map((t) => ({ name: t.name, dtype: t.dtype as string, shape: t.shape, file }));
    } finally {
      f.close();
    }
  };
  // transformers' order: a single model.safetensors wins over an index.
  if (fs.existsSync(single)) return { files: [single], entries: headerOf(single) };
  if (!fs.existsSync(indexFile)) {
    const bins = fs.readdirSync(dir).filter((f) => /^pytorch_model.*\.bin$|\.pt$|\.pth$/.test(f));
    const hint = bins.length ? ` (found PyTorch pickles ${bins.join(', ')}: convert them to safetensors first)` : '';
    throw new RlhfError('E_MODEL', `${dir}: no weights: neither ${SAFE_WEIGHTS_NAME} nor ${SAFE_WEIGHTS_INDEX_NAME}${hint}`, { where: dir });
  }
  const map = readIndex(indexFile, dir);
  const shards = [...new Set(map.values())];
  const entries: { name: string; dtype: string; shape: number[]; file: string }[] = [];
  const problems: string[] = [];
  for (const shard of shards) {
    const file = path.join(dir, shard);
    if (!fs.existsSync(file)) throw new RlhfError('E_MODEL', `${indexFile}: shard ${shard} is listed but ${file} does not exist`, { where: file });
    for (const e of headerOf(file)) {
      const claimed = map.get(e.name);
      if (claimed === undefined) problems.push(`${shard} holds ${e.name}, which the index does not list`);
      else if (claimed !== shard) problems.push(`${shard} holds ${e.name}, which the index places in ${claimed}`);
      else entries.push(e);
    }
  }
  const found = new Set(entries.map((e) => e.name));
  for (const [tensor, shard] of map) if (!found.has(tensor)) problems.push(`the index places ${tensor} in ${shard}, which does not hold it`);
  if (problems.length)
    throw new RlhfError('E_MODEL', `${indexFile}: index and shards disagree:\n  ${problems.slice(0, 20).join('\n  ')}`, { where: indexFile });
  return { files: shards.map((s) => path.join(dir, s)), entries };
}

/** Opens and validates a model folder (see the file comment). Throws E_IO / E_MODEL / E_CONFIG naming the path. */
export function openModelFolder(dir: string): ModelFolder {
  const abs = path.resolve(dir);
  let stat: fs.Stats;
  try {
    stat = fs.statSync(abs);
  } catch (e) {
    throw new RlhfError('E_IO', `${abs}: no such model folder`, { where: abs, cause: e });
  }
  if (!stat.isDirectory()) throw new RlhfError('E_IO', `${abs}: not a folder (a model is a folder with config.json and weights)`, { where: abs });
  const config = readModelConfig(abs);
  const { files, entries } = readWeights(abs);
  const { tensors: checked, ignored } = checkTensors(config, entries, abs);
  const fileOf = new Map(entries.map((e) => [e.name, e.file]));
  const tensors: ModelTensor[] = checked.map((t) => ({ name: t.name, canonical: t.canonical, kind: t.kind, dtype: t.dtype, shape: t.shape, file: fileOf.get(t.name)! }));
  const genFile = optional(abs, 'generation_config.json');
  const generationConfig = genFile ? (readJson(genFile, 'E_CONFIG') as Record<string, unknown>) : null;
  const open = new Map<string, ReturnType<typeof openSafetensors>>();
  const byName = new Map<string, ModelTensor>();
  for (const t of tensors) byName.set(t.name, t).set(t.canonical, t);
  return {
    dir: abs,
    config,
    tensors,
    ignoredTensors: ignored,
    weightFiles: files,
    tokenizer: { json: optional(abs, 'tokenizer.json'), config: optional(abs, 'tokenizer_config.json') },
    generationConfig,
    readTensor(name: string): Buffer {
      const t = byName.get(name);
      if (!t) throw new RlhfError('E_ARGUMENT', `${abs}: no tensor ${name}`, { where: abs });
      let f = open.get(t.file);
      if (!f) open.set(t.file, (f = openSafetensors(t.file)));
      return f.tensorBytes(t.name);
    },
    close(): void {
      for (const f of open.values()) f.close();
      open.clear();
    },
  };
}
