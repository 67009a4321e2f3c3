/**
 * Whole-model golden test: our engine against log-probs, entropies and
 * score-head values computed by an independent float64 PyTorch
 * implementation (test/golden/make_golden.py; fixtures committed).
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadModel } from '../lib/engine/model';

const DIR = path.join(__dirname, 'fixtures', 'golden');
const index = JSON.parse(fs.readFileSync(path.join(DIR, 'index.json'), 'utf8'));
const cases: string[] = index.cases.map((c: string | { name: string }) => (typeof c === 'string' ? c : c.name));

// "Within 1e-4 relative": |ours - ref| <= 1e-4 * max(1, |ref|).
function close(ours: number, ref: number): boolean {
  return Math.abs(ours - ref) <= 1e-4 * Math.max(1, Math.abs(ref));
}

t.test('bf16 weight storage is lossless for a bf16 checkpoint', async (t) => {
  const name = 'llama_bf16';
  const exp = JSON.parse(fs.readFileSync(path.join(DIR, name, 'expected.json'), 'utf8'));
  const model = await loadModel(path.join(DIR, name), { device: 'cpu', weightsDtype: 'bf16' });
  t.equal(model.info().weightsDtype, 'bf16');
  const out = await model.forward({ inputIds: exp.input_ids, attentionMask: exp.attention_mask });
  let bad = 0, n = 0;
  exp.logprobs.forEach((row: (number | null)[], b: number) =>
    row.forEach((v, i) => {
      if (v === null) return;
      n++;
      if (!close(out.logp![b][i], v)) bad++;
    }),
  );
  t.ok(n > 50);
  t.equal(bad, 0, 'bf16-stored weights reproduce the reference');
  model.dispose();
});

t.test('the golden set covers what the forward pass must handle', async (t) => {
  for (const want of ['llama_gqa_tied', 'qwen2_bias_gqa', 'llama3_rope_scaling', 'gpt2', 'llama_bf16', 'llama_f16', 'llama_score', 'llama_head_dim'])
    t.ok(cases.includes(want), want);
});

for (const name of cases) {
  t.test(`golden: ${name}`, async (t) => {
    const exp = JSON.parse(fs.readFileSync(path.join(DIR, name, 'expected.json'), 'utf8'));
    const model = await loadModel(path.join(DIR, name), { device: 'cpu' });
    const score = exp.head === 'score';
    const out = await model.forward({ inputIds: exp.input_ids, attentionMask: exp.attention_mask, values: score, logp: !score });
    let checked = 0, bad = 0, worst = 0;
    const cmp = (ours: number, ref: number | null) => {
      if (ref === null) return;
      checked++;
      worst = Math.max(worst, Math.abs(ours - ref));
      if (!close(ours, ref)) bad++;
    };
    for (let b = 0; b < exp.input_ids.length; b++) {
      if (score) exp.values[b].forEach((v: number | null, i: number) => cmp(out.values![b][i], v));
      else {
        exp.logprobs[b].forEach((v: number | null, i: number) => cmp(out.logp![b][i], v));
        exp.entropy[b].forEach((v: number | null, i: number) => cmp(out.entropy![b][i], v));
      }
    }
    t.ok(checked > 50, `${checked} values checked`);
    t.equal(bad, 0, `all within 1e-4 relative (worst abs diff ${worst.toExponential(2)})`);
    // Unpadded rows run alone give the same numbers as inside the padded batch.
    for (const u of exp.unpadded ?? []) {
      const single = await model.forward({ inputIds: [u.input_ids], values: score, logp: !score });
      const ref = score ? u.values : u.logprobs;
      const ours = score ? single.values![0] : single.logp![0];
      let ok = ref.length === ours.length;
      ref.forEach((v: number, i: number) => (ok = ok && close(ours[i], v)));
      t.ok(ok, `row ${u.row} alone matches`);
    }
    model.dispose();
  });
}
