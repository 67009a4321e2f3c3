/**
 * The loss API (lib/engine/objectives.ts, native/model/objective.cc): each
 * loss kind runs on the model's backend over the outputs the training forward
 * left there (forward with download: false -> loss -> backward({})), on the
 * tiny Llama and GPT-2 of the training fixtures with a LoRA adapter (its B
 * matrices made nonzero, so every adapter tensor gets a gradient). Per kind:
 *
 *   - the loss and every named statistic equal a float64 computation written
 *     here from the log-probs / values of a plain forward (Model.forward) of
 *     the same weights (bounds below);
 *   - the parameter gradients (trainer.read(name, 'grad')) equal those of the
 *     old path: the training forward's outputs downloaded, the loss op run on
 *     the host arrays through runOp, the gradients scattered by hand and
 *     uploaded through backward({dlogp, dentropy, dvalues}) (to 1e-6 of the
 *     largest gradient of each tensor);
 *   - on 'cpu-guarded' (backend memory the host cannot touch between ops) the
 *     statistics and the gradients equal the plain CPU run bit for bit: the
 *     loss runs on backend memory only.
 *
 * Bounds against float64: every per-token term is a few fp32 operations on
 * fp32 inputs summed in fp64, so a statistic is held to 1e-5 of the sum of
 * the magnitudes of its terms (over its divisor); counts (accuracy, clip
 * fractions, tokens) to their one fp32 rounding. The forward's log-probs may differ from the
 * plain forward's in the last bits where the LM head's gradient was fused
 * into the forward (SFT), well inside that bound.
 */
import t from 'tap';
import type { Test } from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadModel, packBatch, runForward, type Model } from '../lib/engine/model';
import * as forwardModule from '../lib/engine/forward';
import type { Trainer } from '../lib/engine/train';
import { native } from '../lib/native';
import { scatterTokens, spanMask } from '../lib/engine/objectives';
import { Rng } from './helpers/ref';

const G = path.join(__dirname, 'fixtures', 'train-golden', 'models');
const DEVICES = ['cpu', 'cpu-guarded'] as const;
type Device = (typeof DEVICES)[number];
type Stats = Record<string, number>;
const TARGETS = { llama: ['q_proj', 'v_proj', 'o_proj', 'down_proj'], gpt2: ['c_attn', 'c_proj', 'c_fc'] };

// Rows: token ids with the length of their prompt (the completion follows).
const SFT_ROWS = [
  { ids: [5, 17, 33, 2, 41, 9, 11, 60, 7, 3, 28, 19], prompt: 4 },
  { ids: [8, 4, 22, 51, 6, 13, 2, 9], prompt: 3 },
  { ids: [1, 70, 120, 7, 99, 250, 14, 3, 81, 2], prompt: 5 },
];
// Preference pairs: chosen rows then rejected rows in one forward.
const CHOSEN = [
  { ids: [5, 17, 33, 2, 41, 9, 11, 60, 7, 3], prompt: 4 },
  { ids: [8, 4, 22, 51, 6, 13], prompt: 3 },
  { ids: [30, 31, 32, 33, 34, 200, 201], prompt: 5 },
];
const REJECTED = [
  { ids: [5, 17, 33, 2, 41, 19, 28], prompt: 4 },
  { ids: [8, 4, 22, 51, 6, 13, 2, 9, 44, 12, 3], prompt: 3 },
  { ids: [30, 31, 32, 33, 34, 150, 151, 152, 153], prompt: 5 },
];
const PAIRS = [...CHOSEN, ...REJECTED];

const seqOf = (rows: { ids: number[] }[]) => Math.max(...rows.map((r) => r.ids.length));
/** logp positions of each row's completion: token j >= prompt is predicted at j - 1. */
const spansOf = (rows: { ids: number[]; prompt: number }[]) => rows.map((r): [number, number] => [r.prompt - 1, r.ids.length - 1]);

function op(name: string, args: Record<string, unknown>) {
  native().runOp(name, args);
}

