/**
 * The HTML report of a run (`report.html`): one self-contained file, inline
 * CSS and inline SVG charts drawn here, no scripts and no network, so it opens
 * from disk anywhere. See docs/runs.md for the metric names it charts.
 */

/** One line of metrics.jsonl. */
export interface MetricRecord {
  stage: string;
  step: number;
  [key: string]: unknown;
}

/** What summary.json holds for one stage. */
export interface StageSummary {
  status?: string;
  /** Optimizer steps done. */
  steps?: number;
  /** Wall-clock seconds of the stage (summed over resumed sessions, up to their last checkpoint). */
  wall_s?: number;
  /** Training metrics at the end of the stage (by default the last metrics line). */
  final?: Record<string, unknown>;
  /** Held-out evaluation at the end of the stage. */
  eval?: Record<string, unknown>;
  [key: string]: unknown;
}

/** A table comparing the run's policies (the demo's held-out evaluation), shown first in the report. */
export interface ComparisonTable {
  caption: string;
  columns: string[];
  rows: (string | number | null)[][];
}

/** summary.json. */
export interface RunSummary {
  stages: Record<string, StageSummary>;
  comparison?: ComparisonTable;
}

export interface ReportInput {
  title: string;
  /** Stages in pipeline order (names, or run.json's stage entries). */
  stages: readonly (string | { name: string; status?: string })[];
  metrics: readonly MetricRecord[];
  summary?: RunSummary;
  /** Key/value lines shown under the title (recipe, seed, versions...). */
  info?: Record<string, string | number | boolean | null>;
}

/**
 * The metric families the report charts, one chart each per stage. A key
 * belongs to family F when it is `F`, `eval_F`, `F/<name>` or `eval_F/<name>`
 * (e.g. `reward/helpful`, one line per reward model).
 */
export const CHARTED_METRICS = [
  { family: 'loss', label: 'loss' },
  { family: 'reward', label: 'reward' },
  { family: 'kl', label: 'KL' },
  { family: 'accuracy', label: 'accuracy' },
  { family: 'tokens_per_sec', label: 'tokens / s' },
  { family: 'response_length', label: 'response length (tokens)' },
] as const;

/** Series longer than this are reduced (per-bucket minimum and maximum kept) before drawing. */
export const MAX_CHART_POINTS = 2000;

const FAMILY_OF = new RegExp(`^(?:eval_)?(${CHARTED_METRICS.map((c) => c.family).join('|')})(?:/.+)?$`);
const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#e377c2', '#17becf'];

/** Escapes text for HTML text and attribute values. */
function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

interface Series {
  key: string;
  points: [number, number][];
}

/** The charted series of one stage's records, grouped by family (families in CHARTED_METRICS order, series by first appearance). */
function stageCharts(records: readonly MetricRecord[]): { family: string; label: string; series: Series[] }[] {
  const byKey = new Map<string, [number, number][]>();
  for (const r of records) {
    if (typeof r.step !== 'number' || !Number.isFinite(r.step)) continue;
    for (const [k, v] of Object.entries(r)) {
      if (k === 'stage' || k === 'step' || typeof v !== 'number' || !Number.isFinite(v) || !FAMILY_OF.test(k)) continue;
      let pts = byKey.get(k);
      if (!pts) byKey.set(k, (pts = []));
      pts.push([r.step, v]);
    }
  }
  const out: { family: string; label: string; series: Series[] }[] = [];
  for (const c of CHARTED_METRICS) {
    const keys = [...byKey.keys()].filter((k) => FAMILY_OF.exec(k)![1] === c.family);
    // the plain key first, then its eval twin, then per-name lines
    keys.sort((a, b) => rank(a) - rank(b));
    if (keys.length) out.push({ family: c.family, label: c.label, series: keys.map((key) => ({ key, points: byKey.get(key)!.sort((p, q) => p[0] - q[0]) })) });
  }
  return out;
}

