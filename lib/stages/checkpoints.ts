/**
 * Resumable checkpoints of a training stage: `<dir>/checkpoint-<step>/`
 * written atomically (lib/run/atomic.ts: a temporary folder, every file
 * fsynced, then renamed into place, so a crash at any point leaves the
 * previous checkpoint intact), holding
 *   trainable.safetensors  every trainable tensor of the active set (LoRA
 *                          A/B and head, or every base weight), by the
 *                          names the trainer lists them under
 *   optimizer.safetensors  AdamW moments (or SGD momentum) and step count
 * or, for a stage that trains several adapters on one base (PPO's policy
 * and critic), the same two files per adapter in `<adapter>/` (the manifest
 * lists the adapter names), or none at all for a stage that keeps its
 * weights in folders of its own (rejection sampling's rounds);
 *   trainer_state.json     {step, extra}: what the stage needs to continue
 *                          exactly (held-out figures so far, elapsed time,
 *                          LoRA dropout forward count, KL coefficient, ...)
 *   manifest.json          {stage, step, config_hash, config, inputs, files,
 *                          adapters?}:
 *                          the options that shape training (hashed), the
 *                          fingerprints of the input files, and the size and
 *                          SHA-256 of every file above
 * The data position is not stored: every stage plans its batches as a pure
 * function of (seed, step), so it skips the steps a checkpoint covers.
 *
 * Loading checks the manifest: a checkpoint whose files do not match it is
 * damaged and skipped (the reason is logged; the previous one is used), and
 * one written with other options or other data is refused with E_CHECKPOINT
 * naming the differences, unless `allowMismatch` (--resume-mismatch).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { RlhfError } from '../errors';
import type { Trainer } from '../engine/train';
import { openSafetensors, writeSafetensors } from '../safetensors';
import { latestCheckpoint, listCheckpoints, saveCheckpoint, writeFileAtomic } from '../run/atomic';
import { packageVersion } from '../info';

export const MANIFEST = 'manifest.json';
export const MANIFEST_FORMAT = 'rlhf-native-checkpoint';

/**
 * Options that do not change what training computes, left out of the config
 * hash: where things go, how often to checkpoint or evaluate, the device, and
 * the resume switches themselves.
 */
export const UNHASHED_OPTIONS: readonly string[] = [
  'out',
  'resume',
  'resumeMismatch',
  'checkpointDir',
  'checkpointSteps',
  'checkpointKeep',
  'device',
  'evalSteps',
  'evalBatchSize',
  'nanPolicy',
  'logSteps',
  'threads',
];

export interface CheckpointManifest {
  format: typeof MANIFEST_FORMAT;
  version: 1;
  stage: string;
  step: number;
  rlhf_native_version: string;
  config_hash: string;
  config: Record<string, unknown>;
  /** Input files by role (e.g. data): size and SHA-256. */
  inputs: Record<string, { path: string; bytes: number; sha256: string }>;
  /** Every other file of the checkpoint (paths relative to it, '/'-separated): size and SHA-256. */
  files: Record<string, { bytes: number; sha256: string }>;
  /** The adapters saved in subfolders of their own; absent: the active trainable set at the top. */
  adapters?: string[];
}

export function sha256File(file: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n <= 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

function canonical(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(canonical);
  if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, canonical((v as Record<string, unknown>)[k])]));
  return v === undefined ? null : v;
}

/** The options of `config` that shape training (UNHASHED_OPTIONS dropped), keys sorted. */
export function hashedConfig(config: Record<string, unknown>): Record<string, unknown> {
  return canonical(Object.fromEntries(Object.entries(config).filter(([k]) => !UNHASHED_OPTIONS.includes(k)))) as Record<string, unknown>;
}

export function configHash(config: Record<string, unknown>): string {
  return 'sha256:' + createHash('sha256').update(JSON.stringify(hashedConfig(config))).digest('hex');
}

export interface CheckpointOptions {
  /** The stage name recorded in the manifest ('sft', 'rm', ...). */
  stage?: string;
  /** The stage's resolved config: hashed into the manifest and compared on resume. */
  config?: Record<string, unknown>;
  /** Input files to fingerprint by role, e.g. { data: 'train.jsonl' }; null entries are skipped. */
  inputs?: Record<string, string | null | undefined>;
  /** Resume from a checkpoint written with other options or inputs (logging the differences). Default false. */
  allowMismatch?: boolean;
  log?: (line: string) => void;
}

