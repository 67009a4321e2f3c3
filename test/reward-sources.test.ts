/**
 * Reward sources: functionReward; the Llama 2 combination, logit transform
 * and whitening against an independent float64 computation; rewardModels on
 * tiny score-head models against a direct forward at the last token; the
 * vocabulary check.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { loadModel } from '../lib/engine/model';
import { openSafetensors, writeSafetensors } from '../lib/safetensors';
import { loadTokenizer } from '../lib/tokenizer/tokenizer';
import { checkSameVocab, combineRewards, functionReward, rewardModels, whiten, type RewardInput } from '../lib/reward/sources';
import { seededRandom } from '../lib/data/sft-data';
import { RlhfError } from '../lib/errors';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-reward-src-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const policy = path.join(tmp, 'policy');
const helpful = path.join(tmp, 'rm-helpful');
const safety = path.join(tmp, 'rm-safety');
const swapped = path.join(tmp, 'rm-swapped');

/**
 * A LlamaForSequenceClassification folder made from a tiny causal LM: the
 * config names the class with num_labels 1, lm_head.weight is dropped and
 * score.weight [1, hidden] is drawn from N(0, std^2).
 */
async function makeRewardModel(dir: string, seed: number, std: number): Promise<void> {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: dir, seed, dtype: 'F32' });
  const cfgFile = path.join(dir, 'config.json');
  const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
  Object.assign(cfg, { architectures: ['LlamaForSequenceClassification'], num_labels: 1, id2label: { 0: 'LABEL_0' }, label2id: { LABEL_0: 0 } });
  fs.writeFileSync(cfgFile, JSON.stringify(cfg, null, 2) + '\n');
  const file = path.join(dir, 'model.safetensors');
  const st = openSafetensors(file);
  const tensors = st.header.tensors
    .filter((x) => x.name !== 'lm_head.weight')
    .map((x) => ({ name: x.name, dtype: x.dtype, shape: x.shape, data: st.tensorBytes(x.name) }));
  st.close();
  writeSafetensors(file, [...tensors, { name: 'score.weight', dtype: 'F32', shape: [1, cfg.hidden_size], fill: { kind: 'normal', std, seed: seed * 7 + 1 } }], { format: 'pt' });
}

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: policy, seed: 1 });
  await makeRewardModel(helpful, 11, 0.1);
  await makeRewardModel(safety, 12, 0.1);
  // The same model with two vocabulary entries swapped in its tokenizer.json.
  await makeRewardModel(swapped, 11, 0.1);
  const tf = path.join(swapped, 'tokenizer.json');
  const tj = JSON.parse(fs.readFileSync(tf, 'utf8'));
  const vocab = tj.model.vocab as Record<string, number>;
  const [a, b] = Object.keys(vocab).filter((k) => vocab[k] >= 100 && vocab[k] < 102);
  [vocab[a], vocab[b]] = [vocab[b], vocab[a]];
  fs.writeFileSync(tf, JSON.stringify(tj));
});

const input = (promptIds: number[], responseIds: number[], safe?: boolean): RewardInput => ({ prompt: 'p', promptIds, response: 'r', responseIds, ...(safe === undefined ? {} : { safe }) });

t.test('functionReward: sync and async functions, names, parts and bad returns', async (t) => {
  const len = functionReward((b) => b.map((x) => x.response.length), 'len');
  t.same(len.names, ['len']);
  const r = await len.score([{ ...input([1], [2]), response: 'abc' }, { ...input([1], [2]), response: '' }]);
  t.same(Array.from(r.reward), [3, 0]);
  t.same(Array.from(r.parts.len), [3, 0]);
  t.ok(r.reward instanceof Float64Array);
  const asyncSrc = functionReward(async (b) => b.map((x) => (x.safe === false ? -1 : 1)));
  t.same(asyncSrc.names, ['reward']);
  t.same(Array.from((await asyncSrc.score([input([1], [2], false), input([1], [2]), input([1], [2], true)])).reward), [-1, 1, 1]);
  for (const [fn, re] of [
    [() => [1], /returned 1 values for 2 inputs/],
    [() => [1, NaN], /returned NaN for input 1/],
    [() => 'x' as unknown as number[], /must return an array of numbers/],
  ] as const) {
    const e = (await functionReward(fn, 'f').score([input([1], [2]), input([1], [2])]).catch((e) => e)) as RlhfError;
    t.equal(e.code, 'E_ARGUMENT');
    t.match(e.message, re);
  }
});

// Independent float64 reference of Llama 2's R = WHITEN(LOGIT(R_c)), written from the paper's formula.
function reference(rh: number[], rs: number[], safe: (boolean | undefined)[], threshold: number, logitT: boolean, white: boolean): number[] {
  const sig = (x: number) => 1 / (1 + Math.exp(-x));
  const gc = rh.map((h, i) => {
    const gs = sig(rs[i]);
    return safe[i] === false || gs < threshold ? gs : sig(h);
  });
  const r = logitT ? gc.map((g) => Math.log(g / (1 - g))) : gc;
  if (!white) return r;
  const m = r.reduce((a, b) => a + b, 0) / r.length;
  const v = r.reduce((a, b) => a + (b - m) ** 2, 0) / (r.length - 1);
  return r.map((x) => (x - m) / Math.sqrt(v + 1e-8));
}

