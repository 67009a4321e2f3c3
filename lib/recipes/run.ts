/**
 * Runs a recipe (lib/recipes/config.ts) in a run folder (lib/run/): each
 * stage in order, each one's output wired into the next, metrics of every
 * step into the run's metrics.jsonl, a summary per stage, report.html at the
 * end (and after each stage, so a stopped run still has one).
 *
 * Wiring (DESIGN.md section 2):
 *   sft              on the recipe's model; a LoRA adapter is merged into
 *                    `sft/merged`, the base every later stage shares
 *   rm, rm_*         reward models on that base (LoRA + score head by default)
 *   rs               rejection sampling from the base, scored by the reward
 *                    model(s), finetunes a policy adapter
 *   ppo              continues the rejection-sampling adapter when there is
 *                    one (else a fresh one) on the same base; reference = the
 *                    base alone; critic initialised from the (helpfulness)
 *                    reward model; rewards from the reward model(s)
 *
 * Resuming (`resume: true`): stages marked done are skipped (their outputs
 * are read from run.json); the stage that was running continues from its
 * newest checkpoint (sft and rm) or starts over (its randomness is a function
 * of the seed, so its metrics come out the same); metrics.jsonl is cut back
 * to match.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RlhfError } from '../errors';
import { RunFolder } from '../run/run-folder';
import { createProgress, type Progress } from '../run/progress';
import { runSft } from '../stages/sft';
import { runRm } from '../stages/reward';
import { runRejectionSampling } from '../stages/rejection';
import { runPpo } from '../stages/ppo';
import { mergeAdapter } from '../engine/merge';
import type { RewardSource } from '../reward/sources';
import { recipeStages, type RecipeConfig, type StageKey } from './config';

export interface RecipeHooks {
  log?: (line: string) => void;
  /** Progress bars (TTY) or periodic lines on this stream; false: none. Default process.stderr. */
  progress?: NodeJS.WritableStream | false;
  /** Stop after the current step of the running stage (it saves; the run can be resumed). */
  signal?: AbortSignal;
  /** Install a SIGINT handler that stops like `signal`. Default true. */
  handleSigint?: boolean;
  /**
   * Scores responses in rs and ppo instead of the recipe's reward models
   * (e.g. a programmatic judge). The caller disposes it.
   */
  reward?: RewardSource;
  /**
   * Runs before a stage starts (also when it resumes): may write the stage's
   * data (e.g. preference pairs sampled from the SFT model) and return
   * option overrides for it. Must be deterministic for resuming to reproduce.
   */
  prepare?: (stage: StageKey, ctx: { run: string; outputs: ReadonlyMap<StageKey, Record<string, string>>; base: string }) => Promise<Record<string, unknown> | void>;
  /** Called with every metrics record as it is written to the run's metrics.jsonl. */
  onMetrics?: (stage: StageKey, record: Record<string, unknown>) => void;
  /** Called when a stage starts, is skipped (already done), or finishes. */
  onStage?: (stage: StageKey, event: 'start' | 'skip' | 'done', info: { outputs: Record<string, string>; summary?: Record<string, unknown> }) => void;
}

export interface RecipeResult {
  run: string;
  recipe: string;
  interrupted: boolean;
  /** The signal that stopped the run, if one did (the CLI exits 130 for SIGINT, 143 for SIGTERM). */
  signal?: 'SIGINT' | 'SIGTERM';
  stages: { name: StageKey; outputs: Record<string, string>; summary: Record<string, unknown> | null }[];
  summaryFile: string;
  reportFile: string;
}

/** Stage options for the stage functions: the user's section minus what the recipe sets. */
function stageOptions(cfg: RecipeConfig, key: StageKey, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const { skip: _skip, ...rest } = cfg.stages[key] ?? {};
  return { ...rest, ...extra };
}

