/**
 * LoRA adapters: the saved layout is exactly PEFT's, merging reproduces the
 * adapted model, several named adapters share one base, and the base alone
 * (no adapter) is the untouched reference.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadModel } from '../lib/engine/model';
import { openSafetensors } from '../lib/safetensors';
import { native } from '../lib/native';

const G = path.join(__dirname, 'fixtures', 'train-golden');

async function oneStep(model: Awaited<ReturnType<typeof loadModel>>, ids: number[][]) {
  const tr = model.trainer();
  const f = (await tr.forward({ inputIds: ids })) as any;
  const n = f.flat.logp.length;
  const loss = new Float32Array(1), dlogp = new Float32Array(n);
  native().runOp('sft_loss', { n, logp: f.flat.logp, loss, dlogp });
  await tr.backward({ dlogp });
  await tr.step({ optimizer: 'adamw', lr: 0.05 });
  await tr.zeroGrad();
  return loss[0];
}

for (const [arch, caseName] of [['llama', 'llama_lora_adamw_all7'], ['gpt2', 'gpt2_lora_adamw']] as const) {
  t.test(`saved adapter matches PEFT's layout and merges exactly (${arch})`, async (t) => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-peft-'));
    const base = path.join(G, 'models', arch);
    const ref = path.join(G, 'cases', caseName, 'adapter');
    const refCfg = JSON.parse(fs.readFileSync(path.join(ref, 'adapter_config.json'), 'utf8'));
    const model = await loadModel(base, { device: 'cpu' });
    const tr = model.trainer();
    tr.createLora({ r: refCfg.r, alpha: refCfg.lora_alpha, targets: refCfg.target_modules, seed: 1 });
    const ids = [[5, 17, 33, 2, 41, 9, 11, 60, 7, 3, 28, 19]];
    await oneStep(model, ids); // B leaves zero, so the adapter now changes the model
    const out = path.join(tmp, 'adapter');
    await tr.saveLora(out, base);
    // Tensor names, shapes and dtypes exactly as the PEFT-layout reference.
    const a = openSafetensors(path.join(out, 'adapter_model.safetensors'));
    const b = openSafetensors(path.join(ref, 'adapter_model.safetensors'));
    const shapes = (h: typeof a.header) => Object.fromEntries(h.tensors.map((x) => [x.name, [x.dtype, ...x.shape]]));
    t.same(shapes(a.header), shapes(b.header), 'same tensor names, dtypes and shapes');
    t.same(a.header.metadata, { format: 'pt' });
    a.close();
    b.close();
    const cfg = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'));
    for (const k of ['peft_type', 'r', 'lora_alpha', 'target_modules', 'use_rslora', 'lora_dropout', 'bias', 'task_type', 'fan_in_fan_out'])
      t.same(cfg[k], refCfg[k], `adapter_config.json ${k}`);
    // The trainer's (unmerged) forward vs the adapter merged into the base at load.
    const live = (await tr.forward({ inputIds: ids })).logp![0];
    const merged = await loadModel(base, { device: 'cpu', adapter: out });
    const m = (await merged.forward({ inputIds: ids })).logp![0];
    const plain = (await (await loadModel(base, { device: 'cpu' })).forward({ inputIds: ids })).logp![0];
    let dm = 0, dp = 0;
    for (let i = 0; i < m.length; i++) {
      dm = Math.max(dm, Math.abs(m[i] - live[i]));
      dp = Math.max(dp, Math.abs(plain[i] - live[i]));
    }
    t.ok(dm < 1e-4, `merged == adapted (max diff ${dm.toExponential(2)})`);
    t.ok(dp > 1e-3, `and differs from the base (max diff ${dp.toFixed(4)})`);
    model.dispose();
    merged.dispose();
    fs.rmSync(tmp, { recursive: true, force: true });
  });
}

t.test('named adapters share one base; no adapter = the frozen reference', async (t) => {
  const base = path.join(G, 'models', 'llama');
  const model = await loadModel(base, { device: 'cpu' });
  const ids = [[4, 8, 15, 16, 23, 42, 7, 9]];
  const ref0 = (await model.forward({ inputIds: ids })).logp![0].slice();
  const tr = model.trainer();
  tr.createLora({ name: 'policy', r: 4, alpha: 8, seed: 1 });
  await oneStep(model, ids);
  const policy = (await model.forward({ inputIds: ids })).logp![0].slice();
  tr.createLora({ name: 'other', r: 2, alpha: 4, targets: ['q_proj', 'v_proj'], seed: 2 });
  t.same(tr.useAdapter(null).sort(), ['other', 'policy']);
  const ref1 = (await model.forward({ inputIds: ids })).logp![0];
  t.same(Array.from(ref1), Array.from(ref0), 'base alone is unchanged by training an adapter');
  tr.useAdapter('policy');
  t.same(Array.from((await model.forward({ inputIds: ids })).logp![0]), Array.from(policy), 'switching back restores the policy');
  t.throws(() => tr.useAdapter('nope'), { code: 'E_ARGUMENT' });
  // Switching between a training forward and its backward is refused.
  await tr.forward({ inputIds: ids });
  tr.useAdapter('other');
  await t.rejects(tr.backward({ dlogp: new Float32Array(ids[0].length - 1) }), { code: 'E_ARGUMENT', message: /adapter changed/ });
  model.dispose();
});

t.test('a checkpoint (adapter + optimizer state) resumes exactly', async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-resume-'));
  const base = path.join(G, 'models', 'llama');
  const ids = [[4, 8, 15, 16, 23, 42, 7, 9, 1, 2]];
  // Run A: three steps straight.
  const a = await loadModel(base, { device: 'cpu' });
  a.trainer().createLora({ r: 4, alpha: 8, seed: 3 });
  for (let i = 0; i < 3; i++) await oneStep(a, ids);
  // Run B: one step, checkpoint, a fresh process-like reload, two more steps.
  const b = await loadModel(base, { device: 'cpu' });
  b.trainer().createLora({ r: 4, alpha: 8, seed: 3 });
  await oneStep(b, ids);
  await b.trainer().saveLora(path.join(tmp, "ckpt"));
  await b.trainer().saveOptimizerState(path.join(tmp, 'ckpt', 'optimizer.safetensors'));
  b.dispose();
  const c = await loadModel(base, { device: 'cpu' });
  c.trainer().loadLora(path.join(tmp, 'ckpt'));
  c.trainer().loadOptimizerState(path.join(tmp, 'ckpt', 'optimizer.safetensors'));
  for (let i = 0; i < 2; i++) await oneStep(c, ids);
  let worst = 0;
  for (const { name } of a.trainer().trainable()) {
    const x = a.trainer().read(name), y = c.trainer().read(name);
    for (let i = 0; i < x.length; i++) worst = Math.max(worst, Math.abs(x[i] - y[i]));
  }
  t.ok(worst < 1e-6, `resumed run == uninterrupted run (max diff ${worst.toExponential(2)})`);
  t.throws(() => c.trainer().loadOptimizerState(path.join(base, 'model.safetensors')), { code: 'E_ARGUMENT' });
  a.dispose();
  c.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

t.test('LoRA dropout: gradients match finite differences under a fixed mask', async (t) => {
  const base = path.join(G, 'models', 'llama');
  const model = await loadModel(base, { device: 'cpu' });
  const tr = model.trainer();
  tr.createLora({ r: 2, alpha: 4, targets: ['q_proj', 'down_proj'], dropout: 0.3, seed: 5 });
  const ids = [[4, 8, 15, 16, 23, 42, 7, 9, 1, 2, 3]];
  // Give B nonzero values so both A and B get gradients.
  for (const { name } of tr.trainable())
    if (name.includes('lora_B')) tr.write(name, Float32Array.from(tr.read(name), (_, i) => 0.05 * Math.sin(i + 1)));
  const lossAt = async (counter: number) => {
    tr.setDropoutCounter(counter);
    const f = (await tr.forward({ inputIds: ids })) as any;
    let s = 0;
    for (const x of f.flat.logp) s += x;
    return { s, f };
  };
  const { f } = await lossAt(7);
  await tr.zeroGrad();
  await tr.backward({ dlogp: new Float32Array(f.flat.logp.length).fill(1) }); // d(sum logp)
  const inference = (await model.forward({ inputIds: ids })).logp![0];
  t.notSame(Array.from(inference), Array.from(f.flat.logp), 'dropout is active in the training forward only');
  let checked = 0, bad = 0;
  for (const name of ['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight', 'base_model.model.model.layers.1.mlp.down_proj.lora_B.weight']) {
    const p0 = tr.read(name), g = tr.read(name, 'grad');
    for (const i of [0, 3, 7]) {
      const h = 1e-2;
      const plus = Float32Array.from(p0), minus = Float32Array.from(p0);
      plus[i] += h;
      minus[i] -= h;
      tr.write(name, plus);
      const lp = (await lossAt(7)).s;
      tr.write(name, minus);
      const lm = (await lossAt(7)).s;
      tr.write(name, p0);
      const fd = (lp - lm) / (2 * h);
      checked++;
      if (Math.abs(fd - g[i]) > 2e-3 * Math.max(1, Math.abs(fd))) bad++;
    }
  }
  t.equal(bad, 0, `${checked} gradient entries match central differences with the same dropout mask`);
  model.dispose();
});

t.test('LoRA training over a bf16 base: gradients match the same model with fp32 weights holding the bf16 values', async (t) => {
  // llama_bf16 stores bf16 weights, so fp32 loading and bf16 storage hold identical values.
  const dir = path.join(__dirname, 'fixtures', 'golden', 'llama_bf16');
  const ids = [[4, 8, 15, 16, 23, 42, 7, 9, 1, 2, 3, 5]];
  const grads: Float32Array[][] = [];
  for (const weightsDtype of ['f32', 'bf16'] as const) {
    const model = await loadModel(dir, { device: 'cpu', weightsDtype });
    const tr = model.trainer();
    tr.createLora({ r: 2, alpha: 4, seed: 9 });
    for (const { name } of tr.trainable()) if (name.includes('lora_B')) tr.write(name, Float32Array.from(tr.read(name), (_, i) => 0.03 * Math.cos(i)));
    const f = (await tr.forward({ inputIds: ids })) as any;
    await tr.backward({ dlogp: new Float32Array(f.flat.logp.length).fill(1) });
    grads.push(tr.trainable().map(({ name }) => tr.read(name, 'grad')));
    model.dispose();
  }
  let worst = 0, scale = 0;
  grads[0].forEach((g, i) => g.forEach((x, j) => ((worst = Math.max(worst, Math.abs(x - grads[1][i][j]))), (scale = Math.max(scale, Math.abs(x))))));
  t.ok(scale > 0 && worst <= 1e-5 * scale, `bf16-stored base gives the fp32 gradients (max diff ${worst.toExponential(2)} of ${scale.toExponential(2)})`);
});
