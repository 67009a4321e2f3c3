/**
 * The DPO stage on tiny random-initialised models, with a preference that
 * can be learnt (chosen completions use one set of adjectives, rejected
 * ones another): DPO raises the held-out implicit reward margin and
 * accuracy over the model before training (LoRA and full training); the
 * saved adapter / model reproduces the final eval; one batch's loss, the
 * dlogp it broadcasts and the resulting parameter gradients against an
 * independent float64 computation (and finite differences); gradient
 * accumulation; a continued adapter is its own reference; config checks;
 * the CLI (a run, bad input as one stderr line naming file:line, SIGINT).
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { loadModel, type Model } from '../lib/engine/model';
import { loadTokenizer } from '../lib/tokenizer/tokenizer';
import { loadPreferenceData, type PreferenceExample } from '../lib/data/preference-data';
import { splitEval } from '../lib/data/sft-data';
import { evaluateDpo, pairLogps, resolveDpoConfig, runDpo, type DpoConfig } from '../lib/stages/dpo';
import { dpoMicroBatch } from './helpers/host-losses';
import type { Trainer } from '../lib/engine/train';
import type { RlhfError } from '../lib/errors';
import { runCli, cliBuilt, CLI, ROOT } from './helpers/cli';
import { sharpenFinalNorm } from './helpers/models';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-dpo-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'llama');
const gpt2 = path.join(tmp, 'gpt2');
const data = path.join(tmp, 'train.jsonl');
const heldOut = path.join(tmp, 'eval.jsonl');

// The rule: a chosen description uses two "pleasant" adjectives, the rejected
// one two "unpleasant" ones; topics, prompts and adjective pairings of the
// held-out pairs differ from the training pairs'.
const GOOD = ['warm', 'bright', 'calm', 'clear', 'mild', 'sunny', 'kind', 'happy'];
const BAD = ['cold', 'dark', 'wet', 'grim', 'harsh', 'bleak', 'sad', 'cruel'];
const TOPICS = ['day', 'sky', 'town', 'sea', 'room', 'road', 'wind', 'song', 'tree', 'lake', 'hill', 'moon'];
function pairs(n: number, offset: number) {
  return Array.from({ length: n }, (_, i) => {
    const k = i + offset, topic = TOPICS[k % TOPICS.length];
    return {
      prompt: `Describe the ${topic} (${k}).`,
      chosen: ` The ${topic} is ${GOOD[k % 8]} and ${GOOD[(3 * k + 1) % 8]}.`,
      rejected: ` The ${topic} is ${BAD[(5 * k + 2) % 8]} and ${BAD[(7 * k + 3) % 8]}.`,
    };
  });
}
const writeJsonl = (file: string, rows: unknown[]) => fs.writeFileSync(file, rows.map((r) => (typeof r === 'string' ? r : JSON.stringify(r))).join('\n') + '\n');
const readMetrics = (out: string) => fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
const dataOpts = (dir: string) => ({ tokenizer: loadTokenizer(dir), maxLen: 256, vocabSize: 512 });

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 1 });
  sharpenFinalNorm(base, 8);
  await initModel({ arch: 'gpt2', preset: 'tiny', outDir: gpt2, seed: 2 });
  writeJsonl(data, pairs(32, 0));
  writeJsonl(heldOut, pairs(12, 100));
});

/** Eval of `examples` under `model` against reference log-probs from the untouched base folder. */
async function evalAgainstBase(model: Model, baseDir: string, examples: PreferenceExample[], beta: number) {
  const ref0 = await loadModel(baseDir, { device: 'cpu' });
  const ref = await pairLogps(ref0, examples, 8);
  ref0.dispose();
  return evaluateDpo(model, examples, ref, { beta, labelSmoothing: 0, batchSize: 8 });
}

