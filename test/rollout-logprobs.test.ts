/**
 * The log-probs the sampler records (model.generate's `logprobs`: the KV-cache
 * decode path over left-padded prompts) equal the training forward's
 * (trainer.forward with logp at the same temperature: right-padded full
 * sequences, the backward's activations kept) for every token, within 1e-5,
 * on the committed demo base with a LoRA policy whose B matrices are nonzero:
 * batched prompts of different lengths, responses ending at EOS after
 * different numbers of tokens (and some cut at the budget), temperatures 1
 * and 0.7. That is what lets the online stages use the sampler's log-probs as
 * the old policy's: the first inner update's importance ratio is then 1.
 *
 * That ratio is checked on the stages themselves, one iteration each with one
 * minibatch and one pass (grpo with estimator grpo and rloo, ppo with its
 * default --rollout-logprobs): the iteration's ratio is 1, clipfrac 0 and
 * approxkl ~0; and directly, per token, exp(training logp - recorded logp)
 * over the samples the stages' own rollout functions return. PPO with
 * --no-rollout-logprobs (a policy forward for old_logp) gives the same
 * iteration within the same bound.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadModel, type Model } from '../lib/engine/model';
import type { Trainer } from '../lib/engine/train';
import { demoBaseDir } from '../lib/demo/base';
import { loadTokenizer } from '../lib/tokenizer/tokenizer';
import { loadPrompts } from '../lib/data/prompts';
import { functionReward } from '../lib/reward/sources';
import { runGrpo } from '../lib/stages/grpo/run';
import { resolveGrpoConfig, type GrpoConfig, type GrpoStepMetrics, type ResolvedGrpoConfig } from '../lib/stages/grpo/config';
import { sampleGroups, scoreGroups, type GrpoEnv } from '../lib/stages/grpo/rollout';
import { runPpo, type PpoStepMetrics } from '../lib/stages/ppo';
import { resolvePpoConfig } from '../lib/stages/ppo/config';
import { sampleResponses, scoreResponses, type RolloutEnv } from '../lib/stages/ppo/rollout';
import { Rng } from './helpers/ref';
import yargs from 'yargs';
import { addCliOptions, configFromArgv } from '../lib/train/options';
import { PPO_OPTIONS } from '../lib/stages/ppo/config';

const BASE = demoBaseDir();
const TOL = 1e-5;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-rollout-logp-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const adapterDir = path.join(tmp, 'policy');
const promptsFile = path.join(tmp, 'prompts.jsonl');

// Questions of the demo world's kinds, of different lengths (the chat template adds the same frame to each).
const QUESTIONS = [
  'What is 3 plus 4?',
  'Hi',
  'Tell me about the red fox and the river.',
  'Spell fish backwards.',
  'Which animal lives near the old mill by the lake, and what does it eat in the winter?',
  'How many letters are in the word apple?',
];
const MAX_NEW = 14;

/** The demo base with a LoRA policy, its B matrices drawn so that the policy is not the base. */
async function policyModel(): Promise<{ m: Model; tr: Trainer }> {
  const m = await loadModel(BASE, { device: 'cpu' });
  const tr = m.trainer();
  tr.createLora({ name: 'policy', r: 8, alpha: 16, seed: 5 });
  const rng = new Rng(77);
  for (const { name, shape } of tr.trainable()) if (name.includes('lora_B')) tr.write(name, rng.normals(shape.reduce((a, b) => a * b, 1), 0.03));
  return { m, tr };
}

t.before(async () => {
  const { m, tr } = await policyModel();
  await tr.saveLora(adapterDir, BASE);
  m.dispose();
  fs.writeFileSync(promptsFile, QUESTIONS.map((q) => JSON.stringify({ prompt: [{ role: 'user', content: q }] })).join('\n') + '\n');
});

