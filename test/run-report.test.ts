/**
 * The HTML report: the outcome first, then sample completions, curves and
 * stage details, each saying why when it is empty; every charted series in
 * the metrics becomes a line with the right number of points in its stage's
 * chart, raw and (for training series) an EMA over it; axes have ticks and
 * labels; summary tables; text is escaped; the page is self-contained and
 * well-formed.
 */
import t from 'tap';
import { renderReport, CHARTED_METRICS, MAX_CHART_POINTS, ema, type MetricRecord } from '../lib/run/report';

interface ParsedSeries {
  key: string;
  n: number;
  points: [number, number][];
  /** The EMA line's points, when one is drawn. */
  smooth: [number, number][] | null;
}
interface ParsedChart {
  family: string;
  series: ParsedSeries[];
  xticks: string[];
  yticks: string[];
  labels: string[];
}

const unescape = (s: string) => s.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&#39;/g, "'").replace(/&amp;/g, '&');

/** Reads the charts of every stage section back out of the HTML. */
function parseReport(html: string): Map<string, ParsedChart[]> {
  const out = new Map<string, ParsedChart[]>();
  for (const sec of html.matchAll(/<section class="stage" id="stage-\d+" data-stage="([^"]*)">([\s\S]*?)<\/section>/g)) {
    const charts: ParsedChart[] = [];
    for (const fig of sec[2].matchAll(/<figure class="chart" data-family="([^"]*)">([\s\S]*?)<\/figure>/g)) {
      const series: ParsedSeries[] = [];
      const pts = (a: string) => a.split(' ').map((p) => p.split(',').map(Number) as [number, number]);
      for (const g of fig[2].matchAll(/<g class="series" data-series="([^"]*)" data-n="(\d+)"><polyline class="raw" points="([^"]*)"[^>]*>(?:<title>[^<]*<\/title><\/polyline>)(?:<polyline class="ema" points="([^"]*)")?/g))
        series.push({ key: unescape(g[1]), n: Number(g[2]), points: pts(g[3]), smooth: g[4] ? pts(g[4]) : null });
      const texts = (cls: string) => [...fig[2].matchAll(new RegExp(`<text class="${cls}"[^>]*>([^<]*)</text>`, 'g'))].map((m) => unescape(m[1]));
      charts.push({ family: fig[1], series, xticks: texts('xtick'), yticks: texts('ytick'), labels: [...texts('xlabel'), ...texts('ylabel')] });
    }
    out.set(unescape(sec[1]), charts);
  }
  return out;
}

/** Every element closed in order (void elements and self-closed tags excepted). */
function checkWellFormed(html: string): string | null {
  const VOID = new Set(['meta', 'br', 'hr', 'img', 'input', 'link']);
  const stack: string[] = [];
  const body = html.replace(/<style>[\s\S]*?<\/style>/, '<style></style>');
  for (const m of body.matchAll(/<(\/?)([a-zA-Z][a-zA-Z0-9]*)\b[^>]*?(\/?)>|<!doctype html>/g)) {
    if (m[0].startsWith('<!')) continue;
    const [, close, name, self] = m;
    if (self || VOID.has(name.toLowerCase())) continue;
    if (!close) stack.push(name);
    else if (stack.pop() !== name) return `unexpected </${name}> at ${m.index}`;
  }
  return stack.length ? `unclosed ${stack.join(', ')}` : null;
}

function seriesInMetrics(records: MetricRecord[]): Map<string, Map<string, number>> {
  const families = CHARTED_METRICS.map((c) => c.family).join('|');
  const re = new RegExp(`^(eval_)?(${families})(/.+)?$`);
  const out = new Map<string, Map<string, number>>();
  for (const r of records)
    for (const [k, v] of Object.entries(r))
      if (re.test(k) && typeof v === 'number' && Number.isFinite(v)) {
        if (!out.has(r.stage)) out.set(r.stage, new Map());
        const m = out.get(r.stage)!;
        m.set(k, (m.get(k) ?? 0) + 1);
      }
  return out;
}

