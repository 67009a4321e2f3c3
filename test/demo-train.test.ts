/**
 * The built-in demo, shortened ('quick' sizes): the whole Llama 2 pipeline
 * on the committed demo base, then the labeler's verdict on held-out
 * prompts. Asserts directions, not numbers: the reward models rank held-out
 * pairs better than chance, and the PPO policy scores above the SFT policy
 * by the labeler. Also the CLI's final table and the run folder's files.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runDemo } from '../lib/recipes/demo';
import { demoTable } from '../bin/commands/train';

t.test('quick demo: RMs beat chance, PPO beats SFT on the labeler\'s held-out score', async (t) => {
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-demo-')), 'run');
  t.teardown(() => fs.rmSync(path.dirname(out), { recursive: true, force: true }));
  const r = await runDemo({ out, seed: 0, scale: 'quick', device: 'cpu' }, { log: () => {}, progress: false, handleSigint: false });
  t.notOk(r.interrupted);
  t.same(r.stages.map((s) => s.name), ['sft', 'rm_helpfulness', 'rm_safety', 'rs', 'ppo']);
  t.ok(r.labelPairs.helpfulness > 50 && r.labelPairs.safety > 20, `the labeler produced pairs (${r.labelPairs.helpfulness} helpfulness, ${r.labelPairs.safety} safety)`);
  t.ok(r.rmAccuracy.helpfulness! > 0.6, `helpfulness RM held-out accuracy ${r.rmAccuracy.helpfulness}`);
  t.ok(r.rmAccuracy.safety! > 0.6, `safety RM held-out accuracy ${r.rmAccuracy.safety}`);
  const by = Object.fromEntries(r.policies.map((p) => [p.policy, p]));
  t.ok(by.ppo.eval.score > by.sft.eval.score, `labeler score on held-out prompts: SFT ${by.sft.eval.score.toFixed(3)} -> PPO ${by.ppo.eval.score.toFixed(3)}`);
  t.ok(by.ppo.winVsSft > 0.5, `PPO wins against SFT on ${(100 * by.ppo.winVsSft).toFixed(1)}% of held-out answers (ties half)`);
  const table = demoTable(r);
  for (const s of ['sft', 'rm_helpfulness', 'rm_safety', 'rs', 'ppo']) t.match(table, new RegExp(`^${s} `, 'm'), `table row ${s}`);
  for (const f of ['run.json', 'metrics.jsonl', 'summary.json', 'report.html', 'demo_eval.json']) t.ok(fs.existsSync(path.join(out, f)), f);
});
