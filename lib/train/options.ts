/**
 * Training options, declared once. Each option is one row of a table: its
 * type, documented default, check and help text. Every stage's config is a
 * table made of the shared groups below plus what is its own, and from that
 * one table come
 *   - the resolved config (`resolveOptions`: defaults filled in, every value
 *     checked, E_ARGUMENT naming the flag),
 *   - the stage command's CLI options and `--help` with the defaults
 *     (`addCliOptions`), and the config built from the parsed argv
 *     (`configFromArgv`),
 *   - what a checkpoint hashes (`unhashed` rows are left out: where things
 *     go, how often to evaluate or checkpoint, the device).
 * Adding an option is one row here (or in the stage's own table).
 */
import * as path from 'node:path';
import type { Argv } from 'yargs';
import { RlhfError } from '../errors';
import { DEVICES, type Device } from '../info';
import { LR_SCHEDULES, type LrScheduleKind } from '../stages/schedule';
import { NAN_POLICIES, type NanPolicy } from '../stages/numerics';
import { TOKENIZE_MODES, TRUNCATION_MODES, type TokenizeMode, type TruncationMode } from '../data/trl-tokens';

/** A check: null when `v` is fine, else the message (the flag is named by the caller's message). */
export type Check = (v: any, r: Record<string, any>) => string | null; // eslint-disable-line @typescript-eslint/no-explicit-any

export interface OptionSpec {
  /** Help text (one line). */
  describe: string;
  /** 'list': comma- or space-separated on the CLI, string[] in the API; 'object': a nested section (API and recipe files only). */
  type: 'number' | 'string' | 'boolean' | 'list' | 'object';
  choices?: readonly string[];
  /** The default (absent: none, resolved to null). */
  default?: unknown;
  /** A default that depends on the other resolved options (runs after the plain defaults). */
  derive?: (r: Record<string, any>) => unknown; // eslint-disable-line @typescript-eslint/no-explicit-any
  /** How --help states a derived default. */
  defaultText?: string;
  /** Normalises the given value (e.g. ['all-linear'] -> 'all-linear'). */
  coerce?: (v: any) => unknown; // eslint-disable-line @typescript-eslint/no-explicit-any
  check?: Check;
  /** The CLI demands it; the API refuses a config without it. */
  required?: boolean;
  /** Does not change what training computes: left out of the checkpoint's config hash. */
  unhashed?: boolean;
  /** No CLI flag (API and recipes only). */
  apiOnly?: boolean;
  /** Help section. */
  group?: string;
  /** The CLI flag, when it is not the key in kebab-case (e.g. RM's useMargin is --margin / --no-margin). */
  flag?: string;
}

/** One row per key of the stage's config. */
export type OptionTable<C> = { [K in keyof C]-?: OptionSpec };
/** The config with every default filled in. */
export type Resolved<C> = { [K in keyof C]-?: Exclude<C[K], undefined> };

export const flagOf = (key: string, spec?: OptionSpec) => '--' + (spec?.flag ?? key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase()));

// ------------------------------------------------------------------ checks
// Each returns the message tail after the flag; `hint` goes in parentheses after the requirement.
const show = (v: unknown) => (typeof v === 'string' ? v : JSON.stringify(v) ?? String(v));
const num = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const mk = (ok: (v: any) => boolean, what: string) => (hint?: string): Check => (v) => (ok(v) ? null : `must be ${what}${hint ? ` (${hint})` : ''}, got ${show(v)}`); // eslint-disable-line @typescript-eslint/no-explicit-any
export const checks = {
  posInt: mk((v) => Number.isInteger(v) && v > 0, 'a positive integer'),
  nonNegInt: mk((v) => Number.isInteger(v) && v >= 0, 'a non-negative integer'),
  positive: mk((v) => num(v) && v > 0, 'a positive number'),
  gtZero: mk((v) => num(v) && v > 0, '> 0'),
  nonNeg: mk((v) => num(v) && v >= 0, '>= 0'),
  lrLike: mk((v) => num(v) && v >= 0, 'a number >= 0'),
  number: mk((v) => num(v), 'a number'),
  unitOpen: mk((v) => num(v) && v >= 0 && v < 1, 'in [0, 1)'),
  unitClosed: mk((v) => num(v) && v >= 0 && v <= 1, 'in [0, 1]'),
  openUnit: mk((v) => num(v) && v > 0 && v < 1, 'in (0, 1)'),
  topP: mk((v) => num(v) && v > 0 && v <= 1, 'in (0, 1]'),
  intAtLeast: (n: number) => mk((v) => Number.isInteger(v) && v >= n, `an integer >= ${n}`),
  nullOr: (c: Check): Check => (v, r) => (v === null ? null : c(v, r)),
};

