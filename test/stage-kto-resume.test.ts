/**
 * KTO checkpoints: a run stopped after step 3 and resumed with `resume`
 * (LoRA and full training, shuffled examples, gradient accumulation,
 * held-out examples evaluated every 2 steps) ends with the same metrics and
 * bit-identical weights as an uninterrupted run. The reference log-probs
 * (examples and KL sequences) are recomputed on resume from the model
 * before training (the checkpoint is restored after), so full training's
 * reference is the base, not the checkpoint's weights; the KL estimates of
 * the later steps come from the restored policy.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { runKto } from '../lib/stages/kto';
import { openSafetensors } from '../lib/safetensors';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-kto-resume-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'llama');
const data = path.join(tmp, 'rows.jsonl');
const GOOD = ['warm', 'bright', 'calm', 'clear'];
const BAD = ['cold', 'dark', 'grim', 'harsh'];

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 5 });
  // 3 desirable : 2 undesirable, so that some micro-batches hold one kind only.
  const rows = Array.from({ length: 30 }, (_, k) => ({ prompt: `Describe day ${k}.`, completion: ` It was ${k % 5 < 3 ? GOOD[k % 4] : BAD[k % 4]}.`, label: k % 5 < 3 }));
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
  t.test(`resumed ${full ? 'full' : 'LoRA'} KTO matches the uninterrupted run`, async (t) => {
    const cfg = { model: base, data, batchSize: 3, gradAccum: 2, steps: 6, shuffle: true, lr: 5e-3, beta: 0.2, desirableWeight: 0.8, evalFraction: 0.2, evalSteps: 2, checkpointSteps: 2, seed: 3, device: 'cpu' as const, ...(full ? { full: true } : { loraR: 4 }) };
    const straight = path.join(tmp, `straight-${full}`), cut = path.join(tmp, `cut-${full}`);
    const a0 = await runKto({ ...cfg, out: straight }, quiet);
    t.equal(a0.steps, 6);
    const ac = new AbortController();
    const first = await runKto({ ...cfg, out: cut }, { ...quiet, signal: ac.signal, onStep: (m) => m.step === 3 && ac.abort() });
    t.ok(first.interrupted && first.steps === 3, 'stopped after step 3');
    t.ok(fs.existsSync(path.join(cut, 'checkpoints', 'checkpoint-3')), 'the stop wrote checkpoint-3');
    const second = await runKto({ ...cfg, out: cut, resume: true }, quiet);
    t.equal(second.resumedFrom, 3, 'resumed from checkpoint-3');
    t.equal(second.steps, 6);
    const a = read(straight), b = read(cut);
    t.same(b.map((m) => m.step), [0, 1, 2, 3, 4, 5, 6], 'the eval line of step 0 and every step once');
    t.ok(a.slice(4).some((m) => (m.kl as number) > 0), 'the KL estimate is live after the resume point');
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
