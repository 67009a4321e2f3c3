/**
 * The PPO stage's arithmetic against independent float64 implementations
 * written here: the KL estimate and reward shaping, GAE (against the
 * closed-form sums it abbreviates), masked whitening, the adaptive KL
 * controller (Ziegler et al. 2019), the seeding of an iteration; and one
 * minibatch's policy and critic gradients through the engine against central
 * finite differences of the PPO losses computed here in float64 from plain
 * forwards.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { klPerToken, shapeRewards, gae, maskedWhiten } from '../lib/ppo/gae';
import { AdaptiveKlController, FixedKlController, klController } from '../lib/ppo/kl-controller';
import { criticGradients, iterationPrompts, mixSeed, policyGradients, type PpoUpdateOptions, type Rollout } from '../lib/stages/ppo';
import { initModel } from '../lib/model/init';
import { loadModel } from '../lib/engine/model';

/** A small deterministic generator (not the one the stage uses). */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
}
const rows = (rand: () => number, lens: number[], scale = 1) => lens.map((n) => Float64Array.from({ length: n }, () => (rand() * 2 - 1) * scale));

t.test('klPerToken: k1 = logp - ref, k3 = exp(ref - logp) - 1 - (ref - logp)', async (t) => {
  const logp = [-1.2, -0.3, -4, -2.5, -0.01], ref = [-1.5, -0.3, -3.2, -2.5000001, -6];
  const k1 = klPerToken(logp, ref, 'k1'), k3 = klPerToken(logp, ref, 'k3');
  logp.forEach((lp, i) => {
    const logr = ref[i] - lp;
    t.equal(k1[i], lp - ref[i], `k1[${i}]`);
    // TRL's form, (exp(logr) - 1) - logr; tiny d where exp(logr) - 1 cancels is compared to its series d^2/2.
    const want = Math.abs(logr) > 1e-4 ? Math.exp(logr) - 1 - logr : (logr * logr) / 2 + (logr * logr * logr) / 6;
    t.ok(Math.abs(k3[i] - want) <= 1e-12 * Math.max(1, Math.abs(want)) + 1e-20, `k3[${i}] ${k3[i]} vs ${want}`);
    t.ok(k3[i] >= 0, 'k3 is never negative');
  });
  t.throws(() => klPerToken([1, 2], [1]), /2 log-probs but 1/);
});

t.test('shapeRewards: -kl_coef * kl per token, the score added at the last token', async (t) => {
  const kl = [Float64Array.from([0.1, -0.2, 0.3]), Float64Array.from([0.5]), new Float64Array(0)];
  const r = shapeRewards(kl, [2, -1, 7], 0.05);
  const close = (a: Float64Array, b: number[]) => a.length === b.length && b.every((x, i) => Math.abs(a[i] - x) < 1e-15);
  t.ok(close(r[0], [-0.005, 0.01, -0.015 + 2]), `row 0: ${Array.from(r[0])}`);
  t.ok(close(r[1], [-0.025 - 1]), `row 1: ${Array.from(r[1])}`);
  t.same(Array.from(r[2]), [], 'an empty response gets nothing');
});

/** GAE from its definition: A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t, V_T = 0. */
function gaeBySums(r: Float64Array, v: Float64Array, gamma: number, lam: number): { a: number[]; ret: number[] } {
  const n = r.length;
  const delta = Array.from({ length: n }, (_, t) => r[t] + gamma * (t + 1 < n ? v[t + 1] : 0) - v[t]);
  const a = Array.from({ length: n }, (_, t) => {
    let s = 0;
    for (let l = 0; t + l < n; l++) s += (gamma * lam) ** l * delta[t + l];
    return s;
  });
  return { a, ret: a.map((x, t) => x + v[t]) };
}

t.test('gae: against the sums it abbreviates, and its two limits', async (t) => {
  const rand = lcg(11);
  const lens = [1, 5, 17, 3];
  const r = rows(rand, lens, 2), v = rows(rand, lens, 3);
  for (const [gamma, lam] of [[1, 0.95], [0.99, 0.9], [1, 1], [1, 0], [0.5, 0.3]]) {
    const g = gae(r, v, gamma, lam);
    let worst = 0;
    lens.forEach((_, b) => {
      const want = gaeBySums(r[b], v[b], gamma, lam);
      want.a.forEach((x, i) => (worst = Math.max(worst, Math.abs(g.advantages[b][i] - x), Math.abs(g.returns[b][i] - want.ret[i]))));
    });
    t.ok(worst < 1e-12, `gamma ${gamma} lam ${lam}: max difference ${worst.toExponential(2)}`);
  }
  // lam = 1, gamma = 1: the return is the Monte Carlo sum of the rewards to go; lam = 0: one-step TD.
  const mc = gae(r, v, 1, 1), td = gae(r, v, 1, 0);
  lens.forEach((n, b) => {
    for (let i = 0; i < n; i++) {
      let togo = 0;
      for (let j = i; j < n; j++) togo += r[b][j];
      t.ok(Math.abs(mc.returns[b][i] - togo) < 1e-12, `MC return row ${b} token ${i}`);
      t.ok(Math.abs(td.advantages[b][i] - (r[b][i] + (i + 1 < n ? v[b][i + 1] : 0) - v[b][i])) < 1e-12, `TD(0) row ${b} token ${i}`);
    }
  });
  t.throws(() => gae([new Float64Array(2)], [new Float64Array(3)], 1, 1), /2 rewards but 3 values/);
});

