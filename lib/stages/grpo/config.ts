/**
 * The GRPO family's options (`rlhf-native grpo`): GRPO, Dr. GRPO and DAPO's
 * options, RLOO (`--estimator rloo`) and REINFORCE++ (`--estimator
 * reinforce_pp`). One table of the shared groups (lib/train/options.ts) plus
 * the family's own rows; defaults follow TRL 1.13's GRPOConfig where it has
 * the option (docs/grpo.md lists each default and its source). Also the
 * stage's result types.
 */
import type { Model } from '../../engine/model';
import type { Trainer } from '../../engine/train';
import type { RewardSource } from '../../reward/sources';
import { checkRewardOptions, REWARD_OPTIONS, type RewardOptions } from '../../reward/options';
import type { Device } from '../../info';
import type { LrScheduleKind } from '../schedule';
import type { NanPolicy } from '../numerics';
import type { RewardScale } from '../../grpo/advantages';
import {
  arg,
  checks,
  checkOutDiffers,
  CHECKPOINT_OPTIONS,
  describe,
  EVAL_OPTIONS,
  LORA_OPTIONS,
  OPTIMIZER_OPTIONS,
  resolveOptions,
  RUN_OPTIONS,
  SCHEDULE_OPTIONS,
  withDefaults,
  type CheckpointOptions,
  type OptionTable,
  type Resolved,
} from '../../train/options';
import type { StageHooks } from '../../train/stage';

export const ESTIMATORS = ['grpo', 'rloo', 'reinforce_pp'] as const;
export type Estimator = (typeof ESTIMATORS)[number];
/** How the token losses of a minibatch are averaged (TRL's loss_type). */
export const LOSS_TYPES = ['dapo', 'bnpo', 'grpo', 'dr_grpo'] as const;
export type LossType = (typeof LOSS_TYPES)[number];

export interface GrpoConfig extends CheckpointOptions, RewardOptions {
  /** Base model folder (the SFT model, causal LM). Required. */
  model: string;
  /** Prompts, JSONL: {prompt}, {prompt: [messages]} or {messages}; other fields reach the reward functions. Required. */
  data: string;
  /** Output folder: the policy adapter (PEFT), metrics.jsonl, grpo_config.json, checkpoints/. Required. */
  out: string;
  /** 'grpo' (group-normalised), 'rloo' (leave-one-out baseline, sequence-level ratio) or 'reinforce_pp'. Default 'grpo'. */
  estimator?: Estimator;
  /** Samples per prompt (G). Default 8 (TRL num_generations). */
  numGenerations?: number;
  /** Iterations (sample + update); 0: one pass over the prompts. Default 0. */
  iterations?: number;
  /** Prompts per iteration (each sampled numGenerations times). Default 8. */
  batchSize?: number;
  /** Samples per optimizer step; 0: the whole batch. Default 0. */
  miniBatchSize?: number;
  /** Samples per training forward. Default: miniBatchSize (or the batch). */
  microBatchSize?: number;
  /** Samples per generate call and inference forward. Default 16. */
  forwardBatchSize?: number;
  /** Passes over each batch (TRL num_iterations, the paper's mu). Default 1. */
  numIterations?: number;
  /** Response budget in tokens. Default 64. */
  maxNewTokens?: number;
  /** Default 1.0 (TRL). */
  temperature?: number;
  topK?: number;
  topP?: number;
  /** Ratio clip below: 1 - epsilon. Default 0.2. */
  epsilon?: number;
  /** Ratio clip above: 1 + epsilonHigh (DAPO's clip-higher: 0.28). Default: epsilon. */
  epsilonHigh?: number;
  /** KL coefficient (k3 in the loss for grpo; in the rewards for rloo and reinforce_pp). Default 0 (TRL). */
  beta?: number;
  /** GRPO: the KL term times the probability ratio (TRL's use_bias_correction_kl, DeepSeek-V3.2). Default true (TRL 1.13). */
  klBiasCorrection?: boolean;
  /** GRPO: divide by the group's std ('group'), the batch's ('batch') or not at all ('none': Dr. GRPO). Default 'group'. */
  scaleRewards?: RewardScale;
  /** Averaging of the token losses. Default 'dapo' (TRL). */
  lossType?: LossType;
  /** RLOO: whiten the advantages over the batch. Default false (TRL). */
  normalizeAdvantages?: boolean;
  /** Drop groups whose rewards are all equal before the update (DAPO's dynamic sampling, without refilling). Default false. */
  dropZeroVariance?: boolean;
  /** Use the log-probs recorded while sampling as the old policy's (no extra forward). Default true. */
  rolloutLogprobs?: boolean;
  adapter?: string | null;
  loraR?: number;
  loraAlpha?: number;
  loraTargets?: readonly string[] | 'all-linear';
  rslora?: boolean;
  lr?: number;
  adamBeta1?: number;
  adamBeta2?: number;
  adamEpsilon?: number;
  weightDecay?: number;
  maxGradNorm?: number;
  lrSchedule?: LrScheduleKind;
  warmupSteps?: number;
  /** Warmup as a fraction of the optimizer steps (used when warmupSteps is 0). Default 0. */
  warmupRatio?: number;
  seed?: number;
  /** Held-out prompts: mean reward of one sample each, before and after training. */
  evalData?: string | null;
  device?: Device;
  threads?: number;
}