async function setup(arch: 'llama' | 'gpt2', device: Device, head: boolean): Promise<{ m: Model; tr: Trainer }> {
  const m = await loadModel(path.join(G, arch), { device });
  const tr = m.trainer();
  tr.createLora({ r: 4, alpha: 8, seed: 3, targets: TARGETS[arch], ...(head ? { head: { std: 0.5 } } : {}) });
  const rng = new Rng(11);
  for (const { name, shape } of tr.trainable())
    if (name.includes('lora_B')) tr.write(name, rng.normals(shape.reduce((a, b) => a * b, 1), 0.05));
  await tr.zeroGrad();
  return { m, tr };
}

function grads(tr: Trainer): Record<string, Float32Array> {
  return Object.fromEntries(tr.trainable().map((x) => [x.name, tr.read(x.name, 'grad')]));
}

function sameBits(t: Test, a: ArrayLike<number>, b: ArrayLike<number>, what: string) {
  let diff = 0, first = -1;
  if (a.length !== b.length) return t.fail(`${what}: lengths ${a.length} vs ${b.length}`);
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) diff++, first < 0 && (first = i);
  t.equal(diff, 0, `${what}: identical bits` + (diff ? ` (first difference at ${first}: ${a[first]} vs ${b[first]})` : ''));
}

// ------------------------------------------------------------------ float64 references

const logSigmoid = (x: number) => Math.min(x, 0) - Math.log1p(Math.exp(-Math.abs(x)));

/** A reference statistic: its float64 value and the bound on |got - ref|. Counts and fractions of counts: one fp32 rounding. */
interface RefStat {
  v: number;
  tol: number;
}
const rel = (v: number, mag: number): RefStat => ({ v, tol: 1e-5 * mag + 1e-30 });
const exact = (v: number): RefStat => ({ v, tol: 2 ** -24 * Math.abs(v) });

function sftRef(logp: Float32Array, mask: Float32Array, denom: number): Record<string, RefStat> {
  let tokens = 0, nll = 0, mag = 0;
  for (let i = 0; i < mask.length; i++)
    if (mask[i] !== 0) (tokens += mask[i]), (nll -= mask[i] * logp[i]), (mag += Math.abs(mask[i] * logp[i]));
  return { loss: rel(nll / denom, mag / denom), tokens: exact(tokens), nllSum: rel(nll, mag) };
}

// targets: soft labels p, the loss -p log sigmoid(z) - (1 - p) log sigmoid(-z).
function pairwiseRef(r: number[], margins: number[], targets?: number[]): Record<string, RefStat> {
  const P = r.length / 2;
  let loss = 0, acc = 0, mg = 0, ch = 0, rj = 0, mag = 0;
  for (let i = 0; i < P; i++) {
    const c = r[i], j = r[P + i];
    const z = c - j - margins[i];
    loss += targets ? -targets[i] * logSigmoid(z) - (1 - targets[i]) * logSigmoid(-z) : -logSigmoid(z);
    acc += c > j ? 1 : 0;
    mg += c - j;
    ch += c;
    rj += j;
    mag += Math.abs(c) + Math.abs(j) + Math.abs(margins[i]);
  }
  return { loss: rel(loss / P, mag / P), accuracy: exact(acc / P), margin: rel(mg / P, mag / P), chosen: rel(ch / P, mag / P), rejected: rel(rj / P, mag / P) };
}

function seqSums(logp: Float32Array, seq: number, spans: [number, number][]): number[] {
  const w = seq - 1;
  return spans.map(([a, e], row) => {
    let s = 0;
    for (let t = a; t < e; t++) s += logp[row * w + t];
    return s;
  });
}

function dpoRef(sums: number[], refC: Float32Array, refR: Float32Array, beta: number, ls: number): Record<string, RefStat> {
  const P = sums.length / 2;
  let loss = 0, acc = 0, rc = 0, rr = 0, lc = 0, lr = 0, mag = 0;
  for (let i = 0; i < P; i++) {
    const pc = sums[i], pr = sums[P + i];
    const h = pc - refC[i] - (pr - refR[i]);
    loss += -(1 - ls) * logSigmoid(beta * h) - ls * logSigmoid(-beta * h);
    const cr = beta * (pc - refC[i]), rj = beta * (pr - refR[i]);
    acc += cr > rj ? 1 : 0;
    rc += cr;
    rr += rj;
    lc += pc;
    lr += pr;
    mag += Math.abs(pc) + Math.abs(pr) + Math.abs(refC[i]) + Math.abs(refR[i]);
  }
  const m = (beta * mag) / P;
  return {
    loss: rel(loss / P, m),
    accuracy: exact(acc / P),
    rewardsChosen: rel(rc / P, m),
    rewardsRejected: rel(rr / P, m),
    margin: rel((rc - rr) / P, m),
    logpsChosen: rel(lc / P, mag / P),
    logpsRejected: rel(lr / P, mag / P),
    pairs: exact(P),
  };
}