// ------------------------------------------------------------------ the shared groups

/** What every stage has: its inputs and output, the seed, the device, threads. */
export interface RunOptions {
  /** Base model folder (Hugging Face layout). Required. */
  model: string;
  /** Training data, JSONL. Required. */
  data: string;
  /** Output folder. Required. */
  out: string;
  /** Initialisation, shuffling, sampling and the eval split. Default 42 (TrainingArguments). */
  seed?: number;
  /** 'auto' | 'cpu' | 'cuda' (or 'cpu-guarded' for testing, see lib/info.ts). Default 'auto'. */
  device?: Device;
  /** CPU threads; 0: RLHF_NUM_THREADS or every usable core. Takes effect when the stage is the first engine use of the process (always from the CLI). Default 0. */
  threads?: number;
}

export const RUN_OPTIONS: OptionTable<RunOptions> = {
  model: { type: 'string', required: true, describe: 'base model folder (Hugging Face layout)', group: 'Run' },
  data: { type: 'string', required: true, describe: 'training data, JSONL', group: 'Run' },
  out: { type: 'string', required: true, describe: 'output folder', group: 'Run', unhashed: true },
  seed: { type: 'number', default: 42, check: checks.nonNegInt(), describe: 'initialisation, shuffling, sampling and the eval split', group: 'Run' },
  device: { type: 'string', choices: DEVICES, default: 'auto', unhashed: true, describe: 'compute device (cpu-guarded: the CPU on the device-memory path, for testing)', group: 'Run' },
  threads: { type: 'number', default: 0, unhashed: true, check: checks.nonNegInt('0: RLHF_NUM_THREADS or every usable core'), describe: 'CPU threads (0: RLHF_NUM_THREADS or every usable core)', group: 'Run' },
};

/** Optimizer: AdamW (torch.optim.AdamW) or SGD, decoupled weight decay, global-norm clipping. */
export interface OptimizerOptions {
  /** 'adamw' or 'sgd'. Default 'adamw'. */
  optimizer?: 'adamw' | 'sgd';
  /** Peak learning rate. The default is the stage's. */
  lr?: number;
  /** AdamW betas and epsilon. Defaults 0.9, 0.999, 1e-8 (TrainingArguments). */
  adamBeta1?: number;
  adamBeta2?: number;
  adamEpsilon?: number;
  /** SGD momentum. Default 0. */
  momentum?: number;
  /** Decoupled weight decay (biases and norm weights exempt). Default 0 (TrainingArguments). */
  weightDecay?: number;
  /** Global gradient-norm clipping; 0 disables. Default 1.0 (TrainingArguments). */
  maxGradNorm?: number;
}

export const OPTIMIZER_OPTIONS: OptionTable<OptimizerOptions> = {
  optimizer: { type: 'string', choices: ['adamw', 'sgd'], default: 'adamw', describe: 'torch.optim.AdamW or SGD', group: 'Optimizer' },
  lr: { type: 'number', default: 1e-4, check: checks.lrLike(), describe: 'peak learning rate', group: 'Optimizer' },
  adamBeta1: { type: 'number', default: 0.9, check: checks.unitOpen(), describe: 'AdamW beta1', group: 'Optimizer' },
  adamBeta2: { type: 'number', default: 0.999, check: checks.unitOpen(), describe: 'AdamW beta2', group: 'Optimizer' },
  adamEpsilon: { type: 'number', default: 1e-8, check: (v) => (num(v) && v > 0 ? null : `must be > 0, got ${show(v)}`), describe: 'AdamW epsilon', group: 'Optimizer' },
  momentum: { type: 'number', default: 0, check: checks.unitOpen(), describe: 'SGD momentum', group: 'Optimizer' },
  weightDecay: { type: 'number', default: 0, check: checks.nonNeg(), describe: 'decoupled weight decay (not on biases and norm weights)', group: 'Optimizer' },
  maxGradNorm: { type: 'number', default: 1, check: checks.nonNeg('0 disables clipping'), describe: 'global gradient-norm clipping; 0 disables', group: 'Optimizer' },
};

