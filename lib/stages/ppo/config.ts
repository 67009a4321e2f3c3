/**
 * PPO's options: one table made of the shared groups (lib/train/options.ts:
 * run, LoRA, optimizer, schedule, evaluation, checkpoints) plus PPO's own
 * rows, from which come the defaults, the checks, the CLI (`rlhf-native
 * ppo`) and what a checkpoint hashes. Also the stage's result types.
 */
import type { Model } from '../../engine/model';
import type { Trainer } from '../../engine/train';
import type { RewardSource } from '../../reward/sources';
import { checkRewardOptions, REWARD_OPTIONS, type RewardOptions } from '../../reward/options';
import type { RewardKlEstimator } from '../../ppo/gae';
import type { Device } from '../../info';
import type { LrScheduleKind } from '../schedule';
import type { NanPolicy } from '../numerics';
import {
  arg,
  checks,
  checkOutDiffers,
  CHECKPOINT_OPTIONS,
  describe,
  EVAL_OPTIONS,
  flagOf,
  LORA_OPTIONS,
  OPTIMIZER_OPTIONS,
  resolveOptions,
  RUN_OPTIONS,
  SCHEDULE_OPTIONS,
  BATCH_OPTIONS,
  withDefaults,
  type CheckpointOptions,
  type OptionTable,
  type Resolved,
} from '../../train/options';
import type { StageHooks } from '../../train/stage';

/**
 * The rewards (RewardOptions, lib/reward/options.ts): reward model(s), a
 * reward module and built-in verifiable rewards in any mix; at least one
 * unless hooks.reward is given. A reward model given also starts the critic
 * (unless `critic` is given), even when hooks.reward scores.
 */
export interface PpoConfig extends CheckpointOptions, RewardOptions {
  /** Base model folder (the SFT model, causal LM, Hugging Face layout). Required. */
  model: string;
  /** Prompts, JSONL: {"prompt": "..."}, {"prompt": [messages]} or {"messages": [...]}, optional "safe". Required. */
  data: string;
  /** Output folder: the policy adapter (PEFT), critic/ (adapter with value head), metrics.jsonl, ppo_config.json, checkpoints/. Required. */
  out: string;
  /** Continue this PEFT LoRA adapter as the policy instead of creating one. */
  adapter?: string | null;
  /** Start the critic from this PEFT adapter with a score head instead of from the reward model. */
  critic?: string | null;
  /** LoRA rank of new adapters (policy and critic). Default 16. */
  loraR?: number;
  /** LoRA alpha. Default 32. */
  loraAlpha?: number;
  /** PEFT module names or 'all-linear'. Default all-linear. */
  loraTargets?: readonly string[] | 'all-linear';
  rslora?: boolean;
  /** Policy learning rate. Default 1e-5 (TRL PPOConfig learning_rate). */
  lr?: number;
  /** Critic learning rate. Default: lr. */
  criticLr?: number;
  adamBeta1?: number;
  adamBeta2?: number;
  adamEpsilon?: number;
  weightDecay?: number;
  /** Global gradient-norm clipping per adapter; 0 disables. Default 1.0. */
  maxGradNorm?: number;
  /** 'constant', 'linear' or 'cosine' over all optimizer steps. Default 'linear'. */
  lrSchedule?: LrScheduleKind;
  warmupSteps?: number;
  /** Warmup as a fraction of the optimizer steps (used when warmupSteps is 0). Default 0. */
  warmupRatio?: number;
  /** PPO iterations (rollout + update); 0: one pass over the prompts. Default 0. */
  iterations?: number;
  /** Rollouts (prompts) per iteration. Default 64. */
  batchSize?: number;
  /** Rollouts per optimizer step. Default 8. */
  miniBatchSize?: number;
  /** Rollouts per training forward (gradients accumulate up to miniBatchSize). Default: miniBatchSize. */
  microBatchSize?: number;
  /** Rollouts per generate call and per inference forward. Default 16. */
  forwardBatchSize?: number;
  /** Passes over each batch. Default 4. */
  ppoEpochs?: number;
  /** Response budget in tokens. Default 53 (TRL response_length). */
  maxNewTokens?: number;
  /** Sampling temperature (> 0); log-probs are of the same tempered distribution. Default 0.7. */
  temperature?: number;
  /** 0: off. Default 0. */
  topK?: number;
  /** Default 1 (off). */
  topP?: number;
  /** PPO policy clip epsilon. Default 0.2. */
  cliprange?: number;
  /** Value clip epsilon (<= 0: unclipped). Default 0.2. */
  cliprangeValue?: number;
  /** Value loss weight. Default 0.1. */
  vfCoef?: number;
  /** Entropy bonus. Default 0. */
  entCoef?: number;
  /** Discount. Default 1. */
  gamma?: number;
  /** GAE lambda. Default 0.95. */
  lam?: number;
  /** KL penalty coefficient (initial value when adaptive). Default 0.05. */
  klCoef?: number;
  /** Target KL (nats per response) for the adaptive controller; null: fixed coefficient. Default null. */
  klTarget?: number | null;
  /** Adaptive controller horizon (rollouts). Default 10000. */
  klHorizon?: number;
  /** Per-token KL estimate in the rewards: 'k1' or 'k3'. Default 'k1'. */
  klEstimator?: RewardKlEstimator;
  /** Whiten the per-token rewards (scale only). Default false. */
  whitenRewards?: boolean;
  /** Whiten the advantages over the batch. Default true. */
  whitenAdvantages?: boolean;
  /** Subtracted from the score of a response that did not end with EOS; null: none. Default null. */
  missingEosPenalty?: number | null;
  /**
   * Use the log-probs the sampler recorded as old_logp instead of a policy
   * forward over the responses (the same kernels: equal within 1e-5, see
   * docs/ppo.md). false runs the forward. Default true.
   */
  rolloutLogprobs?: boolean;
  /** Seed of the adapters' initialisation, prompt order, sampling and shuffles. Default 42. */
  seed?: number;
  /** Held-out prompts scored (reward, KL) before training and at the end. Default none. */
  evalData?: string | null;
  /** 'auto' | 'cpu' | 'cuda' (or 'cpu-guarded' for testing). Default 'auto'. */
  device?: Device;
  /** CPU threads; 0: RLHF_NUM_THREADS or every usable core. Default 0. */
  threads?: number;
  // From CHECKPOINT_OPTIONS: checkpointSteps (iterations between checkpoints, 0: only on a stop request), checkpointKeep,
  // checkpointDir (default out/checkpoints), resume, resumeMismatch, nanPolicy (a minibatch update with a NaN/infinite
  // loss or gradient: 'stop' the run (E_NUMERIC) or 'skip' the update).
}

