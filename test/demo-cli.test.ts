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
import { findChromium, inspectPage } from './helpers/chromium';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-demo-cli-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const out = path.join(tmp, 'run');
const chromium = findChromium();

/** What the test reads of the loaded report, computed in the page (layout included: lengths and boxes of the drawn lines). */
const DOM_CHECKS = `(() => {
  const text = (e) => (e ? e.textContent.trim() : null);
  const first = document.querySelector('table');
  const charts = [...document.querySelectorAll('figure.chart')].map((f) => {
    const svg = f.querySelector('svg');
    const vb = svg.viewBox.baseVal;
    const shown = svg.getBoundingClientRect();
    const lines = [...f.querySelectorAll('polyline')].map((p) => {
      const b = p.getBBox();
      return { cls: p.getAttribute('class'), n: p.points.numberOfItems, len: p.getTotalLength(), box: [b.x, b.y, b.width, b.height] };
    });
    const dots = [...f.querySelectorAll('circle')].map((c) => c.r.baseVal.value);
    return { stage: f.closest('section').dataset.stage, family: f.dataset.family, lines, dots, viewBox: [vb.width, vb.height], shown: [shown.width, shown.height] };
  });
  return {
    firstTable: first && { cls: first.className, caption: text(first.caption), head: [...first.querySelectorAll('thead th')].map(text), firstColumn: [...first.querySelectorAll('tbody tr')].map((r) => text(r.cells[0])) },
    sampleHead: [...document.querySelectorAll('table.samples thead th')].map(text),
    samples: [...document.querySelectorAll('table.samples tbody tr')].map((r) => [...r.cells].map(text)),
    parts: [...document.querySelectorAll('div.part')].map((d) => [d.id, d.children.length]),
    charts,
  };
})()`;

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

  t.test('report.html in headless Chromium: the outcome first, samples, drawn charts, no errors, no requests', { skip: !chromium && 'chromium not installed (Debian: apt-get install chromium; .ci/run installs it)' }, async (t) => {
    interface Dom {
      firstTable: { cls: string; caption: string; head: string[]; firstColumn: string[] } | null;
      sampleHead: string[];
      samples: string[][];
      parts: [string, number][];
      charts: { stage: string; family: string; lines: { cls: string; n: number; len: number; box: number[] }[]; dots: number[]; viewBox: number[]; shown: number[] }[];
    }
    const { value: dom, errors, requests } = await inspectPage<Dom>(chromium!, path.join(out, 'report.html'), DOM_CHECKS);
    t.same(errors, [], 'no console errors, exceptions or failed loads');
    t.same(requests, [], 'no network: the page requests nothing besides itself');
    const stages = (run.stages as { name: string }[]).map((s) => s.name);
    const ft = dom.firstTable!;
    t.match(ft.cls, /\boutcome\b/, 'the first table is the outcome table');
    t.same(ft.firstColumn, stages, 'one row per stage');
    for (const col of ['score', 'win vs SFT', 'helpfulness', 'safety']) t.ok(ft.head.includes(col), `outcome column ${col}`);
    t.match(ft.caption, /Held-out prompts scored by the labeler/, 'the outcome table says what it measures');
    t.same(dom.parts.map((p) => p[0]), ['outcome', 'samples', 'curves', 'details', 'run'], 'the parts in order');
    t.ok(dom.parts.every(([, n]) => n >= 2), 'every part has content under its heading');

    t.same(dom.sampleHead, ['prompt', 'expected', 'sft', 'rs', 'ppo'], 'samples: each policy side by side');
    t.equal(dom.samples.length, 10, 'ten fixed held-out prompts');
    const answers = dom.samples.flatMap((r) => r.slice(2));
    t.ok(dom.samples.every((r) => r.length === 5 && r[0].length > 0 && r[1].length > 0), 'each row: a prompt, its expected answer and three answers');
    t.ok(answers.filter((a) => a.length > 0).length >= answers.length * 0.8, `the policies answered (${answers.filter((a) => a.length > 0).length}/${answers.length} non-empty)`);

    t.same([...new Set(dom.charts.map((c) => c.stage))], stages, 'charts for every stage');
    for (const c of dom.charts) {
      const what = `${c.stage} ${c.family}`;
      const lines = c.lines.filter((l) => l.n >= 2);
      t.ok(c.shown[0] > 100 && c.shown[1] > 40, `${what}: the chart is laid out (${c.shown.map(Math.round).join('x')} px)`);
      if (lines.length) t.ok(lines.every((l) => l.len > 0), `${what}: ${lines.length} drawn paths of length ${lines.map((l) => Math.round(l.len)).join(', ')}`);
      else t.ok(c.dots.length > 0 && c.dots.every((r) => r > 0), `${what}: single values drawn as ${c.dots.length} dots`);
      const inside = c.lines.every(({ box: [x, y, w, h] }) => x >= 0 && y >= 0 && x + w <= c.viewBox[0] + 0.5 && y + h <= c.viewBox[1] + 0.5);
      t.ok(inside, `${what}: every line inside the chart`);
    }
    const sftLoss = dom.charts.find((c) => c.stage === 'sft' && c.family === 'loss')!;
    t.ok(sftLoss.lines.some((l) => l.cls === 'ema' && l.len > 0) && sftLoss.lines.some((l) => l.cls === 'raw'), 'the SFT loss: raw and EMA lines');
  });
});
