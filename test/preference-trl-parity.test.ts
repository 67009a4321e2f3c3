// The preference losses of the dpo_loss and kto_loss ops against TRL 1.13's
// own loss code (test/peers/trl_preference_losses.py) on the same batches of
// per-token log-probs:
//
//   ours                                   TRL 1.13
//   sigmoid (ls 0), robust, hinge, ipo     DPOTrainer._compute_loss, loss_type of the same name
//   sigmoid on per-token scores            DPOTrainer._compute_loss, loss_type 'sigmoid_norm'
//   simpo                                  CPOTrainer.get_batch_loss_metrics -> cpo_loss ('simpo', cpo_alpha 0)
//   orpo                                   ORPOTrainer.get_batch_loss_metrics -> odds_ratio_loss
//   kto                                    KTOTrainer._compute_loss ('kto', its KL estimate)
//
// TRL 1.13's 'sigmoid' has no label smoothing (conservative DPO is its own
// loss there), so our sigmoid with labelSmoothing > 0 is checked against the
// float64 formula only (test/ops-preference-losses.test.ts), and against TRL
// with ls 0.
//
// Our side is what the engine does with a forward's log-probs: per-row sums
// (row_dot with the completion mask), the loss op on the sums (with the
// mask's row counts as lengths for the per-token losses), and the per-row
// gradients spread back over each row's tokens (row_dot_backward). TRL's side
// is autograd through its trainer code from the per-token log-probs, in
// float64 (ORPO casts to float32 inside odds_ratio_loss, as TRL does).
// Compared: the loss, the gradient w.r.t. every completion token's log-prob,
// and the logged metrics wherever the two define them alike.
//
// The per-token log-probs are multiples of 2^-12 in (-8, 0): a completion of
// up to 60 such tokens then sums to a multiple of 2^-12 below 2^9 in
// magnitude, which fp32 holds exactly. So both sides see the very same
// sequence sums, and the differences measured are those of the loss kernels
// alone (row_dot's rounding of general sums is tested in ops-loss.test.ts).
//
// Bounds: the loss to 1e-6 of its value (plus 1e-7 absolute, for losses near
// 0); each token's gradient to 1e-6 of its value plus 1e-7 of the largest in
// its case; metrics to 1e-6 of max(1, |value|), accuracies exactly.
import t from 'tap';
import type { Test } from 'tap';
import { KERNELS, op, Rng } from './helpers/ref';
import { runPeer } from './helpers/peers';
import type { PrefLossType } from '../lib/native';

const ISA = KERNELS[KERNELS.length - 1];
const Q = 4096; // log-probs are multiples of 1/Q

interface Row {
  tokens: number[];
  prompt: number;
}

/** A completion of 1..60 tokens whose log-probs average about -mean, quantised to 1/Q in (-8, 0). */
function row(rng: Rng, mean: number): Row {
  const n = rng.int(1, 61);
  const tokens = Array.from({ length: n }, () => {
    const v = Math.max(-8 + 1 / Q, Math.log(1 - rng.uniform()) * mean); // exponential, mean -mean
    return Math.min(-1 / Q, Math.round(v * Q) / Q);
  });
  return { tokens, prompt: rng.int(1, 5) };
}

/** Exact sums (every partial sum is a multiple of 1/Q below 2^9). */
const exactSum = (tokens: number[]) => tokens.reduce((a, b) => a + b, 0);

/** Reference sums: the policy's tokens each moved by a quantised N(drift, 0.3^2). */
function refSum(rng: Rng, r: Row, drift: number): number {
  return exactSum(r.tokens.map((v) => Math.round((v - drift + 0.3 * rng.normal()) * Q) / Q));
}

interface PairBatch {
  chosen: Row[];
  rejected: Row[];
  refChosen: number[];
  refRejected: number[];
}

function pairBatch(seed: number, P: number): PairBatch {
  const rng = new Rng(seed);
  const chosen = Array.from({ length: P }, () => row(rng, rng.uniform(0.1, 1.5)));
  const rejected = Array.from({ length: P }, () => row(rng, rng.uniform(0.1, 1.5)));
  return { chosen, rejected, refChosen: chosen.map((r) => refSum(rng, r, 0.02)), refRejected: rejected.map((r) => refSum(rng, r, -0.02)) };
}

interface KtoBatch {
  rows: Row[];
  labels: number[];
  ref: number[];
  klRows: Row[];
  refKl: number[];
}

