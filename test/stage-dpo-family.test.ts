/**
 * The DPO family as stages (`dpo --loss-type robust|hinge|ipo|simpo`,
 * `--length-normalize`, and `orpo`) on a tiny random-initialised Llama with
 * a learnable preference (chosen completions use pleasant adjectives,
 * rejected ones unpleasant ones):
 *   - each loss raises the held-out preference accuracy over the model
 *     before training;
 *   - the stage's final held-out loss equals a float64 recomputation from
 *     the papers' formulas, over sequence log-probs taken independently
 *     (the saved adapter reloaded, per-token log-probs downloaded and summed
 *     here; the reference from the untouched base folder);
 *   - reference log-probs computed with each micro-batch
 *     (`precomputeRefLogps: false`) train exactly as the precomputed ones:
 *     equal metrics and bit-identical adapters;
 *   - SimPO and ORPO compute no reference log-probs at all;
 *   - the `orpo` command: its log lines and summary, and what it refuses.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { loadModel, type Model } from '../lib/engine/model';
import { loadTokenizer } from '../lib/tokenizer/tokenizer';
import { loadPreferenceData, type PreferenceExample } from '../lib/data/preference-data';
import { runDpo, runOrpo, type DpoConfig, type DpoLossType } from '../lib/stages/dpo';
import { runCli, cliBuilt } from './helpers/cli';
import { sharpenFinalNorm } from './helpers/models';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-dpo-family-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'llama');
const data = path.join(tmp, 'train.jsonl');
const heldOut = path.join(tmp, 'eval.jsonl');

const GOOD = ['warm', 'bright', 'calm', 'clear', 'mild', 'sunny', 'kind', 'happy'];
const BAD = ['cold', 'dark', 'wet', 'grim', 'harsh', 'bleak', 'sad', 'cruel'];
const TOPICS = ['day', 'sky', 'town', 'sea', 'room', 'road', 'wind', 'song', 'tree', 'lake', 'hill', 'moon'];
function pairs(n: number, offset: number) {
  return Array.from({ length: n }, (_, i) => {
    const k = i + offset, topic = TOPICS[k % TOPICS.length];
    // Rejected completions are sometimes longer, so per-token and per-sequence scores differ.
    return {
      prompt: `Describe the ${topic} (${k}).`,
      chosen: ` The ${topic} is ${GOOD[k % 8]} and ${GOOD[(3 * k + 1) % 8]}.`,
      rejected: ` The ${topic} is ${BAD[(5 * k + 2) % 8]}${k % 3 ? '' : `, very ${BAD[(k + 5) % 8]}`} and ${BAD[(7 * k + 3) % 8]}.`,
    };
  });
}
const writeJsonl = (file: string, rows: unknown[]) => fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
const readMetrics = (out: string) => fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 1 });
  sharpenFinalNorm(base, 8);
  writeJsonl(data, pairs(32, 0));
  writeJsonl(heldOut, pairs(12, 100));
});

// ------------------------------------------------------------------ float64 references (docs/losses.md)

const logSigmoid = (x: number) => Math.min(x, 0) - Math.log1p(Math.exp(-Math.abs(x)));
const log1mexp = (a: number) => (a > -Math.LN2 ? Math.log(-Math.expm1(a)) : Math.log1p(-Math.exp(a)));

/** Per pair: policy and reference sums and completion lengths. */
interface PairLogps {
  pc: number;
  pr: number;
  rc: number;
  rr: number;
  lc: number;
  lr: number;
}

/** The mean loss over pairs, written from the papers (TRL's conventions where they choose). */
function familyLoss(type: DpoLossType, p: readonly PairLogps[], o: { beta: number; ls: number; gamma: number; perToken: boolean }): number {
  const { beta, ls, gamma } = o;
  let total = 0, nllNum = 0, nllDen = 0;
  for (const x of p) {
    const norm = o.perToken || type === 'ipo' || type === 'simpo' || type === 'orpo';
    const free = type === 'simpo' || type === 'orpo';
    const sc = ((free ? x.pc : x.pc - x.rc) / (norm ? x.lc : 1)), sr = ((free ? x.pr : x.pr - x.rr) / (norm ? x.lr : 1));
    const h = sc - sr, z = beta * h;
    switch (type) {
      case 'sigmoid': total += -(1 - ls) * logSigmoid(z) - ls * logSigmoid(-z); break; // Rafailov et al. eq. 7; cDPO
      case 'robust': total += (-(1 - ls) * logSigmoid(z) + ls * logSigmoid(-z)) / (1 - 2 * ls); break; // Chowdhury et al. eq. 8
      case 'hinge': total += Math.max(0, 1 - z); break; // SLiC
      case 'ipo': total += (h - 1 / (2 * beta)) ** 2; break; // Azar et al. eq. 17
      case 'simpo': total += -(1 - ls) * logSigmoid(z - gamma) - ls * logSigmoid(-(z - gamma)); break; // Meng et al. eq. 6
      case 'orpo': {
        // Hong et al. eq. 6-7: L_SFT + lambda L_OR, odds(y|x) = P / (1 - P) with P the per-token mean probability.
        const logOdds = sc - sr - (log1mexp(sc) - log1mexp(sr));
        total += -beta * logSigmoid(logOdds);
        nllNum -= x.pc;
        nllDen += x.lc;
        break;
      }
    }
  }
  return total / p.length + (type === 'orpo' ? nllNum / nllDen : 0);
}

