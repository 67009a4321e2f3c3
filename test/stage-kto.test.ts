/**
 * The KTO stage on tiny random-initialised models: the loss of the first
 * steps against an independent float64 computation (rows forwarded here,
 * the KL reference point estimated by hand from mismatched sequences built
 * here, paper eq. 7 with weights); training on an easy rule raises the
 * desirable rewards and lowers the undesirable ones (held out, LoRA and
 * full); gradient accumulation; config checks and TRL's weight warning;
 * bad input through the CLI (E_DATA naming file:line, E_ARGUMENT for batch
 * size 1); a preference-pair file trained directly (unpaired); the stage in
 * the registry and its recipe wiring. Resume: test/stage-kto-resume.test.ts.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { loadModel, type Model } from '../lib/engine/model';
import { KTO_DEFAULTS, ktoStage, resolveKtoConfig, runKto, weightWarning, type KtoConfig } from '../lib/stages/kto';
import { STAGES, stageOf } from '../lib/train/registry';
import type { Trainer } from '../lib/engine/train';
import type { RlhfError } from '../lib/errors';
import type { RecipeStageContext } from '../lib/train/stage';
import { runCli, cliBuilt } from './helpers/cli';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-kto-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'llama');
const gpt2 = path.join(tmp, 'gpt2');
const data = path.join(tmp, 'train.jsonl');
const heldOut = path.join(tmp, 'eval.jsonl');
const pairsFile = path.join(tmp, 'pairs.jsonl');

// The rule: a desirable description uses two "pleasant" adjectives, an
// undesirable one two "unpleasant" ones; the held-out rows' topics and
// numbers differ from the training rows'.
const GOOD = ['warm', 'bright', 'calm', 'clear', 'mild', 'sunny', 'kind', 'happy'];
const BAD = ['cold', 'dark', 'wet', 'grim', 'harsh', 'bleak', 'sad', 'cruel'];
const TOPICS = ['day', 'sky', 'town', 'sea', 'room', 'road', 'wind', 'song', 'tree', 'lake', 'hill', 'moon'];
function rows(n: number, offset: number) {
  return Array.from({ length: n }, (_, i) => {
    const k = i + offset, topic = TOPICS[k % TOPICS.length], good = k % 2 === 0, a = good ? GOOD : BAD;
    return { prompt: `Describe the ${topic} (${k}).`, completion: ` The ${topic} is ${a[k % 8]} and ${a[(3 * k + 1) % 8]}.`, label: good };
  });
}
const writeJsonl = (file: string, r: unknown[]) => fs.writeFileSync(file, r.map((x) => (typeof x === 'string' ? x : JSON.stringify(x))).join('\n') + '\n');
const readMetrics = (out: string) => fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
const quiet = { log: () => {}, handleSigint: false };

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 1 });
  await initModel({ arch: 'gpt2', preset: 'tiny', outDir: gpt2, seed: 2 });
  writeJsonl(data, rows(32, 0));
  writeJsonl(heldOut, rows(12, 100));
  writeJsonl(
    pairsFile,
    Array.from({ length: 8 }, (_, k) => ({ prompt: `Describe the ${TOPICS[k]}.`, chosen: ` It is ${GOOD[k]} and ${GOOD[(k + 3) % 8]}.`, rejected: ` It is ${BAD[k]}.` })),
  );
});

// ------------------------------------------------------------------ float64 check of the first steps

const sigmoid = (z: number) => (z >= 0 ? 1 / (1 + Math.exp(-z)) : Math.exp(z) / (1 + Math.exp(z)));

/** float64 sums of logp over each sequence's completion [from, length): logp[t] predicts ids[t+1]. */
async function completionSums64(model: Model, seqs: { ids: number[]; from: number }[]): Promise<number[]> {
  const lp = (await model.forward({ inputIds: seqs.map((s) => s.ids) })).logp!;
  return seqs.map((s, b) => {
    let sum = 0;
    for (let i = s.from - 1; i < s.ids.length - 1; i++) sum += lp[b][i];
    return sum;
  });
}