t.test('the Llama 2 combination, logit transform and whitening match a float64 reference', async (t) => {
  const rand = seededRandom(5);
  const n = 64;
  const rh = Array.from({ length: n }, () => 8 * rand() - 4);
  const rs = Array.from({ length: n }, () => 8 * rand() - 4);
  const safe = Array.from({ length: n }, (_, i) => (i % 3 === 0 ? false : i % 3 === 1 ? true : undefined));
  let worst = 0, usedSafety = 0, usedBelow = 0;
  for (const threshold of [0.15, 0.5]) {
    for (const logitTransform of [true, false]) {
      for (const white of [false, true]) {
        const got = combineRewards(Float64Array.from(rh), Float64Array.from(rs), safe, { combine: 'llama2', safetyThreshold: threshold, logitTransform, whiten: white });
        const want = reference(rh, rs, safe, threshold, logitTransform, white);
        want.forEach((w, i) => (worst = Math.max(worst, Math.abs(w - got.reward[i]) / Math.max(1, Math.abs(w)))));
        if (threshold === 0.15 && !white && logitTransform) {
          usedSafety = got.usedSafety.reduce((a, b) => a + b, 0);
          usedBelow = got.usedSafety.filter((u, i) => u && safe[i] !== false).length;
        }
      }
    }
  }
  t.ok(worst < 1e-12, `max relative difference ${worst.toExponential(2)}`);
  t.ok(usedSafety > n / 3 && usedBelow > 0, `safety decides for unsafe prompts and for ${usedBelow} low safety scores`);

  // With the logit transform the reward is the chosen raw score itself, with no overflow for large scores.
  const big = combineRewards(Float64Array.from([60, -3]), Float64Array.from([-50, 2]), [undefined, false], { combine: 'llama2' });
  t.same(Array.from(big.reward), [-50, 2], 'sigmoid(-50) < 0.15 -> safety; unsafe prompt -> safety');
  // The threshold is strict and on the sigmoid scale: logit(0.15) = -1.7346.
  const at = Math.log(0.15 / 0.85);
  t.same(Array.from(combineRewards(Float64Array.from([1, 1]), Float64Array.from([at + 1e-9, at - 1e-9]), [true, true], { combine: 'llama2' }).reward), [1, at - 1e-9]);
  const helpOnly = combineRewards(Float64Array.from([1, -2]), Float64Array.from([-9, -9]), [false, false], { combine: 'helpfulness' });
  t.same(Array.from(helpOnly.reward), [1, -2], "'helpfulness' ignores the safety scores");
  const e = t.throws(() => combineRewards(Float64Array.from([1]), null, [undefined], { combine: 'llama2' })) as RlhfError;
  t.equal(e.code, 'E_ARGUMENT');

  const w = whiten(Float64Array.from([1, 2, 3, 4]));
  t.ok(Math.abs(w.reduce((a, b) => a + b, 0)) < 1e-12, 'whitened mean 0');
  t.ok(Math.abs(w.reduce((a, b) => a + b * b, 0) / 3 - 1) < 1e-6, 'unbiased variance 1');
  t.same(Array.from(whiten(Float64Array.from([7]))), [0], 'one value has no spread');
});