/** Sequence log-prob sums of each pair's completions under `model`, from per-token log-probs downloaded and summed here in float64. */
async function sums(model: Model, examples: readonly PreferenceExample[]): Promise<{ c: number; r: number; lc: number; lr: number }[]> {
  const out: { c: number; r: number; lc: number; lr: number }[] = [];
  for (const e of examples) {
    const row = async (ids: number[], from: number) => {
      const f = await model.forward({ inputIds: [ids], logp: true });
      const lp = f.logp![0];
      let s = 0;
      for (let t = from - 1; t < ids.length - 1; t++) s += lp[t];
      return { s, n: ids.length - from };
    };
    const c = await row(e.chosen, e.chosenFrom), r = await row(e.rejected, e.rejectedFrom);
    out.push({ c: c.s, r: r.s, lc: c.n, lr: r.n });
  }
  return out;
}

const CASES: { name: string; cfg: Partial<DpoConfig>; type: DpoLossType; orpo?: boolean }[] = [
  { name: 'robust DPO, label smoothing 0.1', type: 'robust', cfg: { lossType: 'robust', labelSmoothing: 0.1, beta: 0.1 } },
  { name: 'hinge', type: 'hinge', cfg: { lossType: 'hinge', beta: 0.1 } },
  { name: 'IPO', type: 'ipo', cfg: { lossType: 'ipo', beta: 0.5 } },
  { name: 'SimPO (beta 2, gamma 0.5, label smoothing 0.1)', type: 'simpo', cfg: { lossType: 'simpo', labelSmoothing: 0.1 } },
  { name: 'ORPO (the orpo command)', type: 'orpo', cfg: {}, orpo: true },
  { name: 'conservative DPO with per-token scores', type: 'sigmoid', cfg: { lossType: 'sigmoid', labelSmoothing: 0.2, lengthNormalize: true, beta: 0.5 } },
];

const evalExamples = () => loadPreferenceData(heldOut, { tokenizer: loadTokenizer(base), maxLen: 256, vocabSize: 512 }).examples;

for (const c of CASES) {
  t.test(`${c.name}: raises held-out accuracy; the final eval loss equals the float64 formula on independent log-probs`, async (t) => {
    const out = path.join(tmp, c.type + (c.cfg.lengthNormalize ? '-pt' : ''));
    const logs: string[] = [];
    const cfg: DpoConfig = { model: base, data, out, evalData: heldOut, steps: 12, batchSize: 8, lr: 5e-3, lrSchedule: 'constant', loraR: 8, loraAlpha: 16, seed: 3, device: 'cpu', ...c.cfg };
    const r = await (c.orpo ? runOrpo : runDpo)(cfg, { handleSigint: false, log: (l) => logs.push(l) });
    const before = r.initialEval!, after = r.finalEval!;
    const refFree = c.type === 'simpo' || c.type === 'orpo';
    // Reference-free losses score the model as it is: pairs are already told apart (or not) before training.
    t.ok(after.accuracy >= 0.9 && after.accuracy >= before.accuracy, `held-out accuracy ${before.accuracy.toFixed(3)} -> ${after.accuracy.toFixed(3)}`);
    t.ok(after.loss < before.loss, `held-out loss ${before.loss.toFixed(4)} -> ${after.loss.toFixed(4)}`);
    t.equal(logs.some((l) => /reference log-probs/.test(l)), !refFree, refFree ? 'no reference forward' : 'reference log-probs computed');
    const prefix = c.orpo ? 'orpo' : 'dpo';
    t.ok(logs.every((l) => l.startsWith(`${prefix}:`)), `log lines start with ${prefix}:`);
    const conf = JSON.parse(fs.readFileSync(path.join(out, `${prefix}_config.json`), 'utf8'));
    t.equal(conf.lossType, c.type);
    t.equal(conf.reference, refFree ? 'none' : 'base');
    const m = readMetrics(out);
    if (c.type === 'orpo') t.ok(m.slice(1).every((x) => x.nll_loss > 0 && Number.isFinite(x.log_odds_ratio)), 'ORPO logs nll_loss and log_odds_ratio');

    // Independent log-probs: the saved adapter reloaded; the reference from the base folder.
    const ev = evalExamples();
    const policy = await loadModel(base, { adapter: out, device: 'cpu' });
    const pol = await sums(policy, ev);
    policy.dispose();
    const ref0 = await loadModel(base, { device: 'cpu' });
    const ref = await sums(ref0, ev);
    ref0.dispose();
    const p = ev.map((_, i) => ({ pc: pol[i].c, pr: pol[i].r, rc: ref[i].c, rr: ref[i].r, lc: pol[i].lc, lr: pol[i].lr }));
    const beta = conf.beta as number;
    t.equal(beta, c.type === 'simpo' ? 2 : (c.cfg.beta ?? 0.1), 'beta as resolved');
    const want = familyLoss(c.type, p, { beta, ls: conf.labelSmoothing, gamma: conf.gamma, perToken: conf.lengthNormalize });
    t.ok(Math.abs(after.loss - want) <= 2e-5 * Math.max(1, Math.abs(want)), `final eval loss ${after.loss} vs float64 ${want}`);
  });
}

