/**
 * The SFT stage end to end on tiny random-initialised models: LoRA training
 * lowers the loss and the saved PEFT adapter reloads with the same
 * log-probs; continuing an adapter; --full writes a loadable model folder;
 * token-weighted gradient accumulation equals one big batch; metrics.jsonl,
 * the learning-rate schedule and weight-decay groups.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { loadModel } from '../lib/engine/model';
import { loadSftData, type SftExample } from '../lib/data/sft-data';
import { runSft, evaluateSft, noDecayNames, resolveSftConfig, type SftConfig } from '../lib/stages/sft';
import type { Trainer } from '../lib/engine/train';
import { RlhfError } from '../lib/errors';
import { lrMultiplier } from '../lib/stages/schedule';
import { loadTokenizer } from '../lib/tokenizer/tokenizer';
import { sharpenFinalNorm } from './helpers/models';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-sft-train-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'llama');
const gpt2 = path.join(tmp, 'gpt2');
const data = path.join(tmp, 'repeat.jsonl');
const mixed = path.join(tmp, 'mixed.jsonl');

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 1 });
  sharpenFinalNorm(base, 8);
  await initModel({ arch: 'gpt2', preset: 'tiny', outDir: gpt2, seed: 2 });
  // 16 rows: varied prompts, one fixed short completion.
  fs.writeFileSync(data, Array.from({ length: 16 }, (_, i) => JSON.stringify({ prompt: `Question ${i}: what colour is the sky?`, completion: ' The sky is blue.' })).join('\n') + '\n');
  // Rows with very different numbers of target tokens, so per-micro-batch means would weigh them wrongly.
  fs.writeFileSync(
    mixed,
    [
      // The two rows with many targets first (a {messages} row trains on every token, as in TRL), then two short completions.
      { text: 'A long line of text that has many more target tokens than the others in this file.' },
      { messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello there, how can I help you today?' }] },
      { prompt: 'Say yes.', completion: ' Yes.' },
      { prompt: 'Name a colour that the sky has on a clear day at noon', completion: ' blue' },
    ]
      .map((r) => JSON.stringify(r))
      .join('\n') + '\n',
  );
});

const readMetrics = (out: string) => fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));

async function completionLogp(forward: (ids: number[][]) => Promise<Float32Array[]>, rows: SftExample[]): Promise<number[][]> {
  const lp = await forward(rows.map((r) => r.ids));
  return rows.map((r, b) => Array.from(lp[b].subarray(0, r.ids.length - 1)).filter((_, i) => r.lossMask[i] === 1));
}

t.test('LoRA: the loss falls below half; the saved adapter reloads with the same log-probs', async (t) => {
  const out = path.join(tmp, 'lora');
  const steps: number[] = [];
  const r = await runSft(
    { model: base, data, out, steps: 30, batchSize: 8, lr: 5e-3, lrSchedule: 'constant', loraR: 8, loraAlpha: 16, seed: 3, device: 'cpu' },
    { keepModel: true, handleSigint: false, onStep: (m) => steps.push(m.step) },
  );
  t.teardown(() => r.model!.dispose());
  t.equal(r.steps, 30);
  t.same(steps, Array.from({ length: 30 }, (_, i) => i + 1), 'onStep every step');
  t.equal(r.saved, 'adapter');
  t.ok(r.finalLoss! < 0.5 * r.initialLoss!, `loss ${r.initialLoss} -> ${r.finalLoss}`);
  const m = readMetrics(out);
  t.equal(m.length, 30, 'one metrics line per step');
  t.same(Object.keys(m[0]).sort(), ['elapsed_s', 'epoch', 'grad_norm', 'input_tokens', 'loss', 'lr', 'step', 'tokens', 'tokens_per_sec'].sort());
  t.equal(m[0].loss, r.initialLoss);
  t.equal(m[29].epoch, 15, '2 steps per epoch');
  t.ok(m.every((x) => x.tokens === 8 * 6 && x.tokens_per_sec > 0 && x.grad_norm > 0), 'each step: 8 rows x (5 completion tokens + EOS)');
  for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'metrics.jsonl', 'sft_config.json']) t.ok(fs.existsSync(path.join(out, f)), f);
  const ac = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'));
  t.equal(ac.r, 8);
  t.equal(ac.lora_alpha, 16);
  t.equal(ac.base_model_name_or_path, path.resolve(base));

  const rows = loadSftData(data, { tokenizer: loadTokenizer(base), maxLen: 256, vocabSize: 512 }).examples.slice(0, 4);
  const trained = await completionLogp(async (ids) => ((await r.trainer!.forward({ inputIds: ids })).logp as Float32Array[]), rows);
  const reloaded = await loadModel(base, { adapter: out, device: 'cpu' });
  const again = await completionLogp(async (ids) => (await reloaded.forward({ inputIds: ids })).logp!, rows);
  reloaded.dispose();
  let worst = 0;
  trained.forEach((row, b) => row.forEach((x, i) => (worst = Math.max(worst, Math.abs(x - again[b][i])))));
  t.ok(trained[0].length === 6 && worst < 1e-4, `reloaded adapter: completion log-probs within ${worst.toExponential(2)}`);

  // Continue the saved adapter: with lr 0 its first loss is the reloaded model's loss on the data.
  const cont = path.join(tmp, 'lora-cont');
  const c = await runSft({ model: base, data, out: cont, adapter: out, steps: 1, batchSize: 16, lr: 0, device: 'cpu' }, { handleSigint: false });
  const ref = await loadModel(base, { adapter: out, device: 'cpu' });
  const all = loadSftData(data, { tokenizer: loadTokenizer(base), maxLen: 256, vocabSize: 512 }).examples;
  const ev = await evaluateSft(ref, all, 16);
  ref.dispose();
  t.ok(Math.abs(c.initialLoss! - ev.loss) < 1e-5, `continued adapter starts at the trained loss (${c.initialLoss} vs ${ev.loss})`);
  t.ok(c.initialLoss! < 0.5 * r.initialLoss!);
});

t.test('--full on GPT-2 writes a model folder that loads and scores like the trained weights', async (t) => {
  const out = path.join(tmp, 'full');
  const r = await runSft(
    { model: gpt2, data: mixed, out, full: true, steps: 6, batchSize: 4, lr: 3e-3, weightDecay: 0.1, evalData: data, evalSteps: 3, device: 'cpu' },
    { keepModel: true, handleSigint: false },
  );
  t.teardown(() => r.model!.dispose());
  t.equal(r.saved, 'model');
  t.ok(r.finalLoss! < r.initialLoss!, `loss ${r.initialLoss} -> ${r.finalLoss}`);
  const m = readMetrics(out);
  t.same(m.map((x) => x.eval_loss !== undefined), [false, false, true, false, false, true], 'eval every 3 steps (and at the end)');
  t.equal(r.evalLoss, m[5].eval_loss);
  for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) t.ok(fs.existsSync(path.join(out, f)), f);
  const rows = loadSftData(mixed, { tokenizer: loadTokenizer(gpt2), maxLen: 256, vocabSize: 512 }).examples;
  const trained = await completionLogp(async (ids) => (await r.trainer!.forward({ inputIds: ids })).logp as Float32Array[], rows);
  const saved = await loadModel(out, { device: 'cpu' });
  const again = await completionLogp(async (ids) => (await saved.forward({ inputIds: ids })).logp!, rows);
  const ev = await evaluateSft(saved, rows, 4);
  saved.dispose();
  const orig = await loadModel(gpt2, { device: 'cpu' });
  const ev0 = await evaluateSft(orig, rows, 4);
  orig.dispose();
  let worst = 0;
  trained.forEach((row, b) => row.forEach((x, i) => (worst = Math.max(worst, Math.abs(x - again[b][i])))));
  t.ok(worst < 1e-4, `saved model: log-probs within ${worst.toExponential(2)}`);
  t.ok(ev.loss < ev0.loss, `the saved model scores the data better than the base (${ev.loss} < ${ev0.loss})`);
});

async function oneStep(cfg: Partial<SftConfig>, out: string) {
  const r = await runSft({ model: base, data: mixed, out, steps: 1, optimizer: 'sgd', lr: 0.5, maxGradNorm: 0, device: 'cpu', ...cfg }, { keepModel: true, handleSigint: false });
  const tr = r.trainer as Trainer;
  const w = new Map(tr.trainable().map((x) => [x.name, Float32Array.from(tr.read(x.name))]));
  const loss = readMetrics(out)[0].loss;
  r.model!.dispose();
  return { w, loss };
}

for (const full of [false, true]) {
  t.test(`gradient accumulation (${full ? 'full' : 'LoRA'}): batch 4 x 1 == batch 2 x 2 after one step`, async (t) => {
    const mode = full ? { full: true } : { loraR: 4 };
    const rows = loadSftData(mixed, { tokenizer: loadTokenizer(base), maxLen: 256, vocabSize: 512 }).examples;
    const [m1, m2] = [rows[0].targets + rows[1].targets, rows[2].targets + rows[3].targets];
    t.ok(Math.max(m1, m2) > 2 * Math.min(m1, m2), `micro-batches with different target counts (${m1}, ${m2})`);
    const a = await oneStep({ ...mode, batchSize: 4, gradAccum: 1 }, path.join(tmp, `acc-a-${full}`));
    const b = await oneStep({ ...mode, batchSize: 2, gradAccum: 2 }, path.join(tmp, `acc-b-${full}`));
    const init = full ? await loadModel(base, { device: 'cpu' }) : null;
    const init0 = init?.trainer();
    init0?.enableFullTraining();
    t.ok(Math.abs(a.loss - b.loss) < 1e-5, `same loss (${a.loss}, ${b.loss})`);
    let worst = 0, moved = 0;
    for (const [name, wa] of a.w) {
      const wb = b.w.get(name)!;
      const w0 = init0?.read(name);
      for (let i = 0; i < wa.length; i++) {
        worst = Math.max(worst, Math.abs(wa[i] - wb[i]));
        moved = Math.max(moved, Math.abs(wa[i] - (w0 ? w0[i] : 0)));
      }
    }
    init?.dispose();
    t.ok(worst < 1e-5, `max weight difference ${worst.toExponential(2)}`);
    t.ok(moved > 1e-3, `the step moved the weights (${moved.toExponential(2)})`);
  });
}

t.test('LoRA dropout: recorded in adapter_config.json, active in training, deterministic per seed', async (t) => {
  const run = async (loraDropout: number, name: string) => {
    const out = path.join(tmp, name);
    await runSft({ model: base, data, out, steps: 3, batchSize: 8, lr: 5e-3, loraR: 4, loraDropout, seed: 7, device: 'cpu' }, { handleSigint: false });
    return { losses: readMetrics(out).map((x) => x.loss), cfg: JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8')) };
  };
  const a = await run(0.3, 'drop-a'), b = await run(0.3, 'drop-b'), c = await run(0, 'drop-c');
  t.equal(a.cfg.lora_dropout, 0.3);
  t.equal(c.cfg.lora_dropout, 0);
  t.same(a.losses, b.losses, 'same seed, same masks, same losses');
  t.equal(a.losses[0], c.losses[0], 'step 1: B = 0, so dropout cannot change the output yet');
  t.not(a.losses[2], c.losses[2], 'later steps: dropout changes the training forward');
});

t.test('the learning rate of step k is the schedule at k-1 (warmup, linear decay)', async (t) => {
  const out = path.join(tmp, 'sched');
  await runSft({ model: base, data, out, steps: 6, batchSize: 16, lr: 1e-3, warmupSteps: 2, lrSchedule: 'linear', device: 'cpu' }, { handleSigint: false });
  const m = readMetrics(out);
  m.forEach((x, k) => t.ok(Math.abs(x.lr - 1e-3 * lrMultiplier('linear', k, 2, 6)) < 1e-15, `step ${k + 1}: lr ${x.lr}`));
  t.equal(m[0].lr, 0, 'warmup starts at 0, as in transformers');
});

t.test('weight-decay groups, config defaults and argument checks', async (t) => {
  const names = ['model.embed_tokens.weight', 'model.layers.0.input_layernorm.weight', 'model.norm.weight', 'transformer.h.0.ln_1.weight', 'transformer.h.0.attn.c_attn.bias', 'transformer.ln_f.bias', 'lm_head.weight', 'transformer.h.0.mlp.c_fc.weight'];
  t.same(noDecayNames(names), ['model.layers.0.input_layernorm.weight', 'model.norm.weight', 'transformer.h.0.ln_1.weight', 'transformer.h.0.attn.c_attn.bias', 'transformer.ln_f.bias']);
  const c = resolveSftConfig({ model: 'm', data: 'd', out: 'o' });
  t.match(c, { full: false, loraR: 16, loraAlpha: 32, loraDropout: 0, loraTargets: 'all-linear', optimizer: 'adamw', lr: 2e-4, weightDecay: 0, maxGradNorm: 1, lrSchedule: 'linear', warmupSteps: 0, steps: 0, epochs: 3, batchSize: 8, gradAccum: 1, maxLen: 1024, seed: 42, shuffle: false });
  t.equal(resolveSftConfig({ model: 'm', data: 'd', out: 'o', full: true }).lr, 2e-5);
  t.equal(resolveSftConfig({ model: 'm', data: 'd', out: 'o', loraTargets: ['all-linear'] }).loraTargets, 'all-linear');
  t.same(resolveSftConfig({ model: 'm', data: 'd', out: 'o', loraTargets: ['q_proj'] }).loraTargets, ['q_proj']);
  const bad: [Partial<SftConfig>, string, RegExp][] = [
    [{ adapter: 'x', loraDropout: 0.1 }, 'E_UNSUPPORTED', /--lora-dropout 0\.1 with --adapter: the engine continues a saved adapter without dropout/],
    [{ full: true, loraDropout: 0.1 }, 'E_ARGUMENT', /LoRA options do not apply with --full: --lora-dropout/],
    [{ loraDropout: 1 }, 'E_ARGUMENT', /--lora-dropout must be in \[0, 1\)/],
    [{ batchSize: 0 }, 'E_ARGUMENT', /--batch-size/],
    [{ gradAccum: 1.5 }, 'E_ARGUMENT', /--grad-accum/],
    [{ full: true, loraR: 4 }, 'E_ARGUMENT', /LoRA options do not apply with --full: --lora-r/],
    [{ adapter: 'x', loraAlpha: 4 }, 'E_ARGUMENT', /--lora-alpha cannot be given with --adapter/],
    [{ full: true, adapter: 'x' }, 'E_ARGUMENT', /cannot be combined/],
    [{ out: 'm' }, 'E_ARGUMENT', /--out must differ from --model/],
    [{ evalFraction: 0.1, evalData: 'e' }, 'E_ARGUMENT', /cannot be combined/],
    [{ lrSchedule: 'step' as never }, 'E_ARGUMENT', /--lr-schedule/],
  ];
  for (const [cfg, code, re] of bad) {
    const e = t.throws(() => resolveSftConfig({ model: 'm', data: 'd', out: 'o', ...cfg })) as RlhfError;
    t.equal(e.code, code);
    t.match(e.message, re);
  }
});
