/**
 * The finetuning options of a stage that runs SFT on its own samples
 * (rejection sampling's rounds, ReST's Improve steps): the SFT rows it
 * offers (at the top of its config, as on the CLI, or under `sft`, which
 * wins), without defaults of its own (SFT's apply), and the SFT config of
 * one run, checked with SFT's own flag names.
 */
import { resolveSftConfig, type SftConfig } from '../sft';
import { arg, BATCH_OPTIONS, flagOf, LORA_OPTIONS, LORA_SHAPE_KEYS, OPTIMIZER_OPTIONS, SCHEDULE_OPTIONS, type OptionSpec, type OptionTable } from '../../train/options';
import type { Device } from '../../info';
import type { NanPolicy } from '../numerics';

/** SFT options applied to each finetuning run (lib/stages/sft.ts documents each). */
export type SampledSftOptions = Partial<
  Pick<
    SftConfig,
    | 'loraR'
    | 'loraAlpha'
    | 'loraDropout'
    | 'loraTargets'
    | 'rslora'
    | 'optimizer'
    | 'lr'
    | 'adamBeta1'
    | 'adamBeta2'
    | 'adamEpsilon'
    | 'momentum'
    | 'weightDecay'
    | 'maxGradNorm'
    | 'lrSchedule'
    | 'warmupSteps'
    | 'steps'
    | 'epochs'
    | 'batchSize'
    | 'gradAccum'
    | 'maxLen'
    | 'shuffle'
  >
>;

/** The SFT option keys, as rows at the top of the stage's config (the same as the keys of `sft`). */
export const SAMPLED_SFT_KEYS = [
  'loraR',
  'loraAlpha',
  'loraDropout',
  'loraTargets',
  'rslora',
  'optimizer',
  'lr',
  'adamBeta1',
  'adamBeta2',
  'adamEpsilon',
  'momentum',
  'weightDecay',
  'maxGradNorm',
  'lrSchedule',
  'warmupSteps',
  'steps',
  'epochs',
  'batchSize',
  'gradAccum',
  'maxLen',
  'shuffle',
] as const satisfies readonly (keyof SampledSftOptions)[];

/** The SFT rows under help section `group`: SFT's check and flag, no default here (SFT's applies). */
export function sftOptionRows(group: string): OptionTable<SampledSftOptions> {
  const shared = { ...LORA_OPTIONS, ...OPTIMIZER_OPTIONS, ...SCHEDULE_OPTIONS, ...BATCH_OPTIONS } as Record<string, OptionSpec>;
  return Object.fromEntries(SAMPLED_SFT_KEYS.map((k) => [k, { ...shared[k], default: undefined, derive: undefined, defaultText: "SFT's", group }])) as OptionTable<SampledSftOptions>;
}

/** Moves the SFT keys of a resolved config into its `sft` section (`given`, the config's own `sft`, wins). */
export function gatherSftOptions<R extends Record<string, unknown>>(all: R, given: SampledSftOptions | undefined): Omit<R, (typeof SAMPLED_SFT_KEYS)[number]> & { sft: SampledSftOptions } {
  const sft: Record<string, unknown> = {};
  const rest: Record<string, unknown> = { ...all };
  for (const k of SAMPLED_SFT_KEYS) {
    if (rest[k] !== null && rest[k] !== undefined) sft[k] = rest[k];
    delete rest[k];
  }
  return { ...rest, sft: { ...sft, ...(given ?? {}) } } as Omit<R, (typeof SAMPLED_SFT_KEYS)[number]> & { sft: SampledSftOptions };
}

/** What one finetuning run takes from the stage's resolved config. */
export interface SampledSftBase {
  sft: SampledSftOptions;
  full: boolean;
  /** The starting policy's adapter (--adapter). */
  adapter: string | null;
  nanPolicy: NanPolicy;
  device: Device;
}

/**
 * The SFT config of one run from `model` (+ `adapter`, continued; null: a
 * new adapter, or with `full` every weight) on `data` into `out`. LoRA shape
 * options apply only when the run creates the adapter.
 */
export function sftRunConfig(cfg: SampledSftBase, seed: number, model: string, adapter: string | null, data: string, out: string): SftConfig {
  const sft: SampledSftOptions = { ...cfg.sft };
  if (cfg.full || adapter) for (const k of LORA_SHAPE_KEYS) delete sft[k];
  const given = LORA_SHAPE_KEYS.filter((k) => cfg.sft[k] !== undefined).map((k) => flagOf(k));
  arg(!cfg.full || given.length === 0, `LoRA options do not apply with --full: ${given.join(', ')}`);
  arg(!cfg.adapter || given.length === 0, `${given.join(', ')} cannot be given with --adapter: r, alpha and targets come from the adapter's adapter_config.json`);
  const c: SftConfig = { ...sft, model, data, out, adapter, full: cfg.full, seed: seed % 2 ** 31, nanPolicy: cfg.nanPolicy, device: cfg.device };
  resolveSftConfig(c);
  return c;
}