function ktoBatch(seed: number, n: number, frac: number, klDrift: number): KtoBatch {
  const rng = new Rng(seed);
  const rows = Array.from({ length: n }, () => row(rng, rng.uniform(0.1, 1.5)));
  const labels = rows.map(() => (rng.uniform() < frac ? 1 : 0));
  const klRows = Array.from({ length: n }, () => row(rng, rng.uniform(0.1, 1.5)));
  return {
    rows,
    labels,
    ref: rows.map((r, i) => refSum(rng, r, labels[i] ? 0.02 : -0.02)),
    klRows,
    // klDrift > 0: the policy above the reference on the mismatched rows (a positive KL estimate); < 0: clamped to 0
    refKl: klRows.map((r) => refSum(rng, r, klDrift)),
  };
}

/** Rows as the op's [rows, cols] layout: log-probs (NaN off the completion) and the 0/1 mask. */
function layout(rows: Row[]) {
  const cols = Math.max(...rows.map((r) => r.tokens.length));
  const x = new Float32Array(rows.length * cols).fill(NaN), w = new Float32Array(rows.length * cols);
  rows.forEach((r, i) => {
    x.set(r.tokens, i * cols);
    w.fill(1, i * cols, i * cols + r.tokens.length);
  });
  return { cols, x, w };
}

/** The engine's way: row sums, the loss, the per-row gradient spread over each row's tokens. */
function ours(rows: Row[], loss: (sums: Float32Array, lens: Float32Array, dsums: Float32Array) => void) {
  const { cols, x, w } = layout(rows);
  const R = rows.length;
  const sums = new Float32Array(R), dsums = new Float32Array(R), dx = new Float32Array(R * cols);
  op('row_dot', { rows: R, cols, x, w, out: sums }, ISA);
  const lens = Float32Array.from(rows, (r) => r.tokens.length);
  loss(sums, lens, dsums);
  op('row_dot_backward', { rows: R, cols, w, dout: dsums, dx }, ISA);
  return { sums, grads: rows.map((r, i) => Array.from(dx.subarray(i * cols, i * cols + r.tokens.length))) };
}

const TYPE_ID: Record<PrefLossType, number> = { sigmoid: 0, robust: 1, hinge: 2, ipo: 3, simpo: 4, orpo: 5 };

interface Case {
  name: string;
  peer: Record<string, unknown>;
  /** loss, per-token gradients, and metrics keyed by TRL's names */
  run(): { loss: number; grads: number[][]; metrics: Record<string, number> };
}

function prefCase(type: PrefLossType, trlType: string, batch: PairBatch, beta: number, opts: { ls?: number; gamma?: number } = {}): Case {
  const P = batch.chosen.length;
  const rows = [...batch.chosen, ...batch.rejected];
  const refFree = type === 'simpo' || type === 'orpo';
  const perToken = refFree || type === 'ipo' || trlType === 'sigmoid_norm';
  const ls = opts.ls ?? 0, gamma = opts.gamma ?? 0;
  const name = `${type}${trlType === 'sigmoid_norm' ? ' (per-token scores) vs TRL sigmoid_norm' : ''}, beta ${beta}${opts.ls !== undefined ? `, ls ${ls}` : ''}${opts.gamma !== undefined ? `, gamma ${gamma}` : ''}`;
  const kind = type === 'simpo' ? 'simpo' : type === 'orpo' ? 'orpo' : 'dpo';
  return {
    name,
    peer: {
      kind,
      loss_type: trlType,
      beta,
      label_smoothing: ls,
      gamma,
      rows: rows.map((r) => r.tokens),
      prompts: rows.map((r) => r.prompt),
      ref_chosen: batch.refChosen,
      ref_rejected: batch.refRejected,
    },
    run() {
      const loss = new Float32Array(1), stats = new Float32Array(6);
      const o = ours(rows, (sums, lens, dsums) =>
        op(
          'dpo_loss',
          {
            b: P,
            lossType: TYPE_ID[type],
            policyChosen: sums.subarray(0, P),
            policyRejected: sums.subarray(P),
            ...(refFree ? {} : { refChosen: Float32Array.from(batch.refChosen), refRejected: Float32Array.from(batch.refRejected) }),
            ...(perToken ? { lenChosen: lens.subarray(0, P), lenRejected: lens.subarray(P) } : {}),
            beta,
            labelSmoothing: ls,
            gamma,
            loss,
            dpolicyChosen: dsums.subarray(0, P),
            dpolicyRejected: dsums.subarray(P),
            stats,
          },
          ISA,
        ),
      );
      const metrics: Record<string, number> = {};
      // TRL's DPO rewards are beta times the sequence log-ratios whatever the
      // loss; ours are beta times the scores the loss uses (per token for ipo
      // and sigmoid_norm), so they are compared where the two agree.
      if (!perToken || refFree) {
        metrics['rewards/accuracies'] = stats[0];
        metrics['rewards/chosen'] = stats[1];
        metrics['rewards/rejected'] = stats[2];
        metrics['rewards/margins'] = stats[3];
      }
      if (kind === 'dpo') {
        // logged by the engine's dpoLoss as logpsChosen / logpsRejected: the mean sequence sums
        metrics['logps/chosen'] = o.sums.subarray(0, P).reduce((a, b) => a + b, 0) / P;
        metrics['logps/rejected'] = o.sums.subarray(P).reduce((a, b) => a + b, 0) / P;
      }
      if (type === 'orpo') {
        metrics['nll_loss'] = stats[4];
        metrics['log_odds_chosen'] = stats[5]; // TRL's name for the mean log odds ratio
      }
      return { loss: loss[0], grads: o.grads, metrics };
    },
  };
}