/** Learning-rate schedule (transformers' get_scheduler). */
export interface ScheduleOptions {
  /** 'constant', 'linear' or 'cosine'. Default 'linear'. */
  lrSchedule?: LrScheduleKind;
  /** Linear warmup steps; > 0 overrides warmupRatio. Default 0. */
  warmupSteps?: number;
  /** Warmup as a fraction of the steps (used when warmupSteps is 0). Default 0. */
  warmupRatio?: number;
}

export const SCHEDULE_OPTIONS: OptionTable<ScheduleOptions> = {
  lrSchedule: { type: 'string', choices: LR_SCHEDULES, default: 'linear', describe: "learning-rate schedule (transformers' get_scheduler)", group: 'Schedule' },
  warmupSteps: { type: 'number', default: 0, check: checks.nonNegInt(), describe: 'linear warmup steps (> 0 overrides --warmup-ratio)', group: 'Schedule' },
  warmupRatio: { type: 'number', default: 0, check: checks.unitOpen(), describe: 'warmup as a fraction of the steps', group: 'Schedule' },
};

/** How many steps, of what size, over which rows. */
export interface BatchOptions {
  /** Optimizer steps; > 0 overrides epochs (TrainingArguments.max_steps). Default 0 (use epochs). */
  steps?: number;
  /** Passes over the training rows. The default is the stage's. */
  epochs?: number;
  /** Rows (pairs) per micro-batch. Default 8. */
  batchSize?: number;
  /** Micro-batches per optimizer step. Default 1. */
  gradAccum?: number;
  /** Sequences are cut to this many tokens (and to the model's context). Default 1024 (TRL's max_length). */
  maxLen?: number;
  /** Shuffle rows each epoch (seeded). The default is the stage's. */
  shuffle?: boolean;
}

export const BATCH_OPTIONS: OptionTable<BatchOptions> = {
  steps: { type: 'number', default: 0, check: checks.nonNegInt('0: use --epochs'), describe: 'optimizer steps; > 0 overrides --epochs', group: 'Batches' },
  epochs: { type: 'number', default: 1, check: checks.positive(), describe: 'passes over the training rows', group: 'Batches' },
  batchSize: { type: 'number', default: 8, check: checks.posInt(), describe: 'rows per micro-batch', group: 'Batches' },
  gradAccum: { type: 'number', default: 1, check: checks.posInt(), describe: 'micro-batches per optimizer step', group: 'Batches' },
  maxLen: { type: 'number', default: 1024, check: checks.intAtLeast(2)(), describe: "sequences are cut to this many tokens (and to the model's context)", group: 'Batches' },
  shuffle: { type: 'boolean', default: false, describe: 'shuffle rows each epoch (seeded)', group: 'Batches' },
};

/** How text rows become tokens (lib/data/trl-tokens.ts, docs/trl.md). */
export interface DataOptions {
  /** 'trl': as TRL 1.13's trainers tokenize (prompt + completion + EOS as one string); 'separate': prompt and completion encoded apart. Default 'trl'. */
  tokenize?: TokenizeMode;
  /** A sequence longer than --max-len keeps its start or its end (TRL's truncation_mode). Default 'keep_start'. */
  truncationMode?: TruncationMode;
}

export const DATA_OPTIONS: OptionTable<DataOptions> = {
  tokenize: {
    type: 'string',
    choices: TOKENIZE_MODES,
    default: 'trl',
    describe: "trl: prompt + completion + EOS encoded as one string, prompt tokens masked (TRL 1.13); separate: prompt and completion encoded apart, then concatenated",
    group: 'Data',
  },
  truncationMode: { type: 'string', choices: TRUNCATION_MODES, default: 'keep_start', describe: "a sequence longer than --max-len keeps its start or its end (TRL's truncation_mode)", group: 'Data' },
};

/** What the preference stages (rm, dpo family, kto) add to DATA_OPTIONS. */
export interface PreferenceStageOptions {
  /** Cut a longer prompt to its last N tokens before the completion is added (0: no limit). Default 0. */
  maxPromptLength?: number;
  /** Conversational completions end at their last stop token (EOS id), dropping what the chat template writes after it. Default: with --tokenize separate. */
  endAtStop?: boolean;
}

export const PREFERENCE_DATA_OPTIONS: OptionTable<PreferenceStageOptions> = {
  maxPromptLength: { type: 'number', default: 0, check: checks.nonNegInt('0: no limit'), describe: 'cut a longer prompt to its last N tokens (0: no limit)', group: 'Data' },
  endAtStop: {
    type: 'boolean',
    derive: (r) => r.tokenize === 'separate',
    defaultText: 'with --tokenize separate',
    describe: "conversational completions end at their last EOS/stop token, dropping the chat template's text after it (where a sampled response stops)",
    group: 'Data',
  },
};

