/**
 * ReST's options (`rlhf-native rest`): one table made of the shared groups
 * (lib/train/options.ts), the reward rows (./reward.ts), the finetuning
 * rows of each Improve step (SFT's, without defaults of their own:
 * lib/stages/self-training/sft-options.ts) and its own rows, several of
 * whose defaults depend on the variant (ReST or ReST-EM). Also the stage's
 * metrics and result types.
 */
import * as path from 'node:path';
import type { Device } from '../../info';
import type { RewardSource } from '../../reward/sources';
import type { SftStepMetrics } from '../sft';
import type { SampleFigures } from '../self-training/sampling';
import { gatherSftOptions, sftOptionRows, sftRunConfig, type SampledSftOptions } from '../self-training/sft-options';
import { arg, checks, CHECKPOINT_OPTIONS, describe, EVAL_OPTIONS, LORA_OPTIONS, resolveOptions, RUN_OPTIONS, withDefaults, type Check, type CheckpointOptions, type OptionTable, type Resolved } from '../../train/options';
import type { StageHooks } from '../../train/stage';
import { checkRewardGiven, checkRewardResolved, REST_REWARD_OPTIONS, type RestRewardOptions } from './reward';

export type RestSftOptions = SampledSftOptions;
export type RestVariant = 'rest' | 'em';

/**
 * The finetuning options of the Improve steps may be given at the top of the
 * config (as on the CLI: `lr`, `epochs`, `loraR` ...) or under `sft`,
 * which wins where both name one.
 */
export interface RestConfig extends RestSftOptions, RestRewardOptions, CheckpointOptions {
  /** Policy model folder (Hugging Face causal LM): the starting policy, and ReST-EM's base. Required. */
  model: string;
  /** Prompts, JSONL: {"prompt": "..."}, {"prompt": [messages]} or {"messages": [...]}, optional "safe": bool. Required. */
  data: string;
  /** Stage folder: rest_config.json, metrics.jsonl, grow-G/, checkpoints/. Required. */
  out: string;
  /** The starting policy's PEFT LoRA adapter (ReST's first Improve step continues it; ReST-EM continues it in every iteration). Default none. */
  adapter?: string | null;
  /** Finetune every weight instead of a LoRA adapter. Default false. */
  full?: boolean;
  /** 'rest' (Gulcehre et al. 2023) or 'em' (ReST-EM, Singh et al. 2023). Default 'rest'. */
  variant?: RestVariant;
  /** Grow steps (iterations). Default 1 (rest), 3 (em). */
  growSteps?: number;
  /** Samples per prompt in a Grow step (N). Default 8 (rest), 32 (em). */
  samplesPerPrompt?: number;
  /** Fixed rising reward thresholds, one Improve step each (em: one value). Default none. */
  thresholds?: readonly number[] | null;
  /** Rising quantiles of each Grow set's rewards as the thresholds (rest only). Default [0.5, 0.7, 0.9] without thresholds. */
  quantiles?: readonly number[] | null;
  /** At most this many kept samples per prompt in an Improve step (highest reward first); 0: no cap. Default 0 (rest), 10 (em). */
  maxPerPrompt?: number;
  /** Sampling temperature. Default 1.0 (rest), 0.7 (em). */
  temperature?: number;
  /** Nucleus sampling. Default 1.0 (off). */
  topP?: number;
  /** Top-k sampling; 0 is off. Default 0 (rest), 40 (em). */
  topK?: number;
  /** Longest response, in tokens. Default 128. */
  maxNewTokens?: number;
  /** Sequences per generate call. Default 16. */
  genBatchSize?: number;
  /** Held-out prompt JSONL for the before/after evaluation. Default none (use evalFraction). */
  evalData?: string | null;
  /** Hold out this fraction of the prompts (seeded) for evaluation; 0 disables. Default 0.1 (0 with evalData). */
  evalFraction?: number;
  /** Samples per held-out prompt. Default 1. */
  evalSamples?: number;
  /** Sampling, the eval split and each Improve step's SFT seed. Default 42. */
  seed?: number;
  /** The Improve steps' finetuning options (SFT's defaults otherwise). */
  sft?: RestSftOptions;
  device?: Device;
  /** CPU threads; 0: RLHF_NUM_THREADS or every usable core. Default 0. */
  threads?: number;
  // From CHECKPOINT_OPTIONS: checkpointSteps (Grow steps between checkpoints; default 1), checkpointKeep,
  // checkpointDir, resume (continue after the newest finished Grow step), resumeMismatch, nanPolicy (each SFT run).
}

