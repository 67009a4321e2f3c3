/**
 * The PPO stage (`rlhf-native ppo`): reinforcement learning from a reward
 * source with proximal policy optimisation, InstructGPT / TRL PPOTrainer
 * semantics on the native engine. See docs/ppo.md.
 *
 * One frozen base serves every role (docs: DESIGN section 2):
 *   policy    = base + LoRA adapter 'policy' (trainable)
 *   reference = base with adapters disabled (useAdapter(null))
 *   critic    = base + LoRA adapter 'critic' with its own value head
 *               (trainable), initialised from the reward model
 *   reward    = a RewardSource: reward-model folders, reward adapters on the
 *               same base, or a JS function.
 *
 * One iteration: take `batchSize` prompts, sample a response to each with the
 * policy, score the responses, read per-token log-probs of the responses
 * under the policy (old_logp) and the reference (ref_logp) and the critic's
 * values (old_values); rewards = -kl_coef * KL per token + the score at the
 * last token; GAE advantages (whitened) and returns; then `ppoEpochs` passes
 * over shuffled minibatches, each one critic update (clipped value loss) and
 * one policy update (clipped surrogate), both through the native `ppo_loss`
 * op, with gradient clipping and AdamW per adapter. All randomness of an
 * iteration (prompt order, sampling, minibatch shuffles) is a function of
 * (seed, iteration) only.
 */
import { arg, finite, nonNegInt, posInt } from './options';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { callNative, RlhfError } from '../errors';
import { native } from '../native';
import { loadModel, type Model } from '../engine/model';
import { GPT2_LORA_TARGETS, LLAMA_LORA_TARGETS, loraModules, type Trainer } from '../engine/train';
import { adapterHead, readAdapterConfig } from '../model/peft';
import { openModelFolder } from '../model/folder';
import { loadTokenizer, type Tokenizer } from '../tokenizer/tokenizer';
import { permutation } from '../data/sft-data';
import { combineRewards, rewardModels, type RewardInput, type RewardSource } from '../reward/sources';
import { gae, klPerToken, maskedWhiten, shapeRewards, type RewardKlEstimator } from '../ppo/gae';
import { klController } from '../ppo/kl-controller';
import { loadPrompts, type PromptRow } from '../ppo/prompts';
import { LR_SCHEDULES, lrSchedule, type LrScheduleKind } from './schedule';
import { packageVersion } from '../info';
import { checkWritableDir } from '../run/atomic';
import { stopOnSignals } from '../run/signals';
import { checkNanPolicy, numericStop, type NanPolicy } from './numerics';
import { DEVICES, type Device } from '../info';

export { klPerToken, shapeRewards, gae, maskedWhiten } from '../ppo/gae';
export type { RewardKlEstimator } from '../ppo/gae';
export { klController, AdaptiveKlController, FixedKlController } from '../ppo/kl-controller';
export type { KlController } from '../ppo/kl-controller';
export { loadPrompts } from '../ppo/prompts';
export type { PromptRow } from '../ppo/prompts';

export interface PpoConfig {
  /** Base model folder (the SFT model, causal LM, Hugging Face layout). Required. */
  model: string;
  /** Prompts, JSONL: {"prompt": "..."}, {"prompt": [messages]} or {"messages": [...]}, optional "safe". Required. */
  data: string;
  /** Output folder: the policy adapter (PEFT), critic/ (adapter with value head), metrics.jsonl, ppo_config.json. Required. */
  out: string;
  /**
   * Helpfulness reward model: a *ForSequenceClassification folder, or a PEFT
   * adapter with a score head trained on this base. Scores the responses
   * (unless a RewardSource is passed in the hooks) and initialises the critic
   * (unless `critic` is given). Required unless hooks.reward is given.
   */
  rewardModel?: string | null;
  /** Safety reward model (same kinds); rewards then combine as in Llama 2. */
  safetyModel?: string | null;
  /** How two reward models combine: 'llama2' (default with a safety model) or 'helpfulness'. */
  combine?: 'llama2' | 'helpfulness';
  /** Llama 2's safety threshold on the sigmoid scale. Default 0.15. */
  safetyThreshold?: number;
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
  /** Seed of the adapters' initialisation, prompt order, sampling and shuffles. Default 42. */
  seed?: number;
  /** Held-out prompts scored (reward, KL) before training and at the end. Default none. */
  evalData?: string | null;
  /** A minibatch update with a NaN/infinite loss or gradient: 'stop' the run (E_NUMERIC) or 'skip' the update (lib/stages/numerics.ts). Default 'stop'. */
  nanPolicy?: NanPolicy;
  device?: Device;
}

export type ResolvedPpoConfig = Required<Omit<PpoConfig, 'rewardModel' | 'safetyModel' | 'combine' | 'adapter' | 'critic' | 'loraTargets' | 'klTarget' | 'missingEosPenalty' | 'evalData'>> & {
  rewardModel: string | null;
  safetyModel: string | null;
  combine: 'llama2' | 'helpfulness';
  adapter: string | null;
  critic: string | null;
  loraTargets: string[] | 'all-linear';
  klTarget: number | null;
  missingEosPenalty: number | null;
  evalData: string | null;
};

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
  seed: 42,
  nanPolicy: 'stop' as NanPolicy,
  device: 'auto' as const,
};

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