t.test('the first two steps: loss, KL reference point and rewards against float64 (eq. 7 with weights)', async (t) => {
  // Pre-tokenised rows of different lengths (padding inside a batch): their ids are known here without any loader.
  let s = 99;
  const rnd = (n: number) => Array.from({ length: n }, () => 5 + ((s = (s * 1103515245 + 12345) % 2 ** 31) % 500));
  const ex = [
    [3, 4, true], [5, 2, false], [2, 6, true], [4, 3, true],
    [6, 5, false], [3, 2, true], [2, 7, false], [5, 4, true],
  ].map(([p, c, label]) => ({ prompt_ids: rnd(p as number), completion_ids: rnd(c as number), label: label as boolean }));
  const f = path.join(tmp, 'check.jsonl');
  writeJsonl(f, ex);
  const beta = 0.5, wD = 1.3, wU = 0.7, bs = 4;
  const cfg: KtoConfig = { model: base, data: f, out: '', shuffle: false, batchSize: bs, beta, desirableWeight: wD, undesirableWeight: wU, lr: 0.05, lrSchedule: 'constant', loraR: 4, seed: 7, device: 'cpu' };
  const one = path.join(tmp, 'check-1'), two = path.join(tmp, 'check-2');
  const logs: string[] = [];
  await runKto({ ...cfg, out: one, steps: 1 }, { ...quiet, log: (l) => logs.push(l) });
  await runKto({ ...cfg, out: two, steps: 2 }, quiet);
  const m = readMetrics(two);
  t.same(readMetrics(one)[0].loss, m[0].loss, 'the same first step');
  t.ok(logs.some((l) => /^kto: warning: 5 desirable and 3 undesirable examples with --desirable-weight 1\.3 and --undesirable-weight 0\.7: .* is outside \[1, 4\/3\]/.test(l)), logs.join('\n'));

  // Step 1: the policy is the reference (new adapter, B = 0): every reward and the KL estimate are 0, each row's loss is w / 2.
  const rowsOf = (lo: number) => ex.slice(lo, lo + bs);
  const w = (e: { label: boolean }) => (e.label ? wD : wU);
  const loss1 = rowsOf(0).reduce((a, e) => a + w(e) / 2, 0) / bs;
  t.ok(Math.abs(m[0].loss - loss1) < 1e-6, `step 1 loss ${m[0].loss} = mean(w) / 2 = ${loss1}`);
  t.match(m[0], { kl: 0, 'rewards/chosen': 0, 'rewards/rejected': 0, rows: 4, desirable: 3, undesirable: 1 });

  // Step 2 (rows 4..7, file order): the policy after step 1 is base + the adapter saved by the one-step run.
  const rows2 = rowsOf(4);
  const seqs = rows2.map((e) => ({ ids: [...e.prompt_ids, ...e.completion_ids], from: e.prompt_ids.length }));
  // Example i's KL sequence: its prompt and the completion of example (i + 1) mod N, N over the whole training set.
  const klSeqs = rows2.map((e, j) => {
    const next = ex[(4 + j + 1) % ex.length];
    return { ids: [...e.prompt_ids, ...next.completion_ids], from: e.prompt_ids.length };
  });
  const policy = await loadModel(base, { adapter: one, device: 'cpu' });
  const ref = await loadModel(base, { device: 'cpu' });
  t.teardown(() => (policy.dispose(), ref.dispose()));
  const [pl, rl, pk, rk] = [await completionSums64(policy, seqs), await completionSums64(ref, seqs), await completionSums64(policy, klSeqs), await completionSums64(ref, klSeqs)];
  const kl = Math.max(0, pk.reduce((a, x, i) => a + x - rk[i], 0) / bs);
  let loss = 0, rc = 0, rr = 0, nc = 0, nr = 0;
  rows2.forEach((e, i) => {
    const r = pl[i] - rl[i];
    loss += e.label ? wD * (1 - sigmoid(beta * (r - kl))) : wU * (1 - sigmoid(beta * (kl - r)));
    if (e.label) (rc += beta * r), nc++;
    else (rr += beta * r), nr++;
  });
  loss /= bs;
  t.ok(kl > 1e-3, `the KL reference point is live at step 2 (${kl})`);
  t.ok(Math.abs(m[1].kl - kl) < 1e-4 * Math.max(1, kl), `kl ${m[1].kl} vs float64 ${kl}`);
  t.ok(Math.abs(m[1].loss - loss) < 1e-5, `step 2 loss ${m[1].loss} vs float64 ${loss}`);
  t.ok(Math.abs(loss - rows2.reduce((a, e) => a + w(e) / 2, 0) / bs) > 1e-3, 'away from the trivial point');
  t.ok(Math.abs(m[1]['rewards/chosen'] - rc / nc) < 1e-5 && Math.abs(m[1]['rewards/rejected'] - rr / nr) < 1e-5, 'rewards per side');
  t.ok(Math.abs(m[1]['rewards/margins'] - (rc / nc - rr / nr)) < 1e-5, 'margin');
  t.equal(m[1].input_tokens, seqs.reduce((a, q) => a + q.ids.length, 0), 'input tokens: the rows (not their KL sequences)');
});

