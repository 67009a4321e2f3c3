/**
 * The loss API's evaluation mode (Model.sftLoss, pairwiseLoss, dpoLoss,
 * sequenceLogps; lib/engine/objectives.ts, native/model/objective.cc): the
 * loss kernels on the model's backend over the outputs of the last INFERENCE
 * forward (model.forward), no gradients. On the tiny Llama and GPT-2 of the
 * training fixtures, with a LoRA adapter (nonzero B) and a score head, rows
 * right-padded and left-padded:
 *
 *   - every statistic equals a float64 computation from the downloaded
 *     outputs of the same forward (bounds as in engine-objectives.test.ts:
 *     1e-5 of the magnitudes for terms computed in fp32, one fp32 rounding
 *     for counts and for sums of fp32 values taken in fp64);
 *   - on the CPU it equals, bit for bit, the host path the stages used
 *     (runOp over the downloaded arrays), so switching the stages over
 *     changes no reported number;
 *   - the forward may keep its outputs on the device (download: false) or
 *     download them: the evaluation reads the device copy either way;
 *   - on 'cpu-guarded' (backend memory the host cannot touch between ops)
 *     every statistic and sum equals the CPU's bit for bit.
 *
 * And the lifetime rules: an evaluation leaves no gradient for backward()
 * and leaves a training loss call's pending gradient as it was; without an
 * inference forward (only a training one) it is refused with E_ARGUMENT.
 */
import t from 'tap';
import type { Test } from 'tap';
import * as path from 'node:path';
import { loadModel, type Model } from '../lib/engine/model';
import type { Trainer } from '../lib/engine/train';
import { native } from '../lib/native';
import { spanMask } from '../lib/engine/objectives';
import { Rng } from './helpers/ref';

const G = path.join(__dirname, 'fixtures', 'train-golden', 'models');
const DEVICES = ['cpu', 'cpu-guarded'] as const;
type Device = (typeof DEVICES)[number];
const TARGETS = { llama: ['q_proj', 'v_proj', 'o_proj', 'down_proj'], gpt2: ['c_attn', 'c_proj', 'c_fc'] };
type Pad = 'right' | 'left';

// Rows: token ids with the length of their prompt (the completion follows).
interface Row {
  ids: number[];
  prompt: number;
}
const SFT_ROWS: Row[] = [
  { ids: [5, 17, 33, 2, 41, 9, 11, 60, 7, 3, 28, 19], prompt: 4 },
  { ids: [8, 4, 22, 51, 6, 13, 2, 9], prompt: 3 },
  { ids: [1, 70, 120, 7, 99, 250, 14, 3, 81, 2], prompt: 5 },
];
const CHOSEN: Row[] = [
  { ids: [5, 17, 33, 2, 41, 9, 11, 60, 7, 3], prompt: 4 },
  { ids: [8, 4, 22, 51, 6, 13], prompt: 3 },
  { ids: [30, 31, 32, 33, 34, 200, 201], prompt: 5 },
];
const REJECTED: Row[] = [
  { ids: [5, 17, 33, 2, 41, 19, 28], prompt: 4 },
  { ids: [8, 4, 22, 51, 6, 13, 2, 9, 44, 12, 3], prompt: 3 },
  { ids: [30, 31, 32, 33, 34, 150, 151, 152, 153], prompt: 5 },
];
const PAIRS = [...CHOSEN, ...REJECTED];
const P = CHOSEN.length;

/**
 * A padded batch: ids, the attention mask for left padding (right padding is
 * packBatch's own), each row's offset (left padding) and its completion span
 * in the logp layout (token j >= prompt is predicted at offset + j - 1).
 */
function padded(rows: Row[], pad: Pad) {
  const seq = Math.max(...rows.map((r) => r.ids.length));
  const off = rows.map((r) => (pad === 'left' ? seq - r.ids.length : 0));
  const inputIds = rows.map((r, b) => (pad === 'left' ? [...new Array<number>(off[b]).fill(0), ...r.ids] : r.ids));
  const attentionMask = pad === 'left' ? rows.map((r, b) => [...new Array<number>(off[b]).fill(0), ...r.ids.map(() => 1)]) : undefined;
  const spans = rows.map((r, b): [number, number] => [off[b] + r.prompt - 1, off[b] + r.ids.length - 1]);
  const last = rows.map((r, b) => off[b] + r.ids.length - 1);
  return { seq, inputIds, attentionMask, spans, last, mask: spanMask(seq, spans) };
}