interface PpoTokens {
  logp?: number[];
  entropy?: number[];
  oldLogp?: number[];
  advantages?: number[];
  refLogp?: number[];
  values?: number[];
  oldValues?: number[];
  returns?: number[];
}
interface PpoCoefs {
  clipRange: number;
  clipRangeValue: number;
  vfCoef: number;
  klCoef: number;
  entCoef: number;
}

/** TRL's PPO terms per token in float64 (k3 KL), masked means over the n response tokens. */
function ppoRef(x: PpoTokens, n: number, c: PpoCoefs): Record<string, RefStat> {
  let pg = 0, vf = 0, kl = 0, ent = 0, akl = 0, clip = 0, vclip = 0, ratio = 0;
  let pgMag = 0, vfMag = 0, klMag = 0, entMag = 0, aklMag = 0, rMag = 0;
  for (let i = 0; i < n; i++) {
    if (x.logp) {
      const d = x.logp[i] - x.oldLogp![i], A = x.advantages![i];
      const r = Math.exp(d), rc = Math.min(Math.max(r, 1 - c.clipRange), 1 + c.clipRange);
      const l1 = -A * r, l2 = -A * rc;
      pg += Math.max(l1, l2);
      clip += l2 > l1 ? 1 : 0;
      ratio += r;
      akl += 0.5 * d * d;
      pgMag += Math.abs(A * r) * (1 + Math.abs(d));
      rMag += r * (1 + Math.abs(d));
      aklMag += Math.abs(d) * (Math.abs(x.logp[i]) + Math.abs(x.oldLogp![i]));
      ent += x.entropy![i];
      entMag += Math.abs(x.entropy![i]);
      if (x.refLogp) {
        const e = x.logp[i] - x.refLogp[i];
        kl += Math.exp(-e) + e - 1;
        klMag += (Math.abs(e) + 1e-3) * (Math.abs(x.logp[i]) + Math.abs(x.refLogp[i]));
      }
    }
    if (x.values) {
      const v = x.values[i], R = x.returns![i], vo = x.oldValues![i];
      const vc = Math.min(Math.max(v, vo - c.clipRangeValue), vo + c.clipRangeValue);
      const l1 = (v - R) ** 2, l2 = (vc - R) ** 2;
      vf += 0.5 * Math.max(l1, l2);
      vclip += l2 > l1 ? 1 : 0;
      vfMag += (Math.abs(v) + Math.abs(R) + Math.abs(vo)) ** 2;
    }
  }
  const loss = pg / n + (c.vfCoef * vf) / n + (c.klCoef * kl) / n - (c.entCoef * ent) / n;
  const lossMag = (pgMag + c.vfCoef * vfMag + c.klCoef * klMag + c.entCoef * entMag) / n;
  return {
    loss: rel(loss, lossMag),
    pgLoss: rel(pg / n, pgMag / n),
    vfLoss: rel(vf / n, vfMag / n),
    kl: rel(kl / n, klMag / n),
    entropy: rel(ent / n, entMag / n),
    approxKl: rel(akl / n, aklMag / n),
    clipfrac: exact(clip / n),
    vfClipfrac: exact(vclip / n),
    ratio: rel(x.logp ? ratio / n : 1, rMag / n),
    tokens: exact(n),
  };
}

// ------------------------------------------------------------------ the kinds

/**
 * One loss kind: the plain forward whose outputs feed the float64 reference,
 * the new path (loss API) and the old one (host arrays + runOp), on a fresh
 * model each.
 */
interface Kind {
  name: string;
  head: boolean;
  /** Outputs of a plain forward of the model (its active adapter), downloaded. */
  plain(m: Model): Promise<{ logp?: Float32Array; entropy?: Float32Array; values?: Float32Array }>;
  /** The float64 reference statistics from the plain forward's outputs. */
  ref(p: { logp?: Float32Array; entropy?: Float32Array; values?: Float32Array }): Record<string, RefStat>;
  /** Forward (download: false) -> loss call -> backward({}); returns the named statistics. */
  fresh(t: Test, tr: Trainer): Promise<Stats>;
  /** The old path: downloaded outputs, runOp on the host, backward with host gradients. */
  old(tr: Trainer): Promise<void>;
}

