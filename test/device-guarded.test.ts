/**
 * The model's device-memory path. On 'cpu-guarded' the model keeps every
 * slab, activation and scratch buffer in memory the host cannot touch between
 * ops (each allocation mapped PROT_NONE outside an op), exactly as it does on
 * a GPU, and reaches it only through the backend's upload/download/copy
 * calls. A host access to backend memory anywhere in the model crashes the
 * test process. The ops are the CPU's, so every result must equal the plain
 * CPU run bit for bit: forward (log-probs, entropies, values, last logits)
 * with padding, sampled generation, LoRA training with dropout and a score
 * head, full fine-tuning with clipping, and every file written (adapter,
 * optimizer state, full weights).
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadModel, type Model } from '../lib/engine/model';
import { native } from '../lib/native';
import { runtimeInfo } from '../lib/info';

const G = path.join(__dirname, 'fixtures', 'train-golden', 'models');
const DEVICES = ['cpu', 'cpu-guarded'] as const;

const ids = [
  [5, 17, 33, 2, 41, 9, 11, 60, 7, 3, 28, 19],
  [8, 4, 22, 51, 6, 13, 2, 9],
];
const mask = ids.map((r) => r.map(() => 1));

function same(t: Tap.Test, a: ArrayLike<number> | undefined, b: ArrayLike<number> | undefined, what: string) {
  t.ok(a && b && a.length === b.length && a.length > 0, `${what}: both present, ${a?.length ?? 0} values`);
  if (!a || !b) return;
  let diff = 0, firstBad = -1;
  for (let i = 0; i < a.length; i++)
    if (!Object.is(a[i], b[i])) {
      diff++;
      if (firstBad < 0) firstBad = i;
    }
  t.equal(diff, 0, `${what}: identical bits` + (diff ? ` (first difference at ${firstBad}: ${a[firstBad]} vs ${b[firstBad]})` : ''));
}

async function sftStep(model: Model, batch: number[][], values = false) {
  const tr = model.trainer();
  const f = (await tr.forward({ inputIds: batch, values })) as any;
  const n = f.flat.logp.length;
  const loss = new Float32Array(1), dlogp = new Float32Array(n);
  native().runOp('sft_loss', { n, logp: f.flat.logp, loss, dlogp });
  const dvalues = values ? Float32Array.from(f.flat.values, (_: number, i: number) => ((i % 5) - 2) * 0.1) : undefined;
  await tr.backward({ dlogp, dvalues });
  const s = await tr.step({ optimizer: 'adamw', lr: 0.02, weightDecay: 0.01, maxGradNorm: 0.5 });
  await tr.zeroGrad();
  return { loss: loss[0], gradNorm: s.gradNorm, logp: f.flat.logp as Float32Array, values: f.flat.values as Float32Array | undefined };
}

for (const arch of ['llama', 'gpt2'] as const) {
  const base = path.join(G, arch);

  t.test(`${arch}: forward and generation on cpu-guarded equal the CPU`, async (t) => {
    const out: Record<string, any> = {};
    for (const device of DEVICES) {
      const m = await loadModel(base, { device, head: 'score', scoreInit: { seed: 3 } });
      t.equal(m.info().device, device, `runs on ${device}`);
      const lm = await loadModel(base, { device });
      // Left padding on the second row exercises the mask and the position ids.
      const padded = [ids[0], [0, 0, 0, 0, ...ids[1]]];
      const pmask = [mask[0], [0, 0, 0, 0, ...mask[1]]];
      const f = await lm.forward({ inputIds: padded, attentionMask: pmask, lastLogits: true });
      const v = await m.forward({ inputIds: padded, attentionMask: pmask, values: true, logp: false });
      const g = await lm.generate({ prompts: [ids[0].slice(0, 5), ids[1].slice(0, 3)], maxNewTokens: 9, temperature: 0.9, topK: 20, seed: 7 });
      out[device] = { f, v, g };
    }
    const [a, b] = DEVICES.map((d) => out[d]);
    same(t, a.f.flat.logp, b.f.flat.logp, 'logp');
    same(t, a.f.flat.entropy, b.f.flat.entropy, 'entropy');
    same(t, a.f.flat.lastLogits, b.f.flat.lastLogits, 'last logits');
    same(t, a.v.flat.values, b.v.flat.values, 'score head values');
    for (let i = 0; i < 2; i++) {
      same(t, a.g.tokens[i], b.g.tokens[i], `generated tokens, prompt ${i}`);
      same(t, a.g.logprobs[i], b.g.logprobs[i], `generated log-probs, prompt ${i}`);
    }
  });

  t.test(`${arch}: LoRA training (dropout, score head) on cpu-guarded equals the CPU`, async (t) => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-guarded-'));
    const res: Record<string, any> = {};
    for (const device of DEVICES) {
      const m = await loadModel(base, { device });
      const tr = m.trainer();
      const targets = arch === 'llama' ? ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] : ['c_attn', 'c_proj', 'c_fc'];
      tr.createLora({ r: 4, alpha: 8, targets, dropout: 0.1, seed: 5, head: true });
      const steps = [];
      for (let s = 0; s < 3; s++) steps.push(await sftStep(m, ids, true));
      const dir = path.join(tmp, device);
      await tr.saveLora(dir, base);
      await tr.saveOptimizerState(path.join(dir, 'optim.safetensors'));
      const names = tr.trainable().map((x: any) => x.name);
      const read = Object.fromEntries(names.map((n: string) => [n, tr.read(n)]));
      const moments = Object.fromEntries(names.map((n: string) => [n, tr.read(n, 'v')]));
      // Writing a tensor and reading it back goes through upload/download.
      const w = Float32Array.from(read[names[0]], (x) => x * 0.5);
      tr.write(names[0], w);
      const back = tr.read(names[0]);
      res[device] = { steps, dir, names, read, moments, w, back };
    }
    const [a, b] = DEVICES.map((d) => res[d]);
    t.ok(a.steps[0].loss > 0 && a.steps[2].loss < a.steps[0].loss, `loss falls: ${a.steps[0].loss.toFixed(4)} -> ${a.steps[2].loss.toFixed(4)}`);
    for (let s = 0; s < 3; s++) {
      t.equal(b.steps[s].loss, a.steps[s].loss, `step ${s}: same loss`);
      t.equal(b.steps[s].gradNorm, a.steps[s].gradNorm, `step ${s}: same gradient norm`);
      same(t, a.steps[s].logp, b.steps[s].logp, `step ${s}: training forward logp`);
      same(t, a.steps[s].values, b.steps[s].values, `step ${s}: training forward values`);
    }
    t.same(b.names, a.names, 'same trainable tensors');
    for (const n of a.names) {
      same(t, a.read[n], b.read[n], `${n} after 3 steps`);
      same(t, a.moments[n], b.moments[n], `${n} AdamW v`);
    }
    same(t, a.back, b.back, 'written tensor read back');
    same(t, b.back, a.w, 'written tensor equals what was written');
    for (const f of ['adapter_model.safetensors', 'optim.safetensors'])
      t.ok(fs.readFileSync(path.join(a.dir, f)).equals(fs.readFileSync(path.join(b.dir, f))), `${f}: identical bytes`);
  });

  t.test(`${arch}: full fine-tuning on cpu-guarded equals the CPU`, async (t) => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-guarded-full-'));
    const res: Record<string, any> = {};
    for (const device of DEVICES) {
      const m = await loadModel(base, { device });
      const tr = m.trainer();
      tr.enableFullTraining();
      const steps = [];
      for (let s = 0; s < 2; s++) steps.push(await sftStep(m, ids));
      const dir = path.join(tmp, device);
      await tr.saveModel(dir, base);
      res[device] = { steps, dir };
    }
    const [a, b] = DEVICES.map((d) => res[d]);
    for (let s = 0; s < 2; s++) {
      t.equal(b.steps[s].loss, a.steps[s].loss, `step ${s}: same loss`);
      t.equal(b.steps[s].gradNorm, a.steps[s].gradNorm, `step ${s}: same gradient norm`);
    }
    t.ok(a.steps[1].loss < a.steps[0].loss, `loss falls: ${a.steps[0].loss.toFixed(4)} -> ${a.steps[1].loss.toFixed(4)}`);
    const file = fs.readdirSync(a.dir).find((f) => f.endsWith('.safetensors'))!;
    t.ok(file, `saved ${file}`);
    t.ok(fs.readFileSync(path.join(a.dir, file)).equals(fs.readFileSync(path.join(b.dir, file))), 'trained weights: identical bytes');
    // The trained weights differ from the base: the device copy was written back, not the untouched host copy.
    const orig = fs.readdirSync(base).find((f) => f.endsWith('.safetensors'))!;
    t.notOk(fs.readFileSync(path.join(b.dir, file)).equals(fs.readFileSync(path.join(base, orig))), 'the saved weights are the trained ones');
  });
}

t.test('a device this build cannot use is a clear error', async (t) => {
  const info = runtimeInfo();
  if (info.cuda.devices.length > 0) return t.skip('a GPU is present');
  await t.rejects(loadModel(path.join(G, 'llama'), { device: 'cuda' }), { code: 'E_CUDA' }, "device 'cuda' without a GPU: E_CUDA");
  const m = await loadModel(path.join(G, 'llama'), { device: 'auto' });
  t.equal(m.info().device, 'cpu', "device 'auto' without a GPU runs on the CPU");
});
