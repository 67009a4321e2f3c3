/**
 * The SFT stage (`rlhf-native sft`): supervised finetuning of a causal LM on
 * JSONL data, with a LoRA adapter (default, PEFT layout) or every weight
 * (`full`), TRL's SFTTrainer semantics on the native engine. See docs/sft.md.
 *
 * One optimizer step: for each of `gradAccum` micro-batches of `batchSize`
 * rows, forward -> `sft_loss` (native op: masked NLL and its gradient) ->
 * backward (gradients accumulate); then step (AdamW or SGD, global-norm
 * clipping, the scheduled learning rate) and zeroGrad. The loss of a step is
 * token-weighted: every micro-batch divides by the number of target tokens of
 * the whole step (`denom`), so the accumulated gradient is exactly that of one
 * big batch holding all the rows (transformers' `num_items_in_batch`).
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
import { loadSftData, packSftBatch, planSteps, splitEval, stepsPerEpoch, type SftDataStats, type SftExample } from '../data/sft-data';
import { LR_SCHEDULES, lrSchedule, type LrScheduleKind } from './schedule';
import { packageVersion } from '../info';
import { StageCheckpoints } from './checkpoints';
import { openMetrics } from './metrics-file';
import { checkWritableDir } from '../run/atomic';
import { stopOnSignals } from '../run/signals';
import { checkNanPolicy, nonFinite, numericStop, type NanPolicy } from './numerics';
import { DEVICES, type Device } from '../info';

export interface SftConfig {
  /** Base model folder (Hugging Face layout, causal LM). Required. */
  model: string;
  /** Training data, JSONL (formats: lib/data/sft-data.ts). Required. */
  data: string;
  /** Output folder: the adapter (or the full model), metrics.jsonl, sft_config.json. Required. */
  out: string;
  /** Continue training this PEFT LoRA adapter instead of creating one. */
  adapter?: string | null;
  /** Train every weight instead of a LoRA adapter. Default false. */
  full?: boolean;
  /** LoRA rank. Default 16 (TRL's ModelConfig.lora_r). */
  loraR?: number;
  /** LoRA alpha. Default 32 (TRL's ModelConfig.lora_alpha); scale alpha / r. */
  loraAlpha?: number;
  /** PEFT lora_dropout on the adapter input while training (not with --adapter). Default 0 (PEFT's default). */
  loraDropout?: number;
  /** PEFT module names, or 'all-linear'. Default: every linear module (all-linear). */
  loraTargets?: readonly string[] | 'all-linear';
  /** rsLoRA scaling alpha / sqrt(r). Default false. */
  rslora?: boolean;
  /** 'adamw' (torch.optim.AdamW) or 'sgd'. Default 'adamw'. */
  optimizer?: 'adamw' | 'sgd';
  /** Peak learning rate. Default 2e-4 with LoRA, 2e-5 with full training (TRL's SFTConfig). */
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
  /** 'constant', 'linear' or 'cosine' (transformers' get_scheduler). Default 'linear'. */
  lrSchedule?: LrScheduleKind;
  /** Linear warmup steps. Default 0. */
  warmupSteps?: number;
  /** Optimizer steps; > 0 overrides epochs (TrainingArguments.max_steps). Default 0 (use epochs). */
  steps?: number;
  /** Passes over the training rows. Default 3 (TrainingArguments.num_train_epochs). */
  epochs?: number;
  /** Rows per micro-batch. Default 8. */
  batchSize?: number;
  /** Micro-batches per optimizer step. Default 1. */
  gradAccum?: number;
  /** Rows are cut to this many tokens (and to the model's context). Default 1024 (TRL's max_length). */
  maxLen?: number;
  /** LoRA initialisation, shuffling and the eval split. Default 42 (TrainingArguments). */
  seed?: number;
  /** Shuffle rows each epoch (seeded). Default false: file order. */
  shuffle?: boolean;
  /** Held-out JSONL evaluated for eval loss. Default none. */
  evalData?: string | null;
  /** Hold out this fraction of the training rows (seeded) instead. Default 0. */
  evalFraction?: number;
  /** Evaluate every N steps (and always at the end); 0: only at the end. Default 0. */
  evalSteps?: number;
  /** Eval micro-batch rows. Default batchSize. */
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
  /** A step with a NaN/infinite loss or gradient: 'stop' the run (E_NUMERIC) or 'skip' the step (lib/stages/numerics.ts). Default 'stop'. */
  nanPolicy?: NanPolicy;
  /** 'auto' | 'cpu' | 'cuda' (or 'cpu-guarded' for testing, see lib/info.ts). Default 'auto'. */
  device?: Device;
}

