/**
 * Score heads for reward models and critics: a causal-LM folder loaded with a
 * fresh score head (full training, saved as *ForSequenceClassification), and
 * a LoRA adapter that owns a trainable head (saved in PEFT's SEQ_CLS layout).
 * Head gradients are checked by finite differences; saved outputs by reading
 * them back by name and shape and by reloading them.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadModel } from '../lib/engine/model';
import { openSafetensors } from '../lib/safetensors';
import { openModelFolder } from '../lib/model/folder';

const BASE = path.join(__dirname, 'fixtures', 'train-golden', 'models', 'llama');
const IDS = [
  [5, 17, 33, 2, 41, 9, 11, 60],
  [7, 3, 28, 19, 4, 22],
];

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-heads-'));
}

/** d(sum_i g_i * value_i)/d head, by central differences on the head row (the loss is linear in it). */
async function headFiniteDiff(tr: any, name: string, g: Float32Array, js: number[]): Promise<number[]> {
  const w0 = tr.read(name);
  const out: number[] = [];
  for (const j of js) {
    const h = 1e-2;
    const val = async (d: number) => {
      const w = Float32Array.from(w0);
      w[j] += d;
      tr.write(name, w);
      const f = await tr.forward({ inputIds: IDS, values: true, logp: false });
      let s = 0;
      for (let i = 0; i < g.length; i++) s += g[i] * f.flat.values[i];
      return s;
    };
    out.push((((await val(h)) - (await val(-h))) / (2 * h)));
  }
  tr.write(name, w0);
  return out;
}

t.test('a causal LM loaded with a fresh score head trains and saves as LlamaForSequenceClassification', async (t) => {
  const model = await loadModel(BASE, { device: 'cpu', head: 'score', scoreInit: { seed: 3 } });
  t.equal(model.config.head, 'score');
  t.equal(model.config.architecture, 'LlamaForSequenceClassification');
  const tr = model.trainer();
  tr.enableFullTraining();
  const names = tr.trainable().map((x) => x.name);
  t.ok(names.includes('score.weight'), 'the fresh head is a trainable tensor');
  t.notOk(names.includes('lm_head.weight'), 'the LM head is not loaded');
  const w = tr.read('score.weight');
  const mean = w.reduce((s, x) => s + x, 0) / w.length;
  const std = Math.sqrt(w.reduce((s, x) => s + (x - mean) ** 2, 0) / w.length);
  t.ok(Math.abs(mean) < 0.01 && std > 0.012 && std < 0.03, `head ~ N(0, 0.02^2): mean ${mean.toFixed(4)} std ${std.toFixed(4)}`);

  // Gradient of sum(g * values) w.r.t. the head against finite differences.
  const g = new Float32Array(2 * 8).map((_, i) => ((i * 7) % 5) - 2);
  g[14] = g[15] = 0; // padding of the shorter row
  await tr.zeroGrad();
  await tr.forward({ inputIds: IDS, values: true, logp: false });
  await tr.backward({ dvalues: g });
  const grad = tr.read('score.weight', 'grad');
  const js = [0, 5, 17, 31];
  const fd = await headFiniteDiff(tr, 'score.weight', g, js);
  js.forEach((j, k) => t.ok(Math.abs(fd[k] - grad[j]) <= 2e-3 * (1 + Math.abs(grad[j])), `dscore[${j}] ${grad[j].toFixed(5)} vs finite difference ${fd[k].toFixed(5)}`));

  await tr.step({ optimizer: 'sgd', lr: 0.1 });
  const after = (await tr.forward({ inputIds: IDS, values: true, logp: false })).values!;
  const out = path.join(tmpDir(), 'rm');
  await tr.saveModel(out, BASE);
  const cfg = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
  t.same(cfg.architectures, ['LlamaForSequenceClassification']);
  t.equal(cfg.num_labels, 1);
  t.ok(cfg.pad_token_id !== null && cfg.pad_token_id !== undefined, 'pad_token_id set (the classifier finds the last token through it)');
  const st = openSafetensors(path.join(out, 'model.safetensors'));
  const score = st.header.tensors.find((x) => x.name === 'score.weight');
  t.same(score?.shape, [1, model.config.hiddenSize], 'score.weight [1, hidden]');
  t.notOk(st.tensorNames.includes('lm_head.weight'), 'no LM head in the reward model');
  st.close();
  const folder = openModelFolder(out);
  t.equal(folder.config.head, 'score');
  folder.close();
  const re = await loadModel(out, { device: 'cpu' });
  const again = (await re.forward({ inputIds: IDS, values: true, logp: false })).values!;
  for (let b = 0; b < IDS.length; b++)
    for (let i = 0; i < IDS[b].length; i++) t.ok(Math.abs(again[b][i] - after[b][i]) < 1e-5, `reloaded value [${b}][${i}]`);
  re.dispose();
  model.dispose();
});