function rank(k: string): number {
  return (k.includes('/') ? 2 : 0) + (k.startsWith('eval_') ? 1 : 0);
}

/** Keeps each bucket's lowest and highest point (in step order) so peaks survive. */
function reduce(points: [number, number][]): [number, number][] {
  if (points.length <= MAX_CHART_POINTS) return points;
  const buckets = MAX_CHART_POINTS / 2;
  const out: [number, number][] = [];
  for (let b = 0; b < buckets; b++) {
    const lo = Math.floor((b * points.length) / buckets), hi = Math.floor(((b + 1) * points.length) / buckets);
    if (hi <= lo) continue;
    let mn = lo, mx = lo;
    for (let i = lo + 1; i < hi; i++) {
      if (points[i][1] < points[mn][1]) mn = i;
      if (points[i][1] > points[mx][1]) mx = i;
    }
    if (mn === mx) out.push(points[mn]);
    else out.push(points[Math.min(mn, mx)], points[Math.max(mn, mx)]);
  }
  return out;
}

/** 1-2-5 ticks covering [lo, hi]; the domain is widened to the outer ticks. */
function niceTicks(lo: number, hi: number, target = 5, integer = false): { lo: number; hi: number; ticks: number[] } {
  if (!(hi > lo)) {
    const d = integer ? 1 : lo === 0 ? 1 : Math.abs(lo) * 0.1;
    lo -= d;
    hi += d;
  }
  const raw = (hi - lo) / target;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const f = raw / mag;
  let step = (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
  if (integer) step = Math.max(1, Math.round(step));
  const a = Math.floor(lo / step + 1e-9), b = Math.ceil(hi / step - 1e-9);
  const ticks: number[] = [];
  for (let k = a; k <= b; k++) ticks.push(Number((k * step).toPrecision(12)));
  return { lo: ticks[0], hi: ticks[ticks.length - 1], ticks };
}

function tickLabel(v: number, step: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e6 || step < 1e-4) return v.toExponential(Math.max(0, Math.min(3, Math.ceil(-Math.log10(step / a)) - 1))).replace('e+', 'e');
  return v.toFixed(Math.max(0, Math.ceil(-Math.log10(step) - 1e-9)));
}

/** A number for tables and tooltips: up to 6 significant digits. */
function fmt(v: unknown): string {
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) return String(v);
    if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-4 || a >= 1e9) ? v.toExponential(4) : String(Number(v.toPrecision(6)));
  }
  if (typeof v === 'string') return v;
  if (v === null || v === undefined) return '';
  return JSON.stringify(v);
}

function duration(s: number): string {
  const t = Math.round(s);
  const h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60), sec = t % 60;
  const mmss = `${String(m).padStart(h ? 2 : 1, '0')}:${String(sec).padStart(2, '0')}`;
  return h ? `${h}:${mmss}` : mmss;
}

const W = 560, H = 250, ML = 64, MR = 16, MT = 14, MB = 42;

