/**
 * Atomic writes and checkpoint folders: files and folders appear complete or
 * not at all; a process killed at any point of replaceDirAtomic (while
 * filling, after moving the previous folder aside, after the commit) leaves a
 * usable folder, and the next call recovers; retention keeps the newest K.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import {
  writeFileAtomic,
  replaceDirAtomic,
  recoverLeftovers,
  removeDirAtomic,
  saveCheckpoint,
  listCheckpoints,
  latestCheckpoint,
  pruneCheckpoints,
  checkpointName,
} from '../lib/run/atomic';
import { RlhfError } from '../lib/errors';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-run-atomic-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
let n = 0;
const fresh = (name: string) => {
  const d = path.join(tmp, `${name}-${n++}`);
  fs.mkdirSync(d);
  return d;
};
const DIST = path.join(__dirname, '..', 'dist', 'lib', 'run', 'atomic.js');
const distBuilt = fs.existsSync(DIST);

/** A process id that is not running any more. */
function deadPid(): number {
  return spawnSync(process.execPath, ['-e', '']).pid!;
}
const hidden = (dir: string) => fs.readdirSync(dir).filter((f) => f.startsWith('.'));
const readTree = (dir: string): Record<string, string> =>
  Object.fromEntries(fs.readdirSync(dir).sort().map((f) => [f, fs.readFileSync(path.join(dir, f), 'utf8')]));

async function fillWith(files: Record<string, string>) {
  return async (d: string) => {
    for (const [k, v] of Object.entries(files)) fs.writeFileSync(path.join(d, k), v);
  };
}

t.test('writeFileAtomic writes and replaces, leaving no temporary file', async (t) => {
  const d = fresh('file');
  const f = path.join(d, 'state.json');
  writeFileAtomic(f, '{"a":1}\n');
  t.equal(fs.readFileSync(f, 'utf8'), '{"a":1}\n');
  writeFileAtomic(f, new Uint8Array([104, 105]));
  t.equal(fs.readFileSync(f, 'utf8'), 'hi');
  t.same(fs.readdirSync(d), ['state.json']);
  const e = t.throws(() => writeFileAtomic(path.join(d, 'missing', 'x.json'), 'x')) as RlhfError;
  t.equal(e.code, 'E_IO');
  t.match(e.message, /missing/);
  t.same(fs.readdirSync(d), ['state.json'], 'a failed write leaves nothing behind');
});

t.test('writeFileAtomic removes temporaries of a dead writer to the same name only', async (t) => {
  const d = fresh('file-leftovers');
  const dead = deadPid();
  const mine = `.state.json.tmp-${dead}-0badc0de`;
  const other = `.other.json.tmp-${dead}-0badc0de`;
  const live = `.state.json.tmp-${process.ppid}-12345678`; // a live process: another writer
  const user = '.state.json.tmp-notes'; // not ours
  for (const f of [mine, other, live, user]) fs.writeFileSync(path.join(d, f), 'partial');
  writeFileAtomic(path.join(d, 'state.json'), 'ok');
  t.same(fs.readdirSync(d).sort(), [other, live, user, 'state.json'].sort());
});

t.test('replaceDirAtomic creates and replaces a folder; readers see only complete versions', async (t) => {
  const d = fresh('dir');
  const final = path.join(d, 'model');
  await replaceDirAtomic(final, await fillWith({ 'a.txt': 'v1', 'b.txt': 'v1' }));
  t.same(readTree(final), { 'a.txt': 'v1', 'b.txt': 'v1' });
  await replaceDirAtomic(final, async (tmpDir) => {
    t.not(path.resolve(tmpDir), path.resolve(final));
    t.equal(path.dirname(tmpDir), d, 'the temporary folder is a sibling (same file system)');
    fs.writeFileSync(path.join(tmpDir, 'a.txt'), 'v2');
    t.same(readTree(final), { 'a.txt': 'v1', 'b.txt': 'v1' }, 'while filling, the folder is still the previous version');
    fs.mkdirSync(path.join(tmpDir, 'sub'));
    fs.writeFileSync(path.join(tmpDir, 'sub', 'c.txt'), 'v2');
  });
  t.same(fs.readdirSync(final).sort(), ['a.txt', 'sub'], 'replaced');
  t.equal(fs.readFileSync(path.join(final, 'a.txt'), 'utf8'), 'v2');
  t.equal(fs.readFileSync(path.join(final, 'sub', 'c.txt'), 'utf8'), 'v2');
  t.notOk(fs.existsSync(path.join(final, 'b.txt')), 'files of the old version are gone');
  t.same(hidden(d), [], 'no leftovers');
});