async function setup(arch: 'llama' | 'gpt2', device: Device): Promise<{ m: Model; tr: Trainer }> {
  const m = await loadModel(path.join(G, arch), { device });
  const tr = m.trainer();
  tr.createLora({ r: 4, alpha: 8, seed: 3, targets: TARGETS[arch], head: { std: 0.5 } });
  const rng = new Rng(11);
  for (const { name, shape } of tr.trainable())
    if (name.includes('lora_B')) tr.write(name, rng.normals(shape.reduce((a, b) => a * b, 1), 0.05));
  await tr.zeroGrad();
  return { m, tr };
}

function sameBits(t: Test, a: ArrayLike<number>, b: ArrayLike<number>, what: string) {
  let diff = 0, first = -1;
  if (a.length !== b.length) return t.fail(`${what}: lengths ${a.length} vs ${b.length}`);
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) diff++, first < 0 && (first = i);
  t.equal(diff, 0, `${what}: identical bits` + (diff ? ` (first difference at ${first}: ${a[first]} vs ${b[first]})` : ''));
}

const noArrays = (t: Test, f: { logp?: unknown; values?: unknown; entropy?: unknown; flat: object }) =>
  t.ok(f.logp === undefined && f.values === undefined && f.entropy === undefined && Object.keys(f.flat).length === 0, 'the forward with download: false returned no arrays');

// ------------------------------------------------------------------ float64 references

const logSigmoid = (x: number) => Math.min(x, 0) - Math.log1p(Math.exp(-Math.abs(x)));
interface RefStat {
  v: number;
  tol: number;
}
/** A term computed in fp32: 1e-5 of the magnitudes summed. */
const rel = (v: number, mag: number): RefStat => ({ v, tol: 1e-5 * mag + 1e-30 });
/** Counts, and sums of fp32 values taken in fp64: one fp32 rounding. */
const once = (v: number): RefStat => ({ v, tol: 2 ** -24 * Math.abs(v) });

function check(t: Test, got: Record<string, number>, ref: Record<string, RefStat>, what: string) {
  t.same(Object.keys(got).sort(), Object.keys(ref).sort(), `${what}: named statistics ${Object.keys(ref).join(', ')}`);
  for (const [k, r] of Object.entries(ref)) {
    const g = got[k];
    t.ok(Number.isFinite(g) && Math.abs(g - r.v) <= r.tol, `${what}: ${k} = ${g} vs float64 ${r.v} (|diff| ${Math.abs(g - r.v).toExponential(2)} <= ${r.tol.toExponential(2)})`);
  }
}

function sftRef(logp: Float32Array, mask: Float32Array, denom?: number): Record<string, RefStat> {
  let tokens = 0, nll = 0, mag = 0;
  for (let i = 0; i < mask.length; i++) if (mask[i] !== 0) (tokens += mask[i]), (nll -= mask[i] * logp[i]), (mag += Math.abs(mask[i] * logp[i]));
  const d = denom ?? Math.max(1, tokens);
  return { loss: once(nll / d), tokens: once(tokens), nllSum: once(nll) };
}

function pairwiseRef(r: number[], margins: number[]): Record<string, RefStat> {
  let loss = 0, acc = 0, mg = 0, ch = 0, rj = 0, mag = 0;
  for (let i = 0; i < P; i++) {
    const c = r[i], j = r[P + i];
    loss += -logSigmoid(c - j - margins[i]);
    acc += c > j ? 1 : 0;
    mg += c - j;
    ch += c;
    rj += j;
    mag += Math.abs(c) + Math.abs(j) + Math.abs(margins[i]);
  }
  return { loss: rel(loss / P, mag / P), accuracy: once(acc / P), margin: rel(mg / P, mag / P), chosen: rel(ch / P, mag / P), rejected: rel(rj / P, mag / P) };
}