export interface ResumeState {
  step: number;
  dir: string;
  extra: Record<string, unknown>;
  /** The adapters the checkpoint holds in subfolders (absent: the active set). */
  adapters?: string[];
}

/** Which trainable sets a checkpoint holds: the active one (absent), or the named adapters, each in its own subfolder ([] for none). */
export type CheckpointSets = readonly string[] | undefined;

/** The files a checkpoint of `adapters` must hold besides trainer_state.json. */
function weightFiles(adapters: CheckpointSets): string[] {
  if (!adapters) return ['trainable.safetensors', 'optimizer.safetensors'];
  return adapters.flatMap((a) => [`${a}/trainable.safetensors`, `${a}/optimizer.safetensors`]);
}

/** Every file under `dir`, '/'-separated paths relative to it, sorted. */
function filesUnder(dir: string, prefix = ''): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    if (e.isDirectory()) out.push(...filesUnder(path.join(dir, e.name), `${prefix}${e.name}/`));
    else if (e.isFile()) out.push(prefix + e.name);
  }
  return out.sort();
}

/** An adapter name as a folder name: letters, digits, '.', '_', '-' only. */
function checkAdapterName(name: string): void {
  if (!/^[A-Za-z0-9._-]+$/.test(name) || name === '.' || name === '..') throw new RlhfError('E_ARGUMENT', `checkpoint adapter name '${name}' must be a plain folder name`);
}

export class StageCheckpoints {
  private inputPrints: CheckpointManifest['inputs'] | null = null;

  constructor(
    readonly dir: string,
    private readonly keep = 2,
    private readonly opts: CheckpointOptions = {},
  ) {}

  private inputs(): CheckpointManifest['inputs'] {
    if (this.inputPrints) return this.inputPrints;
    const out: CheckpointManifest['inputs'] = {};
    for (const [role, file] of Object.entries(this.opts.inputs ?? {})) {
      if (!file) continue;
      try {
        out[role] = { path: file, bytes: fs.statSync(file).size, sha256: sha256File(file) };
      } catch (e) {
        throw new RlhfError('E_IO', `cannot read ${file} (the ${role} file) to fingerprint it: ${(e as Error).message}`, { where: file, cause: e });
      }
    }
    return (this.inputPrints = out);
  }

  /**
   * Writes checkpoint-<step> (atomically, with its manifest) and prunes older
   * ones beyond `keep`. `adapters`: the named adapters (each made active in
   * turn, so the caller chooses the active one afterwards), or [] for none
   * (then `trainer` may be null); absent: the trainer's active set.
   */
  async save(step: number, trainer: Trainer | null, opts: { full?: boolean; sourceModel?: string; extra?: Record<string, unknown>; adapters?: readonly string[] } = {}): Promise<string> {
    const config = this.opts.config ?? {};
    const inputs = this.inputs();
    const sets = opts.adapters;
    sets?.forEach(checkAdapterName);
    if (!trainer && (!sets || sets.length)) throw new RlhfError('E_ARGUMENT', 'StageCheckpoints.save: trainable weights need a trainer');
    const ck = await saveCheckpoint(
      this.dir,
      step,
      async (tmp) => {
        const writeSet = async (dir: string) => {
          fs.mkdirSync(dir, { recursive: true });
          const tensors = trainer!.trainable().map((t) => ({ name: t.name, dtype: 'F32' as const, shape: t.shape, data: trainer!.read(t.name) }));
          writeSafetensors(path.join(dir, 'trainable.safetensors'), tensors, { format: 'rlhf-native-trainable' });
          await trainer!.saveOptimizerState(path.join(dir, 'optimizer.safetensors'));
        };
        if (!sets) await writeSet(tmp);
        else
          for (const a of sets) {
            trainer!.useAdapter(a);
            await writeSet(path.join(tmp, a));
          }
        writeFileAtomic(path.join(tmp, 'trainer_state.json'), JSON.stringify({ step, extra: opts.extra ?? {} }, null, 2) + '\n');
        const files: CheckpointManifest['files'] = {};
        for (const f of filesUnder(tmp)) {
          const p = path.join(tmp, f);
          files[f] = { bytes: fs.statSync(p).size, sha256: sha256File(p) };
        }
        const manifest: CheckpointManifest = {
          format: MANIFEST_FORMAT,
          version: 1,
          stage: this.opts.stage ?? 'unknown',
          step,
          rlhf_native_version: packageVersion(),
          config_hash: configHash(config),
          config: hashedConfig(config),
          inputs,
          files,
          ...(sets ? { adapters: [...sets] } : {}),
        };
        writeFileAtomic(path.join(tmp, MANIFEST), JSON.stringify(manifest, null, 2) + '\n');
      },
      { keep: this.keep },
    );
    return ck.dir;
  }