function renderChart(chart: { family: string; label: string; series: Series[] }): string {
  const drawn = chart.series.map((s) => ({ ...s, draw: reduce(s.points) }));
  let xmin = Infinity, xmax = -Infinity, ymin = Infinity, ymax = -Infinity;
  for (const s of chart.series)
    for (const [x, y] of s.points) {
      xmin = Math.min(xmin, x);
      xmax = Math.max(xmax, x);
      ymin = Math.min(ymin, y);
      ymax = Math.max(ymax, y);
    }
  const xt = niceTicks(xmin, xmax, 6, true);
  const yt = niceTicks(ymin, ymax, 5);
  const pw = W - ML - MR, ph = H - MT - MB;
  const sx = (x: number) => ML + ((x - xt.lo) / (xt.hi - xt.lo)) * pw;
  const sy = (y: number) => MT + ph - ((y - yt.lo) / (yt.hi - yt.lo)) * ph;
  const r2 = (v: number) => Math.round(v * 100) / 100;
  const xStep = xt.ticks.length > 1 ? xt.ticks[1] - xt.ticks[0] : 1, yStep = yt.ticks.length > 1 ? yt.ticks[1] - yt.ticks[0] : 1;
  const parts: string[] = [];
  const aria = `${chart.label} by step: ${chart.series.map((s) => s.key).join(', ')}`;
  parts.push(`<svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="${escapeHtml(aria)}">`);
  parts.push(`<g class="grid">`);
  for (const v of yt.ticks) parts.push(`<line x1="${ML}" x2="${W - MR}" y1="${r2(sy(v))}" y2="${r2(sy(v))}"/>`);
  for (const v of xt.ticks) parts.push(`<line x1="${r2(sx(v))}" x2="${r2(sx(v))}" y1="${MT}" y2="${MT + ph}"/>`);
  parts.push(`</g><g class="axis">`);
  parts.push(`<line x1="${ML}" x2="${ML}" y1="${MT}" y2="${MT + ph}"/><line x1="${ML}" x2="${W - MR}" y1="${MT + ph}" y2="${MT + ph}"/>`);
  for (const v of yt.ticks)
    parts.push(`<line x1="${ML - 4}" x2="${ML}" y1="${r2(sy(v))}" y2="${r2(sy(v))}"/><text class="ytick" x="${ML - 7}" y="${r2(sy(v) + 4)}" text-anchor="end">${escapeHtml(tickLabel(v, yStep))}</text>`);
  for (const v of xt.ticks)
    parts.push(`<line x1="${r2(sx(v))}" x2="${r2(sx(v))}" y1="${MT + ph}" y2="${MT + ph + 4}"/><text class="xtick" x="${r2(sx(v))}" y="${MT + ph + 17}" text-anchor="middle">${escapeHtml(tickLabel(v, xStep))}</text>`);
  parts.push(`<text class="xlabel" x="${ML + pw / 2}" y="${H - 6}" text-anchor="middle">step</text>`);
  parts.push(`<text class="ylabel" transform="translate(14 ${MT + ph / 2}) rotate(-90)" text-anchor="middle">${escapeHtml(chart.label)}</text>`);
  parts.push(`</g>`);
  drawn.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    const dash = s.key.startsWith('eval_') ? ' stroke-dasharray="5 3"' : '';
    const pts = s.draw.map(([x, y]) => `${r2(sx(x))},${r2(sy(y))}`).join(' ');
    parts.push(`<g class="series" data-series="${escapeHtml(s.key)}" data-n="${s.points.length}">`);
    parts.push(`<polyline points="${pts}" fill="none" stroke="${color}" stroke-width="1.6"${dash}><title>${escapeHtml(s.key)}</title></polyline>`);
    if (s.draw.length <= 60)
      for (const [x, y] of s.draw)
        parts.push(`<circle cx="${r2(sx(x))}" cy="${r2(sy(y))}" r="2.6" fill="${color}"><title>${escapeHtml(`${s.key} at step ${fmt(x)}: ${fmt(y)}`)}</title></circle>`);
    parts.push(`</g>`);
  });
  parts.push(`</svg>`);
  const legend = chart.series.length > 1 || chart.series[0].key !== chart.family
    ? `<ul class="legend">${drawn.map((s, i) => `<li><span class="swatch${s.key.startsWith('eval_') ? ' dashed' : ''}" style="border-color:${PALETTE[i % PALETTE.length]}"></span>${escapeHtml(s.key)}${s.draw.length < s.points.length ? ` <small>(${s.points.length} points, ${s.draw.length} drawn)</small>` : ''}</li>`).join('')}</ul>`
    : '';
  return `<figure class="chart" data-family="${escapeHtml(chart.family)}"><figcaption>${escapeHtml(chart.label)}</figcaption>${parts.join('')}${legend}</figure>`;
}

