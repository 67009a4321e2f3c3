/**
 * Exact resume of the ReST stage: a run stopped through the abort signal
 * (after Grow step 1, or inside an Improve step of Grow step 2) and resumed
 * from its checkpoint writes the metrics.jsonl of an uninterrupted run line
 * for line (timings aside) and ends with a byte-identical adapter; for ReST
 * and ReST-EM. Also the rest recipe: sft -> rm -> rest, ReST sampling the
 * merged SFT model scored by the recipe's reward model.
 */
import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initModel } from '../lib/model/init';
import { runRest, type RestConfig, type RestMetrics } from '../lib/stages/rest/stage';
import { functionReward } from '../lib/reward/sources';
import { listCheckpoints } from '../lib/run/atomic';
import { resolveRecipeConfig } from '../lib/recipes/config';
import { runRecipe } from '../lib/recipes/run';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-rest-resume-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'base');
const prompts = path.join(tmp, 'prompts.jsonl');

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 4, dtype: 'F32' });
  fs.writeFileSync(prompts, Array.from({ length: 10 }, (_, i) => JSON.stringify({ prompt: `Tell me about ${i}` })).join('\n') + '\n');
});

const TIMING = /per_sec|elapsed|seconds|_s$/;
const metrics = (dir: string) =>
  fs
    .readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.stringify(Object.fromEntries(Object.entries(JSON.parse(l)).filter(([k]) => !TIMING.test(k)))));
const bytes = (f: string) => fs.readFileSync(f);
// Ids divisible by 3, halved, plus a tenth of the response length: rewards with few ties.
const thirds = () => functionReward((b) => b.map((x) => x.responseIds.filter((id) => id % 3 === 0).length / 2 + x.responseIds.length / 10), 'thirds');
const quiet = { handleSigint: false, log: () => {} };

const restCfg: Omit<RestConfig, 'out'> = {
  model: base,
  data: prompts,
  growSteps: 3,
  samplesPerPrompt: 3,
  quantiles: [0.3, 0.8],
  maxNewTokens: 4,
  evalFraction: 0.2,
  seed: 6,
  device: 'cpu',
  sft: { steps: 2, batchSize: 4, lr: 1e-3, loraR: 4, loraAlpha: 8 },
};

/** An uninterrupted run, a run stopped where `stopAt` says, and its resumption: the same metrics and final adapter. */
async function stopAndResume(t: Test, name: string, cfg: Omit<RestConfig, 'out'>, stopAt: (m: RestMetrics) => boolean, finalAdapter: string) {
  const straight = path.join(tmp, `${name}-straight`), cut = path.join(tmp, `${name}-cut`);
  const a = await runRest({ ...cfg, out: straight }, { ...quiet, reward: thirds() });
  t.equal(a.growSteps, 3);
  const ac = new AbortController();
  const b1 = await runRest({ ...cfg, out: cut }, { ...quiet, reward: thirds(), signal: ac.signal, onMetrics: (m) => stopAt(m) && ac.abort() });
  t.ok(b1.interrupted, 'stopped');
  t.equal(b1.growSteps, 1, 'after Grow step 1');
  t.same(listCheckpoints(path.join(cut, 'checkpoints')).map((c) => c.step), [1], 'a checkpoint after Grow step 1');
  const logs: string[] = [];
  const b2 = await runRest({ ...cfg, out: cut, resume: true }, { handleSigint: false, reward: thirds(), log: (l) => logs.push(l) });
  t.ok(logs.some((l) => /: resuming after Grow step 1 /.test(l)), 'logged: resuming after Grow step 1');
  t.equal(b2.resumedFrom, 1);
  t.equal(b2.growSteps, 3);
  t.notOk(b2.interrupted);
  t.equal(b2.initialReward, a.initialReward, 'the held-out reward before training, from the checkpoint');
  t.equal(b2.finalReward, a.finalReward);
  t.same(b2.growStats.map((s) => s.meanReward), a.growStats.map((s) => s.meanReward));
  t.same(b2.policy, { model: base, adapter: path.join(cut, finalAdapter) });
  t.same(metrics(cut), metrics(straight), 'metrics.jsonl equal line for line, timings aside');
  t.ok(bytes(path.join(cut, finalAdapter, 'adapter_model.safetensors')).equals(bytes(path.join(straight, finalAdapter, 'adapter_model.safetensors'))), 'the final adapter is byte-identical');
}

