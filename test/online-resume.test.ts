/**
 * Exact resume of the online stages: PPO and rejection sampling stopped
 * mid-stage (an abort from the metrics hook in process, a real SIGINT to a
 * CLI process) and resumed from their checkpoints write the metrics.jsonl of
 * an uninterrupted run line for line (timings aside) and end with
 * bit-identical adapters. Also the checkpoint itself: both PPO adapters with
 * their optimizer states, verified by the manifest.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { initModel } from '../lib/model/init';
import { loadModel } from '../lib/engine/model';
import { runPpo, type PpoConfig } from '../lib/stages/ppo';
import { runRejectionSampling, type RsConfig, type RsMetrics } from '../lib/stages/rejection';
import { functionReward } from '../lib/reward/sources';
import { StageCheckpoints } from '../lib/stages/checkpoints';
import { listCheckpoints } from '../lib/run/atomic';
import { CLI, ROOT, cliBuilt } from './helpers/cli';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-online-resume-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'base');
const rm = path.join(tmp, 'rm');
const prompts = path.join(tmp, 'prompts.jsonl');
const held = path.join(tmp, 'held.jsonl');
const skip = !cliBuilt() && 'CLI not compiled';

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 4, dtype: 'F32' });
  const m = await loadModel(base, { device: 'cpu', head: 'score', scoreInit: { seed: 2, std: 0.3 } });
  m.trainer().enableFullTraining();
  await m.trainer().saveModel(rm, base);
  m.dispose();
  fs.writeFileSync(prompts, Array.from({ length: 8 }, (_, i) => JSON.stringify({ prompt: `Tell me about ${i}` })).join('\n') + '\n');
  fs.writeFileSync(held, Array.from({ length: 3 }, (_, i) => JSON.stringify({ prompt: `Why ${i}?` })).join('\n') + '\n');
});

const TIMING = /per_sec|elapsed|seconds|_s$/;
const metrics = (dir: string) =>
  fs
    .readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.stringify(Object.fromEntries(Object.entries(JSON.parse(l)).filter(([k]) => !TIMING.test(k)))));
const bytes = (f: string) => fs.readFileSync(f);
const thirds = () => functionReward((b) => b.map((x) => x.responseIds.filter((id) => id % 3 === 0).length / 2), 'thirds');
const quiet = { handleSigint: false, log: () => {} };

/** Runs the CLI; `onErr` sees stderr as it arrives and may signal the child. */
function runLive(args: string[], onErr: (stderr: string, kill: (s: NodeJS.Signals) => void) => void = () => {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, env: { ...process.env, RLHF_DEBUG: '' } });
  let stdout = '', stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => {
    stderr += d;
    onErr(stderr, (s) => child.kill(s));
  });
  const guard = setTimeout(() => child.kill('SIGKILL'), 300_000);
  return new Promise((resolve) =>
    child.on('close', (code) => {
      clearTimeout(guard);
      resolve({ code, stdout, stderr });
    }),
  );
}

// Adaptive KL control, a linear schedule and held-out evaluation: each is state a resumed run must restore.
const ppoCfg: Omit<PpoConfig, 'out'> = {
  model: base,
  data: prompts,
  evalData: held,
  iterations: 5,
  batchSize: 4,
  miniBatchSize: 2,
  ppoEpochs: 2,
  maxNewTokens: 4,
  temperature: 1,
  lr: 2e-3,
  loraR: 4,
  loraAlpha: 8,
  klCoef: 0.1,
  klTarget: 0.05,
  klHorizon: 20,
  seed: 3,
  device: 'cpu',
};