export type ResolvedPpoConfig = Resolved<Omit<PpoConfig, 'loraTargets'>> & { loraTargets: string[] | 'all-linear' };

export const PPO_DEFAULTS = {
  safetyThreshold: 0.15,
  loraR: 16,
  loraAlpha: 32,
  loraTargets: 'all-linear' as const,
  rslora: false,
  lr: 1e-5,
  adamBeta1: 0.9,
  adamBeta2: 0.999,
  adamEpsilon: 1e-8,
  weightDecay: 0,
  maxGradNorm: 1,
  lrSchedule: 'linear' as const,
  warmupSteps: 0,
  warmupRatio: 0,
  iterations: 0,
  batchSize: 64,
  miniBatchSize: 8,
  forwardBatchSize: 16,
  ppoEpochs: 4,
  maxNewTokens: 53,
  temperature: 0.7,
  topK: 0,
  topP: 1,
  cliprange: 0.2,
  cliprangeValue: 0.2,
  vfCoef: 0.1,
  entCoef: 0,
  gamma: 1,
  lam: 0.95,
  klCoef: 0.05,
  klTarget: null,
  klHorizon: 10000,
  klEstimator: 'k1' as const,
  whitenRewards: false,
  whitenAdvantages: true,
  missingEosPenalty: null,
  rolloutLogprobs: true,
  seed: 42,
  nanPolicy: 'stop' as NanPolicy,
  device: 'auto' as const,
};

const PPO = 'PPO';
const { model, data, out, seed, device, threads } = RUN_OPTIONS;
const { adapter, loraR, loraAlpha, loraTargets, rslora } = LORA_OPTIONS;
const { lr, adamBeta1, adamBeta2, adamEpsilon, weightDecay, maxGradNorm } = OPTIMIZER_OPTIONS;
const { lrSchedule, warmupSteps, warmupRatio } = SCHEDULE_OPTIONS;