t.test('rewardModels: the score head at the last token of prompt + response, as a direct forward gives it', async (t) => {
  const tok = loadTokenizer(policy);
  const eos = tok.eosTokenId!;
  const texts: [string, string, boolean][] = [
    ['What colour is the sky?', ' Blue.', true],
    ['Hi', ' Hello there, how are you doing today?', false],
    ['A longer prompt that has quite a few more tokens than the others here.', ' Yes', true],
    ['Name a fruit', ' apple', false],
    ['x', ' y z', true],
  ];
  const batch = texts.map(([p, r, withEos]) => {
    const promptIds = tok.encode(p);
    const responseIds = [...tok.encode(r, { addSpecialTokens: false }), ...(withEos ? [eos] : [])];
    return { prompt: p, promptIds, response: r, responseIds };
  });
  const src = await rewardModels({ helpfulness: helpful, batchSize: 2, device: 'cpu', policy });
  t.teardown(() => src.dispose());
  t.same(src.names, ['helpfulness']);
  t.equal(src.maxTokens, 256);
  const got = await src.score(batch);
  const m = await loadModel(helpful, { device: 'cpu' });
  const direct: number[] = [];
  for (const x of batch) {
    const ids = [...x.promptIds, ...x.responseIds];
    const f = await m.forward({ inputIds: [ids], values: true });
    direct.push(f.values![0][ids.length - 1]);
  }
  m.dispose();
  let worst = 0;
  direct.forEach((d, i) => (worst = Math.max(worst, Math.abs(d - got.reward[i]), Math.abs(d - got.parts.helpfulness[i]))));
  t.ok(worst < 1e-4, `padded batches of 2 vs one sequence at a time: ${worst.toExponential(2)}`);
  t.ok(new Set(direct.map((d) => d.toFixed(6))).size === direct.length, `distinct scores ${direct.map((d) => d.toFixed(3)).join(' ')}`);
  t.ok(Math.abs(got.reward[0] - got.reward[1]) > 1e-3);

  // Two models: the parts are each model's score and the reward is their Llama 2 combination.
  const two = await rewardModels({ helpfulness: helpful, safety: safety, batchSize: 3, device: 'cpu', safetyThreshold: 0.5 });
  t.teardown(() => two.dispose());
  t.same(two.names, ['helpfulness', 'safety']);
  const safeFlags = [undefined, false, true, undefined, false];
  const r2 = await two.score(batch.map((x, i) => ({ ...x, ...(safeFlags[i] === undefined ? {} : { safe: safeFlags[i] }) })));
  const sm = await loadModel(safety, { device: 'cpu' });
  const ds: number[] = [];
  for (const x of batch) {
    const ids = [...x.promptIds, ...x.responseIds];
    ds.push((await sm.forward({ inputIds: [ids], values: true })).values![0][ids.length - 1]);
  }
  sm.dispose();
  const want = reference(direct, ds, safeFlags, 0.5, true, false);
  let w2 = 0;
  want.forEach((w, i) => (w2 = Math.max(w2, Math.abs(w - r2.reward[i]), Math.abs(ds[i] - r2.parts.safety[i]))));
  t.ok(w2 < 1e-4, `combined reward vs the reference on direct scores: ${w2.toExponential(2)}`);

  const e = (await two.score([{ ...batch[0], responseIds: new Array(300).fill(5) }]).catch((e) => e)) as RlhfError;
  t.equal(e.code, 'E_ARGUMENT');
  t.match(e.message, /longer than the reward model's context \(256\)/);
});

t.test('a LoRA adapter with its own score head (PEFT SEQ_CLS) on the policy base is a reward model', async (t) => {
  const m = await loadModel(policy, { device: 'cpu' });
  const tr = m.trainer();
  tr.createLora({ r: 4, alpha: 8, targets: ['q_proj', 'v_proj'], seed: 2, head: { std: 0.1 } });
  const dir = path.join(tmp, 'rm-adapter');
  await tr.saveLora(dir, policy);
  const plain = path.join(tmp, 'plain-adapter');
  const m2 = await loadModel(policy, { device: 'cpu' });
  m2.trainer().createLora({ r: 4, alpha: 8, targets: ['q_proj'], seed: 2 });
  await m2.trainer().saveLora(plain, policy);
  m2.dispose();
  m.dispose();
  const tok = loadTokenizer(policy);
  const batch = ['Hello there', 'What colour is the sky? Blue.', 'x'].map((p) => ({ prompt: p, promptIds: tok.encode(p), response: '', responseIds: [tok.eosTokenId!] }));
  const src = await rewardModels({ helpfulness: dir, policy, device: 'cpu' });
  const got = await src.score(batch);
  src.dispose();
  const ref = await loadModel(policy, { adapter: dir, device: 'cpu' });
  let worst = 0;
  for (let i = 0; i < batch.length; i++) {
    const ids = [...batch[i].promptIds, ...batch[i].responseIds];
    worst = Math.max(worst, Math.abs((await ref.forward({ inputIds: [ids], values: true, logp: false })).values![0][ids.length - 1] - got.reward[i]));
  }
  ref.dispose();
  t.ok(worst < 1e-4 && got.reward.some((x) => x !== 0), `adapter reward model vs base + adapter forward: ${worst.toExponential(2)}`);
  const e = (await rewardModels({ helpfulness: plain, device: 'cpu' }).catch((e) => e)) as RlhfError;
  t.equal(e.code, 'E_MODEL');
  t.match(e.message, /this LoRA adapter has no score head \(base_model\.model\.score\.weight\), so it is not a reward model/);
});

t.test('a reward model with another vocabulary, or no score head, is an E_MODEL', async (t) => {
  t.doesNotThrow(() => checkSameVocab(policy, helpful));
  const e = t.throws(() => checkSameVocab(policy, swapped)) as RlhfError;
  t.equal(e.code, 'E_MODEL');
  t.match(e.message, /tokenizer differs from the policy's .*: token id 10[01] is ".+" there and ".+" in the policy; the reward model must share the policy's vocabulary/);
  const e2 = (await rewardModels({ helpfulness: swapped, policy, device: 'cpu' }).catch((e) => e)) as RlhfError;
  t.equal(e2.code, 'E_MODEL');
  t.match(e2.message, /token id 10[01]/);
  const e3 = (await rewardModels({ helpfulness: policy, device: 'cpu' }).catch((e) => e)) as RlhfError;
  t.equal(e3.code, 'E_MODEL');
  t.match(e3.message, /--reward-model .*: a reward model must be a \*ForSequenceClassification folder with a score head, or a PEFT adapter with one \(this is a LlamaForCausalLM\)/);
  const e4 = (await rewardModels({ helpfulness: helpful, combine: 'llama2' }).catch((e) => e)) as RlhfError;
  t.equal(e4.code, 'E_ARGUMENT');
  t.match(e4.message, /--combine llama2 needs a safety reward model/);
});
