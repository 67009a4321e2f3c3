/**
 * HIR's options (one table: the shared groups of lib/train/options.ts plus
 * its own rows), its metrics records and its result. Defaults fit this
 * package's small models; the ones taken from the paper's code (Zhang et al.
 * 2023, tianjunz/HIR) are marked "paper".
 */
import * as path from 'node:path';
import type { Device } from '../../info';
import type { RewardSource } from '../../reward/sources';
import { checkRewardOptions, REWARD_OPTIONS, type RewardOptions } from '../../reward/options';
import {
  arg,
  BATCH_OPTIONS,
  checks,
  CHECKPOINT_OPTIONS,
  describe,
  EVAL_OPTIONS,
  LORA_OPTIONS,
  OPTIMIZER_OPTIONS,
  resolveOptions,
  RUN_OPTIONS,
  withDefaults,
  type CheckpointOptions,
  type OptionTable,
  type Resolved,
} from '../../train/options';
import type { StageHooks } from '../../train/stage';

export interface HirConfig extends CheckpointOptions, RewardOptions {
  /** Policy model folder (Hugging Face causal LM). Required. */
  model: string;
  /** Prompts, JSONL: {"prompt"} or {"messages"}, plus whatever the reward source or relabel module reads. Required. */
  data: string;
  /** Stage folder: the PEFT adapter, hir_config.json, metrics.jsonl, samples.jsonl, checkpoints/. Required. */
  out: string;
  /** Continue this PEFT LoRA adapter. Default: a new one. */
  adapter?: string | null;
  loraR?: number;
  loraAlpha?: number;
  loraTargets?: string[] | 'all-linear';
  rslora?: boolean;
  // ---- rewards (the checker); the same options as rs and ppo take
  rewardBatchSize?: number;
  // ---- relabelling
  /** An output is correct when its reward is >= this. Default 1 (exact-match rewards are 0 or 1). */
  threshold?: number;
  /** The instruction a wrong output is relabelled with: {prompt} is the original instruction. */
  wrongTemplate?: string;
  /** A JS module (.js/.mjs/.cjs) exporting relabel({prompt, completion, row, reward}) -> {instruction, negative?}. Default none. */
  relabelModule?: string | null;
  // ---- the loop
  /** Sample / relabel / train iterations. Default 4 (paper: 30). */
  iterations?: number;
  /** Samples per prompt each iteration. Default 4. */
  samplesPerPrompt?: number;
  /** Sampling temperature. Default 1.0 (paper). */
  temperature?: number;
  topP?: number;
  topK?: number;
  /** Longest output, in tokens. Default 32. */
  maxNewTokens?: number;
  /** Sequences per generate call. Default 16. */
  genBatchSize?: number;
  // ---- training on the buffer
  /** Passes over the whole buffer per iteration. Default 2 (paper: 10). */
  epochs?: number;
  /** Examples (each a positive and a negative row) per micro-batch. Default 8. */
  batchSize?: number;
  /** Micro-batches per optimizer step. Default 1. */
  gradAccum?: number;
  /** AdamW, constant learning rate (paper: 5e-4). */
  lr?: number;
  adamBeta1?: number;
  adamBeta2?: number;
  adamEpsilon?: number;
  weightDecay?: number;
  maxGradNorm?: number;
  /** eps of the label smoothing and of the contrastive term. Default 0.2 (paper). */
  labelSmoothing?: number;
  /** Weight of the contrastive term. Default 1 (paper). */
  contrastiveCoef?: number;
  /** Weight of the entropy bonus. Default 0.001 (paper). */
  entropyCoef?: number;
  // ---- evaluation
  evalData?: string | null;
  /** Hold out this fraction of the prompts (seeded). Default 0.1 (0 with evalData). */
  evalFraction?: number;
  /** Samples per held-out prompt (the sampling options, one fixed seed before and after). Default 4. */
  evalSamples?: number;
  seed?: number;
  device?: Device;
  threads?: number;
}

export type ResolvedHirConfig = Resolved<Omit<HirConfig, 'loraTargets'>> & { loraTargets: string[] | 'all-linear' };

export const DEFAULT_WRONG_TEMPLATE = '{prompt}\nGive a wrong answer.';