function pipelineMetrics(): MetricRecord[] {
  const m: MetricRecord[] = [];
  for (let s = 1; s <= 30; s++) {
    const r: MetricRecord = { stage: 'sft', step: s, loss: 3 / s, lr: 1e-4, grad_norm: 1, tokens_per_sec: 5000 + s * 10, epoch: s / 10 };
    if (s % 10 === 0) r.eval_loss = 3.2 / s;
    m.push(r);
  }
  for (let s = 1; s <= 12; s++) m.push({ stage: 'rm', step: s, loss: 0.7 - s * 0.02, accuracy: 0.5 + s * 0.02 });
  m.push({ stage: 'rm', step: 12, eval_accuracy: 0.71, eval_loss: 0.6 });
  for (let s = 1; s <= 20; s++)
    m.push({ stage: 'ppo', step: s, reward: s / 20, 'reward/helpful': s / 10, 'reward/safety': 1 - s / 40, kl: s * 0.001, response_length: 40 + s, tokens_per_sec: 900, loss: NaN, note: 'x' } as MetricRecord);
  return m;
}

t.test('every charted series present in the metrics is a line with the right number of points', async (t) => {
  const metrics = pipelineMetrics();
  const html = renderReport({ title: 'InstructGPT run', stages: ['sft', 'rm', 'ppo'], metrics });
  const charts = parseReport(html);
  const want = seriesInMetrics(metrics);
  t.same([...charts.keys()], ['sft', 'rm', 'ppo']);
  let checked = 0;
  for (const [stage, keys] of want) {
    const got = new Map(charts.get(stage)!.flatMap((c) => c.series.map((s) => [s.key, s] as const)));
    t.same([...got.keys()].sort(), [...keys.keys()].sort(), `${stage}: the charted series are exactly those present`);
    for (const [key, count] of keys) {
      const s = got.get(key)!;
      t.equal(s.n, count, `${stage} ${key}: ${count} points`);
      t.equal(s.points.length, count, `${stage} ${key}: ${count} points drawn`);
      t.ok(s.points.every(([x, y]) => Number.isFinite(x) && Number.isFinite(y)));
      checked++;
    }
  }
  t.equal(checked, 3 + 4 + 6, 'sft: loss, eval_loss, tokens_per_sec; rm: loss, accuracy, eval_accuracy, eval_loss; ppo: reward x3, kl, length, tokens/s');
  const ppo = charts.get('ppo')!;
  t.same(ppo.map((c) => c.family), ['reward', 'kl', 'tokens_per_sec', 'response_length'], 'a NaN loss draws no chart; unknown keys none');
  t.same(ppo[0].series.map((s) => s.key), ['reward', 'reward/helpful', 'reward/safety'], 'one reward chart, one line per reward model');
  t.same(charts.get('sft')!.find((c) => c.family === 'loss')!.series.map((s) => s.key), ['loss', 'eval_loss'], 'train and eval loss share a chart');
  t.notMatch(html, /data-series="(lr|grad_norm|epoch|note)"/);
  t.equal(checkWellFormed(html), null);
});

t.test('axes have ticks and labels; points follow the data', async (t) => {
  const metrics: MetricRecord[] = [0, 1, 2, 3, 4].map((s) => ({ stage: 'sft', step: s * 25, loss: 2 - s * 0.4 }));
  const [chart] = parseReport(renderReport({ title: 'x', stages: ['sft'], metrics })).get('sft')!;
  t.ok(chart.xticks.length >= 3, `x ticks ${chart.xticks}`);
  t.ok(chart.yticks.length >= 3, `y ticks ${chart.yticks}`);
  t.ok(chart.xticks.includes('0') && chart.xticks.includes('100'), 'the step range is covered');
  t.ok(chart.yticks.map(Number).every((v, i, a) => i === 0 || v > a[i - 1]), 'ascending y ticks');
  t.ok(Number(chart.yticks[0]) <= 0.4 && Number(chart.yticks[chart.yticks.length - 1]) >= 2, 'the value range is covered');
  t.same(chart.labels, ['step', 'loss']);
  const pts = chart.series[0].points;
  t.ok(pts.every((p, i) => i === 0 || p[0] > pts[i - 1][0]), 'x grows with the step');
  t.ok(pts.every((p, i) => i === 0 || p[1] > pts[i - 1][1]), 'falling loss: y grows downwards in SVG');
  // Degenerate series: one point, a constant.
  const one = renderReport({ title: 'x', stages: ['a'], metrics: [{ stage: 'a', step: 5, kl: 0.1 }, { stage: 'a', step: 5, reward: 0 }, { stage: 'a', step: 6, reward: 0 }] });
  t.notMatch(one, /NaN|Infinity/);
  t.same(parseReport(one).get('a')!.map((c) => [c.family, c.series[0].n]), [['reward', 2], ['kl', 1]]);
  t.match(one, /<circle/, 'single points are visible');
});

