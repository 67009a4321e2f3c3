/**
 * The reward-model stage (`rlhf-native rm`): a scalar score head on the SFT
 * model trained on preference pairs with the pairwise (Bradley-Terry) loss,
 * optionally with Llama 2's margin: loss = -log sigmoid(r_chosen - r_rejected
 * - margin). The reward of a sequence is the head's value at its last token
 * (TRL's RewardTrainer, transformers' *ForSequenceClassification). See
 * docs/rm.md.
 *
 * Two ways to hold the reward model, as DESIGN.md section 2 lays out:
 *   - LoRA (default): a LoRA adapter that owns the score head, on the frozen
 *     SFT base, saved in PEFT's SEQ_CLS layout (adapter_config.json +
 *     adapter_model.safetensors with `base_model.model.score.weight`); PPO
 *     later loads it onto the policy's own base as its critic and reward
 *     model, so one copy of the base serves every role.
 *   - full: every weight plus a fresh head, saved as a
 *     `*ForSequenceClassification` folder (`score.weight`, `num_labels: 1`).
 *
 * One optimizer step: for each of `gradAccum` micro-batches of `batchSize`
 * pairs, one forward over the 2 x batchSize sequences (chosen rows, then
 * rejected rows) -> rewards at each row's last token -> `pairwise_loss`
 * (native op) -> backward of the rewards' gradient; then the optimizer step.
 * Every micro-batch scales its gradient by its share of the step's pairs, so
 * the accumulated gradient is that of the mean over all of them.
 */
import { arg, finite, nonNegInt, posInt } from './options';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { callNative, RlhfError } from '../errors';
import { native } from '../native';
import { loadModel, type Model } from '../engine/model';
import { GPT2_LORA_TARGETS, LLAMA_LORA_TARGETS, loraModules, type Trainer } from '../engine/train';
import { openModelFolder } from '../model/folder';
import { readAdapterConfig } from '../model/peft';
import { loadTokenizer, type Tokenizer } from '../tokenizer/tokenizer';
import { loadPreferenceData, identicalWarning, type MarginScale, type PreferenceExample } from '../data/preference-data';
import { planSteps, splitEval, stepsPerEpoch } from '../data/sft-data';
import { LR_SCHEDULES, lrSchedule, type LrScheduleKind } from './schedule';
import { noDecayNames } from './sft';
import { packageVersion } from '../info';
import { StageCheckpoints, type ResumeState } from './checkpoints';
import { openMetrics } from './metrics-file';
import { checkWritableDir } from '../run/atomic';
import { stopOnSignals } from '../run/signals';
import { checkNanPolicy, nonFinite, numericStop, type NanPolicy } from './numerics';
import { DEVICES, type Device } from '../info';