/** The config with every default filled in (what sft_config.json records). */
export type ResolvedSftConfig = Required<Omit<SftConfig, 'adapter' | 'evalData' | 'checkpointDir' | 'loraTargets'>> & {
  adapter: string | null;
  evalData: string | null;
  checkpointDir: string | null;
  loraTargets: string[] | 'all-linear';
};

export const SFT_DEFAULTS = {
  full: false,
  loraR: 16,
  loraAlpha: 32,
  loraDropout: 0,
  loraTargets: 'all-linear' as const,
  rslora: false,
  optimizer: 'adamw' as const,
  lrLora: 2e-4,
  lrFull: 2e-5,
  adamBeta1: 0.9,
  adamBeta2: 0.999,
  adamEpsilon: 1e-8,
  momentum: 0,
  weightDecay: 0,
  maxGradNorm: 1,
  lrSchedule: 'linear' as const,
  warmupSteps: 0,
  steps: 0,
  epochs: 3,
  batchSize: 8,
  gradAccum: 1,
  maxLen: 1024,
  seed: 42,
  shuffle: false,
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
export interface SftStepMetrics {
  step: number;
  /** Epochs completed (fractional). */
  epoch: number;
  /** Token-weighted mean NLL of the step's target tokens. */
  loss: number;
  /** Learning rate this step ran with. */
  lr: number;
  /** Global gradient norm before clipping. */
  grad_norm: number;
  /** Target (loss) tokens in the step. */
  tokens: number;
  /** Real input tokens (forward + backward) of the step. */
  input_tokens: number;
  /** input_tokens / seconds of the step (forward, loss, backward, optimizer). */
  tokens_per_sec: number;
  /** Seconds since training began. */
  elapsed_s: number;
  /** Present on steps where the eval set was scored. */
  eval_loss?: number;
  eval_tokens?: number;
}

export interface SftHooks {
  /** Called after every step (with eval_loss on eval steps). */
  onStep?: (m: SftStepMetrics, info: { totalSteps: number }) => void;
  /** Informational lines (data summary, interrupt notices). */
  log?: (line: string) => void;
  /** Stop after the current step when aborted (then save, as on SIGINT). */
  signal?: AbortSignal;
  /**
   * Install SIGINT and SIGTERM handlers for the run (default true): the first
   * finishes the step and saves (output and a checkpoint), a second exits at
   * once (130 after SIGINT, 143 after SIGTERM).
   */
  handleSigint?: boolean;
  /** Return the model and trainer without disposing them (the caller disposes the model). */
  keepModel?: boolean;
}

export interface SftResult {
  out: string;
  /** 'adapter' (PEFT LoRA folder) or 'model' (full Hugging Face folder). */
  saved: 'adapter' | 'model';
  steps: number;
  totalSteps: number;
  epochs: number;
  /** Stopped early by SIGINT, SIGTERM or the abort signal (the output was still saved). */
  interrupted: boolean;
  /** The signal that stopped the run, or null. */
  signal: NodeJS.Signals | null;
  /** Steps not applied because their loss or gradient was NaN/infinite (nanPolicy 'skip'). */
  skippedSteps: number[];
  /** The checkpoint step this run continued from (resume), else null. */
  resumedFrom: number | null;
  initialLoss: number | null;
  finalLoss: number | null;
  /** Held-out loss before the first step (null without an eval set). */
  initialEvalLoss: number | null;
  evalLoss: number | null;
  trainableParameters: number;
  trainRows: number;
  evalRows: number;
  data: SftDataStats;
  seconds: number;
  tokensPerSec: number;
  metricsFile: string;
  config: ResolvedSftConfig;
  model?: Model;
  trainer?: Trainer;
}


/** Fills in the defaults and checks every value (E_ARGUMENT naming the option; E_UNSUPPORTED for dropout on a continued adapter). */
export function resolveSftConfig(cfg: SftConfig): ResolvedSftConfig {
  for (const k of ['model', 'data', 'out'] as const) arg(typeof cfg[k] === 'string' && cfg[k].length > 0, `--${k} is required`);
  const full = cfg.full ?? SFT_DEFAULTS.full;
  const loraGiven: string[] = (['loraR', 'loraAlpha', 'loraTargets', 'rslora'] as const).filter((k) => cfg[k] !== undefined);
  const flag = (k: string) => '--' + k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
  const loraDropout = cfg.loraDropout ?? SFT_DEFAULTS.loraDropout;
  arg(finite(loraDropout) && loraDropout >= 0 && loraDropout < 1, `--lora-dropout must be in [0, 1), got ${loraDropout}`);
  if (loraDropout > 0) {
    if (cfg.adapter)
      throw new RlhfError(
        'E_UNSUPPORTED',
        `--lora-dropout ${loraDropout} with --adapter: the engine continues a saved adapter without dropout (LoRA dropout is supported for new adapters only); drop --lora-dropout or start a new adapter`,
      );
    loraGiven.push('loraDropout');
  }
  if (full) {
    arg(!cfg.adapter, '--adapter and --full cannot be combined (full training trains the base weights; merge the adapter first)');
    arg(loraGiven.length === 0, `LoRA options do not apply with --full: ${loraGiven.map(flag).join(', ')}`);
  }
  if (cfg.adapter) arg(loraGiven.length === 0, `${loraGiven.map(flag).join(', ')} cannot be given with --adapter: r, alpha and targets come from the adapter's adapter_config.json`);
  const optimizer = cfg.optimizer ?? SFT_DEFAULTS.optimizer;
  arg(optimizer === 'adamw' || optimizer === 'sgd', `--optimizer must be adamw or sgd, got ${optimizer}`);
  const lrScheduleKind = cfg.lrSchedule ?? SFT_DEFAULTS.lrSchedule;
  arg((LR_SCHEDULES as readonly string[]).includes(lrScheduleKind), `--lr-schedule must be one of ${LR_SCHEDULES.join(', ')}, got ${lrScheduleKind}`);
  const r: ResolvedSftConfig = {
    model: cfg.model,
    data: cfg.data,
    out: cfg.out,
    adapter: cfg.adapter ?? null,
    full,
    loraR: cfg.loraR ?? SFT_DEFAULTS.loraR,
    loraAlpha: cfg.loraAlpha ?? SFT_DEFAULTS.loraAlpha,
    loraDropout,
    loraTargets:
      cfg.loraTargets === undefined || cfg.loraTargets === 'all-linear' || (cfg.loraTargets.length === 1 && cfg.loraTargets[0] === 'all-linear') ? 'all-linear' : [...cfg.loraTargets],
    rslora: cfg.rslora ?? SFT_DEFAULTS.rslora,
    optimizer,
    lr: cfg.lr ?? (full ? SFT_DEFAULTS.lrFull : SFT_DEFAULTS.lrLora),
    adamBeta1: cfg.adamBeta1 ?? SFT_DEFAULTS.adamBeta1,
    adamBeta2: cfg.adamBeta2 ?? SFT_DEFAULTS.adamBeta2,
    adamEpsilon: cfg.adamEpsilon ?? SFT_DEFAULTS.adamEpsilon,
    momentum: cfg.momentum ?? SFT_DEFAULTS.momentum,
    weightDecay: cfg.weightDecay ?? SFT_DEFAULTS.weightDecay,
    maxGradNorm: cfg.maxGradNorm ?? SFT_DEFAULTS.maxGradNorm,
    lrSchedule: lrScheduleKind,
    warmupSteps: cfg.warmupSteps ?? SFT_DEFAULTS.warmupSteps,
    steps: cfg.steps ?? SFT_DEFAULTS.steps,
    epochs: cfg.epochs ?? SFT_DEFAULTS.epochs,
    batchSize: cfg.batchSize ?? SFT_DEFAULTS.batchSize,
    gradAccum: cfg.gradAccum ?? SFT_DEFAULTS.gradAccum,
    maxLen: cfg.maxLen ?? SFT_DEFAULTS.maxLen,
    seed: cfg.seed ?? SFT_DEFAULTS.seed,
    shuffle: cfg.shuffle ?? SFT_DEFAULTS.shuffle,
    evalData: cfg.evalData ?? null,
    evalFraction: cfg.evalFraction ?? SFT_DEFAULTS.evalFraction,
    evalSteps: cfg.evalSteps ?? SFT_DEFAULTS.evalSteps,
    evalBatchSize: cfg.evalBatchSize ?? cfg.batchSize ?? SFT_DEFAULTS.batchSize,
    checkpointSteps: cfg.checkpointSteps ?? SFT_DEFAULTS.checkpointSteps,
    checkpointKeep: cfg.checkpointKeep ?? SFT_DEFAULTS.checkpointKeep,
    checkpointDir: cfg.checkpointDir ?? null,
    resume: cfg.resume ?? SFT_DEFAULTS.resume,
    resumeMismatch: cfg.resumeMismatch ?? SFT_DEFAULTS.resumeMismatch,
    nanPolicy: checkNanPolicy(cfg.nanPolicy ?? SFT_DEFAULTS.nanPolicy),
    device: cfg.device ?? SFT_DEFAULTS.device,
  };
  arg(nonNegInt(r.checkpointSteps), `--checkpoint-steps must be a non-negative integer, got ${r.checkpointSteps}`);
  arg(posInt(r.checkpointKeep), `--checkpoint-keep must be a positive integer, got ${r.checkpointKeep}`);
  arg(posInt(r.loraR), `--lora-r must be a positive integer, got ${r.loraR}`);
  arg(finite(r.loraAlpha) && r.loraAlpha > 0, `--lora-alpha must be a positive number, got ${r.loraAlpha}`);
  arg(r.loraTargets === 'all-linear' || r.loraTargets.length > 0, '--lora-targets must name at least one module (or all-linear)');
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

function adapterDropout(dir: string): number {
  try {
    const d = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')).lora_dropout;
    return typeof d === 'number' ? d : 0;
  } catch {
    return 0;
  }
}

/** Masked NLL and its gradient through the native `sft_loss` op. */
export function sftLoss(logp: Float32Array, mask: Float32Array, denom: number, withGrad = true): { loss: number; dlogp?: Float32Array; tokens: number; nllSum: number } {
  const n = mask.length;
  const loss = new Float32Array(1), stats = new Float32Array(2);
  const dlogp = withGrad ? new Float32Array(n) : undefined;
  callNative(() => native().runOp('sft_loss', { n, logp, mask, denom, loss, dlogp, stats }));
  return { loss: loss[0], dlogp, tokens: stats[0], nllSum: stats[1] };
}

/**
 * Transformers' Trainer exempts biases and LayerNorm/RMSNorm weights from
 * weight decay; by name: ending in '.bias' or containing 'norm' or 'ln_'.
 */
export function noDecayNames(names: readonly string[]): string[] {
  return names.filter((n) => n.endsWith('.bias') || n.includes('norm') || n.includes('ln_'));
}

/** Token-weighted mean NLL of `examples` under the model's current weights. */
export async function evaluateSft(model: Model, examples: readonly SftExample[], batchSize: number): Promise<{ loss: number; tokens: number }> {
  let nll = 0, tokens = 0;
  for (let i = 0; i < examples.length; i += batchSize) {
    const rows = examples.slice(i, i + batchSize);
    const f = await model.forward({ inputIds: rows.map((e) => e.ids), logp: true });
    rows.forEach((e, b) => {
      const r = sftLoss(f.logp![b].subarray(0, e.lossMask.length), e.lossMask, 0, false);
      nll += r.nllSum;
      tokens += r.tokens;
    });
  }
  return { loss: tokens > 0 ? nll / tokens : 0, tokens };
}

function fmtRows(s: SftDataStats): string {
  const formats = Object.entries(s.formats).map(([k, v]) => `${v} ${k}`).join(', ');
  return `${s.rows} rows (${formats}), ${s.tokens} tokens, ${s.targets} target tokens` + (s.truncatedRows ? `, ${s.truncatedRows} truncated` : '') + (s.noTargetRows ? `, ${s.noTargetRows} with no target token` : '');
}

export async function runSft(config: SftConfig, hooks: SftHooks = {}): Promise<SftResult> {
  const cfg = resolveSftConfig(config);
  const log = hooks.log ?? (() => {});
  if (fs.existsSync(cfg.out) && !fs.statSync(cfg.out).isDirectory()) throw new RlhfError('E_ARGUMENT', `--out ${cfg.out} exists and is not a folder`, { where: cfg.out });
  checkWritableDir(cfg.out);
  if (cfg.adapter) readAdapterConfig(cfg.adapter); // fail early on a bad adapter folder

  // Data first (bad rows fail before the weights load); the config gives the vocabulary and context.
  const folder = openModelFolder(cfg.model);
  const mcfg = folder.config;
  folder.close();
  if (mcfg.head !== 'lm') throw new RlhfError('E_MODEL', `${cfg.model}: SFT needs a causal LM head (this is a ${mcfg.architecture})`, { where: cfg.model });
  if (!cfg.full && !cfg.adapter && cfg.loraTargets !== 'all-linear') loraModules(mcfg, cfg.loraTargets); // unknown module names fail here
  const maxLen = Math.min(cfg.maxLen, mcfg.maxSequenceLength);
  let tok: Tokenizer | undefined;
  const dataOpts = { tokenizer: () => (tok ??= loadTokenizer(cfg.model)), maxLen, vocabSize: mcfg.vocabSize, fallbackEosTokenId: mcfg.eosTokenIds[0] ?? null };
  const data = loadSftData(cfg.data, dataOpts);
  let train = data.examples, evalSet: SftExample[] = [];
  if (cfg.evalFraction > 0) {
    const split = splitEval(data.examples.length, cfg.evalFraction, cfg.seed);
    train = split.train.map((i) => data.examples[i]);
    evalSet = split.eval.map((i) => data.examples[i]);
  } else if (cfg.evalData) {
    evalSet = loadSftData(cfg.evalData, dataOpts).examples;
  }
  log(`sft: ${cfg.data}: ${fmtRows(data.stats)}; max length ${maxLen}`);
  if (evalSet.length) log(`sft: eval on ${evalSet.length} rows${cfg.evalData ? ` of ${cfg.evalData}` : ` held out (--eval-fraction ${cfg.evalFraction})`}`);

  const longest = Math.max(2, ...train.map((e) => e.ids.length), ...evalSet.map((e) => e.ids.length));
  const model = await loadModel(cfg.model, {
    device: cfg.device,
    memory: {
      what: `sft on ${cfg.model}`,
      train: cfg.full ? 'full' : 'lora',
      batch: Math.max(cfg.batchSize, evalSet.length ? cfg.evalBatchSize : 0),
      seq: longest,
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
      trainableParameters = trainer.loadLora(cfg.adapter).parameters;
      const saved = adapterDropout(cfg.adapter);
      if (saved > 0) log(`sft: note: ${cfg.adapter} was trained with lora_dropout ${saved}; it is continued without dropout`);
    } else {
      const targets = cfg.loraTargets === 'all-linear' ? (mcfg.arch === 'gpt2' ? GPT2_LORA_TARGETS : LLAMA_LORA_TARGETS) : cfg.loraTargets;
      trainableParameters = trainer.createLora({ r: cfg.loraR, alpha: cfg.loraAlpha, rslora: cfg.rslora, dropout: cfg.loraDropout, targets, seed: cfg.seed }).parameters;
    }
    const noDecay = cfg.full ? noDecayNames(trainer.trainable().map((t) => t.name)) : [];
    const checkpoints = new StageCheckpoints(cfg.checkpointDir ?? path.join(cfg.out, 'checkpoints'), cfg.checkpointKeep, {
      stage: 'sft',
      config: cfg,
      inputs: { data: cfg.data },
      allowMismatch: cfg.resumeMismatch,
      log,
    });
    const resume = cfg.resume ? checkpoints.latest() : null;
    if (cfg.resume && !resume) log(`sft: --resume: no checkpoint in ${checkpoints.dir}; starting from the beginning`);
    let forwards = 0; // training forwards so far: LoRA dropout masks are a function of this count
    if (resume) {
      checkpoints.restore(resume, trainer);
      forwards = Number(resume.extra.forwards ?? 0);
      if (!cfg.full && cfg.loraDropout > 0) trainer.setDropoutCounter(forwards);
      log(`sft: resuming after step ${resume.step} (${resume.dir})`);
    }

    const spe = stepsPerEpoch(train.length, cfg.batchSize, cfg.gradAccum);
    const totalSteps = cfg.steps > 0 ? cfg.steps : Math.max(1, Math.ceil(cfg.epochs * spe));
    const lrAt = lrSchedule({ kind: cfg.lrSchedule, lr: cfg.lr, warmupSteps: cfg.warmupSteps, totalSteps });
    log(
      `sft: ${cfg.full ? 'full training' : cfg.adapter ? `continuing the LoRA adapter ${cfg.adapter}` : `LoRA r ${cfg.loraR} alpha ${cfg.loraAlpha}`}, ` +
        `${trainableParameters} trainable parameters; ${totalSteps} steps of ${cfg.batchSize} x ${cfg.gradAccum} rows (${spe} per epoch)`,
    );

    fs.mkdirSync(cfg.out, { recursive: true });
    const metricsFile = path.join(cfg.out, 'metrics.jsonl');
    const metricsFd = openMetrics(metricsFile, resume?.step ?? 0);

    // Interrupts (SIGINT, SIGTERM, abort): finish the current step, then save.
    const stopper = stopOnSignals({ label: 'sft', log, handleSignals: hooks.handleSigint ?? true, abort: hooks.signal });
    const skippedSteps: number[] = [];

    let steps = resume?.step ?? 0, epochs = 0, finalLoss: number | null = null, evalLoss: number | null = null;
    let initialLoss: number | null = (resume?.extra.initialLoss as number | null | undefined) ?? null;
    let lastEvalStep = -1, tokensSeen = 0;
    const t0 = performance.now();
    const elapsed0 = Number(resume?.extra.elapsed ?? 0);
    let initialEvalLoss: number | null = (resume?.extra.initialEvalLoss as number | null | undefined) ?? null;
    try {
      if (evalSet.length && !resume) {
        initialEvalLoss = (await evaluateSft(model, evalSet, cfg.evalBatchSize)).loss;
        log(`sft: held-out loss before training ${initialEvalLoss.toFixed(4)}`);
      }
      await trainer.zeroGrad();
      for (const st of planSteps(train.length, totalSteps, { batchSize: cfg.batchSize, gradAccum: cfg.gradAccum, shuffle: cfg.shuffle, seed: cfg.seed })) {
        if (st.step <= steps) continue; // resumed: the data position is a function of the step
        if (stopper.requested) break;
        const ts = performance.now();
        const batches = st.micro.map((rows) => packSftBatch(rows.map((i) => train[i])));
        const denom = batches.reduce((s, b) => s + b.targets, 0);
        let nll = 0, inputTokens = 0;
        for (const b of batches) {
          // The masked mean NLL's gradient, -mask / denom, does not depend on
          // the log-probs: given to the forward, the LM head computes its
          // gradient in the same pass over the logits (no recomputation).
          const lmGrad = sftLoss(new Float32Array(b.mask.length), b.mask, denom).dlogp!;
          const f = (await trainer.forward({ inputIds: b.inputIds, lmGrad })) as ForwardOutput & { flat: NativeForwardResult };
          const r = sftLoss(f.flat.logp!, b.mask, denom, false);
          nll += r.nllSum;
          inputTokens += b.tokens;
          forwards++;
          await trainer.backward({});
        }
        const loss = denom > 0 ? nll / denom : 0;
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
            throw numericStop('sft', `step ${st.step}`, bad ?? 'the loss is not finite', { lastGoodStep: steps, checkpoint: checkpoints.newest() });
          log(`sft: step ${st.step} skipped: ${bad} (--nan-policy skip); its gradients were dropped`);
          skippedSteps.push(st.step);
          steps = st.step;
          continue;
        }
        const seconds = (performance.now() - ts) / 1000;
        steps = st.step;
        epochs = st.epochProgress;
        tokensSeen += inputTokens;
        initialLoss ??= loss;
        finalLoss = loss;
        const m: SftStepMetrics = {
          step: st.step,
          epoch: Number(st.epochProgress.toFixed(4)),
          loss,
          lr,
          grad_norm: s.gradNorm,
          tokens: denom,
          input_tokens: inputTokens,
          tokens_per_sec: seconds > 0 ? inputTokens / seconds : 0,
          elapsed_s: elapsed0 + (performance.now() - t0) / 1000,
        };
        const last = st.step === totalSteps || stopper.requested;
        if (evalSet.length && ((cfg.evalSteps > 0 && st.step % cfg.evalSteps === 0) || last)) {
          const e = await evaluateSft(model, evalSet, cfg.evalBatchSize);
          m.eval_loss = evalLoss = e.loss;
          m.eval_tokens = e.tokens;
          lastEvalStep = st.step;
        }
        fs.writeSync(metricsFd, JSON.stringify(m) + '\n');
        hooks.onStep?.(m, { totalSteps });
        // Scheduled checkpoints, and one when a stop was requested, so that --resume continues from here.
        if (((cfg.checkpointSteps > 0 && st.step % cfg.checkpointSteps === 0) || stopper.requested) && st.step < totalSteps)
          await checkpoints.save(st.step, trainer, { extra: { forwards, initialLoss, initialEvalLoss, elapsed: m.elapsed_s } });
      }
      // An interrupt that arrived during the last step's eval-free tail: evaluate what is saved.
      if (evalSet.length && lastEvalStep !== steps) evalLoss = (await evaluateSft(model, evalSet, cfg.evalBatchSize)).loss;

      if (cfg.full) await trainer.saveModel(cfg.out, cfg.model);
      else await trainer.saveLora(cfg.out, path.resolve(cfg.model));
    } finally {
      fs.closeSync(metricsFd);
      stopper.dispose();
    }
    const seconds = (performance.now() - t0) / 1000;
    const interrupted = stopper.requested && steps < totalSteps;
    fs.writeFileSync(
      path.join(cfg.out, 'sft_config.json'),
      JSON.stringify({ rlhf_native_version: packageVersion(), ...cfg, total_steps: totalSteps, steps_done: steps, interrupted, skipped_steps: skippedSteps, initial_eval_loss: initialEvalLoss, eval_loss: evalLoss }, null, 2) + '\n',
    );
    const result: SftResult = {
      out: cfg.out,
      saved: cfg.full ? 'model' : 'adapter',
      steps,
      totalSteps,
      epochs,
      interrupted,
      signal: stopper.signal,
      skippedSteps,
      resumedFrom: resume?.step ?? null,
      initialLoss,
      finalLoss,
      initialEvalLoss,
      evalLoss,
      trainableParameters,
      trainRows: train.length,
      evalRows: evalSet.length,
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
