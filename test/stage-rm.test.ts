/**
 * The reward-model stage end to end on a tiny model: on pairs separable by a
 * rule (the chosen answer is polite, the rejected one rude) the held-out
 * accuracy rises above 0.9; the LoRA output is PEFT's SEQ_CLS layout and
 * scores like the in-memory model; --full writes a
 * LlamaForSequenceClassification folder; the margin enters the loss as
 * Llama 2 defines it (checked against a float64 computation); an interrupted
 * run resumed from its checkpoint reproduces the uninterrupted metrics; bad
 * data names its file and line.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { loadModel } from '../lib/engine/model';
import { runRm, resolveRmConfig } from '../lib/stages/reward';
import { pairwiseLoss } from './helpers/host-losses';
import { openSafetensors } from '../lib/safetensors';
import { openModelFolder } from '../lib/model/folder';
import { loadTokenizer } from '../lib/tokenizer/tokenizer';
import { runCli, cliBuilt } from './helpers/cli';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-rm-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'llama');
const train = path.join(tmp, 'pairs.jsonl');
const held = path.join(tmp, 'held.jsonl');

const SUBJECTS = ['the sky', 'a cat', 'my garden', 'the river', 'this song', 'the city', 'an apple', 'the road', 'our team', 'the winter', 'a book', 'the ocean'];
const POLITE = ['Thank you, happy to help.', 'Please, here is a kind answer.', 'Thanks, glad you asked.', 'Sure, with pleasure.'];
const RUDE = ['No. Go away.', 'Stop asking me that.', 'Whatever, not my problem.', 'Ugh, figure it out.'];

function pairs(n: number, offset: number): string {
  const rows = [];
  for (let i = 0; i < n; i++) {
    const k = i + offset;
    rows.push({ prompt: `Tell me about ${SUBJECTS[k % SUBJECTS.length]}.`, chosen: ` ${POLITE[k % 4]}`, rejected: ` ${RUDE[(k * 3 + 1) % 4]}`, rating: k % 2 ? 'better' : 'significantly better' });
  }
  return rows.map((r) => JSON.stringify(r)).join('\n') + '\n';
}

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 4 });
  fs.writeFileSync(train, pairs(48, 0));
  fs.writeFileSync(held, pairs(16, 1000));
});

const quiet = { log: () => {}, handleSigint: false };
const common = { model: base, data: train, evalData: held, batchSize: 8, lr: 3e-3, lrSchedule: 'constant' as const, warmupRatio: 0, seed: 3, device: 'cpu' as const };

t.test('LoRA reward model: held-out accuracy above 0.9 on rule-separable pairs; PEFT SEQ_CLS output scores the same', async (t) => {
  const out = path.join(tmp, 'rm-lora');
  const r = await runRm({ ...common, out, epochs: 4 }, quiet);
  t.ok(r.initialEval && r.finalEval, 'evaluated before and after');
  t.ok(r.finalEval!.accuracy > 0.9, `held-out accuracy ${r.initialEval!.accuracy.toFixed(3)} -> ${r.finalEval!.accuracy.toFixed(3)} (> 0.9)`);
  t.ok(r.finalEval!.loss < r.initialEval!.loss, `held-out loss ${r.initialEval!.loss.toFixed(4)} -> ${r.finalEval!.loss.toFixed(4)}`);
  t.equal(r.saved, 'adapter');
  const cfg = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'));
  t.equal(cfg.task_type, 'SEQ_CLS');
  t.same(cfg.modules_to_save, ['classifier', 'score']);
  const st = openSafetensors(path.join(out, 'adapter_model.safetensors'));
  t.same(st.tensor('base_model.model.score.weight').shape, [1, 64]);
  t.same(st.tensor('base_model.model.model.layers.1.mlp.down_proj.lora_A.weight').shape, [16, 160]);
  st.close();
  const lines = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  t.equal(lines.length, r.totalSteps, 'one metrics line per step');
  t.ok(lines.every((m) => typeof m.loss === 'number' && typeof m.accuracy === 'number'), 'each line has loss and accuracy');

  // The saved adapter merged at load scores a held-out pair the right way round, by its last token.
  const tok = loadTokenizer(base);
  const m = await loadModel(base, { device: 'cpu', adapter: out });
  t.equal(m.config.head, 'score');
  const eos = m.config.eosTokenIds[0];
  const enc = (p: string, c: string) => [...tok.encode(p, { addSpecialTokens: true }), ...tok.encode(c, { addSpecialTokens: false }), eos];
  const f = await m.forward({ inputIds: [enc('Tell me about the moon.', ` ${POLITE[0]}`), enc('Tell me about the moon.', ` ${RUDE[0]}`)], values: true, logp: false });
  const rc = f.values![0][f.values![0].length - 1], rr = f.values![1][f.values![1].length - 1];
  t.ok(rc > rr, `unseen prompt: polite ${rc.toFixed(3)} > rude ${rr.toFixed(3)}`);
  m.dispose();
});

t.test('--full trains every weight and saves a LlamaForSequenceClassification folder', async (t) => {
  const out = path.join(tmp, 'rm-full');
  const r = await runRm({ ...common, out, full: true, lr: 1e-3, epochs: 3 }, quiet);
  t.equal(r.saved, 'model');
  t.ok(r.finalEval!.accuracy > 0.9, `held-out accuracy ${r.finalEval!.accuracy.toFixed(3)}`);
  const folder = openModelFolder(out);
  t.equal(folder.config.architecture, 'LlamaForSequenceClassification');
  t.equal(folder.config.numLabels, 1);
  const names = folder.tensors.map((x) => x.canonical);
  t.ok(names.includes('score.weight') && !names.includes('lm_head.weight'), 'score.weight, no lm_head');
  t.equal(names.length, openModelFolder(base).tensors.length, 'every base tensor, with the head in place of the LM head');
  folder.close();
});

t.test("the margin enters the loss as Llama 2's -log sigmoid(rc - rr - m), against float64", async (t) => {
  const c = Float32Array.from([1.5, -0.2, 0.3, 2.0]), r = Float32Array.from([0.5, 0.1, 0.3, -1.0]), m = Float32Array.from([1, 2 / 3, 0, 3]);
  const got = pairwiseLoss(c, r, m, 1);
  let ref = 0;
  const dref: number[] = [];
  for (let i = 0; i < 4; i++) {
    const z = c[i] - r[i] - m[i];
    ref += Math.log1p(Math.exp(-z)) / 4;
    dref.push(-1 / (1 + Math.exp(z)) / 4);
  }
  t.ok(Math.abs(got.loss - ref) < 1e-6, `loss ${got.loss} vs ${ref}`);
  for (let i = 0; i < 4; i++) {
    t.ok(Math.abs(got.dchosen![i] - dref[i]) < 1e-6, `dchosen[${i}]`);
    t.ok(Math.abs(got.drejected![i] + dref[i]) < 1e-6, `drejected[${i}]`);
  }
  t.equal(got.accuracy, 0.5, 'accuracy counts strict wins (2 of 4)');
});

t.test('an interrupted run resumed from its checkpoint reproduces the uninterrupted metrics', async (t) => {
  const straight = path.join(tmp, 'rm-straight');
  const cut = path.join(tmp, 'rm-cut');
  const cfg = { ...common, epochs: 1, steps: 6, checkpointSteps: 2, evalSteps: 3, shuffle: true };
  await runRm({ ...cfg, out: straight }, quiet);
  const ac = new AbortController();
  const first = await runRm({ ...cfg, out: cut }, { ...quiet, onStep: (m) => m.step === 3 && ac.abort(), signal: ac.signal });
  t.ok(first.interrupted && first.steps === 3, `stopped after step ${first.steps}`);
  t.ok(fs.existsSync(path.join(cut, 'checkpoints', 'checkpoint-2')), 'checkpoint-2 written');
  t.ok(fs.existsSync(path.join(cut, 'checkpoints', 'checkpoint-3')), 'the stop wrote checkpoint-3');
  // As if the process had been killed after step 3: only the scheduled checkpoint is left.
  fs.rmSync(path.join(cut, 'checkpoints', 'checkpoint-3'), { recursive: true });
  const second = await runRm({ ...cfg, out: cut, resume: true }, quiet);
  t.equal(second.resumedFrom, 2, 'resumed after step 2 (step 3 runs again)');
  const read = (d: string) => fs.readFileSync(path.join(d, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  const a = read(straight), b = read(cut);
  t.equal(b.length, a.length, 'same number of metric lines');
  for (let i = 0; i < a.length; i++) {
    for (const k of ['step', 'loss', 'accuracy', 'margin', 'grad_norm', 'lr', 'eval_accuracy', 'eval_loss'])
      t.ok(a[i][k] === b[i][k] || Math.abs(a[i][k] - b[i][k]) <= 1e-6 * (1 + Math.abs(a[i][k])), `step ${a[i].step} ${k}: ${a[i][k]} vs ${b[i][k]}`);
  }
  const wa = openSafetensors(path.join(straight, 'adapter_model.safetensors')), wb = openSafetensors(path.join(cut, 'adapter_model.safetensors'));
  let same = true;
  for (const n of wa.tensorNames) same &&= wa.tensorBytes(n).equals(wb.tensorBytes(n));
  wa.close();
  wb.close();
  t.ok(same, 'the final adapters are bit-identical');
});

t.test('bad input: options and data errors name the flag or the file and line', async (t) => {
  t.throws(() => resolveRmConfig({ model: base, data: train, out: path.join(tmp, 'x'), full: true, loraR: 4 }), /--lora-r/);
  t.throws(() => resolveRmConfig({ model: base, data: train, out: base }), /--out must differ/);
  const bad = path.join(tmp, 'bad.jsonl');
  fs.writeFileSync(bad, pairs(2, 0) + '{"prompt": "x", "chosen": "y"}\n');
  await t.rejects(runRm({ ...common, data: bad, out: path.join(tmp, 'rm-bad') }, quiet), { code: 'E_DATA', message: new RegExp(`${path.basename(bad)}:3`) });
  const empty = path.join(tmp, 'empty.jsonl');
  fs.writeFileSync(empty, '');
  await t.rejects(runRm({ ...common, data: empty, out: path.join(tmp, 'rm-empty') }, quiet), { code: 'E_DATA' });
  // An existing output folder keeps its files when the data is bad.
  const keep = path.join(tmp, 'rm-keep');
  fs.mkdirSync(keep);
  fs.writeFileSync(path.join(keep, 'notes.txt'), 'mine');
  await t.rejects(runRm({ ...common, data: bad, out: keep }, quiet), { code: 'E_DATA' });
  t.equal(fs.readFileSync(path.join(keep, 'notes.txt'), 'utf8'), 'mine', 'nothing lost');
  if (cliBuilt()) {
    const res = runCli(['rm', '--model', base, '--data', bad, '--out', path.join(tmp, 'rm-cli'), '--device', 'cpu']);
    t.equal(res.status, 1, 'exit 1');
    t.match(res.stderr.trim(), new RegExp(`${path.basename(bad)}:3`), 'one line naming file:line');
    t.equal(res.stderr.trim().split('\n').length, 1, 'exactly one stderr line');
  }
});

t.test('gradient accumulation: 2 micro-batches of 4 pairs give the step of one batch of 8', async (t) => {
  const cfg = { ...common, evalData: null, steps: 2, shuffle: false, optimizer: 'sgd' as const, lr: 0.05, maxGradNorm: 0 };
  const one = await runRm({ ...cfg, out: path.join(tmp, 'acc-1'), batchSize: 8, gradAccum: 1 }, quiet);
  const two = await runRm({ ...cfg, out: path.join(tmp, 'acc-2'), batchSize: 4, gradAccum: 2 }, quiet);
  t.equal(one.steps, 2);
  const a = openSafetensors(path.join(tmp, 'acc-1', 'adapter_model.safetensors')), b = openSafetensors(path.join(tmp, 'acc-2', 'adapter_model.safetensors'));
  let worst = 0;
  for (const n of a.tensorNames) {
    const x = new Float32Array(a.tensorBytes(n).buffer.slice(0)), y = new Float32Array(b.tensorBytes(n).buffer.slice(0));
    for (let i = 0; i < x.length; i++) worst = Math.max(worst, Math.abs(x[i] - y[i]) / (1e-3 + Math.abs(x[i])));
  }
  a.close();
  b.close();
  t.ok(worst < 1e-3, `largest relative weight difference ${worst.toExponential(2)}`);
});
