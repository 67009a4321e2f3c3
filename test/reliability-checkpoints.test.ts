/**
 * Stage checkpoints (lib/stages/checkpoints.ts): the manifest (step, config
 * hash, input and file SHA-256) is written and checked; a damaged checkpoint
 * is skipped for the previous one; a checkpoint from other options or data
 * is refused with E_CHECKPOINT unless resumeMismatch; and an SFT process
 * killed with SIGKILL in the middle of writing a checkpoint (at fixed points
 * inside the write, and at a moment chosen from outside) leaves the previous
 * checkpoint loadable, and resuming from it ends with the same adapter as a
 * run that was never interrupted.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { RlhfError } from '../lib/errors';
import { initModel } from '../lib/model/init';
import { runSft, resolveSftConfig, type SftConfig } from '../lib/stages/sft';
import { StageCheckpoints, configHash, MANIFEST } from '../lib/stages/checkpoints';
import { listCheckpoints } from '../lib/run/atomic';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-ckpt-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'llama');
const data = path.join(tmp, 'rows.jsonl');
const SFT_JS = path.join(__dirname, '..', 'dist', 'lib', 'stages', 'sft.js');
const distBuilt = fs.existsSync(SFT_JS);

const quiet = { log: () => {}, handleSigint: false };
const cfgFor = (out: string): SftConfig => ({ model: base, data, out, steps: 6, batchSize: 2, lr: 2e-3, loraR: 4, checkpointSteps: 1, checkpointKeep: 2, seed: 9, device: 'cpu' });
const sha = (f: string) => createHash('sha256').update(fs.readFileSync(f)).digest('hex');
const hidden = (d: string) => fs.readdirSync(d).filter((f) => f.startsWith('.'));

let reference = '';
t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 2 });
  fs.writeFileSync(data, Array.from({ length: 16 }, (_, i) => JSON.stringify({ input_ids: [1, 3 + i, 30 + 2 * i, 90 + i, 2] })).join('\n') + '\n');
  const out = path.join(tmp, 'reference');
  await runSft(cfgFor(out), quiet);
  reference = sha(path.join(out, 'adapter_model.safetensors'));
});

t.test('the manifest: stage, step, config hash and the SHA-256 of every file and of the data', async (t) => {
  const out = path.join(tmp, 'reference');
  const dir = path.join(out, 'checkpoints', 'checkpoint-5');
  const m = JSON.parse(fs.readFileSync(path.join(dir, MANIFEST), 'utf8'));
  t.match(m, { format: 'rlhf-native-checkpoint', version: 1, stage: 'sft', step: 5 });
  t.equal(m.config_hash, configHash(resolveSftConfig(cfgFor(out)) as never));
  t.equal(m.config.lr, 2e-3);
  t.notOk('out' in m.config || 'checkpointSteps' in m.config || 'device' in m.config, 'where and how often to save are not part of the hash');
  t.same(Object.keys(m.files).sort(), ['optimizer.safetensors', 'trainable.safetensors', 'trainer_state.json']);
  for (const [f, v] of Object.entries(m.files as Record<string, { bytes: number; sha256: string }>)) {
    t.equal(v.sha256, sha(path.join(dir, f)), `${f} hash`);
    t.equal(v.bytes, fs.statSync(path.join(dir, f)).size, `${f} size`);
  }
  t.same(m.inputs.data, { path: data, bytes: fs.statSync(data).size, sha256: sha(data) });
  t.same(listCheckpoints(path.join(out, 'checkpoints')).map((c) => c.step), [4, 5], 'the newest two (checkpointKeep 2)');
});

t.test('a damaged checkpoint is skipped for the previous one; none usable is E_CHECKPOINT', async (t) => {
  const out = path.join(tmp, 'damaged');
  await runSft(cfgFor(out), quiet);
  const dir = path.join(out, 'checkpoints');
  const cfg = resolveSftConfig(cfgFor(out)) as never;
  const trainable = path.join(dir, 'checkpoint-5', 'trainable.safetensors');
  const bytes = fs.readFileSync(trainable);
  bytes[bytes.length - 3] ^= 0x40; // one bit of one weight
  fs.writeFileSync(trainable, bytes);
  const logs: string[] = [];
  const ck = new StageCheckpoints(dir, 2, { stage: 'sft', config: cfg, inputs: { data }, log: (l) => logs.push(l) });
  t.equal(ck.latest()!.step, 4, 'falls back to checkpoint-4');
  t.match(logs.join('\n'), /checkpoint-5 is damaged \(trainable\.safetensors does not match its SHA-256 in the manifest\); trying the previous checkpoint/);
  // The stage resumes from checkpoint-4 and still reproduces the uninterrupted run.
  const r = await runSft({ ...cfgFor(out), resume: true }, quiet);
  t.equal(r.resumedFrom, 4);
  t.equal(sha(path.join(out, 'adapter_model.safetensors')), reference, 'same adapter as the uninterrupted run');
  // Every checkpoint damaged: refused, naming each problem.
  for (const c of listCheckpoints(dir)) fs.rmSync(path.join(c.dir, MANIFEST));
  const e = t.throws(() => new StageCheckpoints(dir, 2, { stage: 'sft', config: cfg }).latest()) as RlhfError;
  t.equal(e.code, 'E_CHECKPOINT');
  t.match(e.message, /no usable checkpoint to resume from \(checkpoint-5: no manifest\.json; checkpoint-4: no manifest\.json\)/);
  const e2 = (await runSft({ ...cfgFor(out), resume: true }, quiet).catch((x) => x)) as RlhfError;
  t.equal(e2.code, 'E_CHECKPOINT', 'the stage refuses too');
});

t.test('--resume refuses a checkpoint from other options or data unless resumeMismatch', async (t) => {
  const out = path.join(tmp, 'mismatch');
  const ac = new AbortController();
  await runSft(cfgFor(out), { ...quiet, signal: ac.signal, onStep: (m) => m.step === 3 && ac.abort() });
  const e = (await runSft({ ...cfgFor(out), resume: true, lr: 1e-3, batchSize: 3 }, quiet).catch((x) => x)) as RlhfError;
  t.equal(e.code, 'E_CHECKPOINT');
  t.match(e.message, /checkpoint-3 was written by a run with other options or inputs: batchSize 2 \(now 3\), lr 0\.002 \(now 0\.001\)/);
  t.match(e.message, /--resume-mismatch/);
  // Options that do not change training are not compared.
  const same = await runSft({ ...cfgFor(out), resume: true, checkpointKeep: 3, evalSteps: 2, nanPolicy: 'skip' }, quiet).catch((x) => x);
  t.notOk(same instanceof Error, 'checkpointKeep, evalSteps and nanPolicy may change');
  // Changed data.
  const out2 = path.join(tmp, 'mismatch-data');
  const data2 = path.join(tmp, 'rows2.jsonl');
  fs.copyFileSync(data, data2);
  const ac2 = new AbortController();
  await runSft({ ...cfgFor(out2), data: data2 }, { ...quiet, signal: ac2.signal, onStep: (m) => m.step === 2 && ac2.abort() });
  fs.appendFileSync(data2, JSON.stringify({ input_ids: [1, 4, 5, 2] }) + '\n');
  const e3 = (await runSft({ ...cfgFor(out2), data: data2, resume: true }, quiet).catch((x) => x)) as RlhfError;
  t.equal(e3.code, 'E_CHECKPOINT');
  t.match(e3.message, /the data file .*rows2\.jsonl changed/);
  const logs: string[] = [];
  const r = await runSft({ ...cfgFor(out2), data: data2, resume: true, resumeMismatch: true }, { ...quiet, log: (l) => logs.push(l) });
  t.equal(r.resumedFrom, 2, 'resumeMismatch: continues from it');
  t.ok(logs.some((l) => /note: .*checkpoint-2 was written by a run with other options or inputs: the data file .* changed.*continuing from it anyway/.test(l)), 'and says so');
});

/**
 * Runs the SFT stage in a child process that kills itself with SIGKILL at
 * `point` while writing checkpoint-3: 'fill' (its files written, the
 * manifest about to land in the temporary folder), 'commit' (just after the
 * folder was renamed into place), 'prune' (while removing the oldest one).
 */