const ROWS: OptionTable<PpoConfig> = {
  model,
  data,
  out,
  ...REWARD_OPTIONS,
  missingEosPenalty: { type: 'number', check: checks.nullOr(checks.nonNeg()), describe: 'subtracted from the score of responses without EOS (default: none)', group: 'Rewards' },
  adapter,
  critic: { type: 'string', describe: 'start the critic from this PEFT adapter with a score head (default: from the reward model)', group: 'LoRA' },
  loraR,
  loraAlpha,
  loraTargets,
  rslora,
  lr,
  criticLr: { type: 'number', derive: (r) => r.lr, defaultText: '--lr', check: checks.lrLike(), describe: 'critic learning rate', group: 'Optimizer' },
  adamBeta1,
  adamBeta2,
  adamEpsilon,
  weightDecay,
  maxGradNorm,
  lrSchedule,
  warmupSteps,
  warmupRatio,
  iterations: { type: 'number', check: checks.nonNegInt('0: one pass over the prompts'), describe: 'PPO iterations; 0: one pass over the prompts', group: PPO },
  batchSize: { ...BATCH_OPTIONS.batchSize, group: PPO },
  miniBatchSize: { type: 'number', check: checks.posInt(), describe: 'rollouts per optimizer step', group: PPO },
  microBatchSize: {
    type: 'number',
    derive: (r) => r.miniBatchSize,
    defaultText: '--mini-batch-size',
    check: (v, r) => (Number.isInteger(v) && v > 0 && v <= r.miniBatchSize ? null : `must be a positive integer <= --mini-batch-size (${r.miniBatchSize}), got ${v}`),
    describe: 'rollouts per training forward',
    group: PPO,
  },
  forwardBatchSize: { type: 'number', check: checks.posInt(), describe: 'rollouts per generate call and inference forward', group: PPO },
  ppoEpochs: { type: 'number', check: checks.posInt(), describe: 'passes over each batch', group: PPO },
  maxNewTokens: { type: 'number', check: checks.posInt(), describe: 'response budget', group: 'Sampling' },
  temperature: { type: 'number', check: checks.gtZero('PPO samples from the policy'), describe: 'sampling temperature (log-probs are of the same tempered distribution)', group: 'Sampling' },
  topK: { type: 'number', check: checks.nonNegInt('0: off'), describe: 'top-k sampling; 0: off', group: 'Sampling' },
  topP: { type: 'number', check: checks.topP(), describe: 'nucleus sampling', group: 'Sampling' },
  cliprange: { type: 'number', check: checks.gtZero(), describe: 'policy clip epsilon', group: PPO },
  cliprangeValue: { type: 'number', check: checks.number('<= 0: no value clipping'), describe: 'value clip epsilon; <= 0: no value clipping', group: PPO },
  vfCoef: { type: 'number', check: checks.gtZero(), describe: 'value loss weight', group: PPO },
  entCoef: { type: 'number', check: checks.nonNeg(), describe: 'entropy bonus', group: PPO },
  gamma: { type: 'number', check: checks.unitClosed(), describe: 'discount', group: PPO },
  lam: { type: 'number', check: checks.unitClosed(), describe: 'GAE lambda', group: PPO },
  klCoef: { type: 'number', check: checks.nonNeg(), describe: 'KL penalty coefficient (initial value with --kl-target)', group: 'KL' },
  klTarget: { type: 'number', check: checks.nullOr(checks.gtZero('or unset for a fixed coefficient')), describe: 'adaptive KL control towards this KL per response (Ziegler et al.); default: a fixed coefficient', group: 'KL' },
  klHorizon: { type: 'number', check: checks.gtZero(), describe: 'adaptive KL control horizon (rollouts)', group: 'KL' },
  klEstimator: { type: 'string', choices: ['k1', 'k3'], describe: 'per-token KL estimate in the rewards', group: 'KL' },
  whitenRewards: { type: 'boolean', describe: 'whiten the per-token rewards (scale only)', group: PPO },
  whitenAdvantages: { type: 'boolean', describe: 'whiten the advantages over the batch', group: PPO },
  rolloutLogprobs: { type: 'boolean', describe: "the sampler's log-probs are old_logp (no policy forward over the responses)", group: PPO },
  seed,
  evalData: { ...EVAL_OPTIONS.evalData, describe: 'held-out prompts: reward and KL before and after training' },
  device,
  threads,
  ...CHECKPOINT_OPTIONS,
};

/** Every option of the PPO stage. */
export const PPO_OPTIONS: OptionTable<PpoConfig> = withDefaults(
  describe(
    ROWS,
    {
      model: 'base model folder (the SFT model, causal LM)',
      data: 'prompts, JSONL: {prompt}, {prompt: [messages]} or {messages}, optional "safe"',
      out: 'output folder: policy adapter (PEFT), critic/, metrics.jsonl, ppo_config.json, checkpoints/',
      adapter: 'continue this PEFT LoRA adapter as the policy',
      loraR: 'LoRA rank of new adapters',
      lr: 'policy learning rate',
      maxGradNorm: 'gradient-norm clipping per adapter; 0 disables',
      lrSchedule: 'learning-rate schedule over all optimizer steps',
      warmupSteps: 'linear warmup steps',
      batchSize: 'rollouts per iteration',
      checkpointSteps: 'a resumable checkpoint every N iterations into OUT/checkpoints (0: only when stopped)',
      nanPolicy: 'a minibatch update whose loss or gradient is NaN/infinite: stop the run, or skip the update',
    },
  ),
  PPO_DEFAULTS,
);