t.test('LoRA: DPO raises the held-out reward margin and accuracy; the saved adapter reproduces the final eval', async (t) => {
  const out = path.join(tmp, 'lora');
  const logs: string[] = [];
  const r = await runDpo(
    { model: base, data, out, evalData: heldOut, steps: 12, batchSize: 8, lr: 5e-3, lrSchedule: 'constant', loraR: 8, loraAlpha: 16, evalSteps: 4, seed: 3, device: 'cpu' },
    { keepModel: true, handleSigint: false, log: (l) => logs.push(l) },
  );
  t.teardown(() => r.model!.dispose());
  const before = r.initialEval!, after = r.finalEval!;
  t.ok(before && after, 'initial and final eval');
  // Before training the policy is the reference: every implicit reward is 0.
  t.equal(before.margin, 0);
  t.equal(before.accuracy, 0, 'no pair has chosen reward > rejected reward (they are equal)');
  t.ok(Math.abs(before.loss - Math.log(2)) < 1e-6, `initial eval loss ln 2 (${before.loss})`);
  t.ok(after.margin > 3, `held-out reward margin ${before.margin} -> ${after.margin.toFixed(3)}`);
  t.ok(after.accuracy >= 0.9, `held-out accuracy ${before.accuracy} -> ${after.accuracy}`);
  t.ok(after.loss < 0.25 * before.loss, `held-out loss ${before.loss.toFixed(4)} -> ${after.loss.toFixed(4)}`);
  const gap0 = before.logpsChosen - before.logpsRejected, gap1 = after.logpsChosen - after.logpsRejected;
  t.ok(gap1 > gap0 + 20, `the policy's log-prob gap chosen - rejected grows: ${gap0.toFixed(2)} -> ${gap1.toFixed(2)}`);
  t.ok(after.rewardsChosen > 0 && after.rewardsRejected < 0, 'chosen up, rejected down relative to the reference');
  t.ok(r.finalLoss! < 0.25 * r.initialLoss!, `train loss ${r.initialLoss} -> ${r.finalLoss}`);
  t.ok(Math.abs(r.initialLoss! - Math.log(2)) < 1e-6, 'the first step starts at ln 2');
  t.match(r, { saved: 'adapter', steps: 12, totalSteps: 12, trainPairs: 32, evalPairs: 12, interrupted: false });
  t.ok(logs.some((l) => /^dpo: reference log-probs of 44 pairs \(base model\)/.test(l)), logs.join('\n'));

  const m = readMetrics(out);
  t.equal(m.length, 13, 'the eval before training (step 0) and one line per step');
  t.same(Object.keys(m[0]).sort(), ['elapsed_s', 'epoch', 'eval_logps/chosen', 'eval_logps/rejected', 'eval_loss', 'eval_rewards/accuracies', 'eval_rewards/chosen', 'eval_rewards/margins', 'eval_rewards/rejected', 'step'].sort());
  t.same(
    Object.keys(m[1]).sort(),
    ['elapsed_s', 'epoch', 'grad_norm', 'input_tokens', 'logps/chosen', 'logps/rejected', 'loss', 'lr', 'pairs', 'rewards/accuracies', 'rewards/chosen', 'rewards/margins', 'rewards/rejected', 'step', 'tokens_per_sec'].sort(),
  );
  t.same(m.map((x) => x.eval_loss !== undefined), [true, false, false, false, true, false, false, false, true, false, false, false, true], 'eval at 0, every 4 steps and at the end');
  t.ok(m.slice(1).every((x, i) => x.step === i + 1 && x.pairs === 8 && x.tokens_per_sec > 0 && x.grad_norm > 0 && x.lr === 5e-3));
  t.ok(m.slice(1).every((x) => Math.abs(x['rewards/margins'] - (x['rewards/chosen'] - x['rewards/rejected'])) < 1e-5));
  t.equal(m[12].eval_loss, after.loss);
  t.equal(m[4].epoch, 1, '4 steps of 8 pairs per epoch');
  for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'metrics.jsonl', 'dpo_config.json']) t.ok(fs.existsSync(path.join(out, f)), f);
  const dc = JSON.parse(fs.readFileSync(path.join(out, 'dpo_config.json'), 'utf8'));
  t.match(dc, { beta: 0.1, labelSmoothing: 0, lossType: 'sigmoid', reference: 'base', total_steps: 12, steps_done: 12, interrupted: false });
  t.equal(dc.final_eval.margin, after.margin);

  // base + saved adapter, scored against the untouched base, gives the same eval.
  const ev = loadPreferenceData(heldOut, dataOpts(base)).examples;
  const reloaded = await loadModel(base, { adapter: out, device: 'cpu' });
  const again = await evalAgainstBase(reloaded, base, ev, 0.1);
  reloaded.dispose();
  t.ok(Math.abs(again.margin - after.margin) < 1e-3 && again.accuracy === after.accuracy, `reloaded adapter: margin ${again.margin} vs ${after.margin}`);

  // A continued adapter is its own reference: the first step starts from zero rewards.
  const cont = await runDpo({ model: base, data, out: path.join(tmp, 'lora-cont'), adapter: out, evalData: heldOut, steps: 1, batchSize: 32, lr: 0, device: 'cpu' }, { handleSigint: false });
  t.ok(Math.abs(cont.initialLoss! - Math.log(2)) < 1e-6, `continued adapter: first loss ${cont.initialLoss} = ln 2`);
  t.equal(cont.initialEval!.margin, 0);
  t.ok(Math.abs(cont.initialEval!.logpsChosen - after.logpsChosen) < 1e-3, 'its policy is the trained adapter');
  t.equal(JSON.parse(fs.readFileSync(path.join(tmp, 'lora-cont', 'dpo_config.json'), 'utf8')).reference, `base + ${out}`);
});