t.test('replaceDirAtomic: a failing fill keeps the previous folder and cleans up', async (t) => {
  const d = fresh('dir-fail');
  const final = path.join(d, 'checkpoint-5');
  await replaceDirAtomic(final, await fillWith({ 'w.bin': 'old' }));
  await t.rejects(
    replaceDirAtomic(final, async (tmpDir) => {
      fs.writeFileSync(path.join(tmpDir, 'w.bin'), 'half');
      throw new Error('disk full');
    }),
    /disk full/,
  );
  t.same(readTree(final), { 'w.bin': 'old' });
  t.same(hidden(d), []);
  fs.writeFileSync(path.join(d, 'file'), 'x');
  const e = (await replaceDirAtomic(path.join(d, 'file'), async () => {}).catch((x) => x)) as RlhfError;
  t.equal(e.code, 'E_ARGUMENT', 'a file where the folder should go');
  t.equal(fs.readFileSync(path.join(d, 'file'), 'utf8'), 'x');
});

/**
 * Runs replaceDirAtomic in a child process that kills itself (SIGKILL, no
 * clean-up of any kind) at `point`: 'fill' while filling, 'aside' just after
 * the previous folder was moved aside, 'commit' just after the new folder was
 * moved into place (before the old one is removed).
 */
async function crashChild(final: string, point: 'fill' | 'aside' | 'commit'): Promise<void> {
  const script = `
    const fs = require('node:fs');
    const path = require('node:path');
    const final = ${JSON.stringify(final)};
    const point = ${JSON.stringify(point)};
    const die = () => process.kill(process.pid, 'SIGKILL');
    const rename = fs.renameSync;
    fs.renameSync = (a, b) => {
      rename(a, b);
      if (point === 'aside' && path.resolve(a) === final) die();
      if (point === 'commit' && path.resolve(b) === final) die();
    };
    const { replaceDirAtomic } = require(${JSON.stringify(DIST)});
    setInterval(() => {}, 1000);
    replaceDirAtomic(final, async (tmp) => {
      fs.writeFileSync(path.join(tmp, 'weights.bin'), 'new');
      fs.writeFileSync(path.join(tmp, 'optimizer.bin'), 'new');
      if (point === 'fill') die();
    });
  `;
  const child = spawn(process.execPath, ['-e', script], { stdio: 'ignore' });
  const [, signal] = (await new Promise((r) => child.once('exit', (...a) => r(a)))) as [number | null, string | null];
  if (signal !== 'SIGKILL') throw new Error(`the child was not killed (signal ${signal})`);
}

t.test('a process killed at any point of replaceDirAtomic leaves a complete folder; the next call recovers', { skip: !distBuilt && 'dist/ not compiled' }, async (t) => {
  for (const point of ['fill', 'aside', 'commit'] as const) {
    const d = fresh(`crash-${point}`);
    const final = path.join(d, 'checkpoint-40');
    await replaceDirAtomic(final, await fillWith({ 'weights.bin': 'old', 'optimizer.bin': 'old' }));
    await crashChild(final, point);
    const left = hidden(d);
    t.ok(left.length > 0, `${point}: the crash left work in progress (${left.join(', ')})`);
    if (point === 'aside') t.notOk(fs.existsSync(final), 'aside: the folder is momentarily absent, never half-written');
    else t.same(readTree(final), point === 'fill' ? { 'optimizer.bin': 'old', 'weights.bin': 'old' } : { 'optimizer.bin': 'new', 'weights.bin': 'new' }, `${point}: a complete version`);
    t.same(listCheckpoints(d).map((c) => c.step), point === 'aside' ? [] : [40], `${point}: only complete checkpoints are listed`);

    // Recovery alone: the previous version comes back (or the committed one stays).
    const recovered = recoverLeftovers(d);
    t.same(recovered.sort(), left.sort(), `${point}: every leftover handled`);
    t.same(hidden(d), []);
    t.same(readTree(final), point === 'commit' ? { 'optimizer.bin': 'new', 'weights.bin': 'new' } : { 'optimizer.bin': 'old', 'weights.bin': 'old' }, `${point}: recovered`);
  }
  // The next replaceDirAtomic call recovers by itself.
  const d = fresh('crash-next');
  const final = path.join(d, 'checkpoint-7');
  await replaceDirAtomic(final, await fillWith({ 'weights.bin': 'old', 'optimizer.bin': 'old' }));
  await crashChild(final, 'aside');
  await replaceDirAtomic(final, await fillWith({ 'weights.bin': 'third' }));
  t.same(readTree(final), { 'weights.bin': 'third' });
  t.same(hidden(d), [], 'no leftovers after the next call');
});

