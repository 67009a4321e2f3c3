/**
 * examples/ runs: the data generator writes the committed files byte for
 * byte; each recipe file trains through the CLI (sizes cut by overrides to
 * keep the test short; the files, data paths, wiring and the GRPO reward
 * module are the examples' own); the API program trains a LoRA that changes
 * the model's scores and generates an answer per question.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cliBuilt, ROOT, runCli } from './helpers/cli';
import { exampleData } from '../examples/make-data';
import { QUESTIONS, runApiExample } from '../examples/api';

const EX = path.join(ROOT, 'examples');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-examples-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

t.test('make-data.ts writes the committed data', async (t) => {
  const files = exampleData();
  t.same(Object.keys(files).sort(), fs.readdirSync(path.join(EX, 'data')).sort(), 'the same files');
  for (const [name, text] of Object.entries(files)) t.ok(text === fs.readFileSync(path.join(EX, 'data', name), 'utf8'), `${name}: the same bytes`);
});

const SHORT = ['--sft.epochs', '1', '--ppo.iterations', '1', '--grpo.iterations', '2'];
const RECIPES: [string, string[]][] = [
  ['instructgpt', ['sft', 'rm', 'ppo']],
  ['llama2', ['sft', 'rm_helpfulness', 'rm_safety', 'rs', 'ppo']],
  ['grpo', ['sft', 'grpo']],
];

for (const [name, stages] of RECIPES)
  t.test(`examples/${name}.yaml trains through the CLI`, { skip: !cliBuilt() && 'CLI not compiled' }, async (t) => {
    const out = path.join(tmp, name);
    const over = SHORT.filter((a, i, all) => (a.startsWith('--') ? stages.includes(a.slice(2).split('.')[0]) : stages.includes(all[i - 1].slice(2).split('.')[0])));
    const r = runCli(['train', '--config', path.join(EX, `${name}.yaml`), '--out', out, '--device', 'cpu', ...over], { cwd: tmp, timeoutMs: 600_000 });
    t.equal(r.status, 0, `exit 0 (${r.stderr.trim().split('\n').slice(-2).join(' | ')})`);
    const run = JSON.parse(fs.readFileSync(path.join(out, 'run.json'), 'utf8'));
    t.same(run.stages.map((s: { name: string; status: string }) => [s.name, s.status]), stages.map((s) => [s, 'done']), 'every stage done');
    t.ok(fs.existsSync(path.join(out, 'report.html')), 'report.html');
    if (name === 'grpo') {
      const sum = JSON.parse(fs.readFileSync(path.join(out, 'summary.json'), 'utf8'));
      const first = sum.stages.grpo.eval.reward_first;
      t.ok(typeof first === 'number' && first >= 0 && first <= 1, `rewarded by exact-answer-reward.js (values in [0, 1]): first mean ${first}`);
      t.match(fs.readFileSync(path.join(out, 'grpo', 'grpo_config.json'), 'utf8'), /exact-answer-reward\.js/, 'the module is the configured reward');
    }
  });

t.test('examples/api.ts: load, score, train a LoRA, generate', async (t) => {
  const out = path.join(tmp, 'api');
  const r = await runApiExample({ out, device: 'cpu', epochs: 1, data: path.join(EX, 'data', 'sft.jsonl') });
  t.ok(fs.existsSync(path.join(out, 'adapter_model.safetensors')) && fs.existsSync(path.join(out, 'adapter_config.json')), 'a PEFT LoRA adapter');
  t.ok(r.sft.finalLoss! < r.sft.initialLoss!, `training lowered the loss: ${r.sft.initialLoss} -> ${r.sft.finalLoss}`);
  t.equal(r.before.length, QUESTIONS.length, 'a score per question');
  t.ok([...r.before, ...r.after].every(Number.isFinite), 'finite scores');
  t.ok(r.after.some((m, i) => Math.abs(m - r.before[i]) > 1e-3), `the adapter changed the scores (${r.before.map((x) => x.toFixed(2))} -> ${r.after.map((x) => x.toFixed(2))})`);
  t.equal(r.answers.length, QUESTIONS.length, 'an answer per question');
  t.ok(r.answers.every((a) => typeof a === 'string'), 'decoded text');
});