t.test('long series are reduced for drawing, keeping the extremes', async (t) => {
  const metrics: MetricRecord[] = [];
  for (let s = 1; s <= 10_000; s++) metrics.push({ stage: 'sft', step: s, loss: s === 4321 ? 9 : s === 777 ? -5 : Math.sin(s / 50) });
  const [chart] = parseReport(renderReport({ title: 'x', stages: ['sft'], metrics })).get('sft')!;
  const s = chart.series[0];
  t.equal(s.n, 10_000);
  t.ok(s.points.length <= MAX_CHART_POINTS && s.points.length > MAX_CHART_POINTS / 2, `${s.points.length} drawn`);
  const ys = s.points.map((p) => p[1]);
  const top = Math.min(...ys), bottom = Math.max(...ys);
  t.ok(ys.filter((y) => y === top).length === 1 && ys.filter((y) => y === bottom).length === 1, 'the spike and the dip are both drawn');
});

t.test('summary tables per stage', async (t) => {
  const html = renderReport({
    title: 't',
    stages: [{ name: 'sft', status: 'done' }, { name: 'rm', status: 'running' }, 'ppo'],
    metrics: [{ stage: 'rm', step: 3, loss: 0.5 }],
    summary: { stages: { sft: { status: 'done', steps: 100, wall_s: 3725.4, final: { loss: 0.123456789, tokens_per_sec: 5123 }, eval: { eval_loss: 0.5, win_rate: 0.61 } } } },
    info: { recipe: 'instructgpt', seed: 42, missing: null },
  });
  const section = (name: string) => html.match(new RegExp(`<section class="details" id="details-\\d+" data-stage="${name}">([\\s\\S]*?)</section>`))![1];
  const curves = (name: string) => html.match(new RegExp(`<section class="stage" id="stage-\\d+" data-stage="${name}">([\\s\\S]*?)</section>`))![1];
  const sft = section('sft');
  t.match(sft, /<td>status<\/td><td>done<\/td>/);
  t.match(sft, /<td>steps<\/td><td class="num">100<\/td>/);
  t.match(sft, /1:02:05 \(3725\.4 s\)/);
  t.match(sft, /final metrics[\s\S]*<td>loss<\/td><td class="num">0\.123457<\/td>[\s\S]*<td>tokens_per_sec<\/td><td class="num">5123<\/td>/);
  t.match(sft, /held-out evaluation[\s\S]*<td>win_rate<\/td><td class="num">0\.61<\/td>/);
  t.match(curves('sft'), /No charted metrics \(no metrics recorded\)/);
  t.match(curves('ppo'), /No charted metrics \(no metrics recorded: the stage has not run\)/, 'a stage not run says so');
  const rm = section('rm');
  t.match(rm, /<td>status<\/td><td>running<\/td>/);
  t.match(rm, /final metrics[\s\S]*<td>step<\/td><td class="num">3<\/td>[\s\S]*<td>loss<\/td><td class="num">0\.5<\/td>/, 'without a summary, the last metrics line');
  t.notMatch(section('ppo'), /<table/, 'nothing to tabulate');
  t.match(section('ppo'), /Nothing recorded yet: the stage has not run/);
  t.match(html, /<table class="overview">[\s\S]*href="#stage-0">sft<[\s\S]*href="#stage-2">ppo</);
  t.match(html, /<td>recipe<\/td><td>instructgpt<\/td>/);
  t.notMatch(html, /missing/);
  t.equal(checkWellFormed(html), null);
});

