/**
 * A run folder: where a recipe (or a single stage) keeps its state, metrics,
 * checkpoints, outputs and report, so that an interrupted run can be resumed
 * and its results read by other tools. Layout, formats and guarantees:
 * docs/runs.md.
 *
 * ```
 * run/
 *   run.json        state: recipe, config, seed, versions, stages (status, outputs, wall time)
 *   metrics.jsonl   one JSON object per line, with `stage` and `step`
 *   summary.json    per stage: final metrics, held-out evaluation, wall time
 *   report.html     charts and tables (writeReport)
 *   <stage>/        a stage's folder: checkpoint-<step>/ and its outputs
 * ```
 *
 * This module also re-exports the other run helpers (atomic writes and
 * checkpoints, the report, the progress display).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { RlhfError } from '../errors';
import { packageVersion } from '../info';
import { latestCheckpoint, recoverLeftovers, saveCheckpoint, writeFileAtomic, type Checkpoint } from './atomic';
import { renderReport, type ComparisonTable, type MetricRecord, type RunSummary, type SampleTable, type StageSummary } from './report';

export * from './atomic';
export * from './report';
export * from './progress';

export type StageStatus = 'pending' | 'running' | 'done';

/** One stage's entry in run.json. */
export interface RunStage {
  name: string;
  status: StageStatus;
  /** What the stage produced, by kind (e.g. `{ adapter: 'sft/adapter' }`); paths relative to the run folder unless outside it. */
  outputs: Record<string, string>;
  /** ISO time the stage first began. */
  started_at: string | null;
  /** ISO time the stage finished. */
  finished_at: string | null;
  /** Wall-clock seconds, summed over sessions, each counted up to its last checkpoint (or the end). */
  wall_s: number;
  /** The last checkpoint this run recorded (relative path). Informational: resuming looks at the folder itself. */
  checkpoint: string | null;
}

/** run.json. */
export interface RunState {
  format: 'rlhf-native-run';
  format_version: 1;
  recipe: string | null;
  config: unknown;
  seed: number | null;
  /** Versions at creation: rlhf_native, node, platform, plus what the caller adds. */
  versions: Record<string, string>;
  created_at: string;
  updated_at: string;
  /** One entry per open (the first, then each resume), with the versions it ran with. */
  sessions: { started_at: string; resumed: boolean; versions: Record<string, string> }[];
  stages: RunStage[];
}

export interface OpenRunOptions {
  /**
   * false: start a new run; the folder must be missing or empty.
   * true: continue the run in the folder; `recipe`, `config`, `seed` and
   * `stages`, when given, must equal what run.json recorded.
   */
  resume: boolean;
  /** Stage names in order (required for a new run): letters, digits, `_` and `-`. */
  stages?: readonly string[];
  recipe?: string | null;
  /** The resolved config (JSON-serialisable). */
  config?: unknown;
  seed?: number | null;
  /** Extra version strings to record (e.g. the addon build, the device). */
  versions?: Record<string, string>;
}

export const RUN_FILE = 'run.json';
export const METRICS_FILE = 'metrics.jsonl';
export const SUMMARY_FILE = 'summary.json';
export const REPORT_FILE = 'report.html';
const LOCK_FILE = '.lock';
const STAGE_NAME = /^[A-Za-z0-9][A-Za-z0-9_-]*$/;

function arg(ok: boolean, msg: string, where?: string): asserts ok {
  if (!ok) throw new RlhfError('E_ARGUMENT', msg, where !== undefined ? { where } : undefined);
}

