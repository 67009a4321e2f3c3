/**
 * The DPO stage (`rlhf-native dpo`): Direct Preference Optimization
 * (Rafailov et al. 2023) of a causal LM on preference pairs, with a LoRA
 * adapter (default, PEFT layout) or every weight (`full`); TRL's DPOTrainer
 * semantics (loss_type "sigmoid" with label smoothing) on the native engine.
 * See docs/dpo.md.
 *
 * Policy: the base plus the trainable adapter (or the base itself with
 * `full`). Reference: the model before training — the base with adapters
 * disabled for a new adapter and for full training, the base plus the
 * loaded adapter with `adapter`. Its sequence log-probs are computed once,
 * for every training and eval pair, before the first step (TRL's
 * precompute_ref_log_probs), so full training needs no second copy of the
 * weights.
 *
 * One optimizer step: for each of `gradAccum` micro-batches of `batchSize`
 * pairs, one training forward over the chosen rows followed by the rejected
 * rows -> sequence log-prob sums over the completion tokens -> `dpo_loss`
 * (native op: loss, statistics and the gradients of the sums) -> each
 * pair's gradient broadcast onto its completion tokens' dlogp -> backward;
 * then step (AdamW or SGD, global-norm clipping, the scheduled learning
 * rate) and zeroGrad. Each micro-batch's gradient is scaled by its share of
 * the step's pairs, so the accumulated gradient is that of the mean loss
 * over every pair of the step.
 */
import { arg, finite, nonNegInt, posInt } from './options';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { callNative, RlhfError } from '../errors';
import { native, type NativeForwardResult } from '../native';
import { loadModel, type ForwardOutput, type Model } from '../engine/model';
import { GPT2_LORA_TARGETS, LLAMA_LORA_TARGETS, loraModules, type Trainer } from '../engine/train';
import { readAdapterConfig } from '../model/peft';
import { openModelFolder } from '../model/folder';
import { loadTokenizer, type Tokenizer } from '../tokenizer/tokenizer';
import { planSteps, splitEval, stepsPerEpoch } from '../data/sft-data';
import { identicalWarning, loadPreferenceData, type PreferenceDataStats, type PreferenceExample } from '../data/preference-data';
import { LR_SCHEDULES, lrSchedule, type LrScheduleKind } from './schedule';
import { noDecayNames } from './sft';
import { packageVersion } from '../info';
import { checkWritableDir } from '../run/atomic';
import { stopOnSignals } from '../run/signals';
import { checkNanPolicy, nonFinite, numericStop, type NanPolicy } from './numerics';
import { DEVICES, type Device } from '../info';

export const DPO_LOSS_TYPES = ['sigmoid'] as const;
export type DpoLossType = (typeof DPO_LOSS_TYPES)[number];

export interface DpoConfig {
  /** Base model folder (Hugging Face layout, causal LM): the policy's starting point and the reference. Required. */
  model: string;
  /** Preference pairs, JSONL (formats: lib/data/preference-data.ts). Required. */
  data: string;
  /** Output folder: the adapter (or the full model), metrics.jsonl, dpo_config.json. Required. */
  out: string;
  /** Continue training this PEFT LoRA adapter (it is also the reference: the policy before training). */
  adapter?: string | null;
  /** Train every weight instead of a LoRA adapter. Default false. */
  full?: boolean;
  /** LoRA rank. Default 16 (TRL's ModelConfig.lora_r). */
  loraR?: number;
  /** LoRA alpha. Default 32 (TRL's ModelConfig.lora_alpha). */
  loraAlpha?: number;
  /** PEFT module names, or 'all-linear'. Default all-linear. */
  loraTargets?: readonly string[] | 'all-linear';
  /** rsLoRA scaling alpha / sqrt(r). Default false. */
  rslora?: boolean;
  /** Inverse temperature of the implicit reward; higher stays closer to the reference. Default 0.1 (TRL's DPOConfig.beta, the paper's). */
  beta?: number;
  /** Conservative-DPO label smoothing in [0, 0.5). Default 0 (TRL). */
  labelSmoothing?: number;
  /** Only 'sigmoid' (the paper's loss; TRL's default). */
  lossType?: DpoLossType;
  /** 'adamw' (torch.optim.AdamW) or 'sgd'. Default 'adamw'. */
  optimizer?: 'adamw' | 'sgd';
  /** Peak learning rate. Default 5e-6 with LoRA, 5e-7 with full training (TRL's trl/scripts/dpo.py). */
  lr?: number;
  adamBeta1?: number;
  adamBeta2?: number;
  adamEpsilon?: number;
  momentum?: number;
  /** Decoupled weight decay (biases and norm weights exempt). Default 0. */
  weightDecay?: number;
  /** Global gradient-norm clipping; 0 disables. Default 1.0. */
  maxGradNorm?: number;
  /** 'constant', 'linear' or 'cosine'. Default 'linear'. */
  lrSchedule?: LrScheduleKind;
  warmupSteps?: number;
  /** Optimizer steps; > 0 overrides epochs. Default 0. */
  steps?: number;
  /** Passes over the pairs. Default 1 (TRL's example scripts). */
  epochs?: number;
  /** Pairs per micro-batch (each is two sequences in the forward). Default 8. */
  batchSize?: number;
  gradAccum?: number;
  /** Chosen and rejected sequences are cut to this many tokens (and to the model's context). Default 1024 (TRL's DPOConfig.max_length). */
  maxLen?: number;
  /** LoRA initialisation, shuffling and the eval split. Default 42. */
  seed?: number;
  shuffle?: boolean;
  /** Held-out preference JSONL. Default none. */
  evalData?: string | null;
  /** Hold out this fraction of the pairs (seeded) instead. Default 0. */
  evalFraction?: number;
  /** Evaluate every N steps (always before the first step and at the end); 0: start and end only. Default 0. */
  evalSteps?: number;
  /** Eval (and reference precompute) micro-batch pairs. Default batchSize. */
  evalBatchSize?: number;
  /** A step with a NaN/infinite loss or gradient: 'stop' the run (E_NUMERIC) or 'skip' the step (lib/stages/numerics.ts). Default 'stop'. */
  nanPolicy?: NanPolicy;
  device?: Device;
}

