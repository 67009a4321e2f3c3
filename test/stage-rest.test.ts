/**
 * The ReST stage end to end on a tiny model: a policy first finetuned to
 * name colours at random, a programmatic reward counting the word "blue".
 * ReST must raise the reward of its samples over Grow steps; each Improve
 * step trains on exactly the grown samples at or above its threshold (the
 * quantiles recomputed here in float64) and continues the previous policy,
 * while ReST-EM retrains the base each iteration on at most
 * --max-per-prompt samples per prompt (checked by redoing the SFT runs from
 * the stated starting points and comparing the adapters byte for byte).
 * Also the stage folder, the CLI with a score-head reward model, and bad
 * input.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { openSafetensors, writeSafetensors } from '../lib/safetensors';
import { seededRandom } from '../lib/data/sft-data';
import { runSft, type SftConfig } from '../lib/stages/sft';
import { runRest, type RestConfig, type RestMetrics } from '../lib/stages/rest/stage';
import { functionReward } from '../lib/reward/sources';
import { RlhfError } from '../lib/errors';
import { cliBuilt, runCli } from './helpers/cli';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-rest-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'base');
const v1 = path.join(tmp, 'v1');
const prompts = path.join(tmp, 'prompts.jsonl');
const held = path.join(tmp, 'held.jsonl');
const rm = path.join(tmp, 'rm');
const COLOURS = ['red', 'blue', 'green', 'yellow', 'black', 'white'];

const blueCount = (s: string) => (s.match(/\bblue\b/g) ?? []).length;
const blue = () => functionReward((b) => b.map((x) => blueCount(x.response)), 'blue');
// Blue words plus a small length term: rewards with few ties, so that quantile thresholds fall between samples.
const blueLen = () => functionReward((b) => b.map((x) => blueCount(x.response) + 0.001 * x.response.length), 'blue');

function rewrite(dir: string, edit: (name: string) => { fill?: { kind: 'const'; value: number }; drop?: boolean } | null, add: { name: string; shape: number[]; std: number }[] = []) {
  const file = path.join(dir, 'model.safetensors');
  const st = openSafetensors(file);
  const tensors = st.header.tensors.flatMap((x) => {
    const e = edit(x.name);
    if (e?.drop) return [];
    return [e?.fill ? { name: x.name, dtype: x.dtype, shape: x.shape, fill: e.fill } : { name: x.name, dtype: x.dtype, shape: x.shape, data: st.tensorBytes(x.name) }];
  });
  st.close();
  writeSafetensors(file, [...tensors, ...add.map((a) => ({ name: a.name, dtype: 'F32' as const, shape: a.shape, fill: { kind: 'normal' as const, std: a.std, seed: 9 } }))], { format: 'pt' });
}

t.before(async () => {
  // As in stage-rs.test.ts: a final-norm weight of 8 lets the tiny model speak confidently; "v1" names four random colours.
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 1 });
  rewrite(base, (n) => (n === 'model.norm.weight' ? { fill: { kind: 'const', value: 8 } } : null));
  const rand = seededRandom(7);
  const rows = Array.from({ length: 48 }, (_, i) => ({ prompt: `Colours ${i}:`, completion: ' ' + Array.from({ length: 4 }, () => COLOURS[Math.floor(rand() * 6)]).join(' ') + '.' }));
  const sftData = path.join(tmp, 'sft.jsonl');
  fs.writeFileSync(sftData, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  await runSft({ model: base, data: sftData, out: v1, full: true, steps: 40, batchSize: 16, lr: 2e-3, lrSchedule: 'constant', device: 'cpu' }, { handleSigint: false });
  fs.writeFileSync(prompts, Array.from({ length: 24 }, (_, i) => JSON.stringify({ prompt: `Colours ${100 + i}:` })).join('\n') + '\n');
  fs.writeFileSync(held, Array.from({ length: 16 }, (_, i) => JSON.stringify({ prompt: `Colours ${200 + i}:` })).join('\n') + '\n');
  await initModel({ arch: 'llama', preset: 'tiny', outDir: rm, seed: 3 });
  const cfgFile = path.join(rm, 'config.json');
  const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
  fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, architectures: ['LlamaForSequenceClassification'], num_labels: 1 }));
  rewrite(rm, (n) => (n === 'lm_head.weight' ? { drop: true } : null), [{ name: 'score.weight', shape: [1, cfg.hidden_size], std: 0.1 }]);
});

const readJsonl = (f: string) => fs.readFileSync(f, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
const bytes = (f: string) => fs.readFileSync(f);
const quiet = { handleSigint: false };
const sft = { lr: 2e-3, epochs: 2, batchSize: 8, loraR: 8, loraAlpha: 16 };
const small: Partial<RestConfig> = { evalData: held, evalSamples: 2, samplesPerPrompt: 6, maxNewTokens: 8, temperature: 1, device: 'cpu', sft };

/** The q-quantile as numpy computes it by default, written out for the test: sorted x, h = (n - 1) q, linear between x[floor h] and the next. */
function refQuantile(values: number[], q: number): number {
  const x = [...values].sort((a, b) => a - b);
  const h = (x.length - 1) * q, lo = Math.floor(h);
  return lo === x.length - 1 ? x[lo] : x[lo] * (1 - (h - lo)) + x[lo + 1] * (h - lo);
}
const key = (r: { source_line: number; sample: number }) => `${r.source_line}/${r.sample}`;