export interface RmConfig {
  /** The SFT model folder (causal LM; its LM head is not used), or a reward model to continue. Required. */
  model: string;
  /** Preference JSONL (lib/data/preference-data.ts). Required. */
  data: string;
  /** Output folder: the adapter (or the full reward model), metrics.jsonl, rm_config.json. Required. */
  out: string;
  /** Continue this saved reward-model adapter (PEFT SEQ_CLS, with its head). */
  adapter?: string | null;
  /** Train every weight and save a *ForSequenceClassification folder. Default false (LoRA + head). */
  full?: boolean;
  /** LoRA rank / alpha / targets / rsLoRA. Defaults 16 / 32 / all-linear / false (as the SFT stage; TRL's ModelConfig). */
  loraR?: number;
  loraAlpha?: number;
  loraTargets?: readonly string[] | 'all-linear';
  rslora?: boolean;
  /** Std of the fresh score head. Default: the model's initializer_range (0.02), as transformers initialises it. */
  headStd?: number;
  /** Use each pair's margin (given, or mapped from its rating) in the loss: Llama 2's margin loss. Default true. */
  useMargin?: boolean;
  /** Column of Llama 2's Table 27 mapping ratings to margins. Default 'small'. */
  marginScale?: MarginScale;
  /** 'adamw' or 'sgd'. Default 'adamw'. */
  optimizer?: 'adamw' | 'sgd';
  /** Peak learning rate. Default 1e-5 with full training (Llama 2's reward models below 70B), 1e-4 with LoRA. */
  lr?: number;
  adamBeta1?: number;
  adamBeta2?: number;
  adamEpsilon?: number;
  momentum?: number;
  /** Decoupled weight decay (biases and norms exempt). Default 0. */
  weightDecay?: number;
  /** Global gradient-norm clipping; 0 disables. Default 1.0. */
  maxGradNorm?: number;
  /** Default 'cosine' (Llama 2: cosine schedule). */
  lrSchedule?: LrScheduleKind;
  /** Warmup as a fraction of the steps. Default 0.03 (Llama 2: 3% of the steps). Ignored when warmupSteps > 0. */
  warmupRatio?: number;
  warmupSteps?: number;
  /** Optimizer steps; > 0 overrides epochs. Default 0. */
  steps?: number;
  /** Default 1 (Llama 2 trains reward models for one epoch: longer overfits). */
  epochs?: number;
  /** Pairs per micro-batch. Default 8. */
  batchSize?: number;
  gradAccum?: number;
  /** Sequences are cut to this many tokens (and to the context). Default 1024 (TRL's RewardConfig max_length). */
  maxLen?: number;
  seed?: number;
  /** Shuffle pairs each epoch. Default true (the Trainer's default sampler shuffles). */
  shuffle?: boolean;
  /** Held-out preference JSONL, or a fraction of the training pairs held out (seeded). Default: none. */
  evalData?: string | null;
  evalFraction?: number;
  /** Evaluate every N steps (and at the end); 0: only at the end. Default 0. */
  evalSteps?: number;
  evalBatchSize?: number;
  /** Write a resumable checkpoint every N steps into out/checkpoints (0: none). Default 0. */
  checkpointSteps?: number;
  /** Checkpoints kept. Default 2. */
  checkpointKeep?: number;
  /** Where checkpoint-<step> folders go. Default out/checkpoints. */
  checkpointDir?: string | null;
  /** Continue from the newest checkpoint in out/checkpoints (same config and data). Default false. */
  resume?: boolean;
  /** With resume: continue from a checkpoint written with other options or data (the differences are logged). Default false. */
  resumeMismatch?: boolean;
  /** A step with a NaN/infinite loss or gradient: 'stop' the run (E_NUMERIC) or 'skip' the step. Default 'stop'. */
  nanPolicy?: NanPolicy;
  device?: Device;
}

export type ResolvedRmConfig = Required<Omit<RmConfig, 'adapter' | 'evalData' | 'checkpointDir' | 'loraTargets' | 'headStd'>> & {
  adapter: string | null;
  evalData: string | null;
  checkpointDir: string | null;
  loraTargets: string[] | 'all-linear';
  headStd: number | null;
};

export const RM_DEFAULTS = {
  full: false,
  loraR: 16,
  loraAlpha: 32,
  loraTargets: 'all-linear' as const,
  rslora: false,
  useMargin: true,
  marginScale: 'small' as MarginScale,
  optimizer: 'adamw' as const,
  lrFull: 1e-5,
  lrLora: 1e-4,
  adamBeta1: 0.9,
  adamBeta2: 0.999,
  adamEpsilon: 1e-8,
  momentum: 0,
  weightDecay: 0,
  maxGradNorm: 1,
  lrSchedule: 'cosine' as const,
  warmupRatio: 0.03,
  warmupSteps: 0,
  steps: 0,
  epochs: 1,
  batchSize: 8,
  gradAccum: 1,
  maxLen: 1024,
  seed: 42,
  shuffle: true,
  evalFraction: 0,
  evalSteps: 0,
  checkpointSteps: 0,
  checkpointKeep: 2,
  resume: false,
  resumeMismatch: false,
  nanPolicy: 'stop' as NanPolicy,
  device: 'auto' as const,
};