export type ResolvedDpoConfig = Required<Omit<DpoConfig, 'adapter' | 'evalData' | 'loraTargets'>> & {
  adapter: string | null;
  evalData: string | null;
  loraTargets: string[] | 'all-linear';
};

export const DPO_DEFAULTS = {
  full: false,
  loraR: 16,
  loraAlpha: 32,
  loraTargets: 'all-linear' as const,
  rslora: false,
  beta: 0.1,
  labelSmoothing: 0,
  lossType: 'sigmoid' as const,
  optimizer: 'adamw' as const,
  lrLora: 5e-6,
  lrFull: 5e-7,
  adamBeta1: 0.9,
  adamBeta2: 0.999,
  adamEpsilon: 1e-8,
  momentum: 0,
  weightDecay: 0,
  maxGradNorm: 1,
  lrSchedule: 'linear' as const,
  warmupSteps: 0,
  steps: 0,
  epochs: 1,
  batchSize: 8,
  gradAccum: 1,
  maxLen: 1024,
  seed: 42,
  shuffle: false,
  evalFraction: 0,
  evalSteps: 0,
  nanPolicy: 'stop' as NanPolicy,
  device: 'auto' as const,
};

/** Means over pairs (TRL's names without the prefix). */
export interface DpoPairMetrics {
  loss: number;
  /** beta (policy - reference) sequence log-prob of the chosen / rejected completions. */
  rewardsChosen: number;
  rewardsRejected: number;
  /** Fraction of pairs whose chosen reward is above the rejected one. */
  accuracy: number;
  /** rewardsChosen - rewardsRejected. */
  margin: number;
  /** Policy sequence log-probs (sums over the completion tokens). */
  logpsChosen: number;
  logpsRejected: number;
  pairs: number;
}

/** One line of metrics.jsonl (step 0: the eval before training, eval keys only). */
export interface DpoStepMetrics {
  step: number;
  epoch: number;
  loss?: number;
  'rewards/chosen'?: number;
  'rewards/rejected'?: number;
  'rewards/accuracies'?: number;
  'rewards/margins'?: number;
  'logps/chosen'?: number;
  'logps/rejected'?: number;
  lr?: number;
  grad_norm?: number;
  /** Pairs in the step. */
  pairs?: number;
  /** Real input tokens (chosen + rejected sequences) of the step. */
  input_tokens?: number;
  tokens_per_sec?: number;
  elapsed_s: number;
  eval_loss?: number;
  'eval_rewards/chosen'?: number;
  'eval_rewards/rejected'?: number;
  'eval_rewards/accuracies'?: number;
  'eval_rewards/margins'?: number;
  'eval_logps/chosen'?: number;
  'eval_logps/rejected'?: number;
}

export interface DpoHooks {
  onStep?: (m: DpoStepMetrics, info: { totalSteps: number }) => void;
  log?: (line: string) => void;
  signal?: AbortSignal;
  /** Install a SIGINT handler for the run (default true): first ^C finishes the step and saves, a second exits (130). */
  handleSigint?: boolean;
  /** Return the model and trainer without disposing them (the caller disposes the model). */
  keepModel?: boolean;
}

export interface DpoResult {
  out: string;
  saved: 'adapter' | 'model';
  steps: number;
  totalSteps: number;
  epochs: number;
  interrupted: boolean;
  /** The signal that stopped the run (SIGINT, SIGTERM), or null. */
  signal: NodeJS.Signals | null;
  /** Steps not applied because their loss or gradient was NaN/infinite (nanPolicy 'skip'). */
  skippedSteps: number[];
  initialLoss: number | null;
  finalLoss: number | null;
  /** Eval pairs before the first step and after the last (null without an eval set). */
  initialEval: DpoPairMetrics | null;
  finalEval: DpoPairMetrics | null;
  trainableParameters: number;
  trainPairs: number;
  evalPairs: number;
  data: PreferenceDataStats;
  seconds: number;
  tokensPerSec: number;
  metricsFile: string;
  config: ResolvedDpoConfig;
  model?: Model;
  trainer?: Trainer;
}


