/**
 * The supervised loop: one implementation of an offline training stage
 * (SFT, reward model, DPO, and every offline method to come). A method
 * supplies what is its own (a `SupervisedMethod`: data, batch building, the
 * loss of one micro-batch, held-out evaluation, the figures of a step); the
 * loop does the rest, the same way for every method:
 *
 *   output checks -> model folder config -> data -> model (memory check) ->
 *   trainable set (full, continued --adapter, or a new LoRA adapter) ->
 *   method.prepare (e.g. DPO's reference log-probs, before any checkpoint is
 *   restored) -> resume (newest checkpoint: weights, optimizer, extras) ->
 *   held-out eval -> steps: plan (seeded: the data position is a function of
 *   the step) -> micro-batches (forward, loss, backward; gradients
 *   accumulate) -> NaN policy -> optimizer step with the scheduled lr and
 *   clipping -> metrics line -> eval cadence -> checkpoint cadence and on a
 *   stop request -> save (adapter or full model) -> <stage>_config.json.
 *
 * SIGINT/SIGTERM or the abort signal finish the current step, then save (and
 * write a checkpoint so --resume continues exactly).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { RlhfError } from '../errors';
import { loadModel, type LoadModelOptions, type Model } from '../engine/model';
import { allLinearTargets, loraModules, type Trainer } from '../engine/train';
import { readAdapterConfig } from '../model/peft';
import { openModelFolder } from '../model/folder';
import type { ModelConfig } from '../model/config';
import { planSteps, stepsPerEpoch } from '../data/sft-data';
import { lrSchedule } from '../stages/schedule';
import { packageVersion } from '../info';
import { StageCheckpoints } from '../stages/checkpoints';
import { openMetrics } from '../stages/metrics-file';
import { checkWritableDir } from '../run/atomic';
import { stopOnSignals } from '../run/signals';
import { nonFinite, numericStop } from '../stages/numerics';
import { arg, checkOutDiffers, flagOf, LORA_SHAPE_KEYS, resolveOptions, type OptionTable, type Resolved, type SupervisedOptions } from './options';
import { applyThreads, type StageHooks } from './stage';
import { writeTrainerState } from './trainer-state';
import { world } from '../engine/distributed';
import { checkDataParallel, reduceStep, shardMicroBatches } from './data-parallel';

export type ResolvedSupervised = Resolved<SupervisedOptions>;

/** What the loop hands a method. */
export interface SupervisedContext<C extends ResolvedSupervised> {
  cfg: C;
  model: Model;
  trainer: Trainer;
  mcfg: ModelConfig;
  log: (line: string) => void;
}

/** Sums a micro-batch adds to its step: `inputTokens` (forward tokens) and any named figures the method averages later. */
export type MicroSums = { inputTokens: number } & Record<string, number>;

export interface SupervisedData<E> {
  train: E[];
  eval: E[];
  /** The data's statistics, as the method's loader reports them (returned in the result). */
  stats: unknown;
  /** Longest sequence of any example (for the memory check). */
  longest: number;
}

