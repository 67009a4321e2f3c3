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
import { watchLauncher } from '../run/launcher';
import { createProgress, type Progress } from '../run/progress';
import { stageOf } from '../train/registry';
import { isStageConfig, type RecipeStageContext, type StageHooks } from '../train/stage';
import type { RewardSource } from '../reward/sources';
import { CHAINED_RECIPES, recipeStages, type RecipeConfig, type StageKey } from './config';

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
  /** What stopped the run, if a signal did (the CLI exits 130 for SIGINT, 143 for SIGTERM; 'SIGHUP': its launcher went away, 129). */
  signal?: 'SIGINT' | 'SIGTERM' | 'SIGHUP';
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
  // Every section against its stage's options before anything runs (a typo fails now, not after an hour of SFT).
  for (const key of stages) {
    const stage = stageOf(key);
    if (!stage?.recipe) throw new RlhfError('E_CONFIG', `the recipe's stage '${key}' cannot be chained (no recipe wiring)`);
    isStageConfig(stage.options, stageOptions(cfg, key), key);
  }
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
    if (interrupted && result.signal === sig) return; // already stopping for this interrupt, seen through the launcher's shell
    result.signal = sig;
    log(`train: ${sig}: finishing the current step, then saving (resume later with --resume)`);
    onUserAbort();
  };
  const onSigint = () => onSignal('SIGINT');
  const onSigterm = () => onSignal('SIGTERM');
  let unwatch = () => {};
  if (opts.handleSigint ?? true) {
    process.on('SIGINT', onSigint);
    process.on('SIGTERM', onSigterm);
    unwatch = watchLauncher((why, event) => {
      if (interrupted) return;
      // Not counted in `signals`: the same Ctrl-C may reach this process directly a moment later.
      result.signal = event === 'interrupted' ? 'SIGINT' : 'SIGHUP';
      log(`train: ${why}: finishing the current step, then saving (resume later with --resume)`);
      onUserAbort();
    });
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
      const stage = stageOf(key);
      if (!stage?.recipe) throw new RlhfError('E_CONFIG', `the recipe's stage '${key}' cannot be chained (no recipe wiring)`);
      const wiring = stage.recipe;
      const base = baseModel(cfg, outputs);
      const extra = (await opts.prepare?.(key, { run: run.dir, outputs, base })) ?? {};
      const given = stageOptions(cfg, key, extra);
      const ctx: RecipeStageContext = {
        dir,
        base,
        model: cfg.model,
        chained: CHAINED_RECIPES.has(cfg.recipe),
        outputs,
        device: cfg.device,
        log,
        rewardOptions: () => (ownReward(given) ? {} : rewardOptions(cfg, outputs, opts.reward)),
      };
      const options: Record<string, unknown> = {
        ...wiring.defaults,
        ...given,
        ...wiring.inputs(ctx, given),
        out: dir,
        seed: cfg.seed,
        device: cfg.device,
        ...(wiring.checkpoints ? { checkpointDir: dir, resume: wasRunning } : {}),
      };
      let n = 0;
      const hooks: StageHooks = {
        log: (l: string) => log(l),
        signal: abort.signal,
        handleSigint: false,
        reward: opts.reward,
        onStep: (m: Record<string, unknown>, info: { totalSteps: number }) => {
          const rec = wiring.record ? wiring.record(m, ++n) : { ...m, step: m.step as number };
          run.appendMetrics(key, rec);
          opts.onMetrics?.(key, rec);
          const done = wiring.done ? wiring.done(m) : rec.step;
          tick(done, Math.max(info.totalSteps, done), wiring.progress(m));
        },
      };
      if (!isStageConfig(stage.options, options, `${key}`)) continue;
      const r = await stage.run(options, hooks);
      interrupted ||= r.interrupted;
      const out: Record<string, string> = interrupted ? {} : await wiring.outputs(r, ctx);
      const summary = wiring.summary(r);
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
    unwatch();
    opts.signal?.removeEventListener('abort', onUserAbort);
    run.close();
  }
}

/** The model later stages build on: SFT's merged or full model, else the recipe's model. */
function baseModel(cfg: RecipeConfig, outputs: Map<StageKey, Record<string, string>>): string {
  return outputs.get('sft')?.model ?? cfg.model;
}

/** The section names its own reward (a reward model, a module or built-in verifiable rewards): the recipe's reward models are not added. */
function ownReward(given: Record<string, unknown>): boolean {
  const fns = given.rewardFunction;
  return !!given.rewardModel || !!given.rewardModule || (Array.isArray(fns) ? fns.length > 0 : !!fns);
}

/** Reward-model options of rs/ppo: the recipe's reward models, unless the stage names its own or a RewardSource is given. */
function rewardOptions(cfg: RecipeConfig, outputs: Map<StageKey, Record<string, string>>, reward: RewardSource | undefined): Record<string, unknown> {
  if (reward) return {};
  const helpful = outputs.get('rm')?.reward_model ?? outputs.get('rm_helpfulness')?.reward_model;
  const safety = outputs.get('rm_safety')?.reward_model;
  if (!helpful) throw new RlhfError('E_CONFIG', `the ${cfg.recipe} recipe has no reward model for rejection sampling, ReST or PPO (its rm stage was skipped); give rs/rest/ppo a reward_model`);
  return { rewardModel: helpful, ...(safety ? { safetyModel: safety } : {}) };
}