/** Fills in the defaults and checks every value (E_ARGUMENT naming the option; E_UNSUPPORTED for another loss type). */
export function resolveDpoConfig(cfg: DpoConfig): ResolvedDpoConfig {
  for (const k of ['model', 'data', 'out'] as const) arg(typeof cfg[k] === 'string' && cfg[k].length > 0, `--${k} is required`);
  const full = cfg.full ?? DPO_DEFAULTS.full;
  const loraGiven: string[] = (['loraR', 'loraAlpha', 'loraTargets', 'rslora'] as const).filter((k) => cfg[k] !== undefined);
  const flag = (k: string) => '--' + k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
  if (full) {
    arg(!cfg.adapter, '--adapter and --full cannot be combined (full training trains the base weights; merge the adapter first)');
    arg(loraGiven.length === 0, `LoRA options do not apply with --full: ${loraGiven.map(flag).join(', ')}`);
  }
  if (cfg.adapter) arg(loraGiven.length === 0, `${loraGiven.map(flag).join(', ')} cannot be given with --adapter: r, alpha and targets come from the adapter's adapter_config.json`);
  const lossType = cfg.lossType ?? DPO_DEFAULTS.lossType;
  if (!(DPO_LOSS_TYPES as readonly string[]).includes(lossType))
    throw new RlhfError('E_UNSUPPORTED', `--loss-type ${lossType} is not supported: only sigmoid (the DPO paper's loss; use --label-smoothing for conservative DPO)`);
  const optimizer = cfg.optimizer ?? DPO_DEFAULTS.optimizer;
  arg(optimizer === 'adamw' || optimizer === 'sgd', `--optimizer must be adamw or sgd, got ${optimizer}`);
  const lrScheduleKind = cfg.lrSchedule ?? DPO_DEFAULTS.lrSchedule;
  arg((LR_SCHEDULES as readonly string[]).includes(lrScheduleKind), `--lr-schedule must be one of ${LR_SCHEDULES.join(', ')}, got ${lrScheduleKind}`);
  const r: ResolvedDpoConfig = {
    model: cfg.model,
    data: cfg.data,
    out: cfg.out,
    adapter: cfg.adapter ?? null,
    full,
    loraR: cfg.loraR ?? DPO_DEFAULTS.loraR,
    loraAlpha: cfg.loraAlpha ?? DPO_DEFAULTS.loraAlpha,
    loraTargets:
      cfg.loraTargets === undefined || cfg.loraTargets === 'all-linear' || (cfg.loraTargets.length === 1 && cfg.loraTargets[0] === 'all-linear') ? 'all-linear' : [...cfg.loraTargets],
    rslora: cfg.rslora ?? DPO_DEFAULTS.rslora,
    beta: cfg.beta ?? DPO_DEFAULTS.beta,
    labelSmoothing: cfg.labelSmoothing ?? DPO_DEFAULTS.labelSmoothing,
    lossType,
    optimizer,
    lr: cfg.lr ?? (full ? DPO_DEFAULTS.lrFull : DPO_DEFAULTS.lrLora),
    adamBeta1: cfg.adamBeta1 ?? DPO_DEFAULTS.adamBeta1,
    adamBeta2: cfg.adamBeta2 ?? DPO_DEFAULTS.adamBeta2,
    adamEpsilon: cfg.adamEpsilon ?? DPO_DEFAULTS.adamEpsilon,
    momentum: cfg.momentum ?? DPO_DEFAULTS.momentum,
    weightDecay: cfg.weightDecay ?? DPO_DEFAULTS.weightDecay,
    maxGradNorm: cfg.maxGradNorm ?? DPO_DEFAULTS.maxGradNorm,
    lrSchedule: lrScheduleKind,
    warmupSteps: cfg.warmupSteps ?? DPO_DEFAULTS.warmupSteps,
    steps: cfg.steps ?? DPO_DEFAULTS.steps,
    epochs: cfg.epochs ?? DPO_DEFAULTS.epochs,
    batchSize: cfg.batchSize ?? DPO_DEFAULTS.batchSize,
    gradAccum: cfg.gradAccum ?? DPO_DEFAULTS.gradAccum,
    maxLen: cfg.maxLen ?? DPO_DEFAULTS.maxLen,
    seed: cfg.seed ?? DPO_DEFAULTS.seed,
    shuffle: cfg.shuffle ?? DPO_DEFAULTS.shuffle,
    evalData: cfg.evalData ?? null,
    evalFraction: cfg.evalFraction ?? DPO_DEFAULTS.evalFraction,
    evalSteps: cfg.evalSteps ?? DPO_DEFAULTS.evalSteps,
    evalBatchSize: cfg.evalBatchSize ?? cfg.batchSize ?? DPO_DEFAULTS.batchSize,
    nanPolicy: checkNanPolicy(cfg.nanPolicy ?? DPO_DEFAULTS.nanPolicy),
    device: cfg.device ?? DPO_DEFAULTS.device,
  };
  arg(posInt(r.loraR), `--lora-r must be a positive integer, got ${r.loraR}`);
  arg(finite(r.loraAlpha) && r.loraAlpha > 0, `--lora-alpha must be a positive number, got ${r.loraAlpha}`);
  arg(r.loraTargets === 'all-linear' || r.loraTargets.length > 0, '--lora-targets must name at least one module (or all-linear)');
  arg(finite(r.beta) && r.beta > 0, `--beta must be a positive number, got ${r.beta}`);
  arg(finite(r.labelSmoothing) && r.labelSmoothing >= 0 && r.labelSmoothing < 0.5, `--label-smoothing must be in [0, 0.5), got ${r.labelSmoothing}`);
  arg(finite(r.lr) && r.lr >= 0, `--lr must be a number >= 0, got ${r.lr}`);
  arg(finite(r.adamBeta1) && r.adamBeta1 >= 0 && r.adamBeta1 < 1, `--adam-beta1 must be in [0, 1), got ${r.adamBeta1}`);
  arg(finite(r.adamBeta2) && r.adamBeta2 >= 0 && r.adamBeta2 < 1, `--adam-beta2 must be in [0, 1), got ${r.adamBeta2}`);
  arg(finite(r.adamEpsilon) && r.adamEpsilon > 0, `--adam-epsilon must be > 0, got ${r.adamEpsilon}`);
  arg(finite(r.momentum) && r.momentum >= 0 && r.momentum < 1, `--momentum must be in [0, 1), got ${r.momentum}`);
  arg(finite(r.weightDecay) && r.weightDecay >= 0, `--weight-decay must be >= 0, got ${r.weightDecay}`);
  arg(finite(r.maxGradNorm) && r.maxGradNorm >= 0, `--max-grad-norm must be >= 0 (0 disables clipping), got ${r.maxGradNorm}`);
  arg(nonNegInt(r.warmupSteps), `--warmup-steps must be a non-negative integer, got ${r.warmupSteps}`);
  arg(nonNegInt(r.steps), `--steps must be a non-negative integer (0: use --epochs), got ${r.steps}`);
  arg(finite(r.epochs) && r.epochs > 0, `--epochs must be a positive number, got ${r.epochs}`);
  arg(posInt(r.batchSize), `--batch-size must be a positive integer, got ${r.batchSize}`);
  arg(posInt(r.gradAccum), `--grad-accum must be a positive integer, got ${r.gradAccum}`);
  arg(Number.isInteger(r.maxLen) && r.maxLen >= 2, `--max-len must be an integer >= 2, got ${r.maxLen}`);
  arg(nonNegInt(r.seed), `--seed must be a non-negative integer, got ${r.seed}`);
  arg(finite(r.evalFraction) && r.evalFraction >= 0 && r.evalFraction < 1, `--eval-fraction must be in [0, 1), got ${r.evalFraction}`);
  arg(!(r.evalFraction > 0 && r.evalData), '--eval-fraction and --eval-data cannot be combined');
  arg(nonNegInt(r.evalSteps), `--eval-steps must be a non-negative integer, got ${r.evalSteps}`);
  arg(posInt(r.evalBatchSize), `--eval-batch-size must be a positive integer, got ${r.evalBatchSize}`);
  arg(DEVICES.includes(r.device), `--device must be auto, cpu or cuda, got ${r.device}`);
  arg(path.resolve(r.out) !== path.resolve(r.model), '--out must differ from --model (the base model folder is never overwritten)');
  return r;
}

