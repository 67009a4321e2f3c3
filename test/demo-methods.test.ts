// `train --methods`: the list a user gives, and the recipe sections it makes
// (each chosen method on, every other skipped, the reward models only when a
// chosen method scores with them).
import t from 'tap';
import { DEMO_METHODS, methodSections, parseMethods } from '../lib/recipes/demo-methods';
import { DEMO_SIZES } from '../lib/recipes/demo';
import { RlhfError } from '../lib/errors';

t.test('parseMethods: names, all, sft first, unknown names refused', async (t) => {
  t.same(parseMethods('grpo,rloo'), ['sft', 'grpo', 'rloo'], 'sft is always the baseline row, first');
  t.same(parseMethods('hir grpo'), ['sft', 'grpo', 'hir'], 'spaces separate too; the table order is fixed');
  t.same(parseMethods('all'), [...DEMO_METHODS], 'all');
  t.same(parseMethods(['PPO', ' dpo ']), ['sft', 'ppo', 'dpo'], 'case and blanks do not matter');
  const error = (f: () => unknown): RlhfError | null => {
    try {
      f();
      return null;
    } catch (e) {
      return e as RlhfError;
    }
  };
  const unknown = error(() => parseMethods('grpo,ppo2'));
  t.ok(unknown instanceof RlhfError && unknown.code === 'E_ARGUMENT', 'an unknown name: E_ARGUMENT');
  t.match(unknown?.message, /^--methods: unknown method 'ppo2' \(expected sft, rs, ppo, dpo, cdpo, ipo, simpo, orpo, kto, grpo, rloo, rest, hir or all\)/);
  t.match(error(() => parseMethods(''))?.message, /^--methods needs a list/, 'an empty list');
});

t.test('methodSections: chosen sections on, the rest skipped; reward models only for rs, ppo, rest', async (t) => {
  const data = (f: string) => `/d/${f}`;
  const g = methodSections(['sft', 'grpo', 'hir'], DEMO_SIZES.quick, data);
  t.same(g.rm_helpfulness, { skip: true }, 'no reward model for verifiable-reward methods');
  t.same(g.ppo, { skip: true }, 'ppo skipped');
  t.same(g.grpo?.rewardFunction, ['exact'], 'grpo scores with the built-in exact match');
  t.same(g.hir?.rewardFunction, ['exact'], 'hir checks with it');
  t.equal(g.grpo?.data, '/d/group_prompts.jsonl');
  const r = methodSections(['sft', 'rest'], DEMO_SIZES.quick, data);
  t.same(r.rm_helpfulness, {}, 'rest needs the reward models');
  t.same(r.rm_safety, {}, 'both of them');
  t.equal(methodSections(['sft', 'rloo'], DEMO_SIZES.full, data).rloo?.estimator, 'rloo');
});

t.test('methodSections: the DPO family trains on the labeler pairs, each loss its own dpo_<name> section', async (t) => {
  const data = (f: string) => `/d/${f}`;
  const s = methodSections(parseMethods('ipo,simpo,orpo,kto,cdpo'), DEMO_SIZES.full, data);
  t.same(s.dpo, { skip: true }, 'plain DPO not asked for');
  t.same(s.rm_helpfulness, { skip: true }, 'no reward model');
  t.match(s.dpo_ipo, { data: '/d/dpo_pairs.jsonl', lossType: 'ipo' });
  t.match(s.dpo_simpo, { data: '/d/dpo_pairs.jsonl', lossType: 'simpo' });
  t.match(s.dpo_cdpo, { data: '/d/dpo_pairs.jsonl', labelSmoothing: 0.1 });
  t.match(s.orpo, { data: '/d/dpo_pairs.jsonl' });
  t.match(s.kto, { data: '/d/dpo_pairs.jsonl' });
  for (const k of ['dpo_ipo', 'dpo_simpo', 'dpo_cdpo', 'orpo', 'kto'] as const) t.equal(s[k]?.epochs, DEMO_SIZES.full.dpoEpochs, `${k}: one pass over the pairs`);
});
