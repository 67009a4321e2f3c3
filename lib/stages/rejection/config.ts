/**
 * Rejection sampling's options: one table made of the shared groups
 * (lib/train/options.ts: run, LoRA, optimizer, schedule, batches,
 * evaluation, checkpoints) plus its own rows, from which come the defaults,
 * the checks, the CLI (`rlhf-native rs`) and what a checkpoint hashes. The
 * finetuning options of each round (the LoRA shape, optimizer, schedule and
 * batch rows) have no defaults here: SFT's apply (lib/stages/sft.ts). Also
 * the stage's metrics and result types.
 */
import * as path from 'node:path';
import type { Device } from '../../info';
import type { RewardSource } from '../../reward/sources';
import { checkRewardOptions, REWARD_OPTIONS, type RewardOptions } from '../../reward/options';
import type { SftConfig, SftStepMetrics } from '../sft';
import { arg, checks, CHECKPOINT_OPTIONS, describe, EVAL_OPTIONS, LORA_OPTIONS, resolveOptions, RUN_OPTIONS, withDefaults, type CheckpointOptions, type OptionTable, type Resolved } from '../../train/options';
import { gatherSftOptions, SAMPLED_SFT_KEYS, sftOptionRows, sftRunConfig, type SampledSftOptions } from '../self-training/sft-options';
import type { StageHooks } from '../../train/stage';

/** SFT options applied to each round's finetuning (lib/stages/sft.ts documents each). */
export type RsSftOptions = SampledSftOptions;

/** The per-round SFT option keys, as RS_OPTIONS rows at the top of the config (the same as the keys of `sft`). */
export const RS_SFT_KEYS = SAMPLED_SFT_KEYS;

/**
 * The per-round SFT options may be given at the top of the config (as on
 * the CLI: `lr`, `epochs`, `loraR` ...) or under `sft`; `sft` wins where
 * both name one. The rewards (RewardOptions, lib/reward/options.ts): reward
 * model(s), a reward module and built-in verifiable rewards in any mix; at
 * least one unless hooks.reward is given (then no reward model).
 */
export interface RsConfig extends RsSftOptions, CheckpointOptions, RewardOptions {
  /** Policy model folder (Hugging Face causal LM). Required. */
  model: string;
  /** Prompts, JSONL: {"prompt": "..."}, {"prompt": [messages]} or {"messages": [...]}, optional "safe": bool. Required. */
  data: string;
  /** Stage folder: rs_config.json, metrics.jsonl, round-N/, checkpoints/. Required. */
  out: string;
  /** The starting policy's PEFT LoRA adapter (round 1 continues it). Default none. */
  adapter?: string | null;
  /** Finetune every weight instead of a LoRA adapter. Default false. */
  full?: boolean;
  /** Sequences per reward-model forward. Default 8. */
  rewardBatchSize?: number;
  /** Sample / select / finetune rounds. Default 1. */
  rounds?: number;
  /** Samples per prompt (K). Default 4. */
  k?: number;
  /** Sampling temperature. Default 1.0. */
  temperature?: number;
  /** Nucleus sampling. Default 1.0 (off). */
  topP?: number;
  /** Top-k sampling; 0 is off. Default 0. */
  topK?: number;
  /** Longest response, in tokens. Default 128. */
  maxNewTokens?: number;
  /** Sequences per generate call. Default 16. */
  genBatchSize?: number;
  /** Keep a prompt's best response only when its reward is >= this. Default null (always keep). */
  minReward?: number | null;
  /** Each round trains on the best response of every prompt over all rounds so far. Default false. */
  accumulate?: boolean;
  /** Held-out prompt JSONL for the before/after evaluation. Default none (use evalFraction). */
  evalData?: string | null;
  /** Hold out this fraction of the prompts (seeded) for evaluation; 0 disables. Default 0.1 (0 with evalData). */
  evalFraction?: number;
  /** Samples per held-out prompt. Default 1. */
  evalSamples?: number;
  /** Sampling, the eval split and each round's SFT seed. Default 42. */
  seed?: number;
  /** Per-round finetuning options (SFT's defaults otherwise). */
  sft?: RsSftOptions;
  device?: Device;
  /** CPU threads; 0: RLHF_NUM_THREADS or every usable core. Default 0. */
  threads?: number;
  // From CHECKPOINT_OPTIONS: checkpointSteps (rounds between checkpoints; default 1), checkpointKeep, checkpointDir
  // (default out/checkpoints), resume (continue after the newest finished round), resumeMismatch, nanPolicy (each
  // round's SFT).
}