// ------------------------------------------------------------------ batches and the loss

/**
 * A micro-batch for one forward: the chosen sequences (rows 0..b-1), then
 * the rejected ones (rows b..2b-1), right-padded by the engine to `seq`.
 * Row r's completion is scored by logp positions [spans[r][0], spans[r][1])
 * of its row: logp[t] predicts ids[t+1], so the first completion token
 * (index from) is predicted at t = from - 1 and the last at t = length - 2.
 */
export interface DpoBatch {
  inputIds: number[][];
  pairs: number;
  seq: number;
  spans: [number, number][];
  /** Real (non-padding) input tokens. */
  tokens: number;
}

export function packDpoBatch(examples: readonly PreferenceExample[]): DpoBatch {
  if (examples.length === 0) throw new RlhfError('E_ARGUMENT', 'a DPO batch needs at least one pair');
  const inputIds = [...examples.map((e) => e.chosen), ...examples.map((e) => e.rejected)];
  const spans: [number, number][] = [
    ...examples.map((e): [number, number] => [e.chosenFrom - 1, e.chosen.length - 1]),
    ...examples.map((e): [number, number] => [e.rejectedFrom - 1, e.rejected.length - 1]),
  ];
  return { inputIds, pairs: examples.length, seq: Math.max(...inputIds.map((r) => r.length)), spans, tokens: inputIds.reduce((s, r) => s + r.length, 0) };
}

/** Per-row sums of logp over each completion span (flat logp [2b * (seq - 1)]), summed in fp64 by the native sft_loss op. */
export function sequenceLogps(flatLogp: Float32Array, batch: DpoBatch): { chosen: Float32Array; rejected: Float32Array } {
  const w = batch.seq - 1, b = batch.pairs;
  const sums = new Float32Array(2 * b);
  const loss = new Float32Array(1), stats = new Float32Array(2);
  const op = native();
  batch.spans.forEach(([a, e], row) => {
    const logp = flatLogp.subarray(row * w + a, row * w + e);
    callNative(() => op.runOp('sft_loss', { n: logp.length, logp, loss, stats }));
    sums[row] = -stats[1];
  });
  return { chosen: sums.subarray(0, b), rejected: sums.subarray(b) };
}