t.test('a LoRA adapter with its own score head: gradients, PEFT SEQ_CLS layout, reload by merge', async (t) => {
  const model = await loadModel(BASE, { device: 'cpu' });
  const tr = model.trainer();
  await t.rejects(model.forward({ inputIds: IDS, values: true }), /score head/, 'no values before a head exists');
  tr.createLora({ name: 'critic', r: 4, alpha: 8, targets: ['q_proj', 'v_proj'], seed: 2, head: { std: 0.05 } });
  const names = tr.trainable().map((x) => x.name);
  t.ok(names.includes('base_model.model.score.weight'), 'the head is part of the adapter');
  const g = new Float32Array(16).map((_, i) => (i % 3) - 1);
  g[14] = g[15] = 0;
  await tr.zeroGrad();
  const f0 = await tr.forward({ inputIds: IDS, values: true });
  t.ok(f0.logp && f0.values, 'one forward gives log-probs (LM head) and values (adapter head)');
  await tr.backward({ dvalues: g });
  const grad = tr.read('base_model.model.score.weight', 'grad');
  const fd = await headFiniteDiff(tr, 'base_model.model.score.weight', g, [1, 9, 30]);
  [1, 9, 30].forEach((j, k) => t.ok(Math.abs(fd[k] - grad[j]) <= 2e-3 * (1 + Math.abs(grad[j])), `adapter dscore[${j}] ${grad[j].toFixed(5)} vs ${fd[k].toFixed(5)}`));
  // The LoRA B matrices get gradient from the value loss too (they start at zero, A does not).
  const gb = tr.read('base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight', 'grad');
  t.ok(gb.some((x) => x !== 0), 'value gradients reach the LoRA matrices');
  await tr.step({ optimizer: 'adamw', lr: 0.05 });
  await tr.zeroGrad();
  const live = (await tr.forward({ inputIds: IDS, values: true })).values!;

  const out = path.join(tmpDir(), 'critic');
  await tr.saveLora(out, BASE);
  const cfg = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'));
  t.equal(cfg.task_type, 'SEQ_CLS');
  t.same(cfg.modules_to_save, ['classifier', 'score']);
  const st = openSafetensors(path.join(out, 'adapter_model.safetensors'));
  t.same(st.header.tensors.find((x) => x.name === 'base_model.model.score.weight')?.shape, [1, model.config.hiddenSize]);
  t.equal(st.tensorNames.filter((n) => n.includes('lora_')).length, 2 * 2 * model.config.numLayers, 'q and v LoRA pairs per layer');
  st.close();

  // Merged at load, the adapter's head becomes the model's score head.
  const merged = await loadModel(BASE, { device: 'cpu', adapter: out });
  t.equal(merged.config.head, 'score');
  const m = (await merged.forward({ inputIds: IDS, values: true })).values!;
  let d = 0;
  for (let b = 0; b < IDS.length; b++) for (let i = 0; i < IDS[b].length; i++) d = Math.max(d, Math.abs(m[b][i] - live[b][i]));
  t.ok(d < 1e-4, `merged adapter reproduces the values (max diff ${d.toExponential(2)})`);
  // Loaded as a second adapter (frozen reward model on the shared base) it gives the same values.
  tr.loadLora(out, 'reward');
  const r = (await tr.forward({ inputIds: IDS, values: true })).values!;
  let d2 = 0;
  for (let b = 0; b < IDS.length; b++) for (let i = 0; i < IDS[b].length; i++) d2 = Math.max(d2, Math.abs(r[b][i] - live[b][i]));
  t.ok(d2 < 1e-5, `reloaded as an adapter: same values (max diff ${d2.toExponential(2)})`);
  tr.useAdapter(null);
  await t.rejects(model.forward({ inputIds: IDS, values: true }), /score head/, 'the bare base has no head');
  merged.dispose();
  model.dispose();
});