t.test('all text is escaped', async (t) => {
  const evil = `<script>alert("x")</script>&'`;
  const html = renderReport({
    title: `${evil} title`,
    stages: [evil],
    metrics: [
      { stage: evil, step: 1, [`reward/${evil}`]: 1, loss: 1 },
      { stage: evil, step: 2, [`reward/${evil}`]: 2, loss: 0.5 },
    ],
    summary: { stages: { [evil]: { status: evil, final: { [evil]: evil }, eval: { note: '<img src=x onerror=alert(1)>' } } } },
    info: { [evil]: evil },
  });
  t.notMatch(html, /<script/i);
  t.notMatch(html, /<img/i);
  t.notMatch(html, /alert\("x"\)/, 'quotes escaped too');
  t.match(html, /&lt;script&gt;alert\(&quot;x&quot;\)&lt;\/script&gt;&amp;&#39;/);
  const charts = parseReport(html);
  t.same([...charts.keys()], [evil], 'the escaped stage name reads back');
  t.same(charts.get(evil)![1].series.map((s) => s.key), [`reward/${evil}`]);
  t.equal(checkWellFormed(html), null);
});

t.test('self-contained: no scripts, no external URLs, no network', async (t) => {
  const html = renderReport({ title: 'x', stages: ['sft', 'ppo'], metrics: pipelineMetrics() });
  t.notMatch(html, /https?:|ftp:|file:|data:/i, 'no URLs at all');
  t.notMatch(html, /<script|<link|<iframe|<img|@import|url\(/i);
  t.notMatch(html, /\b(src|xlink:href)=/i);
  for (const m of html.matchAll(/href="([^"]*)"/g)) t.match(m[1], /^#stage-\d+$/, `in-page link ${m[1]}`);
  t.match(html, /^<!doctype html>/);
  t.match(html, /<meta charset="utf-8">/);
  t.match(html, /<style>/);
  t.match(html, /<svg class="chart"/);
  t.match(html, /data-stage="rm"/, 'a stage found only in the metrics still gets its section');
});

t.test('the outcome leads: the comparison table is the first table, then the samples, curves, details, run info', async (t) => {
  const summary = {
    stages: { sft: { status: 'done', steps: 30, eval: { eval_loss: 0.5 } }, rs: { status: 'done', steps: 1, eval: { reward_before: null, reward_after: null } } },
    comparison: { caption: 'held-out', columns: ['stage', 'score'], rows: [['sft', '0.39'], ['rs', '0.43']] },
    samples: { caption: 'greedy answers', policies: ['sft', 'rs'], rows: [{ prompt: 'Add 2 and 7.', expected: '9', answers: ['8', '9'] }] },
  };
  const html = renderReport({ title: 'demo', stages: ['sft', 'rs'], metrics: pipelineMetrics().filter((m) => m.stage === 'sft'), summary, info: { recipe: 'llama2' } });
  const firstTable = html.match(/<table class="([^"]*)"/)![1];
  t.match(firstTable, /\boutcome\b/, 'the first table is the outcome');
  t.match(html, /<table class="comparison outcome"><caption>held-out<\/caption>/);
  const order = ['id="outcome"', 'id="samples"', 'id="curves"', 'id="details"', 'id="run"'].map((m) => html.indexOf(m));
  t.ok(order.every((p, i) => p > 0 && (i === 0 || p > order[i - 1])), `sections in order ${order}`);
  t.match(html, /<table class="samples">[\s\S]*<th>prompt<\/th><th>expected<\/th><th>sft<\/th><th>rs<\/th>[\s\S]*<td class="prompt">Add 2 and 7.<\/td><td class="expected">9<\/td><td>8<\/td><td>9<\/td>/);
  t.match(html, /reward_before<\/td><td class="num"><span class="none">not measured<\/span>/, 'a null held-out figure says not measured');
  t.match(html, /reward_before, reward_after: not measured: the stage had no held-out data/, 'and why');
  t.equal(checkWellFormed(html), null);

  const plain = renderReport({ title: 'recipe', stages: ['sft', 'rs'], metrics: [], summary: { stages: summary.stages } });
  t.match(plain.match(/<table class="([^"]*)"/)![1], /\boutcome\b/, 'without a comparison: the stages\' held-out figures lead');
  t.match(plain, /<td>sft<\/td><td>done<\/td><td>eval_loss 0\.5<\/td>/);
  t.match(plain, /<td>rs<\/td><td>done<\/td><td>reward_before not measured, reward_after not measured<\/td>/);
  t.match(plain, /No sample completions in this run: /, 'an empty samples section says why');
  t.match(renderReport({ title: 'empty', stages: [], metrics: [] }), /id="outcome"><h2>Outcome<\/h2><p class="none">No stage has run yet\.<\/p>/);
});

t.test('training series: the raw line faint, an EMA over it (TensorBoard\'s debiased smoothing); eval series raw', async (t) => {
  t.same(ema([1, 1, 1], 0.6).map((v) => Number(v.toFixed(12))), [1, 1, 1], 'debiased: a constant stays constant from the first point');
  const e = ema([0, 10], 0.5);
  t.equal(e[0], 0);
  t.ok(Math.abs(e[1] - (0.5 * 10) / (1 - 0.25)) < 1e-9, `second value ${e[1]}: the EMA 5 over the weight 1 - 0.5^2 the two values carry`);
  const metrics: MetricRecord[] = [];
  for (let s = 1; s <= 40; s++) metrics.push({ stage: 'sft', step: s, loss: 2 / s + (s % 2 ? 0.3 : -0.3), ...(s % 10 === 0 ? { eval_loss: 1 / s } : {}) });
  const html = renderReport({ title: 'x', stages: ['sft'], metrics });
  const [chart] = parseReport(html).get('sft')!;
  const loss = chart.series.find((s) => s.key === 'loss')!, ev = chart.series.find((s) => s.key === 'eval_loss')!;
  t.ok(loss.smooth && loss.smooth.length === 40, 'the training loss has an EMA line with every point');
  t.equal(ev.smooth, null, 'the eval series is drawn raw only');
  const wiggle = (p: [number, number][]) => p.slice(2).reduce((a, q, i) => a + Math.abs(q[1] - 2 * p[i + 1][1] + p[i][1]), 0);
  t.ok(wiggle(loss.smooth!) < wiggle(loss.points) / 3, 'the EMA is smoother than the raw line');
  t.match(html, /<polyline class="raw" points="[^"]*" fill="none" stroke="#1f77b4" stroke-width="1.6" stroke-opacity="0.3">/, 'the raw line is faint');
  t.match(html, /faint: raw values; solid: EMA \(weight 0\.6\)/);
});

t.test('records with phases: one series per phase; repeated steps drawn in the order written; a single point says so', async (t) => {
  // Rejection sampling's records in the run: step = the round; its SFT steps repeat the round's step.
  const metrics: MetricRecord[] = [{ stage: 'rs', step: 0, phase: 'eval', reward: 0.2 }];
  for (const round of [1, 2]) {
    metrics.push({ stage: 'rs', step: round, phase: 'sample', reward: 0.5 * round });
    for (let k = 1; k <= 5; k++) metrics.push({ stage: 'rs', step: round, phase: 'sft', sft_step: k, loss: 2 - k * 0.1 - round * 0.5 });
    metrics.push({ stage: 'rs', step: round, phase: 'round' });
  }
  metrics.push({ stage: 'rs', step: 2, phase: 'eval', reward: 0.9 });
  const html = renderReport({ title: 'x', stages: ['rs'], metrics });
  const charts = parseReport(html).get('rs')!;
  const reward = charts.find((c) => c.family === 'reward')!, loss = charts.find((c) => c.family === 'loss')!;
  t.same(reward.series.map((s) => [s.key, s.n]), [['reward (eval)', 2], ['reward (sample)', 2]], 'eval and sample rewards are separate lines');
  t.same(reward.labels[0], 'step');
  t.same(loss.series.map((s) => [s.key, s.n]), [['loss (sft)', 10]]);
  t.equal(loss.labels[0], 'SFT step (rounds in sequence)', 'the SFT steps of every round in sequence');
  t.ok(loss.series[0].points.every((p, i, a) => i === 0 || p[0] > a[i - 1][0]), 'x grows: no vertical stack of points at one round');
  t.match(html, /data-series="reward \(eval\)" data-n="2"><polyline class="raw" [^>]*stroke-dasharray="5 3"/, 'the eval phase is drawn dashed, as eval_ series are');
  const one = renderReport({ title: 'x', stages: ['rs'], metrics: [{ stage: 'rs', step: 1, phase: 'sample', reward: 0.5 }] });
  t.match(one, /one value: the stage recorded it once \(e\.g\. a single round\)/);
  const mixed = renderReport({ title: 'x', stages: ['rs'], metrics: metrics.filter((m) => m.phase !== 'sample' || m.step === 1) });
  t.match(mixed, /reward \(sample\): one value, recorded once \(e\.g\. a single round\)/, 'a lone point beside a line is explained too');
});
