/**
 * The grpo stage stopped and resumed, and its option errors.
 *
 * Resume: a run (estimator grpo, two passes over each batch, two minibatches
 * per pass, a KL term, held-out evaluation, a linear schedule) stopped by an
 * abort after iteration 1 and resumed from its checkpoint writes the
 * metrics.jsonl of an uninterrupted run line for line (timings aside) and
 * ends with a bit-identical adapter: sampling and shuffles are seeded by
 * (seed, iteration), and the checkpoint holds the adapter, its AdamW state
 * and the optimizer-step counter (the schedule).
 *
 * Errors: bad options are E_ARGUMENT naming the flag, from the API and from
 * the CLI's flags alike.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import yargs from 'yargs';
import { initModel } from '../lib/model/init';
import { runGrpo } from '../lib/stages/grpo/run';
import { GRPO_OPTIONS, resolveGrpoConfig as resolveConfig, type GrpoConfig, type ResolvedGrpoConfig } from '../lib/stages/grpo/config';
import { addCliOptions, configFromArgv } from '../lib/train/options';
import { functionReward } from '../lib/reward/sources';
import { StageCheckpoints } from '../lib/stages/checkpoints';
import { listCheckpoints } from '../lib/run/atomic';
import { RlhfError } from '../lib/errors';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-grpo-resume-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'base');
const prompts = path.join(tmp, 'prompts.jsonl');
const held = path.join(tmp, 'held.jsonl');

t.before(async () => {
  await initModel({ arch: 'llama', preset: 'tiny', outDir: base, seed: 4, dtype: 'F32' });
  fs.writeFileSync(prompts, Array.from({ length: 8 }, (_, i) => JSON.stringify({ prompt: `Tell me about ${i}` })).join('\n') + '\n');
  fs.writeFileSync(held, Array.from({ length: 3 }, (_, i) => JSON.stringify({ prompt: `Why ${i}?` })).join('\n') + '\n');
});

// The options as a run with a RewardSource in its hooks resolves them (the reward is the hook's, not an option).
const resolveGrpoConfig = (c: GrpoConfig): ResolvedGrpoConfig => (resolveConfig as (c: GrpoConfig, o: { rewardSource: boolean }) => ResolvedGrpoConfig)(c, { rewardSource: true });

const TIMING = /per_sec|elapsed|seconds|_s$/;
const metrics = (dir: string) =>
  fs
    .readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.stringify(Object.fromEntries(Object.entries(JSON.parse(l)).filter(([k]) => !TIMING.test(k)))));
const bytes = (f: string) => fs.readFileSync(f);
// Varied rewards within a group (so the advantages are not all 0 and the adapter moves).
const thirds = () => functionReward((b) => b.map((x) => x.responseIds.filter((id) => id % 3 === 0).length / 2), 'thirds');
const quiet = { handleSigint: false, log: () => {} };

const cfg: Omit<GrpoConfig, 'out'> = {
  model: base,
  data: prompts,
  evalData: held,
  estimator: 'grpo',
  iterations: 3,
  batchSize: 2,
  numGenerations: 3,
  miniBatchSize: 3,
  numIterations: 2,
  maxNewTokens: 4,
  beta: 0.04,
  lr: 2e-3,
  loraR: 4,
  loraAlpha: 8,
  seed: 5,
  device: 'cpu',
};

t.test('grpo: stopped by an abort after iteration 1, resumed: the same metrics and a bit-identical adapter', async (t) => {
  const straight = path.join(tmp, 'straight'), cut = path.join(tmp, 'cut');
  const a = await runGrpo({ ...cfg, out: straight }, { ...quiet, reward: thirds() });
  t.equal(a.steps, 3, 'three iterations');
  t.ok(a.eval, 'held-out evaluation before and after');
  t.equal(a.optimizerSteps, 3 * 2 * 2, 'three iterations of two passes of two minibatches');
  const lines = metrics(straight).map((l) => JSON.parse(l));
  t.ok(lines.some((m) => m.frac_reward_zero_std < 1 && m.grad_norm > 0), 'some groups had varied rewards: the updates moved the adapter');

  const ac = new AbortController();
  const b1 = await runGrpo({ ...cfg, out: cut }, { ...quiet, reward: thirds(), signal: ac.signal, onStep: (m) => m.step === 1 && ac.abort() });
  t.ok(b1.interrupted, 'stopped');
  t.equal(b1.steps, 1, 'after the iteration that was running');
  const cks = listCheckpoints(path.join(cut, 'checkpoints'));
  t.same(cks.map((c) => c.step), [1], 'a checkpoint written on the stop');
  t.equal(StageCheckpoints.damage(cks[0].dir, 1), null, 'complete: every file matches the manifest');
  const manifest = JSON.parse(fs.readFileSync(path.join(cks[0].dir, 'manifest.json'), 'utf8'));
  t.same(manifest.adapters, ['policy'], 'one adapter: no critic');
  for (const f of ['policy/trainable.safetensors', 'policy/optimizer.safetensors', 'trainer_state.json']) t.ok(manifest.files[f], f);
  const state = JSON.parse(fs.readFileSync(path.join(cks[0].dir, 'trainer_state.json'), 'utf8')).extra;
  t.equal(state.state.optSteps, 4, 'the optimizer-step counter (the lr schedule)');

  const logs: string[] = [];
  const b2 = await runGrpo({ ...cfg, out: cut, resume: true }, { handleSigint: false, reward: thirds(), log: (l) => logs.push(l) });
  t.ok(logs.some((l) => /^grpo: resuming after iteration 1 /.test(l)), 'logged: resuming after iteration 1');
  t.equal(b2.resumedFrom, 1, 'resumed from iteration 1');
  t.equal(b2.steps, 3, 'to the end');
  t.notOk(b2.interrupted, 'not interrupted');
  t.equal(b2.optimizerSteps, a.optimizerSteps, 'the same optimizer steps');
  t.same(b2.eval, a.eval, 'the same held-out evaluation before and after');
  t.equal(b2.initialReward, a.initialReward, 'the first iteration\'s reward, from the checkpoint');
  t.equal(b2.finalReward, a.finalReward, 'the same last reward');
  t.same(metrics(cut), metrics(straight), 'metrics.jsonl equal line for line, timings aside');
  t.ok(bytes(path.join(cut, 'adapter_model.safetensors')).equals(bytes(path.join(straight, 'adapter_model.safetensors'))), 'adapter_model.safetensors: bit-identical');
});

for (const estimator of ['rloo', 'reinforce_pp'] as const)
  t.test(`${estimator}: stopped after iteration 1 and resumed: the same metrics and a bit-identical adapter`, async (t) => {
    const c = { ...cfg, estimator, beta: 0.05 };
    const straight = path.join(tmp, `${estimator}-straight`), cut = path.join(tmp, `${estimator}-cut`);
    const a = await runGrpo({ ...c, out: straight }, { ...quiet, reward: thirds() });
    t.equal(a.steps, 3, 'three iterations');
    const ac = new AbortController();
    const b1 = await runGrpo({ ...c, out: cut }, { ...quiet, reward: thirds(), signal: ac.signal, onStep: (m) => m.step === 1 && ac.abort() });
    t.equal(b1.steps, 1, 'stopped after iteration 1');
    const b2 = await runGrpo({ ...c, out: cut, resume: true }, { ...quiet, reward: thirds() });
    t.equal(b2.resumedFrom, 1, 'resumed from iteration 1');
    t.same(metrics(cut), metrics(straight), 'metrics.jsonl equal line for line, timings aside');
    t.ok(bytes(path.join(cut, 'adapter_model.safetensors')).equals(bytes(path.join(straight, 'adapter_model.safetensors'))), 'adapter_model.safetensors: bit-identical');
  });

t.test('grpo options: bad values are E_ARGUMENT naming the flag', async (t) => {
  const ok: GrpoConfig = { model: 'm', data: 'd', out: 'o' };
  const bad: [Partial<GrpoConfig>, RegExp][] = [
    [{ numGenerations: 1 }, /^--num-generations must be an integer >= 2/],
    [{ numGenerations: 2.5 }, /^--num-generations /],
    [{ estimator: 'rloo', lossType: 'dapo' }, /^--loss-type applies to the token-level estimators/],
    [{ estimator: 'rloo', scaleRewards: 'none' }, /^--scale-rewards applies to --estimator grpo/],
    [{ estimator: 'grpo', normalizeAdvantages: true }, /^--normalize-advantages applies to --estimator rloo/],
    [{ estimator: 'ppo' as never }, /^--estimator must be one of grpo, rloo, reinforce_pp/],
    [{ lossType: 'sum' as never }, /^--loss-type must be one of dapo, bnpo, grpo, dr_grpo/],
    [{ epsilonHigh: 0 }, /^--epsilon-high /],
    [{ epsilonHigh: -0.1 }, /^--epsilon-high /],
    [{ epsilon: 1 }, /^--epsilon /],
    [{ epsilon: 0 }, /^--epsilon /],
    [{ beta: -0.01 }, /^--beta /],
    [{ temperature: 0 }, /^--temperature /],
    [{ batchSize: 2, numGenerations: 4, miniBatchSize: 9 }, /^--mini-batch-size must be an integer in \[0, 8\]/],
    [{ batchSize: 2, numGenerations: 4, miniBatchSize: 4, microBatchSize: 5 }, /^--micro-batch-size must be a positive integer <= the samples of an optimizer step \(4\)/],
    [{ numIterations: 0 }, /^--num-iterations /],
    [{ scaleRewards: 'std' as never }, /^--scale-rewards must be one of group, batch, none/],
    [{ out: 'm' }, /^--out must differ from --model/],
  ];
  for (const [over, re] of bad) {
    const e = t.throws(() => resolveGrpoConfig({ ...ok, ...over })) as RlhfError;
    t.ok(e instanceof RlhfError && e.code === 'E_ARGUMENT', `${JSON.stringify(over)}: E_ARGUMENT`);
    t.match(e.message, re, `${JSON.stringify(over)}: ${e.message}`);
  }
  // The estimator-specific options are accepted where they apply.
  t.doesNotThrow(() => resolveGrpoConfig({ ...ok, estimator: 'rloo', normalizeAdvantages: true }));
  t.doesNotThrow(() => resolveGrpoConfig({ ...ok, estimator: 'reinforce_pp', lossType: 'dr_grpo' }));
  t.equal(resolveGrpoConfig({ ...ok, epsilon: 0.25 }).epsilonHigh, 0.25, '--epsilon-high defaults to --epsilon');

  // The same errors from the CLI's flags.
  const fromFlags = (...flags: string[]) =>
    resolveGrpoConfig(configFromArgv(GRPO_OPTIONS, addCliOptions(yargs([]), GRPO_OPTIONS).parseSync(['--model', 'm', '--data', 'd', '--out', 'o', ...flags]) as Record<string, unknown>));
  t.throws(() => fromFlags('--num-generations', '1'), { code: 'E_ARGUMENT', message: /^--num-generations / });
  t.throws(() => fromFlags('--estimator', 'rloo', '--loss-type', 'grpo'), { code: 'E_ARGUMENT', message: /^--loss-type / });
  t.throws(() => fromFlags('--epsilon-high', '0'), { code: 'E_ARGUMENT', message: /^--epsilon-high / });
  t.equal(fromFlags('--no-rollout-logprobs').rolloutLogprobs, false, '--no-rollout-logprobs');

  // No reward at all: refused before anything is loaded or written.
  const out = path.join(tmp, 'no-reward');
  await t.rejects(runGrpo({ model: base, data: prompts, out, device: 'cpu' }, quiet), { code: 'E_ARGUMENT', message: /--reward-model/ });
  t.notOk(fs.existsSync(out), 'no output folder made');
});