function kvRows(title: string, obj: Record<string, unknown> | undefined): string {
  const entries = Object.entries(obj ?? {}).filter(([k]) => k !== 'stage');
  if (!entries.length) return '';
  return `<tr class="group"><th colspan="2">${escapeHtml(title)}</th></tr>` + entries.map(([k, v]) => `<tr><td>${escapeHtml(k)}</td><td class="num">${escapeHtml(fmt(v))}</td></tr>`).join('');
}

function summaryTable(name: string, status: string | undefined, s: StageSummary | undefined, last: MetricRecord | undefined): string {
  const head: string[] = [];
  const st = s?.status ?? status;
  if (st) head.push(`<tr><td>status</td><td>${escapeHtml(st)}</td></tr>`);
  const steps = s?.steps ?? last?.step;
  if (steps !== undefined) head.push(`<tr><td>steps</td><td class="num">${escapeHtml(fmt(steps))}</td></tr>`);
  if (typeof s?.wall_s === 'number') head.push(`<tr><td>wall time</td><td class="num">${escapeHtml(duration(s.wall_s))} (${escapeHtml(fmt(Number(s.wall_s.toFixed(1))))} s)</td></tr>`);
  const known = new Set(['status', 'steps', 'wall_s', 'final', 'eval']);
  const extra = Object.fromEntries(Object.entries(s ?? {}).filter(([k]) => !known.has(k)));
  const finalMetrics = s?.final ?? (last ? Object.fromEntries(Object.entries(last).filter(([k]) => k !== 'stage')) : undefined);
  const body = head.join('') + kvRows('final metrics', finalMetrics) + kvRows('held-out evaluation', s?.eval) + kvRows('other', extra);
  if (!body) return '';
  return `<table class="summary" aria-label="${escapeHtml(`summary of ${name}`)}"><tbody>${body}</tbody></table>`;
}

const CSS = `
:root{--fg:#1d2330;--muted:#5b6475;--grid:#e6e8ee;--axis:#8a92a3;--bg:#fff;--card:#f7f8fa;color-scheme:light dark}
@media (prefers-color-scheme:dark){:root{--fg:#e4e7ee;--muted:#a0a8b8;--grid:#2c313c;--axis:#6b7385;--bg:#16181d;--card:#1e2128}}
body{margin:0 auto;max-width:1180px;padding:24px;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:32px 0 10px;border-bottom:1px solid var(--grid);padding-bottom:4px}
.status{font-size:12px;font-weight:normal;color:var(--muted);margin-left:8px}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 12px 3px 0;text-align:left;vertical-align:top}
th{font-weight:600}.num{font-variant-numeric:tabular-nums}tr.group th{padding-top:10px;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
table.info td:first-child,table.summary td:first-child{color:var(--muted)}
table.overview th,table.overview td,table.comparison th,table.comparison td{border-bottom:1px solid var(--grid)}
table.comparison{margin:.6em 0}table.comparison caption{text-align:left;color:var(--muted);padding-bottom:.3em}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:16px}
figure.chart{margin:0;padding:10px 12px;background:var(--card);border-radius:8px}
figcaption{font-weight:600;margin-bottom:4px}svg.chart{width:100%;height:auto;display:block}
svg.chart text{fill:var(--muted);font-size:11px}svg.chart .grid line{stroke:var(--grid);stroke-width:1}svg.chart .axis line{stroke:var(--axis);stroke-width:1}
svg.chart text.xlabel,svg.chart text.ylabel{fill:var(--fg);font-size:12px}
ul.legend{list-style:none;margin:4px 0 0;padding:0;display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px}
.swatch{display:inline-block;width:18px;height:0;border-top:2px solid;margin-right:6px;vertical-align:middle}.swatch.dashed{border-top-style:dashed}
p.none{color:var(--muted)}
`;

/**
 * Renders the report: per stage, a line chart (by step, axes with ticks and
 * labels) of every charted metric family present (CHARTED_METRICS) and a
 * summary table (status, steps, wall time, final metrics, held-out
 * evaluation). Stages named in `metrics` or `summary` but not in `stages`
 * follow the listed ones. Every text is escaped; the page has no scripts and
 * refers to nothing outside itself.
 */