/** Fills in the defaults and checks every value (E_ARGUMENT naming the option). */
export function resolvePpoConfig(cfg: PpoConfig): ResolvedPpoConfig {
  for (const k of ['model', 'data', 'out'] as const) arg(typeof cfg[k] === 'string' && cfg[k].length > 0, `--${k} is required`);
  if (cfg.adapter && cfg.critic) {
    // New adapters (the critic) still use these; only refuse them when nothing new is created.
    const given = (['loraR', 'loraAlpha', 'loraTargets', 'rslora'] as const).filter((k) => cfg[k] !== undefined);
    arg(given.length === 0, `${given.map((k) => flagOf(k)).join(', ')} cannot be given with --adapter and --critic: both adapters come from their folders`);
  }
  const r = resolveOptions(PPO_OPTIONS, cfg) as ResolvedPpoConfig;
  checkRewardOptions(r);
  arg(r.miniBatchSize <= r.batchSize, `--mini-batch-size (${r.miniBatchSize}) must not exceed --batch-size (${r.batchSize})`);
  arg(r.klTarget === null || r.klCoef > 0, '--kl-target needs --kl-coef > 0 (the adaptive controller scales the coefficient)');
  checkOutDiffers(r.out, { '--model': r.model, '--reward-model': r.rewardModel, '--safety-model': r.safetyModel, '--adapter': r.adapter, '--critic': r.critic });
  return r;
}

/** One line of metrics.jsonl (one PPO iteration). */
export interface PpoStepMetrics {
  step: number;
  /** Mean score of the batch from the reward source. */
  reward: number;
  /** Mean of each reward part, keyed `reward/<name>` (e.g. reward/helpfulness). */
  [part: `reward/${string}`]: number;
  /** Mean over responses of the summed per-token KL estimate against the reference (rollout). */
  kl: number;
  /** Mean of score - kl_coef * summed KL (TRL's objective/rlhf_reward). */
  rlhf_reward: number;
  /** Token-weighted over the update: 0.5 mean (logp - old_logp)^2. */
  approxkl: number;
  /** Fraction of tokens whose clipped policy branch was active. */
  clipfrac: number;
  vf_clipfrac: number;
  /** Mean per-token entropy of the policy (tempered distribution) during the update. */
  entropy: number;
  value_loss: number;
  pg_loss: number;
  /** Mean probability ratio over the update. */
  ratio: number;
  /** The KL coefficient the batch's rewards were shaped with. */
  kl_coef: number;
  /** Mean response length in tokens. */
  response_length: number;
  /** Fraction of responses that ended with EOS. */
  eos_fraction: number;
  /** Learning rate of the iteration's last policy step. */
  lr: number;
  /** Mean global gradient norm (before clipping) of the policy / critic steps. */
  grad_norm: number;
  value_grad_norm: number;
  /** Prompt + response tokens of the batch / seconds of the whole iteration. */
  tokens_per_sec: number;
  /** Generated tokens / seconds of sampling. */
  gen_tokens_per_sec: number;
  /** Tokens through training forwards and backwards / seconds of the PPO epochs. */
  update_tokens_per_sec: number;
  elapsed_s: number;
}

export interface PpoHooks extends Omit<StageHooks<PpoStepMetrics>, 'onStep'> {
  /** Scores the responses in place of the config's reward models, mixed with its module and built-ins (the caller keeps and disposes it). */
  reward?: RewardSource;
  onStep?: (m: PpoStepMetrics, info: { totalSteps: number }) => void;
}

export interface PpoEvalResult {
  /** Mean score of one sampled response per held-out prompt. */
  reward: number;
  /** Mean summed KL estimate (k1) of those responses against the reference. */
  kl: number;
  responseLength: number;
}

export interface PpoResult {
  out: string;
  /** PPO iterations done. */
  steps: number;
  totalSteps: number;
  /** Optimizer steps of the policy (minibatches). */
  optimizerSteps: number;
  interrupted: boolean;
  /** The signal that stopped the run (SIGINT, SIGTERM), or null. */
  signal: NodeJS.Signals | null;
  /** The iteration a resumed run continued after, or null. */
  resumedFrom: number | null;
  /** Minibatch updates not applied because a loss or gradient was NaN/infinite (nanPolicy 'skip'). */
  skippedUpdates: number;
  /** Mean reward of the first and of the last iteration's rollouts. */
  initialReward: number | null;
  finalReward: number | null;
  /** Rollout KL (mean summed per response) of the last iteration. */
  finalKl: number | null;
  /** The KL coefficient after the last update. */
  klCoef: number;
  /** Held-out evaluation before and after training (with evalData). */
  eval: { before: PpoEvalResult; after: PpoEvalResult } | null;
  prompts: number;
  trainableParameters: { policy: number; critic: number };
  /** Where the critic started from: 'adapter', 'reward-adapter', 'reward-model' or 'fresh'. */
  criticInit: 'adapter' | 'reward-adapter' | 'reward-model' | 'fresh';
  seconds: number;
  metricsFile: string;
  config: ResolvedPpoConfig;
  model?: Model;
  trainer?: Trainer;
}