/** max over response tokens of |recorded - forward|, and of |exp(forward - recorded) - 1|: the training forward of a Trainer (or a Model's inference forward). */
async function compare(tr: Trainer | Model, prompts: number[][], responses: number[][], recorded: ArrayLike<number>[], temperature: number) {
  const f = await tr.forward({ inputIds: prompts.map((p, b) => [...p, ...responses[b]]), logp: true, temperature });
  let diff = 0, ratio = 0, tokens = 0;
  responses.forEach((r, b) => {
    for (let j = 0; j < r.length; j++, tokens++) {
      const train = f.logp![b][prompts[b].length - 1 + j];
      diff = Math.max(diff, Math.abs(train - recorded[b][j]));
      ratio = Math.max(ratio, Math.abs(Math.exp(train - recorded[b][j]) - 1));
    }
  });
  return { diff, ratio, tokens };
}

t.test('generate\'s log-probs equal the training forward\'s for every token (demo base, LoRA policy, batched left-padded prompts)', async (t) => {
  const { m, tr } = await policyModel();
  t.teardown(() => m.dispose());
  const tok = loadTokenizer(BASE);
  const prompts = QUESTIONS.map((q) => tok.encode(tok.applyChatTemplate([{ role: 'user', content: q }], { addGenerationPrompt: true }), { addSpecialTokens: false }));
  t.ok(new Set(prompts.map((p) => p.length)).size >= 5, `prompts of ${[...new Set(prompts.map((p) => p.length))].join(', ')} tokens`);
  const eosIds = m.config.eosTokenIds;

  // The adapter matters: the policy's log-probs of a sampled response differ from the base's.
  const probe = await m.generate({ prompts, maxNewTokens: MAX_NEW, temperature: 1, seed: 1, eosIds });
  tr.useAdapter(null);
  const baseLp = await compare(m, prompts, probe.tokens.map((x) => Array.from(x)), probe.logprobs, 1);
  tr.useAdapter('policy');
  t.ok(baseLp.diff > 0.05, `the policy is not the base (max |policy - base| log-prob ${baseLp.diff.toFixed(3)})`);

  let worst = 0;
  for (const temperature of [1, 0.7])
    for (const seed of [11, 12]) {
      const g = await m.generate({ prompts, maxNewTokens: MAX_NEW, temperature, seed, eosIds });
      const responses = g.tokens.map((x) => Array.from(x));
      const eosLens = new Set(responses.filter((_, b) => g.finish[b] === 'eos').map((r) => r.length));
      t.ok(eosLens.size >= 2, `T ${temperature}, seed ${seed}: responses end at EOS after ${[...eosLens].join(', ')} tokens; finish ${g.finish.join(' ')}`);
      t.same(g.logprobs.map((l) => l.length), responses.map((r) => r.length), 'one log-prob per generated token');
      const c = await compare(tr, prompts, responses, g.logprobs, temperature);
      worst = Math.max(worst, c.diff);
      t.ok(c.diff <= TOL, `T ${temperature}, seed ${seed}: max |generate - training| log-prob over ${c.tokens} tokens = ${c.diff.toExponential(2)} <= ${TOL}`);
    }
  // Greedy decoding (temperature 0) still reports the log-probs of the untempered softmax.
  const g0 = await m.generate({ prompts, maxNewTokens: MAX_NEW, temperature: 0, eosIds });
  const c0 = await compare(tr, prompts, g0.tokens.map((x) => Array.from(x)), g0.logprobs, 1);
  t.ok(c0.diff <= TOL, `greedy: max |generate - training (T 1)| = ${c0.diff.toExponential(2)}`);
  t.comment(`max |rollout logp - training logp| over every case: ${worst.toExponential(3)}`);
});

const reward = () => functionReward((b) => b.map((x) => (x.responseIds.filter((id) => id % 3 === 0).length % 4) / 2), 'thirds');
const quiet = { handleSigint: false, log: () => {} };