/** One line of metrics.jsonl. */
export interface RmStepMetrics {
  step: number;
  epoch: number;
  /** Mean pairwise loss of the step's pairs (with their margins). */
  loss: number;
  /** Fraction of the step's pairs with r_chosen > r_rejected. */
  accuracy: number;
  /** Mean r_chosen - r_rejected. */
  margin: number;
  reward_chosen: number;
  reward_rejected: number;
  lr: number;
  grad_norm: number;
  pairs: number;
  input_tokens: number;
  tokens_per_sec: number;
  elapsed_s: number;
  eval_loss?: number;
  eval_accuracy?: number;
  eval_margin?: number;
}

export interface RmEval {
  loss: number;
  accuracy: number;
  margin: number;
  pairs: number;
}

export interface RmHooks {
  onStep?: (m: RmStepMetrics, info: { totalSteps: number }) => void;
  log?: (line: string) => void;
  signal?: AbortSignal;
  handleSigint?: boolean;
  keepModel?: boolean;
}

export interface RmResult {
  out: string;
  saved: 'adapter' | 'model';
  steps: number;
  totalSteps: number;
  interrupted: boolean;
  /** The signal that stopped the run (SIGINT, SIGTERM), or null. */
  signal: NodeJS.Signals | null;
  /** Steps not applied because their loss or gradient was NaN/infinite (nanPolicy 'skip'). */
  skippedSteps: number[];
  resumedFrom: number | null;
  /** Held-out evaluation before the first step and after the last (null without an eval set). */
  initialEval: RmEval | null;
  finalEval: RmEval | null;
  finalLoss: number | null;
  trainableParameters: number;
  trainPairs: number;
  evalPairs: number;
  seconds: number;
  tokensPerSec: number;
  metricsFile: string;
  config: ResolvedRmConfig;
  model?: Model;
  trainer?: Trainer;
}