export type ResolvedRestConfig = Resolved<Omit<RestConfig, keyof RestSftOptions | 'sft' | 'thresholds' | 'quantiles'>> & {
  sft: RestSftOptions;
  thresholds: number[] | null;
  quantiles: number[] | null;
};

/** The defaults of each variant (docs/rest.md gives the source of each). */
export const REST_VARIANT_DEFAULTS = {
  rest: { growSteps: 1, samplesPerPrompt: 8, quantiles: [0.5, 0.7, 0.9], maxPerPrompt: 0, temperature: 1.0, topK: 0 },
  em: { growSteps: 3, samplesPerPrompt: 32, quantiles: null, maxPerPrompt: 10, temperature: 0.7, topK: 40 },
} as const;

export const REST_DEFAULTS = {
  variant: 'rest' as const,
  full: false,
  topP: 1.0,
  maxNewTokens: 128,
  genBatchSize: 16,
  evalFraction: 0.1,
  evalSamples: 1,
  seed: 42,
  device: 'auto' as const,
};

/** A list given as numbers (API, recipe files) or as strings (the CLI's comma-separated values). */
const numberList = (v: unknown) => (Array.isArray(v) ? v : [v]).map((x) => (typeof x === 'string' && x.trim() !== '' && Number.isFinite(Number(x)) ? Number(x) : x));
const risingNumbers =
  (inRange: (x: number) => boolean, what: string): Check =>
  (v: unknown[]) => {
    if (!v.length || !v.every((x) => typeof x === 'number' && Number.isFinite(x) && inRange(x))) return `must be ${what}, comma-separated, got ${v.join(',')}`;
    for (let i = 1; i < v.length; i++) if ((v[i] as number) <= (v[i - 1] as number)) return `must rise (each value above the one before), got ${v.join(',')}`;
    return null;
  };
const byVariant = <K extends keyof (typeof REST_VARIANT_DEFAULTS)['rest']>(k: K) => ({
  derive: (r: Record<string, unknown>) => REST_VARIANT_DEFAULTS[r.variant === 'em' ? 'em' : 'rest'][k],
  defaultText: `${String(REST_VARIANT_DEFAULTS.rest[k])} (rest), ${String(REST_VARIANT_DEFAULTS.em[k])} (em)`,
});

