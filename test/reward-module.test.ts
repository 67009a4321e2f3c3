/**
 * Reward modules (.js, .cjs, .mjs, .ts; named or default export; sync or
 * async) and every way one can fail, each an RlhfError naming the module
 * and, for a failed call, the data file:line of the row; and the mix of
 * openRewardSource: the weighted sum, the parts, the weights' order and
 * count, at least one source.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadRewardModule, moduleSource } from '../lib/reward/module';
import { openRewardSource, REWARD_OPTIONS, type RewardSourceConfig } from '../lib/reward/options';
import { functionReward, type RewardInput, type RewardSource } from '../lib/reward/sources';
import { resolveOptions } from '../lib/train/options';
import type { RlhfError } from '../lib/errors';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-reward-module-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const write = (name: string, text: string) => {
  const f = path.join(tmp, name);
  fs.writeFileSync(f, text);
  return f;
};
const input = (response: string, row: Record<string, unknown>, line: number): RewardInput => ({ prompt: 'Q: ', promptIds: [1, 2], response, responseIds: [3], row, file: 'data/p.jsonl', line });

t.test('loads .js, .cjs, .mjs and .ts modules: named or default export, sync or async; called once per completion with {prompt, completion, row}', async (t) => {
  const modules: [string, string][] = [
    ['named.js', 'exports.reward = ({ completion, row }) => completion.length + row.bonus;'],
    ['fn.cjs', 'module.exports = function ({ completion, row }) { return completion.length + row.bonus; };'],
    ['named.mjs', 'export function reward({ completion, row }) { return completion.length + row.bonus; }'],
    ['default.mjs', 'export default async ({ completion, row }) => completion.length + row.bonus;'],
    ['typed.ts', 'interface X { completion: string; row: { bonus: number } }\nexport default async function (x: X): Promise<number> { return x.completion.length + x.row.bonus; }'],
    ['named.ts', 'export const reward = ({ completion, row }: { completion: string; row: Record<string, number> }): number => completion.length + row.bonus;'],
  ];
  for (const [name, text] of modules) {
    const src = await moduleSource(write(name, text));
    t.same(src.names, ['module'], name);
    const r = await src.score([input('abc', { bonus: 10 }, 1), input('hello', { bonus: 0.5 }, 2)]);
    t.same(Array.from(r.reward), [13, 5.5], name);
    t.same(Array.from(r.parts.module), [13, 5.5], name);
  }
  // What the function is given, and how often.
  const seen = write('seen.mjs', 'export const calls = [];\nexport function reward(x) { calls.push(x); return calls.length; }');
  const src = await moduleSource(seen);
  const r = await src.score([input('a', { answer: '1' }, 4), input('b', { answer: '2' }, 9)]);
  t.same(Array.from(r.reward), [1, 2], 'in order, one call per completion');
  const mod = (await import(seen)) as { calls: unknown[] };
  t.same(mod.calls, [
    { prompt: 'Q: ', completion: 'a', row: { answer: '1' } },
    { prompt: 'Q: ', completion: 'b', row: { answer: '2' } },
  ]);
});

t.test('a module that cannot be used: E_ARGUMENT naming the file', async (t) => {
  const cases: [string, RegExp][] = [
    [path.join(tmp, 'absent.js'), /^--reward-module \S+absent\.js: no such file$/],
    [write('r.py', 'def reward(x): return 1'), /^--reward-module \S+r\.py: a reward module is a \.js, \.cjs, \.mjs, \.ts file \(this is "\.py"\)$/],
    [write('none.mjs', 'export const score = () => 1;'), /^--reward-module \S+none\.mjs: exports no reward function/],
    [write('notfn.js', 'exports.reward = 3;'), /^--reward-module \S+notfn\.js: exports no reward function/],
    [write('syntax.mjs', 'export function reward( {'), /^--reward-module \S+syntax\.mjs: the module failed to load: /],
    [write('top.cjs', 'throw new Error("no API key");'), /^--reward-module \S+top\.cjs: the module failed to load: no API key$/],
    [write('bad.ts', 'export const reward = (x: number => 1;'), /^--reward-module \S+bad\.ts: does not compile: /],
  ];
  for (const [file, re] of cases) {
    const e = (await loadRewardModule(file).catch((e) => e)) as RlhfError;
    t.equal(e.code, 'E_ARGUMENT', file);
    t.match(e.message, re);
  }
});

t.test('a call that throws, rejects or gives no finite number: E_REWARD naming the module, the row file:line and the thrown message', async (t) => {
  const cases: [string, string, RegExp][] = [
    ['throws.js', 'exports.reward = ({ row }) => { if (row.id === 2) throw new Error("bad judge reply"); return 1; };', /reward\(\) threw "bad judge reply" on the completion for data\/p\.jsonl:8$/],
    ['rejects.mjs', 'export async function reward({ row }) { if (row.id === 2) throw new Error("timeout"); return 1; }', /reward\(\) threw "timeout" on the completion for data\/p\.jsonl:8$/],
    ['string.js', 'exports.reward = ({ row }) => { if (row.id === 2) throw "plain string"; return 1; };', /reward\(\) threw "plain string" on the completion for data\/p\.jsonl:8$/],
    ['nan.js', 'exports.reward = ({ row }) => (row.id === 2 ? NaN : 1);', /reward\(\) returned NaN, not a finite number on the completion for data\/p\.jsonl:8$/],
    ['inf.mjs', 'export default async ({ row }) => (row.id === 2 ? -Infinity : 1);', /reward\(\) returned -Infinity, not a finite number on the completion for data\/p\.jsonl:8$/],
    ['str.js', 'exports.reward = ({ row }) => (row.id === 2 ? "1" : 1);', /reward\(\) returned "1", not a finite number on the completion for data\/p\.jsonl:8$/],
    ['undef.js', 'exports.reward = ({ row }) => { if (row.id !== 2) return 1; };', /reward\(\) returned undefined, not a finite number on the completion for data\/p\.jsonl:8$/],
  ];
  for (const [name, text, re] of cases) {
    const file = write(name, text);
    const src = await moduleSource(file);
    const e = (await src.score([input('x', { id: 1 }, 5), input('y', { id: 2 }, 8)]).catch((e) => e)) as RlhfError;
    t.equal(e.code, 'E_REWARD', name);
    t.ok(e.message.startsWith(`--reward-module ${file}: `), `${name}: names the module (${e.message})`);
    t.match(e.message, re);
  }
});

/** The resolved reward options of `given` (the table's defaults), for openRewardSource without a model. */
const rewardCfg = (given: Record<string, unknown>): RewardSourceConfig => ({ ...resolveOptions(REWARD_OPTIONS, given), model: 'unused', device: 'cpu' }) as RewardSourceConfig;