function ktoCase(batch: KtoBatch, beta: number, wd: number, wu: number, label: string): Case {
  const n = batch.rows.length;
  return {
    name: `kto, beta ${beta}, weights ${wd} / ${wu}, ${label}`,
    peer: {
      kind: 'kto',
      beta,
      desirable_weight: wd,
      undesirable_weight: wu,
      rows: batch.rows.map((r) => r.tokens),
      prompts: batch.rows.map((r) => r.prompt),
      labels: batch.labels,
      ref_logps: batch.ref,
      kl_rows: batch.klRows.map((r) => r.tokens),
      kl_prompts: batch.klRows.map((r) => r.prompt),
      ref_kl_logps: batch.refKl,
    },
    run() {
      // The KL reference point as TRL estimates it: the mean log-ratio of the mismatched rows, clamped at 0.
      const kls = ours(batch.klRows, () => {}).sums;
      let mean = 0;
      kls.forEach((s, i) => (mean += s - batch.refKl[i]));
      const kl = Math.max(0, mean / n);
      const loss = new Float32Array(1), stats = new Float32Array(6);
      const o = ours(batch.rows, (sums, _lens, dsums) =>
        op('kto_loss', { b: n, policy: sums, ref: Float32Array.from(batch.ref), desirable: Float32Array.from(batch.labels), kl, beta, desirableWeight: wd, undesirableWeight: wu, loss, dpolicy: dsums, stats }, ISA),
      );
      const metrics: Record<string, number> = { kl };
      if (stats[4] > 0) (metrics['rewards/chosen'] = stats[0]), (metrics['logps/chosen'] = stats[2]);
      if (stats[5] > 0) (metrics['rewards/rejected'] = stats[1]), (metrics['logps/rejected'] = stats[3]);
      return { loss: loss[0], grads: o.grads, metrics };
    },
  };
}

const B = [pairBatch(1, 8), pairBatch(2, 8), pairBatch(3, 12)];
const CASES: Case[] = [
  prefCase('sigmoid', 'sigmoid', B[0], 0.1),
  prefCase('sigmoid', 'sigmoid', B[1], 0.5),
  prefCase('sigmoid', 'sigmoid', B[2], 2),
  prefCase('robust', 'robust', B[0], 0.1, { ls: 0 }),
  prefCase('robust', 'robust', B[1], 0.5, { ls: 0.1 }),
  prefCase('robust', 'robust', B[2], 2, { ls: 0.3 }),
  prefCase('robust', 'robust', B[0], 0.1, { ls: 0.3 }),
  prefCase('hinge', 'hinge', B[1], 0.1),
  prefCase('hinge', 'hinge', B[2], 0.5),
  prefCase('hinge', 'hinge', B[0], 2),
  prefCase('ipo', 'ipo', B[2], 0.1),
  prefCase('ipo', 'ipo', B[0], 0.5),
  prefCase('ipo', 'ipo', B[1], 2),
  prefCase('sigmoid', 'sigmoid_norm', B[0], 0.5),
  prefCase('sigmoid', 'sigmoid_norm', B[1], 2),
  prefCase('simpo', 'simpo', B[0], 2, { gamma: 0.5, ls: 0 }),
  prefCase('simpo', 'simpo', B[1], 2, { gamma: 1, ls: 0.1 }),
  prefCase('simpo', 'simpo', B[2], 0.5, { gamma: 1, ls: 0.3 }),
  prefCase('simpo', 'simpo', B[0], 0.1, { gamma: 0.5, ls: 0 }),
  prefCase('orpo', 'orpo', B[0], 0.1),
  prefCase('orpo', 'orpo', B[1], 0.5),
  prefCase('orpo', 'orpo', B[2], 2),
  ktoCase(ktoBatch(11, 12, 0.5, 0.05), 0.1, 1, 1, 'mixed labels, KL estimate > 0'),
  ktoCase(ktoBatch(12, 12, 0.4, 0.05), 0.5, 1, 1.33, 'mixed labels, KL estimate > 0'),
  ktoCase(ktoBatch(13, 16, 0.6, -0.05), 2, 1.33, 1, 'mixed labels, KL estimate < 0 (clamped to 0)'),
  ktoCase(ktoBatch(14, 10, 1, 0.05), 0.5, 1, 1.33, 'only desirable rows'),
];