/** Held-out evaluation. */
export interface EvalOptions {
  /** Held-out JSONL (the training data's format). Default none. */
  evalData?: string | null;
  /** Hold out this fraction of the training rows (seeded) instead. Default 0. */
  evalFraction?: number;
  /** Evaluate every N steps (and always at the end); 0: only at the end. Default 0. */
  evalSteps?: number;
  /** Eval micro-batch rows. Default batchSize. */
  evalBatchSize?: number;
}

export const EVAL_OPTIONS: OptionTable<EvalOptions> = {
  evalData: { type: 'string', describe: 'held-out JSONL, evaluated before training, every --eval-steps and at the end', group: 'Evaluation' },
  evalFraction: {
    type: 'number',
    default: 0,
    check: (v, r) => checks.unitOpen()(v, r) ?? (v > 0 && r.evalData ? 'and --eval-data cannot be combined' : null),
    describe: 'hold out this fraction of --data (seeded) instead',
    group: 'Evaluation',
  },
  evalSteps: { type: 'number', default: 0, unhashed: true, check: checks.nonNegInt(), describe: 'evaluate every N steps (and at the end); 0: only at the end', group: 'Evaluation' },
  evalBatchSize: { type: 'number', derive: (r) => r.batchSize, defaultText: '--batch-size', unhashed: true, check: checks.posInt(), describe: 'eval rows per micro-batch', group: 'Evaluation' },
};

/** Resumable checkpoints (lib/stages/checkpoints.ts). */
export interface CheckpointOptions {
  /** Write a resumable checkpoint every N steps into out/checkpoints (0: none). Default 0. */
  checkpointSteps?: number;
  /** Checkpoints kept. Default 2. */
  checkpointKeep?: number;
  /** Where checkpoint-<step> folders go. Default out/checkpoints. */
  checkpointDir?: string | null;
  /** Continue from the newest checkpoint (same config and data). Default false. */
  resume?: boolean;
  /** With resume: continue from a checkpoint written with other options or data (the differences are logged). Default false. */
  resumeMismatch?: boolean;
  /** A step with a NaN/infinite loss or gradient: 'stop' the run (E_NUMERIC) or 'skip' the step. Default 'stop'. */
  nanPolicy?: NanPolicy;
}

export const CHECKPOINT_OPTIONS: OptionTable<CheckpointOptions> = {
  checkpointSteps: { type: 'number', default: 0, unhashed: true, check: checks.nonNegInt(), describe: 'a resumable checkpoint every N steps into OUT/checkpoints (0: none)', group: 'Checkpoints' },
  checkpointKeep: { type: 'number', default: 2, unhashed: true, check: checks.posInt(), describe: 'checkpoints kept', group: 'Checkpoints' },
  checkpointDir: { type: 'string', unhashed: true, apiOnly: true, describe: 'where checkpoint-<step> folders go (default OUT/checkpoints)', group: 'Checkpoints' },
  resume: { type: 'boolean', default: false, unhashed: true, describe: 'continue from the newest checkpoint', group: 'Checkpoints' },
  resumeMismatch: { type: 'boolean', default: false, unhashed: true, describe: 'with --resume: continue from a checkpoint written with other options or data', group: 'Checkpoints' },
  nanPolicy: { type: 'string', choices: NAN_POLICIES, default: 'stop', unhashed: true, describe: 'a step whose loss or gradient is NaN/infinite: stop the run, or skip the step', group: 'Checkpoints' },
};

/** What is trained: a new or continued LoRA adapter (PEFT), or every weight. */
export interface LoraOptions {
  /** Continue training this PEFT LoRA adapter instead of creating one. */
  adapter?: string | null;
  /** Train every weight instead of a LoRA adapter. Default false. */
  full?: boolean;
  /** LoRA rank. Default 16 (TRL's ModelConfig.lora_r). */
  loraR?: number;
  /** LoRA alpha. Default 32 (TRL's ModelConfig.lora_alpha); scale alpha / r. */
  loraAlpha?: number;
  /** PEFT lora_dropout on the adapter input while training (new adapters only). Default 0 (PEFT's default). */
  loraDropout?: number;
  /** PEFT module names, or 'all-linear'. Default: every linear module (all-linear). */
  loraTargets?: readonly string[] | 'all-linear';
  /** rsLoRA scaling alpha / sqrt(r). Default false. */
  rslora?: boolean;
}