/** dlogp for backward: each row's sequence gradient on every token of its completion span, 0 elsewhere. */
export function broadcastSequenceGrads(batch: DpoBatch, dChosen: Float32Array, dRejected: Float32Array): Float32Array {
  const w = batch.seq - 1, b = batch.pairs;
  const dlogp = new Float32Array(2 * b * w);
  batch.spans.forEach(([a, e], row) => dlogp.fill(row < b ? dChosen[row] : dRejected[row - b], row * w + a, row * w + e));
  return dlogp;
}

export interface DpoLossResult {
  /** Mean loss over the pairs. */
  loss: number;
  accuracy: number;
  rewardsChosen: number;
  rewardsRejected: number;
  margin: number;
  /** Gradients of loss * gradScale w.r.t. the policy sums (with withGrad). */
  dChosen?: Float32Array;
  dRejected?: Float32Array;
}

/** The sigmoid DPO loss over b pairs through the native `dpo_loss` op (docs/losses.md). */
export function dpoLoss(
  x: { policyChosen: Float32Array; policyRejected: Float32Array; refChosen: Float32Array; refRejected: Float32Array },
  opts: { beta: number; labelSmoothing: number; gradScale?: number; withGrad?: boolean },
): DpoLossResult {
  const b = x.policyChosen.length;
  const loss = new Float32Array(1), stats = new Float32Array(4);
  const withGrad = opts.withGrad ?? true;
  const dChosen = withGrad ? new Float32Array(b) : undefined, dRejected = withGrad ? new Float32Array(b) : undefined;
  callNative(() =>
    native().runOp('dpo_loss', {
      b,
      ...x,
      beta: opts.beta,
      labelSmoothing: opts.labelSmoothing,
      gradScale: opts.gradScale ?? 1,
      loss,
      dpolicyChosen: dChosen,
      dpolicyRejected: dRejected,
      stats,
    }),
  );
  return { loss: loss[0], accuracy: stats[0], rewardsChosen: stats[1], rewardsRejected: stats[2], margin: stats[3], dChosen, dRejected };
}

/** Reference sequence log-probs, per pair. */
export interface RefLogps {
  chosen: Float32Array;
  rejected: Float32Array;
}

/** Sequence log-probs of every pair under the model as it is now (its active adapter, or none), in micro-batches of `batchSize` pairs. */
export async function pairLogps(model: Model, examples: readonly PreferenceExample[], batchSize: number): Promise<RefLogps> {
  const out: RefLogps = { chosen: new Float32Array(examples.length), rejected: new Float32Array(examples.length) };
  for (let i = 0; i < examples.length; i += batchSize) {
    const batch = packDpoBatch(examples.slice(i, i + batchSize));
    const f = await model.forward({ inputIds: batch.inputIds, logp: true });
    const s = sequenceLogps(f.flat.logp!, batch);
    out.chosen.set(s.chosen, i);
    out.rejected.set(s.rejected, i);
  }
  return out;
}

/** Pair-weighted running means of the loss statistics (over micro-batches, or eval batches). */
class PairMeans {
  private s = { loss: 0, rewardsChosen: 0, rewardsRejected: 0, accuracy: 0, margin: 0, logpsChosen: 0, logpsRejected: 0 };
  pairs = 0;
  add(r: DpoLossResult, logps: { chosen: Float32Array; rejected: Float32Array }): void {
    const b = logps.chosen.length;
    const mean = (a: Float32Array) => a.reduce((x, y) => x + y, 0) / b;
    this.s.loss += r.loss * b;
    this.s.rewardsChosen += r.rewardsChosen * b;
    this.s.rewardsRejected += r.rewardsRejected * b;
    this.s.accuracy += r.accuracy * b;
    this.s.margin += r.margin * b;
    this.s.logpsChosen += mean(logps.chosen) * b;
    this.s.logpsRejected += mean(logps.rejected) * b;
    this.pairs += b;
  }
  result(): DpoPairMetrics {
    const n = this.pairs || 1;
    const s = this.s;
    return {
      loss: s.loss / n,
      rewardsChosen: s.rewardsChosen / n,
      rewardsRejected: s.rewardsRejected / n,
      accuracy: s.accuracy / n,
      margin: s.margin / n,
      logpsChosen: s.logpsChosen / n,
      logpsRejected: s.logpsRejected / n,
      pairs: this.pairs,
    };
  }
}