t.test('ReST: quantile thresholds of each Grow set, exactly the samples at or above each, the policy continued through the Improve steps', async (t) => {
  const out = path.join(tmp, 'rest');
  const metrics: RestMetrics[] = [];
  const r = await runRest({ model: v1, data: prompts, out, growSteps: 2, ...small, sft: { ...sft, epochs: 1 } }, { ...quiet, reward: blueLen(), onMetrics: (m) => metrics.push(m) });
  t.equal(r.growSteps, 2);
  t.equal(r.interrupted, false);
  t.same(r.policy, { model: v1, adapter: path.join(out, 'grow-2', 'improve-3') }, 'the last Improve step is the policy');
  const lines = readJsonl(r.metricsFile);
  t.same(lines, JSON.parse(JSON.stringify(metrics)), 'onMetrics sees every metrics.jsonl record');
  const phases = lines.map((m) => `${m.phase}${m.grow}${m.improve ?? ''}`).filter((p, i, a) => p !== a[i - 1]);
  t.same(phases, ['eval0', 'grow1', 'sft11', 'improve11', 'sft12', 'improve12', 'sft13', 'improve13', 'iteration1', 'grow2', 'sft21', 'improve21', 'sft22', 'improve22', 'sft23', 'improve23', 'iteration2', 'eval2']);
  for (const g of [1, 2]) {
    const samples = readJsonl(path.join(out, `grow-${g}`, 'samples.jsonl'));
    t.equal(samples.length, 24 * 6);
    const rewards = samples.map((s) => s.reward);
    const gm = lines.find((m) => m.phase === 'grow' && m.grow === g);
    t.equal(gm.samples, 144);
    for (const [i, q] of [0.5, 0.7, 0.9].entries()) {
      const tau = refQuantile(rewards, q);
      if (Math.abs(gm.thresholds[i] - tau) > 1e-12) t.fail(`grow ${g}: tau_${i + 1} ${gm.thresholds[i]} != float64 quantile ${tau}`);
      const want = new Set(samples.filter((s) => s.reward >= gm.thresholds[i]).map(key));
      const rows = readJsonl(path.join(out, `grow-${g}`, `improve-${i + 1}`, 'sft.jsonl'));
      t.same(new Set(rows.map(key)), want, `grow ${g} improve ${i + 1}: the samples with reward >= ${gm.thresholds[i].toFixed(4)} (${want.size})`);
      const im = lines.find((m) => m.phase === 'improve' && m.grow === g && m.improve === i + 1);
      t.match(im, { threshold: gm.thresholds[i], strict: false, kept: want.size, capped: 0 });
    }
    t.ok(gm.thresholds[0] <= gm.thresholds[1] && gm.thresholds[1] <= gm.thresholds[2] && gm.thresholds[0] < gm.thresholds[2], `rising thresholds ${gm.thresholds}`);
  }
  // Each Improve step starts from the policy of the one before, across Grow steps too.
  const from = (g: number, i: number) => JSON.parse(fs.readFileSync(path.join(out, `grow-${g}`, `improve-${i}`, 'sft_config.json'), 'utf8')).adapter;
  t.equal(from(1, 1), null, 'the first Improve step creates the adapter');
  t.equal(from(1, 2), path.join(out, 'grow-1', 'improve-1'));
  t.equal(from(1, 3), path.join(out, 'grow-1', 'improve-2'));
  t.equal(from(2, 1), path.join(out, 'grow-1', 'improve-3'));
  // Redo Improve step 5 of the run (grow 2, improve 2) from improve 1's adapter, seeded seed + 5: the same adapter, byte for byte.
  const redo = path.join(tmp, 'rest-redo');
  const sc: SftConfig = { ...sft, epochs: 1, model: v1, adapter: path.join(out, 'grow-2', 'improve-1'), data: path.join(out, 'grow-2', 'improve-2', 'sft.jsonl'), out: redo, seed: 42 + 5, device: 'cpu' };
  delete sc.loraR, delete sc.loraAlpha;
  await runSft(sc, quiet);
  t.ok(bytes(path.join(redo, 'adapter_model.safetensors')).equals(bytes(path.join(out, 'grow-2', 'improve-2', 'adapter_model.safetensors'))), 'grow 2 improve 2 = SFT continued from grow 2 improve 1');
  for (const f of ['rest_config.json', 'rest_result.json', 'checkpoints']) t.ok(fs.existsSync(path.join(out, f)), f);
  const again = (await runRest({ model: v1, data: prompts, out, ...small }, { ...quiet, reward: blue() }).catch((e) => e)) as RlhfError;
  t.equal(again.code, 'E_ARGUMENT');
  t.match(again.message, /already holds a ReST run/);
});

