/**
 * Reading PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors)
 * for inference: each lora_A / lora_B pair is matched to the base weight it
 * adapts, with PEFT's scale (lora_alpha / r, or lora_alpha / sqrt(r) with
 * use_rslora). Tensor names follow PEFT:
 *   base_model.model.<base name without .weight>.lora_A.weight
 * (and `.lora_A.<adapter>.weight` in some older saves).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RlhfError } from '../errors';
import { openSafetensors } from '../safetensors';

export interface AdapterConfig {
  r: number;
  loraAlpha: number;
  useRslora: boolean;
  targetModules: string[];
  fanInFanOut: boolean;
  modulesToSave: string[];
  baseModel: string | null;
  /** PEFT lora_dropout of the saved adapter (0 when absent). */
  loraDropout: number;
}

export interface LoraPair {
  target: string;
  a: [string, string];
  b: [string, string];
  scale: number;
}

export function readAdapterConfig(dir: string): AdapterConfig {
  const file = path.join(dir, 'adapter_config.json');
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist (not a PEFT adapter folder)' : (e as Error).message;
    throw new RlhfError('E_CONFIG', `${file}: ${why}`, { where: file, cause: e });
  }
  if (j.peft_type !== undefined && j.peft_type !== 'LORA') throw new RlhfError('E_UNSUPPORTED', `${file}: peft_type ${JSON.stringify(j.peft_type)}; only LORA adapters are supported`, { where: file });
  const r = j.r;
  if (!Number.isInteger(r) || (r as number) <= 0) throw new RlhfError('E_CONFIG', `${file}: "r" must be a positive integer`, { where: file });
  const alpha = j.lora_alpha ?? r;
  if (typeof alpha !== 'number') throw new RlhfError('E_CONFIG', `${file}: "lora_alpha" must be a number`, { where: file });
  const tm = j.target_modules;
  const targetModules = Array.isArray(tm) ? (tm as string[]) : typeof tm === 'string' ? [tm] : [];
  return {
    r: r as number,
    loraAlpha: alpha,
    useRslora: Boolean(j.use_rslora),
    targetModules,
    fanInFanOut: Boolean(j.fan_in_fan_out),
    modulesToSave: Array.isArray(j.modules_to_save) ? (j.modules_to_save as string[]) : [],
    baseModel: typeof j.base_model_name_or_path === 'string' ? j.base_model_name_or_path : null,
    loraDropout: typeof j.lora_dropout === 'number' ? j.lora_dropout : 0,
  };
}

/** What adapter_config.json records of an adapter this package wrote. */
export interface AdapterConfigOut {
  r: number;
  loraAlpha: number;
  loraDropout: number;
  useRslora: boolean;
  targetModules: readonly string[];
  /** GPT-2's Conv1D modules: PEFT records fan_in_fan_out. */
  fanInFanOut: boolean;
  /** The model scores sequences (reward model, critic): task_type SEQ_CLS. */
  seqCls: boolean;
  /** The adapter holds the score head: modules_to_save lists it. */
  savesHead: boolean;
  baseModel: string | null;
}

/** Writes `dir`/adapter_config.json in PEFT's layout (through a temporary name, renamed when complete). */
export function writeAdapterConfig(dir: string, c: AdapterConfigOut): void {
  const cfg = {
    peft_type: 'LORA',
    task_type: c.seqCls ? 'SEQ_CLS' : 'CAUSAL_LM',
    base_model_name_or_path: c.baseModel,
    r: c.r,
    lora_alpha: c.loraAlpha,
    lora_dropout: c.loraDropout,
    use_rslora: c.useRslora,
    target_modules: [...c.targetModules].sort(),
    fan_in_fan_out: c.fanInFanOut,
    bias: 'none',
    modules_to_save: c.savesHead ? ['classifier', 'score'] : null,
    init_lora_weights: true,
    inference_mode: true,
  };
  const tmp = path.join(dir, `adapter_config.json.tmp-${process.pid}`);
  fs.writeFileSync(tmp, JSON.stringify(cfg, null, 2) + '\n');
  fs.renameSync(tmp, path.join(dir, 'adapter_config.json'));
}

