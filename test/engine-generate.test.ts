/**
 * Generation: greedy decoding with the KV cache must equal step-by-step
 * argmax of the full forward pass (and the PyTorch reference's greedy
 * tokens); sampling is reproducible from its seed.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadModel } from '../lib/engine/model';

const DIR = path.join(__dirname, 'fixtures', 'golden');

function argmax(a: Float32Array): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

for (const [name, weightsDtype] of [['llama_mha_untied', 'f32'], ['llama_gqa_tied', 'f32'], ['gpt2', 'f32'], ['qwen2_bias_gqa', 'f32'], ['llama_bf16', 'bf16'], ['gpt2', 'bf16']] as const) {
  t.test(`greedy with KV cache == argmax of full forward: ${name} (${weightsDtype} weights)`, async (t) => {
    const exp = JSON.parse(fs.readFileSync(path.join(DIR, name, 'expected.json'), 'utf8'));
    const model = await loadModel(path.join(DIR, name), { device: 'cpu', weightsDtype });
    const prompts: number[][] = exp.unpadded.map((u: { input_ids: number[] }) => u.input_ids.slice(0, 12 + u.input_ids.length % 5));
    const steps = 10;
    const gen = await model.generate({ prompts, maxNewTokens: steps, temperature: 0, eosIds: [] });
    for (let b = 0; b < prompts.length; b++) {
      const seq = [...prompts[b]];
      const ref: number[] = [];
      for (let s = 0; s < steps; s++) {
        const f = await model.forward({ inputIds: [seq], logp: false, lastLogits: true });
        const next = argmax(f.lastLogits![0]);
        ref.push(next);
        seq.push(next);
      }
      t.same(Array.from(gen.tokens[b]), ref, `row ${b}: ${ref.join(' ')}`);
      t.equal(gen.finish[b], 'length');
    }
    if (exp.greedy && weightsDtype === 'f32') {
      for (const r of exp.greedy.rows) {
        const g = await model.generate({ prompts: [r.prompt], maxNewTokens: exp.greedy.max_new_tokens, temperature: 0, eosIds: [] });
        t.same(Array.from(g.tokens[0]), r.tokens, `PyTorch reference greedy tokens, row ${r.row}`);
        r.logprobs.forEach((lp: number, i: number) => t.ok(Math.abs(g.logprobs[0][i] - lp) < 1e-4 * Math.max(1, Math.abs(lp)), `logprob ${i}`));
      }
    }
    model.dispose();
  });
}

t.test('sampling: same seed same output, other seed other output, EOS stops', async (t) => {
  const model = await loadModel(path.join(DIR, 'llama_mha_untied'), { device: 'cpu' });
  const prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16]];
  const a = await model.generate({ prompts, maxNewTokens: 20, temperature: 1, topP: 0.95, topK: 50, seed: 7, eosIds: [] });
  const b = await model.generate({ prompts, maxNewTokens: 20, temperature: 1, topP: 0.95, topK: 50, seed: 7, eosIds: [] });
  const c = await model.generate({ prompts, maxNewTokens: 20, temperature: 1, topP: 0.95, topK: 50, seed: 8, eosIds: [] });
  t.same(a.tokens.map((x) => Array.from(x)), b.tokens.map((x) => Array.from(x)));
  t.notSame(a.tokens.map((x) => Array.from(x)), c.tokens.map((x) => Array.from(x)));
  // Stop at an EOS id: use the 3rd token the greedy run would produce.
  const g = await model.generate({ prompts: [prompts[0]], maxNewTokens: 10, temperature: 0, eosIds: [] });
  const eos = g.tokens[0][2];
  const firstHit = Array.from(g.tokens[0]).indexOf(eos);
  const s = await model.generate({ prompts: [prompts[0]], maxNewTokens: 10, temperature: 0, eosIds: [eos] });
  t.equal(s.finish[0], 'eos');
  t.same(Array.from(s.tokens[0]), Array.from(g.tokens[0]).slice(0, firstHit + 1));
  model.dispose();
});

t.test('bad token ids are refused with a clear error', async (t) => {
  const model = await loadModel(path.join(DIR, 'llama_mha_untied'), { device: 'cpu' });
  const vocab = model.config.vocabSize;
  await t.rejects(model.forward({ inputIds: [[1, 2, vocab]] }), { code: 'E_ARGUMENT', message: /outside the vocabulary/ });
  await t.rejects(model.generate({ prompts: [[-1]] }), { code: 'E_ARGUMENT' });
  await t.rejects(model.generate({ prompts: [[]] }), { code: 'E_ARGUMENT', message: /empty/ });
  model.dispose();
  t.throws(() => model.info(), { code: 'E_ARGUMENT' });
});