  /** The newest checkpoint folder under `dir` (unverified), or null. */
  newest(): string | null {
    return latestCheckpoint(this.dir)?.dir ?? null;
  }

  /**
   * Why the checkpoint folder `dir` (of `step`) cannot be used as it is: a
   * missing or unreadable manifest, or a file whose size or SHA-256 differs
   * from it. Null when it is intact.
   */
  static damage(dir: string, step: number): string | null {
    const file = path.join(dir, MANIFEST);
    let m: Partial<CheckpointManifest>;
    try {
      m = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (e) {
      return (e as NodeJS.ErrnoException).code === 'ENOENT' ? `no ${MANIFEST}` : `${MANIFEST} is unreadable (${(e as Error).message})`;
    }
    if (m.format !== MANIFEST_FORMAT || typeof m.files !== 'object' || m.files === null) return `${MANIFEST} is not a checkpoint manifest`;
    if (m.step !== step) return `${MANIFEST} is for step ${String(m.step)}, not ${step}`;
    for (const [name, want] of Object.entries(m.files)) {
      const p = path.join(dir, name);
      let size: number;
      try {
        size = fs.statSync(p).size;
      } catch {
        return `${name} is missing`;
      }
      if (size !== want.bytes) return `${name} has ${size} bytes, the manifest says ${want.bytes}`;
      if (sha256File(p) !== want.sha256) return `${name} does not match its SHA-256 in the manifest`;
    }
    if (m.adapters !== undefined && !(Array.isArray(m.adapters) && m.adapters.every((a) => typeof a === 'string'))) return `${MANIFEST} has a bad adapter list`;
    for (const need of [...weightFiles(m.adapters), 'trainer_state.json']) if (!(need in m.files)) return `the manifest does not list ${need}`;
    return null;
  }

  /**
   * The newest usable checkpoint, or null when there is none at all.
   * Damaged ones are skipped with the reason logged (E_CHECKPOINT when every
   * one is damaged); one written with other options or inputs is refused
   * with E_CHECKPOINT unless `allowMismatch`.
   */
  latest(): ResumeState | null {
    const all = listCheckpoints(this.dir);
    if (!all.length) return null;
    const log = this.opts.log ?? (() => {});
    const label = this.opts.stage ?? 'resume';
    const problems: string[] = [];
    for (const ck of [...all].reverse()) {
      const damage = StageCheckpoints.damage(ck.dir, ck.step);
      if (damage) {
        problems.push(`${path.basename(ck.dir)}: ${damage}`);
        log(`${label}: ${ck.dir} is damaged (${damage}); ${ck === all[0] ? 'no older checkpoint to fall back to' : 'trying the previous checkpoint'}`);
        continue;
      }
      const manifest = JSON.parse(fs.readFileSync(path.join(ck.dir, MANIFEST), 'utf8')) as CheckpointManifest;
      this.checkConfig(ck.dir, manifest);
      const stateFile = path.join(ck.dir, 'trainer_state.json');
      let state: { step?: unknown; extra?: unknown };
      try {
        state = JSON.parse(fs.readFileSync(stateFile, 'utf8'));
      } catch (e) {
        throw new RlhfError('E_CHECKPOINT', `${stateFile}: cannot read the checkpoint state (${(e as Error).message})`, { where: stateFile });
      }
      if (state.step !== ck.step) throw new RlhfError('E_CHECKPOINT', `${stateFile}: step ${String(state.step)} does not match the folder name`, { where: stateFile });
      return { step: ck.step, dir: ck.dir, extra: (state.extra as Record<string, unknown>) ?? {}, ...(manifest.adapters ? { adapters: manifest.adapters } : {}) };
    }
    throw new RlhfError(
      'E_CHECKPOINT',
      `${this.dir}: no usable checkpoint to resume from (${problems.join('; ')}); remove the damaged checkpoint folders to start over, or restore them from a copy`,
      { where: this.dir },
    );
  }

  /** E_CHECKPOINT when the checkpoint was written with other options or inputs than this run's (unless allowMismatch). */
  private checkConfig(dir: string, m: CheckpointManifest): void {
    if (!this.opts.config) return;
    const now = hashedConfig(this.opts.config);
    const diffs: string[] = [];
    if (m.config_hash !== configHash(this.opts.config)) {
      const keys = [...new Set([...Object.keys(m.config ?? {}), ...Object.keys(now)])].sort();
      for (const k of keys) {
        const a = JSON.stringify((m.config ?? {})[k] ?? null), b = JSON.stringify(now[k] ?? null);
        if (a !== b) diffs.push(`${k} ${a} (now ${b})`);
      }
      if (!diffs.length) diffs.push('the options hash differently');
    }
    const inputs = this.inputs();
    for (const [role, cur] of Object.entries(inputs)) {
      const old = m.inputs?.[role];
      if (old && old.sha256 !== cur.sha256) diffs.push(`the ${role} file ${cur.path} changed (${old.bytes} -> ${cur.bytes} bytes, different SHA-256)`);
    }
    if (!diffs.length) return;
    const what = `${dir} was written by a run with other options or inputs: ${diffs.slice(0, 8).join(', ')}${diffs.length > 8 ? `, and ${diffs.length - 8} more` : ''}`;
    if (this.opts.allowMismatch) {
      (this.opts.log ?? (() => {}))(`${this.opts.stage ?? 'resume'}: note: ${what}; continuing from it anyway (--resume-mismatch)`);
      return;
    }
    throw new RlhfError('E_CHECKPOINT', `${what}; resume with the same options and data, or pass --resume-mismatch (resumeMismatch: true) to continue from it anyway`, {
      where: dir,
    });
  }

  /**
   * Puts the checkpoint's trainable values and optimizer state into the
   * trainer: its active set, or (`adapters`) each named adapter, which the
   * checkpoint must hold, leaving the last one active.
   */
  restore(state: ResumeState, trainer: Trainer, adapters?: readonly string[]): void {
    const want = adapters ? [...adapters] : undefined;
    if (JSON.stringify(state.adapters ?? null) !== JSON.stringify(want ?? null))
      throw new RlhfError(
        'E_CHECKPOINT',
        `${state.dir} holds ${state.adapters ? `the adapters ${state.adapters.join(', ')}` : 'one trainable set'}, this run trains ${want ? `the adapters ${want.join(', ')}` : 'one trainable set'}: the checkpoint is for another stage`,
        { where: state.dir },
      );
    if (!want) return this.restoreSet(state.dir, trainer);
    for (const a of want) {
      trainer.useAdapter(a);
      this.restoreSet(path.join(state.dir, a), trainer);
    }
  }

  private restoreSet(dir: string, trainer: Trainer): void {
    const file = path.join(dir, 'trainable.safetensors');
    const st = openSafetensors(file);
    try {
      for (const t of trainer.trainable()) {
        if (!st.has(t.name)) throw new RlhfError('E_CHECKPOINT', `${file}: no '${t.name}': the checkpoint is for another model or trainable set`, { where: file });
        const info = st.tensor(t.name);
        if (info.dtype !== 'F32' || info.shape.join(',') !== t.shape.join(','))
          throw new RlhfError('E_CHECKPOINT', `${file}: '${t.name}' is ${info.dtype} [${info.shape}], expected F32 [${t.shape}]: the checkpoint is for another model or trainable set`, { where: file });
        const bytes = st.tensorBytes(t.name);
        trainer.write(t.name, new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)));
      }
    } finally {
      st.close();
    }
    trainer.loadOptimizerState(path.join(dir, 'optimizer.safetensors'));
  }
}
