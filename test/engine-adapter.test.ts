/**
 * A PEFT LoRA adapter applied at load must give the same outputs as a base
 * model whose weights were merged by hand (W + alpha/r * B A, computed here
 * in float64 from the adapter's own tensors).
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadModel } from '../lib/engine/model';
import { openSafetensors, writeSafetensors } from '../lib/safetensors';

const BASE = path.join(__dirname, 'fixtures', 'golden', 'llama_mha_untied');

function f32(buf: Buffer): Float32Array {
  return new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
}

t.test('LoRA adapter merged at load == hand-merged weights', async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-lora-'));
  const cfg = JSON.parse(fs.readFileSync(path.join(BASE, 'config.json'), 'utf8'));
  const H = cfg.hidden_size, r = 4, alpha = 8;
  const targets = ['model.layers.0.self_attn.q_proj', 'model.layers.1.mlp.down_proj'];
  const base = openSafetensors(path.join(BASE, 'model.safetensors'));
  const shapes = Object.fromEntries(base.header.tensors.map((x) => [x.name, x.shape]));
  // Adapter with random A and B (B nonzero, so the adapter changes the model).
  const adapterDir = path.join(tmp, 'adapter');
  fs.mkdirSync(adapterDir);
  const specs = targets.flatMap((m, i) => {
    const [out, inn] = shapes[`${m}.weight`];
    return [
      { name: `base_model.model.${m}.lora_A.weight`, dtype: 'F32' as const, shape: [r, inn], fill: { kind: 'normal' as const, std: 0.3, seed: 10 + i } },
      { name: `base_model.model.${m}.lora_B.weight`, dtype: 'F32' as const, shape: [out, r], fill: { kind: 'normal' as const, std: 0.3, seed: 20 + i } },
    ];
  });
  writeSafetensors(path.join(adapterDir, 'adapter_model.safetensors'), specs, { format: 'pt' });
  fs.writeFileSync(
    path.join(adapterDir, 'adapter_config.json'),
    JSON.stringify({ peft_type: 'LORA', r, lora_alpha: alpha, target_modules: ['q_proj', 'down_proj'], use_rslora: false }),
  );
  // Hand-merged copy of the base model.
  const ad = openSafetensors(path.join(adapterDir, 'adapter_model.safetensors'));
  const merged = path.join(tmp, 'merged');
  fs.mkdirSync(merged);
  fs.copyFileSync(path.join(BASE, 'config.json'), path.join(merged, 'config.json'));
  const tensors = base.header.tensors.map((x) => {
    const data = Buffer.from(base.tensorBytes(x.name));
    const m = targets.find((tg) => `${tg}.weight` === x.name);
    if (m) {
      const W = f32(data);
      const [out, inn] = x.shape;
      const A = f32(ad.tensorBytes(`base_model.model.${m}.lora_A.weight`));
      const B = f32(ad.tensorBytes(`base_model.model.${m}.lora_B.weight`));
      const out32 = new Float32Array(W.length);
      for (let i = 0; i < out; i++)
        for (let j = 0; j < inn; j++) {
          let s = 0;
          for (let q = 0; q < r; q++) s += B[i * r + q] * A[q * inn + j];
          out32[i * inn + j] = W[i * inn + j] + (alpha / r) * s;
        }
      return { name: x.name, dtype: x.dtype, shape: x.shape, data: Buffer.from(out32.buffer) };
    }
    return { name: x.name, dtype: x.dtype, shape: x.shape, data };
  });
  base.close();
  ad.close();
  writeSafetensors(path.join(merged, 'model.safetensors'), tensors, { format: 'pt' });
  t.ok(H > 0);

  const ids = [[3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26, 43]];
  const withAdapter = await loadModel(BASE, { device: 'cpu', adapter: adapterDir });
  const handMerged = await loadModel(merged, { device: 'cpu' });
  const plain = await loadModel(BASE, { device: 'cpu' });
  const a = (await withAdapter.forward({ inputIds: ids })).logp![0];
  const b = (await handMerged.forward({ inputIds: ids })).logp![0];
  const c = (await plain.forward({ inputIds: ids })).logp![0];
  let maxAB = 0, maxAC = 0;
  for (let i = 0; i < a.length; i++) {
    maxAB = Math.max(maxAB, Math.abs(a[i] - b[i]));
    maxAC = Math.max(maxAC, Math.abs(a[i] - c[i]));
  }
  t.ok(maxAB < 1e-4, `adapter vs hand-merged: max diff ${maxAB.toExponential(2)}`);
  t.ok(maxAC > 1e-2, `the adapter changes the model (max diff vs base ${maxAC.toFixed(3)})`);
  for (const m of [withAdapter, handMerged, plain]) m.dispose();

  await t.rejects(loadModel(BASE, { adapter: path.join(tmp, 'nope') }), { code: 'E_CONFIG', message: /adapter_config\.json/ });
  fs.rmSync(tmp, { recursive: true, force: true });
});