export interface PpoHooks {
  /** Scores the responses instead of the reward models of the config (the caller keeps and disposes it). */
  reward?: RewardSource;
  onStep?: (m: PpoStepMetrics, info: { totalSteps: number }) => void;
  log?: (line: string) => void;
  /** Stop after the current iteration when aborted (then save, as on SIGINT). */
  signal?: AbortSignal;
  /** SIGINT/SIGTERM: the first finishes the iteration and saves, a second exits at once (130 / 143). Default true. */
  handleSigint?: boolean;
  /** Return the model and trainer without disposing them (the caller disposes the model). */
  keepModel?: boolean;
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


/** Fills in the defaults and checks every value (E_ARGUMENT naming the option). */
export function resolvePpoConfig(cfg: PpoConfig): ResolvedPpoConfig {
  for (const k of ['model', 'data', 'out'] as const) arg(typeof cfg[k] === 'string' && cfg[k].length > 0, `--${k} is required`);
  const flag = (k: string) => '--' + k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
  if (cfg.adapter) {
    const given = (['loraR', 'loraAlpha', 'loraTargets', 'rslora'] as const).filter((k) => cfg[k] !== undefined);
    // New adapters (the critic) still use these; only refuse them when nothing new is created.
    if (cfg.critic) arg(given.length === 0, `${given.map(flag).join(', ')} cannot be given with --adapter and --critic: both adapters come from their folders`);
  }
  const safetyModel = cfg.safetyModel ?? null;
  const lrScheduleKind = cfg.lrSchedule ?? PPO_DEFAULTS.lrSchedule;
  arg((LR_SCHEDULES as readonly string[]).includes(lrScheduleKind), `--lr-schedule must be one of ${LR_SCHEDULES.join(', ')}, got ${lrScheduleKind}`);
  const lr = cfg.lr ?? PPO_DEFAULTS.lr;
  const miniBatchSize = cfg.miniBatchSize ?? PPO_DEFAULTS.miniBatchSize;
  const r: ResolvedPpoConfig = {
    model: cfg.model,
    data: cfg.data,
    out: cfg.out,
    rewardModel: cfg.rewardModel ?? null,
    safetyModel,
    combine: cfg.combine ?? (safetyModel ? 'llama2' : 'helpfulness'),
    safetyThreshold: cfg.safetyThreshold ?? PPO_DEFAULTS.safetyThreshold,
    adapter: cfg.adapter ?? null,
    critic: cfg.critic ?? null,
    loraR: cfg.loraR ?? PPO_DEFAULTS.loraR,
    loraAlpha: cfg.loraAlpha ?? PPO_DEFAULTS.loraAlpha,
    loraTargets:
      cfg.loraTargets === undefined || cfg.loraTargets === 'all-linear' || (cfg.loraTargets.length === 1 && cfg.loraTargets[0] === 'all-linear') ? 'all-linear' : [...cfg.loraTargets],
    rslora: cfg.rslora ?? PPO_DEFAULTS.rslora,
    lr,
    criticLr: cfg.criticLr ?? lr,
    adamBeta1: cfg.adamBeta1 ?? PPO_DEFAULTS.adamBeta1,
    adamBeta2: cfg.adamBeta2 ?? PPO_DEFAULTS.adamBeta2,
    adamEpsilon: cfg.adamEpsilon ?? PPO_DEFAULTS.adamEpsilon,
    weightDecay: cfg.weightDecay ?? PPO_DEFAULTS.weightDecay,
    maxGradNorm: cfg.maxGradNorm ?? PPO_DEFAULTS.maxGradNorm,
    lrSchedule: lrScheduleKind,
    warmupSteps: cfg.warmupSteps ?? PPO_DEFAULTS.warmupSteps,
    iterations: cfg.iterations ?? PPO_DEFAULTS.iterations,
    batchSize: cfg.batchSize ?? PPO_DEFAULTS.batchSize,
    miniBatchSize,
    microBatchSize: cfg.microBatchSize ?? miniBatchSize,
    forwardBatchSize: cfg.forwardBatchSize ?? PPO_DEFAULTS.forwardBatchSize,
    ppoEpochs: cfg.ppoEpochs ?? PPO_DEFAULTS.ppoEpochs,
    maxNewTokens: cfg.maxNewTokens ?? PPO_DEFAULTS.maxNewTokens,
    temperature: cfg.temperature ?? PPO_DEFAULTS.temperature,
    topK: cfg.topK ?? PPO_DEFAULTS.topK,
    topP: cfg.topP ?? PPO_DEFAULTS.topP,
    cliprange: cfg.cliprange ?? PPO_DEFAULTS.cliprange,
    cliprangeValue: cfg.cliprangeValue ?? PPO_DEFAULTS.cliprangeValue,
    vfCoef: cfg.vfCoef ?? PPO_DEFAULTS.vfCoef,
    entCoef: cfg.entCoef ?? PPO_DEFAULTS.entCoef,
    gamma: cfg.gamma ?? PPO_DEFAULTS.gamma,
    lam: cfg.lam ?? PPO_DEFAULTS.lam,
    klCoef: cfg.klCoef ?? PPO_DEFAULTS.klCoef,
    klTarget: cfg.klTarget ?? PPO_DEFAULTS.klTarget,
    klHorizon: cfg.klHorizon ?? PPO_DEFAULTS.klHorizon,
    klEstimator: cfg.klEstimator ?? PPO_DEFAULTS.klEstimator,
    whitenRewards: cfg.whitenRewards ?? PPO_DEFAULTS.whitenRewards,
    whitenAdvantages: cfg.whitenAdvantages ?? PPO_DEFAULTS.whitenAdvantages,
    missingEosPenalty: cfg.missingEosPenalty ?? PPO_DEFAULTS.missingEosPenalty,
    seed: cfg.seed ?? PPO_DEFAULTS.seed,
    evalData: cfg.evalData ?? null,
    nanPolicy: checkNanPolicy(cfg.nanPolicy ?? PPO_DEFAULTS.nanPolicy),
    device: cfg.device ?? PPO_DEFAULTS.device,
  };
  arg(r.safetyModel === null || r.rewardModel !== null, '--safety-model needs --reward-model (the helpfulness reward model)');
  arg(r.combine === 'llama2' || r.combine === 'helpfulness', `--combine must be llama2 or helpfulness, got ${r.combine}`);
  arg(r.combine !== 'llama2' || r.safetyModel !== null, '--combine llama2 needs a safety reward model (--safety-model)');
  arg(finite(r.safetyThreshold) && r.safetyThreshold > 0 && r.safetyThreshold < 1, `--safety-threshold must be in (0, 1), got ${r.safetyThreshold}`);
  arg(posInt(r.loraR), `--lora-r must be a positive integer, got ${r.loraR}`);
  arg(finite(r.loraAlpha) && r.loraAlpha > 0, `--lora-alpha must be a positive number, got ${r.loraAlpha}`);
  arg(r.loraTargets === 'all-linear' || r.loraTargets.length > 0, '--lora-targets must name at least one module (or all-linear)');
  arg(finite(r.lr) && r.lr >= 0, `--lr must be a number >= 0, got ${r.lr}`);
  arg(finite(r.criticLr) && r.criticLr >= 0, `--critic-lr must be a number >= 0, got ${r.criticLr}`);
  arg(finite(r.adamBeta1) && r.adamBeta1 >= 0 && r.adamBeta1 < 1, `--adam-beta1 must be in [0, 1), got ${r.adamBeta1}`);
  arg(finite(r.adamBeta2) && r.adamBeta2 >= 0 && r.adamBeta2 < 1, `--adam-beta2 must be in [0, 1), got ${r.adamBeta2}`);
  arg(finite(r.adamEpsilon) && r.adamEpsilon > 0, `--adam-epsilon must be > 0, got ${r.adamEpsilon}`);
  arg(finite(r.weightDecay) && r.weightDecay >= 0, `--weight-decay must be >= 0, got ${r.weightDecay}`);
  arg(finite(r.maxGradNorm) && r.maxGradNorm >= 0, `--max-grad-norm must be >= 0 (0 disables clipping), got ${r.maxGradNorm}`);
  arg(nonNegInt(r.warmupSteps), `--warmup-steps must be a non-negative integer, got ${r.warmupSteps}`);
  arg(nonNegInt(r.iterations), `--iterations must be a non-negative integer (0: one pass over the prompts), got ${r.iterations}`);
  arg(posInt(r.batchSize), `--batch-size must be a positive integer, got ${r.batchSize}`);
  arg(posInt(r.miniBatchSize), `--mini-batch-size must be a positive integer, got ${r.miniBatchSize}`);
  arg(r.miniBatchSize <= r.batchSize, `--mini-batch-size (${r.miniBatchSize}) must not exceed --batch-size (${r.batchSize})`);
  arg(posInt(r.microBatchSize) && r.microBatchSize <= r.miniBatchSize, `--micro-batch-size must be a positive integer <= --mini-batch-size (${r.miniBatchSize}), got ${r.microBatchSize}`);
  arg(posInt(r.forwardBatchSize), `--forward-batch-size must be a positive integer, got ${r.forwardBatchSize}`);
  arg(posInt(r.ppoEpochs), `--ppo-epochs must be a positive integer, got ${r.ppoEpochs}`);
  arg(posInt(r.maxNewTokens), `--max-new-tokens must be a positive integer, got ${r.maxNewTokens}`);
  arg(finite(r.temperature) && r.temperature > 0, `--temperature must be > 0 (PPO samples from the policy), got ${r.temperature}`);
  arg(nonNegInt(r.topK), `--top-k must be a non-negative integer (0: off), got ${r.topK}`);
  arg(finite(r.topP) && r.topP > 0 && r.topP <= 1, `--top-p must be in (0, 1], got ${r.topP}`);
  arg(finite(r.cliprange) && r.cliprange > 0, `--cliprange must be > 0, got ${r.cliprange}`);
  arg(finite(r.cliprangeValue), `--cliprange-value must be a number (<= 0: no value clipping), got ${r.cliprangeValue}`);
  arg(finite(r.vfCoef) && r.vfCoef > 0, `--vf-coef must be > 0, got ${r.vfCoef}`);
  arg(finite(r.entCoef) && r.entCoef >= 0, `--ent-coef must be >= 0, got ${r.entCoef}`);
  arg(finite(r.gamma) && r.gamma >= 0 && r.gamma <= 1, `--gamma must be in [0, 1], got ${r.gamma}`);
  arg(finite(r.lam) && r.lam >= 0 && r.lam <= 1, `--lam must be in [0, 1], got ${r.lam}`);
  arg(finite(r.klCoef) && r.klCoef >= 0, `--kl-coef must be >= 0, got ${r.klCoef}`);
  arg(r.klTarget === null || (finite(r.klTarget) && r.klTarget > 0), `--kl-target must be > 0 (or unset for a fixed coefficient), got ${r.klTarget}`);
  arg(r.klTarget === null || r.klCoef > 0, '--kl-target needs --kl-coef > 0 (the adaptive controller scales the coefficient)');
  arg(finite(r.klHorizon) && r.klHorizon > 0, `--kl-horizon must be > 0, got ${r.klHorizon}`);
  arg(r.klEstimator === 'k1' || r.klEstimator === 'k3', `--kl-estimator must be k1 or k3, got ${r.klEstimator}`);
  arg(r.missingEosPenalty === null || (finite(r.missingEosPenalty) && r.missingEosPenalty >= 0), `--missing-eos-penalty must be >= 0, got ${r.missingEosPenalty}`);
  arg(nonNegInt(r.seed), `--seed must be a non-negative integer, got ${r.seed}`);
  arg(DEVICES.includes(r.device), `--device must be auto, cpu or cuda, got ${r.device}`);
  arg(path.resolve(r.out) !== path.resolve(r.model), '--out must differ from --model (the base model folder is never overwritten)');
  for (const [k, v] of [['--reward-model', r.rewardModel], ['--safety-model', r.safetyModel], ['--adapter', r.adapter], ['--critic', r.critic]] as const)
    if (v) arg(path.resolve(r.out) !== path.resolve(v), `--out must differ from ${k} (the input is never overwritten)`);
  return r;
}

// ------------------------------------------------------------------ seeds

/** A 32-bit hash of a few integers: the seed of one piece of an iteration (pure in its arguments). */
export function mixSeed(...xs: number[]): number {
  let h = 0x9e3779b9;
  for (const x of xs) {
    const lo = x >>> 0, hi = Math.floor(x / 4294967296) >>> 0;
    for (const w of [lo, hi]) {
      h = Math.imul(h ^ w, 0x85ebca6b);
      h ^= h >>> 13;
      h = Math.imul(h, 0xc2b2ae35);
      h ^= h >>> 16;
    }
  }
  return h >>> 0;
}

/**
 * The prompts of iteration `iteration` (0-based): positions
 * [iteration * batchSize, (iteration + 1) * batchSize) of the endless
 * sequence of epochs, each epoch a permutation seeded by (seed, epoch).
 */
export function iterationPrompts(n: number, batchSize: number, iteration: number, seed: number): number[] {
  const out: number[] = [];
  let epoch = -1, order: number[] = [];
  for (let pos = iteration * batchSize; pos < (iteration + 1) * batchSize; pos++) {
    const e = Math.floor(pos / n);
    if (e !== epoch) (epoch = e), (order = permutation(n, mixSeed(seed, 0x9f0, e)));
    out.push(order[pos % n]);
  }
  return out;
}

// ------------------------------------------------------------------ the loss op

export interface PpoLossInput {
  logp: Float32Array;
  oldLogp: Float32Array;
  advantages: Float32Array;
  values?: Float32Array;
  oldValues?: Float32Array;
  returns?: Float32Array;
  refLogp?: Float32Array;
  entropy?: Float32Array;
  clipRange: number;
  clipRangeValue: number;
  vfCoef: number;
  entCoef?: number;
  gradScale?: number;
  /** Which gradients to return. */
  want?: { dlogp?: boolean; dvalues?: boolean; dentropy?: boolean };
}

export interface PpoLossOutput {
  loss: number;
  pgLoss: number;
  vfLoss: number;
  kl: number;
  entropy: number;
  approxKl: number;
  clipfrac: number;
  vfClipfrac: number;
  ratioMean: number;
  tokens: number;
  dlogp?: Float32Array;
  dvalues?: Float32Array;
  dentropy?: Float32Array;
}

/** The native `ppo_loss` op over n tokens (no mask: the caller passes response tokens only). */
export function ppoLoss(x: PpoLossInput): PpoLossOutput {
  const n = x.logp.length;
  const loss = new Float32Array(1), stats = new Float32Array(9);
  const dlogp = x.want?.dlogp ? new Float32Array(n) : undefined;
  const dvalues = x.want?.dvalues ? new Float32Array(n) : undefined;
  const dentropy = x.want?.dentropy ? new Float32Array(n) : undefined;
  callNative(() =>
    native().runOp('ppo_loss', {
      n,
      logp: x.logp,
      oldLogp: x.oldLogp,
      advantages: x.advantages,
      values: x.values,
      oldValues: x.oldValues,
      returns: x.returns,
      refLogp: x.refLogp,
      entropy: x.entropy,
      clipRange: x.clipRange,
      clipRangeValue: x.clipRangeValue,
      vfCoef: x.vfCoef,
      klCoef: 0,
      entCoef: x.entCoef ?? 0,
      gradScale: x.gradScale ?? 1,
      loss,
      dlogp,
      dvalues,
      dentropy,
      stats,
    }),
  );
  return {
    loss: loss[0],
    pgLoss: stats[0],
    vfLoss: stats[1],
    kl: stats[2],
    entropy: stats[3],
    approxKl: stats[4],
    clipfrac: stats[5],
    vfClipfrac: stats[6],
    ratioMean: stats[7],
    tokens: stats[8],
    dlogp,
    dvalues,
    dentropy,
  };
}

// ------------------------------------------------------------------ rollouts

/** One sampled response and everything the update needs about it. */
export interface Rollout {
  prompt: PromptRow;
  response: number[];
  /** Generation ended with an EOS token (which `response` then includes). */
  eos: boolean;
  score: number;
  parts: Record<string, number>;
  /** Per response token (length = response.length). */
  oldLogp: Float32Array;
  refLogp: Float32Array;
  oldValues: Float32Array;
  advantages: Float32Array;
  returns: Float32Array;
  /** Summed KL estimate (the rewards' estimator) over the response. */
  klSum: number;
}

// ------------------------------------------------------------------ one minibatch

export interface PpoUpdateOptions {
  cliprange: number;
  cliprangeValue: number;
  vfCoef: number;
  entCoef: number;
  /** The temperature the rollout log-probs were read at. */
  temperature: number;
  /** Rollouts per training forward; gradients accumulate over the minibatch. */
  microBatchSize: number;
}

/** Splits rows into micro-batches and returns, per micro-batch, the rows and their response-token count. */
function microBatches(mb: readonly Rollout[], size: number): Rollout[][] {
  const out: Rollout[][] = [];
  for (let i = 0; i < mb.length; i += size) {
    const rs = mb.slice(i, i + size);
    if (rs.some((r) => r.response.length > 0)) out.push(rs);
  }
  return out;
}

/**
 * Gathers a training forward's per-position outputs at the response tokens
 * (width w per row: seq - 1 for log-probs, seq for values), and scatters
 * gradients back into the same flat layout, zero elsewhere.
 */
function gatherResponses(flat: Float32Array, w: number, rs: readonly Rollout[], n: number): Float32Array {
  const out = new Float32Array(n);
  let k = 0;
  rs.forEach((r, b) => {
    const P = r.prompt.ids.length, L = r.response.length;
    out.set(flat.subarray(b * w + P - 1, b * w + P - 1 + L), k);
    k += L;
  });
  return out;
}
function scatterResponses(src: Float32Array, w: number, rs: readonly Rollout[]): Float32Array {
  const dst = new Float32Array(rs.length * w);
  let k = 0;
  rs.forEach((r, b) => {
    const P = r.prompt.ids.length, L = r.response.length;
    dst.set(src.subarray(k, k + L), b * w + P - 1);
    k += L;
  });
  return dst;
}
function concat(rs: readonly Rollout[], pick: (r: Rollout) => Float32Array, n: number): Float32Array {
  const out = new Float32Array(n);
  let k = 0;
  for (const r of rs) out.set(pick(r), k), (k += r.response.length);
  return out;
}

/**
 * The critic's gradients for one minibatch (zeroed first, accumulated over
 * micro-batches, not stepped): the clipped value loss of `ppo_loss` times
 * vf_coef, a mean over every response token of the minibatch (each
 * micro-batch's op call is scaled by its share of the tokens).
 */
export async function criticGradients(trainer: Trainer, mb: readonly Rollout[], o: PpoUpdateOptions): Promise<{ tokens: number; seqTokens: number; vfLoss: number; vfClipfrac: number }> {
  trainer.useAdapter('critic');
  await trainer.zeroGrad();
  const total = mb.reduce((s, r) => s + r.response.length, 0);
  let vf = 0, vclip = 0, seqTokens = 0;
  for (const rs of microBatches(mb, o.microBatchSize)) {
    const n = rs.reduce((s, r) => s + r.response.length, 0);
    const ids = rs.map((r) => [...r.prompt.ids, ...r.response]);
    const f = await trainer.forward({ inputIds: ids, values: true, logp: false });
    const lp = concat(rs, (r) => r.oldLogp, n);
    const out = ppoLoss({
      logp: lp,
      oldLogp: lp,
      advantages: new Float32Array(n),
      values: gatherResponses(f.flat.values!, f.seq, rs, n),
      oldValues: concat(rs, (r) => r.oldValues, n),
      returns: concat(rs, (r) => r.returns, n),
      clipRange: o.cliprange,
      clipRangeValue: o.cliprangeValue,
      vfCoef: o.vfCoef,
      gradScale: n / total,
      want: { dvalues: true },
    });
    await trainer.backward({ dvalues: scatterResponses(out.dvalues!, f.seq, rs) });
    vf += out.vfLoss * n;
    vclip += out.vfClipfrac * n;
    seqTokens += ids.reduce((s, x) => s + x.length, 0);
  }
  return { tokens: total, seqTokens, vfLoss: total ? vf / total : 0, vfClipfrac: total ? vclip / total : 0 };
}

/**
 * The policy's gradients for one minibatch (zeroed first, accumulated, not
 * stepped): the clipped surrogate of `ppo_loss` minus ent_coef times the mean
 * entropy, a mean over every response token of the minibatch.
 */
export async function policyGradients(
  trainer: Trainer,
  mb: readonly Rollout[],
  o: PpoUpdateOptions,
): Promise<{ tokens: number; seqTokens: number; pgLoss: number; entropy: number; approxKl: number; clipfrac: number; ratio: number }> {
  trainer.useAdapter('policy');
  await trainer.zeroGrad();
  const total = mb.reduce((s, r) => s + r.response.length, 0);
  let pg = 0, ent = 0, akl = 0, clip = 0, ratio = 0, seqTokens = 0;
  for (const rs of microBatches(mb, o.microBatchSize)) {
    const n = rs.reduce((s, r) => s + r.response.length, 0);
    const ids = rs.map((r) => [...r.prompt.ids, ...r.response]);
    const f = await trainer.forward({ inputIds: ids, logp: true, temperature: o.temperature });
    const w = f.seq - 1;
    const out = ppoLoss({
      logp: gatherResponses(f.flat.logp!, w, rs, n),
      oldLogp: concat(rs, (r) => r.oldLogp, n),
      advantages: concat(rs, (r) => r.advantages, n),
      entropy: gatherResponses(f.flat.entropy!, w, rs, n),
      clipRange: o.cliprange,
      clipRangeValue: o.cliprangeValue,
      vfCoef: o.vfCoef,
      entCoef: o.entCoef,
      gradScale: n / total,
      want: { dlogp: true, dentropy: o.entCoef > 0 },
    });
    await trainer.backward({ dlogp: scatterResponses(out.dlogp!, w, rs), dentropy: out.dentropy ? scatterResponses(out.dentropy, w, rs) : undefined });
    pg += out.pgLoss * n;
    ent += out.entropy * n;
    akl += out.approxKl * n;
    clip += out.clipfrac * n;
    ratio += out.ratioMean * n;
    seqTokens += ids.reduce((s, x) => s + x.length, 0);
  }
  const d = total || 1;
  return { tokens: total, seqTokens, pgLoss: pg / d, entropy: ent / d, approxKl: akl / d, clipfrac: clip / d, ratio: ratio / d };
}

/** A PEFT adapter folder (adapter_config.json and no config.json of its own). */
const isAdapterDir = (dir: string) => fs.existsSync(path.join(dir, 'adapter_config.json')) && !fs.existsSync(path.join(dir, 'config.json'));

/**
 * Per-token outputs of `seqs` (prompt + response) at the response positions:
 * token j of a response of a prompt of length P is predicted at position
 * P - 1 + j, where logp[P - 1 + j] = log p(response[j] | prefix) and the
 * critic's value is that of the same prefix (TRL: values[context_length - 1 : -1]).
 */
function responseSlices(rows: readonly Float32Array[], promptLens: readonly number[], respLens: readonly number[]): Float32Array[] {
  return rows.map((r, b) => Float32Array.from(r.subarray(promptLens[b] - 1, promptLens[b] - 1 + respLens[b])));
}

async function perToken(
  model: Model,
  seqs: readonly number[][],
  promptLens: readonly number[],
  respLens: readonly number[],
  what: 'logp' | 'values',
  temperature: number,
  chunk: number,
): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (let i = 0; i < seqs.length; i += chunk) {
    const rows = seqs.slice(i, i + chunk) as number[][];
    const f = await model.forward(what === 'logp' ? { inputIds: rows, logp: true, temperature } : { inputIds: rows, logp: false, values: true });
    out.push(...responseSlices(what === 'logp' ? f.logp! : f.values!, promptLens.slice(i, i + chunk), respLens.slice(i, i + chunk)));
  }
  return out;
}