function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object')
    return `{${Object.keys(v)
      .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  return JSON.stringify(v ?? null);
}

/** Top-level keys whose values differ (or the whole value, as ''). */
function differences(a: unknown, b: unknown): string[] {
  if (canonical(a) === canonical(b)) return [];
  const obj = (x: unknown): x is Record<string, unknown> => !!x && typeof x === 'object' && !Array.isArray(x);
  if (!obj(a) || !obj(b)) return [''];
  return [...new Set([...Object.keys(a), ...Object.keys(b)])].filter((k) => canonical(a[k]) !== canonical(b[k])).sort();
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function readJson(file: string): unknown {
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}

function isRunState(x: unknown): x is RunState {
  const s = x as RunState;
  return !!s && typeof s === 'object' && s.format === 'rlhf-native-run' && Array.isArray(s.stages);
}

/** Parses metrics.jsonl text: complete lines only (a torn last line is dropped); lines that are not JSON objects are kept raw. */
function parseLines(text: string): { raw: string; rec: MetricRecord | null }[] {
  const lines = text.split('\n');
  lines.pop(); // the part after the last newline: empty, or a torn write
  return lines
    .filter((l) => l.trim() !== '')
    .map((raw) => {
      try {
        const rec = JSON.parse(raw);
        return { raw, rec: rec && typeof rec === 'object' && !Array.isArray(rec) ? (rec as MetricRecord) : null };
      } catch {
        return { raw, rec: null };
      }
    });
}

/** Reads metrics.jsonl (complete JSON-object lines only). */
export function readMetrics(file: string): MetricRecord[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new RlhfError('E_IO', `cannot read ${file}: ${(e as Error).message}`, { where: file, cause: e });
  }
  return parseLines(text)
    .map((l) => l.rec)
    .filter((r): r is MetricRecord => r !== null);
}

/** The run folder of a recipe or stage (see the module comment). Open with {@link RunFolder.open}; {@link RunFolder.close} when done. */
export class RunFolder {
  /** Absolute path of the folder. */
  readonly dir: string;
  private st: RunState;
  private summary: RunSummary;
  private metricsFd: number | null = null;
  private closed = false;
  /** Stages begun in this session: when, the wall time before it, their last metrics line. */
  private active = new Map<string, { t0: number; wallBefore: number; last: MetricRecord | undefined }>();

  private constructor(dir: string, st: RunState, summary: RunSummary) {
    this.dir = dir;
    this.st = st;
    this.summary = summary;
  }

  /**
   * Opens a run folder.
   *
   * New run (`resume: false`): the folder must be missing or empty; a
   * non-empty folder is refused (E_ARGUMENT naming it), whether it holds
   * other files or an earlier run, and nothing in it is touched. run.json
   * and summary.json are written at once.
   *
   * Resume (`resume: true`): the folder must hold a run (E_ARGUMENT
   * otherwise). Work that a crash interrupted is recovered (temporary files
   * and folders removed, a folder cut off mid-swap put back), and the given
   * recipe, config, seed and stages are checked against run.json.
   *
   * Either way the folder is locked against a second live process (`.lock`,
   * holding the process id; a stale lock is taken over).
   */
  static open(dir: string, opts: OpenRunOptions): RunFolder {
    const abs = path.resolve(dir);
    if (fs.existsSync(abs) && !fs.statSync(abs).isDirectory()) throw new RlhfError('E_ARGUMENT', `${dir} exists and is not a folder`, { where: dir });
    const runFile = path.join(abs, RUN_FILE);
    const entries = fs.existsSync(abs) ? fs.readdirSync(abs) : [];
    const now = new Date().toISOString();
    const versions = { rlhf_native: packageVersion(), node: process.versions.node, platform: `${process.platform}-${process.arch}`, ...opts.versions };

    if (!opts.resume) {
      if (entries.includes(RUN_FILE))
        throw new RlhfError('E_ARGUMENT', `${dir} already holds a run (${RUN_FILE}); resume it, or choose a new or empty folder (nothing in it was changed)`, { where: dir });
      arg(entries.length === 0, `${dir} is not empty and is not a run folder (no ${RUN_FILE}); choose a new or empty folder (nothing in it was changed)`, dir);
      const names = opts.stages ?? [];
      arg(names.length > 0, 'a new run needs its list of stages');
      for (const n of names) arg(STAGE_NAME.test(n), `stage name ${JSON.stringify(n)} must be letters, digits, _ and - (starting with a letter or digit)`);
      arg(new Set(names).size === names.length, `stage names must be unique: ${names.join(', ')}`);
      const st: RunState = {
        format: 'rlhf-native-run',
        format_version: 1,
        recipe: opts.recipe ?? null,
        config: opts.config ?? null,
        seed: opts.seed ?? null,
        versions,
        created_at: now,
        updated_at: now,
        sessions: [{ started_at: now, resumed: false, versions }],
        stages: names.map((name) => ({ name, status: 'pending', outputs: {}, started_at: null, finished_at: null, wall_s: 0, checkpoint: null })),
      };
      fs.mkdirSync(abs, { recursive: true });
      const run = new RunFolder(abs, st, { stages: {} });
      run.lock();
      try {
        run.saveState();
        run.saveSummary();
      } catch (e) {
        run.close();
        throw e;
      }
      return run;
    }

    if (!entries.includes(RUN_FILE))
      throw new RlhfError('E_ARGUMENT', `no run to resume in ${dir} (no ${RUN_FILE})${entries.length ? '' : ': the folder is missing or empty'}`, { where: dir });
    let st: unknown;
    try {
      st = readJson(runFile);
    } catch (e) {
      throw new RlhfError('E_ARGUMENT', `${runFile} is not a run state file: ${(e as Error).message}`, { where: runFile, cause: e });
    }
    arg(isRunState(st), `${runFile} is not a run state file (format is not rlhf-native-run)`, runFile);
    if (st.format_version !== 1) throw new RlhfError('E_UNSUPPORTED', `${runFile} has format_version ${st.format_version}; this version of rlhf-native reads 1`, { where: runFile });
    const mismatch: string[] = [];
    if (opts.recipe !== undefined && (opts.recipe ?? null) !== st.recipe) mismatch.push(`recipe (run.json ${JSON.stringify(st.recipe)}, now ${JSON.stringify(opts.recipe)})`);
    if (opts.seed !== undefined && (opts.seed ?? null) !== st.seed) mismatch.push(`seed (run.json ${st.seed}, now ${opts.seed})`);
    if (opts.stages !== undefined && canonical(opts.stages) !== canonical(st.stages.map((s) => s.name)))
      mismatch.push(`stages (run.json ${st.stages.map((s) => s.name).join(', ')}, now ${opts.stages.join(', ')})`);
    if (opts.config !== undefined) {
      const d = differences(st.config, opts.config);
      if (d.length) mismatch.push(d[0] === '' ? 'config' : `config keys ${d.join(', ')}`);
    }
    arg(mismatch.length === 0, `cannot resume ${dir} with different settings: ${mismatch.join('; ')}. A resumed run must use the settings it started with`, dir);

    let summary: RunSummary = { stages: {} };
    try {
      const s = readJson(path.join(abs, SUMMARY_FILE)) as RunSummary;
      if (s && typeof s === 'object' && s.stages && typeof s.stages === 'object') summary = s;
    } catch {
      // missing or unreadable: rebuilt as stages finish
    }
    const run = new RunFolder(abs, st, summary);
    run.lock();
    try {
      recoverLeftovers(abs, { ignoreLiveWriters: true });
      for (const s of st.stages) recoverLeftovers(path.join(abs, s.name), { ignoreLiveWriters: true });
      st.sessions = [...(st.sessions ?? []), { started_at: now, resumed: true, versions }];
      run.saveState();
    } catch (e) {
      run.close();
      throw e;
    }
    return run;
  }

  /** A copy of run.json's current contents. */
  get state(): RunState {
    return structuredClone(this.st);
  }

  /** A stage's entry in run.json (a copy). */
  stage(name: string): RunStage {
    return structuredClone(this.entry(name));
  }

  /** `<run>/<name>`, created if missing. */
  stageDir(name: string): string {
    this.entry(name);
    const d = path.join(this.dir, name);
    fs.mkdirSync(d, { recursive: true });
    return d;
  }

  /** The newest complete checkpoint of a stage (`<run>/<stage>/checkpoint-<step>`), or null. */
  latestCheckpoint(name: string): Checkpoint | null {
    this.entry(name);
    return latestCheckpoint(path.join(this.dir, name));
  }

  /**
   * Starts (or resumes) a stage: marks it running and returns the checkpoint
   * to continue from (null: start from step 0). metrics.jsonl is cut back to
   * match that checkpoint: this stage's lines with a step beyond it (all of
   * them when there is none) are removed, as is a torn last line, so that
   * after the stage continues the file equals that of an uninterrupted run.
   * A stage that is already done is refused.
   */
  beginStage(name: string): { checkpoint: Checkpoint | null; wallSeconds: number } {
    this.usable();
    const e = this.entry(name);
    arg(e.status !== 'done', `stage ${name} of ${this.dir} is already done`);
    arg(!this.active.has(name), `stage ${name} has already begun`);
    const checkpoint = this.latestCheckpoint(name);
    const last = this.truncateMetrics(name, checkpoint ? checkpoint.step : -1);
    this.stageDir(name);
    e.status = 'running';
    e.started_at ??= new Date().toISOString();
    e.checkpoint = checkpoint ? path.relative(this.dir, checkpoint.dir) : null;
    this.active.set(name, { t0: performance.now(), wallBefore: e.wall_s, last });
    this.saveState();
    return { checkpoint, wallSeconds: e.wall_s };
  }

  /**
   * Appends one line to metrics.jsonl: `{stage, step, ...record}`, written
   * with one write call per line, straight to the file. The stage must have
   * begun in this session. `step` is a non-negative integer.
   */
  appendMetrics(stage: string, record: { step: number; [key: string]: unknown }): void {
    this.usable();
    const a = this.active.get(stage);
    arg(a !== undefined, `stage ${stage} has not begun (call beginStage first)`);
    arg(Number.isInteger(record.step) && record.step >= 0, `a metrics step must be a non-negative integer, got ${record.step}`);
    const { stage: _ignored, step, ...rest } = record;
    const rec = { stage, step, ...rest } as MetricRecord;
    const line = JSON.stringify(rec) + '\n';
    this.metricsFd ??= fs.openSync(path.join(this.dir, METRICS_FILE), 'a');
    fs.writeSync(this.metricsFd, line);
    a.last = rec;
  }

  /**
   * Writes the checkpoint of `stage` after `step` optimizer steps:
   * `fill(tmpDir)` saves weights, optimizer state, data position and RNG
   * state into a temporary folder, which becomes `<stage>/checkpoint-<step>`
   * at once when complete (replaceDirAtomic). Only the newest `keep`
   * checkpoints are kept (default 0: all). The metrics written so far are
   * synced first, so a checkpoint never survives a crash that its metrics
   * lines do not. Write step N's metrics line before checkpoint N.
   */
  async saveCheckpoint(stage: string, step: number, fill: (tmpDir: string) => Promise<void>, opts: { keep?: number } = {}): Promise<Checkpoint> {
    this.usable();
    const a = this.active.get(stage);
    arg(a !== undefined, `stage ${stage} has not begun (call beginStage first)`);
    if (this.metricsFd !== null) fs.fsyncSync(this.metricsFd);
    const c = await saveCheckpoint(this.stageDir(stage), step, fill, opts);
    const e = this.entry(stage);
    e.checkpoint = path.relative(this.dir, c.dir);
    e.wall_s = a.wallBefore + (performance.now() - a.t0) / 1000;
    this.saveState();
    return c;
  }

  /**
   * Marks a stage done and records its outputs in run.json and its summary
   * in summary.json: `final` (default: the stage's last metrics line), `eval`
   * (held-out evaluation), the steps (default: the last metrics step) and
   * the wall time.
   */
  finishStage(stage: string, result: { outputs?: Record<string, string>; final?: Record<string, unknown>; eval?: Record<string, unknown>; steps?: number } = {}): void {
    this.usable();
    const a = this.active.get(stage);
    arg(a !== undefined, `stage ${stage} has not begun (call beginStage first)`);
    if (this.metricsFd !== null) fs.fsyncSync(this.metricsFd);
    const e = this.entry(stage);
    for (const [k, p] of Object.entries(result.outputs ?? {})) {
      const abs = path.resolve(this.dir, p);
      const rel = path.relative(this.dir, abs);
      e.outputs[k] = rel.startsWith('..') || path.isAbsolute(rel) ? abs : rel.split(path.sep).join('/');
    }
    e.status = 'done';
    e.finished_at = new Date().toISOString();
    e.wall_s = a.wallBefore + (performance.now() - a.t0) / 1000;
    this.active.delete(stage);
    let final = result.final;
    if (!final && a.last) {
      const { stage: _s, ...rest } = a.last;
      final = rest;
    }
    const s: StageSummary = { status: 'done', steps: result.steps ?? a.last?.step ?? 0, wall_s: e.wall_s };
    if (final) s.final = final;
    if (result.eval) s.eval = result.eval;
    this.summary.stages[stage] = s;
    this.saveState();
    this.saveSummary();
  }

  /** Sets summary.json's comparison table (the report shows it first) and rewrites report.html. */
  setComparison(table: ComparisonTable): void {
    this.summary.comparison = table;
    this.saveSummary();
    this.writeReport();
  }

  /** Sets summary.json's sample completions (the report shows them after the outcome) and rewrites report.html. */
  setSamples(table: SampleTable): void {
    this.summary.samples = table;
    this.saveSummary();
    this.writeReport();
  }

  /** A copy of summary.json's current contents. */
  getSummary(): RunSummary {
    return structuredClone(this.summary);
  }

  /** Writes report.html (renderReport over run.json, metrics.jsonl and summary.json; safe mid-run). Returns its path. */
  writeReport(): string {
    const file = path.join(this.dir, REPORT_FILE);
    const html = renderReport({
      title: `${this.st.recipe ? `${this.st.recipe}: ` : ''}${path.basename(this.dir)}`,
      stages: this.st.stages.map((s) => ({ name: s.name, status: s.status })),
      metrics: readMetrics(path.join(this.dir, METRICS_FILE)),
      summary: this.summary,
      info: {
        folder: this.dir,
        recipe: this.st.recipe,
        seed: this.st.seed,
        created: this.st.created_at,
        updated: this.st.updated_at,
        'rlhf-native': this.st.versions.rlhf_native ?? null,
      },
    });
    writeFileAtomic(file, html);
    return file;
  }

  /** Closes metrics.jsonl and releases the lock. Stages left running stay `running` in run.json (resumable). Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.metricsFd !== null) {
      try {
        fs.fsyncSync(this.metricsFd);
      } finally {
        fs.closeSync(this.metricsFd);
        this.metricsFd = null;
      }
    }
    const lock = path.join(this.dir, LOCK_FILE);
    try {
      if (Number(fs.readFileSync(lock, 'utf8').trim()) === process.pid) fs.rmSync(lock, { force: true });
    } catch {
      // already gone
    }
  }

  private usable(): void {
    if (this.closed) throw new RlhfError('E_ARGUMENT', `the run folder ${this.dir} is closed`);
  }

  private entry(name: string): RunStage {
    const e = this.st.stages.find((s) => s.name === name);
    arg(e !== undefined, `${this.dir} has no stage ${JSON.stringify(name)} (stages: ${this.st.stages.map((s) => s.name).join(', ')})`);
    return e;
  }

  private lock(): void {
    const file = path.join(this.dir, LOCK_FILE);
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        fs.writeFileSync(file, `${process.pid}\n`, { flag: 'wx' });
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new RlhfError('E_IO', `cannot create ${file}: ${(e as Error).message}`, { where: file, cause: e });
      }
      const pid = Number(fs.readFileSync(file, 'utf8').trim());
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid))
        throw new RlhfError('E_ARGUMENT', `${this.dir} is in use by process ${pid} (${file}); if no run is using it, delete that file`, { where: this.dir });
      fs.rmSync(file, { force: true }); // stale (or this process's own)
    }
    throw new RlhfError('E_IO', `cannot lock ${this.dir}`, { where: file });
  }

  /** Cuts this stage's lines beyond `keepUpTo` (and a torn last line) from metrics.jsonl; returns the stage's last kept record. */
  private truncateMetrics(stage: string, keepUpTo: number): MetricRecord | undefined {
    const file = path.join(this.dir, METRICS_FILE);
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new RlhfError('E_IO', `cannot read ${file}: ${(e as Error).message}`, { where: file, cause: e });
    }
    const lines = parseLines(text);
    const kept = lines.filter((l) => !(l.rec && l.rec.stage === stage && !(typeof l.rec.step === 'number' && l.rec.step <= keepUpTo)));
    const out = kept.map((l) => l.raw + '\n').join('');
    if (out !== text) {
      if (this.metricsFd !== null) {
        fs.closeSync(this.metricsFd);
        this.metricsFd = null;
      }
      writeFileAtomic(file, out);
    }
    const mine = kept.filter((l) => l.rec?.stage === stage);
    return mine.length ? (mine[mine.length - 1].rec as MetricRecord) : undefined;
  }

  private saveState(): void {
    this.st.updated_at = new Date().toISOString();
    writeFileAtomic(path.join(this.dir, RUN_FILE), JSON.stringify(this.st, null, 2) + '\n');
  }

  private saveSummary(): void {
    writeFileAtomic(path.join(this.dir, SUMMARY_FILE), JSON.stringify(this.summary, null, 2) + '\n');
  }
}