export const HIR_DEFAULTS = {
  loraR: 16,
  loraAlpha: 32,
  loraTargets: 'all-linear' as const,
  rslora: false,
  safetyThreshold: 0.15,
  rewardBatchSize: 8,
  threshold: 1,
  wrongTemplate: DEFAULT_WRONG_TEMPLATE,
  iterations: 4,
  samplesPerPrompt: 4,
  temperature: 1.0,
  topP: 1,
  topK: 0,
  maxNewTokens: 32,
  genBatchSize: 16,
  epochs: 2,
  batchSize: 8,
  gradAccum: 1,
  lr: 5e-4,
  adamBeta1: 0.9,
  adamBeta2: 0.999,
  adamEpsilon: 1e-8,
  weightDecay: 0,
  maxGradNorm: 1,
  labelSmoothing: 0.2,
  contrastiveCoef: 1,
  entropyCoef: 0.001,
  evalFraction: 0.1,
  evalSamples: 4,
  seed: 42,
  device: 'auto' as const,
  checkpointSteps: 1,
};

const HIR = 'HIR';
const { model, data, out, seed, device, threads } = RUN_OPTIONS;
const { adapter, loraR, loraAlpha, loraTargets, rslora } = LORA_OPTIONS;
const { lr, adamBeta1, adamBeta2, adamEpsilon, weightDecay, maxGradNorm } = OPTIMIZER_OPTIONS;

/** The reward (checker) options, one place: the same rows as rs. */
export const HIR_REWARD_ROWS = {
  ...REWARD_OPTIONS,
  rewardBatchSize: { type: 'number', check: checks.posInt(), describe: 'sequences per reward-model forward', group: 'Rewards' },
} satisfies Partial<OptionTable<HirConfig>>;

const templateCheck = (v: unknown) => (typeof v === 'string' && v.includes('{prompt}') ? null : `must contain {prompt} (the original instruction), got ${JSON.stringify(v)}`);

const ROWS: OptionTable<HirConfig> = {
  model,
  data,
  out,
  adapter,
  loraR,
  loraAlpha,
  loraTargets,
  rslora,
  ...HIR_REWARD_ROWS,
  threshold: { type: 'number', check: checks.number(), describe: 'an output is correct when its reward is >= this', group: 'Relabelling' },
  wrongTemplate: { type: 'string', check: templateCheck, describe: 'the instruction of a wrong output; {prompt} is the original (chat prompts: the last user message)', group: 'Relabelling' },
  relabelModule: { type: 'string', describe: 'JS module (.js/.mjs/.cjs) exporting relabel({prompt, completion, row, reward}) -> {instruction, negative?}', group: 'Relabelling' },
  iterations: { type: 'number', check: checks.posInt(), describe: 'sample / relabel / train iterations (paper: 30)', group: HIR },
  samplesPerPrompt: { type: 'number', check: checks.posInt(), describe: 'samples per prompt each iteration', group: HIR },
  temperature: { type: 'number', check: checks.gtZero('HIR samples from the policy'), describe: 'sampling temperature (paper: 1.0)', group: 'Sampling' },
  topP: { type: 'number', check: checks.topP(), describe: 'nucleus sampling', group: 'Sampling' },
  topK: { type: 'number', check: checks.nonNegInt('0: off'), describe: 'top-k sampling; 0: off', group: 'Sampling' },
  maxNewTokens: { type: 'number', check: checks.posInt(), describe: 'longest output, in tokens', group: 'Sampling' },
  genBatchSize: { type: 'number', check: checks.posInt(), describe: 'sequences per generate call', group: 'Sampling' },
  epochs: { type: 'number', check: checks.posInt(), describe: 'passes over the whole buffer per iteration (paper: 10)', group: HIR },
  batchSize: { ...BATCH_OPTIONS.batchSize, describe: 'examples (a positive and a negative row each) per micro-batch', group: HIR },
  gradAccum: { ...BATCH_OPTIONS.gradAccum, group: HIR },
  lr: { ...lr, describe: 'AdamW learning rate, constant (paper: 5e-4)' },
  adamBeta1,
  adamBeta2,
  adamEpsilon,
  weightDecay,
  maxGradNorm,
  labelSmoothing: { type: 'number', check: checks.unitClosed(), describe: 'eps of the label smoothing and the contrastive term (paper: 0.2)', group: 'Loss' },
  contrastiveCoef: { type: 'number', check: checks.nonNeg(), describe: 'weight of the contrastive term (paper: 1)', group: 'Loss' },
  entropyCoef: { type: 'number', check: checks.nonNeg(), describe: 'weight of the entropy bonus (paper: 0.001)', group: 'Loss' },
  evalData: { ...EVAL_OPTIONS.evalData, describe: 'held-out prompts: share correct and mean reward before and after training' },
  evalFraction: { ...EVAL_OPTIONS.evalFraction, describe: 'hold out this fraction of --data instead (0: no evaluation)' },
  evalSamples: { type: 'number', check: checks.posInt(), describe: 'samples per held-out prompt (the same random numbers before and after training)', group: 'Evaluation' },
  seed,
  device,
  threads,
  ...CHECKPOINT_OPTIONS,
};