/**
 * Reward models on the shared base: each part that is a PEFT adapter with a
 * score head is loaded as a frozen adapter (`reward:<part>`) on the policy's
 * base; a part that is a model folder is loaded on its own through
 * `rewardModels`. Parts combine as in `rewardModels` (Llama 2 with two).
 */
async function stageRewardSource(cfg: ResolvedPpoConfig, model: Model, log: (l: string) => void): Promise<{ source: RewardSource; adapterNames: string[] }> {
  const parts: [string, string][] = [['helpfulness', cfg.rewardModel!]];
  if (cfg.safetyModel) parts.push(['safety', cfg.safetyModel]);
  if (parts.every(([, d]) => !isAdapterDir(d))) {
    const source = await rewardModels({ helpfulness: cfg.rewardModel!, safety: cfg.safetyModel, combine: cfg.combine, safetyThreshold: cfg.safetyThreshold, batchSize: cfg.forwardBatchSize, device: cfg.device, policy: cfg.model });
    return { source, adapterNames: [] };
  }
  const trainer = model.trainer();
  const scorers: { name: string; score: (seqs: number[][]) => Promise<Float64Array>; dispose: () => void }[] = [];
  const adapterNames: string[] = [];
  try {
    for (const [name, dir] of parts) {
      if (isAdapterDir(dir)) {
        if (!adapterHead(dir)) throw new RlhfError('E_MODEL', `${dir}: a reward adapter needs a score head (${'base_model.model.score.weight'}); this adapter has none`, { where: dir });
        const an = `reward:${name}`;
        trainer.loadLora(dir, an);
        adapterNames.push(an);
        log(`ppo: ${name} reward model: adapter ${dir} on the shared base`);
        scorers.push({
          name,
          score: async (seqs) => {
            trainer.useAdapter(an);
            const out = new Float64Array(seqs.length);
            for (let i = 0; i < seqs.length; i += cfg.forwardBatchSize) {
              const rows = seqs.slice(i, i + cfg.forwardBatchSize);
              const f = await model.forward({ inputIds: rows, values: true, logp: false });
              rows.forEach((ids, b) => (out[i + b] = f.values![b][ids.length - 1]));
            }
            return out;
          },
          dispose: () => {},
        });
      } else {
        const src = await rewardModels({ helpfulness: dir, combine: 'helpfulness', batchSize: cfg.forwardBatchSize, device: cfg.device, policy: cfg.model });
        scorers.push({
          name,
          score: async (seqs) => (await src.score(seqs.map((ids) => ({ prompt: '', promptIds: ids, response: '', responseIds: [] })))).reward,
          dispose: () => src.dispose(),
        });
      }
    }
  } catch (e) {
    scorers.forEach((s) => s.dispose());
    throw e;
  }
  const source: RewardSource = {
    names: scorers.map((s) => s.name),
    async score(batch: RewardInput[]) {
      const seqs = batch.map((x) => [...x.promptIds, ...x.responseIds]);
      const out: Record<string, Float64Array> = {};
      for (const s of scorers) out[s.name] = await s.score(seqs);
      const { reward } = combineRewards(out.helpfulness, out.safety ?? null, batch.map((x) => x.safe), { combine: cfg.combine, safetyThreshold: cfg.safetyThreshold });
      return { reward, parts: out };
    },
    dispose: () => scorers.forEach((s) => s.dispose()),
  };
  return { source, adapterNames };
}

