/**
 * One training step against an independent float64 PyTorch reference
 * (test/golden/make_train_golden.py): loss, global gradient norm, every
 * gradient (before clipping) and every updated tensor, for full fine-tuning
 * and PEFT LoRA, SGD and AdamW, with clipping and gradient accumulation.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadModel } from '../lib/engine/model';
import { native } from '../lib/native';
import { openSafetensors, readSafetensorsAsF64 } from '../lib/safetensors';
import type { Trainer } from '../lib/engine/train';

const G = path.join(__dirname, 'fixtures', 'train-golden');
const cases: string[] = fs.readdirSync(path.join(G, 'cases')).sort();

/** SFT loss gradient through the native loss op: mask = label of the target is not -100. */
function sftGrad(labels: number[][], T: number, logp: Float32Array, denom: number) {
  const B = labels.length;
  const mask = new Float32Array(B * (T - 1));
  for (let b = 0; b < B; b++) for (let t = 0; t + 1 < T; t++) mask[b * (T - 1) + t] = labels[b][t + 1] === -100 ? 0 : 1;
  const loss = new Float32Array(1), dlogp = new Float32Array(B * (T - 1)), stats = new Float32Array(2);
  native().runOp('sft_loss', { n: B * (T - 1), logp, mask, denom, loss, dlogp, stats });
  return { loss: loss[0], dlogp, tokens: stats[0] };
}

async function trainStep(tr: Trainer, exp: any, rows: number[], denom: number) {
  const ids = rows.map((r) => exp.input_ids[r]), mask = rows.map((r) => exp.attention_mask[r]), labels = rows.map((r) => exp.labels[r]);
  const f = (await tr.forward({ inputIds: ids, attentionMask: mask })) as any;
  const T = ids[0].length;
  const g = sftGrad(labels, T, f.flat.logp, denom);
  await tr.backward({ dlogp: g.dlogp });
  return g;
}

for (const name of cases) {
  t.test(`one training step matches PyTorch: ${name}`, async (t) => {
    const dir = path.join(G, 'cases', name);
    const exp = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8'));
    const model = await loadModel(path.join(dir, exp.model), { device: 'cpu' });
    const tr = model.trainer();
    if (exp.mode === 'full') tr.enableFullTraining();
    else tr.loadLora(path.join(dir, exp.lora.adapter));
    // Token-weighted accumulation: every micro-batch's loss is divided by the
    // number of target tokens of the whole accumulated batch.
    const total: number = exp.num_target_tokens;
    const micro: number[][] = exp.micro_batches ? exp.micro_batches.map((m: { rows: number[] }) => m.rows) : [exp.input_ids.map((_: unknown, i: number) => i)];
    let loss = 0;
    for (const rows of micro) loss += (await trainStep(tr, exp, rows, total)).loss;
    t.ok(Math.abs(loss - exp.loss) < 1e-5 * Math.abs(exp.loss), `loss ${loss} vs ${exp.loss}`);
    const o = exp.optimizer;
    const r = await tr.step({
      optimizer: o.type,
      lr: o.lr,
      beta1: o.betas?.[0],
      beta2: o.betas?.[1],
      eps: o.eps,
      weightDecay: o.weight_decay ?? 0,
      maxGradNorm: exp.max_grad_norm ?? 0,
      noDecay: o.no_decay ?? [],
    });
    t.ok(Math.abs(r.gradNorm - exp.grad_norm) < 1e-5 * exp.grad_norm, `grad norm ${r.gradNorm} vs ${exp.grad_norm}`);
    t.ok(Math.abs(r.clipCoef - exp.clip_coef) < 1e-6, `clip coefficient ${r.clipCoef}`);
    // Elements whose true gradient is exactly zero (softmax's shift
    // invariance): AdamW turns rounding noise there into arbitrary updates.
    const zero = new Map<string, [number, number][]>();
    for (const z of exp.zero_gradient ?? []) zero.set(z.tensor, [...(zero.get(z.tensor) ?? []), [z.start, z.end]]);
    const gfile = path.join(dir, exp.files.grads), ufile = path.join(dir, exp.files.updated);
    const st = openSafetensors(gfile);
    const names = st.tensorNames;
    st.close();
    t.ok(names.length > 0);
    let gradBad = 0, updBad = 0, worstG = 0, worstU = 0;
    for (const n of names) {
      const ref = readSafetensorsAsF64(gfile, n).values, ours = tr.read(n, 'grad');
      const scale = Math.max(...ref.map(Math.abs));
      const skip = (i: number) => (zero.get(n) ?? []).some(([a, b]) => i >= a && i < b);
      for (let i = 0; i < ref.length; i++) {
        const e = Math.abs(ours[i] - ref[i]);
        worstG = Math.max(worstG, e / (scale || 1));
        if (!skip(i) && e > 1e-5 * scale + 1e-9) gradBad++;
      }
      const uref = readSafetensorsAsF64(ufile, n).values, uo = tr.read(n, 'value');
      for (let i = 0; i < uref.length; i++) {
        if (skip(i)) continue;
        const e = Math.abs(uo[i] - uref[i]);
        worstU = Math.max(worstU, e);
        if (e > 3e-6 + 1e-6 * Math.abs(uref[i])) updBad++;
      }
    }
    t.equal(gradBad, 0, `${names.length} gradients within 1e-5 of max|g| (worst ${worstG.toExponential(2)})`);
    t.equal(updBad, 0, `updated tensors within 3e-6 (worst ${worstU.toExponential(2)})`);
    model.dispose();
  });
}