const noArrays = (t: Test, f: { logp?: unknown; values?: unknown; entropy?: unknown; flat: object }) =>
  t.ok(f.logp === undefined && f.values === undefined && f.entropy === undefined && Object.keys(f.flat).length === 0, 'the forward with download: false returned no arrays');

function sftKind(fused: boolean): Kind {
  const inputIds = SFT_ROWS.map((r) => r.ids), seq = seqOf(SFT_ROWS);
  const mask = spanMask(seq, spansOf(SFT_ROWS));
  const tokens = mask.reduce((a, b) => a + b, 0);
  // fused: the gradient given to the forward, over a step's worth of tokens
  // (denominator larger than this micro-batch's); else the loss call makes it.
  const denom = fused ? tokens + 7 : tokens, gradScale = fused ? 1 : 0.5;
  return {
    name: fused ? 'sft (gradient made in the forward: sftLoss mask + denom)' : 'sft (gradient from the loss call, gradScale 0.5)',
    head: false,
    plain: async (m) => ({ logp: (await m.forward({ inputIds })).flat.logp }),
    ref: (p) => sftRef(p.logp!, mask, denom),
    async fresh(t, tr) {
      let s: Stats;
      if (fused) {
        noArrays(t, await tr.forward({ inputIds, sftLoss: { mask, denom }, download: false }));
        s = { ...(await tr.sftLoss()) };
      } else {
        noArrays(t, await tr.forward({ inputIds, download: false }));
        s = { ...(await tr.sftLoss({ mask, gradScale })) };
      }
      await tr.backward({});
      return s;
    },
    async old(tr) {
      const n = mask.length, loss = new Float32Array(1), dlogp = new Float32Array(n);
      if (fused) {
        op('sft_loss', { n, logp: new Float32Array(n), mask, denom, loss, dlogp });
        await tr.forward({ inputIds, lmGrad: dlogp });
        await tr.backward({});
      } else {
        const f = await tr.forward({ inputIds });
        op('sft_loss', { n, logp: f.flat.logp, mask, gradScale, loss, dlogp });
        await tr.backward({ dlogp });
      }
    },
  };
}

function pairwiseKind(explicitLast: boolean, soft = false): Kind {
  const inputIds = PAIRS.map((r) => r.ids), seq = seqOf(PAIRS), P = CHOSEN.length;
  // Default: the last real token; explicit: one before it.
  const last = PAIRS.map((r) => r.ids.length - (explicitLast ? 2 : 1));
  const margins = [0.5, 0, 1.25], gradScale = 0.5;
  const targets = soft ? [0.8, 0.5, 0.3] : undefined;
  const target = targets ? { targets: Float32Array.from(targets) } : {};
  const rewards = (values: Float32Array) => last.map((t, row) => values[row * seq + t]);
  return {
    name: `pairwise (margins, gradScale 0.5${explicitLast ? ', explicit indices' : ', each row\'s last token'}${soft ? ', soft labels' : ''})`,
    head: true,
    plain: async (m) => ({ values: (await m.forward({ inputIds, values: true, logp: false })).flat.values }),
    ref: (p) => pairwiseRef(rewards(p.values!), margins, targets),
    async fresh(t, tr) {
      noArrays(t, await tr.forward({ inputIds, values: true, logp: false, download: false }));
      const s = { ...(await tr.pairwiseLoss({ margins: Float32Array.from(margins), gradScale, ...target, ...(explicitLast ? { last } : {}) })) };
      await tr.backward({});
      return s;
    },
    async old(tr) {
      const f = await tr.forward({ inputIds, values: true, logp: false });
      const r = Float32Array.from(rewards(f.flat.values!));
      const dchosen = new Float32Array(P), drejected = new Float32Array(P);
      op('pairwise_loss', { b: P, chosen: r.subarray(0, P), rejected: r.subarray(P), margin: Float32Array.from(margins), ...(targets ? { target: Float32Array.from(targets) } : {}), gradScale, loss: new Float32Array(1), dchosen, drejected });
      const dvalues = new Float32Array(PAIRS.length * seq);
      for (let i = 0; i < P; i++) (dvalues[i * seq + last[i]] = dchosen[i]), (dvalues[(P + i) * seq + last[P + i]] = drejected[i]);
      await tr.backward({ dvalues });
    },
  };
}

