/**
 * Crash-safe writes for run folders: whole files and whole folders appear
 * under their final name only once complete, and what was there before
 * survives a crash at any point. See docs/runs.md.
 *
 * Work in progress lives beside its target under a hidden name,
 * `.<name>.<kind>-<pid>-<8 hex>`, so it is on the same file system (rename is
 * atomic) and easy to recognise afterwards:
 *
 * - `tmp`: being written; never complete. Removed.
 * - `old`: the previous version of a folder, moved aside during a swap.
 *   Moved back if the folder itself is missing (the swap did not finish),
 *   removed otherwise.
 * - `del`: a folder being deleted. Removed.
 *
 * Leftovers of a process that is still alive (another writer) are left alone.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { RlhfError } from '../errors';

type Kind = 'tmp' | 'old' | 'del';
const LEFTOVER = /^\.(.+)\.(tmp|old|del)-(\d+)-([0-9a-f]{8})$/;

/** Names of this process's work in progress (never cleaned by this process). */
const active = new Set<string>();

function sideName(target: string, kind: Kind): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.${kind}-${process.pid}-${randomBytes(4).toString('hex')}`);
}

function alive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function ioError(what: string, where: string, e: unknown): RlhfError {
  if (e instanceof RlhfError) return e;
  const msg = (e as Error)?.message ?? String(e);
  return new RlhfError('E_IO', `${what} ${where}: ${msg}`, { where, cause: e });
}

/** fsync of a folder (makes renames in it durable); a no-op where folders cannot be opened (Windows). */
function fsyncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // not supported on this platform
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/** fsync of every file and folder under `dir` (contents written by code that did not sync them). */
function fsyncTree(dir: string): void {
  for (const ent of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, ent.name);
    if (ent.isDirectory()) fsyncTree(p);
    else if (ent.isFile()) {
      const fd = fs.openSync(p, 'r');
      try {
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
    }
  }
  fsyncDir(dir);
}

/**
 * Finishes or undoes what an interrupted writer left in `dir`: removes
 * temporary files and folders, moves a folder's previous version back where a
 * swap was cut off, and finishes interrupted deletions. `name` limits the
 * clean-up to the leftovers of that one file or folder. Returns the names
 * handled. This process's work in progress is always skipped, and so is
 * that of other live processes unless `ignoreLiveWriters` (for a caller that
 * knows it is the only writer, e.g. holding a run folder's lock: a dead
 * writer's process id may have been reused).
 */
export function recoverLeftovers(dir: string, opts: { name?: string; ignoreLiveWriters?: boolean } = {}): string[] {
  const only = opts.name;
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw ioError('cannot read the folder', dir, e);
  }
  const handled: string[] = [];
  // Restores first: an `old` folder whose target is gone is the previous version of a swap that did not finish.
  const found = names
    .map((n) => ({ n, m: LEFTOVER.exec(n) }))
    .filter((x): x is { n: string; m: RegExpExecArray } => x.m !== null && (only === undefined || x.m[1] === only))
    .sort((a, b) => (a.m[2] === 'old' ? 0 : 1) - (b.m[2] === 'old' ? 0 : 1));
  for (const { n, m } of found) {
    const p = path.join(dir, n);
    if (active.has(p)) continue;
    const pid = Number(m[3]);
    if (!opts.ignoreLiveWriters && pid !== process.pid && alive(pid)) continue;
    const target = path.join(dir, m[1]);
    try {
      if (m[2] === 'old' && !fs.existsSync(target)) {
        fs.renameSync(p, target);
        fsyncDir(dir);
      } else fs.rmSync(p, { recursive: true, force: true });
    } catch (e) {
      throw ioError('cannot clean up', p, e);
    }
    handled.push(n);
  }
  return handled;
}

/**
 * Writes `data` to `file` so that readers see either the previous contents or
 * the new ones, never a mix: write a temporary file in the same folder, fsync
 * it, rename it over `file`, fsync the folder. Temporary files left by an
 * earlier crash of a write to the same name are removed first. Synchronous,
 * so that state updates land in the order they are made.
 */
export function writeFileAtomic(file: string, data: string | Uint8Array): void {
  const dir = path.dirname(file);
  recoverLeftovers(dir, { name: path.basename(file) });
  const tmp = sideName(file, 'tmp');
  active.add(tmp);
  try {
    const fd = fs.openSync(tmp, 'wx');
    try {
      fs.writeFileSync(fd, data);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
    fsyncDir(dir);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw ioError('cannot write', file, e);
  } finally {
    active.delete(tmp);
  }
}

/**
 * Replaces the folder `finalDir` (or creates it) with one that `fill` writes,
 * so that a reader never sees a half-written folder under `finalDir` and the
 * previous version survives a crash at any point:
 *
 * 1. leftovers of an earlier interrupted call for `finalDir` are recovered
 *    ({@link recoverLeftovers});
 * 2. `fill(tmpDir)` writes into a fresh hidden sibling folder, which is then
 *    fsynced (every file in it, and the folder);
 * 3. if `finalDir` exists it is renamed aside (`.<name>.old-...`); the new
 *    folder is renamed to `finalDir` (the commit point); the old one is removed.
 *
 * A crash before the commit point leaves the previous folder (restored by the
 * next call or {@link recoverLeftovers} if it was aside); a crash after it
 * leaves the new one. If `fill` throws, the temporary folder is removed and
 * the error passes through.
 */
export async function replaceDirAtomic(finalDir: string, fill: (tmpDir: string) => Promise<void>): Promise<void> {
  const parent = path.dirname(path.resolve(finalDir));
  fs.mkdirSync(parent, { recursive: true });
  recoverLeftovers(parent, { name: path.basename(path.resolve(finalDir)) });
  if (fs.existsSync(finalDir) && !fs.statSync(finalDir).isDirectory())
    throw new RlhfError('E_ARGUMENT', `${finalDir} exists and is not a folder`, { where: finalDir });
  const tmp = sideName(path.resolve(finalDir), 'tmp');
  active.add(tmp);
  try {
    fs.mkdirSync(tmp);
    await fill(tmp);
    try {
      fsyncTree(tmp);
    } catch (e) {
      throw ioError('cannot sync', tmp, e);
    }
    let old: string | null = null;
    if (fs.existsSync(finalDir)) {
      old = sideName(path.resolve(finalDir), 'old');
      active.add(old);
      try {
        fs.renameSync(finalDir, old);
      } catch (e) {
        active.delete(old);
        throw ioError('cannot move aside', finalDir, e);
      }
    }
    try {
      fs.renameSync(tmp, finalDir); // commit
    } catch (e) {
      if (old) fs.renameSync(old, finalDir);
      throw ioError('cannot move into place', finalDir, e);
    } finally {
      if (old) active.delete(old);
    }
    fsyncDir(parent);
    if (old) fs.rmSync(old, { recursive: true, force: true });
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  } finally {
    active.delete(tmp);
  }
}

/**
 * Removes a folder so that it disappears at once: renamed to a hidden
 * `.<name>.del-...` sibling first, then deleted (a crash mid-delete leaves
 * only the hidden name, removed by the next clean-up). Missing: no-op.
 */
export function removeDirAtomic(dir: string): void {
  if (!fs.existsSync(dir)) return;
  const del = sideName(path.resolve(dir), 'del');
  active.add(del);
  try {
    fs.renameSync(dir, del);
    fsyncDir(path.dirname(del));
    fs.rmSync(del, { recursive: true, force: true });
  } catch (e) {
    throw ioError('cannot remove', dir, e);
  } finally {
    active.delete(del);
  }
}

/** A checkpoint folder: `<parent>/checkpoint-<step>` (transformers' Trainer naming). */
export interface Checkpoint {
  step: number;
  dir: string;
}

const CHECKPOINT = /^checkpoint-(\d+)$/;

/** The folder name of the checkpoint after `step` optimizer steps. */
export function checkpointName(step: number): string {
  if (!Number.isInteger(step) || step < 0) throw new RlhfError('E_ARGUMENT', `a checkpoint step must be a non-negative integer, got ${step}`);
  return `checkpoint-${step}`;
}

/**
 * The complete checkpoints under `parent`, oldest first. A folder is under a
 * `checkpoint-<step>` name only once complete (they are written with
 * {@link replaceDirAtomic}), so every one listed is usable.
 */
export function listCheckpoints(parent: string): Checkpoint[] {
  let ents: fs.Dirent[];
  try {
    ents = fs.readdirSync(parent, { withFileTypes: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw ioError('cannot read the folder', parent, e);
  }
  const out: Checkpoint[] = [];
  for (const ent of ents) {
    const m = CHECKPOINT.exec(ent.name);
    if (m && ent.isDirectory()) out.push({ step: Number(m[1]), dir: path.join(parent, ent.name) });
  }
  return out.sort((a, b) => a.step - b.step);
}

/** The newest complete checkpoint under `parent`, or null. */
export function latestCheckpoint(parent: string): Checkpoint | null {
  const all = listCheckpoints(parent);
  return all.length ? all[all.length - 1] : null;
}

/**
 * Writes `<parent>/checkpoint-<step>` with {@link replaceDirAtomic}, then
 * keeps only the newest `keep` checkpoints (older ones removed with
 * {@link removeDirAtomic}; `keep` <= 0 keeps all, like transformers'
 * `save_total_limit` unset). Returns the new checkpoint.
 */
export async function saveCheckpoint(parent: string, step: number, fill: (tmpDir: string) => Promise<void>, opts: { keep?: number } = {}): Promise<Checkpoint> {
  const dir = path.join(parent, checkpointName(step));
  recoverLeftovers(parent);
  await replaceDirAtomic(dir, fill);
  pruneCheckpoints(parent, opts.keep ?? 0);
  return { step, dir };
}

/** Removes all but the newest `keep` checkpoints under `parent` (`keep` <= 0: none removed). Returns the removed ones. */
export function pruneCheckpoints(parent: string, keep: number): Checkpoint[] {
  if (!(keep > 0)) return [];
  const all = listCheckpoints(parent);
  const drop = all.slice(0, Math.max(0, all.length - Math.floor(keep)));
  for (const c of drop) removeDirAtomic(c.dir);
  return drop;
}

/**
 * E_IO (naming the folder, the reason and what to do) unless the output
 * folder `dir` exists and is writable or can be created: checked before a
 * stage spends time training, so that its results are not lost at the end.
 * Creates nothing. `flag` names the option in the message (e.g. '--out').
 */
export function checkWritableDir(dir: string, flag = '--out'): void {
  const abs = path.resolve(dir);
  for (let p = abs; ; ) {
    let st: fs.Stats | null = null;
    try {
      st = fs.statSync(p);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      // ENOTDIR: a file on the way up, reported when the loop reaches it.
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw new RlhfError('E_IO', `${flag} ${dir}: cannot check ${p} (${code ?? (e as Error).message}); choose another output folder`, { where: abs, cause: e });
    }
    if (st) {
      if (!st.isDirectory())
        throw new RlhfError('E_IO', `${flag} ${dir}: cannot be created: ${p} is a file, not a folder; choose another output folder`, { where: abs });
      try {
        fs.accessSync(p, fs.constants.W_OK | fs.constants.X_OK);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code ?? 'EACCES';
        throw new RlhfError(
          'E_IO',
          `${flag} ${dir}: ${p === abs ? 'the folder' : `its parent ${p}`} is not writable (${code}${code === 'EROFS' ? ': a read-only file system' : ''}); choose a folder you can write to, or change its permissions`,
          { where: abs, cause: e },
        );
      }
      return;
    }
    const parent = path.dirname(p);
    if (parent === p) return;
    p = parent;
  }
}