t.test('--full on GPT-2: the reference is the base before training; the saved model reproduces the final eval', async (t) => {
  const out = path.join(tmp, 'full');
  const r = await runDpo(
    { model: gpt2, data, out, full: true, evalFraction: 0.25, steps: 8, batchSize: 8, lr: 1e-3, lrSchedule: 'constant', beta: 0.2, device: 'cpu' },
    { keepModel: true, handleSigint: false },
  );
  t.teardown(() => r.model!.dispose());
  t.equal(r.saved, 'model');
  t.match(r, { trainPairs: 24, evalPairs: 8 });
  const before = r.initialEval!, after = r.finalEval!;
  t.equal(before.margin, 0);
  t.ok(after.margin > before.margin + 1, `held-out reward margin ${before.margin} -> ${after.margin.toFixed(3)}`);
  t.ok(after.accuracy >= 0.75, `held-out accuracy ${before.accuracy} -> ${after.accuracy}`);
  for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'dpo_config.json']) t.ok(fs.existsSync(path.join(out, f)), f);
  // The eval pairs are the held-out quarter of the data (same seed, same split).
  const all = loadPreferenceData(data, dataOpts(gpt2)).examples;
  const saved = await loadModel(out, { device: 'cpu' });
  const evalRows = splitEval(all.length, 0.25, 42).eval.map((i) => all[i]);
  const again = await evalAgainstBase(saved, gpt2, evalRows, 0.2);
  saved.dispose();
  t.ok(Math.abs(again.margin - after.margin) < 1e-3 && again.accuracy === after.accuracy, `saved model: margin ${again.margin} vs ${after.margin}`);
});

// ------------------------------------------------------------------ float64 check of one batch

const sigmoid = (z: number) => (z >= 0 ? 1 / (1 + Math.exp(-z)) : Math.exp(z) / (1 + Math.exp(z)));
const logSigmoid = (z: number) => (z >= 0 ? -Math.log1p(Math.exp(-z)) : z - Math.log1p(Math.exp(z)));