function dpoKind(): Kind {
  const inputIds = PAIRS.map((r) => r.ids), seq = seqOf(PAIRS), P = CHOSEN.length, spans = spansOf(PAIRS);
  const mask = spanMask(seq, spans);
  const beta = 0.5, labelSmoothing = 0.1, gradScale = 0.5;
  // Reference sums (a separate forward in a stage): the policy's own, moved
  // so that one pair of three ranks the chosen answer higher (h = 2.5, -1.5, -1.5).
  const refChosen = new Float32Array(P), refRejected = new Float32Array(P);
  let made = false;
  return {
    name: 'dpo (beta 0.5, label smoothing 0.1, gradScale 0.5)',
    head: false,
    async plain(m) {
      const logp = (await m.forward({ inputIds })).flat.logp!;
      if (!made) {
        const sums = seqSums(logp, seq, spans);
        [1, -1, 0.5].forEach((o, i) => (refChosen[i] = sums[i] + o));
        [-0.5, 1.5, -1].forEach((o, i) => (refRejected[i] = sums[P + i] + o));
        made = true;
      }
      return { logp };
    },
    ref: (p) => dpoRef(seqSums(p.logp!, seq, spans), refChosen, refRejected, beta, labelSmoothing),
    async fresh(t, tr) {
      noArrays(t, await tr.forward({ inputIds, download: false }));
      const s = { ...(await tr.dpoLoss({ mask, refChosen, refRejected, beta, labelSmoothing, gradScale })) };
      await tr.backward({});
      return s;
    },
    async old(tr) {
      // As lib/stages/dpo.ts did it: per-span sums through sft_loss, dpo_loss, the gradients broadcast per token.
      const f = await tr.forward({ inputIds });
      const w = seq - 1, sums = new Float32Array(2 * P), stats = new Float32Array(2);
      spans.forEach(([a, e], row) => {
        const logp = f.flat.logp!.subarray(row * w + a, row * w + e);
        op('sft_loss', { n: logp.length, logp, loss: new Float32Array(1), stats });
        sums[row] = -stats[1];
      });
      const dc = new Float32Array(P), dr = new Float32Array(P);
      op('dpo_loss', { b: P, policyChosen: sums.subarray(0, P), policyRejected: sums.subarray(P), refChosen, refRejected, beta, labelSmoothing, gradScale, loss: new Float32Array(1), dpolicyChosen: dc, dpolicyRejected: dr });
      const dlogp = new Float32Array(2 * P * w);
      spans.forEach(([a, e], row) => dlogp.fill(row < P ? dc[row] : dr[row - P], row * w + a, row * w + e));
      await tr.backward({ dlogp });
    },
  };
}

// PPO rollouts: prompt + response rows; token j of a response is predicted at P - 1 + j.
const ROLLOUTS = [
  { ids: [5, 17, 33, 2, 41, 9, 11, 60, 7, 3, 28, 19], prompt: 4 },
  { ids: [8, 4, 22, 51, 6, 13, 2], prompt: 3 },
  { ids: [1, 70, 120, 7, 99, 250, 14, 3, 81, 2, 5], prompt: 6 },
];
const COEFS: PpoCoefs = { clipRange: 0.2, clipRangeValue: 0.2, vfCoef: 0.1, klCoef: 0.05, entCoef: 0.01 };