export const HIR_OPTIONS: OptionTable<HirConfig> = withDefaults(
  describe(ROWS, {
    model: 'policy model folder (a causal LM, e.g. the SFT model)',
    data: 'prompt JSONL: {"prompt"} or {"messages"} per line, plus the fields the checker reads',
    out: 'stage folder: the PEFT adapter, hir_config.json, metrics.jsonl, samples.jsonl, checkpoints/',
    adapter: 'continue this PEFT LoRA adapter',
    seed: 'sampling, shuffling, the eval split and a new adapter',
    checkpointSteps: 'a resumable checkpoint every N iterations into OUT/checkpoints (0: only when stopped)',
    resume: 'continue after the newest finished iteration (the buffer included)',
    nanPolicy: 'a step whose loss or gradient is NaN/infinite: stop the run, or skip the step',
  }),
  HIR_DEFAULTS,
  { evalFraction: { derive: (r) => (r.evalData ? 0 : HIR_DEFAULTS.evalFraction), defaultText: `${HIR_DEFAULTS.evalFraction}; 0 with --eval-data` } },
);

/** Any reward source is configured (the checker). */
export function hasChecker(r: ResolvedHirConfig, hook: boolean): boolean {
  return hook || r.rewardModel !== null || r.judgeModel !== null || r.rewardModule !== null || r.rewardFunction.length > 0;
}

/** Fills in the defaults and checks every value (E_ARGUMENT naming the flag). */
export function resolveHirConfig(cfg: HirConfig, opts: { rewardSource?: boolean } = {}): ResolvedHirConfig {
  for (const k of ['model', 'data', 'out'] as const) arg(typeof cfg[k] === 'string' && cfg[k].length > 0, `--${k} is required`);
  const r = resolveOptions(HIR_OPTIONS, cfg) as ResolvedHirConfig;
  if (opts.rewardSource) arg(r.rewardModel === null && r.safetyModel === null, '--reward-model / --safety-model cannot be given together with a reward source (hooks.reward)');
  // A relabel module may decide alone; otherwise the checker is a reward source (reward models, a module, built-ins).
  const hook = opts.rewardSource === true;
  arg(r.relabelModule !== null || hasChecker(r, hook), '--reward-model is required (or a --relabel-module, --reward-function or --reward-module, or a RewardSource as hooks.reward)');
  if (hasChecker(r, hook)) checkRewardOptions(r, hook);
  if (r.relabelModule !== null) arg(/\.(c|m)?js$/.test(r.relabelModule), `--relabel-module ${r.relabelModule}: expected a .js, .mjs or .cjs file`);
  const outAbs = path.resolve(r.out);
  for (const [flag, dir] of [['--model', r.model], ['--adapter', r.adapter]] as const) arg(!dir || outAbs !== path.resolve(dir), `--out must differ from ${flag}`);
  return r;
}

/** One line of metrics.jsonl. */
export type HirMetrics =
  | {
      phase: 'eval';
      /** 0: before iteration 1; N: after iteration N. */
      iteration: number;
      /** Share of held-out samples that the checker calls correct. */
      correct: number;
      mean_reward: number;
      prompts: number;
      seconds: number;
    }
  | {
      phase: 'iteration';
      iteration: number;
      step: number;
      samples: number;
      /** Share of this iteration's samples that were correct. */
      correct: number;
      mean_reward: number;
      /** New distinct outputs added to the buffer; its size after. */
      added: number;
      buffer: number;
      /** Over the iteration's optimizer steps, token- or pair-weighted. */
      loss: number;
      nll: number;
      contrastive: number;
      /** Share of pairs where the output is more likely under its relabelled instruction. */
      contrastive_accuracy: number;
      entropy: number;
      lr: number;
      grad_norm: number;
      opt_steps: number;
      generate_s: number;
      train_s: number;
      elapsed_s: number;
    };

export interface HirHooks extends Omit<StageHooks<HirMetrics>, 'keepModel'> {
  /** A reward source (the checker) instead of --reward-model; the caller disposes it. */
  reward?: RewardSource;
}

export interface HirEval {
  correct: number;
  meanReward: number;
  prompts: number;
  samples: number;
}

export interface HirResult {
  out: string;
  iterations: number;
  interrupted: boolean;
  signal: NodeJS.Signals | null;
  resumedFrom: number | null;
  evalBefore: HirEval | null;
  evalAfter: HirEval | null;
  /** Distinct outputs in the buffer at the end. */
  buffer: number;
  optSteps: number;
  trainPrompts: number;
  evalPrompts: number;
  /** The final policy: the base folder plus this adapter. */
  policy: { model: string; adapter: string };
  metricsFile: string;
  seconds: number;
  config: ResolvedHirConfig;
}