interface PeerResult {
  loss: number;
  grads: number[][];
  metrics: Record<string, number>;
}

/** Worst errors over all cases, for the summary line. */
const worst = { loss: 0, grad: 0, metric: 0 };

function compare(t: Test, c: Case, py: PeerResult) {
  const o = c.run();
  const lossErr = Math.abs(o.loss - py.loss);
  worst.loss = Math.max(worst.loss, lossErr / Math.max(Math.abs(py.loss), 1e-30));
  t.ok(lossErr <= 1e-6 * Math.abs(py.loss) + 1e-7, `loss ${o.loss} vs TRL ${py.loss} (rel. diff ${(lossErr / Math.abs(py.loss)).toExponential(2)})`);

  t.same(o.grads.map((g) => g.length), py.grads.map((g) => g.length), 'a gradient for every completion token');
  let gmax = 0;
  for (const g of py.grads) for (const v of g) gmax = Math.max(gmax, Math.abs(v));
  let bad = 0, count = 0, rel = 0, where = '';
  o.grads.forEach((g, i) =>
    g.forEach((v, j) => {
      const e = py.grads[i][j], d = Math.abs(v - e);
      count++;
      if (!(d <= 1e-6 * Math.abs(e) + 1e-7 * gmax)) (bad++, where ||= ` (first: row ${i} token ${j}: ${v} vs ${e})`);
      rel = Math.max(rel, d / gmax);
    }),
  );
  worst.grad = Math.max(worst.grad, rel);
  t.ok(gmax > 0 && bad === 0, `d loss / d logp of ${count} tokens equals TRL's autograd gradient: worst |diff| / max|g| ${rel.toExponential(2)}${where}`);

  for (const [k, v] of Object.entries(o.metrics)) {
    const e = py.metrics[k];
    if (e === undefined) {
      t.fail(`TRL logged no '${k}'`);
      continue;
    }
    const d = Math.abs(v - e);
    if (k === 'rewards/accuracies') t.equal(v, e, `${k} ${v} = TRL's`);
    else {
      worst.metric = Math.max(worst.metric, d / Math.max(1, Math.abs(e)));
      t.ok(d <= 1e-6 * Math.max(1, Math.abs(e)), `${k} ${v} vs TRL ${e} (|diff| ${d.toExponential(2)})`);
    }
  }
}

t.test('preference losses equal TRL 1.13\'s on the same log-probs', async (t) => {
  const peer = runPeer<PeerResult[]>('trl_preference_losses.py', { cases: CASES.map((c) => c.peer) });
  t.equal(peer.length, CASES.length, 'TRL answered every case');
  for (const [i, c] of CASES.entries()) await t.test(c.name, async (t) => compare(t, c, peer[i]));
  // The hinge's kink (z = 1) is where the two sides' subgradients may differ: none of the pairs is near it.
  for (const c of CASES.filter((c) => c.peer.loss_type === 'hinge')) {
    const p = c.peer as { beta: number; rows: number[][]; ref_chosen: number[]; ref_rejected: number[] };
    const P = p.ref_chosen.length;
    const z = p.ref_chosen.map((rc, i) => p.beta * (exactSum(p.rows[i]) - rc - (exactSum(p.rows[P + i]) - p.ref_rejected[i])));
    t.ok(z.every((v) => Math.abs(v - 1) > 1e-3), `${c.name}: no pair within 1e-3 of the kink (${z.filter((v) => v < 1).length} inside the margin, ${z.filter((v) => v > 1).length} beyond)`);
  }
  t.comment(`largest relative differences from TRL: loss ${worst.loss.toExponential(2)}, gradient (over the case's largest) ${worst.grad.toExponential(2)}, metrics ${worst.metric.toExponential(2)}`);
});