t.test('recoverLeftovers: restores, finishes deletions, and leaves live writers and other files alone', async (t) => {
  const d = fresh('recover');
  const dead = deadPid();
  const mk = (name: string, content = 'x') => {
    fs.mkdirSync(path.join(d, name));
    fs.writeFileSync(path.join(d, name, 'f'), content);
  };
  mk(`.checkpoint-9.old-${dead}-aaaaaaaa`, 'prev'); // swap cut off: checkpoint-9 missing
  mk(`.checkpoint-9.tmp-${dead}-bbbbbbbb`, 'half');
  mk(`.checkpoint-3.del-${dead}-cccccccc`, 'dying'); // half-deleted by retention: never restored
  mk(`.checkpoint-5.tmp-${process.ppid}-dddddddd`, 'live'); // another live process is writing it
  mk('.git');
  fs.writeFileSync(path.join(d, '.checkpoint-2.old-notes'), 'user file');
  t.same(recoverLeftovers(d, { name: 'checkpoint-3' }), [`.checkpoint-3.del-${dead}-cccccccc`], 'name limits the clean-up');
  recoverLeftovers(d);
  t.same(fs.readdirSync(d).sort(), ['.checkpoint-2.old-notes', `.checkpoint-5.tmp-${process.ppid}-dddddddd`, '.git', 'checkpoint-9'].sort());
  t.equal(fs.readFileSync(path.join(d, 'checkpoint-9', 'f'), 'utf8'), 'prev');
  t.same(listCheckpoints(d).map((c) => c.step), [9]);
  recoverLeftovers(d, { ignoreLiveWriters: true });
  t.notOk(fs.existsSync(path.join(d, `.checkpoint-5.tmp-${process.ppid}-dddddddd`)), 'ignoreLiveWriters: a reused process id does not keep leftovers forever');
  t.same(recoverLeftovers(path.join(d, 'missing')), []);
});

t.test('checkpoints: naming, listing, newest, retention', async (t) => {
  const d = fresh('ckpt');
  t.equal(latestCheckpoint(path.join(d, 'missing')), null);
  t.equal(latestCheckpoint(d), null);
  t.equal(checkpointName(40), 'checkpoint-40');
  t.throws(() => checkpointName(-1), { code: 'E_ARGUMENT' });
  t.throws(() => checkpointName(1.5), { code: 'E_ARGUMENT' });
  for (const step of [9, 10, 2, 100]) {
    const c = await saveCheckpoint(d, step, async (tmpDir) => fs.writeFileSync(path.join(tmpDir, 'step'), String(step)));
    t.same(c, { step, dir: path.join(d, `checkpoint-${step}`) });
  }
  fs.writeFileSync(path.join(d, 'checkpoint-500'), 'a file, not a checkpoint');
  fs.mkdirSync(path.join(d, 'checkpoint-final'));
  fs.mkdirSync(path.join(d, 'adapter'));
  t.same(listCheckpoints(d).map((c) => c.step), [2, 9, 10, 100], 'numeric order; only checkpoint-<int> folders');
  t.same(latestCheckpoint(d), { step: 100, dir: path.join(d, 'checkpoint-100') });
  t.same(pruneCheckpoints(d, 0).length, 0, 'keep 0 keeps all');
  t.same(pruneCheckpoints(d, 3).map((c) => c.step), [2]);
  await saveCheckpoint(d, 120, async (tmpDir) => fs.writeFileSync(path.join(tmpDir, 'step'), '120'), { keep: 2 });
  t.same(listCheckpoints(d).map((c) => c.step), [100, 120], 'keep 2');
  t.equal(fs.readFileSync(path.join(d, 'checkpoint-120', 'step'), 'utf8'), '120');
  t.same(hidden(d), []);
  t.ok(fs.existsSync(path.join(d, 'adapter')) && fs.existsSync(path.join(d, 'checkpoint-final')), 'other folders untouched');
  // Saving the same step again replaces it.
  await saveCheckpoint(d, 120, async (tmpDir) => fs.writeFileSync(path.join(tmpDir, 'step'), 'again'), { keep: 2 });
  t.equal(fs.readFileSync(path.join(d, 'checkpoint-120', 'step'), 'utf8'), 'again');
  t.same(listCheckpoints(d).map((c) => c.step), [100, 120]);
});

t.test('removeDirAtomic', async (t) => {
  const d = fresh('remove');
  fs.mkdirSync(path.join(d, 'x', 'y'), { recursive: true });
  removeDirAtomic(path.join(d, 'x'));
  t.same(fs.readdirSync(d), []);
  removeDirAtomic(path.join(d, 'x'));
  t.pass('a missing folder is a no-op');
});