/** The DPO loss and implicit-reward statistics of `examples` under the model's current weights (no gradients). */
export async function evaluateDpo(
  model: Model,
  examples: readonly PreferenceExample[],
  ref: RefLogps,
  opts: { beta: number; labelSmoothing: number; batchSize: number },
): Promise<DpoPairMetrics> {
  const acc = new PairMeans();
  for (let i = 0; i < examples.length; i += opts.batchSize) {
    const rows = examples.slice(i, i + opts.batchSize);
    const batch = packDpoBatch(rows);
    const f = await model.forward({ inputIds: batch.inputIds, logp: true });
    const pol = sequenceLogps(f.flat.logp!, batch);
    const r = dpoLoss(
      { policyChosen: pol.chosen, policyRejected: pol.rejected, refChosen: ref.chosen.subarray(i, i + rows.length), refRejected: ref.rejected.subarray(i, i + rows.length) },
      { beta: opts.beta, labelSmoothing: opts.labelSmoothing, withGrad: false },
    );
    acc.add(r, pol);
  }
  return acc.result();
}

/**
 * One micro-batch of training: training forward, sequence log-probs, the
 * loss (gradients scaled by `gradScale`), their broadcast onto dlogp, and
 * backward (gradients accumulate). Returns the loss statistics, the policy
 * sums and the dlogp that went into backward.
 */
export async function dpoMicroBatch(
  trainer: Trainer,
  examples: readonly PreferenceExample[],
  ref: RefLogps,
  opts: { beta: number; labelSmoothing: number; gradScale: number },
): Promise<{ loss: DpoLossResult; policy: { chosen: Float32Array; rejected: Float32Array }; dlogp: Float32Array; tokens: number }> {
  const batch = packDpoBatch(examples);
  const f = (await trainer.forward({ inputIds: batch.inputIds, logp: true })) as ForwardOutput & { flat: NativeForwardResult };
  const policy = sequenceLogps(f.flat.logp!, batch);
  const loss = dpoLoss({ policyChosen: policy.chosen, policyRejected: policy.rejected, refChosen: ref.chosen, refRejected: ref.rejected }, { ...opts, withGrad: true });
  const dlogp = broadcastSequenceGrads(batch, loss.dChosen!, loss.dRejected!);
  await trainer.backward({ dlogp });
  return { loss, policy, dlogp, tokens: batch.tokens };
}

function evalKeys(m: DpoPairMetrics): Partial<DpoStepMetrics> {
  return {
    eval_loss: m.loss,
    'eval_rewards/chosen': m.rewardsChosen,
    'eval_rewards/rejected': m.rewardsRejected,
    'eval_rewards/accuracies': m.accuracy,
    'eval_rewards/margins': m.margin,
    'eval_logps/chosen': m.logpsChosen,
    'eval_logps/rejected': m.logpsRejected,
  };
}

function fmtData(s: PreferenceDataStats): string {
  const formats = Object.entries(s.formats).map(([k, v]) => `${v} ${k}`).join(', ');
  return (
    `${s.rows} pairs (${formats}), ${s.tokens} tokens, ${s.completionTokens} completion tokens` +
    (s.truncatedRows ? `, ${s.truncatedRows} truncated` : '') +
    (s.marginRows ? `, ${s.marginRows} with a margin (DPO does not use it)` : '')
  );
}