function seqSums(logp: Float32Array, seq: number, spans: [number, number][]): number[] {
  const w = seq - 1;
  return spans.map(([a, e], row) => {
    let s = 0;
    for (let i = a; i < e; i++) s += logp[row * w + i];
    return s;
  });
}

function dpoRef(sums: number[], refC: Float32Array, refR: Float32Array, beta: number, ls: number): Record<string, RefStat> {
  let loss = 0, acc = 0, rc = 0, rr = 0, lc = 0, lr = 0, mag = 0;
  for (let i = 0; i < P; i++) {
    // The device sums are fp32: the reference uses them rounded once, as the device does.
    const pc = Math.fround(sums[i]), pr = Math.fround(sums[P + i]);
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
    accuracy: once(acc / P),
    rewardsChosen: rel(rc / P, m),
    rewardsRejected: rel(rr / P, m),
    margin: rel((rc - rr) / P, m),
    logpsChosen: rel(lc / P, mag / P),
    logpsRejected: rel(lr / P, mag / P),
    pairs: once(P),
  };
}

// ------------------------------------------------------------------ the host path (runOp), as the stages computed it

function hostSft(logp: Float32Array, mask: Float32Array, denom?: number) {
  const loss = new Float32Array(1), stats = new Float32Array(2);
  native().runOp('sft_loss', { n: mask.length, logp, mask, denom: denom ?? 0, loss, stats });
  return { loss: loss[0], tokens: stats[0], nllSum: stats[1] };
}

function hostPairwise(r: Float32Array, margin: Float32Array) {
  const loss = new Float32Array(1), stats = new Float32Array(4);
  native().runOp('pairwise_loss', { b: P, chosen: r.subarray(0, P), rejected: r.subarray(P), margin, loss, stats });
  return { loss: loss[0], accuracy: stats[0], margin: stats[1], chosen: stats[2], rejected: stats[3] };
}

/** lib/stages/dpo.ts's sequenceLogps: each span's sum through sft_loss's nllSum. */
function hostSums(logp: Float32Array, seq: number, spans: [number, number][]): Float32Array {
  const w = seq - 1, out = new Float32Array(spans.length);
  const loss = new Float32Array(1), stats = new Float32Array(2);
  spans.forEach(([a, e], row) => {
    const x = logp.subarray(row * w + a, row * w + e);
    native().runOp('sft_loss', { n: x.length, logp: x, loss, stats });
    out[row] = -stats[1];
  });
  return out;
}

function hostDpo(sums: Float32Array, refChosen: Float32Array, refRejected: Float32Array, beta: number, labelSmoothing: number) {
  const loss = new Float32Array(1), stats = new Float32Array(6);
  native().runOp('dpo_loss', { b: P, policyChosen: sums.subarray(0, P), policyRejected: sums.subarray(P), refChosen, refRejected, beta, labelSmoothing, loss, stats });
  const mean = (a: Float32Array) => a.reduce((x, y) => x + y, 0) / P;
  return { loss: loss[0], accuracy: stats[0], rewardsChosen: stats[1], rewardsRejected: stats[2], margin: stats[3], logpsChosen: mean(sums.subarray(0, P)), logpsRejected: mean(sums.subarray(P)), pairs: P };
}

function sameHost(t: Test, got: Record<string, number>, host: Record<string, number>, what: string) {
  const keys = Object.keys(host);
  sameBits(t, keys.map((k) => got[k]), keys.map((k) => host[k]), `${what} equals the host path (runOp over the downloaded arrays)`);
}

// ------------------------------------------------------------------ every kind, both paddings, both devices

