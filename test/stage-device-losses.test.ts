/**
 * The stages' losses run on the model's device. On 'cpu-guarded' every
 * buffer of the model lives in memory the host cannot touch between ops (a
 * host read of a log-prob would fault and end this process), and the device
 * counts every copy between host and device. SFT, RM, DPO and PPO runs on
 * 'cpu-guarded' give the 'cpu' run's metrics and weights bit for bit, and
 * each additional training step (for PPO: each additional update of an
 * iteration's batch, at the same rollouts) copies back only a few scalars
 * (the loss statistics and the gradient norm), never per-token outputs: the
 * loss kernels read the forward's outputs where they are.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { runSft } from '../lib/stages/sft';
import { runRm } from '../lib/stages/reward';
import { runDpo } from '../lib/stages/dpo';
import { runPpo } from '../lib/stages/ppo';
import { functionReward } from '../lib/reward/sources';
import type { Model } from '../lib/engine/model';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-device-losses-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'llama');
const sft = path.join(tmp, 'sft.jsonl'), pairs = path.join(tmp, 'pairs.jsonl'), prompts = path.join(tmp, 'prompts.jsonl');
const W = ['red', 'green', 'blue', 'black', 'white', 'grey', 'pink', 'gold'];

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 8 });
  const w = (f: string, rows: object[]) => fs.writeFileSync(f, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  w(sft, W.map((c, i) => ({ prompt: `Name colour ${i}.`, completion: ` The colour is ${c}, a fine ${c} indeed.` })));
  w(pairs, W.map((c, i) => ({ prompt: `Name colour ${i}.`, chosen: ` It is ${c}.`, rejected: ` No idea, maybe ${W[(i + 3) % 8]} or not.` })));
  w(prompts, W.map((_, i) => ({ prompt: `Name colour ${i}.` })));
});

const quiet = { log: () => {}, handleSigint: false, keepModel: true };
const TIMING = /per_sec|elapsed|seconds|_s$/;
const metrics = (dir: string) =>
  fs
    .readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => Object.fromEntries(Object.entries(JSON.parse(l)).filter(([k]) => !TIMING.test(k))));
const weights = (dir: string) => fs.readFileSync(path.join(dir, 'adapter_model.safetensors'));

/**
 * Bytes the guarded device copied back to the host during the run that
 * returned `m` (the device counts for every model on it, over the process:
 * runs here are sequential, so a run's share is the count since the last).
 */
let counted = 0;
function downloaded(m: Model | undefined): number {
  const tr = m!.info().transfers;
  m!.dispose();
  if (!tr) throw new Error('cpu-guarded reports no transfer counts');
  const run = tr.downloadBytes - counted;
  counted = tr.downloadBytes;
  return run;
}

/** A run with `n` training steps (PPO: n epochs over each of 2 iterations' batch, one minibatch each). */
type Run = (device: 'cpu' | 'cpu-guarded', n: number, out: string) => Promise<{ model?: Model }>;
const THIRDS = () => functionReward((b) => b.map((x) => x.responseIds.filter((id) => id % 3 === 0).length / 2), 'thirds');
// `outputs`: what the host path downloaded per micro-batch at the least: `arrays` per-token arrays
// (logp; values; PPO's policy logp and entropy and critic values) of `rows` x (`seq` - 1), seq a lower bound.
const stages: [string, Run, { rows: number; seq: number; arrays: number }][] = [
  ['sft', (device, steps, out) => runSft({ model: base, data: sft, out, steps, batchSize: 4, lr: 1e-3, loraR: 4, seed: 1, device }, quiet), { rows: 4, seq: 8, arrays: 1 }],
  ['rm', (device, steps, out) => runRm({ model: base, data: pairs, out, steps, batchSize: 4, lr: 1e-3, loraR: 4, seed: 1, device }, quiet), { rows: 8, seq: 6, arrays: 1 }],
  ['dpo', (device, steps, out) => runDpo({ model: base, data: pairs, out, steps, batchSize: 4, lr: 1e-3, loraR: 4, seed: 1, device }, quiet), { rows: 8, seq: 6, arrays: 1 }],
  [
    'ppo',
    (device, steps, out) =>
      runPpo({ model: base, data: prompts, out, iterations: 2, batchSize: 4, miniBatchSize: 4, ppoEpochs: steps / 2, maxNewTokens: 4, loraR: 4, lr: 1e-3, seed: 1, device }, { ...quiet, reward: THIRDS() }),
    { rows: 4, seq: 8, arrays: 3 },
  ],
];

for (const [name, run, shape] of stages) {
  t.test(`${name}: the losses run on the device: cpu-guarded equals cpu bit for bit, and a training step copies back only scalars`, async (t) => {
    const cpu = path.join(tmp, `${name}-cpu`), guarded = path.join(tmp, `${name}-guarded`), longer = path.join(tmp, `${name}-guarded-long`);
    (await run('cpu', 2, cpu)).model?.dispose();
    const two = downloaded((await run('cpu-guarded', 2, guarded)).model);
    t.same(metrics(guarded), metrics(cpu), 'metrics.jsonl identical (timings aside)');
    t.ok(weights(guarded).equals(weights(cpu)), 'bit-identical adapter');
    const six = downloaded((await run('cpu-guarded', 6, longer)).model);
    const perStep = (six - two) / 4;
    // The host path copied back a micro-batch's per-token outputs: arrays * rows * (seq - 1) floats at the least.
    const perToken = shape.arrays * shape.rows * (shape.seq - 1) * 4;
    t.ok(perStep > 0 && perStep <= 128, `${perStep} bytes copied back per extra step (the loss statistics and the gradient norm${name === 'ppo' ? 's of the critic and the policy' : ''})`);
    t.ok(perStep < perToken / 2, `far below one micro-batch's per-token outputs (${perToken} bytes)`);
  });
}