t.test('maskedWhiten: zero mean and unit unbiased variance over every token; scale only without shiftMean', async (t) => {
  const rand = lcg(5);
  const x = rows(rand, [4, 1, 9, 6], 5).map((r) => r.map((v) => v + 3));
  const flat = x.flatMap((r) => Array.from(r));
  const n = flat.length;
  const m = flat.reduce((s, v) => s + v, 0) / n;
  const sd = Math.sqrt(flat.reduce((s, v) => s + (v - m) ** 2, 0) / (n - 1) + 1e-8);
  const w = maskedWhiten(x, true), ws = maskedWhiten(x, false);
  x.forEach((r, b) =>
    r.forEach((v, i) => {
      t.ok(Math.abs(w[b][i] - (v - m) / sd) < 1e-12, `whitened [${b}][${i}]`);
      t.ok(Math.abs(ws[b][i] - ((v - m) / sd + m)) < 1e-12, `scaled [${b}][${i}] keeps the mean`);
    }),
  );
  const wf = w.flatMap((r) => Array.from(r));
  const wm = wf.reduce((s, v) => s + v, 0) / n;
  t.ok(Math.abs(wm) < 1e-12, 'mean 0');
  t.ok(Math.abs(wf.reduce((s, v) => s + (v - wm) ** 2, 0) / (n - 1) - 1) < 1e-6, 'unbiased variance 1');
  t.same(Array.from(maskedWhiten([Float64Array.from([4])], true)[0]), [0], 'one token: no spread, 0');
  t.same(Array.from(maskedWhiten([Float64Array.from([4])], false)[0]), [4], 'one token, scale only: unchanged');
});

t.test('KL controllers: fixed stays; adaptive follows Ziegler et al. (2019) with the error clipped to +-0.2', async (t) => {
  const f = new FixedKlController(0.05);
  f.update();
  t.equal(f.value, 0.05);
  t.type(klController(0.1, null, 100), FixedKlController);
  const c = klController(0.2, 6, 10000) as AdaptiveKlController;
  t.type(c, AdaptiveKlController);
  // An independent recurrence: beta <- beta (1 + clip(kl/target - 1, -0.2, 0.2) n / horizon).
  let beta = 0.2;
  for (const [kl, n] of [[12, 256], [6, 64], [3, 128], [0, 512], [6.6, 32], [100, 1000], [5.9, 7]]) {
    c.update(kl, n);
    const e = Math.max(-0.2, Math.min(0.2, kl / 6 - 1));
    beta *= 1 + (e * n) / 10000;
    t.ok(Math.abs(c.value - beta) < 1e-15, `KL ${kl} over ${n} rollouts: beta ${c.value}`);
  }
  const up = new AdaptiveKlController(1, 1, 10);
  up.update(10, 10);
  t.ok(Math.abs(up.value - 1.2) < 1e-15, 'far above target: +20% per horizon of rollouts at most');
  const down = new AdaptiveKlController(1, 1, 10);
  down.update(0, 5);
  t.ok(Math.abs(down.value - 0.9) < 1e-15, 'far below: -20% per horizon, pro rata');
  t.throws(() => new AdaptiveKlController(1, 0, 10), /target > 0/);
});

t.test('iteration randomness is a function of (seed, iteration): prompt order and seeds', async (t) => {
  t.equal(mixSeed(42, 3), mixSeed(42, 3));
  t.not(mixSeed(42, 3), mixSeed(42, 4));
  t.not(mixSeed(42, 3), mixSeed(43, 3));
  t.not(mixSeed(1, 2), mixSeed(2, 1), 'order matters');
  t.not(mixSeed(2 ** 32 + 5), mixSeed(5), 'all the bits of large seeds count');
  // Iterations taken together cover each epoch's permutation exactly once.
  const n = 10, B = 4;
  const seq = Array.from({ length: 5 }, (_, i) => iterationPrompts(n, B, i, 7)).flat();
  t.same([...seq.slice(0, 10)].sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'epoch 0 is a permutation');
  t.same([...seq.slice(10, 20)].sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'epoch 1 is a permutation');
  t.notSame(seq.slice(0, 10), seq.slice(10, 20), 'epochs are shuffled differently');
  t.same(iterationPrompts(n, B, 3, 7), seq.slice(12, 16), 'iteration 3 alone gives the same prompts as in sequence');
  t.notSame(iterationPrompts(n, B, 3, 8), iterationPrompts(n, B, 3, 7), 'the seed changes the order');
  t.same(iterationPrompts(3, 7, 0, 1).length, 7, 'a batch larger than the prompt set spans epochs');
});