export type ResolvedRsConfig = Resolved<Omit<RsConfig, keyof RsSftOptions | 'sft'>> & { sft: RsSftOptions };

export const RS_DEFAULTS = {
  full: false,
  safetyThreshold: 0.15,
  rewardBatchSize: 8,
  rounds: 1,
  k: 4,
  temperature: 1.0,
  topP: 1.0,
  topK: 0,
  maxNewTokens: 128,
  genBatchSize: 16,
  accumulate: false,
  evalFraction: 0.1,
  evalSamples: 1,
  seed: 42,
  device: 'auto' as const,
};

const SFT_ROWS = sftOptionRows('Finetuning (each round)');

const RS = 'Rejection sampling';
const ROWS: OptionTable<RsConfig> = {
  ...RUN_OPTIONS,
  seed: { ...RUN_OPTIONS.seed, check: (v) => (Number.isInteger(v) && v >= 0 && v < 2 ** 31 ? null : `must be an integer in [0, 2^31), got ${v}`) },
  ...REWARD_OPTIONS,
  rewardBatchSize: { type: 'number', check: checks.posInt(), describe: 'sequences per reward-model forward', group: 'Rewards' },
  adapter: LORA_OPTIONS.adapter,
  full: LORA_OPTIONS.full,
  rounds: { type: 'number', check: checks.posInt(), describe: 'sample / select / finetune rounds', group: RS },
  k: { type: 'number', check: checks.posInt('samples per prompt'), describe: 'samples per prompt', group: RS },
  temperature: { type: 'number', check: checks.gtZero('rejection sampling needs varied samples'), describe: 'sampling temperature', group: RS },
  topP: { type: 'number', check: checks.topP(), describe: 'nucleus sampling', group: RS },
  topK: { type: 'number', check: checks.nonNegInt('0: off'), describe: 'top-k sampling; 0: off', group: RS },
  maxNewTokens: { type: 'number', check: checks.posInt(), describe: 'longest response, in tokens', group: RS },
  genBatchSize: { type: 'number', check: checks.posInt(), describe: 'sequences per generate call', group: RS },
  minReward: { type: 'number', check: checks.nullOr(checks.number()), describe: "keep a prompt's best response only when its reward is >= this", group: RS },
  accumulate: { type: 'boolean', describe: 'train each round on the best response of each prompt over all rounds so far', group: RS },
  evalData: { ...EVAL_OPTIONS.evalData, describe: 'held-out prompt JSONL for the before/after mean reward' },
  evalFraction: { ...EVAL_OPTIONS.evalFraction, describe: 'hold out this fraction of --data instead (0: no evaluation)' },
  evalSamples: { type: 'number', check: checks.posInt(), describe: 'samples per held-out prompt', group: 'Evaluation' },
  ...SFT_ROWS,
  // An object: API and recipe files only (OptionSpec has no object type yet; isStageConfig compares typeof).
  sft: { type: 'object', apiOnly: true, describe: 'per-round SFT options (the same as the top-level ones; these win)', group: 'Finetuning (each round)' },
  ...CHECKPOINT_OPTIONS,
};

/** Every option of the rejection-sampling stage. */
export const RS_OPTIONS: OptionTable<RsConfig> = withDefaults(
  describe(ROWS, {
    model: 'policy model folder (Hugging Face causal LM)',
    data: 'prompt JSONL: {"prompt"} or {"messages"} per line, optional "safe": true|false',
    out: 'stage folder: rs_config.json, metrics.jsonl, round-N/ (samples, SFT data, policy), checkpoints/',
    adapter: 'the starting policy PEFT LoRA adapter (round 1 continues it)',
    full: 'finetune every weight instead of a LoRA adapter',
    seed: "sampling, the eval split and each round's SFT (seed + round)",
    warmupSteps: 'linear warmup steps',
    checkpointSteps: 'a resumable checkpoint every N rounds into OUT/checkpoints (0: only when stopped between rounds)',
    resume: 'continue after the newest finished round (a round cut short is done again)',
    nanPolicy: "each round's SFT: a step whose loss or gradient is NaN/infinite stops the run, or is skipped",
  }),
  { ...RS_DEFAULTS, checkpointSteps: 1 },
  { evalFraction: { derive: (r) => (r.evalData ? 0 : RS_DEFAULTS.evalFraction), defaultText: `${RS_DEFAULTS.evalFraction}; 0 with --eval-data` } },
);