export type ResolvedGrpoConfig = Resolved<Omit<GrpoConfig, 'loraTargets'>> & { loraTargets: string[] | 'all-linear' };

export const GRPO_DEFAULTS = {
  estimator: 'grpo' as Estimator,
  numGenerations: 8,
  iterations: 0,
  batchSize: 8,
  miniBatchSize: 0,
  forwardBatchSize: 16,
  numIterations: 1,
  maxNewTokens: 64,
  temperature: 1,
  topK: 0,
  topP: 1,
  epsilon: 0.2,
  beta: 0,
  klBiasCorrection: true,
  scaleRewards: 'group' as RewardScale,
  lossType: 'dapo' as LossType,
  normalizeAdvantages: false,
  dropZeroVariance: false,
  rolloutLogprobs: true,
  loraR: 16,
  loraAlpha: 32,
  loraTargets: 'all-linear' as const,
  rslora: false,
  lr: 1e-5,
  maxGradNorm: 1,
  lrSchedule: 'linear' as const,
  warmupSteps: 0,
  warmupRatio: 0,
  seed: 42,
  nanPolicy: 'stop' as NanPolicy,
  device: 'auto' as const,
};

const G = 'GRPO';
const { model, data, out, seed, device, threads } = RUN_OPTIONS;
const { adapter, loraR, loraAlpha, loraTargets, rslora } = LORA_OPTIONS;
const { lr, adamBeta1, adamBeta2, adamEpsilon, weightDecay, maxGradNorm } = OPTIMIZER_OPTIONS;
const { lrSchedule, warmupSteps, warmupRatio } = SCHEDULE_OPTIONS;
const batchOf = (r: Record<string, number>) => r.batchSize * r.numGenerations;