/** The options that shape a new adapter (refused with --full or a continued --adapter). */
export const LORA_SHAPE_KEYS = ['loraR', 'loraAlpha', 'loraDropout', 'loraTargets', 'rslora'] as const;

const allLinear = (v: readonly string[] | 'all-linear') => (v === 'all-linear' || (v.length === 1 && v[0] === 'all-linear') ? 'all-linear' : [...v]);
export const LORA_OPTIONS: OptionTable<LoraOptions> = {
  adapter: { type: 'string', describe: 'continue training this PEFT LoRA adapter folder', group: 'LoRA' },
  full: { type: 'boolean', default: false, describe: 'train every weight instead of a LoRA adapter', group: 'LoRA' },
  loraR: { type: 'number', default: 16, check: checks.posInt(), describe: 'LoRA rank', group: 'LoRA' },
  loraAlpha: { type: 'number', default: 32, check: checks.positive(), describe: 'LoRA alpha (scale alpha / r)', group: 'LoRA' },
  loraDropout: { type: 'number', default: 0, check: checks.unitOpen(), describe: 'PEFT lora_dropout while training a new adapter', group: 'LoRA' },
  loraTargets: {
    type: 'list',
    default: 'all-linear',
    coerce: allLinear,
    check: (v) => (v === 'all-linear' || v.length > 0 ? null : 'must name at least one module (or all-linear)'),
    describe: 'PEFT module names, comma- or space-separated, or all-linear',
    group: 'LoRA',
  },
  rslora: { type: 'boolean', default: false, describe: 'rsLoRA scaling alpha / sqrt(r)', group: 'LoRA' },
};

/** The options of every supervised (offline) stage: SFT, RM, DPO and the methods to come. */
export type SupervisedOptions = RunOptions & OptimizerOptions & ScheduleOptions & BatchOptions & DataOptions & EvalOptions & CheckpointOptions & LoraOptions;
export const SUPERVISED_OPTIONS: OptionTable<SupervisedOptions> = {
  ...RUN_OPTIONS,
  ...LORA_OPTIONS,
  ...OPTIMIZER_OPTIONS,
  ...SCHEDULE_OPTIONS,
  ...BATCH_OPTIONS,
  ...DATA_OPTIONS,
  ...EVAL_OPTIONS,
  ...CHECKPOINT_OPTIONS,
};

// ------------------------------------------------------------------ table edits

/** The table with other defaults (a stage's own choices, e.g. RM's cosine schedule). */
export function withDefaults<C>(table: OptionTable<C>, defaults: { [K in keyof C]?: unknown }, derived: { [K in keyof C]?: { derive: OptionSpec['derive']; defaultText: string } } = {}): OptionTable<C> {
  const out = { ...table } as Record<string, OptionSpec>;
  for (const [k, v] of Object.entries(defaults)) out[k] = { ...out[k], default: v, derive: undefined, defaultText: undefined };
  for (const [k, v] of Object.entries(derived)) out[k] = { ...out[k], ...(v as object), default: undefined };
  return out as OptionTable<C>;
}

/** The table with the help text of some rows replaced. */
export function describe<C>(table: OptionTable<C>, texts: { [K in keyof C]?: string }): OptionTable<C> {
  const out = { ...table } as Record<string, OptionSpec>;
  for (const [k, v] of Object.entries(texts)) out[k] = { ...out[k], describe: v as string };
  return out as OptionTable<C>;
}

/** The defaults of a table (derived ones omitted), e.g. for SFT_DEFAULTS-style exports and docs. */
export function defaultsOf<C>(table: OptionTable<C>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, s] of Object.entries(table) as [string, OptionSpec][]) if (s.default !== undefined) out[k] = s.default;
  return out;
}

/** A stage's two learning rates (`lrLora`, `lrFull`), from its table's derived lr. */
export function lrDefaults(table: OptionTable<{ lr?: number }>): { lrLora: unknown; lrFull: unknown } {
  const derive = table.lr.derive ?? (() => table.lr.default);
  return { lrLora: derive({ full: false }), lrFull: derive({ full: true }) };
}

// ------------------------------------------------------------------ resolving

/**
 * Fills in every default and checks every value: E_ARGUMENT naming the flag
 * (`--lora-r must be a positive integer, got 0`). Keys not in the table are
 * kept as they are (a stage may carry API-only extras).
 */