export interface SupervisedMethod<C extends ResolvedSupervised, E, P, V> {
  /** Names the stage: log prefix, checkpoint manifest, `<name>_config.json`. */
  name: string;
  /** The loss is a sum over rows given the step's plan, so ranks may split every micro-batch (docs/distributed.md). */
  dataParallel?: boolean;
  /** The stage's option table (shared groups + its own rows). */
  options: OptionTable<unknown>;
  /** Checks across options beyond the table's rows (after the defaults are filled in). */
  check?(cfg: C, given: Record<string, unknown>): void;
  /** Option keys that also describe a new adapter (refused with --full / --adapter), beyond the LoRA shape keys. */
  adapterShapeKeys?: readonly string[];
  /** Sequences per example in one forward (2 for preference pairs). Default 1. */
  rowsPerExample?: number;
  /** What the model folder must be; throws E_MODEL otherwise. */
  checkModelFolder?(cfg: C, mcfg: ModelConfig): void;
  /** The data, after the model folder's config is known (bad rows fail before any weights load). */
  loadData(cfg: C, mcfg: ModelConfig, log: (line: string) => void): SupervisedData<E>;
  /** loadModel options of the method (e.g. a score head). */
  modelOptions?(cfg: C, mcfg: ModelConfig): Partial<LoadModelOptions>;
  /** Name of the trainable adapter. Default 'default'. */
  adapterName?: string;
  /** A score head on a new adapter (reward models): its init std. */
  newAdapterHead?(cfg: C, mcfg: ModelConfig): { std: number } | undefined;
  /** After the trainable set exists: checks (e.g. the adapter has a score head) and notes. */
  checkTrainable?(ctx: SupervisedContext<C>): void;
  /** Runs once before any checkpoint is restored or step taken (e.g. DPO's reference log-probs). */
  prepare?(ctx: SupervisedContext<C>, data: SupervisedData<E>): Promise<void>;
  /** One line describing what is trained (after "sft: "). */
  describeRun?(cfg: C): string;
  /** What one step's micro-batches share (e.g. SFT's token denominator). `rows` are indices into data.train. */
  planStep(micro: E[][], rows: number[][]): P;
  /** Forward, loss and backward of one micro-batch. */
  microBatch(ctx: SupervisedContext<C>, examples: E[], plan: P, rows: number[]): Promise<MicroSums>;
  /** A step's figures from its summed micro-batches: `loss`, the figures before lr (`head`) and the counts after grad_norm (`counts`). */
  stepFigures(sums: MicroSums, plan: P): { loss: number; head: Record<string, number>; counts: Record<string, number> };
  /** Held-out evaluation (absent: the method has none). */
  evaluate?(ctx: SupervisedContext<C>, examples: E[]): Promise<V>;
  /** The metrics fields of an evaluation. */
  evalFields?(v: V): Record<string, number>;
  /** The log line of an evaluation ('before training' / 'after training'). */
  describeEval?(v: V, when: 'before' | 'after'): string;
  /** Write the evaluation before training as a metrics line of step 0 (DPO, as TRL logs it). Default false. */
  evalAtStepZero?: boolean;
  /** What <name>_config.json records beyond the config and the run's counts. */
  configRecord?(r: SupervisedRun<C, V>): Record<string, unknown>;
}

/** What the loop returns; each stage maps it onto its own result type. */
export interface SupervisedRun<C, V> {
  out: string;
  saved: 'adapter' | 'model';
  steps: number;
  totalSteps: number;
  epochs: number;
  interrupted: boolean;
  signal: NodeJS.Signals | null;
  skippedSteps: number[];
  resumedFrom: number | null;
  initialLoss: number | null;
  finalLoss: number | null;
  initialEval: V | null;
  finalEval: V | null;
  trainableParameters: number;
  trainRows: number;
  evalRows: number;
  data: unknown;
  seconds: number;
  tokensPerSec: number;
  metricsFile: string;
  config: C;
  model?: Model;
  trainer?: Trainer;
}

/** Transformers' Trainer exempts biases and LayerNorm/RMSNorm weights from weight decay; by name. */
export function noDecayNames(names: readonly string[]): string[] {
  return names.filter((n) => n.endsWith('.bias') || n.includes('norm') || n.includes('ln_'));
}

/**
 * The method's config with every default filled in and every value checked,
 * including the combinations of LoRA options with --full and --adapter.
 */
export function resolveSupervised<C extends ResolvedSupervised>(method: Pick<SupervisedMethod<C, unknown, unknown, unknown>, 'options' | 'check' | 'adapterShapeKeys'>, config: object): C {
  const given = config as Record<string, unknown>;
  const shape = [...LORA_SHAPE_KEYS, ...(method.adapterShapeKeys ?? [])].filter((k) => given[k] !== undefined && given[k] !== null && !(k === 'loraDropout' && given[k] === 0));
  const dropout = given.loraDropout as number | undefined;
  if (typeof dropout === 'number' && dropout > 0 && given.adapter)
    throw new RlhfError(
      'E_UNSUPPORTED',
      `--lora-dropout ${dropout} with --adapter: the engine continues a saved adapter without dropout (LoRA dropout is supported for new adapters only); drop --lora-dropout or start a new adapter`,
    );
  const cfg = resolveOptions(method.options as OptionTable<C>, config as C) as C;
  if (cfg.full) {
    arg(!cfg.adapter, '--adapter and --full cannot be combined (full training trains the base weights; merge the adapter first)');
    const lora = shape.filter((k) => (LORA_SHAPE_KEYS as readonly string[]).includes(k));
    arg(lora.length === 0, `LoRA options do not apply with --full: ${lora.map((k) => flagOf(k)).join(', ')}`);
  }
  if (cfg.adapter) arg(shape.length === 0, `${shape.map((k) => flagOf(k)).join(', ')} cannot be given with --adapter: r, alpha and targets come from the adapter's adapter_config.json`);
  checkOutDiffers(cfg.out, { '--model': cfg.model });
  method.check?.(cfg, given);
  return cfg;
}

