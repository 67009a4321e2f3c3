/**
 * PPO through the CLI without a reward model: `--reward-function exact`
 * mixed with a reward module under `--reward-weights`, and a module that
 * throws in the second iteration.
 *
 * The base is a tiny Llama whose LM head is scaled by 100, so that sampling
 * at temperature 1 gives its greedy continuation almost surely: the greedy
 * text of half the prompts is their reference answer, so `exact` scores
 * both 1s and 0s. The module logs what it was given; the expected metrics
 * are recomputed here from that log with this file's own exact-match and
 * module formulas, not read from the stage.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runCli, cliBuilt } from './helpers/cli';
import { initModel } from '../lib/model/init';
import { loadModel } from '../lib/engine/model';
import { loadTokenizer } from '../lib/tokenizer/tokenizer';
import { StageCheckpoints } from '../lib/stages/checkpoints';
import { listCheckpoints } from '../lib/run/atomic';

const skip = !cliBuilt() && 'CLI not compiled';
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-ppo-rewards-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'base');
const data = path.join(tmp, 'prompts.jsonl');
const N = 8, MAX_NEW = 3;
const answers: string[] = [];
const run = (out: string, ...more: string[]) =>
  runCli(['ppo', '--model', base, '--data', data, '--out', out, '--batch-size', '4', '--mini-batch-size', '2', '--ppo-epochs', '1', '--max-new-tokens', String(MAX_NEW), '--temperature', '1', '--lora-r', '4', '--seed', '3', '--device', 'cpu', ...more]);
const metricsOf = (out: string) => fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, number>);

t.before(async () => {
  const raw = path.join(tmp, 'raw');
  await initModel({ arch: 'llama', preset: 'tiny', outDir: raw, seed: 2, dtype: 'F32' });
  const m = await loadModel(raw, { device: 'cpu' });
  const tr = m.trainer();
  tr.enableFullTraining();
  tr.write('lm_head.weight', tr.read('lm_head.weight').map((x) => x * 100));
  await tr.saveModel(base, raw);
  m.dispose();
  // The greedy continuation of each prompt: the reference answer of the even rows.
  const tok = loadTokenizer(base);
  const b = await loadModel(base, { device: 'cpu' });
  const prompts = Array.from({ length: N }, (_, i) => `question ${i}: why?`);
  const g = await b.generate({ prompts: prompts.map((p) => tok.encode(p, { addSpecialTokens: true })), maxNewTokens: MAX_NEW, temperature: 0 });
  b.dispose();
  prompts.forEach((_, i) => answers.push(i % 2 === 0 ? tok.decode(Array.from(g.tokens[i]), { skipSpecialTokens: true }) : 'not the answer'));
  fs.writeFileSync(data, prompts.map((prompt, i) => JSON.stringify({ prompt, id: i + 1, answer: answers[i] })).join('\n') + '\n');
});

t.test('ppo --reward-function exact --reward-module M --reward-weights 2,0.5: reward = 2 module + 0.5 exact, each part logged', { skip }, async (t) => {
  const log = path.join(tmp, 'calls.jsonl');
  const mod = path.join(tmp, 'length.cjs');
  fs.writeFileSync(mod, `const fs = require('fs');\nexports.reward = async ({ completion, row }) => {\n  fs.appendFileSync(${JSON.stringify(log)}, JSON.stringify({ id: row.id, completion }) + '\\n');\n  return completion.length / 4 + row.id / 8;\n};\n`);
  const out = path.join(tmp, 'mix');
  const r = run(out, '--iterations', '2', '--reward-function', 'exact', '--reward-module', mod, '--reward-weights', '2,0.5');
  t.equal(r.status, 0, r.stderr);
  t.match(r.stderr, /ppo: reward = 2 x module \+ 0\.5 x exact/);
  const metrics = metricsOf(out);
  t.equal(metrics.length, 2);
  const calls = fs.readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { id: number; completion: string });
  t.equal(calls.length, 8, 'one module call per completion: 2 iterations of 4');
  const norm = (s: string) => s.split(/\s+/).filter(Boolean).join(' ');
  let exactHits = 0;
  metrics.forEach((m, it) => {
    const batch = calls.slice(4 * it, 4 * it + 4);
    const exact = batch.map((c) => (norm(c.completion) === norm(answers[c.id - 1]) ? 1 : 0));
    const module = batch.map((c) => c.completion.length / 4 + c.id / 8);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    exactHits += exact.reduce<number>((a, b) => a + b, 0);
    t.equal(m.step, it + 1);
    t.ok(Math.abs(m['reward/exact'] - mean(exact)) < 1e-12, `iteration ${it + 1}: reward/exact ${m['reward/exact']} = ${mean(exact)}`);
    t.ok(Math.abs(m['reward/module'] - mean(module)) < 1e-12, `iteration ${it + 1}: reward/module ${m['reward/module']} = ${mean(module)}`);
    const want = mean(batch.map((_, b) => 2 * module[b] + 0.5 * exact[b]));
    t.ok(Math.abs(m.reward - want) < 1e-12, `iteration ${it + 1}: reward ${m.reward} = ${want}`);
    t.ok(Math.abs(m.reward - (2 * m['reward/module'] + 0.5 * m['reward/exact'])) < 1e-12, 'the weighted sum of the logged parts');
    t.same(Object.keys(m).filter((k) => k.startsWith('reward/')).sort(), ['reward/exact', 'reward/module']);
  });
  t.ok(exactHits > 0 && exactHits < 8, `exact scored both 1s and 0s (${exactHits} of 8 hit)`);
  t.match(JSON.parse(fs.readFileSync(path.join(out, 'ppo_config.json'), 'utf8')), { rewardModel: null, rewardModule: mod, rewardFunction: ['exact'], rewardWeights: [2, 0.5], answerField: 'answer' });
});

t.test('a module that throws in iteration 2: one E_REWARD line naming the module and the row; checkpoint 1 and metrics.jsonl are kept', { skip }, async (t) => {
  const mod = path.join(tmp, 'flaky.cjs');
  fs.writeFileSync(mod, 'let calls = 0;\nexports.reward = ({ row }) => {\n  if (++calls > 4) throw new Error(`judge down for id ${row.id}`);\n  return row.id;\n};\n');
  const out = path.join(tmp, 'flaky');
  const r = run(out, '--iterations', '3', '--checkpoint-steps', '1', '--reward-module', mod);
  t.equal(r.status, 1, r.stderr);
  const last = r.stderr.trim().split('\n').pop()!;
  const m = new RegExp(`^rlhf-native: error E_REWARD: --reward-module ${mod.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: reward\\(\\) threw "judge down for id (\\d+)" on the completion for ${data.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:(\\d+)$`).exec(last);
  t.ok(m, last);
  t.equal(m?.[2], m?.[1], 'the line named is the line of the row that was being scored (id = line)');
  t.notMatch(r.stderr, /^\s+at /m, 'no stack trace');
  const cks = listCheckpoints(path.join(out, 'checkpoints'));
  t.same(cks.map((c) => c.step), [1], 'the checkpoint of iteration 1');
  t.equal(StageCheckpoints.damage(cks[0].dir, 1), null, 'complete: every file matches its manifest');
  const metrics = metricsOf(out);
  t.same(metrics.map((x) => x.step), [1], "iteration 1's metrics line");
  t.equal(metrics[0]['reward/module'], (metrics[0].reward), 'one source of weight 1: the module is the reward');
});

t.test('rs --reward-function exact --reward-module M: every sample scored 1 x module + 3 x exact, recomputed from samples.jsonl', { skip }, async (t) => {
  const mod = path.join(tmp, 'ids.mjs');
  fs.writeFileSync(mod, 'export default ({ completion, row }) => row.id * 10 + completion.length;\n');
  const out = path.join(tmp, 'rs');
  const r = runCli(['rs', '--model', base, '--data', data, '--out', out, '--rounds', '1', '--k', '2', '--max-new-tokens', String(MAX_NEW), '--steps', '1', '--batch-size', '2', '--lora-r', '4', '--eval-fraction', '0', '--device', 'cpu', '--reward-function', 'exact', '--reward-module', mod, '--reward-weights', '1', '3']);
  t.equal(r.status, 0, r.stderr);
  const samples = fs.readFileSync(path.join(out, 'round-1', 'samples.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { source_line: number; completion: string; reward: number; parts: Record<string, number> });
  t.equal(samples.length, 2 * N);
  const norm = (s: string) => s.split(/\s+/).filter(Boolean).join(' ');
  let hits = 0;
  for (const s of samples) {
    const exact = norm(s.completion) === norm(answers[s.source_line - 1]) ? 1 : 0;
    hits += exact;
    const module = s.source_line * 10 + s.completion.length; // id = line
    t.same(s.parts, { module, exact }, `line ${s.source_line}: ${JSON.stringify(s.completion)}`);
    t.equal(s.reward, module + 3 * exact);
  }
  t.ok(hits > 0 && hits < samples.length, `exact scored both 1s and 0s (${hits} of ${samples.length} hit)`);
});

t.test('--reward-function with rows that lack the answer field: E_DATA naming file:line and the field, before any weights load', { skip }, async (t) => {
  const out = path.join(tmp, 'no-field');
  const r = run(out, '--reward-function', 'numeric', '--answer-field', 'solution');
  t.equal(r.status, 1);
  t.equal(r.stderr.trim(), `rlhf-native: error E_DATA: ${data}:1: no "solution": the "numeric" reward's reference answer (--answer-field solution) is missing`);
  t.notOk(fs.existsSync(out), 'nothing written');
});