function ppoKind(part: 'critic' | 'policy'): Kind {
  const inputIds = ROLLOUTS.map((r) => r.ids), seq = seqOf(ROLLOUTS), w = seq - 1;
  const starts = ROLLOUTS.map((r) => r.prompt - 1), lens = ROLLOUTS.map((r) => r.ids.length - r.prompt);
  const n = lens.reduce((a, b) => a + b, 0);
  const mask = spanMask(seq, starts.map((s, b) => [s, s + lens[b]]));
  const temperature = 0.9, gradScale = 0.7;
  /** The n response-token values of a flat array whose rows are `width` apart. */
  const gather = (flat: Float32Array, width: number) => starts.flatMap((s, b) => Array.from(flat.subarray(b * width + s, b * width + s + lens[b])));
  const scatter = (compact: ArrayLike<number>, width: number) => {
    const out = new Float32Array(ROLLOUTS.length * width);
    let k = 0;
    starts.forEach((s, b) => {
      for (let j = 0; j < lens[b]; j++) out[b * width + s + j] = compact[k++];
    });
    return out;
  };
  const flat = (compact: ArrayLike<number>) => {
    let k = 0;
    return scatterTokens(seq, starts.map((start, b) => ({ start, values: Array.from({ length: lens[b] }, () => compact[k++]) })));
  };
  // Rollout data made once from fixed draws around the plain forward's outputs.
  const rng = new Rng(part === 'critic' ? 21 : 22);
  const noise = { a: Array.from({ length: n }, () => rng.normal()), b: Array.from({ length: n }, () => rng.normal()), c: Array.from({ length: n }, () => rng.normal()) };
  const fr = Math.fround;
  const rollout = (p: { logp?: Float32Array; values?: Float32Array }) => {
    if (part === 'critic') {
      const v = gather(p.values!, seq);
      return { values: v, oldValues: v.map((x, i) => fr(x + 0.3 * noise.a[i])), returns: noise.b.map((x) => fr(x)) };
    }
    const lp = gather(p.logp!, w);
    return { logp: lp, oldLogp: lp.map((x, i) => fr(x + 0.3 * noise.a[i])), advantages: noise.b.map((x) => fr(x)), refLogp: lp.map((x, i) => fr(x + 0.2 * noise.c[i])) };
  };
  let data: ReturnType<typeof rollout> | undefined;
  const plain = async (m: Model) => {
    const f = part === 'critic' ? await m.forward({ inputIds, values: true, logp: false }) : await m.forward({ inputIds, logp: true, temperature });
    data ??= rollout(f.flat);
    return f.flat;
  };
  return {
    name: part === 'critic' ? 'ppo, critic alone (clipped value loss, gradScale 0.7)' : 'ppo, policy alone (clipped surrogate, k3 KL, entropy, temperature 0.9, gradScale 0.7)',
    head: part === 'critic',
    plain,
    ref: (p) =>
      part === 'critic'
        ? ppoRef({ values: gather(p.values!, seq), oldValues: data!.oldValues, returns: data!.returns }, n, { ...COEFS, klCoef: 0, entCoef: 0 })
        : ppoRef({ logp: gather(p.logp!, w), entropy: gather(p.entropy!, w), oldLogp: data!.oldLogp, advantages: data!.advantages, refLogp: data!.refLogp }, n, COEFS),
    async fresh(t, tr) {
      let s: Stats;
      if (part === 'critic') {
        noArrays(t, await tr.forward({ inputIds, values: true, logp: false, download: false }));
        s = { ...(await tr.ppoLoss({ mask, returns: flat(data!.returns!), oldValues: flat(data!.oldValues!), clipRangeValue: COEFS.clipRangeValue, vfCoef: COEFS.vfCoef, gradScale })) };
      } else {
        noArrays(t, await tr.forward({ inputIds, logp: true, temperature, download: false }));
        s = {
          ...(await tr.ppoLoss({
            mask,
            oldLogp: flat(data!.oldLogp!),
            advantages: flat(data!.advantages!),
            refLogp: flat(data!.refLogp!),
            clipRange: COEFS.clipRange,
            vfCoef: COEFS.vfCoef,
            klCoef: COEFS.klCoef,
            klEstimator: 'k3',
            entCoef: COEFS.entCoef,
            gradScale,
          })),
        };
      }
      await tr.backward({});
      return s;
    },
    async old(tr) {
      // As lib/stages/ppo.ts did it: the response tokens gathered, ppo_loss on the compact arrays, the gradients scattered back.
      const loss = new Float32Array(1);
      if (part === 'critic') {
        const f = await tr.forward({ inputIds, values: true, logp: false });
        const zeros = new Float32Array(n), dvalues = new Float32Array(n);
        op('ppo_loss', { n, logp: zeros, oldLogp: zeros, advantages: zeros, values: Float32Array.from(gather(f.flat.values!, seq)), oldValues: Float32Array.from(data!.oldValues!), returns: Float32Array.from(data!.returns!), clipRangeValue: COEFS.clipRangeValue, vfCoef: COEFS.vfCoef, gradScale, loss, dvalues });
        await tr.backward({ dvalues: scatter(dvalues, seq) });
      } else {
        const f = await tr.forward({ inputIds, logp: true, temperature });
        const dlogp = new Float32Array(n), dentropy = new Float32Array(n);
        op('ppo_loss', {
          n,
          logp: Float32Array.from(gather(f.flat.logp!, w)),
          entropy: Float32Array.from(gather(f.flat.entropy!, w)),
          oldLogp: Float32Array.from(data!.oldLogp!),
          advantages: Float32Array.from(data!.advantages!),
          refLogp: Float32Array.from(data!.refLogp!),
          clipRange: COEFS.clipRange,
          vfCoef: COEFS.vfCoef,
          klCoef: COEFS.klCoef,
          klEstimator: 'k3',
          entCoef: COEFS.entCoef,
          gradScale,
          loss,
          dlogp,
          dentropy,
        });
        await tr.backward({ dlogp: scatter(dlogp, w), dentropy: scatter(dentropy, w) });
      }
    },
  };
}