const G = 'ReST';
const ROWS: OptionTable<RestConfig> = {
  ...RUN_OPTIONS,
  seed: { ...RUN_OPTIONS.seed, check: (v) => (Number.isInteger(v) && v >= 0 && v < 2 ** 31 ? null : `must be an integer in [0, 2^31), got ${v}`) },
  // The reward options: one block (./reward.ts).
  ...REST_REWARD_OPTIONS,
  adapter: LORA_OPTIONS.adapter,
  full: LORA_OPTIONS.full,
  variant: { type: 'string', choices: ['rest', 'em'], describe: 'rest: rising thresholds, each Improve step continues the policy; em: ReST-EM, a binary filter, each iteration finetunes the base', group: G },
  growSteps: { type: 'number', ...byVariant('growSteps'), check: checks.posInt(), describe: 'Grow steps (sample and score), each followed by its Improve steps', group: G },
  samplesPerPrompt: { type: 'number', ...byVariant('samplesPerPrompt'), check: checks.posInt(), describe: 'samples per prompt in a Grow step (N)', group: G },
  thresholds: {
    type: 'list',
    coerce: numberList,
    check: (v, r) => risingNumbers(() => true, 'numbers')(v, r) ?? (r.variant === 'em' && v.length > 1 ? `takes one value with --variant em (a binary filter), got ${v.join(',')}` : null),
    describe: 'fixed rising reward thresholds, one Improve step each (em: one; a sample counts when its reward is >= it)',
    group: G,
  },
  quantiles: {
    type: 'list',
    coerce: numberList,
    derive: (r) => (r.thresholds || r.variant === 'em' ? null : [...REST_VARIANT_DEFAULTS.rest.quantiles]),
    defaultText: '0.5,0.7,0.9 (rest, without --thresholds)',
    check: (v, r) =>
      r.thresholds
        ? 'cannot be combined with --thresholds'
        : r.variant === 'em'
          ? 'does not apply to --variant em (its filter is binary: reward > 0, or >= --thresholds)'
          : risingNumbers((x) => x >= 0 && x < 1, 'numbers in [0, 1)')(v, r),
    describe: "rising quantiles of each Grow set's rewards as the thresholds (rest)",
    group: G,
  },
  maxPerPrompt: { type: 'number', ...byVariant('maxPerPrompt'), check: checks.nonNegInt('0: no cap'), describe: 'at most this many kept samples per prompt in an Improve step (highest reward first); 0: no cap', group: G },
  temperature: { type: 'number', ...byVariant('temperature'), check: checks.gtZero('ReST needs varied samples'), describe: 'sampling temperature', group: G },
  topP: { type: 'number', check: checks.topP(), describe: 'nucleus sampling', group: G },
  topK: { type: 'number', ...byVariant('topK'), check: checks.nonNegInt('0: off'), describe: 'top-k sampling; 0: off', group: G },
  maxNewTokens: { type: 'number', check: checks.posInt(), describe: 'longest response, in tokens', group: G },
  genBatchSize: { type: 'number', check: checks.posInt(), describe: 'sequences per generate call', group: G },
  evalData: { ...EVAL_OPTIONS.evalData, describe: 'held-out prompt JSONL for the before/after mean reward' },
  evalFraction: { ...EVAL_OPTIONS.evalFraction, describe: 'hold out this fraction of --data instead (0: no evaluation)' },
  evalSamples: { type: 'number', check: checks.posInt(), describe: 'samples per held-out prompt', group: 'Evaluation' },
  ...sftOptionRows('Finetuning (each Improve step)'),
  // An object: API and recipe files only.
  sft: { type: 'object', apiOnly: true, describe: 'the Improve steps\' SFT options (the same as the top-level ones; these win)', group: 'Finetuning (each Improve step)' },
  ...CHECKPOINT_OPTIONS,
};

/** Every option of the ReST stage. */
export const REST_OPTIONS: OptionTable<RestConfig> = withDefaults(
  describe(ROWS, {
    model: 'policy model folder (Hugging Face causal LM): the starting policy, and the base of --variant em',
    data: 'prompt JSONL: {"prompt"} or {"messages"} per line, optional "safe": true|false',
    out: 'stage folder: rest_config.json, metrics.jsonl, grow-G/ (samples; improve-I/: SFT data, policy), checkpoints/',
    adapter: "the starting policy's PEFT LoRA adapter",
    full: 'finetune every weight instead of a LoRA adapter',
    seed: "sampling, the eval split and each Improve step's SFT",
    warmupSteps: 'linear warmup steps',
    checkpointSteps: 'a resumable checkpoint every N Grow steps into OUT/checkpoints (0: only when stopped between Grow steps)',
    resume: 'continue after the newest finished Grow step (one cut short is done again)',
    nanPolicy: "each Improve step's SFT: a step whose loss or gradient is NaN/infinite stops the run, or is skipped",
  }),
  { ...REST_DEFAULTS, checkpointSteps: 1 },
  { evalFraction: { derive: (r) => (r.evalData ? 0 : REST_DEFAULTS.evalFraction), defaultText: `${REST_DEFAULTS.evalFraction}; 0 with --eval-data` } },
);

