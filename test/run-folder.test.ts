/**
 * Run folders: creating, refusing folders that are not runs, run.json and
 * summary.json state, metrics.jsonl, checkpoints with retention, and resuming
 * (after a process is killed mid-checkpoint) to the same metrics file as an
 * uninterrupted run.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { RunFolder, readMetrics, type MetricRecord } from '../lib/run/run-folder';
import { RlhfError } from '../lib/errors';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-run-folder-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
let n = 0;
const fresh = (name: string) => path.join(tmp, `${name}-${n++}`);
const DIST = path.join(__dirname, '..', 'dist', 'lib', 'run', 'run-folder.js');
const readJson = (f: string) => JSON.parse(fs.readFileSync(f, 'utf8'));
const deadPid = () => spawnSync(process.execPath, ['-e', '']).pid!;

/** A deterministic stand-in for training: the metrics of a step depend only on the seed and the step. */
function metricsAt(seed: number, stage: string, step: number): { step: number; [k: string]: unknown } {
  const x = Math.sin(seed * 12.9898 + step * 78.233 + stage.length) * 43758.5453;
  return { step, loss: 2 / step + (x - Math.floor(x)) * 0.01, lr: 1e-4 * (1 - step / 100), tokens_per_sec: 1000 + step };
}

/** Runs stage `name` from its checkpoint (if any) to `steps`, checkpointing every `every` steps; stops after `crashAfter` steps if given. */
async function trainStage(t: { equal(a: unknown, b: unknown, msg?: string): unknown }, run: RunFolder, name: string, steps: number, every: number, seed: number, crashAfter?: number): Promise<void> {
  const { checkpoint } = run.beginStage(name);
  let step = checkpoint ? Number(fs.readFileSync(path.join(checkpoint.dir, 'state.json'), 'utf8')) : 0;
  if (checkpoint) t.equal(step, checkpoint.step, 'the checkpoint holds its step');
  while (step < steps) {
    step++;
    run.appendMetrics(name, metricsAt(seed, name, step));
    if (step % every === 0) await run.saveCheckpoint(name, step, async (d) => fs.writeFileSync(path.join(d, 'state.json'), String(step)), { keep: 2 });
    if (crashAfter !== undefined && step === crashAfter) return;
  }
  run.finishStage(name, { outputs: { adapter: path.join(run.stageDir(name), 'adapter') }, eval: { eval_loss: 0.5 } });
}

t.test('a new run: run.json, summary.json, stage folders', async (t) => {
  const dir = fresh('new');
  const run = RunFolder.open(dir, { resume: false, stages: ['sft', 'rm', 'ppo'], recipe: 'instructgpt', config: { lr: 1e-4, nested: { a: [1, 2] } }, seed: 7, versions: { device: 'cpu' } });
  t.teardown(() => run.close());
  const st = readJson(path.join(dir, 'run.json'));
  t.equal(st.format, 'rlhf-native-run');
  t.equal(st.format_version, 1);
  t.equal(st.recipe, 'instructgpt');
  t.equal(st.seed, 7);
  t.same(st.config, { lr: 1e-4, nested: { a: [1, 2] } });
  t.match(st.versions, { rlhf_native: /^\d+\.\d+\.\d+/, node: process.versions.node, device: 'cpu' });
  t.same(st.stages.map((s: { name: string; status: string }) => [s.name, s.status]), [['sft', 'pending'], ['rm', 'pending'], ['ppo', 'pending']]);
  t.equal(st.sessions.length, 1);
  t.same(readJson(path.join(dir, 'summary.json')), { stages: {} });
  t.same(run.state, st);
  t.equal(run.stageDir('rm'), path.join(path.resolve(dir), 'rm'));
  t.ok(fs.statSync(path.join(dir, 'rm')).isDirectory());
  t.throws(() => run.stageDir('dpo'), { code: 'E_ARGUMENT', message: /no stage "dpo"/ });
  t.equal(run.latestCheckpoint('sft'), null);
  t.same(fs.readdirSync(dir).filter((f) => f.startsWith('.') && f !== '.lock'), [], 'no temporary files');
});

