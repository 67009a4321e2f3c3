/**
 * Resumable checkpoints of a training stage: `<dir>/checkpoint-<step>/`
 * written atomically (lib/run/atomic.ts: a temporary folder, every file
 * fsynced, then renamed into place, so a crash at any point leaves the
 * previous checkpoint intact), holding
 *   trainable.safetensors  every trainable tensor of the active set (LoRA
 *                          A/B and head, or every base weight), by the
 *                          names the trainer lists them under
 *   optimizer.safetensors  AdamW moments (or SGD momentum) and step count
 *   trainer_state.json     {step, extra}: what the stage needs to continue
 *                          exactly (held-out figures so far, elapsed time,
 *                          LoRA dropout forward count, KL coefficient, ...)
 *   manifest.json          {stage, step, config_hash, config, inputs, files}:
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
  /** Every other file of the checkpoint: size and SHA-256. */
  files: Record<string, { bytes: number; sha256: string }>;
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

  /** Writes checkpoint-<step> (atomically, with its manifest) and prunes older ones beyond `keep`. */
  async save(step: number, trainer: Trainer, opts: { full?: boolean; sourceModel?: string; extra?: Record<string, unknown> } = {}): Promise<string> {
    const config = this.opts.config ?? {};
    const inputs = this.inputs();
    const ck = await saveCheckpoint(
      this.dir,
      step,
      async (tmp) => {
        const tensors = trainer.trainable().map((t) => ({ name: t.name, dtype: 'F32' as const, shape: t.shape, data: trainer.read(t.name) }));
        writeSafetensors(path.join(tmp, 'trainable.safetensors'), tensors, { format: 'rlhf-native-trainable' });
        await trainer.saveOptimizerState(path.join(tmp, 'optimizer.safetensors'));
        writeFileAtomic(path.join(tmp, 'trainer_state.json'), JSON.stringify({ step, extra: opts.extra ?? {} }, null, 2) + '\n');
        const files: CheckpointManifest['files'] = {};
        for (const f of fs.readdirSync(tmp).sort()) {
          const p = path.join(tmp, f);
          if (fs.statSync(p).isFile()) files[f] = { bytes: fs.statSync(p).size, sha256: sha256File(p) };
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
    for (const need of ['trainable.safetensors', 'optimizer.safetensors', 'trainer_state.json'])
      if (!(need in m.files)) return `the manifest does not list ${need}`;
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
      return { step: ck.step, dir: ck.dir, extra: (state.extra as Record<string, unknown>) ?? {} };
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

  /** Puts the checkpoint's trainable values and optimizer state into the trainer's active set. */
  restore(state: ResumeState, trainer: Trainer): void {
    const file = path.join(state.dir, 'trainable.safetensors');
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
    trainer.loadOptimizerState(path.join(state.dir, 'optimizer.safetensors'));
  }
}
