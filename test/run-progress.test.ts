/**
 * The progress display on a fake terminal (one line redrawn in place) and a
 * fake log (a line per tenth of the total or a spaced-out interval, plus the first and last step), with a
 * controlled clock; closed and failing streams never throw.
 */
import t from 'tap';
import { Writable } from 'node:stream';
import { createProgress, type ProgressStream } from '../lib/run/progress';

class FakeStream implements ProgressStream {
  chunks: string[] = [];
  constructor(
    public isTTY: boolean,
    public columns?: number,
  ) {}
  write(s: string) {
    this.chunks.push(s);
    return true;
  }
  get text() {
    return this.chunks.join('');
  }
}

function clock(start = 1_000_000) {
  let now = start;
  return { now: () => now, advance: (ms: number) => void (now += ms) };
}

/** What a terminal shows after the output: \r returns to column 0, ESC[K clears to the end of the line. */
function screen(text: string): string[] {
  const lines = [''];
  let col = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '\r') col = 0;
    else if (c === '\n') {
      lines.push('');
      col = 0;
    } else if (text.startsWith('\x1b[K', i)) {
      lines[lines.length - 1] = lines[lines.length - 1].slice(0, col);
      i += 2;
    } else {
      const l = lines[lines.length - 1];
      lines[lines.length - 1] = l.slice(0, col) + c + l.slice(col + 1);
      col++;
    }
  }
  return lines;
}

