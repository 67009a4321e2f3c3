/**
 * SFT checkpoints: a run stopped after step 3 (which writes checkpoint-3,
 * removed here as if the process had been killed) and resumed from its step-2
 * checkpoint (LoRA with dropout, shuffled data, gradient accumulation) ends
 * with the same metrics and a bit-identical adapter as an uninterrupted run.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { runSft } from '../lib/stages/sft';
import { openSafetensors } from '../lib/safetensors';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-sft-resume-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'llama');
const data = path.join(tmp, 'rows.jsonl');

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 7 });
  fs.writeFileSync(data, Array.from({ length: 20 }, (_, i) => JSON.stringify({ prompt: `Count to ${i % 7}:`, completion: ` ${Array.from({ length: (i % 7) + 1 }, (_, k) => k + 1).join(' ')}` })).join('\n') + '\n');
});

const quiet = { log: () => {}, handleSigint: false };

for (const full of [false, true]) {
  t.test(`resumed ${full ? 'full' : 'LoRA (dropout 0.1)'} SFT matches the uninterrupted run`, async (t) => {
    const cfg = {
      model: base,
      data,
      batchSize: 3,
      gradAccum: 2,
      steps: 6,
      shuffle: true,
      lr: 5e-3,
      evalFraction: 0.2,
      evalSteps: 2,
      checkpointSteps: 2,
      seed: 11,
      device: 'cpu' as const,
      ...(full ? { full: true } : { loraDropout: 0.1, loraR: 4 }),
    };
    const straight = path.join(tmp, `straight-${full}`), cut = path.join(tmp, `cut-${full}`);
    await runSft({ ...cfg, out: straight }, quiet);
    const ac = new AbortController();
    const first = await runSft({ ...cfg, out: cut }, { ...quiet, signal: ac.signal, onStep: (m) => m.step === 3 && ac.abort() });
    t.ok(first.interrupted && first.steps === 3, 'stopped after step 3');
    t.ok(fs.existsSync(path.join(cut, 'checkpoints', 'checkpoint-3')), 'the stop wrote checkpoint-3');
    // As if the process had been killed after step 3: only the scheduled checkpoint-2 is left, and step 3 runs again.
    fs.rmSync(path.join(cut, 'checkpoints', 'checkpoint-3'), { recursive: true });
    const second = await runSft({ ...cfg, out: cut, resume: true }, quiet);
    t.equal(second.resumedFrom, 2);
    const read = (d: string) => fs.readFileSync(path.join(d, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const a = read(straight), b = read(cut);
    t.same(b.map((m) => m.step), a.map((m) => m.step), 'the same steps, once each');
    for (let i = 0; i < a.length; i++)
      for (const k of ['loss', 'grad_norm', 'lr', 'tokens', 'eval_loss']) t.equal(b[i][k], a[i][k], `step ${a[i].step} ${k}`);
    const file = full ? 'model.safetensors' : 'adapter_model.safetensors';
    const wa = openSafetensors(path.join(straight, file)), wb = openSafetensors(path.join(cut, file));
    t.ok(wa.tensorNames.every((n) => wa.tensorBytes(n).equals(wb.tensorBytes(n))), 'bit-identical final weights');
    wa.close();
    wb.close();
  });
}

t.test('SFT lowers the held-out loss (rows the training never saw)', async (t) => {
  const held = path.join(tmp, 'held.jsonl');
  fs.writeFileSync(held, Array.from({ length: 6 }, (_, i) => JSON.stringify({ prompt: `Count to ${(i % 5) + 2}, please:`, completion: ` ${Array.from({ length: (i % 5) + 3 }, (_, k) => k + 1).join(' ')}` })).join('\n') + '\n');
  const r = await runSft({ model: base, data, evalData: held, out: path.join(tmp, 'held-run'), full: true, steps: 30, batchSize: 5, lr: 3e-3, lrSchedule: 'constant', seed: 2, device: 'cpu' }, quiet);
  t.ok(r.initialEvalLoss !== null && r.evalLoss !== null, 'evaluated before and after');
  t.ok(r.evalLoss! < 0.7 * r.initialEvalLoss!, `held-out loss ${r.initialEvalLoss!.toFixed(4)} -> ${r.evalLoss!.toFixed(4)}`);
});