export function renderReport(input: ReportInput): string {
  const stages: { name: string; status?: string }[] = input.stages.map((s) => (typeof s === 'string' ? { name: s } : { name: s.name, status: s.status }));
  const seen = new Set(stages.map((s) => s.name));
  const extra = (name: unknown) => {
    if (typeof name === 'string' && !seen.has(name)) {
      seen.add(name);
      stages.push({ name });
    }
  };
  for (const r of input.metrics) extra(r.stage);
  for (const name of Object.keys(input.summary?.stages ?? {})) extra(name);

  const byStage = new Map<string, MetricRecord[]>();
  for (const r of input.metrics) {
    let list = byStage.get(r.stage);
    if (!list) byStage.set(r.stage, (list = []));
    list.push(r);
  }

  const out: string[] = [];
  out.push(`<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">`);
  out.push(`<title>${escapeHtml(input.title)}</title><style>${CSS}</style></head><body>`);
  out.push(`<header><h1>${escapeHtml(input.title)}</h1>`);
  const info = Object.entries(input.info ?? {}).filter(([, v]) => v !== null && v !== undefined);
  if (info.length) out.push(`<table class="info"><tbody>${info.map(([k, v]) => `<tr><td>${escapeHtml(k)}</td><td>${escapeHtml(fmt(v))}</td></tr>`).join('')}</tbody></table>`);
  const cmp = input.summary?.comparison;
  if (cmp) {
    const cell = (v: string | number | null) => (v === null ? '-' : typeof v === 'number' ? fmt(v) : v);
    out.push(
      `<table class="comparison"><caption>${escapeHtml(cmp.caption)}</caption><thead><tr>${cmp.columns.map((c) => `<th>${escapeHtml(c)}</th>`).join('')}</tr></thead><tbody>` +
        cmp.rows.map((r) => `<tr>${r.map((v, i) => `<td${i ? ' class="num"' : ''}>${escapeHtml(cell(v))}</td>`).join('')}</tr>`).join('') +
        `</tbody></table>`,
    );
  }
  if (stages.length) {
    out.push(`<table class="overview"><thead><tr><th>stage</th><th>status</th><th>steps</th><th>wall time</th></tr></thead><tbody>`);
    stages.forEach((s, i) => {
      const sum = input.summary?.stages?.[s.name];
      const recs = byStage.get(s.name);
      const steps = sum?.steps ?? recs?.[recs.length - 1]?.step;
      out.push(
        `<tr><td><a href="#stage-${i}">${escapeHtml(s.name)}</a></td><td>${escapeHtml(sum?.status ?? s.status ?? '')}</td>` +
          `<td class="num">${escapeHtml(fmt(steps))}</td><td class="num">${typeof sum?.wall_s === 'number' ? escapeHtml(duration(sum.wall_s)) : ''}</td></tr>`,
      );
    });
    out.push(`</tbody></table>`);
  }
  out.push(`</header>`);

  stages.forEach((s, i) => {
    const recs = byStage.get(s.name) ?? [];
    const sum = input.summary?.stages?.[s.name];
    const status = sum?.status ?? s.status;
    out.push(`<section class="stage" id="stage-${i}" data-stage="${escapeHtml(s.name)}"><h2>${escapeHtml(s.name)}${status ? `<span class="status">${escapeHtml(status)}</span>` : ''}</h2>`);
    const charts = stageCharts(recs);
    if (charts.length) out.push(`<div class="charts">${charts.map(renderChart).join('')}</div>`);
    else out.push(`<p class="none">No charted metrics${recs.length ? '' : ' (no metrics recorded)'}.</p>`);
    out.push(summaryTable(s.name, s.status, sum, recs[recs.length - 1]));
    out.push(`</section>`);
  });
  out.push(`</body></html>\n`);
  return out.join('\n');
}
