/** Learning-rate schedules against transformers' closed forms (get_scheduler). */
import t from 'tap';
import { lrMultiplier, lrSchedule, LR_SCHEDULES } from '../lib/stages/schedule';
import { RlhfError } from '../lib/errors';

// transformers/optimization.py, written out independently.
function reference(kind: string, s: number, W: number, N: number): number {
  if (s < W) return s / Math.max(1, W);
  if (kind === 'constant') return 1;
  if (kind === 'linear') return Math.max(0, (N - s) / Math.max(1, N - W));
  const progress = (s - W) / Math.max(1, N - W);
  return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * 0.5 * 2 * progress)));
}

t.test('every schedule matches the closed form at every step', async (t) => {
  let checked = 0;
  for (const kind of LR_SCHEDULES)
    for (const [W, N] of [[0, 1], [0, 10], [3, 10], [10, 10], [1, 7], [5, 100]])
      for (let s = 0; s <= N + 2; s++) {
        const got = lrMultiplier(kind, s, W, N);
        if (Math.abs(got - reference(kind, s, W, N)) > 1e-15) t.fail(`${kind} W=${W} N=${N} s=${s}: ${got}`);
        checked++;
      }
  t.ok(checked > 300, `${checked} points`);
});

t.test('hand-computed values', async (t) => {
  // linear, 2 warmup steps of 10
  t.same([0, 1, 2, 6, 9, 10, 11].map((s) => lrMultiplier('linear', s, 2, 10)), [0, 0.5, 1, 0.5, 0.125, 0, 0]);
  // cosine: 1 at the end of warmup, 1/2 half-way, 0 at N (half a cycle)
  t.equal(lrMultiplier('cosine', 2, 2, 10), 1);
  t.ok(Math.abs(lrMultiplier('cosine', 6, 2, 10) - 0.5) < 1e-15);
  t.ok(Math.abs(lrMultiplier('cosine', 4, 2, 10) - (0.5 + 0.5 * Math.SQRT1_2)) < 1e-15, 'cos(pi/4)');
  t.ok(Math.abs(lrMultiplier('cosine', 10, 2, 10)) < 1e-15);
  // constant with warmup = transformers' constant_with_warmup
  t.same([0, 1, 2, 3, 4, 50].map((s) => lrMultiplier('constant', s, 4, 10)), [0, 0.25, 0.5, 0.75, 1, 1]);
  t.same([0, 5, 9].map((s) => lrMultiplier('constant', s, 0, 10)), [1, 1, 1]);
  // linear without warmup: step k runs at lr * (N - (k - 1)) / N; the last step at lr / N
  t.equal(lrMultiplier('linear', 0, 0, 4), 1);
  t.equal(lrMultiplier('linear', 3, 0, 4), 0.25);
});

t.test('lrSchedule scales the base rate and checks its arguments', async (t) => {
  const f = lrSchedule({ kind: 'linear', lr: 2e-4, warmupSteps: 0, totalSteps: 4 });
  [2e-4, 1.5e-4, 1e-4, 0.5e-4, 0].forEach((want, s) => t.ok(Math.abs(f(s) - want) < 1e-18, `step ${s}: ${f(s)}`));
  for (const bad of [
    { kind: 'linear' as const, lr: 1, totalSteps: 0 },
    { kind: 'linear' as const, lr: -1, totalSteps: 3 },
    { kind: 'linear' as const, lr: 1, totalSteps: 3, warmupSteps: 1.5 },
    { kind: 'step' as never, lr: 1, totalSteps: 3 },
  ]) {
    const e = t.throws(() => lrSchedule(bad)) as RlhfError;
    t.equal(e.code, 'E_ARGUMENT');
  }
});