t.test('terminal: one line redrawn in place', async (t) => {
  const s = new FakeStream(true);
  const c = clock();
  const p = createProgress({ label: 'ppo', total: 80, stream: s, now: c.now });
  c.advance(500);
  p.tick(1, { loss: 0.5312, reward: 1.2 });
  t.same(screen(s.text), ['ppo [....................] 1/80 loss 0.531 reward 1.2 ETA 0:40'], 'the first step draws at once');
  t.notMatch(s.text, /\n/);
  c.advance(10);
  p.tick(2, { loss: 0.52 });
  t.equal(s.chunks.length, 1, 'redraws are throttled (default 100 ms)');
  c.advance(5490); // 6 s for 12 steps: 0.5 s a step, 68 to go
  p.tick(12, { loss: 0.53 });
  t.same(screen(s.text), ['ppo [###.................] 12/80 loss 0.53 reward 1.2 ETA 0:34'], 'fields update and persist; the ETA follows the rate');
  t.ok(s.chunks.every((ch) => ch.startsWith('\r') && ch.endsWith('\x1b[K')), 'each draw returns to the start and clears the rest');
  p.log('eval: loss 0.61');
  t.same(screen(s.text), ['eval: loss 0.61', 'ppo [###.................] 12/80 loss 0.53 reward 1.2 ETA 0:34'], 'a log line goes above the bar');
  c.advance(1);
  p.tick(80, { loss: 0.4 });
  t.match(screen(s.text).pop()!, /^ppo \[#{20}\] 80\/80 loss 0\.4 reward 1\.2$/, 'the last step always draws; no ETA at the end');
  c.advance(60_000);
  p.done({ reward: 2 });
  t.same(screen(s.text).slice(-2), ['ppo [####################] 80/80 loss 0.4 reward 2 in 1:06', ''], 'done: the final line and a newline');
  const n = s.chunks.length;
  p.tick(81);
  p.done();
  t.equal(s.chunks.length, n, 'nothing after done');
});

t.test('terminal: lines are cut to the width; unknown totals; long durations', async (t) => {
  const s = new FakeStream(true, 40);
  const c = clock();
  const p = createProgress({ label: 'sft', total: 1000, stream: s, now: c.now, width: 10 });
  c.advance(3600_000);
  p.tick(500, { loss: 1.23456, tokens_per_sec: 12345.6, lr: 0.0000123, note: 'warmup', skip: null });
  const [line] = screen(s.text);
  t.equal(line.length, 39, 'never wider than the terminal');
  t.equal(line, 'sft [#####.....] 500/1000 loss 1.23 tokens'.slice(0, 39));
  const wide = new FakeStream(true);
  const q = createProgress({ label: 'sft', total: 1000, stream: wide, now: c.now, width: 10 });
  c.advance(3600_000);
  q.tick(500, { loss: 1.23456, tokens_per_sec: 12345.6, lr: 0.0000123, note: 'warmup', skip: null });
  t.same(screen(wide.text), ['sft [#####.....] 500/1000 loss 1.23 tokens_per_sec 12346 lr 1.2e-5 note warmup ETA 1:00:00']);
  const u = new FakeStream(true);
  const r = createProgress({ label: 'gen', total: 0, stream: u, now: c.now });
  r.tick(7);
  t.same(screen(u.text), ['gen 7'], 'no bar and no ETA without a total');
});

t.test('not a terminal: plain lines at each tenth, the first and the last step', async (t) => {
  const s = new FakeStream(false);
  const c = clock();
  const p = createProgress({ label: 'rm', total: 100, stream: s, now: c.now, intervalMs: 1000 });
  for (let step = 1; step <= 100; step++) {
    c.advance(110); // 11 s in all: a line about every 10 steps
    p.tick(step, { loss: 1 / step });
  }
  const lines = s.text.split('\n');
  t.equal(lines.pop(), '');
  t.notMatch(s.text, /\r|\x1b/, 'no terminal controls');
  t.equal(lines[0], 'rm 1/100 (1%) loss 1 elapsed 0:00 ETA 0:11');
  t.equal(lines[lines.length - 1], 'rm 100/100 (100%) loss 0.01 elapsed 0:11', 'the last step is always printed');
  t.ok(lines.length >= 10 && lines.length <= 13, `${lines.length} lines: one a tenth of the total`);
  const steps = lines.map((l) => Number(/^rm (\d+)\//.exec(l)![1]));
  t.ok(steps.slice(1, -1).every((st, i) => st - steps[i] >= 9), `about one line a second: ${steps}`);
  p.done();
  t.equal(s.text.split('\n').slice(-2)[0], 'rm done in 0:11', 'done after the last step was shown: a short line');

  const s2 = new FakeStream(false);
  const q = createProgress({ label: 'dpo', total: 50, stream: s2, now: c.now });
  q.tick(1);
  c.advance(2000);
  q.tick(4, { loss: 0.25 });
  t.equal(s2.chunks.length, 1, 'default interval 10 s, and no new tenth of the total');
  c.advance(2000);
  q.done({ eval_loss: 0.3 });
  t.same(s2.text.split('\n'), ['dpo 1/50 (2%) elapsed 0:00', 'dpo 4/50 (8%) loss 0.25 eval_loss 0.3 in 0:04', ''], 'done shows the unprinted last state');
  q.log('after');
  t.equal(s2.text.split('\n').slice(-2)[0], 'after', 'log still prints');
});

/** The plain lines of a display fed `steps` ticks `ms` apart (the fields change each tick). */
function plainRun(total: number, steps: number[], ms: number, intervalMs?: number): string[] {
  const s = new FakeStream(false);
  const c = clock();
  const p = createProgress({ label: 'x', total, stream: s, now: c.now, intervalMs });
  steps.forEach((st, i) => {
    c.advance(ms);
    p.tick(st, { loss: 1 / (i + 1) });
  });
  p.done();
  return s.text.split('\n').filter(Boolean);
}
const range = (a: number, b: number) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

t.test('not a terminal: about 30 lines at most, however long the stage', async (t) => {
  const fast = plainRun(10_000, range(1, 10_000), 100); // 17 minutes of 0.1 s steps
  t.ok(fast.length <= 30, `10000 steps over 17 min: ${fast.length} lines`);
  t.ok(fast.length >= 11, 'still every tenth of the total');
  const slow = plainRun(20, range(1, 20), 60_000); // 20 minutes of 1-minute steps
  t.ok(slow.length <= 30, `20 one-minute steps: ${slow.length} lines`);
  const stuck = plainRun(4, [...Array(3000).fill(0), 4], 1000); // 50 minutes on the first of 4 units, the rate unknown
  t.ok(stuck.length <= 30 && stuck.length >= 5, `50 min with no unit done: ${stuck.length} lines (a heartbeat, spaced out)`);
  const unknown = plainRun(0, range(1, 3000), 1000);
  t.ok(unknown.length <= 30, `no total: ${unknown.length} lines`);
});

t.test('not a terminal: the total is shown once, nothing beyond it', async (t) => {
  const lines = plainRun(1, [0, 1, 1, 1, 1, 1, 1, 1, 1], 2000, 1000);
  t.equal(lines.filter((l) => l.startsWith('x 1/1 (100%)')).length, 1, `one line at the total: ${JSON.stringify(lines)}`);
  t.notOk(lines.some((l) => /x (\d+)\/1 /.test(l) && Number(/x (\d+)\//.exec(l)![1]) > 1), 'no step beyond the total');
});

t.test('isTTY follows the stream unless given', async (t) => {
  const tty = new FakeStream(true);
  createProgress({ label: 'a', total: 2, stream: tty }).tick(1);
  t.match(tty.text, /^\r/);
  const forced = new FakeStream(true);
  createProgress({ label: 'a', total: 2, stream: forced, isTTY: false }).tick(1);
  t.match(forced.text, /^a 1\/2 \(50%\)/);
});

t.test('a closed or failing stream never throws', async (t) => {
  const ended = new Writable({ write: (_c, _e, cb) => cb() });
  ended.end();
  const p = createProgress({ label: 'x', total: 3, stream: ended as unknown as ProgressStream, isTTY: true });
  p.tick(1);
  p.log('line');
  p.done();
  t.pass('an ended stream');

  const destroyed = new Writable({ write: (_c, _e, cb) => cb() });
  destroyed.destroy();
  const q = createProgress({ label: 'x', total: 3, stream: destroyed as unknown as ProgressStream, isTTY: false });
  q.tick(1);
  q.done();
  t.pass('a destroyed stream');

  let calls = 0;
  const throwing: ProgressStream = {
    isTTY: true,
    write() {
      calls++;
      throw Object.assign(new Error('write EPIPE'), { code: 'EPIPE' });
    },
  };
  const r = createProgress({ label: 'x', total: 3, stream: throwing });
  r.tick(1);
  r.tick(3);
  r.log('x');
  r.done();
  t.equal(calls, 1, 'after a failed write the display is off');

  // Write errors reported asynchronously as 'error' events (a closed pipe).
  const epipe = new Writable({ write: (_c, _e, cb) => cb(Object.assign(new Error('write EPIPE'), { code: 'EPIPE' })) });
  const s = createProgress({ label: 'x', total: 3, stream: epipe as unknown as ProgressStream, isTTY: false, intervalMs: 0 });
  s.tick(1);
  await new Promise((res) => setTimeout(res, 20));
  s.tick(2);
  s.done();
  await new Promise((res) => setTimeout(res, 20));
  t.pass('no uncaught error event');

  const ok = new Writable({ write: (_c, _e, cb) => cb() });
  const before = ok.listenerCount('error');
  const v = createProgress({ label: 'x', total: 1, stream: ok as unknown as ProgressStream, isTTY: false });
  t.equal(ok.listenerCount('error'), before + 1);
  v.tick(1);
  v.done();
  await new Promise((res) => setImmediate(res));
  t.equal(ok.listenerCount('error'), before, 'the error listener is removed after the last write');
});
