/**
 * The LM head's gradient computed in the training forward (lmGrad: SFT's
 * loss gradient is known before the forward) against the two-pass path
 * (forward, then backward(dlogp), which recomputes the logits): the same
 * log-probs and the same gradients of every trainable tensor, for LoRA and
 * for full fine-tuning (where the LM-head weight's own gradient comes from
 * the fused pass), Llama and GPT-2. The two paths sum in different orders,
 * so they agree to fp32 accuracy, not bit for bit.
 */
import t from 'tap';
import * as path from 'node:path';
import { loadModel } from '../lib/engine/model';
import { native } from '../lib/native';

const G = path.join(__dirname, 'fixtures', 'train-golden', 'models');
const ids = [
  [5, 17, 33, 2, 41, 9, 11, 60, 7, 3, 28, 19],
  [8, 4, 22, 51, 6, 13, 2, 9],
];

function maxRel(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return den > 0 ? num / den : num;
}

for (const arch of ['llama', 'gpt2'] as const)
  for (const mode of ['lora', 'full'] as const) {
    t.test(`${arch} ${mode}: gradients with lmGrad equal the two-pass gradients`, async (t) => {
      const grads: Record<string, Record<string, Float32Array>> = {};
      const logps: Record<string, Float32Array> = {};
      for (const fused of [false, true]) {
        const m = await loadModel(path.join(G, arch), { device: 'cpu' });
        const tr = m.trainer();
        if (mode === 'lora') tr.createLora({ r: 4, alpha: 8, targets: arch === 'llama' ? ['q_proj', 'v_proj', 'down_proj'] : ['c_attn', 'c_fc'], seed: 2 });
        else tr.enableFullTraining();
        if (mode === 'lora') {
          // B starts at zero: one plain step first so the adapter's gradients reach A too.
          const f0 = (await tr.forward({ inputIds: ids })) as any;
          const n0 = f0.flat.logp.length, l0 = new Float32Array(1), d0 = new Float32Array(n0);
          native().runOp('sft_loss', { n: n0, logp: f0.flat.logp, mask: new Float32Array(n0).fill(1), denom: n0, loss: l0, dlogp: d0 });
          await tr.backward({ dlogp: d0 });
          await tr.step({ optimizer: 'sgd', lr: 0.5 });
          await tr.zeroGrad();
        }
        const n = ids.length * (Math.max(...ids.map((r) => r.length)) - 1);
        const mask = new Float32Array(n);
        for (let b = 0; b < ids.length; b++) for (let j = 0; j + 1 < ids[b].length; j++) mask[b * (n / ids.length) + j] = j % 3 === 0 ? 0 : 1;
        let denom = 0;
        for (const x of mask) denom += x;
        const loss = new Float32Array(1), dlogp = new Float32Array(n);
        native().runOp('sft_loss', { n, logp: new Float32Array(n), mask, denom, loss, dlogp });
        let f: any;
        if (fused) {
          f = await tr.forward({ inputIds: ids, lmGrad: dlogp });
          await t.rejects(tr.backward({ dlogp }), { code: 'E_ARGUMENT' }, 'a second dlogp after lmGrad is refused');
          await tr.backward({});
        } else {
          f = await tr.forward({ inputIds: ids });
          await tr.backward({ dlogp });
        }
        logps[String(fused)] = f.flat.logp;
        grads[String(fused)] = Object.fromEntries(tr.trainable().map((x: any) => [x.name, tr.read(x.name, 'grad')]));
      }
      t.ok(maxRel(logps.true, logps.false) < 1e-5, `log-probs agree: ${maxRel(logps.true, logps.false).toExponential(2)}`);
      const names = Object.keys(grads.false);
      t.same(Object.keys(grads.true), names, 'same trainable tensors');
      let worst = 0, worstName = '', nonzero = 0;
      for (const name of names) {
        const r = maxRel(grads.true[name], grads.false[name]);
        if (grads.false[name].some((x) => x !== 0)) nonzero++;
        if (r > worst) (worst = r), (worstName = name);
      }
      t.ok(nonzero >= Math.min(names.length, 3), `${nonzero} of ${names.length} gradients are nonzero`);
      t.ok(worst < 1e-4, `every gradient agrees to fp32 accuracy: worst max|diff|/max|ref| ${worst.toExponential(2)} (${worstName})`);
      if (mode === 'full') {
        const head = names.find((x) => x === 'lm_head.weight' || x.endsWith('wte.weight') || x.endsWith('embed_tokens.weight'));
        t.ok(head, `the LM-head weight (${head}) is trained too`);
      }
    });
  }
