/**
 * The demo stopped anywhere resumes: a quick demo stopped during the
 * labelling (which happens before the helpfulness reward model starts),
 * inside PPO, and at the held-out evaluation, resumed after each stop,
 * prints the final table of an uninterrupted run with the same seed.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runDemo, type DemoResult } from '../lib/recipes/demo';
import { demoTable } from '../bin/commands/train';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-demo-resume-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const quiet = { log: () => {}, progress: false as const, handleSigint: false };
/** The table without its timing columns (tok/s, wall) and total time. */
const figures = (r: DemoResult) => ({ policies: r.policies, rmAccuracy: r.rmAccuracy, labelPairs: r.labelPairs, rows: demoTable(r).split('\n').map((l) => l.split(/\s{2,}/).slice(0, -2).join(' | ')) });

t.test('a quick demo stopped during labelling, inside ppo and at the evaluation resumes to the uninterrupted table', async (t) => {
  const opts = (out: string, resume = false) => ({ out, seed: 3, scale: 'quick' as const, device: 'cpu' as const, resume });
  const straight = await runDemo(opts(path.join(tmp, 'straight')), quiet);
  t.notOk(straight.interrupted);

  const out = path.join(tmp, 'cut');
  const stops: [string, (ac: AbortController) => Parameters<typeof runDemo>[1]][] = [
    ['labelling (the rm_helpfulness stage has started: its pairs are being made)', (ac) => ({ onStage: (s, ev) => s === 'rm_helpfulness' && ev === 'start' && ac.abort() })],
    ['inside ppo (after its second iteration)', (ac) => ({ onMetrics: (s, rec) => s === 'ppo' && rec.step === 2 && ac.abort() })],
    ['the held-out evaluation (every stage done)', (ac) => ({ onStage: (s, ev) => s === 'ppo' && ev === 'done' && ac.abort() })],
  ];
  for (const [i, [where, hooks]] of stops.entries()) {
    const ac = new AbortController();
    const r = await runDemo(opts(out, i > 0), { ...quiet, ...hooks(ac), signal: ac.signal });
    t.ok(r.interrupted, `stopped at ${where}`);
    t.same(r.policies, [], 'no table from a stopped run');
  }
  const state = JSON.parse(fs.readFileSync(path.join(out, 'run.json'), 'utf8'));
  t.ok(state.stages.every((s: { status: string }) => s.status === 'done'), 'the last stop came after every stage');
  const done = await runDemo(opts(out, true), quiet);
  t.notOk(done.interrupted);
  t.same(figures(done), figures(straight), 'the same labeller pairs, RM accuracies, scores, win rates and table');
});