/** Fills in the defaults and checks every value (E_ARGUMENT naming the flag). */
export function resolveRestConfig(cfg: RestConfig, opts: { rewardSource?: boolean } = {}): ResolvedRestConfig {
  for (const k of ['model', 'data', 'out'] as const) arg(typeof cfg[k] === 'string' && cfg[k].length > 0, `--${k} is required`);
  checkRewardGiven(cfg, opts.rewardSource === true);
  const r = gatherSftOptions(resolveOptions(REST_OPTIONS, cfg) as Record<string, unknown>, cfg.sft) as unknown as ResolvedRestConfig;
  checkRewardResolved(r);
  arg(!(r.full && r.adapter), '--adapter and --full cannot be combined (full training trains the base weights; merge the adapter first)');
  const outAbs = path.resolve(r.out);
  arg(outAbs !== path.resolve(r.model), '--out must differ from --model (the policy model folder is never overwritten)');
  arg(!r.adapter || outAbs !== path.resolve(r.adapter), '--out must differ from --adapter');
  // The Improve steps' SFT options, checked now (with SFT's own flag names) rather than after the first Grow step.
  sftRunConfig(r, r.seed + 1, r.model, r.adapter, 'data.jsonl', path.join(r.out, 'grow-1', 'improve-1'));
  return r;
}

/** The Improve steps of each Grow step: the count of thresholds or quantiles (ReST-EM: one). */
export const improveSteps = (cfg: ResolvedRestConfig) => cfg.thresholds?.length ?? cfg.quantiles?.length ?? 1;

/** One line of metrics.jsonl. */
export type RestMetrics =
  | {
      phase: 'eval';
      /** 0: before Grow step 1; G: after Grow step G. */
      grow: number;
      mean_reward: number;
      prompts: number;
      samples: number;
      mean_response_tokens: number;
      parts: Record<string, number>;
      seconds: number;
    }
  | ({
      phase: 'grow';
      grow: number;
      prompts: number;
      samples: number;
      /** The Improve steps' thresholds, rising. */
      thresholds: number[];
    } & SampleFigures)
  | ({ phase: 'sft'; grow: number; improve: number } & SftStepMetrics)
  | {
      phase: 'improve';
      grow: number;
      improve: number;
      threshold: number;
      /** true: kept reward > threshold (ReST-EM's default filter); false: >= threshold. */
      strict: boolean;
      /** Samples trained on. */
      kept: number;
      /** Prompts with at least one kept sample. */
      prompts_kept: number;
      /** Samples that passed the threshold but not the --max-per-prompt cap. */
      capped: number;
      /** Mean reward of the kept samples (null: none kept). */
      mean_kept_reward: number | null;
      sft_steps: number;
      sft_initial_loss: number | null;
      sft_final_loss: number | null;
      seconds: number;
    }
  | {
      phase: 'iteration';
      grow: number;
      improve_steps: number;
      sft_steps: number;
      seconds: number;
    };

export interface RestHooks extends Omit<StageHooks<RestMetrics>, 'keepModel'> {
  /** A reward source to use instead of --reward-model (e.g. functionReward). The caller disposes it. */
  reward?: RewardSource;
  /** Called with every metrics.jsonl record (as onStep is). */
  onMetrics?: (m: RestMetrics) => void;
}

export interface RestImproveSummary {
  improve: number;
  threshold: number;
  kept: number;
  sftSteps: number;
  sftFinalLoss: number | null;
}

export interface RestGrowSummary {
  grow: number;
  /** Mean reward of the Grow step's samples. */
  meanReward: number;
  maxReward: number;
  samplesPerSec: number;
  improve: RestImproveSummary[];
}

export interface RestResult {
  out: string;
  /** Grow steps completed (sampled and improved). */
  growSteps: number;
  interrupted: boolean;
  signal: NodeJS.Signals | null;
  /** The Grow step a resumed run continued after, or null. */
  resumedFrom: number | null;
  /** Held-out mean reward of the starting policy (null without an eval set). */
  initialReward: number | null;
  /** Held-out mean reward after the last Grow step (null without an eval set, or when interrupted). */
  finalReward: number | null;
  trainPrompts: number;
  evalPrompts: number;
  growStats: RestGrowSummary[];
  /** The final policy: the base folder plus an adapter, or a full model folder (adapter null). */
  policy: { model: string; adapter: string | null };
  metricsFile: string;
  seconds: number;
  config: ResolvedRestConfig;
}