/** float64 sums of logp over each row's completion: logp[t] predicts ids[t+1]. */
async function seqLogps64(model: Model, rows: PreferenceExample[]): Promise<{ c: number[]; r: number[] }> {
  const ids = [...rows.map((e) => e.chosen), ...rows.map((e) => e.rejected)];
  const from = [...rows.map((e) => e.chosenFrom), ...rows.map((e) => e.rejectedFrom)];
  const lp = (await model.forward({ inputIds: ids })).logp!;
  const sums = ids.map((row, b) => {
    let s = 0;
    for (let t = from[b] - 1; t < row.length - 1; t++) s += lp[b][t];
    return s;
  });
  return { c: sums.slice(0, rows.length), r: sums.slice(rows.length) };
}

function dpoLoss64(pc: number[], pr: number[], rc: number[], rr: number[], beta: number, ls: number): number {
  let loss = 0;
  for (let i = 0; i < pc.length; i++) {
    const z = beta * (pc[i] - rc[i] - (pr[i] - rr[i]));
    loss += -(1 - ls) * logSigmoid(z) - ls * logSigmoid(-z);
  }
  return loss / pc.length;
}

t.test('one batch: loss, broadcast dlogp and parameter gradients against float64 (and finite differences)', async (t) => {
  const beta = 0.5, ls = 0.1;
  // Pairs of different lengths (padding inside the batch), one chat row with an implicit prompt.
  const f = path.join(tmp, 'check.jsonl');
  writeJsonl(f, [
    ...pairs(3, 7),
    { prompt: 'Short.', chosen: ' A warm and calm and kind and clear day, all told.', rejected: ' Cold.' },
    { chosen: [{ role: 'user', content: 'Weather?' }, { role: 'assistant', content: 'Sunny.' }], rejected: [{ role: 'user', content: 'Weather?' }, { role: 'assistant', content: 'Grim and wet.' }] },
  ]);
  const rows = loadPreferenceData(f, dataOpts(base)).examples;
  t.equal(rows.length, 5);
  const model = await loadModel(base, { device: 'cpu' });
  t.teardown(() => model.dispose());
  const tr = model.trainer();
  tr.createLora({ r: 4, alpha: 8, seed: 5 });
  // Move B off zero so that the policy differs from the reference.
  const names = tr.trainable().map((x) => x.name);
  let s = 12345;
  const rnd = () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 2 - 1;
  for (const n of names.filter((x) => x.includes('lora_B'))) tr.write(n, Float32Array.from(tr.read(n), () => 0.05 * rnd()));

  tr.useAdapter(null);
  const ref64 = await seqLogps64(model, rows);
  const ref32 = await pairLogps(model, rows, 2);
  tr.useAdapter('default');
  for (let i = 0; i < rows.length; i++) t.ok(Math.abs(ref32.chosen[i] - ref64.c[i]) < 1e-4 && Math.abs(ref32.rejected[i] - ref64.r[i]) < 1e-4, `reference sums of pair ${i}`);
  const pol64 = await seqLogps64(model, rows);
  const loss64 = dpoLoss64(pol64.c, pol64.r, ref64.c, ref64.r, beta, ls);

  await tr.zeroGrad();
  const r = await dpoMicroBatch(tr, rows, ref32, { beta, labelSmoothing: ls, gradScale: 1 });
  for (let i = 0; i < rows.length; i++) t.ok(Math.abs(r.policy.chosen[i] - pol64.c[i]) < 1e-4 && Math.abs(r.policy.rejected[i] - pol64.r[i]) < 1e-4, `policy sums of pair ${i}`);
  t.ok(Math.abs(r.loss.loss - loss64) < 1e-5 * Math.max(1, loss64), `loss ${r.loss.loss} vs float64 ${loss64}`);
  t.ok(loss64 > 0.05 && Math.abs(loss64 - Math.log(2)) > 1e-3, 'the batch is away from the trivial point');

  // dlogp: beta (ls sigmoid(z) - (1 - ls) sigmoid(-z)) / b on the chosen completion tokens, its negative on the rejected ones, 0 elsewhere.
  const b = rows.length, seq = Math.max(...rows.flatMap((e) => [e.chosen.length, e.rejected.length]));
  t.equal(r.dlogp.length, 2 * b * (seq - 1));
  let worst = 0, nonzero = 0, strayed = 0;
  for (let row = 0; row < 2 * b; row++) {
    const i = row % b, e = rows[i], rej = row >= b;
    const z = beta * (pol64.c[i] - ref64.c[i] - (pol64.r[i] - ref64.r[i]));
    const g = (beta * (ls * sigmoid(z) - (1 - ls) * sigmoid(-z))) / b;
    const len = rej ? e.rejected.length : e.chosen.length, from = rej ? e.rejectedFrom : e.chosenFrom;
    for (let tt = 0; tt < seq - 1; tt++) {
      const want = tt >= from - 1 && tt < len - 1 ? (rej ? -g : g) : 0;
      const got = r.dlogp[row * (seq - 1) + tt];
      if (want === 0) strayed += got !== 0 ? 1 : 0;
      else nonzero++;
      worst = Math.max(worst, Math.abs(got - want) / Math.abs(g));
    }
  }
  t.equal(strayed, 0, 'no gradient outside the completions (prompts, padding)');
  t.ok(worst < 1e-4, `dlogp within ${worst.toExponential(2)} (relative) of the float64 gradient on ${nonzero} completion positions`);

  // Parameter gradients from backward vs central differences of the float64 loss.
  const lossAt = async () => {
    const p = await seqLogps64(model, rows);
    return dpoLoss64(p.c, p.r, ref64.c, ref64.r, beta, ls);
  };
  for (const name of [names.find((x) => x.includes('layers.1.self_attn.v_proj.lora_B'))!, names.find((x) => x.includes('layers.0.mlp.up_proj.lora_A'))!]) {
    const grad = Float32Array.from(tr.read(name, 'grad'));
    const w = Float32Array.from(tr.read(name));
    const top = Array.from(grad.keys()).sort((x, y) => Math.abs(grad[y]) - Math.abs(grad[x])).slice(0, 3);
    for (const k of top) {
      const h = 1e-2;
      const v = w[k];
      w[k] = v + h;
      tr.write(name, w);
      const fp = await lossAt();
      w[k] = v - h;
      tr.write(name, w);
      const fm = await lossAt();
      w[k] = v;
      tr.write(name, w);
      const fd = (fp - fm) / (2 * h);
      t.ok(Math.abs(fd - grad[k]) <= 0.02 * Math.abs(fd) + 2e-5, `${name}[${k}]: backward ${grad[k].toExponential(4)}, finite differences ${fd.toExponential(4)}`);
    }
  }
});