function mean(xs: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < xs.length; i++) s += xs[i];
  return xs.length ? s / xs.length : 0;
}

export async function runPpo(config: PpoConfig, hooks: PpoHooks = {}): Promise<PpoResult> {
  const cfg = resolvePpoConfig(config);
  const log = hooks.log ?? (() => {});
  arg(!!hooks.reward || cfg.rewardModel !== null, '--reward-model is required (or pass a RewardSource as hooks.reward)');
  if (fs.existsSync(cfg.out) && !fs.statSync(cfg.out).isDirectory()) throw new RlhfError('E_ARGUMENT', `--out ${cfg.out} exists and is not a folder`, { where: cfg.out });
  checkWritableDir(cfg.out);
  if (cfg.adapter) {
    readAdapterConfig(cfg.adapter);
    if (adapterHead(cfg.adapter)) throw new RlhfError('E_ARGUMENT', `--adapter ${cfg.adapter} has a score head (a reward model or critic adapter), not a policy adapter`, { where: cfg.adapter });
  }
  if (cfg.critic) {
    readAdapterConfig(cfg.critic);
    if (!adapterHead(cfg.critic)) throw new RlhfError('E_ARGUMENT', `--critic ${cfg.critic} has no score head (base_model.model.score.weight): a critic adapter needs a value head`, { where: cfg.critic });
  }

  // The base: a causal LM; its context bounds prompt + response.
  const folder = openModelFolder(cfg.model);
  const mcfg = folder.config;
  const hasTokenizer = folder.tokenizer.json !== null;
  folder.close();
  if (mcfg.head !== 'lm') throw new RlhfError('E_MODEL', `${cfg.model}: PPO needs a causal LM as the base (this is a ${mcfg.architecture})`, { where: cfg.model });
  if (!hasTokenizer) throw new RlhfError('E_MODEL', `${cfg.model}: no tokenizer.json (PPO encodes the prompts and decodes the responses)`, { where: cfg.model });
  if (cfg.loraTargets !== 'all-linear') loraModules(mcfg, cfg.loraTargets);
  // A reward-model folder used for the critic must match the base's hidden size.
  let rmHead: [string, string] | null = null;
  for (const [flag, dir] of [['--reward-model', cfg.rewardModel], ['--safety-model', cfg.safetyModel]] as const) {
    if (!dir || isAdapterDir(dir)) continue;
    const f = openModelFolder(dir);
    try {
      if (f.config.head !== 'score')
        throw new RlhfError('E_MODEL', `${flag} ${dir}: a reward model must be a *ForSequenceClassification folder or a PEFT adapter with a score head (this is a ${f.config.architecture})`, { where: dir });
      if (flag === '--reward-model') {
        const t = f.tensors.find((x) => x.canonical === 'score.weight');
        if (!t) throw new RlhfError('E_MODEL', `${dir}: no score.weight`, { where: dir });
        if (t.shape[t.shape.length - 1] !== mcfg.hiddenSize && !cfg.critic)
          throw new RlhfError(
            'E_MODEL',
            `${dir}: the reward model's hidden size (${t.shape[t.shape.length - 1]}) differs from the base's (${mcfg.hiddenSize}): its score head cannot start the critic; pass --critic`,
            { where: dir },
          );
        rmHead = [t.file, t.name];
      }
    } finally {
      f.close();
    }
  }
  const ctx = mcfg.maxSequenceLength;
  arg(cfg.maxNewTokens < ctx, `--max-new-tokens ${cfg.maxNewTokens} leaves no room for a prompt in the model's context (${ctx})`);
  const tok: Tokenizer = loadTokenizer(cfg.model);
  const promptOpts = { tokenizer: tok, maxPromptTokens: ctx - cfg.maxNewTokens, limitReason: `the model's context ${ctx} minus --max-new-tokens ${cfg.maxNewTokens}`, vocabSize: mcfg.vocabSize };
  const prompts = loadPrompts(cfg.data, promptOpts);
  const evalPrompts = cfg.evalData ? loadPrompts(cfg.evalData, promptOpts) : [];
  const totalSteps = cfg.iterations > 0 ? cfg.iterations : Math.ceil(prompts.length / cfg.batchSize);
  log(`ppo: ${cfg.data}: ${prompts.length} prompts; ${totalSteps} iterations of ${cfg.batchSize} rollouts, ${cfg.ppoEpochs} epochs of minibatches of ${cfg.miniBatchSize}`);

  const longestPrompt = Math.max(1, ...[...prompts, ...evalPrompts].map((p) => p.ids.length));
  const model = await loadModel(cfg.model, {
    device: cfg.device,
    memory: {
      what: `ppo on ${cfg.model}`,
      train: 'lora',
      batch: Math.max(cfg.microBatchSize, cfg.forwardBatchSize),
      seq: longestPrompt + cfg.maxNewTokens,
      // policy, critic, and reward adapters on the same base; full reward-model folders are further bases
      lora: { r: cfg.loraR, targets: cfg.loraTargets, adapters: 2 + [cfg.rewardModel, cfg.safetyModel].filter((d) => d && isAdapterDir(d)).length },
      extraBases: hooks.reward ? 0 : [cfg.rewardModel, cfg.safetyModel].filter((d) => d && !isAdapterDir(d)).length,
      generate: { batch: cfg.forwardBatchSize, tokens: longestPrompt + cfg.maxNewTokens },
    },
  });
  let keep = false;
  let ownedReward: RewardSource | null = null;
  try {
    const trainer = model.trainer();
    const targets = cfg.loraTargets === 'all-linear' ? (mcfg.arch === 'gpt2' ? GPT2_LORA_TARGETS : LLAMA_LORA_TARGETS) : cfg.loraTargets;
    const newLora = (name: string, seed: number, head?: boolean | { from: [string, string] }) =>
      trainer.createLora({ name, r: cfg.loraR, alpha: cfg.loraAlpha, rslora: cfg.rslora, targets, seed, head }).parameters;

    // Rewards.
    let reward: RewardSource;
    if (hooks.reward) reward = hooks.reward;
    else reward = ownedReward = (await stageRewardSource(cfg, model, log)).source;
    if (reward.maxTokens !== undefined) {
      for (const [file, rows] of [[cfg.data, prompts], [cfg.evalData, evalPrompts]] as const) {
        const tooLong = rows.find((p) => p.ids.length + cfg.maxNewTokens > reward.maxTokens!);
        if (tooLong)
          throw new RlhfError(
            'E_DATA',
            `${file}:${tooLong.line}: the prompt is ${tooLong.ids.length} tokens; with --max-new-tokens ${cfg.maxNewTokens} it exceeds the reward model's context (${reward.maxTokens})`,
            { where: `${file}:${tooLong.line}` },
          );
      }
    }

    // Critic: from --critic, else the reward model (its adapter, or a full model's score head), else a fresh head.
    let criticInit: PpoResult['criticInit'];
    let criticParams: number;
    if (cfg.critic) {
      criticParams = trainer.loadLora(cfg.critic, 'critic').parameters;
      criticInit = 'adapter';
    } else if (cfg.rewardModel && isAdapterDir(cfg.rewardModel)) {
      if (!adapterHead(cfg.rewardModel)) throw new RlhfError('E_MODEL', `${cfg.rewardModel}: a reward adapter needs a score head`, { where: cfg.rewardModel });
      criticParams = trainer.loadLora(cfg.rewardModel, 'critic').parameters;
      criticInit = 'reward-adapter';
    } else if (rmHead) {
      criticParams = newLora('critic', mixSeed(cfg.seed, 0xc1), { from: rmHead });
      criticInit = 'reward-model';
    } else {
      criticParams = newLora('critic', mixSeed(cfg.seed, 0xc1), true);
      criticInit = 'fresh';
    }
    // Policy.
    const policyParams = cfg.adapter ? trainer.loadLora(cfg.adapter, 'policy').parameters : newLora('policy', cfg.seed);
    log(
      `ppo: policy ${cfg.adapter ? `adapter ${cfg.adapter}` : `LoRA r ${cfg.loraR} alpha ${cfg.loraAlpha}`} (${policyParams} parameters); ` +
        `critic from ${criticInit === 'adapter' ? cfg.critic : criticInit === 'fresh' ? 'a fresh value head' : `the reward model ${cfg.rewardModel}`} (${criticParams} parameters)`,
    );

    const eosIds = mcfg.eosTokenIds;
    const kl = klController(cfg.klCoef, cfg.klTarget, cfg.klHorizon);
    const minibatchesPerEpoch = Math.ceil(cfg.batchSize / cfg.miniBatchSize);
    const totalOptSteps = totalSteps * cfg.ppoEpochs * minibatchesPerEpoch;
    const policyLr = lrSchedule({ kind: cfg.lrSchedule, lr: cfg.lr, warmupSteps: cfg.warmupSteps, totalSteps: totalOptSteps });
    const criticLr = lrSchedule({ kind: cfg.lrSchedule, lr: cfg.criticLr, warmupSteps: cfg.warmupSteps, totalSteps: totalOptSteps });
    const optim = { optimizer: 'adamw' as const, beta1: cfg.adamBeta1, beta2: cfg.adamBeta2, eps: cfg.adamEpsilon, weightDecay: cfg.weightDecay, maxGradNorm: cfg.maxGradNorm };

    /** Samples one response per prompt with the policy, scores it, and reads the per-token arrays. */
    const rollout = async (rows: PromptRow[], file: string, seed: number, withValues: boolean) => {
      trainer.useAdapter('policy');
      const responses: number[][] = [], eos: boolean[] = [];
      for (let i = 0, c = 0; i < rows.length; i += cfg.forwardBatchSize, c++) {
        const chunk = rows.slice(i, i + cfg.forwardBatchSize);
        const g = await model.generate({ prompts: chunk.map((p) => p.ids), maxNewTokens: cfg.maxNewTokens, temperature: cfg.temperature, topK: cfg.topK, topP: cfg.topP, seed: mixSeed(seed, c), eosIds });
        g.tokens.forEach((t, b) => {
          responses.push(Array.from(t));
          eos.push(g.finish[b] === 'eos');
        });
      }
      const tGen = performance.now();
      const inputs: RewardInput[] = rows.map((p, b) => {
        const x: RewardInput = { prompt: p.text, promptIds: p.ids, response: tok.decode(responses[b], { skipSpecialTokens: true }), responseIds: responses[b] };
        if (p.safe !== undefined) x.safe = p.safe;
        return x;
      });
      const scored = await reward.score(inputs);
      if (scored.reward.length !== rows.length) throw new RlhfError('E_ARGUMENT', `the reward source returned ${scored.reward.length} rewards for ${rows.length} responses`);
      const bad = Array.from(scored.reward).findIndex((x) => !Number.isFinite(x));
      if (bad >= 0) throw new RlhfError('E_ARGUMENT', `the reward source returned ${scored.reward[bad]} for the response to ${file}:${rows[bad].line} (rewards must be finite)`);
      scored.parts ??= {};
      const seqs = rows.map((p, b) => [...p.ids, ...responses[b]]);
      const pl = rows.map((p) => p.ids.length), rl = responses.map((r) => r.length);
      trainer.useAdapter('policy');
      const oldLogp = await perToken(model, seqs, pl, rl, 'logp', cfg.temperature, cfg.forwardBatchSize);
      trainer.useAdapter(null);
      const refLogp = await perToken(model, seqs, pl, rl, 'logp', cfg.temperature, cfg.forwardBatchSize);
      let oldValues: Float32Array[] = [];
      if (withValues) {
        trainer.useAdapter('critic');
        oldValues = await perToken(model, seqs, pl, rl, 'values', cfg.temperature, cfg.forwardBatchSize);
      }
      return { responses, eos, scored, seqs, oldLogp, refLogp, oldValues, genTokens: rl.reduce((s, x) => s + x, 0), tGen };
    };

    const evaluate = async (): Promise<PpoEvalResult> => {
      const r = await rollout(evalPrompts, cfg.evalData!, mixSeed(cfg.seed, 0xe7a1), false);
      const kls = r.oldLogp.map((lp, b) => klPerToken(lp, r.refLogp[b], 'k1').reduce((s, x) => s + x, 0));
      return { reward: mean(r.scored.reward), kl: mean(kls), responseLength: mean(r.responses.map((x) => x.length)) };
    };

    fs.mkdirSync(cfg.out, { recursive: true });
    const metricsFile = path.join(cfg.out, 'metrics.jsonl');
    const metricsFd = fs.openSync(metricsFile, 'w');

    const stopper = stopOnSignals({ label: 'ppo', log, handleSignals: hooks.handleSigint ?? true, abort: hooks.signal, then: 'finishing the current iteration, then saving' });
    let skippedUpdates = 0;

    let steps = 0, optSteps = 0, initialReward: number | null = null, finalReward: number | null = null, finalKl: number | null = null;
    let evalBefore: PpoEvalResult | null = null, evalAfter: PpoEvalResult | null = null;
    const t0 = performance.now();
    try {
      if (evalPrompts.length) {
        evalBefore = await evaluate();
        log(`ppo: eval before: reward ${evalBefore.reward.toFixed(4)}, kl ${evalBefore.kl.toFixed(4)}, response length ${evalBefore.responseLength.toFixed(1)}`);
      }
      for (let it = 0; it < totalSteps; it++) {
        if (stopper.requested) break;
        const ts = performance.now();
        const rows = iterationPrompts(prompts.length, cfg.batchSize, it, cfg.seed).map((i) => prompts[i]);
        const ro = await rollout(rows, cfg.data, mixSeed(cfg.seed, 0x6e, it), true);
        const genSeconds = (ro.tGen - ts) / 1000;
        const B = rows.length;

        // Rewards, advantages, returns (float64).
        const klCoef = kl.value;
        const klRows = ro.oldLogp.map((lp, b) => klPerToken(lp, ro.refLogp[b], cfg.klEstimator));
        const scores = Float64Array.from(ro.scored.reward, (s, b) => (cfg.missingEosPenalty !== null && !ro.eos[b] ? s - cfg.missingEosPenalty : s));
        let rewards = shapeRewards(klRows, scores, klCoef);
        if (cfg.whitenRewards) rewards = maskedWhiten(rewards, false);
        const values64 = ro.oldValues.map((v) => Float64Array.from(v));
        const g = gae(rewards, values64, cfg.gamma, cfg.lam);
        const adv = cfg.whitenAdvantages ? maskedWhiten(g.advantages, true) : g.advantages;
        const klSums = klRows.map((r) => r.reduce((s, x) => s + x, 0));
        const rollouts: Rollout[] = rows.map((p, b) => ({
          prompt: p,
          response: ro.responses[b],
          eos: ro.eos[b],
          score: ro.scored.reward[b],
          parts: Object.fromEntries(Object.entries(ro.scored.parts).map(([k, v]) => [k, v[b]])),
          oldLogp: ro.oldLogp[b],
          refLogp: ro.refLogp[b],
          oldValues: ro.oldValues[b],
          advantages: Float32Array.from(adv[b]),
          returns: Float32Array.from(g.returns[b]),
          klSum: klSums[b],
        }));

        // PPO epochs.
        const tu = performance.now();
        const upd = { opts: { cliprange: cfg.cliprange, cliprangeValue: cfg.cliprangeValue, vfCoef: cfg.vfCoef, entCoef: cfg.entCoef, temperature: cfg.temperature, microBatchSize: cfg.microBatchSize } };
        const acc = { tokens: 0, pg: 0, vf: 0, ent: 0, akl: 0, clip: 0, vclip: 0, ratio: 0, gn: 0, vgn: 0, n: 0, updTokens: 0 };
        let lastLr = 0;
        for (let ep = 0; ep < cfg.ppoEpochs; ep++) {
          const order = permutation(B, mixSeed(cfg.seed, 0x5b, it, ep));
          for (let m0 = 0; m0 < B; m0 += cfg.miniBatchSize) {
            const mb = order.slice(m0, m0 + cfg.miniBatchSize).map((i) => rollouts[i]);
            if (mb.every((r) => r.response.length === 0)) continue;
            // A non-finite loss is never stepped on; the engine refuses a non-finite gradient itself (skipped).
            const c = await criticGradients(trainer, mb, upd.opts);
            const cs = Number.isFinite(c.vfLoss) ? await trainer.step({ ...optim, lr: criticLr(optSteps) }) : null;
            const p = await policyGradients(trainer, mb, upd.opts);
            lastLr = policyLr(optSteps);
            const ps = Number.isFinite(p.pgLoss) ? await trainer.step({ ...optim, lr: lastLr }) : null;
            const bad = !cs
              ? `the value loss is ${c.vfLoss}`
              : cs.skipped
                ? `the critic's gradient norm is ${cs.gradNorm}`
                : !ps
                  ? `the policy loss is ${p.pgLoss}`
                  : ps.skipped
                    ? `the policy's gradient norm is ${ps.gradNorm}`
                    : null;
            if (bad || !cs || !ps) {
              const where = `iteration ${it + 1}, epoch ${ep + 1}, minibatch ${m0 / cfg.miniBatchSize + 1}`;
              if (cfg.nanPolicy === 'stop') throw numericStop('ppo', where, bad ?? 'a loss is not finite', { lastGoodStep: steps, hint: 'try a lower --lr, --max-grad-norm or --kl-coef, check the rewards' });
              log(`ppo: ${where}: update skipped: ${bad} (--nan-policy skip)`);
              skippedUpdates++;
              optSteps++;
              continue;
            }
            acc.tokens += p.tokens;
            acc.pg += p.pgLoss * p.tokens;
            acc.ent += p.entropy * p.tokens;
            acc.akl += p.approxKl * p.tokens;
            acc.clip += p.clipfrac * p.tokens;
            acc.ratio += p.ratio * p.tokens;
            acc.vf += c.vfLoss * c.tokens;
            acc.vclip += c.vfClipfrac * c.tokens;
            acc.updTokens += p.seqTokens + c.seqTokens;
            acc.gn += ps.gradNorm;
            acc.vgn += cs.gradNorm;
            acc.n++;
            optSteps++;
          }
        }
        const updSeconds = (performance.now() - tu) / 1000;

        const meanScore = mean(ro.scored.reward);
        const meanKl = mean(klSums);
        kl.update(meanKl, B);
        steps = it + 1;
        initialReward ??= meanScore;
        finalReward = meanScore;
        finalKl = meanKl;
        const T = Math.max(1, acc.tokens);
        const seqTokens = ro.seqs.reduce((s, x) => s + x.length, 0);
        const seconds = (performance.now() - ts) / 1000;
        const m = {
          step: steps,
          reward: meanScore,
          ...Object.fromEntries(Object.entries(ro.scored.parts).map(([k, v]) => [`reward/${k}`, mean(v)])),
          kl: meanKl,
          rlhf_reward: mean(Array.from(scores, (s, b) => s - klCoef * klSums[b])),
          approxkl: acc.akl / T,
          clipfrac: acc.clip / T,
          vf_clipfrac: acc.vclip / T,
          entropy: acc.ent / T,
          value_loss: acc.vf / T,
          pg_loss: acc.pg / T,
          ratio: acc.ratio / T,
          kl_coef: klCoef,
          response_length: mean(ro.responses.map((r) => r.length)),
          eos_fraction: mean(ro.eos.map((e) => (e ? 1 : 0))),
          lr: lastLr,
          grad_norm: acc.n ? acc.gn / acc.n : 0,
          value_grad_norm: acc.n ? acc.vgn / acc.n : 0,
          tokens_per_sec: seconds > 0 ? seqTokens / seconds : 0,
          gen_tokens_per_sec: genSeconds > 0 ? ro.genTokens / genSeconds : 0,
          update_tokens_per_sec: updSeconds > 0 ? acc.updTokens / updSeconds : 0,
          elapsed_s: (performance.now() - t0) / 1000,
        } as PpoStepMetrics;
        fs.writeSync(metricsFd, JSON.stringify(m) + '\n');
        hooks.onStep?.(m, { totalSteps });
      }
      if (evalPrompts.length) {
        evalAfter = await evaluate();
        log(`ppo: eval after: reward ${evalAfter.reward.toFixed(4)}, kl ${evalAfter.kl.toFixed(4)}, response length ${evalAfter.responseLength.toFixed(1)}`);
      }
      trainer.useAdapter('policy');
      await trainer.saveLora(cfg.out, path.resolve(cfg.model));
      trainer.useAdapter('critic');
      await trainer.saveLora(path.join(cfg.out, 'critic'), path.resolve(cfg.model));
      trainer.useAdapter('policy');
    } finally {
      fs.closeSync(metricsFd);
      stopper.dispose();
    }
    const seconds = (performance.now() - t0) / 1000;
    const interrupted = stopper.requested && steps < totalSteps;
    fs.writeFileSync(
      path.join(cfg.out, 'ppo_config.json'),
      JSON.stringify({ rlhf_native_version: packageVersion(), ...cfg, total_steps: totalSteps, steps_done: steps, optimizer_steps: optSteps, kl_coef_final: kl.value, critic_init: criticInit, interrupted, skipped_updates: skippedUpdates }, null, 2) + '\n',
    );
    const result: PpoResult = {
      out: cfg.out,
      steps,
      totalSteps,
      optimizerSteps: optSteps,
      interrupted,
      signal: stopper.signal,
      skippedUpdates,
      initialReward,
      finalReward,
      finalKl,
      klCoef: kl.value,
      eval: evalBefore && evalAfter ? { before: evalBefore, after: evalAfter } : null,
      prompts: prompts.length,
      trainableParameters: { policy: policyParams, critic: criticParams },
      criticInit,
      seconds,
      metricsFile,
      config: cfg,
    };
    if (hooks.keepModel) {
      keep = true;
      result.model = model;
      result.trainer = trainer;
    }
    return result;
  } finally {
    ownedReward?.dispose();
    if (!keep) model.dispose();
  }
}