export async function runDpo(config: DpoConfig, hooks: DpoHooks = {}): Promise<DpoResult> {
  const cfg = resolveDpoConfig(config);
  const log = hooks.log ?? (() => {});
  if (fs.existsSync(cfg.out) && !fs.statSync(cfg.out).isDirectory()) throw new RlhfError('E_ARGUMENT', `--out ${cfg.out} exists and is not a folder`, { where: cfg.out });
  checkWritableDir(cfg.out);
  if (cfg.adapter) readAdapterConfig(cfg.adapter);

  // Data first (bad rows fail before the weights load).
  const folder = openModelFolder(cfg.model);
  const mcfg = folder.config;
  folder.close();
  if (mcfg.head !== 'lm') throw new RlhfError('E_MODEL', `${cfg.model}: DPO needs a causal LM head (this is a ${mcfg.architecture})`, { where: cfg.model });
  if (!cfg.full && !cfg.adapter && cfg.loraTargets !== 'all-linear') loraModules(mcfg, cfg.loraTargets);
  const maxLen = Math.min(cfg.maxLen, mcfg.maxSequenceLength);
  let tok: Tokenizer | undefined;
  const dataOpts = { tokenizer: () => (tok ??= loadTokenizer(cfg.model)), maxLen, vocabSize: mcfg.vocabSize, fallbackEosTokenId: mcfg.eosTokenIds[0] ?? null, stopTokenIds: mcfg.eosTokenIds };
  const data = loadPreferenceData(cfg.data, dataOpts);
  const warn = identicalWarning(cfg.data, data.stats);
  if (warn) log(`dpo: warning: ${warn}`);
  let train = data.examples, evalSet: PreferenceExample[] = [];
  if (cfg.evalFraction > 0) {
    const split = splitEval(data.examples.length, cfg.evalFraction, cfg.seed);
    train = split.train.map((i) => data.examples[i]);
    evalSet = split.eval.map((i) => data.examples[i]);
  } else if (cfg.evalData) {
    const ev = loadPreferenceData(cfg.evalData, dataOpts);
    const w = identicalWarning(cfg.evalData, ev.stats);
    if (w) log(`dpo: warning: ${w}`);
    evalSet = ev.examples;
  }
  log(`dpo: ${cfg.data}: ${fmtData(data.stats)}; max length ${maxLen}`);
  if (evalSet.length) log(`dpo: eval on ${evalSet.length} pairs${cfg.evalData ? ` of ${cfg.evalData}` : ` held out (--eval-fraction ${cfg.evalFraction})`}`);

  const model = await loadModel(cfg.model, {
    device: cfg.device,
    memory: {
      what: `dpo on ${cfg.model}`,
      train: cfg.full ? 'full' : 'lora',
      batch: 2 * Math.max(cfg.batchSize, cfg.evalBatchSize),
      seq: Math.max(2, ...[...train, ...evalSet].flatMap((p) => [p.chosen.length, p.rejected.length])),
      lora: cfg.full ? undefined : { r: cfg.adapter ? readAdapterConfig(cfg.adapter).r : cfg.loraR, targets: cfg.loraTargets },
      optimizer: cfg.optimizer,
      momentum: cfg.momentum,
    },
  });
  let keep = false;
  try {
    const trainer = model.trainer();
    let trainableParameters: number;
    let adapterName: string | null = null;
    if (cfg.full) {
      trainer.enableFullTraining();
      trainableParameters = trainer.trainable().reduce((s, t) => s + t.shape.reduce((a, b) => a * b, 1), 0);
    } else if (cfg.adapter) {
      trainableParameters = trainer.loadLora(cfg.adapter).parameters;
      adapterName = 'default';
    } else {
      const targets = cfg.loraTargets === 'all-linear' ? (mcfg.arch === 'gpt2' ? GPT2_LORA_TARGETS : LLAMA_LORA_TARGETS) : cfg.loraTargets;
      trainableParameters = trainer.createLora({ r: cfg.loraR, alpha: cfg.loraAlpha, rslora: cfg.rslora, targets, seed: cfg.seed }).parameters;
      adapterName = 'default';
    }
    const noDecay = cfg.full ? noDecayNames(trainer.trainable().map((t) => t.name)) : [];

    // The reference: the model before any step. A new adapter is switched off
    // (the frozen base alone); a continued adapter stays on (it is the policy
    // being improved); full training has not changed the base yet.
    const tr0 = performance.now();
    const newAdapter = adapterName !== null && !cfg.adapter;
    if (newAdapter) trainer.useAdapter(null);
    const refTrain = await pairLogps(model, train, cfg.evalBatchSize);
    const refEval = evalSet.length ? await pairLogps(model, evalSet, cfg.evalBatchSize) : null;
    if (newAdapter) trainer.useAdapter(adapterName);
    log(
      `dpo: reference log-probs of ${train.length + evalSet.length} pairs (${cfg.adapter ? `base + ${cfg.adapter}` : 'base model'}) in ${((performance.now() - tr0) / 1000).toFixed(1)}s`,
    );

    const spe = stepsPerEpoch(train.length, cfg.batchSize, cfg.gradAccum);
    const totalSteps = cfg.steps > 0 ? cfg.steps : Math.max(1, Math.ceil(cfg.epochs * spe));
    const lrAt = lrSchedule({ kind: cfg.lrSchedule, lr: cfg.lr, warmupSteps: cfg.warmupSteps, totalSteps });
    log(
      `dpo: ${cfg.full ? 'full training' : cfg.adapter ? `continuing the LoRA adapter ${cfg.adapter}` : `LoRA r ${cfg.loraR} alpha ${cfg.loraAlpha}`}, ` +
        `${trainableParameters} trainable parameters; beta ${cfg.beta}${cfg.labelSmoothing ? `, label smoothing ${cfg.labelSmoothing}` : ''}; ` +
        `${totalSteps} steps of ${cfg.batchSize} x ${cfg.gradAccum} pairs (${spe} per epoch)`,
    );

    fs.mkdirSync(cfg.out, { recursive: true });
    const metricsFile = path.join(cfg.out, 'metrics.jsonl');
    const metricsFd = fs.openSync(metricsFile, 'w');

    const stopper = stopOnSignals({ label: 'dpo', log, handleSignals: hooks.handleSigint ?? true, abort: hooks.signal });
    const skippedSteps: number[] = [];

    const evalOpts = { beta: cfg.beta, labelSmoothing: cfg.labelSmoothing, batchSize: cfg.evalBatchSize };
    let steps = 0, epochs = 0, initialLoss: number | null = null, finalLoss: number | null = null;
    let initialEval: DpoPairMetrics | null = null, finalEval: DpoPairMetrics | null = null;
    let lastEvalStep = -1, tokensSeen = 0;
    const t0 = performance.now();
    try {
      if (evalSet.length) {
        initialEval = finalEval = await evaluateDpo(model, evalSet, refEval!, evalOpts);
        lastEvalStep = 0;
        const m: DpoStepMetrics = { step: 0, epoch: 0, elapsed_s: (performance.now() - t0) / 1000, ...evalKeys(initialEval) };
        fs.writeSync(metricsFd, JSON.stringify(m) + '\n');
        log(`dpo: before training: eval loss ${initialEval.loss.toFixed(4)}, reward margin ${initialEval.margin.toFixed(4)}, accuracy ${initialEval.accuracy.toFixed(3)}`);
      }
      await trainer.zeroGrad();
      for (const st of planSteps(train.length, totalSteps, { batchSize: cfg.batchSize, gradAccum: cfg.gradAccum, shuffle: cfg.shuffle, seed: cfg.seed })) {
        if (stopper.requested) break;
        const ts = performance.now();
        const stepPairs = st.micro.reduce((s, rows) => s + rows.length, 0);
        const acc = new PairMeans();
        let inputTokens = 0;
        for (const rows of st.micro) {
          const ref: RefLogps = { chosen: Float32Array.from(rows, (i) => refTrain.chosen[i]), rejected: Float32Array.from(rows, (i) => refTrain.rejected[i]) };
          const r = await dpoMicroBatch(
            trainer,
            rows.map((i) => train[i]),
            ref,
            { beta: cfg.beta, labelSmoothing: cfg.labelSmoothing, gradScale: rows.length / stepPairs },
          );
          acc.add(r.loss, r.policy);
          inputTokens += r.tokens;
        }
        const sm = acc.result();
        const lr = lrAt(st.step - 1);
        // A non-finite loss is never stepped on; the engine refuses a non-finite gradient itself (s.skipped).
        const s = !Number.isFinite(sm.loss) ? null : await trainer.step({
          optimizer: cfg.optimizer,
          lr,
          beta1: cfg.adamBeta1,
          beta2: cfg.adamBeta2,
          eps: cfg.adamEpsilon,
          momentum: cfg.momentum,
          weightDecay: cfg.weightDecay,
          maxGradNorm: cfg.maxGradNorm,
          noDecay,
        });
        await trainer.zeroGrad();
        const bad = nonFinite({ loss: sm.loss, gradNorm: s?.gradNorm, skipped: s?.skipped });
        if (bad || !s) {
          if (cfg.nanPolicy === 'stop') throw numericStop('dpo', `step ${st.step}`, bad ?? 'the loss is not finite', { lastGoodStep: steps });
          log(`dpo: step ${st.step} skipped: ${bad} (--nan-policy skip); its gradients were dropped`);
          skippedSteps.push(st.step);
          steps = st.step;
          continue;
        }
        const seconds = (performance.now() - ts) / 1000;
        steps = st.step;
        epochs = st.epochProgress;
        tokensSeen += inputTokens;
        initialLoss ??= sm.loss;
        finalLoss = sm.loss;
        const m: DpoStepMetrics = {
          step: st.step,
          epoch: Number(st.epochProgress.toFixed(4)),
          loss: sm.loss,
          'rewards/chosen': sm.rewardsChosen,
          'rewards/rejected': sm.rewardsRejected,
          'rewards/accuracies': sm.accuracy,
          'rewards/margins': sm.margin,
          'logps/chosen': sm.logpsChosen,
          'logps/rejected': sm.logpsRejected,
          lr,
          grad_norm: s.gradNorm,
          pairs: stepPairs,
          input_tokens: inputTokens,
          tokens_per_sec: seconds > 0 ? inputTokens / seconds : 0,
          elapsed_s: (performance.now() - t0) / 1000,
        };
        const last = st.step === totalSteps || stopper.requested;
        if (evalSet.length && ((cfg.evalSteps > 0 && st.step % cfg.evalSteps === 0) || last)) {
          finalEval = await evaluateDpo(model, evalSet, refEval!, evalOpts);
          Object.assign(m, evalKeys(finalEval));
          lastEvalStep = st.step;
        }
        fs.writeSync(metricsFd, JSON.stringify(m) + '\n');
        hooks.onStep?.(m, { totalSteps });
      }
      if (evalSet.length && lastEvalStep !== steps) finalEval = await evaluateDpo(model, evalSet, refEval!, evalOpts);

      if (cfg.full) await trainer.saveModel(cfg.out, cfg.model);
      else await trainer.saveLora(cfg.out, path.resolve(cfg.model));
    } finally {
      fs.closeSync(metricsFd);
      stopper.dispose();
    }
    const seconds = (performance.now() - t0) / 1000;
    const interrupted = stopper.requested && steps < totalSteps;
    fs.writeFileSync(
      path.join(cfg.out, 'dpo_config.json'),
      JSON.stringify(
        {
          rlhf_native_version: packageVersion(),
          ...cfg,
          reference: cfg.adapter ? `base + ${cfg.adapter}` : 'base',
          total_steps: totalSteps,
          steps_done: steps,
          interrupted,
          skipped_steps: skippedSteps,
          initial_eval: initialEval,
          final_eval: finalEval,
        },
        null,
        2,
      ) + '\n',
    );
    const result: DpoResult = {
      out: cfg.out,
      saved: cfg.full ? 'model' : 'adapter',
      steps,
      totalSteps,
      epochs,
      interrupted,
      signal: stopper.signal,
      skippedSteps,
      initialLoss,
      finalLoss,
      initialEval,
      finalEval,
      trainableParameters,
      trainPairs: train.length,
      evalPairs: evalSet.length,
      data: data.stats,
      seconds,
      tokensPerSec: seconds > 0 ? tokensSeen / seconds : 0,
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
    if (!keep) model.dispose();
  }
}
