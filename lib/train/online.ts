/**
 * The online loop: one implementation of the rollout -> score -> update
 * stages (PPO, rejection sampling, and GRPO / RLOO to come). A method
 * supplies what is its own (an `OnlineMethod`): how an iteration samples
 * (one response per prompt, K per prompt, a group of G), how the samples
 * become a training signal (a reward model's scores with GAE, the best of
 * K, group-normalised advantages) and how it trains on them (PPO epochs, an
 * SFT run); the loop does the rest, the same way for every method:
 *
 *   resume (newest checkpoint: every trainable adapter with its optimizer
 *   state, the method's state, the held-out figures before training, the
 *   elapsed time) -> metrics.jsonl (cut back to the checkpoint) -> held-out
 *   eval before -> iterations: rollout -> score -> update -> metrics line ->
 *   checkpoint cadence and on a stop request -> held-out eval after ->
 *   outputs.
 *
 * Checkpoints are written at iteration boundaries only, and hold everything
 * the next iteration depends on; what a method draws at random must be a
 * pure function of (seed, iteration) (lib/data/batches.ts `mixSeed`), so a
 * resumed run writes the metrics of an uninterrupted one, timings aside.
 *
 * The loop assumes nothing of PPO: a group method (GRPO, RLOO) is a rollout
 * of G samples per prompt, a score phase that turns each group's rewards
 * into advantages (no critic), and an update of the policy adapter alone
 * (`adapters: ['policy']`).
 *
 * SIGINT/SIGTERM or the abort signal: the current iteration finishes (a
 * method may drop it instead: a rollout that returns null, an update that
 * reports itself incomplete), then a checkpoint and the outputs are saved so
 * that --resume continues exactly; a second signal exits at once.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import type { RlhfError } from '../errors';
import type { Trainer } from '../engine/train';
import { StageCheckpoints, type ResumeState } from '../stages/checkpoints';
import { openMetrics } from '../stages/metrics-file';
import { numericStop } from '../stages/numerics';
import { stopOnSignals } from '../run/signals';
import type { StageHooks } from './stage';

/** What the loop hands each phase of a method. */
export interface OnlineContext {
  log: (line: string) => void;
  /** Writes one metrics record to metrics.jsonl and passes it to hooks.onStep (phases that log more than the iteration's record). */
  emit(record: Record<string, unknown>): void;
  /** A stop was requested: finish (or drop) the current iteration. */
  readonly stopping: boolean;
  /** Aborted on a stop request: for work the method hands to others (e.g. an SFT run). */
  readonly signal: AbortSignal;
  /** Seconds of training so far, the time before a resume included. */
  elapsed(): number;
  /** The E_NUMERIC error of a non-finite update under nanPolicy 'stop', naming the newest checkpoint. */
  numericStop(where: string, why: string, hint?: string): RlhfError;
}

/** An iteration's place and the seconds its phases took so far. */
export interface IterationInfo {
  /** 1-based. */
  iteration: number;
  /** performance.now() when the iteration began. */
  started: number;
  rolloutSeconds: number;
  scoreSeconds: number;
}

export interface UpdateResult {
  /** The iteration's metrics record (written by the loop, after the method's own emits), or null. */
  record: Record<string, unknown> | null;
  /** False: a stop request cut the update short; the iteration does not count and is done again on --resume. Default true. */
  complete?: boolean;
}

export interface OnlineMethod<R, S, E> {
  /** Log prefix and checkpoint manifest ('ppo', 'rs'). */
  name: string;
  /** 'iteration' (PPO) or 'round' (rejection sampling): log lines. */
  unit: string;
  /** Iterations of the run. */
  iterations: number;
  /** The trainer and the adapters a checkpoint holds (PPO: policy and critic); none: the method keeps its weights in folders of its own. */
  trainer?: Trainer;
  adapters?: readonly string[];
  /** Samples the iteration's batch. null: a stop request cut it short (the iteration is dropped). */
  rollout(it: IterationInfo, ctx: OnlineContext): Promise<R | null>;
  /** Turns the samples into a training signal: rewards, advantages, the kept samples. */
  score(it: IterationInfo, batch: R, ctx: OnlineContext): Promise<S>;
  /** Trains on the scored batch. */
  update(it: IterationInfo, scored: S, ctx: OnlineContext): Promise<UpdateResult>;
  /** Held-out evaluation (null: none): before the first iteration, and after the last. */
  evaluate?(when: 'before' | 'after', ctx: OnlineContext): Promise<E | null>;
  /** Evaluate after a stopped run too. Default false. */
  evaluateWhenStopped?: boolean;
  /** What the next iteration depends on beyond the adapters (KL coefficient, optimizer-step counter, first figures, samples kept so far), as JSON. */
  state(): Record<string, unknown>;
  restore(state: Record<string, unknown>): void;
  /** The records of metrics.jsonl a run resumed after `done` iterations keeps. Default: step <= done. */
  keepMetrics?(record: Record<string, unknown>, done: number): boolean;
  /** Writes the outputs (after the last iteration, or a stop). */
  save(ctx: OnlineContext): Promise<void>;
}