t.test('gradient accumulation: 4 pairs x 1 == 2 pairs x 2 after one step', async (t) => {
  const f = path.join(tmp, 'acc.jsonl');
  // Pairs with very different completion lengths.
  writeJsonl(f, [
    { prompt: 'A.', chosen: ' warm', rejected: ' cold and dark and wet and grim and bleak, truly.' },
    { prompt: 'B.', chosen: ' calm and clear', rejected: ' harsh' },
    { prompt: 'Describe it.', chosen: ' bright and mild and sunny and kind.', rejected: ' sad' },
    { prompt: 'C?', chosen: ' happy', rejected: ' cruel' },
  ]);
  const run = async (cfg: Partial<DpoConfig>, out: string) => {
    const r = await runDpo({ model: base, data: f, out, steps: 1, optimizer: 'sgd', lr: 0.5, maxGradNorm: 0, loraR: 4, device: 'cpu', ...cfg }, { keepModel: true, handleSigint: false });
    const tr = r.trainer as Trainer;
    const w = new Map(tr.trainable().map((x) => [x.name, Float32Array.from(tr.read(x.name))]));
    const loss = readMetrics(out)[0].loss;
    r.model!.dispose();
    return { w, loss };
  };
  const a = await run({ batchSize: 4, gradAccum: 1 }, path.join(tmp, 'acc-a'));
  const b = await run({ batchSize: 2, gradAccum: 2 }, path.join(tmp, 'acc-b'));
  t.ok(Math.abs(a.loss - b.loss) < 1e-6, `same loss (${a.loss}, ${b.loss})`);
  let worst = 0, moved = 0;
  for (const [name, wa] of a.w) {
    const wb = b.w.get(name)!;
    for (let i = 0; i < wa.length; i++) {
      worst = Math.max(worst, Math.abs(wa[i] - wb[i]));
      if (name.includes('lora_B')) moved = Math.max(moved, Math.abs(wa[i]));
    }
  }
  t.ok(worst < 1e-6, `max weight difference ${worst.toExponential(2)}`);
  t.ok(moved > 1e-4, `the step moved the weights (${moved.toExponential(2)})`);
});