async function killedChild(out: string, point: 'fill' | 'commit' | 'prune'): Promise<void> {
  const script = `
    const fs = require('node:fs');
    const path = require('node:path');
    const point = ${JSON.stringify(point)};
    const die = () => process.kill(process.pid, 'SIGKILL');
    const rename = fs.renameSync;
    fs.renameSync = (a, b) => {
      if (point === 'fill' && path.basename(b) === 'manifest.json' && /\\.checkpoint-3\\.tmp-/.test(b)) die();
      rename(a, b);
      if (point === 'commit' && path.basename(b) === 'checkpoint-3') die();
      if (point === 'prune' && /\\.checkpoint-1\\.del-/.test(path.basename(b))) die();
    };
    const { runSft } = require(${JSON.stringify(SFT_JS)});
    runSft(${JSON.stringify(cfgFor(out))}, { handleSigint: false });
  `;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const [code, signal] = (await new Promise((r) => child.once('exit', (...a) => r(a)))) as [number | null, string | null];
  if (signal !== 'SIGKILL') throw new Error(`the child was not killed (exit ${code}): ${stderr}`);
}

t.test('SIGKILL in the middle of writing a checkpoint leaves the previous one loadable; resuming gives the same adapter', { skip: !distBuilt && 'dist/ not compiled' }, async (t) => {
  for (const point of ['fill', 'commit', 'prune'] as const) {
    const out = path.join(tmp, `killed-${point}`);
    await killedChild(out, point);
    const dir = path.join(out, 'checkpoints');
    const left = hidden(dir);
    // A commit under a new name leaves nothing aside; the other points leave a temporary or half-deleted folder.
    if (point !== 'commit') t.ok(left.length > 0, `${point}: the kill left work in progress (${left.join(', ')})`);
    const steps = listCheckpoints(dir).map((c) => c.step);
    t.same(steps, { fill: [1, 2], commit: [1, 2, 3], prune: [2, 3] }[point], `${point}: only complete checkpoints are listed`);
    for (const s of steps) t.equal(StageCheckpoints.damage(path.join(dir, `checkpoint-${s}`), s), null, `${point}: checkpoint-${s} verifies`);
    t.notOk(fs.existsSync(path.join(out, 'adapter_model.safetensors')), `${point}: no output yet`);
    const r = await runSft({ ...cfgFor(out), resume: true }, quiet);
    t.equal(r.resumedFrom, point === 'fill' ? 2 : 3, `${point}: resumed from the newest complete checkpoint`);
    t.same(hidden(dir), [], `${point}: leftovers cleaned up`);
    t.equal(sha(path.join(out, 'adapter_model.safetensors')), reference, `${point}: the adapter is bit-identical to the uninterrupted run's`);
    const metrics = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).step);
    t.same(metrics, [1, 2, 3, 4, 5, 6], `${point}: every step once in metrics.jsonl`);
  }
});