t.test("ReST with fixed thresholds raises the policy's reward over Grow steps", async (t) => {
  const out = path.join(tmp, 'rest-rise');
  const r = await runRest({ model: v1, data: prompts, out, growSteps: 3, thresholds: [1, 2], ...small }, { ...quiet, reward: blue() });
  const means = r.growStats.map((s) => s.meanReward);
  t.comment(`Grow-set mean reward by Grow step: ${means.map((x) => x.toFixed(3)).join(' -> ')}; held-out ${r.initialReward} -> ${r.finalReward}`);
  t.ok(means[1] > means[0] && means[2] > means[1], `the samples of each Grow step score higher than the last (${means})`);
  t.ok(means[2] > means[0] + 0.5, 'by a clear margin');
  t.ok(r.finalReward! > r.initialReward! + 0.5, `held-out mean reward ${r.initialReward} -> ${r.finalReward}`);
  t.same(r.growStats[0].improve.map((s) => s.threshold), [1, 2]);
});

t.test('ReST-EM: reward > 0, at most --max-per-prompt per prompt, the base retrained each iteration', async (t) => {
  const out = path.join(tmp, 'rest-em');
  const r = await runRest({ model: v1, data: prompts, out, variant: 'em', growSteps: 2, maxPerPrompt: 2, ...small, evalData: null, evalFraction: 0 }, { ...quiet, reward: blue() });
  t.equal(r.config.temperature, 1, 'the given temperature wins over em 0.7');
  t.equal(r.config.topK, 40, "em's top-k");
  const lines = readJsonl(r.metricsFile);
  for (const g of [1, 2]) {
    const samples = readJsonl(path.join(out, `grow-${g}`, 'samples.jsonl'));
    // Hand-made reference: per prompt, the samples with reward > 0, best first (ties: lower sample index), the first two.
    const want: string[] = [];
    let capped = 0;
    for (const line of [...new Set(samples.map((s) => s.source_line))]) {
      const pass = samples.filter((s) => s.source_line === line && s.reward > 0).sort((a, b) => b.reward - a.reward || a.sample - b.sample);
      capped += Math.max(0, pass.length - 2);
      want.push(...pass.slice(0, 2).map(key));
    }
    const rows = readJsonl(path.join(out, `grow-${g}`, 'improve-1', 'sft.jsonl'));
    t.same(new Set(rows.map(key)), new Set(want), `grow ${g}: ${want.length} rows, the best two passing samples of each prompt`);
    t.ok(rows.every((x) => x.reward > 0 && x.grow === g));
    t.match(
      lines.find((m) => m.phase === 'improve' && m.grow === g),
      { threshold: 0, strict: true, kept: want.length, capped },
    );
    t.ok(capped > 0, `the cap dropped ${capped} passing samples`);
    t.equal(JSON.parse(fs.readFileSync(path.join(out, `grow-${g}`, 'improve-1', 'sft_config.json'), 'utf8')).adapter, null, `grow ${g} trains a new adapter on the base`);
  }
  // Iteration 2 = SFT of the base on iteration 2's rows, seeded seed + 2; not a continuation of iteration 1's adapter.
  const redo = (adapter: string | null, dir: string) => {
    const c: SftConfig = { ...sft, model: v1, adapter, data: path.join(out, 'grow-2', 'improve-1', 'sft.jsonl'), out: path.join(tmp, dir), seed: 42 + 2, device: 'cpu' };
    if (adapter) delete c.loraR, delete c.loraAlpha;
    return runSft(c, quiet);
  };
  await redo(null, 'em-redo-base');
  await redo(path.join(out, 'grow-1', 'improve-1'), 'em-redo-continued');
  const mine = bytes(path.join(out, 'grow-2', 'improve-1', 'adapter_model.safetensors'));
  t.ok(bytes(path.join(tmp, 'em-redo-base', 'adapter_model.safetensors')).equals(mine), 'iteration 2 = SFT from the base');
  t.notOk(bytes(path.join(tmp, 'em-redo-continued', 'adapter_model.safetensors')).equals(mine), 'not SFT continued from iteration 1');
  t.same(r.policy, { model: v1, adapter: path.join(out, 'grow-2', 'improve-1') });
});