/** The loop's options (from the stage's resolved config: CHECKPOINT_OPTIONS and the output folder). */
export interface OnlineLoopOptions {
  out: string;
  /** A checkpoint every N iterations (0: only on a stop request). */
  checkpointSteps: number;
  checkpointKeep: number;
  /** Default out/checkpoints. */
  checkpointDir: string | null;
  resume: boolean;
  resumeMismatch: boolean;
  /** The resolved config: hashed into each checkpoint and compared on resume. */
  config: Record<string, unknown>;
  /** Input files fingerprinted into each checkpoint, by role. */
  inputs: Record<string, string | null | undefined>;
}

export interface OnlineRun<E> {
  /** Iterations done. */
  iterations: number;
  totalIterations: number;
  interrupted: boolean;
  signal: NodeJS.Signals | null;
  /** The iteration the run resumed after, or null. */
  resumedFrom: number | null;
  evalBefore: E | null;
  evalAfter: E | null;
  /** Seconds of this process's part of the run. */
  seconds: number;
  metricsFile: string;
}

export async function runOnline<R, S, E>(method: OnlineMethod<R, S, E>, o: OnlineLoopOptions, hooks: StageHooks<Record<string, unknown>> = {}): Promise<OnlineRun<E>> {
  const name = method.name;
  const log = hooks.log ?? (() => {});
  const total = method.iterations;
  const checkpoints = new StageCheckpoints(o.checkpointDir ?? path.join(o.out, 'checkpoints'), o.checkpointKeep, {
    stage: name,
    config: o.config,
    inputs: o.inputs,
    allowMismatch: o.resumeMismatch,
    log,
  });
  const resume: ResumeState | null = o.resume ? checkpoints.latest() : null;
  if (o.resume && !resume) log(`${name}: --resume: no checkpoint in ${checkpoints.dir}; starting from the beginning`);
  let done = 0;
  let evalBefore: E | null = null, evalAfter: E | null = null;
  let elapsed0 = 0;
  if (resume) {
    checkpoints.restore(resume, method.trainer as Trainer, method.adapters ?? []);
    method.restore((resume.extra.state as Record<string, unknown>) ?? {});
    done = resume.step;
    evalBefore = (resume.extra.evalBefore as E | null | undefined) ?? null;
    elapsed0 = Number(resume.extra.elapsed ?? 0);
    log(`${name}: resuming after ${method.unit} ${done} (${resume.dir})`);
  }

  fs.mkdirSync(o.out, { recursive: true });
  const metricsFile = path.join(o.out, 'metrics.jsonl');
  const metricsFd = openMetrics(metricsFile, done, method.keepMetrics ? (m) => method.keepMetrics!(m, done) : undefined);
  const abort = new AbortController();
  const stopper = stopOnSignals({
    label: name,
    log,
    handleSignals: hooks.handleSigint ?? true,
    abort: hooks.signal,
    then: `finishing the current ${method.unit}, then saving`,
    onStop: () => abort.abort(),
  });
  const t0 = performance.now();
  const ctx: OnlineContext = {
    log,
    emit(m) {
      fs.writeSync(metricsFd, JSON.stringify(m) + '\n');
      hooks.onStep?.(m, { totalSteps: total });
    },
    get stopping() {
      return stopper.requested;
    },
    signal: abort.signal,
    elapsed: () => elapsed0 + (performance.now() - t0) / 1000,
    numericStop: (where, why, hint) => numericStop(name, where, why, { lastGoodStep: done, checkpoint: checkpoints.newest(), hint }),
  };
  try {
    if (!resume && method.evaluate) evalBefore = await method.evaluate('before', ctx);
    for (let i = done + 1; i <= total; i++) {
      if (stopper.requested) break;
      const info: IterationInfo = { iteration: i, started: performance.now(), rolloutSeconds: 0, scoreSeconds: 0 };
      const batch = await method.rollout(info, ctx);
      if (batch === null) break;
      info.rolloutSeconds = (performance.now() - info.started) / 1000;
      const ts = performance.now();
      const scored = await method.score(info, batch, ctx);
      info.scoreSeconds = (performance.now() - ts) / 1000;
      const u = await method.update(info, scored, ctx);
      if (u.record) ctx.emit(u.record);
      if (u.complete === false) break;
      done = i;
      // Scheduled checkpoints, and one when a stop was requested, so that --resume continues from here.
      if (((o.checkpointSteps > 0 && i % o.checkpointSteps === 0) || stopper.requested) && i < total)
        await checkpoints.save(i, method.trainer ?? null, { adapters: method.adapters ?? [], extra: { state: method.state(), evalBefore, elapsed: ctx.elapsed() } });
    }
    const cut = stopper.requested && done < total;
    if (method.evaluate && (!cut || method.evaluateWhenStopped)) evalAfter = await method.evaluate('after', ctx);
    await method.save(ctx);
  } finally {
    fs.closeSync(metricsFd);
    stopper.dispose();
  }
  return {
    iterations: done,
    totalIterations: total,
    interrupted: stopper.requested && done < total,
    signal: stopper.signal,
    resumedFrom: resume?.step ?? null,
    evalBefore,
    evalAfter,
    seconds: (performance.now() - t0) / 1000,
    metricsFile,
  };
}