const KINDS: (() => Kind)[] = [
  () => sftKind(true),
  () => sftKind(false),
  () => pairwiseKind(false),
  () => pairwiseKind(true),
  () => pairwiseKind(false, true),
  () => dpoKind(),
  () => ppoKind('critic'),
  () => ppoKind('policy'),
];

for (const arch of ['llama', 'gpt2'] as const)
  for (const make of KINDS) {
    const kind = make();
    t.test(`${arch}: ${kind.name}`, async (t) => {
      const runs: Partial<Record<Device, { plain: Awaited<ReturnType<Kind['plain']>>; stats: Stats; grads: Record<string, Float32Array> }>> = {};
      for (const device of DEVICES) {
        const { m, tr } = await setup(arch, device, kind.head);
        const plain = await kind.plain(m);
        const stats = await kind.fresh(t, tr);
        runs[device] = { plain, stats, grads: grads(tr) };
        m.dispose();
      }
      const { m, tr } = await setup(arch, 'cpu', kind.head);
      await kind.old(tr);
      const oldGrads = grads(tr);
      m.dispose();
      const cpu = runs.cpu!, guarded = runs['cpu-guarded']!;

      // 1. The statistics against float64 from the plain forward's outputs.
      const ref = kind.ref(cpu.plain);
      t.same(Object.keys(cpu.stats).sort(), Object.keys(ref).sort(), `named statistics: ${Object.keys(ref).join(', ')}`);
      for (const [k, r] of Object.entries(ref)) {
        const got = cpu.stats[k];
        t.ok(Number.isFinite(got) && Math.abs(got - r.v) <= r.tol, `${k} = ${got} vs float64 ${r.v} (|diff| ${Math.abs(got - r.v).toExponential(2)} <= ${r.tol.toExponential(2)})`);
      }

      // 2. The gradients against the old path's.
      const names = Object.keys(oldGrads);
      t.same(Object.keys(cpu.grads), names, 'same trainable tensors');
      let worst = 0, worstName = '', nonzero = 0, identical = 0;
      for (const name of names) {
        const a = cpu.grads[name], b = oldGrads[name];
        let num = 0, den = 0, same = a.length === b.length;
        for (let i = 0; i < b.length; i++) (num = Math.max(num, Math.abs(a[i] - b[i]))), (den = Math.max(den, Math.abs(b[i]))), (same &&= Object.is(a[i], b[i]));
        if (den > 0) nonzero++;
        if (same) identical++;
        const r = den > 0 ? num / den : num;
        if (r > worst) (worst = r), (worstName = name);
      }
      t.equal(nonzero, names.length, `every one of the ${names.length} trainable tensors has a nonzero gradient`);
      t.ok(worst <= 1e-6, `gradients equal the old path's: worst max|diff|/max|ref| ${worst.toExponential(2)}${worstName ? ` (${worstName})` : ''}; ${identical}/${names.length} bit-identical`);

      // 3. cpu-guarded equals cpu bit for bit.
      sameBits(t, Object.values(guarded.stats), Object.values(cpu.stats), 'cpu-guarded statistics');
      for (const name of names) sameBits(t, guarded.grads[name], cpu.grads[name], `cpu-guarded gradient of ${name}`);
    });
  }