t.test('reference log-probs with each micro-batch train exactly as precomputed ones', async (t) => {
  const run = async (precomputeRefLogps: boolean) => {
    const out = path.join(tmp, `live-${precomputeRefLogps}`);
    const logs: string[] = [];
    await runDpo(
      { model: base, data, out, evalData: heldOut, steps: 6, batchSize: 4, gradAccum: 2, lr: 5e-3, loraR: 4, loraAlpha: 8, shuffle: true, seed: 5, device: 'cpu', lossType: 'ipo', beta: 0.5, precomputeRefLogps },
      { handleSigint: false, log: (l) => logs.push(l) },
    );
    const strip = (x: Record<string, unknown>) => Object.fromEntries(Object.entries(x).filter(([k]) => !['elapsed_s', 'tokens_per_sec'].includes(k)));
    return { metrics: readMetrics(out).map(strip), adapter: fs.readFileSync(path.join(out, 'adapter_model.safetensors')), logs };
  };
  const pre = await run(true), live = await run(false);
  t.same(live.metrics, pre.metrics, 'metrics equal line for line');
  t.ok(live.adapter.equals(pre.adapter), 'adapters bit-identical');
  t.ok(live.logs.some((l) => /reference log-probs of 12 pairs .*training pairs: with each micro-batch/.test(l)), live.logs.join('\n'));
});

const skip = !cliBuilt() && 'CLI not compiled';

t.test('CLI: orpo trains, logs nll and log odds, and refuses what it cannot do', { skip }, async (t) => {
  const out = path.join(tmp, 'cli-orpo');
  const r = runCli(['orpo', '--model', base, '--data', data, '--out', out, '--steps', '2', '--batch-size', '4', '--lora-r', '4', '--device', 'cpu']);
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout.trim(), /^orpo: 2 steps \(.* epochs, 32 pairs\) .* loss \S+ -> \S+; LoRA adapter \(\d+ trainable parameters\) saved to /);
  const progress = r.stderr.split('\n').filter((l) => l.startsWith('orpo step'));
  t.equal(progress.length, 2, r.stderr);
  t.match(progress[1], /^orpo step 2\/2 {2}loss \S+ {2}margin \S+ {2}acc \S+ {2}nll \S+ {2}log_odds \S+ {2}lr /);
  const bad: [string[], string][] = [
    [['--loss-type', 'sigmoid'], 'rlhf-native: error E_ARGUMENT: orpo trains the ORPO loss only; for --loss-type sigmoid use rlhf-native dpo'],
    [['--no-precompute-ref-logps'], 'rlhf-native: error E_ARGUMENT: --loss-type orpo has no reference model: --no-precompute-ref-logps does not apply'],
    [['--gamma', '1'], "rlhf-native: error E_ARGUMENT: --gamma is SimPO's target margin; it does nothing with --loss-type orpo"],
  ];
  for (const [args, want] of bad) {
    const b = runCli(['orpo', '--model', base, '--data', data, '--out', path.join(tmp, 'cli-orpo-bad'), '--device', 'cpu', ...args]);
    t.equal(b.status, 1, args.join(' '));
    t.equal(b.stderr.trim(), want);
  }
});