t.test('ppo: stopped by an abort after iteration 2, resumed: the same metrics and bit-identical adapters', async (t) => {
  const straight = path.join(tmp, 'ppo-straight'), cut = path.join(tmp, 'ppo-cut');
  const a = await runPpo({ ...ppoCfg, out: straight }, { ...quiet, reward: thirds() });
  t.equal(a.steps, 5);
  const ac = new AbortController();
  const b1 = await runPpo({ ...ppoCfg, out: cut }, { ...quiet, reward: thirds(), signal: ac.signal, onStep: (m) => m.step === 2 && ac.abort() });
  t.ok(b1.interrupted, 'stopped');
  t.equal(b1.steps, 2, 'after the iteration that was running');
  const cks = listCheckpoints(path.join(cut, 'checkpoints'));
  t.same(cks.map((c) => c.step), [2], 'a checkpoint written on the stop (no --checkpoint-steps)');
  t.equal(StageCheckpoints.damage(cks[0].dir, 2), null, 'complete: every file matches the manifest');
  const manifest = JSON.parse(fs.readFileSync(path.join(cks[0].dir, 'manifest.json'), 'utf8'));
  t.same(manifest.adapters, ['policy', 'critic']);
  for (const f of ['policy/trainable.safetensors', 'policy/optimizer.safetensors', 'critic/trainable.safetensors', 'critic/optimizer.safetensors', 'trainer_state.json']) t.ok(manifest.files[f], f);
  const state = JSON.parse(fs.readFileSync(path.join(cks[0].dir, 'trainer_state.json'), 'utf8')).extra;
  t.equal(state.state.optSteps, 2 * 2 * 2, 'the optimizer-step counter (the lr schedule)');
  t.ok(state.state.klCoef !== 0.1, `the adapted KL coefficient (${state.state.klCoef})`);
  t.ok(state.evalBefore, 'the held-out figures before training');

  const logs: string[] = [];
  const b2 = await runPpo({ ...ppoCfg, out: cut, resume: true }, { handleSigint: false, reward: thirds(), log: (l) => logs.push(l) });
  t.ok(logs.some((l) => /^ppo: resuming after iteration 2 /.test(l)), 'logged: resuming after iteration 2');
  t.equal(b2.resumedFrom, 2);
  t.equal(b2.steps, 5);
  t.notOk(b2.interrupted);
  t.equal(b2.optimizerSteps, a.optimizerSteps);
  t.equal(b2.klCoef, a.klCoef, 'the same final KL coefficient');
  t.same(b2.eval, a.eval, 'the same held-out evaluation before and after');
  t.equal(b2.initialReward, a.initialReward);
  t.same(metrics(cut), metrics(straight), 'metrics.jsonl equal line for line, timings aside');
  for (const f of ['adapter_model.safetensors', 'critic/adapter_model.safetensors']) t.ok(bytes(path.join(cut, f)).equals(bytes(path.join(straight, f))), `${f}: bit-identical`);
});

t.test('ppo CLI: SIGINT mid-run exits 130 with a checkpoint; --resume finishes with the uninterrupted metrics and adapters', { skip }, async (t) => {
  const args = (out: string, ...more: string[]) => [
    'ppo', '--model', base, '--reward-model', rm, '--data', prompts, '--out', out, '--iterations', '6', '--batch-size', '4', '--mini-batch-size', '2',
    '--ppo-epochs', '1', '--max-new-tokens', '4', '--lora-r', '4', '--lr', '1e-3', '--seed', '9', '--device', 'cpu', ...more,
  ];
  const straight = path.join(tmp, 'ppo-cli-straight'), cut = path.join(tmp, 'ppo-cli-cut');
  const a = await runLive(args(straight));
  t.equal(a.code, 0, a.stderr);
  let sent = false;
  const b1 = await runLive(args(cut, '--checkpoint-steps', '1'), (err, kill) => {
    if (!sent && /ppo step 2\/6/.test(err)) {
      sent = true;
      kill('SIGINT');
    }
  });
  t.equal(b1.code, 130, b1.stderr);
  t.match(b1.stderr, /ppo: interrupted: finishing the current iteration, then saving/);
  const done = Number(/^ppo: interrupted after (\d+)\/6 iterations/.exec(b1.stdout)?.[1]);
  t.ok(done >= 2 && done < 6, `stopped after iteration ${done}`);
  const cks = listCheckpoints(path.join(cut, 'checkpoints'));
  t.equal(cks[cks.length - 1].step, done, 'the newest checkpoint is of the last iteration done');
  const b2 = await runLive(args(cut, '--checkpoint-steps', '1', '--resume'));
  t.equal(b2.code, 0, b2.stderr);
  t.match(b2.stderr, new RegExp(`ppo: resuming after iteration ${done} `));
  t.match(b2.stdout, /^ppo: 6 iterations \(12 optimizer steps, 8 prompts\)/);
  t.same(metrics(cut), metrics(straight), 'metrics.jsonl equal line for line, timings aside');
  for (const f of ['adapter_model.safetensors', 'critic/adapter_model.safetensors']) t.ok(bytes(path.join(cut, f)).equals(bytes(path.join(straight, f))), `${f}: bit-identical`);
});

