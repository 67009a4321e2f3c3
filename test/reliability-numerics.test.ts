/**
 * Numerics: a step whose loss or gradient is NaN/infinite is never applied.
 * The model here has one poisoned token (its embedding row is NaN), so every
 * row holding it gives a NaN loss while the others train normally. With
 * nanPolicy 'stop' (the default) the run ends with E_NUMERIC naming the step
 * and the newest checkpoint, which is intact and resumable; with 'skip' the
 * step is dropped, logged and listed, and training goes on. Also: the engine
 * refuses a non-finite gradient itself (weights and moments untouched).
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { RlhfError } from '../lib/errors';
import { initModel } from '../lib/model/init';
import { loadModel } from '../lib/engine/model';
import { runSft, resolveSftConfig } from '../lib/stages/sft';
import { runRm } from '../lib/stages/reward';
import { runDpo } from '../lib/stages/dpo';
import { resolvePpoConfig } from '../lib/stages/ppo';
import { StageCheckpoints } from '../lib/stages/checkpoints';
import { listCheckpoints } from '../lib/run/atomic';
import { openSafetensors } from '../lib/safetensors';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-numerics-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const raw = path.join(tmp, 'raw');
const base = path.join(tmp, 'poisoned');
const BAD = 77; // the token whose embedding is NaN

const jsonl = (name: string, rows: unknown[]) => {
  const f = path.join(tmp, name);
  fs.writeFileSync(f, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return f;
};
const clean = (i: number) => [1, 10 + i, 20 + i, 30 + i, 40 + i, 2];
// SFT rows in file order, one per step: step 3 holds the poisoned token.
const sftRows = [clean(0), clean(1), [1, 11, BAD, 31, 41, 2], clean(3), clean(4), clean(5)].map((ids) => ({ input_ids: ids }));
// Preference pairs, one per step: step 2's chosen response holds it.
const pairs = [0, 1, 2, 3].map((i) => ({ prompt_ids: [1, 5 + i, 6], chosen_ids: i === 1 ? [50, BAD, 2] : [50 + i, 60, 2], rejected_ids: [70 + i, 2] }));

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: raw, seed: 5, dtype: 'F32' });
  const m = await loadModel(raw, { device: 'cpu' });
  const tr = m.trainer();
  tr.enableFullTraining();
  const emb = tr.read('model.embed_tokens.weight');
  const H = m.config.hiddenSize;
  emb.fill(NaN, BAD * H, (BAD + 1) * H);
  tr.write('model.embed_tokens.weight', emb);
  await tr.saveModel(base, raw);
  m.dispose();
});

const quiet = { handleSigint: false };
const finiteTensors = (file: string) => {
  const st = openSafetensors(file);
  try {
    return st.tensorNames.every((n) => {
      const b = st.tensorBytes(n);
      return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4).every(Number.isFinite);
    });
  } finally {
    st.close();
  }
};

t.test('the policy option: stop by default, skip on request, anything else is E_ARGUMENT', async (t) => {
  const cfg = { model: base, data: 'x.jsonl', out: path.join(tmp, 'x') };
  t.equal(resolveSftConfig(cfg).nanPolicy, 'stop');
  t.equal(resolveSftConfig({ ...cfg, nanPolicy: 'skip' }).nanPolicy, 'skip');
  t.throws(() => resolveSftConfig({ ...cfg, nanPolicy: 'ignore' as never }), { code: 'E_ARGUMENT', message: /--nan-policy must be stop or skip, got ignore/ });
  t.equal(resolvePpoConfig({ ...cfg, rewardModel: 'rm' }).nanPolicy, 'stop');
  t.throws(() => resolvePpoConfig({ ...cfg, rewardModel: 'rm', nanPolicy: 'warn' as never }), { code: 'E_ARGUMENT' });
});

t.test('the engine never applies a non-finite gradient', async (t) => {
  const m = await loadModel(raw, { device: 'cpu' });
  t.teardown(() => m.dispose());
  const tr = m.trainer();
  tr.createLora({ r: 2, alpha: 4, targets: ['q_proj'], seed: 1 });
  const f = await tr.forward({ inputIds: [[1, 5, 9, 12]] });
  const names = tr.trainable().map((x) => x.name);
  const before = names.map((n) => tr.read(n).slice());
  const dlogp = new Float32Array(f.flat.logp!.length).fill(-0.5);
  dlogp[1] = NaN;
  await tr.backward({ dlogp });
  const s = await tr.step({ optimizer: 'adamw', lr: 0.1 });
  t.ok(s.skipped, 'the step says skipped');
  t.ok(Number.isNaN(s.gradNorm), `gradient norm ${s.gradNorm}`);
  t.equal(s.step, 0, 'the step count did not advance');
  names.forEach((n, i) => t.same(Array.from(tr.read(n)), Array.from(before[i]), `${n} unchanged`));
  t.ok(names.every((n) => tr.read(n, 'm').every((x) => x === 0)), 'AdamW moments untouched');
  await tr.zeroGrad();
  const f2 = await tr.forward({ inputIds: [[1, 5, 9, 12]] });
  await tr.backward({ dlogp: new Float32Array(f2.flat.logp!.length).fill(-0.5) });
  const s2 = await tr.step({ optimizer: 'adamw', lr: 0.1 });
  t.ok(!s2.skipped && s2.step === 1 && Number.isFinite(s2.gradNorm), 'the next finite step applies');
});

t.test('SFT, nanPolicy stop: E_NUMERIC at the poisoned step; the newest checkpoint is intact and resumes', async (t) => {
  const data = jsonl('sft.jsonl', sftRows);
  const out = path.join(tmp, 'sft-stop');
  const logs: string[] = [];
  const cfg = { model: base, data, out, steps: 5, batchSize: 1, checkpointSteps: 1, checkpointKeep: 3, lr: 1e-3, loraR: 4, seed: 1, device: 'cpu' as const };
  const e = (await runSft(cfg, { ...quiet, log: (l) => logs.push(l) }).catch((x) => x)) as RlhfError;
  t.type(e, RlhfError);
  t.equal(e.code, 'E_NUMERIC');
  t.match(e.message, /^sft: the loss is NaN at step 3: the step was not applied and the run stopped \(--nan-policy stop\) with the weights of step 2/);
  t.match(e.message, new RegExp(`the newest checkpoint, ${path.join(out, 'checkpoints', 'checkpoint-2').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}, is kept`));
  t.match(e.message, /--nan-policy skip/);
  t.same(listCheckpoints(path.join(out, 'checkpoints')).map((c) => c.step), [1, 2], 'checkpoints up to the last good step');
  t.equal(StageCheckpoints.damage(path.join(out, 'checkpoints', 'checkpoint-2'), 2), null, 'checkpoint-2 verifies');
  t.notOk(fs.existsSync(path.join(out, 'adapter_model.safetensors')), 'no half-trained output');
  // Resume past it with skip (the policy is not part of the checkpoint's config hash).
  const r = await runSft({ ...cfg, resume: true, nanPolicy: 'skip' }, { ...quiet, log: (l) => logs.push(l) });
  t.equal(r.resumedFrom, 2);
  t.same(r.skippedSteps, [3]);
  t.equal(r.steps, 5);
  t.ok(logs.some((l) => /^sft: step 3 skipped: the loss is NaN \(--nan-policy skip\)/.test(l)), 'the reason is logged');
  t.ok(finiteTensors(path.join(out, 'adapter_model.safetensors')), 'the saved adapter is finite');
  const metrics = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  t.same(metrics.map((m) => m.step), [1, 2, 4, 5], 'no metrics line for the skipped step');
  t.ok(metrics.every((m) => Number.isFinite(m.loss) && Number.isFinite(m.grad_norm)));
  t.same(JSON.parse(fs.readFileSync(path.join(out, 'sft_config.json'), 'utf8')).skipped_steps, [3]);
});

t.test('SFT, nanPolicy skip from the start: the same adapter as a run without the poisoned row', async (t) => {
  const data = jsonl('sft2.jsonl', sftRows);
  const out = path.join(tmp, 'sft-skip');
  const r = await runSft({ model: base, data, out, steps: 4, batchSize: 1, lr: 1e-3, loraR: 4, seed: 1, nanPolicy: 'skip', device: 'cpu' }, quiet);
  t.same(r.skippedSteps, [3]);
  t.equal(r.steps, 4);
  t.ok(finiteTensors(path.join(out, 'adapter_model.safetensors')));
});

t.test('RM and DPO: stop with E_NUMERIC, or skip the step', async (t) => {
  const data = jsonl('pairs.jsonl', pairs);
  for (const [name, run] of [
    ['rm', (o: Record<string, unknown>) => runRm({ model: base, data, steps: 4, batchSize: 1, loraR: 4, lr: 1e-3, seed: 1, shuffle: false, device: 'cpu', ...o } as never, quiet)],
    ['dpo', (o: Record<string, unknown>) => runDpo({ model: base, data, steps: 4, batchSize: 1, loraR: 4, lr: 1e-3, seed: 1, device: 'cpu', ...o } as never, quiet)],
  ] as const) {
    const e = (await run({ out: path.join(tmp, `${name}-stop`) }).catch((x: unknown) => x)) as RlhfError;
    t.equal(e.code, 'E_NUMERIC', `${name}: stop`);
    t.match(e.message, new RegExp(`^${name}: the loss is NaN at step 2: the step was not applied`));
    const r = (await run({ out: path.join(tmp, `${name}-skip`), nanPolicy: 'skip' })) as { skippedSteps: number[]; steps: number };
    t.same(r.skippedSteps, [2], `${name}: skip`);
    t.equal(r.steps, 4);
    t.ok(finiteTensors(path.join(tmp, `${name}-skip`, 'adapter_model.safetensors')), `${name}: the saved adapter is finite`);
  }
});