t.test('grpo (estimators grpo and rloo): the first update\'s ratio is 1; per token, exp(train - rollout) is 1 within 1e-5', async (t) => {
  for (const estimator of ['grpo', 'rloo'] as const) {
    const seen: GrpoStepMetrics[] = [];
    const cfg = {
      model: BASE,
      data: promptsFile,
      adapter: adapterDir,
      estimator,
      numGenerations: 3,
      batchSize: 2,
      iterations: 1,
      numIterations: 1,
      maxNewTokens: MAX_NEW,
      temperature: 1,
      beta: estimator === 'grpo' ? 0.04 : 0,
      lr: 1e-3,
      seed: 3,
      device: 'cpu' as const,
    };
    const r = await runGrpo({ ...cfg, out: path.join(tmp, `grpo-${estimator}`) }, { ...quiet, reward: reward(), onStep: (m) => seen.push(m) });
    t.equal(r.optimizerSteps, 1, `${estimator}: one minibatch, one pass`);
    const m0 = seen[0];
    // rloo's ratio is of whole sequences: exp of a sum of up to MAX_NEW per-token differences.
    const ratioTol = estimator === 'rloo' ? MAX_NEW * TOL : TOL;
    t.ok(Math.abs(m0.ratio - 1) <= ratioTol, `${estimator}: metrics ratio ${m0.ratio} is 1 within ${ratioTol}`);
    t.equal(m0.clipfrac, 0, `${estimator}: clipfrac 0`);
    t.ok(m0.approxkl <= 0.5 * ratioTol ** 2, `${estimator}: approxkl ${m0.approxkl.toExponential(2)} ~ 0`);
    t.ok(m0.samples === 6 && m0.grad_norm > 0, `${estimator}: 6 samples trained on (grad norm ${m0.grad_norm.toFixed(4)})`);

    // Directly, per token, through the stage's rollout functions.
    const model = await loadModel(BASE, { device: 'cpu' });
    try {
      const trainer = model.trainer();
      trainer.loadLora(adapterDir, 'policy');
      trainer.useAdapter('policy');
      const tok = loadTokenizer(BASE);
      const prompts = loadPrompts(promptsFile, { tokenizer: tok, maxPromptTokens: 100 });
      // Resolved as a run with a RewardSource in its hooks does (the env's reward is the function).
      const rcfg = (resolveGrpoConfig as (c: GrpoConfig, o: { rewardSource: boolean }) => ResolvedGrpoConfig)({ ...cfg, out: path.join(tmp, 'unused') }, { rewardSource: true });
      const env: GrpoEnv = { cfg: rcfg, model, trainer, tok, reward: reward(), eosIds: model.config.eosTokenIds };
      const b = await sampleGroups(env, prompts.slice(0, 2), 3, 99);
      const sg = await scoreGroups(env, b);
      t.ok(sg.samples.every((s, i) => s.oldLogp === b.logprobs[i]), `${estimator}: the samples' old log-probs are the sampler's`);
      const c = await compare(trainer, sg.samples.map((s) => s.prompt.ids), sg.samples.map((s) => s.response), sg.samples.map((s) => s.oldLogp), 1);
      t.ok(c.ratio <= TOL, `${estimator}: per-token max |exp(train - rollout) - 1| over ${c.tokens} tokens = ${c.ratio.toExponential(2)}`);
    } finally {
      model.dispose();
    }
  }
});