t.test('openRewardSource: the weighted sum of the sources in order (hook or reward models, module, built-ins), every part under its name', async (t) => {
  const mod = write('len.js', 'exports.reward = ({ completion }) => completion.length;');
  const batch = [input('72', { answer: '72' }, 1), input('The answer is 72', { answer: '#### 72' }, 2), input('7', { answer: '8' }, 3)];
  const src = await openRewardSource(rewardCfg({ rewardModule: mod, rewardFunction: ['exact', 'numeric'], rewardWeights: ['2', '0.5', '-1'] }), null, () => {});
  t.same(src.names, ['module', 'exact', 'numeric']);
  const r = await src.score(batch);
  // By hand: module = length (2, 16, 1); exact (1, 0, 0); numeric (1, 1, 0).
  t.same(Array.from(r.parts.module), [2, 16, 1]);
  t.same(Array.from(r.parts.exact), [1, 0, 0]);
  t.same(Array.from(r.parts.numeric), [1, 1, 0]);
  t.same(Array.from(r.reward), [2 * 2 + 0.5 * 1 - 1 * 1, 2 * 16 + 0 - 1, 2 * 1 + 0 - 0]);
  src.dispose();

  // A hook in the reward models' place, with two parts: its own reward is shown as 'combined'.
  let disposed = false;
  const hook: RewardSource = {
    names: ['helpfulness', 'safety'],
    score: async (b) => ({ reward: Float64Array.from(b, () => 3), parts: { helpfulness: Float64Array.from(b, () => 3), safety: Float64Array.from(b, () => -1) } }),
    dispose: () => (disposed = true),
  };
  const mixed = await openRewardSource(rewardCfg({ rewardFunction: ['exact'], rewardWeights: [0.25, 4] }), null, () => {}, { hook });
  t.same(mixed.names, ['helpfulness', 'safety', 'combined', 'exact']);
  const m = await mixed.score(batch);
  t.same(Array.from(m.reward), [0.25 * 3 + 4 * 1, 0.25 * 3, 0.25 * 3]);
  t.same(Array.from(m.parts.combined), [3, 3, 3]);
  mixed.dispose();
  t.notOk(disposed, 'the hook is the caller\'s to dispose');

  // One source of weight 1 passes through untouched (PPO and RS with one reward, as before).
  const blue = functionReward((b) => b.map((x) => x.response.length), 'blue');
  const one = await openRewardSource(rewardCfg({}), null, () => {}, { hook: blue });
  t.same(one.names, ['blue']);
  t.same(await one.score(batch), await blue.score(batch));
});

t.test('openRewardSource: at least one source, one weight per source, unique part names (E_ARGUMENT)', async (t) => {
  const mod = write('one.js', 'exports.reward = () => 1;');
  const cases: [Record<string, unknown>, RlhfError['code'], RegExp, RewardSource?][] = [
    [{}, 'E_ARGUMENT', /^--reward-model is required unless --judge-model, --reward-function, --reward-module or hooks\.reward \(a RewardSource\) gives the reward$/],
    [{ rewardFunction: ['exact'], rewardModule: mod, rewardWeights: [1] }, 'E_ARGUMENT', /^--reward-weights has 1 weight for 2 reward sources \(module, exact: one weight each, in that order\)$/],
    [{ rewardModule: path.join(tmp, 'gone.mjs') }, 'E_ARGUMENT', /^--reward-module \S+gone\.mjs: no such file$/],
    [{ rewardFunction: ['exact'] }, 'E_ARGUMENT', /two reward sources report a part named "exact"/, functionReward((b) => b.map(() => 1), 'exact')],
  ];
  for (const [given, code, re, hook] of cases) {
    const e = (await openRewardSource(rewardCfg(given), null, () => {}, { hook }).catch((e) => e)) as RlhfError;
    t.equal(e.code, code, JSON.stringify(given));
    t.match(e.message, re);
  }
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ rewardFunction: ['exactly'] }, /^--reward-function must name built-in rewards \(exact, numeric\), got "exactly"$/],
    [{ rewardFunction: ['exact', 'exact'] }, /^--reward-function names exact twice$/],
    [{ rewardWeights: ['1', 'x'] }, /^--reward-weights must be numbers, got "x"$/],
    [{ answerField: '' }, /^--answer-field must be a field name/],
  ];
  for (const [given, re] of bad) t.throws(() => resolveOptions(REWARD_OPTIONS, given), { code: 'E_ARGUMENT', message: re });
});
