/**
 * Signals: SIGTERM (and SIGINT) during a stage finishes the current step,
 * saves the output and a checkpoint, and exits 143 (130 for SIGINT); the
 * checkpoint on disk is complete (its manifest verifies) and `--resume`
 * continues from it to the end. A second signal exits at once with the same
 * code, leaving only complete checkpoints, from which the run resumes. The
 * stages without checkpoints (dpo, ppo, rs) stop and save the same way.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { initModel } from '../lib/model/init';
import { runRm } from '../lib/stages/reward';
import { runDpo } from '../lib/stages/dpo';
import { runPpo } from '../lib/stages/ppo';
import { runRejectionSampling } from '../lib/stages/rejection';
import { functionReward } from '../lib/reward/sources';
import { StageCheckpoints } from '../lib/stages/checkpoints';
import { listCheckpoints } from '../lib/run/atomic';
import { exitCodeFor, stopOnSignals } from '../lib/run/signals';
import { CLI, ROOT, cliBuilt } from './helpers/cli';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-signals-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'tiny');
const data = path.join(tmp, 'sft.jsonl');
const pairs = path.join(tmp, 'pairs.jsonl');
const prompts = path.join(tmp, 'prompts.jsonl');
const skip = !cliBuilt() && 'CLI not compiled';

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 8 });
  fs.writeFileSync(data, Array.from({ length: 24 }, (_, i) => JSON.stringify({ prompt: `Count to ${i % 9}:`, completion: ` ${Array.from({ length: (i % 9) + 1 }, (_, k) => k + 1).join(' ')}` })).join('\n') + '\n');
  fs.writeFileSync(pairs, Array.from({ length: 16 }, (_, i) => JSON.stringify({ prompt: `Pick ${i}:`, chosen: ` yes ${i}`, rejected: ` no` })).join('\n') + '\n');
  fs.writeFileSync(prompts, Array.from({ length: 8 }, (_, i) => JSON.stringify({ prompt: `Tell me ${i}` })).join('\n') + '\n');
});

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI; `onLine` sees stderr as it arrives and may signal the child. */
function runLive(args: string[], onLine: (stderr: string, kill: (s: NodeJS.Signals) => void) => void = () => {}): Promise<Run> {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, env: { ...process.env, RLHF_DEBUG: '' } });
  let stdout = '', stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => {
    stderr += d;
    onLine(stderr, (s) => child.kill(s));
  });
  const guard = setTimeout(() => child.kill('SIGKILL'), 120_000); // never hang the suite
  return new Promise((resolve) =>
    child.on('close', (code, signal) => {
      clearTimeout(guard);
      resolve({ code, signal, stdout, stderr });
    }),
  );
}

const sftArgs = (out: string, steps: number, batch: number, ...more: string[]) =>
  ['sft', '--model', base, '--data', data, '--out', out, '--steps', String(steps), '--batch-size', String(batch), '--device', 'cpu', '--log-steps', '1', ...more];

t.test('exit codes', async (t) => {
  t.equal(exitCodeFor('SIGINT'), 130);
  t.equal(exitCodeFor('SIGTERM'), 143);
  t.equal(exitCodeFor(null), 130, 'an abort counts as an interrupt');
  const logs: string[] = [];
  const ac = new AbortController();
  const s = stopOnSignals({ label: 'x', log: (l) => logs.push(l), handleSignals: false, abort: ac.signal });
  t.notOk(s.requested);
  ac.abort();
  t.ok(s.requested);
  t.equal(s.signal, null);
  s.dispose();
  t.same(logs, ['x: aborted: finishing the current step, then saving']);
});

t.test('sft: SIGTERM finishes the step, saves output and checkpoint, exits 143; --resume continues to the end', { skip }, async (t) => {
  const out = path.join(tmp, 'sft-term');
  let sent = false;
  const r = await runLive(sftArgs(out, 120, 4), (err, kill) => {
    if (!sent && /sft step +3\//.test(err)) {
      sent = true;
      kill('SIGTERM');
    }
  });
  t.equal(r.signal, null, 'not killed by the signal');
  t.equal(r.code, 143, r.stderr);
  t.match(r.stderr, /sft: terminated \(SIGTERM\): finishing the current step, then saving/);
  t.match(r.stdout, /^sft: interrupted after (\d+)\/120 steps/);
  const done = Number(/interrupted after (\d+)\//.exec(r.stdout)![1]);
  t.ok(done >= 3 && done < 120, `${done} steps done`);
  t.ok(fs.existsSync(path.join(out, 'adapter_model.safetensors')), 'the adapter was saved');
  const cks = listCheckpoints(path.join(out, 'checkpoints'));
  t.same(cks.map((c) => c.step), [done], 'a checkpoint of the last finished step');
  t.equal(StageCheckpoints.damage(cks[0].dir, done), null, 'complete: every file matches the manifest');
  const manifest = JSON.parse(fs.readFileSync(path.join(cks[0].dir, 'manifest.json'), 'utf8'));
  t.equal(manifest.step, done);
  const r2 = await runLive(sftArgs(out, 120, 4, '--resume'));
  t.equal(r2.code, 0, r2.stderr);
  t.match(r2.stderr, new RegExp(`sft: resuming after step ${done} `));
  t.match(r2.stdout, /^sft: 120 steps/);
  const steps = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).step);
  t.same(steps, Array.from({ length: 120 }, (_, i) => i + 1), 'every step once');
});

