/**
 * The reward model on soft labels (`label_prob`, AI feedback): with one pair
 * per step from the same fresh head, the first step's loss with p = 1 is
 * L1 = -log sigmoid(z); with a soft label p it must be the cross-entropy
 * -p log sigmoid(z) - (1 - p) log sigmoid(-z) = L1 + (1 - p) z, with z
 * recovered from L1 (z = -log(exp(L1) - 1)): the stage passes the label to
 * the loss and ignores the pair's margin. --no-soft-labels trains on the
 * margin loss instead; a label outside [0, 1] is an E_DATA naming file:line.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { runRm } from '../lib/stages/reward';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-rm-soft-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'llama');
const quiet = { log: () => {}, handleSigint: false };

async function firstLoss(name: string, row: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<number> {
  const data = path.join(tmp, `${name}.jsonl`);
  fs.writeFileSync(data, JSON.stringify({ prompt: 'Tell me about the sky.', chosen: ' It is blue, thanks for asking.', rejected: ' Go away.', ...row }) + '\n');
  const out = path.join(tmp, name);
  await runRm({ model: base, data, out, batchSize: 1, steps: 1, lr: 1e-3, seed: 5, device: 'cpu', evalFraction: 0, ...extra }, quiet);
  return JSON.parse(fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n')[0]).loss;
}

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 4 });
});

t.test('first-step loss: the cross-entropy against label_prob (margin not used); --no-soft-labels: the margin loss', async (t) => {
  const l1 = await firstLoss('hard', {});
  const z = -Math.log(Math.expm1(l1));
  for (const p of [0.7, 0.5, 0.2]) {
    const got = await firstLoss(`soft-${p}`, { label_prob: p, margin: 0.4 });
    const want = l1 + (1 - p) * z;
    t.ok(Math.abs(got - want) < 1e-5 * Math.max(1, Math.abs(want)), `label_prob ${p}: loss ${got.toFixed(7)} vs -p log s(z) - (1-p) log s(-z) = ${want.toFixed(7)}`);
  }
  const m = 0.4;
  const noSoft = await firstLoss('no-soft', { label_prob: 0.2, margin: m }, { softLabels: false });
  const wantMargin = Math.log1p(Math.exp(-(z - m)));
  t.ok(Math.abs(noSoft - wantMargin) < 1e-5, `--no-soft-labels: -log sigmoid(z - margin) = ${wantMargin.toFixed(7)}, got ${noSoft.toFixed(7)}`);
});

t.test('a label_prob outside [0, 1] is an E_DATA naming file:line', async (t) => {
  await t.rejects(firstLoss('bad', { label_prob: 1.5 }), { code: 'E_DATA', message: /bad\.jsonl:1: "label_prob" must be a probability in \[0, 1\]/ });
});