t.test('rest: stopped inside Grow step 2 (an abort in its second Improve step), resumed: Grow step 2 is done again', async (t) => {
  await stopAndResume(t, 'rest-mid', restCfg, (m) => m.phase === 'sft' && m.grow === 2 && m.improve === 2 && m.step === 1, 'grow-3/improve-2');
});

t.test('rest-em: stopped after Grow step 1, resumed: the same run', async (t) => {
  await stopAndResume(t, 'em-after', { ...restCfg, variant: 'em', quantiles: null, samplesPerPrompt: 4, maxPerPrompt: 2 }, (m) => m.phase === 'iteration' && m.grow === 1, 'grow-3/improve-1');
});

t.test('the rest recipe: sft -> rm -> rest on the merged SFT model, scored by the recipe\'s reward model', async (t) => {
  const names = ['Ann', 'Bob', 'Cid', 'Dee', 'Eve', 'Fay', 'Gus', 'Hal'];
  const w = (f: string, rows: object[]) => fs.writeFileSync(path.join(tmp, f), rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  w('greet-sft.jsonl', names.map((n) => ({ prompt: `Greet ${n}.`, completion: ` Hello ${n}.` })));
  w('greet-pairs.jsonl', names.map((n) => ({ prompt: `Greet ${n}.`, chosen: ` Hello ${n}.`, rejected: ` Go away ${n}.` })));
  w('greet-prompts.jsonl', names.map((n) => ({ prompt: `Greet ${n}.` })));
  const out = path.join(tmp, 'recipe');
  const r = await runRecipe(
    resolveRecipeConfig({
      recipe: 'rest',
      model: base,
      out,
      seed: 1,
      device: 'cpu',
      sft: { data: path.join(tmp, 'greet-sft.jsonl'), steps: 2, batch_size: 4 },
      rm: { data: path.join(tmp, 'greet-pairs.jsonl'), steps: 2, batch_size: 4 },
      rest: { data: path.join(tmp, 'greet-prompts.jsonl'), samples_per_prompt: 2, quantiles: [0.2, 0.6], max_new_tokens: 4, eval_fraction: 0.25, steps: 1, batch_size: 4 },
    }),
    { log: () => {}, progress: false, handleSigint: false },
  );
  t.notOk(r.interrupted);
  t.same(r.stages.map((s) => s.name), ['sft', 'rm', 'rest']);
  const cfg = JSON.parse(fs.readFileSync(path.join(out, 'rest', 'rest_config.json'), 'utf8'));
  t.equal(path.resolve(cfg.model), path.resolve(out, 'sft', 'merged'), 'ReST samples the merged SFT model');
  t.equal(path.resolve(cfg.rewardModel), path.resolve(out, 'rm'), "scored by the recipe's reward model");
  t.same(cfg.quantiles, [0.2, 0.6], 'a YAML-style list of numbers');
  const rest = r.stages.find((s) => s.name === 'rest')!;
  t.equal(path.resolve(rest.outputs.adapter), path.resolve(out, 'rest', 'grow-1', 'improve-2'), 'the policy adapter is the output');
  const summary = JSON.parse(fs.readFileSync(path.join(out, 'summary.json'), 'utf8'));
  t.equal(typeof summary.stages.rest.eval.reward_before, 'number');
  t.equal(typeof summary.stages.rest.eval.reward_after, 'number');
});