/** Fills in the defaults and checks every value (E_ARGUMENT naming the flag). */
export function resolveRsConfig(cfg: RsConfig, opts: { rewardSource?: boolean } = {}): ResolvedRsConfig {
  for (const k of ['model', 'data', 'out'] as const) arg(typeof cfg[k] === 'string' && cfg[k].length > 0, `--${k} is required`);
  if (opts.rewardSource) arg((cfg.rewardModel ?? null) === null && (cfg.safetyModel ?? null) === null, '--reward-model / --safety-model cannot be given together with a reward source (hooks.reward)');
  const r = gatherSftOptions(resolveOptions(RS_OPTIONS, cfg) as Record<string, unknown>, cfg.sft) as unknown as ResolvedRsConfig;
  checkRewardOptions(r, opts.rewardSource === true);
  arg(!(r.full && r.adapter), '--adapter and --full cannot be combined (full training trains the base weights; merge the adapter first)');
  const outAbs = path.resolve(r.out);
  arg(outAbs !== path.resolve(r.model), '--out must differ from --model (the policy model folder is never overwritten)');
  arg(!r.adapter || outAbs !== path.resolve(r.adapter), '--out must differ from --adapter');
  // The per-round SFT options, checked now (with SFT's own flag names) rather than after the first round's sampling.
  sftRoundConfig(r, 1, r.model, r.adapter, 'data.jsonl', path.join(r.out, 'round-1'));
  return r;
}

/** The SFT config of one round (seeded seed + round): LoRA shape options only when the adapter is created (round 1 without --adapter). */
export function sftRoundConfig(cfg: ResolvedRsConfig, round: number, model: string, adapter: string | null, data: string, out: string): SftConfig {
  return sftRunConfig(cfg, cfg.seed + round, model, adapter, data, out);
}

/** One line of metrics.jsonl. */
export type RsMetrics =
  | {
      phase: 'eval';
      /** 0: before round 1; N: after round N. */
      round: number;
      mean_reward: number;
      prompts: number;
      samples: number;
      mean_response_tokens: number;
      /** Mean raw score of each part of the reward source. */
      parts: Record<string, number>;
      seconds: number;
    }
  | {
      phase: 'sample';
      round: number;
      prompts: number;
      samples: number;
      /** Mean reward of every sample. */
      mean_reward: number;
      /** Mean reward of each prompt's best sample. */
      mean_best_reward: number;
      max_reward: number;
      min_reward: number;
      /** Prompts whose best sample was kept (>= minReward). */
      kept: number;
      /** Rows of this round's SFT data (more than `kept` with accumulate). */
      sft_rows: number;
      mean_response_tokens: number;
      /** Fraction of samples that ended with an EOS token (the rest hit maxNewTokens). */
      eos_fraction: number;
      samples_per_sec: number;
      generate_s: number;
      score_s: number;
      parts: Record<string, number>;
    }
  | ({ phase: 'sft'; round: number } & SftStepMetrics)
  | {
      phase: 'round';
      round: number;
      sft_steps: number;
      sft_initial_loss: number | null;
      sft_final_loss: number | null;
      seconds: number;
    };

export interface RsHooks extends Omit<StageHooks<RsMetrics>, 'keepModel'> {
  /** A reward source in place of --reward-model (e.g. functionReward), mixed with the module and built-ins. The caller disposes it. */
  reward?: RewardSource;
  /** Called with every metrics.jsonl record (as onStep is). */
  onMetrics?: (m: RsMetrics) => void;
}

export interface RsRoundSummary {
  round: number;
  meanReward: number;
  meanBestReward: number;
  maxReward: number;
  kept: number;
  sftRows: number;
  sftSteps: number;
  sftFinalLoss: number | null;
  samplesPerSec: number;
}

export interface RsResult {
  out: string;
  /** Rounds completed (sampled and finetuned). */
  rounds: number;
  interrupted: boolean;
  /** The signal that stopped the run (SIGINT, SIGTERM), or null. */
  signal: NodeJS.Signals | null;
  /** The round a resumed run continued after, or null. */
  resumedFrom: number | null;
  /** Held-out mean reward of the starting policy (null without an eval set). */
  initialReward: number | null;
  /** Held-out mean reward after the last round (null without an eval set, or when interrupted). */
  finalReward: number | null;
  trainPrompts: number;
  evalPrompts: number;
  roundStats: RsRoundSummary[];
  /** The final policy: the base folder plus an adapter, or a full model folder (adapter null). */
  policy: { model: string; adapter: string | null };
  metricsFile: string;
  seconds: number;
  config: ResolvedRsConfig;
}