export function resolveRmConfig(cfg: RmConfig): ResolvedRmConfig {
  for (const k of ['model', 'data', 'out'] as const) arg(typeof cfg[k] === 'string' && cfg[k].length > 0, `--${k} is required`);
  const full = cfg.full ?? RM_DEFAULTS.full;
  const loraGiven = (['loraR', 'loraAlpha', 'loraTargets', 'rslora', 'headStd'] as const).filter((k) => cfg[k] !== undefined && cfg[k] !== null);
  const flag = (k: string) => '--' + k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
  if (full) {
    arg(!cfg.adapter, '--adapter and --full cannot be combined');
    arg(loraGiven.filter((k) => k !== 'headStd').length === 0, `LoRA options do not apply with --full: ${loraGiven.map(flag).join(', ')}`);
  }
  if (cfg.adapter) arg(loraGiven.length === 0, `${loraGiven.map(flag).join(', ')} cannot be given with --adapter: they come from the adapter`);
  const lrScheduleKind = cfg.lrSchedule ?? RM_DEFAULTS.lrSchedule;
  arg((LR_SCHEDULES as readonly string[]).includes(lrScheduleKind), `--lr-schedule must be one of ${LR_SCHEDULES.join(', ')}, got ${lrScheduleKind}`);
  const r: ResolvedRmConfig = {
    model: cfg.model,
    data: cfg.data,
    out: cfg.out,
    adapter: cfg.adapter ?? null,
    full,
    loraR: cfg.loraR ?? RM_DEFAULTS.loraR,
    loraAlpha: cfg.loraAlpha ?? RM_DEFAULTS.loraAlpha,
    loraTargets:
      cfg.loraTargets === undefined || cfg.loraTargets === 'all-linear' || (cfg.loraTargets.length === 1 && cfg.loraTargets[0] === 'all-linear') ? 'all-linear' : [...cfg.loraTargets],
    rslora: cfg.rslora ?? RM_DEFAULTS.rslora,
    headStd: cfg.headStd ?? null,
    useMargin: cfg.useMargin ?? RM_DEFAULTS.useMargin,
    marginScale: cfg.marginScale ?? RM_DEFAULTS.marginScale,
    optimizer: cfg.optimizer ?? RM_DEFAULTS.optimizer,
    lr: cfg.lr ?? (full ? RM_DEFAULTS.lrFull : RM_DEFAULTS.lrLora),
    adamBeta1: cfg.adamBeta1 ?? RM_DEFAULTS.adamBeta1,
    adamBeta2: cfg.adamBeta2 ?? RM_DEFAULTS.adamBeta2,
    adamEpsilon: cfg.adamEpsilon ?? RM_DEFAULTS.adamEpsilon,
    momentum: cfg.momentum ?? RM_DEFAULTS.momentum,
    weightDecay: cfg.weightDecay ?? RM_DEFAULTS.weightDecay,
    maxGradNorm: cfg.maxGradNorm ?? RM_DEFAULTS.maxGradNorm,
    lrSchedule: lrScheduleKind,
    warmupRatio: cfg.warmupRatio ?? RM_DEFAULTS.warmupRatio,
    warmupSteps: cfg.warmupSteps ?? RM_DEFAULTS.warmupSteps,
    steps: cfg.steps ?? RM_DEFAULTS.steps,
    epochs: cfg.epochs ?? RM_DEFAULTS.epochs,
    batchSize: cfg.batchSize ?? RM_DEFAULTS.batchSize,
    gradAccum: cfg.gradAccum ?? RM_DEFAULTS.gradAccum,
    maxLen: cfg.maxLen ?? RM_DEFAULTS.maxLen,
    seed: cfg.seed ?? RM_DEFAULTS.seed,
    shuffle: cfg.shuffle ?? RM_DEFAULTS.shuffle,
    evalData: cfg.evalData ?? null,
    evalFraction: cfg.evalFraction ?? RM_DEFAULTS.evalFraction,
    evalSteps: cfg.evalSteps ?? RM_DEFAULTS.evalSteps,
    evalBatchSize: cfg.evalBatchSize ?? cfg.batchSize ?? RM_DEFAULTS.batchSize,
    checkpointSteps: cfg.checkpointSteps ?? RM_DEFAULTS.checkpointSteps,
    checkpointKeep: cfg.checkpointKeep ?? RM_DEFAULTS.checkpointKeep,
    checkpointDir: cfg.checkpointDir ?? null,
    resume: cfg.resume ?? RM_DEFAULTS.resume,
    resumeMismatch: cfg.resumeMismatch ?? RM_DEFAULTS.resumeMismatch,
    nanPolicy: checkNanPolicy(cfg.nanPolicy ?? RM_DEFAULTS.nanPolicy),
    device: cfg.device ?? RM_DEFAULTS.device,
  };
  arg(posInt(r.loraR), `--lora-r must be a positive integer, got ${r.loraR}`);
  arg(finite(r.loraAlpha) && r.loraAlpha > 0, `--lora-alpha must be a positive number, got ${r.loraAlpha}`);
  arg(r.loraTargets === 'all-linear' || r.loraTargets.length > 0, '--lora-targets must name at least one module (or all-linear)');
  arg(r.headStd === null || (finite(r.headStd) && r.headStd >= 0), `--head-std must be >= 0, got ${r.headStd}`);
  arg(r.marginScale === 'small' || r.marginScale === 'large', `--margin-scale must be small or large, got ${r.marginScale}`);
  arg(r.optimizer === 'adamw' || r.optimizer === 'sgd', `--optimizer must be adamw or sgd, got ${r.optimizer}`);
  arg(finite(r.lr) && r.lr >= 0, `--lr must be a number >= 0, got ${r.lr}`);
  arg(finite(r.adamBeta1) && r.adamBeta1 >= 0 && r.adamBeta1 < 1, `--adam-beta1 must be in [0, 1), got ${r.adamBeta1}`);
  arg(finite(r.adamBeta2) && r.adamBeta2 >= 0 && r.adamBeta2 < 1, `--adam-beta2 must be in [0, 1), got ${r.adamBeta2}`);
  arg(finite(r.adamEpsilon) && r.adamEpsilon > 0, `--adam-epsilon must be > 0, got ${r.adamEpsilon}`);
  arg(finite(r.momentum) && r.momentum >= 0 && r.momentum < 1, `--momentum must be in [0, 1), got ${r.momentum}`);
  arg(finite(r.weightDecay) && r.weightDecay >= 0, `--weight-decay must be >= 0, got ${r.weightDecay}`);
  arg(finite(r.maxGradNorm) && r.maxGradNorm >= 0, `--max-grad-norm must be >= 0, got ${r.maxGradNorm}`);
  arg(finite(r.warmupRatio) && r.warmupRatio >= 0 && r.warmupRatio < 1, `--warmup-ratio must be in [0, 1), got ${r.warmupRatio}`);
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
  arg(nonNegInt(r.checkpointSteps), `--checkpoint-steps must be a non-negative integer, got ${r.checkpointSteps}`);
  arg(posInt(r.checkpointKeep), `--checkpoint-keep must be a positive integer, got ${r.checkpointKeep}`);
  arg(DEVICES.includes(r.device), `--device must be auto, cpu or cuda, got ${r.device}`);
  arg(path.resolve(r.out) !== path.resolve(r.model), '--out must differ from --model (the base model folder is never overwritten)');
  return r;
}

