/**
 * DPO checkpoints: a run stopped after step 3 and resumed with `resume`
 * (LoRA and full training, shuffled pairs, gradient accumulation, held-out
 * pairs evaluated every 2 steps) ends with the same metrics and bit-identical
 * weights as an uninterrupted run. The reference log-probs are recomputed on
 * resume from the model before training (the checkpoint is restored after),
 * so full training's reference is the base, not the checkpoint's weights.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { runDpo } from '../lib/stages/dpo';
import { openSafetensors } from '../lib/safetensors';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-dpo-resume-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'llama');
const data = path.join(tmp, 'pairs.jsonl');
const GOOD = ['warm', 'bright', 'calm', 'clear'];
const BAD = ['cold', 'dark', 'grim', 'harsh'];

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 5 });
  const rows = Array.from({ length: 20 }, (_, k) => ({ prompt: `Describe day ${k}.`, chosen: ` It was ${GOOD[k % 4]}.`, rejected: ` It was ${BAD[(k + 1) % 4]}.` }));
  fs.writeFileSync(data, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
});

const quiet = { log: () => {}, handleSigint: false };
const TIMING = new Set(['elapsed_s', 'tokens_per_sec']);
const read = (d: string) =>
  fs
    .readFileSync(path.join(d, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => Object.fromEntries(Object.entries(JSON.parse(l)).filter(([k]) => !TIMING.has(k))));

for (const full of [false, true]) {
  t.test(`resumed ${full ? 'full' : 'LoRA'} DPO matches the uninterrupted run`, async (t) => {
    const cfg = { model: base, data, batchSize: 2, gradAccum: 2, steps: 6, shuffle: true, lr: 5e-3, beta: 0.2, evalFraction: 0.2, evalSteps: 2, checkpointSteps: 2, seed: 3, device: 'cpu' as const, ...(full ? { full: true } : { loraR: 4 }) };
    const straight = path.join(tmp, `straight-${full}`), cut = path.join(tmp, `cut-${full}`);
    const a0 = await runDpo({ ...cfg, out: straight }, quiet);
    t.equal(a0.steps, 6);
    const ac = new AbortController();
    const first = await runDpo({ ...cfg, out: cut }, { ...quiet, signal: ac.signal, onStep: (m) => m.step === 3 && ac.abort() });
    t.ok(first.interrupted && first.steps === 3, 'stopped after step 3');
    t.ok(fs.existsSync(path.join(cut, 'checkpoints', 'checkpoint-3')), 'the stop wrote checkpoint-3');
    const second = await runDpo({ ...cfg, out: cut, resume: true }, quiet);
    t.equal(second.resumedFrom, 3, 'resumed from checkpoint-3');
    t.equal(second.steps, 6);
    const a = read(straight), b = read(cut);
    t.same(b.map((m) => m.step), [0, 1, 2, 3, 4, 5, 6], 'the eval line of step 0 and every step once');
    t.same(b, a, 'metrics.jsonl equals the uninterrupted run (timings aside)');
    t.equal(second.finalEval?.loss, a0.finalEval?.loss, 'the same final held-out loss');
    t.same(second.initialEval, a0.initialEval, 'the held-out figures before training are kept across the resume');
    const file = full ? 'model.safetensors' : 'adapter_model.safetensors';
    const wa = openSafetensors(path.join(straight, file)), wb = openSafetensors(path.join(cut, file));
    t.ok(wa.tensorNames.length > 0 && wa.tensorNames.every((n) => wa.tensorBytes(n).equals(wb.tensorBytes(n))), 'bit-identical final weights');
    wa.close();
    wb.close();
  });
}