t.test('config defaults and argument checks', async (t) => {
  const c = resolveDpoConfig({ model: 'm', data: 'd', out: 'o' });
  t.match(c, {
    full: false,
    loraR: 16,
    loraAlpha: 32,
    loraTargets: 'all-linear',
    beta: 0.1,
    labelSmoothing: 0,
    lossType: 'sigmoid',
    optimizer: 'adamw',
    lr: 5e-6,
    weightDecay: 0,
    maxGradNorm: 1,
    lrSchedule: 'linear',
    warmupSteps: 0,
    steps: 0,
    epochs: 1,
    batchSize: 8,
    gradAccum: 1,
    maxLen: 1024,
    seed: 42,
    shuffle: false,
    evalBatchSize: 8,
  });
  t.equal(resolveDpoConfig({ model: 'm', data: 'd', out: 'o', full: true }).lr, 5e-7);
  t.equal(resolveDpoConfig({ model: 'm', data: 'd', out: 'o', lossType: 'simpo' }).beta, 2, "SimPO's beta defaults to the paper's");
  t.equal(resolveDpoConfig({ model: 'm', data: 'd', out: 'o', lossType: 'simpo', beta: 2.5 }).beta, 2.5);
  t.match(resolveDpoConfig({ model: 'm', data: 'd', out: 'o' }), { gamma: 0.5, lengthNormalize: false, precomputeRefLogps: true, skipIdentical: false });
  const bad: [Partial<DpoConfig>, string, RegExp][] = [
    [{ beta: 0 }, 'E_ARGUMENT', /--beta must be a positive number/],
    [{ labelSmoothing: 0.5 }, 'E_ARGUMENT', /--label-smoothing must be in \[0, 0\.5\)/],
    [{ lossType: 'kto' as never }, 'E_ARGUMENT', /--loss-type must be one of sigmoid, robust, hinge, ipo, simpo, orpo/],
    [{ lossType: 'ipo', gamma: 1 }, 'E_ARGUMENT', /--gamma is SimPO's target margin/],
    [{ lossType: 'hinge', labelSmoothing: 0.1 }, 'E_ARGUMENT', /--label-smoothing applies to sigmoid/],
    [{ lossType: 'simpo', lengthNormalize: false }, 'E_ARGUMENT', /always scores per token/],
    [{ lossType: 'orpo', precomputeRefLogps: false }, 'E_ARGUMENT', /has no reference model/],
    [{ full: true, precomputeRefLogps: false }, 'E_ARGUMENT', /--no-precompute-ref-logps needs a reference that stays as it was/],
    [{ full: true, loraR: 4 }, 'E_ARGUMENT', /LoRA options do not apply with --full: --lora-r/],
    [{ adapter: 'x', loraAlpha: 4 }, 'E_ARGUMENT', /--lora-alpha cannot be given with --adapter/],
    [{ full: true, adapter: 'x' }, 'E_ARGUMENT', /cannot be combined/],
    [{ batchSize: 0 }, 'E_ARGUMENT', /--batch-size/],
    [{ out: 'm' }, 'E_ARGUMENT', /--out must differ from --model/],
    [{ evalFraction: 0.1, evalData: 'e' }, 'E_ARGUMENT', /cannot be combined/],
    [{ maxLen: 1 }, 'E_ARGUMENT', /--max-len/],
  ];
  for (const [cfg, code, re] of bad) {
    const e = t.throws(() => resolveDpoConfig({ model: 'm', data: 'd', out: 'o', ...cfg })) as RlhfError;
    t.equal(e.code, code);
    t.match(e.message, re);
  }
  await t.rejects(runDpo({ model: base, data: path.join(tmp, 'missing.jsonl'), out: path.join(tmp, 'o-missing'), device: 'cpu' }, { handleSigint: false }), { code: 'E_IO' });
});

// ------------------------------------------------------------------ CLI

const skip = !cliBuilt() && 'CLI not compiled';

t.test('CLI: a run with an identical pair skipped by --skip-identical (warning names file:line), summary on stdout', { skip }, async (t) => {
  const f = path.join(tmp, 'cli.jsonl');
  const rows = pairs(8, 40);
  writeJsonl(f, [...rows.slice(0, 3), { prompt: 'Same?', chosen: ' yes', rejected: ' yes' }, ...rows.slice(3)]);
  const out = path.join(tmp, 'cli-out');
  const r = runCli(['dpo', '--model', base, '--data', f, '--out', out, '--steps', '3', '--batch-size', '2', '--grad-accum', '2', '--lr', '1e-2', '--lora-r', '4', '--lora-targets', 'q_proj,v_proj', '--eval-fraction', '0.25', '--device', 'cpu', '--skip-identical']);
  t.equal(r.status, 0, r.stderr);
  t.match(r.stderr, `dpo: warning: skipped 1 pair whose chosen and rejected are identical (${f}:4)`);
  const lines = r.stdout.trim().split('\n');
  t.equal(lines.length, 1, 'one summary line');
  t.match(lines[0], /^dpo: 3 steps \(.* epochs, 6 pairs\) .* loss 0\.6931 -> \S+; eval reward margin 0 -> \S+, accuracy 0\.000 -> \S+ \(2 pairs\); LoRA adapter \(\d+ trainable parameters\) saved to /);
  const progress = r.stderr.split('\n').filter((l) => l.startsWith('dpo step'));
  t.equal(progress.length, 3, r.stderr);
  t.match(progress[2], /^dpo step 3\/3 {2}loss \S+ {2}margin \S+ {2}acc \S+ {2}lr \S+ {2}grad_norm \S+ {2}tok\/s \d+ {2}epoch \S+ {2}eval_loss \S+ {2}eval_margin \S+ {2}eval_acc \S+$/);
  t.same(JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8')).target_modules, ['q_proj', 'v_proj']);
  t.equal(readMetrics(out).length, 4);
});

t.test('CLI: bad input -> exit 1, one stderr line naming file:line (or the option)', { skip }, async (t) => {
  const good = JSON.stringify(pairs(1, 0)[0]);
  const cases: [string[], RegExp | string][] = [];
  const mk = (name: string, lines: string[]) => {
    const f = path.join(tmp, name);
    fs.writeFileSync(f, lines.join('\n') + '\n');
    return f;
  };
  const f1 = mk('bad1.jsonl', [good, good, '{"prompt": "x", "chosen": " y"}']);
  cases.push([['--data', f1], `rlhf-native: error E_DATA: ${f1}:3: missing "rejected"`]);
  const f2 = mk('bad2.jsonl', [good, '{"prompt": "x", "chosen": " y", "rejected": " z", "rating": "way better"}']);
  cases.push([['--data', f2], `rlhf-native: error E_DATA: ${f2}:2: "rating" must be one of`]);
  const f3 = mk('bad3.jsonl', [good, '{"prompt": "x",']);
  cases.push([['--data', f3], `rlhf-native: error E_DATA: ${f3}:2: invalid JSON`]);
  const f4 = mk('bad4.jsonl', [good, good, good, JSON.stringify({ prompt: 'word '.repeat(40), chosen: ' a', rejected: ' b' })]);
  cases.push([['--data', f4, '--max-len', '16', '--skip-identical'], new RegExp(`^rlhf-native: error E_DATA: ${f4.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:4: the prompt has \\d+ tokens, which leaves no room`)]);
  const f5 = mk('bad5.jsonl', [good, JSON.stringify({ prompt_ids: [1], chosen_ids: [2, 9999], rejected_ids: [3] })]);
  cases.push([['--data', f5], `rlhf-native: error E_DATA: ${f5}:2: chosen: token id 9999 is outside the model's vocabulary`]);
  cases.push([['--data', data, '--eval-data', f1], `rlhf-native: error E_DATA: ${f1}:3: missing "rejected"`]);
  cases.push([['--data', data, '--loss-type', 'kto'], 'rlhf-native: error E_ARGUMENT: --loss-type must be one of sigmoid, robust, hinge, ipo, simpo, orpo, got kto']);
  const f6 = mk('bad6.jsonl', [good, good, JSON.stringify({ prompt: 'Same?', chosen: ' yes', rejected: ' yes' })]);
  cases.push([['--data', f6], `rlhf-native: error E_DATA: ${f6}:3: chosen and rejected are identical: the pair expresses no preference`]);
  cases.push([['--data', data, '--beta', '-1'], 'rlhf-native: error E_ARGUMENT: --beta must be a positive number, got -1']);
  cases.push([['--data', data, '--lora-targets', 'wq'], "rlhf-native: error E_ARGUMENT: LoRA target 'wq' is not a linear module"]);
  for (const [args, want] of cases) {
    const out = path.join(tmp, 'cli-bad');
    const r = runCli(['dpo', '--model', base, '--out', out, '--device', 'cpu', ...args]);
    t.equal(r.status, 1, args.join(' '));
    const err = r.stderr.trim().split('\n');
    t.equal(err.length, 1, r.stderr);
    t.match(err[0], want);
    t.notOk(fs.existsSync(path.join(out, 'adapter_model.safetensors')), 'nothing saved');
  }
});

t.test('CLI: SIGINT finishes the step, saves the adapter, exits 130', { skip }, async (t) => {
  const out = path.join(tmp, 'cli-int');
  const child = spawn(process.execPath, [CLI, 'dpo', '--model', base, '--data', data, '--out', out, '--steps', '100000', '--batch-size', '2', '--device', 'cpu'], {
    cwd: ROOT,
    env: { ...process.env, RLHF_DEBUG: '' },
  });
  let stderr = '', stdout = '', sent = false;
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => {
    stderr += d;
    if (!sent && /dpo step +3\//.test(stderr)) {
      sent = true;
      child.kill('SIGINT');
    }
  });
  const guard = setTimeout(() => child.kill('SIGKILL'), 120_000);
  const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
  clearTimeout(guard);
  t.equal(code, 130, stderr);
  t.match(stderr, /dpo: interrupted: finishing the current step, then saving/);
  t.match(stdout, /^dpo: interrupted after \d+\/100000 steps/);
  t.ok(fs.existsSync(path.join(out, 'adapter_model.safetensors')), 'adapter saved');
  const steps = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').length;
  t.ok(steps >= 3 && steps < 1000, `${steps} steps done`);
  t.match(JSON.parse(fs.readFileSync(path.join(out, 'dpo_config.json'), 'utf8')), { interrupted: true, steps_done: steps });
});