t.test('a folder that is not a run is refused, and left as it was', async (t) => {
  const dir = fresh('user');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'notes.txt'), 'mine');
  for (const resume of [false, true]) {
    const e = t.throws(() => RunFolder.open(dir, { resume, stages: ['sft'] })) as RlhfError;
    t.equal(e.code, 'E_ARGUMENT');
    t.ok(e.message.includes(dir), `the message names the folder: ${e.message}`);
    t.same(fs.readdirSync(dir), ['notes.txt'], 'untouched');
  }
  const file = path.join(tmp, 'a-file');
  fs.writeFileSync(file, 'x');
  t.throws(() => RunFolder.open(file, { resume: false, stages: ['sft'] }), { code: 'E_ARGUMENT', message: /not a folder/ });
  // An empty folder is fine; a missing one too; resuming either is not.
  const empty = fresh('empty');
  fs.mkdirSync(empty);
  t.throws(() => RunFolder.open(empty, { resume: true }), { code: 'E_ARGUMENT', message: /no run to resume/ });
  t.throws(() => RunFolder.open(fresh('missing'), { resume: true }), { code: 'E_ARGUMENT', message: /no run to resume/ });
  RunFolder.open(empty, { resume: false, stages: ['sft'] }).close();
  // A run is not restarted over: a new run into it is refused.
  const e = t.throws(() => RunFolder.open(empty, { resume: false, stages: ['sft'] })) as RlhfError;
  t.match(e.message, /already holds a run/);
  // Bad stage lists.
  t.throws(() => RunFolder.open(fresh('s'), { resume: false }), { code: 'E_ARGUMENT' });
  t.throws(() => RunFolder.open(fresh('s'), { resume: false, stages: ['a', 'a'] }), { code: 'E_ARGUMENT', message: /unique/ });
  for (const bad of ['run.json', '../x', '', '.hidden', 'a/b'])
    t.throws(() => RunFolder.open(fresh('s'), { resume: false, stages: [bad] }), { code: 'E_ARGUMENT' }, JSON.stringify(bad));
  // A run.json that is not ours.
  const other = fresh('other');
  fs.mkdirSync(other);
  fs.writeFileSync(path.join(other, 'run.json'), '{"name":"something else"}');
  t.throws(() => RunFolder.open(other, { resume: true }), { code: 'E_ARGUMENT', message: /not a run state file/ });
});

t.test('stage lifecycle: metrics lines, checkpoints with retention, outputs and summary', async (t) => {
  const dir = fresh('life');
  const run = RunFolder.open(dir, { resume: false, stages: ['sft', 'rm'], seed: 1 });
  t.throws(() => run.appendMetrics('sft', { step: 1 }), { code: 'E_ARGUMENT', message: /beginStage/ });
  await trainStage(t, run, 'sft', 10, 3, 1);
  const lines = fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').split('\n');
  t.equal(lines.pop(), '', 'newline-terminated');
  t.equal(lines.length, 10);
  lines.forEach((l, i) => {
    const rec = JSON.parse(l);
    t.same(Object.keys(rec).slice(0, 2), ['stage', 'step'], 'stage and step come first');
    t.same(rec, { stage: 'sft', ...metricsAt(1, 'sft', i + 1) });
  });
  t.same(fs.readdirSync(path.join(dir, 'sft')).sort(), ['checkpoint-6', 'checkpoint-9'], 'keep 2');
  const sft = run.stage('sft');
  t.equal(sft.status, 'done');
  t.same(sft.outputs, { adapter: 'sft/adapter' }, 'outputs relative to the run');
  t.equal(sft.checkpoint, 'sft/checkpoint-9');
  t.ok(sft.wall_s > 0 && sft.wall_s < 60);
  t.ok(sft.started_at && sft.finished_at);
  const summary = readJson(path.join(dir, 'summary.json'));
  const { stage: _s, ...last } = { stage: 'sft', ...metricsAt(1, 'sft', 10) };
  t.same(summary.stages.sft, { status: 'done', steps: 10, wall_s: sft.wall_s, final: last, eval: { eval_loss: 0.5 } });
  t.same(run.getSummary(), summary);
  t.throws(() => run.beginStage('sft'), { code: 'E_ARGUMENT', message: /already done/ });
  t.throws(() => run.appendMetrics('sft', { step: 11 }), { code: 'E_ARGUMENT' }, 'a finished stage takes no more metrics');
  run.beginStage('rm');
  t.equal(run.stage('rm').status, 'running');
  t.throws(() => run.beginStage('rm'), { code: 'E_ARGUMENT', message: /already begun/ });
  t.throws(() => run.appendMetrics('rm', { step: -1 }), { code: 'E_ARGUMENT' });
  t.throws(() => run.appendMetrics('rm', { step: 1.5 }), { code: 'E_ARGUMENT' });
  run.appendMetrics('rm', { step: 1, stage: 'ignored', accuracy: 0.5 });
  t.same(readMetrics(path.join(dir, 'metrics.jsonl')).pop(), { stage: 'rm', step: 1, accuracy: 0.5 });
  run.finishStage('rm', { final: { accuracy: 0.75 }, steps: 1, outputs: { model: '/elsewhere/model' } });
  t.same(run.stage('rm').outputs, { model: '/elsewhere/model' }, 'outputs outside the run stay absolute');
  t.same(run.getSummary().stages.rm.final, { accuracy: 0.75 });
  const report = run.writeReport();
  t.equal(report, path.join(path.resolve(dir), 'report.html'));
  const html = fs.readFileSync(report, 'utf8');
  t.match(html, /data-stage="sft"/);
  t.match(html, /data-series="loss" data-n="10"/);
  run.close();
  run.close();
  t.throws(() => run.appendMetrics('rm', { step: 2 }), { code: 'E_ARGUMENT', message: /closed/ });
  t.notOk(fs.existsSync(path.join(dir, '.lock')), 'the lock is released');
});