t.test('a threshold nothing reaches: no SFT, the policy unchanged', async (t) => {
  const out = path.join(tmp, 'rest-none');
  const logs: string[] = [];
  const r = await runRest({ model: v1, data: prompts, out, ...small, samplesPerPrompt: 2, evalData: null, evalFraction: 0, thresholds: [100] }, { ...quiet, reward: blue(), log: (l) => logs.push(l) });
  t.same(r.policy, { model: v1, adapter: null });
  t.equal(fs.readFileSync(path.join(out, 'grow-1', 'improve-1', 'sft.jsonl'), 'utf8'), '');
  t.notOk(fs.existsSync(path.join(out, 'grow-1', 'improve-1', 'adapter_config.json')));
  t.ok(logs.some((l) => /no sample reached the threshold >= 100; the policy is unchanged/.test(l)));
  t.match(readJsonl(r.metricsFile).find((m) => m.phase === 'improve'), { kept: 0, mean_kept_reward: null, sft_steps: 0 });
});

t.test('bad input: E_DATA naming file:line before anything is written', async (t) => {
  const out = path.join(tmp, 'rest-bad');
  const file = path.join(tmp, 'bad.jsonl');
  fs.writeFileSync(file, [JSON.stringify({ prompt: 'Colours 1:' }), '{"prompt": "x"'].join('\n') + '\n');
  const e = (await runRest({ model: v1, data: file, out, ...small }, { ...quiet, reward: blue() }).catch((e) => e)) as RlhfError;
  t.equal(e.code, 'E_DATA');
  t.match(e.message, /bad\.jsonl:2: invalid JSON/);
  t.notOk(fs.existsSync(out));
});

t.test('CLI: rest with a score-head reward model; a bad flag value', { skip: !cliBuilt() && 'CLI not compiled' }, async (t) => {
  const out = path.join(tmp, 'rest-cli');
  const r = runCli([
    'rest', '--model', v1, '--data', prompts, '--reward-model', rm, '--out', out, '--samples-per-prompt', '2', '--quantiles', '0.5,0.8', '--max-new-tokens', '6',
    '--steps', '2', '--batch-size', '8', '--lora-r', '4', '--eval-fraction', '0.25', '--device', 'cpu',
  ]);
  t.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  t.equal(lines.length, 1, 'one summary line');
  t.match(lines[0], new RegExp(`^rest: 1 Grow step of 18 prompts x 2 samples in \\S+s; held-out mean reward \\S+ -> \\S+ \\(6 prompts\\); policy: LoRA adapter ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/grow-1/improve-2$`));
  t.match(r.stderr, /rest grow 1\/1: reward mean/);
  t.match(r.stderr, /rest grow 1 improve 2: reward >= \S+ keeps \d+ samples of \d+ prompts; 2 SFT steps/);
  t.equal(readJsonl(path.join(out, 'grow-1', 'samples.jsonl')).length, 36);
  const bad = runCli(['rest', '--model', v1, '--data', prompts, '--reward-model', rm, '--out', path.join(tmp, 'rest-cli-bad'), '--thresholds', '0.9,0.5', '--device', 'cpu']);
  t.equal(bad.status, 1);
  t.equal(bad.stderr.trim(), 'rlhf-native: error E_ARGUMENT: --thresholds must rise (each value above the one before), got 0.9,0.5');
});