t.test('ppo (--rollout-logprobs, the default): the first update\'s ratio is 1; --no-rollout-logprobs gives the same iteration', async (t) => {
  const cfg = {
    model: BASE,
    data: promptsFile,
    adapter: adapterDir,
    iterations: 1,
    batchSize: 6,
    miniBatchSize: 6,
    ppoEpochs: 1,
    maxNewTokens: MAX_NEW,
    temperature: 0.7,
    lr: 1e-3,
    seed: 4,
    device: 'cpu' as const,
  };
  t.equal(resolvePpoConfig({ ...cfg, out: path.join(tmp, 'x') }).rolloutLogprobs, true, 'rolloutLogprobs defaults to true');
  const run = async (rolloutLogprobs: boolean) => {
    const seen: PpoStepMetrics[] = [];
    await runPpo({ ...cfg, rolloutLogprobs, out: path.join(tmp, `ppo-${rolloutLogprobs}`) }, { ...quiet, reward: reward(), onStep: (m) => seen.push(m) });
    return seen[0];
  };
  const on = await run(true), off = await run(false);
  for (const [what, m] of [['sampler log-probs', on], ['policy forward', off]] as const) {
    t.ok(Math.abs(m.ratio - 1) <= TOL, `${what}: ratio ${m.ratio} is 1 within ${TOL}`);
    t.equal(m.clipfrac, 0, `${what}: clipfrac 0`);
    t.ok(m.approxkl <= 0.5 * TOL ** 2, `${what}: approxkl ${m.approxkl.toExponential(2)} ~ 0`);
  }
  t.equal(on.reward, off.reward, 'the same samples (the same rewards)');
  t.equal(on.response_length, off.response_length, 'the same response lengths');
  // The rollout KL sums per-token log-ratios: the two old_logp differ by <= 1e-5 a token.
  t.ok(Math.abs(on.kl - off.kl) <= MAX_NEW * TOL, `rollout KL ${on.kl} vs ${off.kl}`);
  t.ok(Math.abs(on.pg_loss - off.pg_loss) <= 1e-4, `pg_loss ${on.pg_loss} vs ${off.pg_loss}`);

  // Directly, per token, through PPO's rollout functions.
  const model = await loadModel(BASE, { device: 'cpu' });
  try {
    const trainer = model.trainer();
    trainer.loadLora(adapterDir, 'policy');
    const tok = loadTokenizer(BASE);
    const rows = loadPrompts(promptsFile, { tokenizer: tok, maxPromptTokens: 100 });
    const rcfg = resolvePpoConfig({ ...cfg, out: path.join(tmp, 'unused') });
    const env: RolloutEnv = { cfg: rcfg, model, trainer, tok, reward: reward(), eosIds: model.config.eosTokenIds };
    const s = await sampleResponses(env, rows, 5);
    const sc = await scoreResponses(env, s, promptsFile, false);
    t.ok(sc.oldLogp.every((lp, b) => lp === s.logprobs[b]), "old_logp is the sampler's (no forward)");
    trainer.useAdapter('policy');
    const c = await compare(trainer, rows.map((p) => p.ids), s.responses, sc.oldLogp, 0.7);
    t.ok(c.ratio <= TOL, `per-token max |exp(train - rollout) - 1| over ${c.tokens} tokens = ${c.ratio.toExponential(2)}`);
    const fwd = await scoreResponses(env, s, promptsFile, false, false);
    const d = Math.max(...fwd.oldLogp.flatMap((lp, b) => Array.from(lp, (x, j) => Math.abs(x - s.logprobs[b][j]))));
    t.ok(d <= TOL, `with the forward instead: old_logp within ${d.toExponential(2)} of the sampler's`);
  } finally {
    model.dispose();
  }
});

t.test('ppo: --rollout-logprobs / --no-rollout-logprobs reach the config', async (t) => {
  const parse = (...flags: string[]) =>
    resolvePpoConfig(configFromArgv(PPO_OPTIONS, addCliOptions(yargs([]), PPO_OPTIONS).parseSync(['--model', 'm', '--data', 'd', '--out', 'o', ...flags]) as Record<string, unknown>)).rolloutLogprobs;
  t.equal(parse(), true, 'default: on');
  t.equal(parse('--no-rollout-logprobs'), false, '--no-rollout-logprobs');
  t.equal(parse('--rollout-logprobs'), true, '--rollout-logprobs');
  t.equal(parse('--rollout-logprobs', 'false'), false, '--rollout-logprobs false');
});