t.test('resuming reproduces the metrics of an uninterrupted run', async (t) => {
  // The uninterrupted run.
  const whole = fresh('whole');
  const a = RunFolder.open(whole, { resume: false, stages: ['sft', 'rm'], seed: 3, config: { steps: 12 } });
  await trainStage(t, a, 'sft', 12, 4, 3);
  await trainStage(t, a, 'rm', 12, 5, 3);
  a.close();
  const want = fs.readFileSync(path.join(whole, 'metrics.jsonl'), 'utf8');

  // Interrupted twice: in rm after step 7 (checkpoint at 5), with a torn last line; then again
  // after step 11 (checkpoint at 10). Each time the process "dies" without closing.
  const dir = fresh('resumed');
  const b = RunFolder.open(dir, { resume: false, stages: ['sft', 'rm'], seed: 3, config: { steps: 12 } });
  await trainStage(t, b, 'sft', 12, 4, 3);
  await trainStage(t, b, 'rm', 12, 5, 3, 7);
  fs.appendFileSync(path.join(dir, 'metrics.jsonl'), '{"stage":"rm","step":8,"lo');
  t.equal(b.stage('rm').status, 'running');

  const c = RunFolder.open(dir, { resume: true, stages: ['sft', 'rm'], seed: 3, config: { steps: 12 } });
  t.equal(c.stage('sft').status, 'done', 'finished stages stay done');
  t.same(c.latestCheckpoint('rm')?.step, 5);
  const { checkpoint, wallSeconds } = c.beginStage('rm');
  t.equal(checkpoint?.step, 5);
  t.ok(wallSeconds >= 0);
  const cut = readMetrics(path.join(dir, 'metrics.jsonl'));
  t.same(cut.filter((r) => r.stage === 'rm').map((r) => r.step), [1, 2, 3, 4, 5], 'rm lines beyond the checkpoint and the torn line are gone');
  t.equal(cut.filter((r) => r.stage === 'sft').length, 12, 'other stages untouched');
  t.ok(fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').endsWith('\n'));
  // continue to step 11, "die" again
  let step = 5;
  while (step < 11) {
    step++;
    c.appendMetrics('rm', metricsAt(3, 'rm', step));
    if (step % 5 === 0) await c.saveCheckpoint('rm', step, async (d) => fs.writeFileSync(path.join(d, 'state.json'), String(step)), { keep: 2 });
  }
  const d = RunFolder.open(dir, { resume: true });
  await trainStage(t, d, 'rm', 12, 5, 3);
  d.close();
  t.equal(fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8'), want, 'metrics.jsonl equals the uninterrupted run, byte for byte');
  const st = readJson(path.join(dir, 'run.json'));
  t.same(st.stages.map((s: { status: string }) => s.status), ['done', 'done']);
  t.same(st.sessions.map((s: { resumed: boolean }) => s.resumed), [false, true, true]);
  t.same(readJson(path.join(dir, 'summary.json')).stages.rm.final, readJson(path.join(whole, 'summary.json')).stages.rm.final);
});

t.test('a stage resumed without a checkpoint starts over: all its lines go', async (t) => {
  const dir = fresh('nockpt');
  const a = RunFolder.open(dir, { resume: false, stages: ['sft'] });
  a.beginStage('sft');
  a.appendMetrics('sft', { step: 0, eval_loss: 3 });
  a.appendMetrics('sft', { step: 1, loss: 2 });
  const b = RunFolder.open(dir, { resume: true });
  t.same(b.beginStage('sft').checkpoint, null);
  t.equal(fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8'), '');
  b.close();
});

t.test('resume checks the settings against run.json', async (t) => {
  const dir = fresh('settings');
  RunFolder.open(dir, { resume: false, stages: ['sft', 'rm'], recipe: 'r', seed: 1, config: { lr: 1e-4, steps: 10, opt: { beta: 0.9 } } }).close();
  const e = t.throws(() => RunFolder.open(dir, { resume: true, config: { lr: 2e-4, steps: 10, opt: { beta: 0.95 } } })) as RlhfError;
  t.equal(e.code, 'E_ARGUMENT');
  t.match(e.message, /config keys lr, opt/);
  t.throws(() => RunFolder.open(dir, { resume: true, seed: 2 }), { message: /seed \(run\.json 1, now 2\)/ });
  t.throws(() => RunFolder.open(dir, { resume: true, recipe: 'x' }), { message: /recipe/ });
  t.throws(() => RunFolder.open(dir, { resume: true, stages: ['sft'] }), { message: /stages/ });
  RunFolder.open(dir, { resume: true, recipe: 'r', seed: 1, stages: ['sft', 'rm'], config: { opt: { beta: 0.9 }, steps: 10, lr: 1e-4 } }).close();
  t.pass('the same settings, in any key order, resume');
});

t.test('a live process holding the folder keeps others out; a stale lock is taken over', async (t) => {
  const dir = fresh('lock');
  RunFolder.open(dir, { resume: false, stages: ['sft'] }).close();
  fs.writeFileSync(path.join(dir, '.lock'), `${process.ppid}\n`);
  const e = t.throws(() => RunFolder.open(dir, { resume: true })) as RlhfError;
  t.equal(e.code, 'E_ARGUMENT');
  t.match(e.message, new RegExp(`in use by process ${process.ppid}`));
  fs.writeFileSync(path.join(dir, '.lock'), `${deadPid()}\n`);
  const run = RunFolder.open(dir, { resume: true });
  t.equal(fs.readFileSync(path.join(dir, '.lock'), 'utf8').trim(), String(process.pid));
  run.close();
});

t.test('a process killed while writing a checkpoint: the next open recovers and resumes from the previous one', { skip: !fs.existsSync(DIST) && 'dist/ not compiled' }, async (t) => {
  const dir = fresh('killed');
  const script = `
    const fs = require('node:fs');
    const path = require('node:path');
    const { RunFolder } = require(${JSON.stringify(DIST)});
    setInterval(() => {}, 1000);
    (async () => {
      const run = RunFolder.open(${JSON.stringify(dir)}, { resume: false, stages: ['ppo'], seed: 5 });
      run.beginStage('ppo');
      for (let step = 1; step <= 6; step++) {
        run.appendMetrics('ppo', { step, reward: step / 10 });
        if (step % 3 === 0)
          await run.saveCheckpoint('ppo', step, async (d) => {
            fs.writeFileSync(path.join(d, 'weights.bin'), 'w' + step);
            if (step === 6) { fs.writeFileSync(path.join(d, 'optim'), 'half'); process.kill(process.pid, 'SIGKILL'); }
            fs.writeFileSync(path.join(d, 'optim'), 'o' + step);
          });
      }
    })();
  `;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (b) => (stderr += b));
  const signal = await new Promise((r) => child.once('exit', (_c, s) => r(s)));
  t.equal(signal, 'SIGKILL', stderr);
  t.ok(fs.readdirSync(path.join(dir, 'ppo')).some((f) => f.startsWith('.checkpoint-6.tmp-')), 'a half-written checkpoint was left');
  t.same(fs.readdirSync(path.join(dir, 'ppo')).filter((f) => !f.startsWith('.')), ['checkpoint-3']);
  t.ok(fs.existsSync(path.join(dir, '.lock')), 'the dead process left its lock');

  const run = RunFolder.open(dir, { resume: true, seed: 5 });
  t.same(fs.readdirSync(path.join(dir, 'ppo')), ['checkpoint-3'], 'the half-written checkpoint is removed');
  const { checkpoint } = run.beginStage('ppo');
  t.equal(checkpoint?.step, 3);
  t.equal(fs.readFileSync(path.join(checkpoint!.dir, 'optim'), 'utf8'), 'o3', 'the previous checkpoint is intact');
  t.same(readMetrics(path.join(dir, 'metrics.jsonl')).map((r: MetricRecord) => r.step), [1, 2, 3]);
  run.close();
});