t.test('the loss API refuses what it cannot do', async (t) => {
  const { m, tr } = await setup('llama', 'cpu', true);
  const inputIds = PAIRS.map((r) => r.ids), seq = seqOf(PAIRS);
  const mask = spanMask(seq, spansOf(PAIRS));
  await t.rejects(tr.sftLoss({ mask }), { code: 'E_ARGUMENT', message: /call the training forward first/ }, 'no training forward yet');
  await t.rejects(m.forward({ inputIds, sftLoss: { mask } }), { code: 'E_ARGUMENT', message: /training forward only/ }, 'a loss gradient given to the inference forward');
  await tr.forward({ inputIds: inputIds.slice(0, 3), download: false });
  await t.rejects(tr.dpoLoss({ mask: spanMask(seq, spansOf(PAIRS.slice(0, 3))), refChosen: new Float32Array(1), refRejected: new Float32Array(1), beta: 0.1 }), { message: /even count/ }, 'DPO needs chosen and rejected rows');
  await tr.forward({ inputIds, download: false });
  await t.rejects(tr.sftLoss(), { message: /give the loss mask/ }, 'SFT without a mask');
  await t.rejects(tr.sftLoss({ mask: new Float32Array(3) }), { message: /'mask' has 3 elements, expected batch\*\(seq-1\)/ }, 'a mask of the wrong size');
  await t.rejects(tr.pairwiseLoss(), { message: /computed no values/ }, 'pairwise without values');
  await t.rejects(tr.ppoLoss({ mask }), { message: /needs 'oldLogp' and 'advantages'/ }, 'PPO policy part without its inputs');
  await t.rejects(tr.dpoLoss({ mask, refChosen: new Float32Array(2), refRejected: new Float32Array(3), beta: 0.1 }), { message: /one element per pair/ }, 'reference sums of the wrong size');
  // A gradient left on the device and a host array for the same output.
  await tr.dpoLoss({ mask, refChosen: new Float32Array(3), refRejected: new Float32Array(3), beta: 0.1 });
  await t.rejects(tr.backward({ dlogp: new Float32Array(mask.length) }), { message: /already left the gradient of dlogp/ }, 'dlogp twice');
  await tr.backward({});
  // The gradient given to the forward: DPO and PPO refuse, SFT measures only.
  await tr.forward({ inputIds, sftLoss: { mask }, download: false });
  await t.rejects(tr.dpoLoss({ mask, refChosen: new Float32Array(3), refRejected: new Float32Array(3), beta: 0.1 }), { message: /was given the LM-head gradient/ });
  await t.rejects(tr.sftLoss({ gradScale: 2 }), { message: /gradScale does not apply/ });
  const s = await tr.sftLoss();
  t.equal(s.tokens, mask.reduce((a, b) => a + b, 0), 'SFT with the forward\'s mask counts its tokens');
  // A new forward discards a loss call's gradients: backward has nothing to take.
  await tr.forward({ inputIds, values: true, logp: false, download: false });
  await tr.pairwiseLoss();
  await tr.forward({ inputIds, values: true, logp: false, download: false });
  await tr.zeroGrad();
  await tr.backward({});
  t.ok(tr.trainable().every((x) => tr.read(x.name, 'grad').every((v) => v === 0)), 'a training forward discards the gradients of the loss call before it');
  m.dispose();
});

t.test('lib/engine: model.ts and train.ts do not import each other; the forward names stay importable from model.ts', async (t) => {
  const src = (f: string) => fs.readFileSync(path.join(__dirname, '..', 'lib', 'engine', f), 'utf8');
  const imports = (f: string) => [...src(f).matchAll(/^import[^;]*?from '([^']+)'/gms)].map((m) => m[1]);
  t.notOk(imports('train.ts').includes('./model'), 'train.ts does not import ./model');
  t.notOk(imports('forward.ts').some((i) => i === './model' || i === './train'), 'forward.ts imports neither');
  t.notOk(imports('objectives.ts').some((i) => i === './model' || i === './train'), 'objectives.ts imports neither');
  t.equal(packBatch, forwardModule.packBatch, 'packBatch re-exported from model.ts');
  t.equal(runForward, forwardModule.runForward, 'runForward re-exported from model.ts');
});