/** All evaluation results of one model, by name (for the cpu / cpu-guarded comparison). */
async function evaluateAll(t: Test, m: Model, pad: Pad, device: Device): Promise<Record<string, number[]>> {
  const out: Record<string, number[]> = {};
  const keep = (name: string, s: Record<string, number> | Float32Array) => (out[name] = s instanceof Float32Array ? Array.from(s) : Object.values(s));
  const host = device === 'cpu';

  // SFT: after a downloading forward (the arrays feed the references) and after one that keeps them on the device.
  {
    const b = padded(SFT_ROWS, pad);
    const f = await m.forward({ inputIds: b.inputIds, attentionMask: b.attentionMask });
    const logp = f.flat.logp!;
    const s1 = await m.sftLoss({ mask: b.mask });
    check(t, { ...s1 }, sftRef(logp, b.mask), 'sft');
    if (host) sameHost(t, { ...s1 }, hostSft(logp, b.mask), 'sft');
    noArrays(t, await m.forward({ inputIds: b.inputIds, attentionMask: b.attentionMask, download: false }));
    const denom = 40;
    const s2 = await m.sftLoss({ mask: b.mask, denom });
    check(t, { ...s2 }, sftRef(logp, b.mask, denom), 'sft (denom 40, download: false)');
    if (host) sameHost(t, { ...s2 }, hostSft(logp, b.mask, denom), 'sft (denom 40)');
    keep('sft', s1), keep('sft denom', s2);
  }

  // Pairwise: the default reward token (each row's last real token by the forward's mask) and explicit indices.
  {
    const b = padded(PAIRS, pad);
    const margins = Float32Array.from([0.5, 0, 1.25]);
    const f = await m.forward({ inputIds: b.inputIds, attentionMask: b.attentionMask, values: true, logp: false });
    const values = f.flat.values!;
    noArrays(t, await m.forward({ inputIds: b.inputIds, attentionMask: b.attentionMask, values: true, logp: false, download: false }));
    for (const explicit of [false, true]) {
      const last = b.last.map((x) => x - (explicit ? 1 : 0));
      const r = Float32Array.from(last, (x, row) => values[row * b.seq + x]);
      const s = await m.pairwiseLoss({ margins, ...(explicit ? { last } : {}) });
      const what = `pairwise (${explicit ? 'explicit indices' : "each row's last real token"})`;
      check(t, { ...s }, pairwiseRef(Array.from(r), Array.from(margins)), what);
      if (host) sameHost(t, { ...s }, hostPairwise(r, margins), what);
      keep(what, s);
    }
  }

  // DPO and the per-row sums (DPO's reference log-probs).
  {
    const b = padded(PAIRS, pad);
    const beta = 0.5, labelSmoothing = 0.1;
    const f = await m.forward({ inputIds: b.inputIds, attentionMask: b.attentionMask });
    const logp = f.flat.logp!;
    const sums = seqSums(logp, b.seq, b.spans);
    // Reference sums near the policy's own, so that the pairs disagree on the ranking.
    const refChosen = Float32Array.from([1, -1, 0.5], (o, i) => sums[i] + o);
    const refRejected = Float32Array.from([-0.5, 1.5, -0.75], (o, i) => sums[P + i] + o);
    noArrays(t, await m.forward({ inputIds: b.inputIds, attentionMask: b.attentionMask, download: false }));
    const got = await m.sequenceLogps({ mask: b.mask });
    t.equal(got.length, PAIRS.length, 'sequenceLogps: one sum per row');
    sums.forEach((v, row) => t.ok(Math.abs(got[row] - v) <= 2 ** -24 * Math.abs(v), `sequenceLogps row ${row}: ${got[row]} vs float64 ${v}`));
    if (host) sameBits(t, got, hostSums(logp, b.seq, b.spans), 'sequenceLogps equals the host path (sft_loss per span, as lib/stages/dpo.ts summed)');
    const s = await m.dpoLoss({ mask: b.mask, refChosen, refRejected, beta, labelSmoothing });
    check(t, { ...s }, dpoRef(sums, refChosen, refRejected, beta, labelSmoothing), 'dpo');
    if (host) sameHost(t, { ...s }, hostDpo(got, refChosen, refRejected, beta, labelSmoothing), 'dpo');
    keep('sequenceLogps', got), keep('dpo', s);
  }
  return out;
}

