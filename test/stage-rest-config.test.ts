/**
 * ReST's Improve filters against hand-worked float64 values (quantiles by
 * linear interpolation, the rising thresholds, reward >= tau, ReST-EM's
 * reward > 0 and its per-prompt cap), and its options: the defaults of each
 * variant and E_ARGUMENT naming the flag for bad values.
 */
import t from 'tap';
import { improveFilters, quantile, resolveRestConfig, selectKept, REST_DEFAULTS, type Candidate, type RestConfig } from '../lib/stages/rest/stage';
import { configFromArgv } from '../lib/train/options';
import { isStageConfig } from '../lib/train/stage';
import { REST_OPTIONS } from '../lib/stages/rest/config';
import { RlhfError } from '../lib/errors';

t.test('quantile: linear interpolation between order statistics (hand-worked)', async (t) => {
  // Sorted: 1 2 4 7 11; h = 4q.
  const xs = [7, 1, 11, 4, 2];
  t.equal(quantile(xs, 0), 1);
  t.equal(quantile(xs, 0.5), 4, 'h = 2: the middle value');
  t.ok(Math.abs(quantile(xs, 0.7) - 6.4) < 1e-14, `h = 2.8: 4 + 0.8 * (7 - 4) = 6.4 (${quantile(xs, 0.7)})`);
  t.ok(Math.abs(quantile(xs, 0.9) - 9.4) < 1e-14, `h = 3.6: 7 + 0.6 * (11 - 7) = 9.4 (${quantile(xs, 0.9)})`);
  t.equal(quantile(xs, 0.25), 2, 'h = 1');
  t.equal(quantile([3], 0.9), 3, 'one value');
  t.equal(quantile([-0.5, 0.25], 0.5), -0.125, 'negative rewards: -0.5 + 0.5 * 0.75');
});

t.test('improveFilters: quantiles of the Grow set, fixed thresholds, ReST-EM', async (t) => {
  const rewards = Float64Array.from([0.1, 0.9, 0.3, 0.5, 0.7, 0.2]); // sorted 0.1 0.2 0.3 0.5 0.7 0.9; h = 5q
  const f = improveFilters(rewards, { variant: 'rest', thresholds: null, quantiles: [0.5, 0.7, 0.9] });
  // q 0.5: h 2.5 -> 0.3 + 0.5 * 0.2 = 0.4; q 0.7: h 3.5 -> 0.5 + 0.5 * 0.2 = 0.6; q 0.9: h 4.5 -> 0.7 + 0.5 * 0.2 = 0.8
  t.same(f.map((x) => x.strict), [false, false, false]);
  for (const [i, want] of [0.4, 0.6, 0.8].entries()) t.ok(Math.abs(f[i].threshold - want) < 1e-15, `tau_${i + 1} = ${f[i].threshold} (want ${want})`);
  t.same(improveFilters(rewards, { variant: 'rest', thresholds: [0.2, 0.6], quantiles: null }), [{ threshold: 0.2, strict: false }, { threshold: 0.6, strict: false }], 'fixed thresholds, as given');
  t.same(improveFilters(rewards, { variant: 'em', thresholds: null, quantiles: null }), [{ threshold: 0, strict: true }], 'em: reward > 0');
  t.same(improveFilters(rewards, { variant: 'em', thresholds: [1], quantiles: null }), [{ threshold: 1, strict: false }], 'em: reward >= its one threshold');
});

t.test('selectKept: reward >= tau (or > tau), per-prompt cap by reward then sample index, prompt-major order', async (t) => {
  const items: Candidate[] = [
    { prompt: 1, index: 0, reward: 0.5 },
    { prompt: 0, index: 0, reward: 1 },
    { prompt: 0, index: 1, reward: 0 },
    { prompt: 0, index: 2, reward: 1 },
    { prompt: 0, index: 3, reward: 2 },
    { prompt: 1, index: 1, reward: 0.4999 },
    { prompt: 2, index: 0, reward: -1 },
    { prompt: 0, index: 4, reward: 1 },
  ];
  t.same(selectKept(items, { threshold: 0.5, strict: false }, 0), { kept: [1, 3, 4, 7, 0], capped: 0 }, '>= 0.5: prompt 0 samples 0, 2, 3, 4, then prompt 1 sample 0');
  t.same(selectKept(items, { threshold: 0.5, strict: true }, 0), { kept: [1, 3, 4, 7], capped: 0 }, '> 0.5 drops the sample at exactly 0.5');
  t.same(selectKept(items, { threshold: 0, strict: true }, 2), { kept: [1, 4, 0, 5], capped: 2 }, 'cap 2: prompt 0 keeps reward 2 (sample 3) and the first reward-1 sample (0); prompt 1 both');
  t.same(selectKept(items, { threshold: 0, strict: false }, 1), { kept: [4, 0], capped: 5 }, 'cap 1: the best of each prompt; reward 0 passes >= 0');
  t.same(selectKept(items, { threshold: 5, strict: false }, 0), { kept: [], capped: 0 }, 'nothing passes');
});

const base: RestConfig = { model: 'm', data: 'd', out: 'o', rewardModel: 'r' };