/** E_ARGUMENT when `out` is a file; E_IO when it cannot be written. */
export function checkOutFolder(out: string): void {
  if (fs.existsSync(out) && !fs.statSync(out).isDirectory()) throw new RlhfError('E_ARGUMENT', `--out ${out} exists and is not a folder`, { where: out });
  checkWritableDir(out);
}

/** Creates, continues or enables the trainable set; returns its parameter count. */
function setUpTrainable<C extends ResolvedSupervised>(method: SupervisedMethod<C, unknown, unknown, unknown>, trainer: Trainer, cfg: C, mcfg: ModelConfig): number {
  const name = method.adapterName ?? 'default';
  if (cfg.full) {
    trainer.enableFullTraining();
    return trainer.trainable().reduce((s, t) => s + t.shape.reduce((a, b) => a * b, 1), 0);
  }
  if (cfg.adapter) return trainer.loadLora(cfg.adapter, name).parameters;
  const targets = cfg.loraTargets === 'all-linear' ? allLinearTargets(mcfg) : cfg.loraTargets;
  const head = method.newAdapterHead?.(cfg, mcfg);
  return trainer.createLora({ name, r: cfg.loraR, alpha: cfg.loraAlpha, rslora: cfg.rslora, dropout: cfg.loraDropout, targets, seed: cfg.seed, head }).parameters;
}