// ------------------------------------------------------------------ behaviour

t.test('LoRA: KTO raises the desirable rewards and lowers the undesirable ones (held out); metrics and output files', async (t) => {
  const out = path.join(tmp, 'lora');
  const logs: string[] = [];
  const r = await runKto(
    { model: base, data, out, evalData: heldOut, steps: 12, batchSize: 8, lr: 5e-3, lrSchedule: 'constant', loraR: 8, loraAlpha: 16, evalSteps: 4, seed: 3, device: 'cpu' },
    { ...quiet, log: (l) => logs.push(l) },
  );
  const before = r.initialEval!, after = r.finalEval!;
  t.match(before, { loss: 0.5, rewardsChosen: 0, rewardsRejected: 0, margin: 0, kl: 0, desirable: 6, undesirable: 6 }, 'before training the policy is the reference');
  t.ok(after.rewardsChosen! > 0.2, `held-out desirable reward 0 -> ${after.rewardsChosen}`);
  t.ok(after.rewardsRejected! < -0.1, `held-out undesirable reward 0 -> ${after.rewardsRejected}`);
  t.ok(after.loss < before.loss - 0.05, `held-out loss ${before.loss} -> ${after.loss}`);
  t.ok(after.logpsChosen! > before.logpsChosen! && after.logpsRejected! < before.logpsRejected!, 'policy log-probs: desirable up, undesirable down');
  t.match(r, { saved: 'adapter', steps: 12, trainRows: 32, evalRows: 12, interrupted: false, data: { source: 'unpaired', desirable: 16, undesirable: 16 } });
  t.ok(r.finalLoss! < r.initialLoss!, `train loss ${r.initialLoss} -> ${r.finalLoss}`);
  t.ok(logs.some((l) => /^kto: reference log-probs of 44 examples and their 44 KL sequences \(base model\)/.test(l)), logs.join('\n'));
  t.notOk(logs.some((l) => /warning/.test(l)), 'balanced data: no weight warning');

  const m = readMetrics(out);
  t.equal(m.length, 13, 'the eval before training (step 0) and one line per step');
  t.same(Object.keys(m[0]).sort(), ['elapsed_s', 'epoch', 'eval_kl', 'eval_logps/chosen', 'eval_logps/rejected', 'eval_loss', 'eval_rewards/chosen', 'eval_rewards/margins', 'eval_rewards/rejected', 'step'].sort());
  t.same(
    Object.keys(m[1]).sort(),
    ['desirable', 'elapsed_s', 'epoch', 'grad_norm', 'input_tokens', 'kl', 'logps/chosen', 'logps/rejected', 'loss', 'lr', 'rewards/chosen', 'rewards/margins', 'rewards/rejected', 'rows', 'step', 'tokens_per_sec', 'undesirable'].sort(),
  );
  t.same(m.map((x) => x.eval_loss !== undefined), [true, false, false, false, true, false, false, false, true, false, false, false, true], 'eval at 0, every 4 steps and at the end');
  t.ok(m.slice(1).every((x, i) => x.step === i + 1 && x.rows === 8 && x.desirable + x.undesirable === 8 && x.kl >= 0 && x.grad_norm > 0));
  t.ok(m.slice(1).every((x) => Math.abs(x['rewards/margins'] - (x['rewards/chosen'] - x['rewards/rejected'])) < 1e-6));
  t.ok(m.slice(2).some((x) => x.kl > 0), 'the KL reference point moves off 0');
  const last = m[12];
  t.ok(last['rewards/chosen'] > 0 && last['rewards/rejected'] < 0, 'training rewards: desirable up, undesirable down');
  t.equal(last.eval_loss, after.loss);
  for (const file of ['adapter_config.json', 'adapter_model.safetensors', 'metrics.jsonl', 'kto_config.json']) t.ok(fs.existsSync(path.join(out, file)), file);
  const kc = JSON.parse(fs.readFileSync(path.join(out, 'kto_config.json'), 'utf8'));
  t.match(kc, { beta: 0.1, desirableWeight: 1, undesirableWeight: 1, reference: 'base', data_source: 'unpaired', total_steps: 12, steps_done: 12, interrupted: false });
  t.equal(kc.final_eval.loss, after.loss);
});

