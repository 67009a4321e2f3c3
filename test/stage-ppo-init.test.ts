/**
 * The PPO stage's roles and bookkeeping on a tiny model: the critic starts
 * from the reward model (a full *ForSequenceClassification folder: its score
 * head on a fresh LoRA; a PEFT reward adapter: the adapter itself), a reward
 * adapter scores on the shared base exactly as the same reward model merged
 * into a folder of its own, an aborted run still saves both adapters, and
 * the metrics of a run are a function of the seed (adaptive KL control,
 * reward whitening and the missing-EOS penalty included).
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { loadModel } from '../lib/engine/model';
import { runPpo, type PpoConfig } from '../lib/stages/ppo';
import { functionReward } from '../lib/reward/sources';
import { openSafetensors } from '../lib/safetensors';
import { openModelFolder } from '../lib/model/folder';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-ppo-init-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'base');
const rmFolder = path.join(tmp, 'rm-folder');
const rmAdapter = path.join(tmp, 'rm-adapter');
const rmMerged = path.join(tmp, 'rm-merged');
const data = path.join(tmp, 'p.jsonl');

function tensor(file: string, name: string): Float32Array {
  const st = openSafetensors(file);
  try {
    const b = st.tensorBytes(name);
    return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
  } finally {
    st.close();
  }
}

const small: Omit<PpoConfig, 'out'> = { model: base, data, batchSize: 8, miniBatchSize: 4, maxNewTokens: 4, temperature: 1, lr: 1e-3, loraR: 4, loraAlpha: 8, loraTargets: ['q_proj', 'v_proj', 'down_proj'], device: 'cpu', seed: 5 };
const aborted = () => {
  const c = new AbortController();
  c.abort();
  return c.signal;
};

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 2, dtype: 'F32' });
  fs.writeFileSync(data, Array.from({ length: 16 }, (_, i) => JSON.stringify({ prompt: `question ${i}: why?` })).join('\n') + '\n');
  // A full reward model: the base with a score head (what `rm --full` writes).
  const a = await loadModel(base, { device: 'cpu', head: 'score', scoreInit: { seed: 4, std: 0.5 } });
  a.trainer().enableFullTraining();
  await a.trainer().saveModel(rmFolder, base);
  a.dispose();
  // A reward adapter with its own head (what `rm` writes by default), with non-zero LoRA B.
  const b = await loadModel(base, { device: 'cpu' });
  const tr = b.trainer();
  tr.createLora({ name: 'rm', r: 4, alpha: 8, targets: ['q_proj', 'v_proj'], seed: 9, head: { std: 0.5 } });
  for (const x of tr.trainable()) if (x.name.includes('lora_B')) tr.write(x.name, tr.read(x.name).map((_, i) => Math.sin(i) * 0.1));
  await tr.saveLora(rmAdapter, base);
  b.dispose();
  // The same reward model merged into a folder of its own.
  const c = await loadModel(base, { device: 'cpu', adapter: rmAdapter });
  c.trainer().enableFullTraining();
  await c.trainer().saveModel(rmMerged, base);
  c.dispose();
});

t.test('critic from a *ForSequenceClassification reward model: a fresh LoRA with its score head; an aborted run saves both adapters', async (t) => {
  const out = path.join(tmp, 'o-folder');
  const r = await runPpo({ ...small, out, rewardModel: rmFolder }, { signal: aborted(), handleSigint: false });
  t.equal(r.steps, 0);
  t.equal(r.interrupted, true);
  t.equal(r.criticInit, 'reward-model');
  const f = openModelFolder(rmFolder);
  const scoreFile = f.tensors.find((x) => x.canonical === 'score.weight')!.file;
  f.close();
  t.same(tensor(path.join(out, 'critic', 'adapter_model.safetensors'), 'base_model.model.score.weight'), tensor(scoreFile, 'score.weight'), 'the critic head is the reward model head');
  const pol = openSafetensors(path.join(out, 'adapter_model.safetensors'));
  const bName = pol.tensorNames.find((n) => n.includes('lora_B'))!;
  pol.close();
  t.ok(tensor(path.join(out, 'adapter_model.safetensors'), bName).every((x) => x === 0), 'the untrained policy adapter is saved (B = 0)');
  t.equal(fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8'), '', 'no iteration, no metrics');
  t.match(JSON.parse(fs.readFileSync(path.join(out, 'ppo_config.json'), 'utf8')), { steps_done: 0, interrupted: true, critic_init: 'reward-model' });
});

t.test('critic from a reward adapter: the adapter itself, head included', async (t) => {
  const out = path.join(tmp, 'o-adapter');
  const r = await runPpo({ ...small, out, rewardModel: rmAdapter }, { signal: aborted(), handleSigint: false });
  t.equal(r.criticInit, 'reward-adapter');
  const rmFile = path.join(rmAdapter, 'adapter_model.safetensors'), criticFile = path.join(out, 'critic', 'adapter_model.safetensors');
  const st = openSafetensors(rmFile);
  const names = st.tensorNames;
  st.close();
  for (const n of names) t.same(tensor(criticFile, n), tensor(rmFile, n), n);
});

t.test('a reward adapter on the shared base scores as the same reward model merged into its own folder', async (t) => {
  const a = await runPpo({ ...small, out: path.join(tmp, 'o-shared'), rewardModel: rmAdapter, iterations: 1 }, { handleSigint: false });
  const b = await runPpo({ ...small, out: path.join(tmp, 'o-merged'), rewardModel: rmMerged, iterations: 1 }, { handleSigint: false });
  const ma = JSON.parse(fs.readFileSync(path.join(tmp, 'o-shared', 'metrics.jsonl'), 'utf8'));
  const mb = JSON.parse(fs.readFileSync(path.join(tmp, 'o-merged', 'metrics.jsonl'), 'utf8'));
  t.equal(ma.reward, ma['reward/helpfulness'], 'one reward model: the reward is its score');
  t.equal(ma.response_length, mb.response_length, 'the same responses (same policy, same seeds)');
  t.ok(Math.abs(ma.reward - mb.reward) < 1e-4 * (1 + Math.abs(mb.reward)), `mean score ${ma.reward} (adapter on the base) vs ${mb.reward} (merged folder)`);
  t.ok(Math.abs(ma.kl - mb.kl) < 1e-6, 'the same KL to the reference');
  t.equal(a.criticInit, 'reward-adapter');
  t.equal(b.criticInit, 'reward-model');
});

t.test('metrics are a function of the seed: adaptive KL control, reward whitening, missing-EOS penalty', async (t) => {
  const reward = functionReward((batch) => batch.map((x) => x.responseIds.filter((id) => id % 3 === 0).length - 1), 'thirds');
  const cfg = { ...small, iterations: 3, klTarget: 0.5, klHorizon: 40, klCoef: 0.1, whitenRewards: true, missingEosPenalty: 0.5, entCoef: 0.01, microBatchSize: 2 };
  const run = async (seed: number, out: string) => {
    await runPpo({ ...cfg, seed, out: path.join(tmp, out) }, { reward, handleSigint: false });
    return fs.readFileSync(path.join(tmp, out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  };
  const timing = ['tokens_per_sec', 'gen_tokens_per_sec', 'update_tokens_per_sec', 'elapsed_s'];
  const strip = (ms: Record<string, number>[]) => ms.map((m) => Object.fromEntries(Object.entries(m).filter(([k]) => !timing.includes(k))));
  const a = await run(5, 'o-d1'), b = await run(5, 'o-d2'), c = await run(6, 'o-d3');
  t.same(strip(a), strip(b), 'the same seed: the same metrics, bit for bit');
  t.notSame(strip(a).map((m) => m.reward), strip(c).map((m) => m.reward), 'another seed: other rollouts');
  // The adaptive controller (Ziegler et al.): beta' = beta (1 + clip(kl / target - 1, -0.2, 0.2) * batch / horizon).
  t.equal(a[0].kl_coef, 0.1);
  for (let i = 1; i < a.length; i++) {
    const e = Math.max(-0.2, Math.min(0.2, a[i - 1].kl / 0.5 - 1));
    t.ok(Math.abs(a[i].kl_coef - a[i - 1].kl_coef * (1 + (e * 8) / 40)) < 1e-15, `iteration ${i + 1}: kl_coef ${a[i].kl_coef}`);
  }
  t.ok(a.every((m) => m.eos_fraction >= 0 && m.eos_fraction <= 1));
});

t.test('a reward source that returns a non-finite reward or the wrong count is an error naming the prompt', async (t) => {
  const nan = { names: ['x'], score: async (b: unknown[]) => ({ reward: Float64Array.from(b, (_, i) => (i === 2 ? NaN : 1)), parts: {} }), dispose() {} };
  await t.rejects(runPpo({ ...small, out: path.join(tmp, 'o-nan'), iterations: 1 }, { reward: nan, handleSigint: false }), { code: 'E_ARGUMENT', message: /returned NaN for the response to \S+p\.jsonl:\d+ \(rewards must be finite\)/ });
  const short = { names: ['x'], score: async () => ({ reward: new Float64Array(3), parts: {} }), dispose() {} };
  await t.rejects(runPpo({ ...small, out: path.join(tmp, 'o-short'), iterations: 1 }, { reward: short, handleSigint: false }), { code: 'E_ARGUMENT', message: /returned 3 rewards for 8 responses/ });
  await t.rejects(runPpo({ ...small, out: path.join(tmp, 'o-none') }, { handleSigint: false }), { code: 'E_ARGUMENT', message: /--reward-model is required/ });
});