export function resolveOptions<C>(table: OptionTable<C>, cfg: C): Resolved<C> {
  const r: Record<string, unknown> = { ...(cfg as Record<string, unknown>) };
  const rows = Object.entries(table) as [string, OptionSpec][];
  for (const [k, s] of rows) {
    if (s.required && !(typeof r[k] === 'string' && (r[k] as string).length > 0)) throw new RlhfError('E_ARGUMENT', `${flagOf(k, s)} is required`);
    if (r[k] === undefined || r[k] === null) r[k] = s.derive ? undefined : (s.default ?? null);
    else if (s.coerce) r[k] = s.coerce(r[k]);
  }
  for (const [k, s] of rows) if (s.derive && (r[k] === undefined || r[k] === null)) r[k] = s.derive(r);
  for (const [k, s] of rows) {
    const v = r[k];
    if (s.choices && v !== null && !s.choices.includes(v as string))
      throw new RlhfError('E_ARGUMENT', `${flagOf(k, s)} must be ${s.choices.length === 2 ? s.choices.join(' or ') : `one of ${s.choices.join(', ')}`}, got ${show(v)}`);
    const msg = s.check && v !== null ? s.check(v, r) : null;
    if (msg) throw new RlhfError('E_ARGUMENT', `${flagOf(k, s)} ${msg}`);
  }
  return r as Resolved<C>;
}

/** E_ARGUMENT unless `ok`. */
export function arg(ok: boolean, msg: string): void {
  if (!ok) throw new RlhfError('E_ARGUMENT', msg);
}

/** Checks every stage makes of its output folder against its inputs. */
export function checkOutDiffers(out: string, inputs: Record<string, string | null | undefined>): void {
  for (const [flag, dir] of Object.entries(inputs))
    if (dir) arg(path.resolve(out) !== path.resolve(dir), flag === '--model' ? '--out must differ from --model (the base model folder is never overwritten)' : `--out must differ from ${flag} (the input is never overwritten)`);
}

/** The keys of a table that a checkpoint does not hash. */
export function unhashedKeys(table: OptionTable<unknown>): string[] {
  return (Object.entries(table) as [string, OptionSpec][]).filter(([, s]) => s.unhashed).map(([k]) => k);
}

// ------------------------------------------------------------------ the CLI

function helpDefault(s: OptionSpec): string {
  if (s.defaultText) return ` [default: ${s.defaultText}]`;
  if (s.default === undefined || s.default === null) return '';
  return ` [default: ${Array.isArray(s.default) ? s.default.join(',') : String(s.default)}]`;
}

/**
 * Registers every row of the table as a CLI option. yargs gets no default
 * values (the help text states them): an option not given stays undefined,
 * so `resolveOptions` applies the same defaults to the CLI, the API and
 * recipe files.
 */
export function addCliOptions<T>(y: Argv<T>, table: OptionTable<unknown>, overrides: Record<string, Partial<OptionSpec>> = {}): Argv<T> {
  let a = y;
  for (const [k, s0] of Object.entries(table) as [string, OptionSpec][]) {
    const s = { ...s0, ...(overrides[k] ?? {}) };
    if (s.apiOnly || s.type === 'object') continue;
    const name = flagOf(k, s).slice(2);
    const describe = s.describe + helpDefault(s);
    a = a.option(name, {
      type: s.type === 'list' ? 'string' : s.type,
      array: s.type === 'list' ? true : undefined,
      choices: s.choices as string[] | undefined,
      demandOption: s.required ? true : undefined,
      describe,
      group: s.group ? `${s.group}:` : undefined,
    }) as Argv<T>;
  }
  return a;
}

/** A list option given as repeated flags and/or comma-separated values. */
export function splitList(v: unknown): string[] | undefined {
  if (v === undefined) return undefined;
  return (Array.isArray(v) ? v : [v]).flatMap((x) => String(x).split(',')).map((x) => x.trim()).filter(Boolean);
}

/** The stage config from parsed CLI arguments: every row of the table, by its flag; options not given stay undefined. */
export function configFromArgv<C>(table: OptionTable<C>, argv: Record<string, unknown>): C {
  const c: Record<string, unknown> = {};
  for (const [k, s] of Object.entries(table) as [string, OptionSpec][]) {
    if (s.apiOnly) continue;
    const v = argv[flagOf(k, s).slice(2)];
    if (v === undefined) continue;
    c[k] = s.type === 'list' ? splitList(v) : v;
  }
  return c as C;
}