t.test('sft: a second signal exits at once (143) without corrupting anything; the run resumes', { skip }, async (t) => {
  const out = path.join(tmp, 'sft-twice');
  let sent = 0;
  // Larger steps and a checkpoint every step: the second signal lands while the first one's step, or the save, is still running.
  const args = sftArgs(out, 40, 24, '--checkpoint-steps', '1');
  const r = await runLive(args, (err, kill) => {
    if (sent === 0 && /sft step +5\//.test(err)) {
      sent = 1;
      kill('SIGTERM');
    } else if (sent === 1 && /terminated \(SIGTERM\)/.test(err)) {
      sent = 2;
      kill('SIGTERM'); // only once the first was handled: identical pending signals merge
    }
  });
  t.equal(r.code, 143, r.stderr);
  t.match(r.stderr, /sft: terminated again: exiting without saving/);
  const dir = path.join(out, 'checkpoints');
  const cks = listCheckpoints(dir);
  t.ok(cks.length > 0, `checkpoints ${cks.map((c) => c.step).join(', ')}`);
  for (const c of cks) t.equal(StageCheckpoints.damage(c.dir, c.step), null, `checkpoint-${c.step} is complete`);
  const r2 = await runLive([...args, '--resume']);
  t.equal(r2.code, 0, r2.stderr);
  t.match(r2.stderr, new RegExp(`sft: resuming after step ${cks[cks.length - 1].step} `));
  t.same(fs.readdirSync(dir).filter((f) => f.startsWith('.')), [], 'leftovers of the killed write cleaned up');
});

t.test('rm: SIGINT exits 130 with a resumable checkpoint', { skip }, async (t) => {
  const out = path.join(tmp, 'rm-int');
  const args = ['rm', '--model', base, '--data', pairs, '--out', out, '--steps', '60', '--batch-size', '2', '--device', 'cpu', '--log-steps', '1'];
  let sent = false;
  const r = await runLive(args, (err, kill) => {
    if (!sent && /rm step +2\//.test(err)) {
      sent = true;
      kill('SIGINT');
    }
  });
  t.equal(r.code, 130, r.stderr);
  const cks = listCheckpoints(path.join(out, 'checkpoints'));
  t.equal(cks.length, 1);
  t.equal(StageCheckpoints.damage(cks[0].dir, cks[0].step), null, 'the checkpoint is complete');
  const r2 = await runLive([...args, '--resume']);
  t.equal(r2.code, 0, r2.stderr);
  t.match(r2.stderr, new RegExp(`resuming after step ${cks[0].step}`));
});

t.test('in process: SIGTERM stops rm, dpo, ppo and rs after the current step, and they save', async (t) => {
  const term = () => process.kill(process.pid, 'SIGTERM');
  const listeners = process.listenerCount('SIGTERM');
  // The signal is handled at the next turn of the event loop, during the step after the one that sent it,
  // which is then finished: the stage stops after step 2 or 3.
  const rm = await runRm({ model: base, data: pairs, out: path.join(tmp, 'p-rm'), steps: 50, batchSize: 2, device: 'cpu' }, { onStep: (m) => m.step === 2 && term() });
  t.ok(rm.interrupted && rm.signal === 'SIGTERM' && rm.steps >= 2 && rm.steps <= 3, `rm stopped after step ${rm.steps}`);
  t.equal(StageCheckpoints.damage(path.join(tmp, 'p-rm', 'checkpoints', `checkpoint-${rm.steps}`), rm.steps), null, 'rm: a checkpoint of that step, complete');
  const dpo = await runDpo({ model: base, data: pairs, out: path.join(tmp, 'p-dpo'), steps: 50, batchSize: 2, device: 'cpu' }, { onStep: (m) => m.step === 2 && term() });
  t.ok(dpo.interrupted && dpo.signal === 'SIGTERM' && dpo.steps >= 2 && dpo.steps <= 3, `dpo stopped after step ${dpo.steps}`);
  t.ok(fs.existsSync(path.join(tmp, 'p-dpo', 'adapter_model.safetensors')), 'dpo: adapter saved');
  const reward = functionReward((batch) => batch.map((b) => b.response.length / 10));
  const ppo = await runPpo(
    { model: base, data: prompts, out: path.join(tmp, 'p-ppo'), iterations: 20, batchSize: 4, miniBatchSize: 2, ppoEpochs: 1, maxNewTokens: 4, device: 'cpu' },
    { reward, onStep: (m) => m.step === 1 && term() },
  );
  t.ok(ppo.interrupted && ppo.signal === 'SIGTERM' && ppo.steps >= 1 && ppo.steps <= 2, `ppo stopped after iteration ${ppo.steps}`);
  t.ok(fs.existsSync(path.join(tmp, 'p-ppo', 'adapter_model.safetensors')) && fs.existsSync(path.join(tmp, 'p-ppo', 'critic', 'adapter_model.safetensors')), 'ppo: policy and critic saved');
  let sampled = 0;
  const rs = await runRejectionSampling(
    { model: base, data: prompts, out: path.join(tmp, 'p-rs'), rounds: 3, k: 2, maxNewTokens: 4, device: 'cpu' } as never,
    { reward: functionReward((batch) => (++sampled === 1 && term(), batch.map((b) => b.response.length))) },
  );
  t.ok(rs.interrupted && rs.signal === 'SIGTERM', `rs stopped after ${rs.rounds} rounds`);
  t.equal(process.listenerCount('SIGTERM'), listeners, 'every stage removed its handlers');
});