for (const arch of ['llama', 'gpt2'] as const)
  for (const pad of ['right', 'left'] as const)
    t.test(`${arch}, ${pad} padding: evaluation statistics against float64 and the host path; cpu-guarded bit for bit`, async (t) => {
      const runs: Partial<Record<Device, Record<string, number[]>>> = {};
      for (const device of DEVICES) {
        const { m } = await setup(arch, device);
        runs[device] = await evaluateAll(t, m, pad, device);
        m.dispose();
      }
      const cpu = runs.cpu!, guarded = runs['cpu-guarded']!;
      t.same(Object.keys(guarded), Object.keys(cpu), 'the same evaluations on both devices');
      for (const k of Object.keys(cpu)) sameBits(t, guarded[k], cpu[k], `cpu-guarded ${k}`);
    });

// ------------------------------------------------------------------ lifetime

const grads = (tr: Trainer) => tr.trainable().map((x) => tr.read(x.name, 'grad'));
const loraGrads = (tr: Trainer) => tr.trainable().filter((x) => x.name.includes('lora_')).map((x) => tr.read(x.name, 'grad'));

/** Every evaluation kind over one inference forward (logp and values) of the pairs. */
async function evaluateEverything(m: Model) {
  const b = padded(PAIRS, 'right');
  await m.forward({ inputIds: b.inputIds, values: true, download: false });
  const three = new Float32Array(P);
  await m.sftLoss({ mask: b.mask });
  await m.pairwiseLoss({ margins: Float32Array.from([0.5, 0, 1]) });
  await m.dpoLoss({ mask: b.mask, refChosen: three, refRejected: three, beta: 0.1 });
  await m.sequenceLogps({ mask: b.mask });
}

for (const device of DEVICES)
  t.test(`${device}: an evaluation leaves no gradient, and a training loss call's gradient as it was`, async (t) => {
    const b = padded(PAIRS, 'right');
    const ref = { refChosen: Float32Array.from([-20, -8, -15]), refRejected: Float32Array.from([-14, -25, -20]), beta: 0.1 };
    // A: training forward -> DPO loss -> backward.
    const a = await setup('llama', device);
    await a.tr.forward({ inputIds: b.inputIds, download: false });
    await a.tr.dpoLoss({ mask: b.mask, ...ref });
    await a.tr.backward({});
    const gA = grads(a.tr), lA = loraGrads(a.tr);
    a.m.dispose();
    // B: the same with every evaluation kind between the loss call and backward.
    const m = await setup('llama', device);
    await m.tr.forward({ inputIds: b.inputIds, download: false });
    await m.tr.dpoLoss({ mask: b.mask, ...ref });
    await evaluateEverything(m.m);
    await m.tr.backward({});
    const gB = grads(m.tr);
    t.ok(lA.length > 0 && lA.every((g) => g.some((v) => v !== 0)), `the training loss call gives each of the ${lA.length} LoRA tensors a gradient`);
    gA.forEach((g, i) => sameBits(t, gB[i], g, `gradient ${i} unchanged by the evaluations between the loss call and backward`));
    // C: a training forward, evaluations, then backward with nothing: no gradient anywhere.
    await m.tr.zeroGrad();
    await m.tr.forward({ inputIds: b.inputIds, values: true, download: false });
    await evaluateEverything(m.m);
    await m.tr.backward({});
    t.ok(grads(m.tr).every((g) => g.every((v) => v === 0)), 'backward({}) after evaluations only: every gradient stays 0');
    // D: evaluations left nothing on the device, so host gradients are not refused as given twice.
    await m.tr.forward({ inputIds: b.inputIds, values: true, download: false });
    await evaluateEverything(m.m);
    const w = b.seq - 1;
    await t.resolves(m.tr.backward({ dlogp: new Float32Array(PAIRS.length * w), dvalues: new Float32Array(PAIRS.length * b.seq) }), 'backward with host dlogp and dvalues after evaluations');
    m.m.dispose();
  });