t.test('--full on GPT-2: the reference is the base before training', async (t) => {
  const r = await runKto({ model: gpt2, data, out: path.join(tmp, 'full'), full: true, evalFraction: 0.25, steps: 6, batchSize: 8, lr: 1e-3, lrSchedule: 'constant', beta: 0.2, device: 'cpu' }, quiet);
  t.equal(r.saved, 'model');
  t.match(r, { trainRows: 24, evalRows: 8 });
  t.match(r.initialEval, { loss: 0.5, margin: 0, kl: 0 });
  t.ok(r.finalEval!.margin! > 0.1, `held-out reward margin 0 -> ${r.finalEval!.margin}`);
  for (const f of ['config.json', 'model.safetensors', 'kto_config.json']) t.ok(fs.existsSync(path.join(tmp, 'full', f)), f);
});

t.test('gradient accumulation: 4 rows x 1 == 2 rows x 2 after one step', async (t) => {
  const run = async (cfg: Partial<KtoConfig>, out: string) => {
    const r = await runKto({ model: base, data, out, steps: 1, optimizer: 'sgd', lr: 0.5, maxGradNorm: 0, loraR: 4, desirableWeight: 1.2, device: 'cpu', ...cfg }, { ...quiet, keepModel: true });
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

t.test('a preference-pair file is unpaired and trained (chosen desirable, rejected undesirable)', async (t) => {
  const logs: string[] = [];
  const r = await runKto({ model: base, data: pairsFile, out: path.join(tmp, 'paired'), shuffle: false, steps: 4, batchSize: 4, lr: 5e-3, loraR: 4, device: 'cpu' }, { ...quiet, log: (l) => logs.push(l) });
  t.match(r, { trainRows: 16, steps: 4, data: { source: 'paired', rows: 16, desirable: 8, undesirable: 8 } });
  t.ok(logs.some((l) => /16 examples \(8 desirable, 8 undesirable; 16 standard; unpaired from 8 preference pairs\)/.test(l)), logs.join('\n'));
  t.equal(JSON.parse(fs.readFileSync(path.join(tmp, 'paired', 'kto_config.json'), 'utf8')).data_source, 'paired');
  // File order after unpairing: every chosen row, then every rejected row.
  t.same(readMetrics(path.join(tmp, 'paired')).map((m) => [m.desirable, m.undesirable]), [[4, 0], [4, 0], [0, 4], [0, 4]]);
  t.notOk('rewards/chosen' in readMetrics(path.join(tmp, 'paired'))[2], 'a step without desirable rows has no rewards/chosen (as TRL logs none)');
});

// ------------------------------------------------------------------ options and checks

t.test('config defaults, argument checks and the weight warning', async (t) => {
  const c = resolveKtoConfig({ model: 'm', data: 'd', out: 'o' });
  t.match(c, { full: false, loraR: 16, loraAlpha: 32, beta: 0.1, desirableWeight: 1, undesirableWeight: 1, lr: 1e-5, epochs: 1, batchSize: 8, shuffle: true, maxLen: 1024, evalBatchSize: 8 });
  t.equal(resolveKtoConfig({ model: 'm', data: 'd', out: 'o', full: true }).lr, 1e-6);
  t.match(KTO_DEFAULTS, { lrLora: 1e-5, lrFull: 1e-6, beta: 0.1 });
  const bad: [Partial<KtoConfig>, RegExp][] = [
    [{ batchSize: 1 }, /--batch-size must be at least 2 for KTO, got 1: the KL reference point is a mean over the micro-batch/],
    [{ beta: 0 }, /--beta must be a positive number/],
    [{ desirableWeight: -1 }, /--desirable-weight must be a positive number/],
    [{ undesirableWeight: 0 }, /--undesirable-weight must be a positive number/],
    [{ full: true, loraR: 4 }, /LoRA options do not apply with --full/],
  ];
  for (const [cfg, re] of bad) {
    const e = t.throws(() => resolveKtoConfig({ model: 'm', data: 'd', out: 'o', ...cfg })) as RlhfError;
    t.equal(e.code, 'E_ARGUMENT');
    t.match(e.message, re);
  }
  // TRL's ranges (KTOTrainer, KTO paper eq. 8): 30 desirable, 10 undesirable -> desirable_weight in [0.33, 0.44] or undesirable_weight in [2.26, 3].
  t.match(weightWarning(30, 10, 1, 1), /= 3\.000 is outside \[1, 4\/3\].*--desirable-weight in \[0\.33, 0\.44\] OR --undesirable-weight in \[2\.26, 3\]/);
  t.equal(weightWarning(30, 10, 0.4, 1), null);
  t.equal(weightWarning(30, 10, 1, 2.5), null);
  t.equal(weightWarning(10, 10, 1, 1), null);
  t.equal(weightWarning(12, 10, 1, 1), null, 'ratio 1.2 is inside');
  t.match(weightWarning(10, 10, 2, 1), /= 2\.000 is outside/);
  t.match(weightWarning(5, 0, 1, 1), /every example is desirable/);
  const one = path.join(tmp, 'one.jsonl');
  writeJsonl(one, rows(1, 0));
  await t.rejects(runKto({ model: base, data: one, out: path.join(tmp, 'o-one'), device: 'cpu' }, quiet), { code: 'E_DATA', message: /KTO needs at least 2 training examples/ });
});

t.test('registry and recipe wiring', async (t) => {
  t.equal(STAGES.kto, ktoStage);
  t.equal(stageOf('kto'), ktoStage);
  const ctx = { dir: '/run/kto', base: '/run/sft/merged' } as RecipeStageContext;
  t.same(ktoStage.recipe!.inputs(ctx, {}), { model: '/run/sft/merged' });
  t.same(await ktoStage.recipe!.outputs({ saved: 'adapter' } as never, ctx), { model: '/run/sft/merged', adapter: '/run/kto' });
  t.same(await ktoStage.recipe!.outputs({ saved: 'model' } as never, ctx), { model: '/run/kto' });
});

// ------------------------------------------------------------------ CLI

const skip = !cliBuilt() && 'CLI not compiled';

t.test('CLI: a run on a pair file, progress on stderr and one summary line on stdout', { skip }, async (t) => {
  const out = path.join(tmp, 'cli-out');
  const r = runCli(['kto', '--model', base, '--data', pairsFile, '--out', out, '--steps', '3', '--batch-size', '4', '--lr', '1e-2', '--lora-r', '4', '--eval-fraction', '0.25', '--shuffle', '--device', 'cpu']);
  t.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  t.equal(lines.length, 1, 'one summary line');
  t.match(lines[0], /^kto: 3 steps \(.* epochs, 12 examples\) .* loss 0\.5000 -> \S+; eval loss 0\.5000 -> \S+, reward margin 0 -> \S+ \(4 examples\); LoRA adapter \(\d+ trainable parameters\) saved to /);
  const progress = r.stderr.split('\n').filter((l) => l.startsWith('kto step'));
  t.equal(progress.length, 3, r.stderr);
  t.match(progress[2], /^kto step 3\/3 {2}loss \S+ {2}margin \S+ {2}kl \S+ {2}lr \S+ {2}grad_norm \S+ {2}tok\/s \d+ {2}epoch \S+ {2}eval_loss \S+ {2}eval_margin \S+ {2}eval_kl \S+$/);
});

t.test('CLI: bad input -> exit 1, one stderr line naming file:line (or the option)', { skip }, async (t) => {
  const good = JSON.stringify(rows(1, 0)[0]);
  const noLabel = path.join(tmp, 'nolabel.jsonl');
  fs.writeFileSync(noLabel, [good, good, '{"prompt": "x", "completion": " y"}'].join('\n') + '\n');
  const badLabel = path.join(tmp, 'badlabel.jsonl');
  fs.writeFileSync(badLabel, [good, '{"prompt": "x", "completion": " y", "label": 1}'].join('\n') + '\n');
  const cases: [string[], string][] = [
    [['--data', noLabel], `rlhf-native: error E_DATA: ${noLabel}:3: missing "label"`],
    [['--data', badLabel], `rlhf-native: error E_DATA: ${badLabel}:2: "label" must be true or false, got 1`],
    [['--data', data, '--eval-data', noLabel], `rlhf-native: error E_DATA: ${noLabel}:3: missing "label"`],
    [['--data', data, '--batch-size', '1'], 'rlhf-native: error E_ARGUMENT: --batch-size must be at least 2 for KTO, got 1'],
    [['--data', data, '--beta', '-1'], 'rlhf-native: error E_ARGUMENT: --beta must be a positive number, got -1'],
  ];
  for (const [args, want] of cases) {
    const out = path.join(tmp, 'cli-bad');
    const r = runCli(['kto', '--model', base, '--out', out, '--device', 'cpu', ...args]);
    t.equal(r.status, 1, args.join(' '));
    const err = r.stderr.trim().split('\n');
    t.equal(err.length, 1, r.stderr);
    t.match(err[0], want);
    t.notOk(fs.existsSync(path.join(out, 'adapter_model.safetensors')), 'nothing saved');
  }
});
