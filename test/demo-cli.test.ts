/**
 * The quick demo as a user runs it, `rlhf-native train --scale quick` with
 * stderr going to a file (not a terminal), once; then what that user sees:
 *   - the log: every stage prints a few progress lines (at most 30), each
 *     within its total, the last at the total, which is the stage's step
 *     count in summary.json;
 *   - report.html in headless Chromium (test/helpers/chromium.ts), when
 *     Chromium is installed.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cliBuilt, runCli } from './helpers/cli';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-demo-cli-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const out = path.join(tmp, 'run');

t.test('quick demo through the CLI, stderr not a terminal', { skip: !cliBuilt() && 'CLI not compiled' }, async (t) => {
  const r = runCli(['train', '--scale', 'quick', '--device', 'cpu', '--out', out], { cwd: tmp, timeoutMs: 1_200_000 });
  t.equal(r.status, 0, `exit 0 (${r.stderr.split('\n').slice(-3).join(' | ')})`);
  t.notMatch(r.stderr, /\r|\x1b\[/, 'no terminal controls in a log');
  const run = JSON.parse(fs.readFileSync(path.join(out, 'run.json'), 'utf8'));
  const summary = JSON.parse(fs.readFileSync(path.join(out, 'summary.json'), 'utf8'));
  const lines = r.stderr.split('\n');

  t.test('progress: at most 30 lines per stage, none beyond its total, the last at the total', async (t) => {
    for (const { name } of run.stages as { name: string }[]) {
      const mine = lines.filter((l) => l.startsWith(`${name} `) && new RegExp(`^${name} (\\d+/\\d+ \\(\\d+%\\)|done in )`).test(l));
      const counts = mine.flatMap((l) => {
        const m = new RegExp(`^${name} (\\d+)/(\\d+) `).exec(l);
        return m ? [[Number(m[1]), Number(m[2])]] : [];
      });
      t.ok(mine.length >= 2 && mine.length <= 30, `${name}: ${mine.length} progress lines`);
      t.ok(counts.every(([n, total]) => n <= total), `${name}: none beyond its total (${counts.map((c) => c.join('/')).join(' ')})`);
      const total = summary.stages[name].steps;
      t.same(counts[counts.length - 1], [total, total], `${name}: the last line is at the total, the stage's ${total} steps`);
      t.ok(counts.every(([, tt]) => tt === total), `${name}: one total throughout`);
    }
  });
});