export async function runSupervised<C extends ResolvedSupervised, E, P, V>(
  method: SupervisedMethod<C, E, P, V>,
  config: object,
  hooks: StageHooks<any> = {}, // eslint-disable-line @typescript-eslint/no-explicit-any
): Promise<SupervisedRun<C, V>> {
  const cfg = resolveSupervised(method, config);
  const name = method.name;
  // Data-parallel (mpirun/srun): every rank trains; rank 0 alone logs and writes files.
  const w = world();
  checkDataParallel(name, method.dataParallel, w);
  const dp = w.size > 1, root = w.rank === 0;
  const log = root ? (hooks.log ?? (() => {})) : () => {};
  applyThreads(cfg.threads, log);
  checkOutFolder(cfg.out);
  if (cfg.adapter) readAdapterConfig(cfg.adapter); // fail early on a bad adapter folder

  // Data first (bad rows fail before the weights load); the config gives the vocabulary and context.
  const folder = openModelFolder(cfg.model);
  const mcfg = folder.config;
  folder.close();
  method.checkModelFolder?.(cfg, mcfg);
  if (!cfg.full && !cfg.adapter && cfg.loraTargets !== 'all-linear') loraModules(mcfg, cfg.loraTargets); // unknown module names fail here
  const data = method.loadData(cfg, mcfg, log);
  const { train, eval: evalSet } = data;
  const perExample = method.rowsPerExample ?? 1;

  const extra = method.modelOptions?.(cfg, mcfg) ?? {};
  const model = await loadModel(cfg.model, {
    device: cfg.device,
    ...extra,
    memory: {
      what: `${name} on ${cfg.model}`,
      train: cfg.full ? 'full' : 'lora',
      batch: perExample * Math.max(cfg.batchSize, evalSet.length || method.prepare ? cfg.evalBatchSize : 0),
      seq: data.longest,
      lora: cfg.full ? undefined : { r: cfg.adapter ? readAdapterConfig(cfg.adapter).r : cfg.loraR, targets: cfg.loraTargets },
      optimizer: cfg.optimizer,
      momentum: cfg.momentum,
    },
  });
  let keep = false;
  try {
    const trainer = model.trainer();
    const ctx: SupervisedContext<C> = { cfg, model, trainer, mcfg, log };
    const trainableParameters = setUpTrainable(method as SupervisedMethod<C, unknown, unknown, unknown>, trainer, cfg, mcfg);
    method.checkTrainable?.(ctx);
    const noDecay = noDecayNames(trainer.trainable().map((t) => t.name));
    await method.prepare?.(ctx, data);

    const checkpoints = new StageCheckpoints(cfg.checkpointDir ?? path.join(cfg.out, 'checkpoints'), cfg.checkpointKeep, {
      stage: name,
      config: cfg as unknown as Record<string, unknown>,
      inputs: { data: cfg.data },
      allowMismatch: cfg.resumeMismatch,
      log,
    });
    const resume = cfg.resume ? checkpoints.latest() : null;
    if (cfg.resume && !resume) log(`${name}: --resume: no checkpoint in ${checkpoints.dir}; starting from the beginning`);
    let forwards = 0; // training forwards so far: LoRA dropout masks are a function of this count
    if (resume) {
      checkpoints.restore(resume, trainer);
      forwards = Number(resume.extra.forwards ?? 0);
      if (!cfg.full && cfg.loraDropout > 0) trainer.setDropoutCounter(forwards);
      log(`${name}: resuming after step ${resume.step} (${resume.dir})`);
    }

    const spe = stepsPerEpoch(train.length, cfg.batchSize, cfg.gradAccum);
    const totalSteps = cfg.steps > 0 ? cfg.steps : Math.max(1, Math.ceil(cfg.epochs * spe));
    const warmupSteps = cfg.warmupSteps > 0 ? cfg.warmupSteps : Math.ceil(cfg.warmupRatio * totalSteps);
    const lrAt = lrSchedule({ kind: cfg.lrSchedule, lr: cfg.lr, warmupSteps, totalSteps });
    const what = cfg.full ? 'full training' : cfg.adapter ? `continuing the LoRA adapter ${cfg.adapter}` : `LoRA r ${cfg.loraR} alpha ${cfg.loraAlpha}`;
    log(
      `${name}: ${method.describeRun?.(cfg) ?? what}, ${trainableParameters} trainable parameters; ` +
        `${totalSteps} steps of ${cfg.batchSize} x ${cfg.gradAccum} ${perExample === 2 ? 'pairs' : 'rows'} (${spe} per epoch)` +
        (dp ? `; data-parallel over ${w.size} ranks (${w.mpi?.version ?? w.launcher})` : ''),
    );

    fs.mkdirSync(cfg.out, { recursive: true });
    const metricsFile = path.join(cfg.out, 'metrics.jsonl');
    const metricsFd = root ? openMetrics(metricsFile, resume?.step ?? 0) : -1;
    const writeMetrics = (m: Record<string, unknown>) => root && fs.writeSync(metricsFd, JSON.stringify(m) + '\n');
    const stopper = stopOnSignals({ label: name, log, handleSignals: hooks.handleSigint ?? true, abort: hooks.signal });
    // Several ranks stop after the same step: a request any rank had at the last step's reduction.
    let stopSeen = false;
    const stopRequested = () => (dp ? stopSeen : stopper.requested);
    const skippedSteps: number[] = [];

    let steps = resume?.step ?? 0, epochs = 0, finalLoss: number | null = null, tokensSeen = 0, lastEvalStep = -1;
    let initialLoss = (resume?.extra.initialLoss as number | null | undefined) ?? null;
    let initialEval: V | null = (resume?.extra.initialEval as V | null | undefined) ?? null;
    let finalEval: V | null = null;
    const t0 = performance.now();
    const elapsed0 = Number(resume?.extra.elapsed ?? 0);
    const evaluate = async (): Promise<V | null> => (evalSet.length && method.evaluate ? method.evaluate(ctx, evalSet) : null);
    try {
      if (!resume && (initialEval = await evaluate()) !== null) {
        log(`${name}: ${method.describeEval?.(initialEval, 'before') ?? 'evaluated before training'}`);
        if (method.evalAtStepZero) {
          writeMetrics({ step: 0, epoch: 0, elapsed_s: (performance.now() - t0) / 1000, ...method.evalFields?.(initialEval) });
          lastEvalStep = 0;
          finalEval = initialEval;
        }
      }
      await trainer.zeroGrad();
      for (const st of planSteps(train.length, totalSteps, { batchSize: cfg.batchSize, gradAccum: cfg.gradAccum, shuffle: cfg.shuffle, seed: cfg.seed })) {
        if (st.step <= steps) continue; // resumed: the data position is a function of the step
        if (stopRequested()) break;
        const ts = performance.now();
        const micro = st.micro.map((rows) => rows.map((i) => train[i]));
        const plan = method.planStep(micro, st.micro); // the whole step's plan, on every rank
        const mine = dp ? shardMicroBatches(st.micro, w) : st.micro;
        let sums: MicroSums = { inputTokens: 0 };
        for (let j = 0; j < mine.length; j++) {
          if (mine[j].length > 0) {
            const s = await method.microBatch(ctx, dp ? mine[j].map((i) => train[i]) : micro[j], plan, mine[j]);
            for (const [k, v] of Object.entries(s)) sums[k] = (sums[k] ?? 0) + v;
          }
          forwards++;
        }
        if (dp) {
          // Gradients and figures of the whole step on every rank, before clipping and the optimizer step.
          const r = reduceStep(sums, stopper.requested, w);
          sums = r.sums as MicroSums;
          stopSeen = r.stop;
          trainer.allReduceGrads();
        }
        const fig = method.stepFigures(sums, plan);
        const lr = lrAt(st.step - 1);
        // A non-finite loss is never stepped on; the engine refuses a non-finite gradient itself (s.skipped).
        const s = !Number.isFinite(fig.loss)
          ? null
          : await trainer.step({
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
        const bad = nonFinite({ loss: fig.loss, gradNorm: s?.gradNorm, skipped: s?.skipped });
        if (bad || !s) {
          if (cfg.nanPolicy === 'stop') throw numericStop(name, `step ${st.step}`, bad ?? 'the loss is not finite', { lastGoodStep: steps, checkpoint: checkpoints.newest() });
          log(`${name}: step ${st.step} skipped: ${bad} (--nan-policy skip); its gradients were dropped`);
          skippedSteps.push(st.step);
          steps = st.step;
          continue;
        }
        const seconds = (performance.now() - ts) / 1000;
        steps = st.step;
        epochs = st.epochProgress;
        tokensSeen += sums.inputTokens;
        initialLoss ??= fig.loss;
        finalLoss = fig.loss;
        const m: Record<string, unknown> = {
          step: st.step,
          epoch: Number(st.epochProgress.toFixed(4)),
          loss: fig.loss,
          ...fig.head,
          lr,
          grad_norm: s.gradNorm,
          ...fig.counts,
          input_tokens: sums.inputTokens,
          tokens_per_sec: seconds > 0 ? sums.inputTokens / seconds : 0,
          elapsed_s: elapsed0 + (performance.now() - t0) / 1000,
        };
        const last = st.step === totalSteps || stopRequested();
        if ((cfg.evalSteps > 0 && st.step % cfg.evalSteps === 0) || last) {
          const e = await evaluate();
          if (e !== null) {
            Object.assign(m, method.evalFields?.(e));
            finalEval = e;
            lastEvalStep = st.step;
          }
        }
        writeMetrics(m);
        if (root) hooks.onStep?.(m, { totalSteps });
        // Scheduled checkpoints, and one when a stop was requested, so that --resume continues from here.
        if (root && ((cfg.checkpointSteps > 0 && st.step % cfg.checkpointSteps === 0) || stopRequested()) && st.step < totalSteps)
          await checkpoints.save(st.step, trainer, { extra: { forwards, initialLoss, initialEval, elapsed: m.elapsed_s } });
      }
      // An interrupt that arrived during the last step's eval-free tail: evaluate what is saved.
      if (lastEvalStep !== steps) {
        const e = await evaluate();
        if (e !== null) finalEval = e;
      }
      if (root) {
        if (cfg.full) await trainer.saveModel(cfg.out, cfg.model);
        else await trainer.saveLora(cfg.out, path.resolve(cfg.model));
      }
    } finally {
      if (root) fs.closeSync(metricsFd);
      stopper.dispose();
    }
    if (finalEval !== null && method.describeEval) log(`${name}: ${method.describeEval(finalEval, 'after')}`);
    const seconds = (performance.now() - t0) / 1000;
    const run: SupervisedRun<C, V> = {
      out: cfg.out,
      saved: cfg.full ? 'model' : 'adapter',
      steps,
      totalSteps,
      epochs,
      interrupted: stopRequested() && steps < totalSteps,
      signal: stopper.signal,
      skippedSteps,
      resumedFrom: resume?.step ?? null,
      initialLoss,
      finalLoss,
      initialEval,
      finalEval,
      trainableParameters,
      trainRows: train.length,
      evalRows: evalSet.length,
      data: data.stats,
      seconds,
      tokensPerSec: seconds > 0 ? tokensSeen / seconds : 0,
      metricsFile,
      config: cfg,
    };
    if (root) fs.writeFileSync(
      path.join(cfg.out, `${name}_config.json`),
      JSON.stringify(
        {
          rlhf_native_version: packageVersion(),
          ...cfg,
          ...method.configRecord?.(run),
          total_steps: totalSteps,
          steps_done: steps,
          interrupted: run.interrupted,
          skipped_steps: skippedSteps,
        },
        null,
        2,
      ) + '\n',
    );
    if (root) writeTrainerState({ out: cfg.out, metricsFile, globalStep: steps, maxSteps: totalSteps, epoch: epochs, numTrainEpochs: cfg.epochs, trainBatchSize: cfg.batchSize, gradientAccumulationSteps: cfg.gradAccum, interrupted: run.interrupted });
    if (hooks.keepModel) {
      keep = true;
      run.model = model;
      run.trainer = trainer;
    }
    return run;
  } finally {
    if (!keep) model.dispose();
  }
}