const ROWS: OptionTable<GrpoConfig> = {
  model,
  data,
  out,
  ...REWARD_OPTIONS,
  estimator: { type: 'string', choices: ESTIMATORS, describe: 'advantages: grpo (group-normalised), rloo (leave-one-out), reinforce_pp (REINFORCE++)', group: G },
  numGenerations: { type: 'number', check: checks.intAtLeast(2)(), describe: 'samples per prompt (G)', group: G },
  iterations: { type: 'number', check: checks.nonNegInt('0: one pass over the prompts'), describe: 'iterations (sample + update); 0: one pass over the prompts', group: G },
  batchSize: { type: 'number', check: checks.posInt(), describe: 'prompts per iteration (each sampled --num-generations times)', group: G },
  miniBatchSize: {
    type: 'number',
    check: (v, r) => (Number.isInteger(v) && v >= 0 && v <= batchOf(r) ? null : `must be an integer in [0, ${batchOf(r)}] (0: the whole batch of --batch-size x --num-generations samples), got ${v}`),
    describe: 'samples per optimizer step; 0: the whole batch',
    group: G,
  },
  microBatchSize: {
    type: 'number',
    derive: (r) => r.miniBatchSize || batchOf(r),
    defaultText: '--mini-batch-size',
    check: (v, r) => (Number.isInteger(v) && v > 0 && v <= (r.miniBatchSize || batchOf(r)) ? null : `must be a positive integer <= the samples of an optimizer step (${r.miniBatchSize || batchOf(r)}), got ${v}`),
    describe: 'samples per training forward',
    group: G,
  },
  forwardBatchSize: { type: 'number', check: checks.posInt(), describe: 'samples per generate call and inference forward', group: G },
  numIterations: { type: 'number', check: checks.posInt(), describe: 'passes over each batch (the inner updates, mu)', group: G },
  maxNewTokens: { type: 'number', check: checks.posInt(), describe: 'response budget', group: 'Sampling' },
  temperature: { type: 'number', check: checks.gtZero('the method samples from the policy'), describe: 'sampling temperature (log-probs are of the same tempered distribution)', group: 'Sampling' },
  topK: { type: 'number', check: checks.nonNegInt('0: off'), describe: 'top-k sampling; 0: off', group: 'Sampling' },
  topP: { type: 'number', check: checks.topP(), describe: 'nucleus sampling', group: 'Sampling' },
  epsilon: { type: 'number', check: checks.openUnit(), describe: 'ratio clip: 1 - epsilon below', group: G },
  epsilonHigh: { type: 'number', derive: (r) => r.epsilon, defaultText: '--epsilon', check: checks.gtZero(), describe: "ratio clip above: 1 + epsilon-high (DAPO's clip-higher: 0.28)", group: G },
  beta: { type: 'number', check: checks.nonNeg('0: no reference model'), describe: 'KL coefficient (grpo: k3 in the loss; rloo, reinforce_pp: in the rewards)', group: 'KL' },
  klBiasCorrection: { type: 'boolean', describe: "grpo: the KL term times the probability ratio (TRL's use_bias_correction_kl)", group: 'KL' },
  scaleRewards: { type: 'string', choices: ['group', 'batch', 'none'], describe: "grpo: divide by the group's reward std, the batch's, or not (none: Dr. GRPO)", group: G },
  lossType: { type: 'string', choices: LOSS_TYPES, describe: 'token-loss averaging: dapo/bnpo (per token), grpo (per sequence), dr_grpo (a constant)', group: G },
  normalizeAdvantages: { type: 'boolean', describe: 'rloo: whiten the advantages over the batch', group: G },
  dropZeroVariance: { type: 'boolean', describe: "drop groups whose rewards are all equal (DAPO's dynamic sampling, no refill)", group: G },
  rolloutLogprobs: { type: 'boolean', describe: "the sampler's log-probs are the old policy's (no extra forward)", group: G },
  adapter,
  loraR,
  loraAlpha,
  loraTargets,
  rslora,
  lr,
  adamBeta1,
  adamBeta2,
  adamEpsilon,
  weightDecay,
  maxGradNorm,
  lrSchedule,
  warmupSteps,
  warmupRatio,
  seed,
  evalData: { ...EVAL_OPTIONS.evalData, describe: 'held-out prompts: mean reward before and after training' },
  device,
  threads,
  ...CHECKPOINT_OPTIONS,
};