t.test('SIGKILL from outside while a checkpoint is being written', { skip: !distBuilt && 'dist/ not compiled' }, async (t) => {
  const out = path.join(tmp, 'killed-outside');
  const dir = path.join(out, 'checkpoints');
  const script = `require(${JSON.stringify(SFT_JS)}).runSft(${JSON.stringify({ ...cfgFor(out), steps: 400 })}, { handleSigint: false });`;
  const child = spawn(process.execPath, ['-e', script], { stdio: 'ignore' });
  const exited = new Promise<string | null>((r) => child.once('exit', (_c, s) => r(s)));
  // Watch for a checkpoint being written (its temporary folder) from step 3 on, and kill the child right then.
  let seen = '';
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline && child.exitCode === null) {
    let names: string[] = [];
    try {
      names = fs.readdirSync(dir);
    } catch {
      // not created yet
    }
    const tmpName = names.find((n) => /^\.checkpoint-(\d+)\.tmp-/.exec(n) && Number(/^\.checkpoint-(\d+)/.exec(n)![1]) >= 3);
    if (tmpName) {
      seen = tmpName;
      child.kill('SIGKILL');
      break;
    }
    await new Promise((r) => setImmediate(r));
  }
  if (!seen) child.kill('SIGKILL');
  t.equal(await exited, 'SIGKILL');
  t.ok(seen, `killed while ${seen || '(no checkpoint write caught; killed anyway)'} was being written`);
  const cks = listCheckpoints(dir);
  t.ok(cks.length > 0, `complete checkpoints: ${cks.map((c) => c.step).join(', ')}`);
  for (const c of cks) t.equal(StageCheckpoints.damage(c.dir, c.step), null, `checkpoint-${c.step} verifies`);
  // Resume the same 400-step run from the newest checkpoint and stop it two steps later.
  const ac = new AbortController();
  const newest = cks[cks.length - 1].step;
  const r = await runSft({ ...cfgFor(out), steps: 400, resume: true }, { ...quiet, signal: ac.signal, onStep: (m) => m.step >= newest + 2 && ac.abort() });
  t.equal(r.resumedFrom, newest, `resumed from checkpoint-${newest}`);
  t.ok(r.interrupted && r.steps === newest + 2, 'and trained on');
});