// ------------------------------------------------------------------ one minibatch's gradients

t.test('one minibatch: policy and critic gradients match finite differences of the float64 PPO losses', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-ppo-grad-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  await initModel({ arch: 'llama', preset: 'tiny', outDir: dir, seed: 9, dtype: 'F32' });
  const model = await loadModel(dir, { device: 'cpu' });
  t.teardown(() => model.dispose());
  const tr = model.trainer();
  const rand = lcg(3);
  tr.createLora({ name: 'critic', r: 4, alpha: 8, seed: 1, head: { std: 0.3 } });
  tr.createLora({ name: 'policy', r: 4, alpha: 8, seed: 2 });
  // Non-zero B matrices, so that every LoRA tensor has a gradient.
  for (const name of ['critic', 'policy']) {
    tr.useAdapter(name);
    for (const x of tr.trainable()) if (x.name.includes('lora_B')) tr.write(x.name, tr.read(x.name).map(() => (rand() * 2 - 1) * 0.2));
  }

  const o: PpoUpdateOptions = { cliprange: 0.2, cliprangeValue: 0.2, vfCoef: 0.1, entCoef: 0.05, temperature: 0.8, microBatchSize: 2 };
  // Three rollouts (two micro-batches), prompts and responses of different lengths.
  const shapes = [
    [2, 3],
    [4, 1],
    [3, 4],
  ];
  const ids = shapes.map(([p, r]) => Array.from({ length: p + r }, () => 3 + Math.floor(rand() * 400)));
  const at = (rowsOut: Float32Array[], b: number) => {
    const [p, r] = shapes[b];
    return Float64Array.from(rowsOut[b].subarray(p - 1, p - 1 + r));
  };
  const readPolicy = async () => {
    tr.useAdapter('policy');
    const f = await model.forward({ inputIds: ids, logp: true, temperature: o.temperature });
    return { logp: shapes.map((_, b) => at(f.logp!, b)), entropy: shapes.map((_, b) => at(f.entropy!, b)) };
  };
  const readCritic = async () => {
    tr.useAdapter('critic');
    const f = await model.forward({ inputIds: ids, values: true, logp: false });
    return shapes.map((_, b) => at(f.values!, b));
  };
  // Old log-probs and values a little away from the current ones, and away from the clipping kinks.
  const offset = (lo: number, hi: number) => {
    for (;;) {
      const d = (rand() * 2 - 1) * 0.4;
      if (Math.abs(Math.abs(d) - lo) > 0.03 && Math.abs(Math.abs(d) - hi) > 0.03) return d;
    }
  };
  const p0 = await readPolicy(), v0 = await readCritic();
  const oldLogp = p0.logp.map((lp) => Float32Array.from(lp, (x) => x + offset(Math.log(1.2), -Math.log(0.8))));
  // Advantages on alternate sides of the log-ratio: where the ratio is outside [1 - eps, 1 + eps], one side clips.
  const advantages = p0.logp.map((lp, b) => Float32Array.from(lp, (x, i) => (i % 2 ? -1 : 1) * Math.sign(x - oldLogp[b][i]) * (0.5 + 1.5 * rand())));
  const oldValues = v0.map((v) => Float32Array.from(v, (x) => x + offset(0.2, 0.2)));
  // Returns beyond the current value on alternate sides: where |v - v_old| > eps_v, one side makes the clipped branch the larger.
  const returns = v0.map((v, b) => Float32Array.from(v, (x, i) => x + (i % 2 ? -1 : 1) * Math.sign(x - oldValues[b][i]) * 0.8));
  const rollouts: Rollout[] = shapes.map(([p, r], b) => ({
    prompt: { line: b + 1, text: '', ids: ids[b].slice(0, p) },
    response: ids[b].slice(p),
    eos: false,
    score: 0,
    parts: {},
    oldLogp: oldLogp[b],
    refLogp: new Float32Array(r),
    oldValues: oldValues[b],
    advantages: advantages[b],
    returns: returns[b],
    klSum: 0,
  }));
  const N = shapes.reduce((s, [, r]) => s + r, 0);

  // The losses in float64, from their definitions (docs/losses.md), over all N response tokens.
  const policyLoss = async () => {
    const { logp, entropy } = await readPolicy();
    let pg = 0, ent = 0, clipped = 0;
    rollouts.forEach((r, b) =>
      r.response.forEach((_, i) => {
        const ratio = Math.exp(logp[b][i] - r.oldLogp[i]), A = r.advantages[i];
        const l1 = -A * ratio, l2 = -A * Math.min(Math.max(ratio, 1 - o.cliprange), 1 + o.cliprange);
        pg += Math.max(l1, l2);
        clipped += l2 > l1 ? 1 : 0;
        ent += entropy[b][i];
      }),
    );
    return { loss: pg / N - (o.entCoef * ent) / N, pg: pg / N, ent: ent / N, clipped };
  };
  const criticLoss = async () => {
    const v = await readCritic();
    let vf = 0, clipped = 0;
    rollouts.forEach((r, b) =>
      r.response.forEach((_, i) => {
        const vc = Math.min(Math.max(v[b][i], r.oldValues[i] - o.cliprangeValue), r.oldValues[i] + o.cliprangeValue);
        const a = (v[b][i] - r.returns[i]) ** 2, c = (vc - r.returns[i]) ** 2;
        vf += 0.5 * Math.max(a, c);
        clipped += c > a ? 1 : 0;
      }),
    );
    return { loss: (o.vfCoef * vf) / N, clipped };
  };
  const pc = await policyLoss(), cc = await criticLoss();
  t.ok(pc.clipped > 0 && pc.clipped < N, `the policy case has clipped and unclipped tokens (${pc.clipped}/${N})`);
  t.ok(cc.clipped > 0 && cc.clipped < N, `the critic case has clipped and unclipped values (${cc.clipped}/${N})`);

  const p = await policyGradients(tr, rollouts, o);
  t.equal(p.tokens, N);
  t.ok(Math.abs(p.pgLoss - pc.pg) < 1e-5, `pg_loss ${p.pgLoss} matches the float64 surrogate ${pc.pg}`);
  t.ok(Math.abs(p.entropy - pc.ent) < 1e-5, `entropy ${p.entropy} matches ${pc.ent}`);
  const pGrads = new Map(tr.trainable().map((x) => [x.name, tr.read(x.name, 'grad')]));
  const c = await criticGradients(tr, rollouts, o);
  t.ok(Math.abs(o.vfCoef * c.vfLoss - cc.loss) < 1e-6, `value loss ${c.vfLoss} matches the float64 value loss`);
  const cGrads = new Map(tr.trainable().map((x) => [x.name, tr.read(x.name, 'grad')]));
  t.ok(cGrads.has('base_model.model.score.weight') && !pGrads.has('base_model.model.score.weight'), 'the head belongs to the critic only');

  /** Central differences (step h) on the largest-gradient entries of a tensor and two others. */
  const check = async (adapter: string, grads: Map<string, Float32Array>, name: string, loss: () => Promise<{ loss: number }>, h: number) => {
    tr.useAdapter(adapter);
    const g = grads.get(name)!;
    const w0 = tr.read(name);
    const byMag = Array.from(g.keys()).sort((a, b) => Math.abs(g[b]) - Math.abs(g[a]));
    for (const j of [byMag[0], byMag[1], byMag[Math.floor(g.length / 3)]]) {
      const w = Float32Array.from(w0);
      w[j] = w0[j] + h;
      tr.useAdapter(adapter);
      tr.write(name, w);
      const lp = (await loss()).loss;
      w[j] = w0[j] - h;
      tr.useAdapter(adapter);
      tr.write(name, w);
      const lm = (await loss()).loss;
      tr.useAdapter(adapter);
      tr.write(name, w0);
      const fd = (lp - lm) / (2 * h);
      // fp32 forwards: the loss is good to ~1e-7 relative, so the difference to ~1e-7 |loss| / h.
      const tol = 3e-2 * Math.abs(fd) + 2e-6 / h;
      t.ok(Math.abs(g[j] - fd) <= tol, `${adapter} ${name.replace('base_model.model.', '')}[${j}]: ${g[j].toExponential(4)} vs finite difference ${fd.toExponential(4)}`);
    }
  };
  await check('policy', pGrads, 'base_model.model.model.layers.1.mlp.down_proj.lora_B.weight', policyLoss, 1e-2);
  await check('policy', pGrads, 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight', policyLoss, 1e-2);
  await check('critic', cGrads, 'base_model.model.score.weight', criticLoss, 1e-3);
  await check('critic', cGrads, 'base_model.model.model.layers.1.mlp.up_proj.lora_B.weight', criticLoss, 1e-2);
});