t.test('config: the defaults of each variant', async (t) => {
  const c = resolveRestConfig(base);
  t.match(c, { ...REST_DEFAULTS, variant: 'rest', growSteps: 1, samplesPerPrompt: 8, quantiles: [0.5, 0.7, 0.9], thresholds: null, maxPerPrompt: 0, temperature: 1, topK: 0, topP: 1 });
  t.match(c, { combine: 'helpfulness', safetyThreshold: 0.15, rewardBatchSize: 8, evalFraction: 0.1, checkpointSteps: 1, seed: 42, maxNewTokens: 128 });
  const em = resolveRestConfig({ ...base, variant: 'em' });
  t.match(em, { variant: 'em', growSteps: 3, samplesPerPrompt: 32, quantiles: null, thresholds: null, maxPerPrompt: 10, temperature: 0.7, topK: 40 });
  t.same(resolveRestConfig({ ...base, thresholds: [0.1, 0.4] }).quantiles, null, 'given thresholds replace the quantiles');
  t.match(resolveRestConfig({ ...base, variant: 'em', temperature: 1, topK: 0, maxPerPrompt: 0 }), { temperature: 1, topK: 0, maxPerPrompt: 0 }, 'given values win over the variant defaults');
  t.same(resolveRestConfig({ ...base, thresholds: ['0.5', '0.7'] as unknown as number[] }).thresholds, [0.5, 0.7], "the CLI's strings become numbers");
  t.same(resolveRestConfig({ ...base, lr: 1e-3, sft: { lr: 2e-3, epochs: 2 } }).sft, { lr: 2e-3, epochs: 2 }, 'sft wins over the top level');
});

t.test('config: E_ARGUMENT naming the flag', async (t) => {
  const bad: [Partial<RestConfig>, RegExp][] = [
    [{ rewardModel: null }, /^--reward-model is required/],
    [{ variant: 'ppo' as 'em' }, /^--variant must be rest or em, got ppo/],
    [{ growSteps: 0 }, /^--grow-steps must be a positive integer/],
    [{ samplesPerPrompt: 2.5 }, /^--samples-per-prompt must be a positive integer/],
    [{ thresholds: [0.7, 0.5] }, /^--thresholds must rise \(each value above the one before\), got 0.7,0.5/],
    [{ thresholds: [0.5, 0.5] }, /^--thresholds must rise/],
    [{ thresholds: ['0.5', 'high'] as unknown as number[] }, /^--thresholds must be numbers, comma-separated, got 0.5,high/],
    [{ variant: 'em', thresholds: [0.5, 1] }, /^--thresholds takes one value with --variant em/],
    [{ thresholds: [0.5], quantiles: [0.5] }, /^--quantiles cannot be combined with --thresholds/],
    [{ quantiles: [0.5, 1] }, /^--quantiles must be numbers in \[0, 1\), comma-separated, got 0.5,1/],
    [{ quantiles: [0.9, 0.5] }, /^--quantiles must rise/],
    [{ variant: 'em', quantiles: [0.5] }, /^--quantiles does not apply to --variant em/],
    [{ maxPerPrompt: -1 }, /^--max-per-prompt must be a non-negative integer/],
    [{ temperature: 0 }, /^--temperature must be > 0/],
    [{ topK: -1 }, /^--top-k/],
    [{ combine: 'llama2' }, /^--combine llama2 needs --safety-model/],
    [{ full: true, adapter: 'a' }, /^--adapter and --full cannot be combined/],
    [{ full: true, sft: { loraR: 4 } }, /^LoRA options do not apply with --full: --lora-r/],
    [{ sft: { batchSize: 0 } }, /^--batch-size/],
    [{ out: 'm' }, /^--out must differ from --model/],
    [{ evalFraction: 0.2, evalData: 'e' }, /^--eval-fraction and --eval-data cannot be combined/],
  ];
  for (const [cfg, re] of bad) {
    const e = t.throws(() => resolveRestConfig({ ...base, ...cfg })) as RlhfError;
    t.equal(e.code, 'E_ARGUMENT', String(re));
    t.match(e.message, re);
  }
  const e = t.throws(() => resolveRestConfig(base, { rewardSource: true })) as RlhfError;
  t.match(e.message, /cannot be given together with a reward source/);
});

t.test('the CLI flags and a recipe section reach the same config', async (t) => {
  const argv = { model: 'm', data: 'd', out: 'o', 'reward-model': 'r', thresholds: ['0.2,0.6'], 'max-per-prompt': 3, 'samples-per-prompt': 4, variant: 'rest' };
  const c = resolveRestConfig(configFromArgv(REST_OPTIONS, argv));
  t.match(c, { thresholds: [0.2, 0.6], quantiles: null, maxPerPrompt: 3, samplesPerPrompt: 4 });
  t.ok(isStageConfig(REST_OPTIONS, { thresholds: [0.2, 0.6], variant: 'em' }, 'rest'), 'a YAML list of numbers is a valid recipe value');
  const e = t.throws(() => isStageConfig(REST_OPTIONS, { thresholds: 0.5 }, 'rest')) as RlhfError;
  t.equal(e.code, 'E_CONFIG');
  t.match(e.message, /rest\.thresholds must be a list/);
});