/** Every option of the GRPO stage. */
export const GRPO_OPTIONS: OptionTable<GrpoConfig> = withDefaults(
  describe(ROWS, {
    model: 'base model folder (the SFT model, causal LM)',
    data: 'prompts, JSONL: {prompt}, {prompt: [messages]} or {messages}; other fields reach the reward functions',
    out: 'output folder: policy adapter (PEFT), metrics.jsonl, grpo_config.json, checkpoints/',
    adapter: 'continue this PEFT LoRA adapter as the policy',
    lr: 'policy learning rate',
    checkpointSteps: 'a resumable checkpoint every N iterations into OUT/checkpoints (0: only when stopped)',
    nanPolicy: 'a minibatch update whose loss or gradient is NaN/infinite: stop the run, or skip the update',
  }),
  GRPO_DEFAULTS,
);

/** Fills in the defaults and checks every value (E_ARGUMENT naming the option). */
export function resolveGrpoConfig(cfg: GrpoConfig, opts: { rewardSource?: boolean } = {}): ResolvedGrpoConfig {
  for (const k of ['model', 'data', 'out'] as const) arg(typeof cfg[k] === 'string' && cfg[k].length > 0, `--${k} is required`);
  const r = resolveOptions(GRPO_OPTIONS, cfg) as ResolvedGrpoConfig;
  arg(r.estimator !== 'rloo' || cfg.lossType === undefined, '--loss-type applies to the token-level estimators (grpo, reinforce_pp); rloo averages over sequences');
  arg(r.estimator === 'grpo' || cfg.scaleRewards === undefined, '--scale-rewards applies to --estimator grpo');
  arg(r.estimator === 'rloo' || !r.normalizeAdvantages, '--normalize-advantages applies to --estimator rloo');
  checkRewardOptions(r, opts.rewardSource === true);
  checkOutDiffers(r.out, { '--model': r.model, '--reward-model': r.rewardModel, '--safety-model': r.safetyModel, '--adapter': r.adapter });
  return r;
}

/** One line of metrics.jsonl (one iteration). */
export interface GrpoStepMetrics {
  step: number;
  /** Mean reward of the batch's samples. */
  reward: number;
  [part: `reward/${string}`]: number;
  /** Mean over groups of the unbiased std of their rewards. */
  reward_std: number;
  /** Fraction of groups whose rewards were all equal. */
  frac_reward_zero_std: number;
  /** Samples trained on (after dropped groups). */
  samples: number;
  /** Mean per-token k3 KL of the policy against the reference during the update (0 with beta 0). */
  kl: number;
  entropy: number;
  pg_loss: number;
  clipfrac: number;
  ratio: number;
  approxkl: number;
  response_length: number;
  eos_fraction: number;
  lr: number;
  grad_norm: number;
  tokens_per_sec: number;
  gen_tokens_per_sec: number;
  update_tokens_per_sec: number;
  elapsed_s: number;
}

export interface GrpoHooks extends Omit<StageHooks<GrpoStepMetrics>, 'onStep'> {
  /** Scores the samples in place of the config's reward models, mixed with the module and built-ins (the caller keeps and disposes it). */
  reward?: RewardSource;
  onStep?: (m: GrpoStepMetrics, info: { totalSteps: number }) => void;
}

export interface GrpoEvalResult {
  /** Mean reward of one sampled response per held-out prompt. */
  reward: number;
  parts: Record<string, number>;
  responseLength: number;
}

export interface GrpoResult {
  out: string;
  steps: number;
  totalSteps: number;
  optimizerSteps: number;
  interrupted: boolean;
  signal: NodeJS.Signals | null;
  resumedFrom: number | null;
  skippedUpdates: number;
  initialReward: number | null;
  finalReward: number | null;
  eval: { before: GrpoEvalResult; after: GrpoEvalResult } | null;
  prompts: number;
  trainableParameters: number;
  seconds: number;
  metricsFile: string;
  config: ResolvedGrpoConfig;
  model?: Model;
  trainer?: Trainer;
}