// Three rounds, the best of every round kept (accumulate: the state a resumed run restores), a held-out split.
const rsCfg: Omit<RsConfig, 'out'> = {
  model: base,
  data: prompts,
  rounds: 3,
  k: 2,
  maxNewTokens: 4,
  evalFraction: 0.25,
  accumulate: true,
  seed: 6,
  device: 'cpu',
  sft: { steps: 2, batchSize: 4, lr: 1e-3, loraR: 4, loraAlpha: 8 },
};

t.test('rs: stopped inside round 2 (abort during its SFT), resumed: the round is done again; the same metrics and final adapter', async (t) => {
  const straight = path.join(tmp, 'rs-straight'), cut = path.join(tmp, 'rs-cut');
  const a = await runRejectionSampling({ ...rsCfg, out: straight }, { ...quiet, reward: thirds() });
  t.equal(a.rounds, 3);
  const ac = new AbortController();
  const seen: RsMetrics[] = [];
  const b1 = await runRejectionSampling(
    { ...rsCfg, out: cut },
    { ...quiet, reward: thirds(), signal: ac.signal, onMetrics: (m) => (seen.push(m), m.phase === 'sft' && m.round === 2 && m.step === 1 && ac.abort()) },
  );
  t.ok(b1.interrupted);
  t.equal(b1.rounds, 1, 'round 1 done, round 2 cut short');
  t.same(listCheckpoints(path.join(cut, 'checkpoints')).map((c) => c.step), [1], 'a checkpoint after round 1');
  const b2 = await runRejectionSampling({ ...rsCfg, out: cut, resume: true }, { ...quiet, reward: thirds(), onStep: (m) => seen.push(m) });
  t.equal(b2.resumedFrom, 1);
  t.equal(b2.rounds, 3);
  t.notOk(b2.interrupted);
  t.equal(b2.initialReward, a.initialReward, 'the held-out reward before round 1, from the checkpoint');
  t.equal(b2.finalReward, a.finalReward);
  t.same(b2.roundStats.map((s) => s.meanReward), a.roundStats.map((s) => s.meanReward));
  t.same(b2.policy, { model: base, adapter: path.join(cut, 'round-3') });
  t.same(metrics(cut), metrics(straight), 'metrics.jsonl equal line for line, timings aside');
  t.ok(bytes(path.join(cut, 'round-3', 'adapter_model.safetensors')).equals(bytes(path.join(straight, 'round-3', 'adapter_model.safetensors'))), 'the final adapter is bit-identical');
  t.equal(fs.readFileSync(path.join(cut, 'round-3', 'sft.jsonl'), 'utf8'), fs.readFileSync(path.join(straight, 'round-3', 'sft.jsonl'), 'utf8'), 'round 3 trained on the same best-of-all-rounds rows');
});

t.test('rs CLI: SIGINT during round 2 exits 130; --resume finishes with the uninterrupted metrics and adapter', { skip }, async (t) => {
  const args = (out: string, ...more: string[]) => [
    'rs', '--model', base, '--reward-model', rm, '--data', prompts, '--out', out, '--rounds', '3', '--k', '2', '--max-new-tokens', '4',
    '--steps', '3', '--batch-size', '4', '--lora-r', '4', '--lr', '1e-3', '--eval-fraction', '0.25', '--log-steps', '1', '--device', 'cpu', ...more,
  ];
  const straight = path.join(tmp, 'rs-cli-straight'), cut = path.join(tmp, 'rs-cli-cut');
  const a = await runLive(args(straight));
  t.equal(a.code, 0, a.stderr);
  let sent = false;
  const b1 = await runLive(args(cut), (err, kill) => {
    if (!sent && /rs round 2 sft step 1 /.test(err)) {
      sent = true;
      kill('SIGINT');
    }
  });
  t.equal(b1.code, 130, b1.stderr);
  t.match(b1.stdout, /^rs: interrupted after [12]\/3 rounds?/);
  const again = await runLive(args(cut));
  t.equal(again.code, 1, 'without --resume the folder is not reused');
  t.match(again.stderr, /already holds a rejection-sampling run/);
  const b2 = await runLive(args(cut, '--resume'));
  t.equal(b2.code, 0, b2.stderr);
  t.match(b2.stderr, /rs: resuming after round [12] /);
  t.match(b2.stdout, /^rs: 3 rounds of 6 prompts x 2 samples/);
  t.same(metrics(cut), metrics(straight), 'metrics.jsonl equal line for line, timings aside');
  t.ok(bytes(path.join(cut, 'round-3', 'adapter_model.safetensors')).equals(bytes(path.join(straight, 'round-3', 'adapter_model.safetensors'))), 'the final adapter is bit-identical');
});