t.test('the evaluation calls refuse what they cannot do', async (t) => {
  const { m, tr } = await setup('llama', 'cpu');
  const b = padded(PAIRS, 'right');
  const mask = b.mask, refs = { refChosen: new Float32Array(P), refRejected: new Float32Array(P), beta: 0.1 };
  const noForward = { code: 'E_ARGUMENT', message: /evaluation: call the inference forward \(model\.forward\) first/ };
  await t.rejects(m.sftLoss({ mask }), noForward, 'sft before any forward');
  // Only a training forward: its outputs are not an evaluation's.
  await tr.forward({ inputIds: b.inputIds, values: true, download: false });
  await t.rejects(m.sftLoss({ mask }), noForward, 'sft after a training forward only');
  await t.rejects(m.pairwiseLoss(), noForward, 'pairwise after a training forward only');
  await t.rejects(m.dpoLoss({ mask, ...refs }), noForward, 'dpo after a training forward only');
  await t.rejects(m.sequenceLogps({ mask }), noForward, 'sequenceLogps after a training forward only');
  await t.rejects(tr.backward({}).then(() => m.sftLoss({ mask })), noForward, 'still refused after backward');
  // A forward without the output a kind reads.
  await m.forward({ inputIds: b.inputIds, values: true, logp: false, download: false });
  await t.rejects(m.sftLoss({ mask }), { code: 'E_ARGUMENT', message: /sft evaluation: the forward computed no log-probs/ });
  await t.rejects(m.sequenceLogps({ mask }), { code: 'E_ARGUMENT', message: /computed no log-probs/ });
  await t.rejects(m.dpoLoss({ mask, ...refs }), { code: 'E_ARGUMENT', message: /computed no log-probs/ });
  await t.rejects(m.pairwiseLoss({ last: [1, 2] }), { code: 'E_ARGUMENT', message: /'last' has 2 elements, expected one per row/ });
  await t.rejects(m.pairwiseLoss({ last: b.last.map(() => b.seq) }), { code: 'E_ARGUMENT', message: /is outside the row/ });
  await m.forward({ inputIds: b.inputIds, download: false });
  await t.rejects(m.pairwiseLoss(), { code: 'E_ARGUMENT', message: /pairwise evaluation: the forward computed no values/ });
  // Shapes.
  await t.rejects(m.sftLoss({ mask: new Float32Array(3) }), { code: 'E_ARGUMENT', message: /'mask' has 3 elements, expected batch\*\(seq-1\)/ });
  await t.rejects((m as unknown as { sftLoss(x: object): Promise<unknown> }).sftLoss({}), { code: 'E_ARGUMENT', message: /give the loss mask/ }, 'sft needs the mask');
  await t.rejects(m.dpoLoss({ mask, refChosen: new Float32Array(2), refRejected: new Float32Array(3), beta: 0.1 }), { message: /one element per pair/ });
  const odd = padded(CHOSEN, 'right');
  await m.forward({ inputIds: odd.inputIds, values: true, download: false });
  await t.rejects(m.dpoLoss({ mask: odd.mask, ...refs }), { message: /even count/ });
  await t.rejects(m.pairwiseLoss(), { message: /even count/ });
  t.equal((await m.sequenceLogps({ mask: odd.mask })).length, 3, 'sequenceLogps needs no pairs');
  // The native kinds of each call.
  const handle = (m as unknown as { handle: { evalLoss(r: object): Promise<unknown>; loss(r: object): Promise<unknown> } }).handle;
  await t.rejects(async () => handle.evalLoss({ kind: 'ppo', mask }), { message: /'kind' must be 'sft', 'pairwise', 'dpo', 'kto' or 'sequenceLogps'/ }, 'no evaluation mode of PPO');
  await t.rejects(async () => handle.loss({ kind: 'sequenceLogps', mask }), { message: /'kind' must be 'sft', 'pairwise', 'dpo', 'kto' or 'ppo'/ }, 'sequenceLogps is an evaluation call');
  // The inference forward takes no gradient.
  await t.rejects(m.forward({ inputIds: b.inputIds, lmGrad: new Float32Array(PAIRS.length * (b.seq - 1)) }), { code: 'E_ARGUMENT', message: /training forward only/ });
  m.dispose();
});