/** Pairwise loss over per-pair rewards through the native op. */
export function pairwiseLoss(chosen: Float32Array, rejected: Float32Array, margin: Float32Array | null, gradScale = 1, withGrad = true) {
  const b = chosen.length;
  const loss = new Float32Array(1), stats = new Float32Array(4);
  const dchosen = withGrad ? new Float32Array(b) : undefined, drejected = withGrad ? new Float32Array(b) : undefined;
  callNative(() => native().runOp('pairwise_loss', { b, chosen, rejected, margin: margin ?? undefined, gradScale, loss, dchosen, drejected, stats }));
  return { loss: loss[0], accuracy: stats[0], margin: stats[1], chosen: stats[2], rejected: stats[3], dchosen, drejected };
}

/** Rows of one micro-batch as a forward input: chosen sequences then rejected ones, and each row's last index. */
function pairBatch(pairs: readonly PreferenceExample[]): { ids: number[][]; last: number[]; tokens: number } {
  const ids = [...pairs.map((p) => p.chosen), ...pairs.map((p) => p.rejected)];
  return { ids, last: ids.map((s) => s.length - 1), tokens: ids.reduce((s, x) => s + x.length, 0) };
}

function marginsOf(pairs: readonly PreferenceExample[], use: boolean): Float32Array | null {
  if (!use || !pairs.some((p) => p.margin !== null)) return null;
  return Float32Array.from(pairs, (p) => p.margin ?? 0);
}

/** Rewards (score head at each sequence's last token) of preference pairs, in batches: held-out loss, accuracy, margin. */
export async function evaluateRm(model: Model, pairs: readonly PreferenceExample[], batchSize: number, useMargin: boolean): Promise<RmEval> {
  let loss = 0, correct = 0, margin = 0;
  for (let i = 0; i < pairs.length; i += batchSize) {
    const part = pairs.slice(i, i + batchSize);
    const b = pairBatch(part);
    const f = await model.forward({ inputIds: b.ids, values: true, logp: false });
    const r = Float32Array.from(b.last, (t, row) => f.values![row][t]);
    const n = part.length;
    const s = pairwiseLoss(r.subarray(0, n), r.subarray(n), marginsOf(part, useMargin), 1, false);
    loss += s.loss * n;
    correct += s.accuracy * n;
    margin += s.margin * n;
  }
  const n = pairs.length;
  return { loss: n ? loss / n : 0, accuracy: n ? correct / n : 0, margin: n ? margin / n : 0, pairs: n };
}

