/**
 * The stage contract: every training stage (sft, rm, dpo, rs, ppo, and the
 * methods to come) is `{name, summary, options, run}` with the same hooks,
 * registered once in lib/train/registry.ts. The CLI builds each stage
 * command's options and --help from `options`; recipes chain any registered
 * stage through `recipe` (what it takes from earlier stages, what it leaves
 * for later ones).
 */
import { RlhfError } from '../errors';
import type { OptionSpec, OptionTable } from './options';
import type { RewardSource } from '../reward/sources';

/** The hooks every stage takes. */
export interface StageHooks<M = Record<string, unknown>> {
  /** Informational lines (data summary, interrupt notices). */
  log?: (line: string) => void;
  /** Called with every metrics record as it is written (a step, an iteration, a phase of a round). */
  onStep?: (m: M, info: { totalSteps: number }) => void;
  /** Stop after the current step (or iteration) when aborted, then save, as on SIGINT. */
  signal?: AbortSignal;
  /**
   * Install SIGINT and SIGTERM handlers for the run (default true): the first
   * finishes the step and saves (output and a checkpoint), a second exits at
   * once (130 after SIGINT, 143 after SIGTERM).
   */
  handleSigint?: boolean;
  /** Return the model and trainer without disposing them (the caller disposes the model). */
  keepModel?: boolean;
  /** Stages that score responses (rs, ppo): a reward source used instead of reward-model folders (the caller disposes it). */
  reward?: RewardSource;
}

/** What any stage's result says, whatever else it holds. */
export interface StageRunResult {
  out: string;
  interrupted: boolean;
  signal: NodeJS.Signals | null;
}

/** How a recipe runs a stage: its inputs from earlier stages and what it leaves for later ones. */
export interface RecipeWiring<R> {
  /** Options the recipe sets from earlier stages' outputs (model, adapter, reward models ...); `given` is the user's section. */
  inputs(ctx: RecipeStageContext, given: Record<string, unknown>): Record<string, unknown>;
  /** Defaults the recipe applies under the user's options (e.g. a checkpoint cadence). */
  defaults?: Record<string, unknown>;
  /** The stage resumes from its own checkpoints (options resume/checkpointDir are set by the recipe). */
  checkpoints?: boolean;
  /** Outputs by role (model, adapter, reward_model, critic), after the run; may do follow-up work (SFT merges its adapter). */
  outputs(r: R, ctx: RecipeStageContext): Promise<Record<string, string>>;
  /** The stage's held-out figures and step count for summary.json. */
  summary(r: R): { eval?: Record<string, unknown>; steps?: number };
  /** Figures shown on the progress line of a metrics record. */
  progress(m: Record<string, unknown>): Record<string, number | string | undefined>;
  /**
   * How many of the stage's `totalSteps` were finished when it wrote this
   * record, for the progress display (default: the record's step). Stages
   * whose records are numbered by the round in progress say so here, so that
   * a round's first record does not show the round as done.
   */
  done?(m: Record<string, unknown>): number;
  /** The run's metrics record of the stage's n-th record (default: as it is). */
  record?(m: Record<string, unknown>, n: number): { step: number } & Record<string, unknown>;
}

/**
 * The wiring of a stage that trains a policy on the recipe's shared base
 * (SFT's merged model), which is also its reference: the base in, the
 * adapter (or, with full training, the model) out, checkpoints every 50
 * steps. DPO's family and KTO share it; `summary` and `progress` are theirs.
 */
export function policyOnBase<R extends { saved: 'adapter' | 'model' }>(own: Pick<RecipeWiring<R>, 'summary' | 'progress'>): RecipeWiring<R> {
  return {
    defaults: { checkpointSteps: 50 },
    checkpoints: true,
    inputs: (ctx) => ({ model: ctx.base }),
    outputs: async (r, ctx): Promise<Record<string, string>> => (r.saved === 'model' ? { model: ctx.dir } : { model: ctx.base, adapter: ctx.dir }),
    ...own,
  };
}

export interface RecipeStageContext {
  /** The stage's folder in the run. */
  dir: string;
  /** Policy stages build on each other (ppo continues rs's policy); false: each starts from `base`. */
  chained: boolean;
  /** The model later stages build on (SFT's merged or full model, else the recipe's model). */
  base: string;
  /** The recipe's starting model. */
  model: string;
  /** Outputs of the stages done so far, by stage key. */
  outputs: ReadonlyMap<string, Record<string, string>>;
  /** The recipe's reward-model wiring for stages that score (rs, ppo): the reward models' options, or {} with a RewardSource. */
  rewardOptions(): Record<string, unknown>;
  device: string;
  log: (line: string) => void;
}

export interface Stage<C, R extends StageRunResult, M = any> { // eslint-disable-line @typescript-eslint/no-explicit-any
  name: string;
  /** One line for --help. */
  summary: string;
  /** Every option of the stage (shared groups + its own), from which the CLI and the checks come. */
  options: OptionTable<C>;
  run(config: C, hooks?: StageHooks<M>): Promise<R>;
  recipe?: RecipeWiring<R>;
  /** Trains data-parallel under mpirun/srun (docs/distributed.md); other stages refuse a world of more than one. */
  dataParallel?: boolean;
}

/** A stage of unknown config and result, as the registry holds them. */
export type AnyStage = Stage<any, any, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

function typeOk(s: OptionSpec, v: unknown): boolean {
  if (v === null || v === undefined) return true;
  // Lists of numbers too (ReST's thresholds in a YAML recipe); the row's own check judges the values.
  if (s.type === 'list') return v === 'all-linear' || (Array.isArray(v) && v.every((x) => typeof x === 'string' || typeof x === 'number'));
  if (s.type === 'object') return typeof v === 'object' && !Array.isArray(v);
  return typeof v === s.type;
}

/**
 * A recipe section (or any untyped object) as the stage's config: unknown
 * keys and values of the wrong type are E_CONFIG naming `where`.
 */
export function isStageConfig<C>(table: OptionTable<C>, input: Record<string, unknown>, where: string): input is Record<string, unknown> & C {
  const rows = table as Record<string, OptionSpec>;
  for (const [k, v] of Object.entries(input)) {
    const s = rows[k];
    if (!s) throw new RlhfError('E_CONFIG', `${where}: unknown option '${k}' (the stage's options: ${Object.keys(rows).join(', ')})`, { where });
    if (!typeOk(s, v)) throw new RlhfError('E_CONFIG', `${where}.${k} must be ${s.type === 'list' ? 'a list of strings or numbers' : `a ${s.type}`}, got ${JSON.stringify(v)}`, { where });
  }
  return true;
}

let threadsSet = false;
/**
 * --threads: sizes the engine's thread pool through RLHF_NUM_THREADS, which
 * the pool reads when the process first uses the engine; a later change is
 * logged as not applied.
 */
export function applyThreads(n: number, log: (line: string) => void): void {
  if (!n) return;
  if (threadsSet && process.env.RLHF_NUM_THREADS !== String(n)) {
    const now = process.env.RLHF_NUM_THREADS;
    log(`note: --threads ${n} not applied: the engine already runs ${now} thread${now === '1' ? '' : 's'} in this process`);
    return;
  }
  process.env.RLHF_NUM_THREADS = String(n);
  threadsSet = true;
}