/** A PEFT adapter folder (adapter_config.json and no config.json of its own), not a model folder. */
export function isAdapterDir(dir: string): boolean {
  return fs.existsSync(path.join(dir, 'adapter_config.json')) && !fs.existsSync(path.join(dir, 'config.json'));
}

/**
 * The tensors of a saved adapter for the modules at `modulePaths` (Hugging
 * Face module paths, e.g. model.layers.0.self_attn.q_proj): each present
 * module's lora_A and lora_B as [file, tensor name] (E_MODEL when a lora_B
 * is missing), and the score head when the adapter holds one.
 */
export function savedLoraTensors(dir: string, modulePaths: readonly string[]): { file: string; modules: Map<string, { a: [string, string]; b: [string, string] }>; head: [string, string] | null } {
  const file = path.join(dir, 'adapter_model.safetensors');
  const st = openSafetensors(file);
  const names = new Set(st.tensorNames);
  st.close();
  const modules = new Map<string, { a: [string, string]; b: [string, string] }>();
  for (const mp of modulePaths) {
    const base = `base_model.model.${mp}`;
    if (!names.has(`${base}.lora_A.weight`)) continue;
    if (!names.has(`${base}.lora_B.weight`)) throw new RlhfError('E_MODEL', `${file}: ${base}.lora_B.weight is missing`, { where: file });
    modules.set(mp, { a: [file, `${base}.lora_A.weight`], b: [file, `${base}.lora_B.weight`] });
  }
  return { file, modules, head: names.has(ADAPTER_HEAD_TENSOR) ? [file, ADAPTER_HEAD_TENSOR] : null };
}

export function loraScale(cfg: AdapterConfig): number {
  return cfg.useRslora ? cfg.loraAlpha / Math.sqrt(cfg.r) : cfg.loraAlpha / cfg.r;
}

/** The LoRA pairs of an adapter folder, keyed to canonical base tensor names. */
/** Where PEFT saves a sequence-classification head (`modules_to_save: ["score"]`). */
export const ADAPTER_HEAD_TENSOR = 'base_model.model.score.weight';

/** The adapter's own score head, if it has one: [file, stored name]. */
export function adapterHead(dir: string): [string, string] | null {
  const file = path.join(dir, 'adapter_model.safetensors');
  if (!fs.existsSync(file)) return null;
  const st = openSafetensors(file);
  const has = st.tensorNames.includes(ADAPTER_HEAD_TENSOR);
  st.close();
  return has ? [file, ADAPTER_HEAD_TENSOR] : null;
}

export function readLoraPairs(dir: string, knownTargets: Set<string>): { config: AdapterConfig; pairs: LoraPair[] } {
  const config = readAdapterConfig(dir);
  const file = path.join(dir, 'adapter_model.safetensors');
  if (!fs.existsSync(file)) throw new RlhfError('E_MODEL', `${file} does not exist`, { where: file });
  const st = openSafetensors(file);
  const names = st.tensorNames;
  st.close();
  const scale = loraScale(config);
  const pairs: LoraPair[] = [];
  for (const name of names) {
    const m = /^base_model\.model\.(.+)\.lora_A(?:\.[^.]+)?\.weight$/.exec(name);
    if (!m) continue;
    const target = `${m[1]}.weight`;
    const bName = name.replace('.lora_A', '.lora_B');
    if (!names.includes(bName)) throw new RlhfError('E_MODEL', `${file}: ${name} has no matching ${bName}`, { where: file });
    if (!knownTargets.has(target)) throw new RlhfError('E_MODEL', `${file}: ${name} adapts '${target}', which is not a weight of the base model`, { where: file });
    pairs.push({ target, a: [file, name], b: [file, bName], scale });
  }
  if (pairs.length === 0) throw new RlhfError('E_MODEL', `${file}: no lora_A/lora_B tensors found`, { where: file });
  return { config, pairs };
}