export async function runRm(config: RmConfig, hooks: RmHooks = {}): Promise<RmResult> {
  const cfg = resolveRmConfig(config);
  const log = hooks.log ?? (() => {});
  if (fs.existsSync(cfg.out) && !fs.statSync(cfg.out).isDirectory()) throw new RlhfError('E_ARGUMENT', `--out ${cfg.out} exists and is not a folder`, { where: cfg.out });
  checkWritableDir(cfg.out);
  if (cfg.adapter) readAdapterConfig(cfg.adapter);

  const folder = openModelFolder(cfg.model);
  const mcfg = folder.config;
  folder.close();
  if (!cfg.full && !cfg.adapter && cfg.loraTargets !== 'all-linear') loraModules(mcfg, cfg.loraTargets);
  const maxLen = Math.min(cfg.maxLen, mcfg.maxSequenceLength);
  let tok: Tokenizer | undefined;
  const dataOpts = {
    tokenizer: () => (tok ??= loadTokenizer(cfg.model)),
    maxLen,
    vocabSize: mcfg.vocabSize,
    fallbackEosTokenId: mcfg.eosTokenIds[0] ?? null,
    stopTokenIds: mcfg.eosTokenIds,
    marginScale: cfg.marginScale,
  };
  const data = loadPreferenceData(cfg.data, dataOpts);
  const skipped = identicalWarning(cfg.data, data.stats);
  if (skipped) log(`rm: ${skipped}`);
  let train = data.examples, evalSet: PreferenceExample[] = [];
  if (cfg.evalFraction > 0) {
    const split = splitEval(data.examples.length, cfg.evalFraction, cfg.seed);
    train = split.train.map((i) => data.examples[i]);
    evalSet = split.eval.map((i) => data.examples[i]);
  } else if (cfg.evalData) {
    evalSet = loadPreferenceData(cfg.evalData, dataOpts).examples;
  }
  log(`rm: ${cfg.data}: ${data.stats.rows} pairs, ${data.stats.tokens} tokens` + (data.stats.marginRows ? `, ${data.stats.marginRows} with a margin` : '') + `; max length ${maxLen}`);
  if (evalSet.length) log(`rm: held-out evaluation on ${evalSet.length} pairs`);

  const checkpoints = new StageCheckpoints(cfg.checkpointDir ?? path.join(cfg.out, 'checkpoints'), cfg.checkpointKeep, {
    stage: 'rm',
    config: cfg,
    inputs: { data: cfg.data },
    allowMismatch: cfg.resumeMismatch,
    log,
  });
  let resume: ResumeState | null = null;
  if (cfg.resume) {
    resume = checkpoints.latest();
    if (!resume) log(`rm: --resume: no checkpoint in ${checkpoints.dir}; starting from the beginning`);
  }

  // A causal LM gets a fresh head (on the adapter with LoRA, on the model with --full).
  const headStd = cfg.headStd ?? mcfg.initializerRange;
  const pairsLongest = Math.max(2, ...[...train, ...evalSet].flatMap((p) => [p.chosen.length, p.rejected.length]));
  const model = await loadModel(cfg.model, {
    device: cfg.device,
    head: cfg.full ? 'score' : undefined,
    scoreInit: { std: headStd, seed: cfg.seed },
    memory: {
      what: `rm on ${cfg.model}`,
      train: cfg.full ? 'full' : 'lora',
      batch: 2 * Math.max(cfg.batchSize, evalSet.length ? cfg.evalBatchSize : 0),
      seq: pairsLongest,
      lora: cfg.full ? undefined : { r: cfg.adapter ? readAdapterConfig(cfg.adapter).r : cfg.loraR, targets: cfg.loraTargets },
      optimizer: cfg.optimizer,
      momentum: cfg.momentum,
    },
  });
  let keep = false;
  try {
    const trainer = model.trainer();
    let trainableParameters: number;
    if (cfg.full) {
      trainer.enableFullTraining();
      trainableParameters = trainer.trainable().reduce((s, t) => s + t.shape.reduce((a, b) => a * b, 1), 0);
    } else if (cfg.adapter) {
      trainableParameters = trainer.loadLora(cfg.adapter, 'reward').parameters;
      if (!trainer.trainable().some((t) => t.name.endsWith('score.weight'))) throw new RlhfError('E_MODEL', `${cfg.adapter}: the adapter has no score head (base_model.model.score.weight); it is not a reward model`, { where: cfg.adapter });
    } else {
      if (model.config.head === 'score') throw new RlhfError('E_ARGUMENT', `${cfg.model} is already a reward model (${model.config.architecture}); continue it with --full, or give the SFT model`);
      const targets = cfg.loraTargets === 'all-linear' ? (mcfg.arch === 'gpt2' ? GPT2_LORA_TARGETS : LLAMA_LORA_TARGETS) : cfg.loraTargets;
      trainableParameters = trainer.createLora({ name: 'reward', r: cfg.loraR, alpha: cfg.loraAlpha, rslora: cfg.rslora, targets, seed: cfg.seed, head: { std: headStd } }).parameters;
    }
    const noDecay = noDecayNames(trainer.trainable().map((t) => t.name));
    if (resume) checkpoints.restore(resume, trainer);

    const spe = stepsPerEpoch(train.length, cfg.batchSize, cfg.gradAccum);
    const totalSteps = cfg.steps > 0 ? cfg.steps : Math.max(1, Math.ceil(cfg.epochs * spe));
    const warmupSteps = cfg.warmupSteps > 0 ? cfg.warmupSteps : Math.ceil(cfg.warmupRatio * totalSteps);
    const lrAt = lrSchedule({ kind: cfg.lrSchedule, lr: cfg.lr, warmupSteps, totalSteps });
    log(
      `rm: ${cfg.full ? 'full training' : cfg.adapter ? `continuing ${cfg.adapter}` : `LoRA r ${cfg.loraR} alpha ${cfg.loraAlpha} + score head`}, ${trainableParameters} trainable parameters; ` +
        `${totalSteps} steps of ${cfg.batchSize} x ${cfg.gradAccum} pairs` + (resume ? `; resuming after step ${resume.step}` : ''),
    );

    fs.mkdirSync(cfg.out, { recursive: true });
    const metricsFile = path.join(cfg.out, 'metrics.jsonl');
    const metricsFd = openMetrics(metricsFile, resume?.step ?? 0);

    const stopper = stopOnSignals({ label: 'rm', log, handleSignals: hooks.handleSigint ?? true, abort: hooks.signal });
    const skippedSteps: number[] = [];

    let steps = resume?.step ?? 0, finalLoss: number | null = null, tokensSeen = 0;
    let initialEval: RmEval | null = (resume?.extra?.initialEval as RmEval | undefined) ?? null;
    let finalEval: RmEval | null = null;
    const t0 = performance.now();
    const elapsed0 = (resume?.extra?.elapsed as number | undefined) ?? 0;
    try {
      if (evalSet.length && !resume) initialEval = await evaluateRm(model, evalSet, cfg.evalBatchSize, cfg.useMargin);
      if (initialEval) log(`rm: held-out before training: accuracy ${initialEval.accuracy.toFixed(3)}, loss ${initialEval.loss.toFixed(4)}`);
      await trainer.zeroGrad();
      for (const st of planSteps(train.length, totalSteps, { batchSize: cfg.batchSize, gradAccum: cfg.gradAccum, shuffle: cfg.shuffle, seed: cfg.seed })) {
        if (st.step <= steps) continue; // resumed: the data position is a function of the step
        if (stopper.requested) break;
        const ts = performance.now();
        const pairsInStep = st.micro.reduce((s, m) => s + m.length, 0);
        let lossSum = 0, accSum = 0, marginSum = 0, chosenSum = 0, rejectedSum = 0, inputTokens = 0;
        for (const rows of st.micro) {
          const part = rows.map((i) => train[i]);
          const b = pairBatch(part);
          const f = await trainer.forward({ inputIds: b.ids, values: true, logp: false });
          const seq = f.seq, n = part.length;
          const r = Float32Array.from(b.last, (t, row) => f.values![row][t]);
          const s = pairwiseLoss(r.subarray(0, n), r.subarray(n), marginsOf(part, cfg.useMargin), n / pairsInStep);
          const dvalues = new Float32Array(2 * n * seq);
          for (let i = 0; i < n; i++) {
            dvalues[i * seq + b.last[i]] = s.dchosen![i];
            dvalues[(n + i) * seq + b.last[n + i]] = s.drejected![i];
          }
          await trainer.backward({ dvalues });
          lossSum += s.loss * n;
          accSum += s.accuracy * n;
          marginSum += s.margin * n;
          chosenSum += s.chosen * n;
          rejectedSum += s.rejected * n;
          inputTokens += b.tokens;
        }
        const loss = lossSum / pairsInStep;
        const lr = lrAt(st.step - 1);
        // A non-finite loss is never stepped on; the engine refuses a non-finite gradient itself (s.skipped).
        const s = !Number.isFinite(loss) ? null : await trainer.step({
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
        const bad = nonFinite({ loss, gradNorm: s?.gradNorm, skipped: s?.skipped });
        if (bad || !s) {
          if (cfg.nanPolicy === 'stop')
            throw numericStop('rm', `step ${st.step}`, bad ?? 'the loss is not finite', { lastGoodStep: steps, checkpoint: checkpoints.newest() });
          log(`rm: step ${st.step} skipped: ${bad} (--nan-policy skip); its gradients were dropped`);
          skippedSteps.push(st.step);
          steps = st.step;
          continue;
        }
        const seconds = (performance.now() - ts) / 1000;
        steps = st.step;
        tokensSeen += inputTokens;
        finalLoss = loss;
        const m: RmStepMetrics = {
          step: st.step,
          epoch: Number(st.epochProgress.toFixed(4)),
          loss,
          accuracy: accSum / pairsInStep,
          margin: marginSum / pairsInStep,
          reward_chosen: chosenSum / pairsInStep,
          reward_rejected: rejectedSum / pairsInStep,
          lr,
          grad_norm: s.gradNorm,
          pairs: pairsInStep,
          input_tokens: inputTokens,
          tokens_per_sec: seconds > 0 ? inputTokens / seconds : 0,
          elapsed_s: elapsed0 + (performance.now() - t0) / 1000,
        };
        const last = st.step === totalSteps || stopper.requested;
        if (evalSet.length && ((cfg.evalSteps > 0 && st.step % cfg.evalSteps === 0) || last)) {
          const e = await evaluateRm(model, evalSet, cfg.evalBatchSize, cfg.useMargin);
          m.eval_loss = e.loss;
          m.eval_accuracy = e.accuracy;
          m.eval_margin = e.margin;
          finalEval = e;
        }
        fs.writeSync(metricsFd, JSON.stringify(m) + '\n');
        hooks.onStep?.(m, { totalSteps });
        // Scheduled checkpoints, and one when a stop was requested, so that --resume continues from here.
        if (((cfg.checkpointSteps > 0 && st.step % cfg.checkpointSteps === 0) || stopper.requested) && st.step < totalSteps)
          await checkpoints.save(st.step, trainer, { full: cfg.full, sourceModel: cfg.model, extra: { initialEval, elapsed: m.elapsed_s } });
      }
      if (evalSet.length && !finalEval) finalEval = await evaluateRm(model, evalSet, cfg.evalBatchSize, cfg.useMargin);
      if (cfg.full) await trainer.saveModel(cfg.out, cfg.model);
      else await trainer.saveLora(cfg.out, path.resolve(cfg.model));
    } finally {
      fs.closeSync(metricsFd);
      stopper.dispose();
    }
    const seconds = (performance.now() - t0) / 1000;
    const interrupted = stopper.requested && steps < totalSteps;
    fs.writeFileSync(
      path.join(cfg.out, 'rm_config.json'),
      JSON.stringify({ rlhf_native_version: packageVersion(), ...cfg, total_steps: totalSteps, steps_done: steps, interrupted, skipped_steps: skippedSteps, initial_eval: initialEval, final_eval: finalEval }, null, 2) + '\n',
    );
    if (finalEval) log(`rm: held-out after training: accuracy ${finalEval.accuracy.toFixed(3)}, loss ${finalEval.loss.toFixed(4)}`);
    const result: RmResult = {
      out: cfg.out,
      saved: cfg.full ? 'model' : 'adapter',
      steps,
      totalSteps,
      interrupted,
      signal: stopper.signal,
      skippedSteps,
      resumedFrom: resume?.step ?? null,
      initialEval,
      finalEval,
      finalLoss,
      trainableParameters,
      trainPairs: train.length,
      evalPairs: evalSet.length,
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