export async function runRecipe(cfg: RecipeConfig, opts: RecipeHooks & { resume?: boolean } = {}): Promise<RecipeResult> {
  const log = opts.log ?? (() => {});
  const stages = recipeStages(cfg);
  const run = RunFolder.open(cfg.out, { resume: opts.resume ?? false, stages, recipe: cfg.recipe, config: cfg, seed: cfg.seed });
  const abort = new AbortController();
  let interrupted = false;
  const onUserAbort = () => {
    interrupted = true;
    abort.abort();
  };
  opts.signal?.addEventListener('abort', onUserAbort);
  if (opts.signal?.aborted) onUserAbort();
  let signals = 0;
  const onSignal = (sig: 'SIGINT' | 'SIGTERM') => {
    const code = sig === 'SIGTERM' ? 143 : 130;
    if (++signals > 1) {
      process.stderr.write(`train: ${sig} again: exiting (the run folder keeps its last checkpoints; resume with --resume)\n`);
      process.exit(code);
    }
    result.signal = sig;
    log(`train: ${sig}: finishing the current step, then saving (resume later with --resume)`);
    onUserAbort();
  };
  const onSigint = () => onSignal('SIGINT');
  const onSigterm = () => onSignal('SIGTERM');
  if (opts.handleSigint ?? true) {
    process.on('SIGINT', onSigint);
    process.on('SIGTERM', onSigterm);
  }
  const outputs = new Map<StageKey, Record<string, string>>();
  for (const s of run.state.stages) outputs.set(s.name as StageKey, Object.fromEntries(Object.entries(s.outputs).map(([k, v]) => [k, path.resolve(run.dir, v)])));
  const result: RecipeResult = { run: run.dir, recipe: cfg.recipe, interrupted: false, stages: [], summaryFile: path.join(run.dir, 'summary.json'), reportFile: path.join(run.dir, 'report.html') };
  try {
    for (const key of stages) {
      if (interrupted) break;
      const entry = run.stage(key);
      if (entry.status === 'done') {
        opts.onStage?.(key, 'skip', { outputs: outputs.get(key) ?? {} });
        log(`train: ${key}: already done (${path.join(run.dir, key)})`);
        continue;
      }
      const begun = run.beginStage(key);
      const dir = run.stageDir(key);
      opts.onStage?.(key, 'start', { outputs: {} });
      const wasRunning = begun.checkpoint !== null || fs.readdirSync(dir).length > 0;
      const stream = opts.progress === undefined ? process.stderr : opts.progress;
      let bar: Progress | null = null;
      const tick = (step: number, total: number, fields: Record<string, number | string | undefined>) => {
        if (!stream) return;
        bar ??= createProgress({ label: key, total, stream });
        bar.tick(step, fields);
      };
      const record = (step: number, m: object) => {
        const rec = { ...(m as Record<string, unknown>), step };
        run.appendMetrics(key, rec);
        opts.onMetrics?.(key, rec);
      };
      const common = { log: (l: string) => log(l), signal: abort.signal, handleSigint: false };
      const base = baseModel(cfg, outputs);
      const extra = (await opts.prepare?.(key, { run: run.dir, outputs, base })) ?? {};
      let out: Record<string, string> = {};
      let summary: { final?: Record<string, unknown>; eval?: Record<string, unknown>; steps?: number } = {};
      if (key === 'sft') {
        const r = await runSft(
          { checkpointSteps: 50, ...stageOptions(cfg, key, extra), model: cfg.model, out: dir, checkpointDir: dir, resume: wasRunning, seed: cfg.seed, device: cfg.device } as never,
          { ...common, onStep: (m, i) => (record(m.step, m), tick(m.step, i.totalSteps, { loss: m.loss, eval_loss: m.eval_loss })) },
        );
        interrupted ||= r.interrupted;
        out = { [r.saved]: dir };
        if (!interrupted && r.saved === 'adapter') {
          const merged = path.join(dir, 'merged');
          await mergeAdapter({ model: cfg.model, adapter: dir, out: merged, device: cfg.device });
          out.model = merged;
          log(`train: sft: merged the adapter into ${merged} (the base of the later stages)`);
        } else if (r.saved === 'model') out.model = dir;
        summary = { eval: r.evalLoss !== null ? { eval_loss: r.evalLoss } : undefined, steps: r.steps };
      } else if (key === 'rm' || key === 'rm_helpfulness' || key === 'rm_safety') {
        const r = await runRm(
          { checkpointSteps: 50, ...stageOptions(cfg, key, extra), model: base, out: dir, checkpointDir: dir, resume: wasRunning, seed: cfg.seed, device: cfg.device } as never,
          { ...common, onStep: (m, i) => (record(m.step, m), tick(m.step, i.totalSteps, { loss: m.loss, acc: m.accuracy })) },
        );
        interrupted ||= r.interrupted;
        out = { reward_model: dir };
        summary = { eval: r.finalEval ? { accuracy: r.finalEval.accuracy, loss: r.finalEval.loss, margin: r.finalEval.margin, accuracy_before: r.initialEval?.accuracy } : undefined, steps: r.steps };
      } else if (key === 'rs') {
        let n = 0;
        const r = await runRejectionSampling(
          { ...stageOptions(cfg, key, extra), ...rewardOptions(cfg, outputs, opts.reward), model: base, out: dir, seed: cfg.seed, device: cfg.device } as never,
          { ...common, reward: opts.reward, onMetrics: (m) => (record(++n, { ...m, reward: (m as { mean_reward?: number }).mean_reward }), tick(n, n, { reward: (m as { mean_reward?: number }).mean_reward })) },
        );
        interrupted ||= r.interrupted;
        out = { model: r.policy.model, ...(r.policy.adapter ? { adapter: r.policy.adapter } : {}) };
        summary = { eval: { reward_before: r.initialReward, reward_after: r.finalReward }, steps: r.rounds };
      } else if (key === 'ppo') {
        const rs = outputs.get('rs');
        const r = await runPpo(
          {
            ...stageOptions(cfg, key, extra),
            ...rewardOptions(cfg, outputs, opts.reward),
            ...(rs?.adapter && !stageOptions(cfg, key, extra).adapter ? { adapter: rs.adapter } : {}),
            model: rs?.model && !rs.adapter ? rs.model : base,
            out: dir,
            seed: cfg.seed,
            device: cfg.device,
          } as never,
          { ...common, reward: opts.reward, onStep: (m, i) => (record(m.step, m), tick(m.step, i.totalSteps, { reward: m.reward, kl: m.kl })) },
        );
        interrupted ||= r.interrupted;
        out = { adapter: dir, critic: path.join(dir, 'critic') };
        summary = {
          eval: r.eval ? { reward_before: r.eval.before.reward, reward_after: r.eval.after.reward, kl_after: r.eval.after.kl } : { reward_first: r.initialReward, reward_last: r.finalReward, kl_last: r.finalKl },
          steps: r.steps,
        };
      }
      (bar as Progress | null)?.done();
      if (interrupted) {
        log(`train: ${key}: stopped; resume with --resume ${run.dir}`);
        break;
      }
      outputs.set(key, out);
      run.finishStage(key, { outputs: out, eval: summary.eval as Record<string, unknown> | undefined, steps: summary.steps });
      run.writeReport();
      opts.onStage?.(key, 'done', { outputs: out, summary: run.getSummary().stages[key] as unknown as Record<string, unknown> });
    }
    result.interrupted = interrupted;
    run.writeReport();
    const sum = run.getSummary();
    result.stages = stages.map((name) => ({ name, outputs: outputs.get(name) ?? {}, summary: (sum.stages[name] as unknown as Record<string, unknown>) ?? null }));
    return result;
  } finally {
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigterm);
    opts.signal?.removeEventListener('abort', onUserAbort);
    run.close();
  }
}

/** The model later stages build on: SFT's merged or full model, else the recipe's model. */
function baseModel(cfg: RecipeConfig, outputs: Map<StageKey, Record<string, string>>): string {
  return outputs.get('sft')?.model ?? cfg.model;
}

/** Reward-model options of rs/ppo: the recipe's reward models, unless the stage names its own or a RewardSource is given. */
function rewardOptions(cfg: RecipeConfig, outputs: Map<StageKey, Record<string, string>>, reward: RewardSource | undefined): Record<string, unknown> {
  if (reward) return {};
  const helpful = outputs.get('rm')?.reward_model ?? outputs.get('rm_helpfulness')?.reward_model;
  const safety = outputs.get('rm_safety')?.reward_model;
  if (!helpful) throw new RlhfError('E_CONFIG', `the ${cfg.recipe} recipe has no reward model for rejection sampling or PPO (its rm stage was skipped); give rs/ppo a reward_model`);
  return { rewardModel: helpful, ...(safety ? { safetyModel: safety } : {}) };
}
