/**
 * The HTML report of a run (`report.html`): one self-contained file, inline
 * CSS and inline SVG charts drawn here, no scripts and no network, so it opens
 * from disk anywhere. It answers the reader's first question first: the
 * outcome (the held-out comparison of the policies, or each stage's held-out
 * figures), then what the policies now say (sample completions), then the
 * training curves, then each stage's details and the run's metadata. A
 * section with nothing to show says why. See docs/runs.md.
 */

import { escapeHtml, fmt, renderChart, stageCharts, type MetricRecord } from './report-charts';

export { CHARTED_METRICS, MAX_CHART_POINTS, ema, emaWeight, type MetricRecord } from './report-charts';

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

/** Answers of each policy to the same held-out prompts, shown side by side after the outcome. */
export interface SampleTable {
  caption: string;
  /** Column names, one per policy. */
  policies: string[];
  /** One row per prompt: the prompt, what a correct answer is (if known), and each policy's answer in `policies` order. */
  rows: { prompt: string; expected?: string; answers: string[] }[];
}

/** summary.json. */
export interface RunSummary {
  stages: Record<string, StageSummary>;
  comparison?: ComparisonTable;
  samples?: SampleTable;
}

export interface ReportInput {
  title: string;
  /** Stages in pipeline order (names, or run.json's stage entries). */
  stages: readonly (string | { name: string; status?: string })[];
  metrics: readonly MetricRecord[];
  summary?: RunSummary;
  /** Key/value lines of the run's metadata (recipe, seed, versions...), shown last. */
  info?: Record<string, string | number | boolean | null>;
}

/** Why a held-out figure is null: the stage measured nothing. */
const NOT_MEASURED = 'not measured';

function kvRows(title: string, obj: Record<string, unknown> | undefined): string {
  const entries = Object.entries(obj ?? {}).filter(([k]) => k !== 'stage');
  if (!entries.length) return '';
  const val = (v: unknown) => (v === null ? `<span class="none">${NOT_MEASURED}</span>` : escapeHtml(fmt(v)));
  return `<tr class="group"><th colspan="2">${escapeHtml(title)}</th></tr>` + entries.map(([k, v]) => `<tr><td>${escapeHtml(k)}</td><td class="num">${val(v)}</td></tr>`).join('');
}

/** The note under a stage's held-out figures when some are null. */
function unmeasuredNote(s: StageSummary | undefined): string {
  const nulls = Object.entries(s?.eval ?? {}).filter(([, v]) => v === null).map(([k]) => k);
  if (!nulls.length) return '';
  return `<p class="note">${escapeHtml(`${nulls.join(', ')}: ${NOT_MEASURED}: the stage had no held-out data (its eval_data / eval_fraction options), or stopped before evaluating.`)}</p>`;
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
  return `<table class="summary" aria-label="${escapeHtml(`summary of ${name}`)}"><tbody>${body}</tbody></table>` + unmeasuredNote(s);
}

function duration(s: number): string {
  const t = Math.round(s);
  const h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60), sec = t % 60;
  const mmss = `${String(m).padStart(h ? 2 : 1, '0')}:${String(sec).padStart(2, '0')}`;
  return h ? `${h}:${mmss}` : mmss;
}

const CSS = `
:root{--fg:#1d2330;--muted:#5b6475;--grid:#e6e8ee;--axis:#8a92a3;--bg:#fff;--card:#f7f8fa;color-scheme:light dark}
@media (prefers-color-scheme:dark){:root{--fg:#e4e7ee;--muted:#a0a8b8;--grid:#2c313c;--axis:#6b7385;--bg:#16181d;--card:#1e2128}}
body{margin:0 auto;max-width:1180px;padding:24px;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:32px 0 10px;border-bottom:1px solid var(--grid);padding-bottom:4px}h3{font-size:15px;margin:22px 0 8px}
.status{font-size:12px;font-weight:normal;color:var(--muted);margin-left:8px}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 12px 3px 0;text-align:left;vertical-align:top}
th{font-weight:600}.num{font-variant-numeric:tabular-nums}tr.group th{padding-top:10px;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
table.info td:first-child,table.summary td:first-child{color:var(--muted)}
table.overview th,table.overview td,table.comparison th,table.comparison td,table.samples th,table.samples td{border-bottom:1px solid var(--grid)}
table.comparison,table.samples{margin:.6em 0}caption{text-align:left;color:var(--muted);padding-bottom:.3em}
table.samples td{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px;white-space:pre-wrap;max-width:22em}
table.samples td.prompt{font-family:inherit;font-size:inherit}table.samples td.expected{color:var(--muted)}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:16px}
figure.chart{margin:0;padding:10px 12px;background:var(--card);border-radius:8px}
figcaption{font-weight:600;margin-bottom:4px}svg.chart{width:100%;height:auto;display:block}
svg.chart text{fill:var(--muted);font-size:11px}svg.chart .grid line{stroke:var(--grid);stroke-width:1}svg.chart .axis line{stroke:var(--axis);stroke-width:1}
svg.chart text.xlabel,svg.chart text.ylabel{fill:var(--fg);font-size:12px}
ul.legend{list-style:none;margin:4px 0 0;padding:0;display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px}
.swatch{display:inline-block;width:18px;height:0;border-top:2px solid;margin-right:6px;vertical-align:middle}.swatch.dashed{border-top-style:dashed}
p.none,.none{color:var(--muted)}p.note{color:var(--muted);font-size:12px;margin:4px 0 0}
`;

const cell = (v: string | number | null) => (v === null ? '-' : typeof v === 'number' ? fmt(v) : v);

/** The outcome: the run's comparison table, or else each stage's held-out figures. */
function outcome(input: ReportInput, stages: { name: string; status?: string }[]): string {
  const cmp = input.summary?.comparison;
  if (cmp)
    return (
      `<table class="comparison outcome"><caption>${escapeHtml(cmp.caption)}</caption><thead><tr>${cmp.columns.map((c) => `<th>${escapeHtml(c)}</th>`).join('')}</tr></thead><tbody>` +
      cmp.rows.map((r) => `<tr>${r.map((v, i) => `<td${i ? ' class="num"' : ''}>${escapeHtml(cell(v))}</td>`).join('')}</tr>`).join('') +
      `</tbody></table>`
    );
  if (!stages.length) return `<p class="none">No stage has run yet.</p>`;
  const rows = stages.map((s) => {
    const sum = input.summary?.stages?.[s.name];
    const ev = Object.entries(sum?.eval ?? {});
    const figures = ev.length ? ev.map(([k, v]) => `${k} ${v === null ? NOT_MEASURED : fmt(v)}`).join(', ') : sum ? 'no held-out evaluation' : 'not finished';
    return `<tr><td>${escapeHtml(s.name)}</td><td>${escapeHtml(sum?.status ?? s.status ?? '')}</td><td>${escapeHtml(figures)}</td></tr>`;
  });
  return (
    `<table class="outcome"><caption>Each stage's held-out figures (summary.json's eval; this run has no comparison of its policies)</caption>` +
    `<thead><tr><th>stage</th><th>status</th><th>held-out evaluation</th></tr></thead><tbody>${rows.join('')}</tbody></table>`
  );
}

/** Sample completions side by side, or why there are none. */
function samples(input: ReportInput): string {
  const t = input.summary?.samples;
  if (!t || !t.rows.length)
    return `<p class="none">No sample completions in this run: they come from a held-out evaluation that answers the same prompts with every policy (the built-in demo's, which runs after its last stage).</p>`;
  const hasExpected = t.rows.some((r) => r.expected !== undefined);
  return (
    `<table class="samples"><caption>${escapeHtml(t.caption)}</caption><thead><tr><th>prompt</th>${hasExpected ? '<th>expected</th>' : ''}${t.policies.map((p) => `<th>${escapeHtml(p)}</th>`).join('')}</tr></thead><tbody>` +
    t.rows
      .map(
        (r) =>
          `<tr><td class="prompt">${escapeHtml(r.prompt)}</td>${hasExpected ? `<td class="expected">${escapeHtml(r.expected ?? '')}</td>` : ''}` +
          t.policies.map((_, i) => `<td>${escapeHtml(r.answers[i] ?? '')}</td>`).join('') +
          `</tr>`,
      )
      .join('') +
    `</tbody></table>`
  );
}

/**
 * Renders the report (see the module comment). Per stage, a line chart of
 * every charted metric family present (CHARTED_METRICS in report-charts.ts)
 * and a summary table (status, steps, wall time, final metrics, held-out
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
  const statusOf = (s: { name: string; status?: string }) => input.summary?.stages?.[s.name]?.status ?? s.status;

  const out: string[] = [];
  out.push(`<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">`);
  out.push(`<title>${escapeHtml(input.title)}</title><style>${CSS}</style></head><body>`);
  out.push(`<header><h1>${escapeHtml(input.title)}</h1></header>`);
  out.push(`<div class="part" id="outcome"><h2>Outcome</h2>${outcome(input, stages)}</div>`);
  out.push(`<div class="part" id="samples"><h2>Sample completions</h2>${samples(input)}</div>`);

  out.push(`<div class="part" id="curves"><h2>Training curves</h2>`);
  if (!stages.length) out.push(`<p class="none">No stage has run yet.</p>`);
  stages.forEach((s, i) => {
    const recs = byStage.get(s.name) ?? [];
    const status = statusOf(s);
    out.push(`<section class="stage" id="stage-${i}" data-stage="${escapeHtml(s.name)}"><h3>${escapeHtml(s.name)}${status ? `<span class="status">${escapeHtml(status)}</span>` : ''}</h3>`);
    const charts = stageCharts(recs);
    if (charts.length) out.push(`<div class="charts">${charts.map(renderChart).join('')}</div>`);
    else out.push(`<p class="none">No charted metrics${recs.length ? ' (this stage records none of the charted families)' : status === 'pending' || status === undefined ? ' (no metrics recorded: the stage has not run)' : ' (no metrics recorded)'}.</p>`);
    out.push(`</section>`);
  });
  out.push(`</div>`);

  out.push(`<div class="part" id="details"><h2>Stage details</h2>`);
  if (stages.length) {
    out.push(`<table class="overview"><thead><tr><th>stage</th><th>status</th><th>steps</th><th>wall time</th></tr></thead><tbody>`);
    stages.forEach((s, i) => {
      const sum = input.summary?.stages?.[s.name];
      const recs = byStage.get(s.name);
      const steps = sum?.steps ?? recs?.[recs.length - 1]?.step;
      out.push(
        `<tr><td><a href="#stage-${i}">${escapeHtml(s.name)}</a></td><td>${escapeHtml(statusOf(s) ?? '')}</td>` +
          `<td class="num">${escapeHtml(fmt(steps))}</td><td class="num">${typeof sum?.wall_s === 'number' ? escapeHtml(duration(sum.wall_s)) : ''}</td></tr>`,
      );
    });
    out.push(`</tbody></table>`);
  } else out.push(`<p class="none">No stage has run yet.</p>`);
  stages.forEach((s, i) => {
    const recs = byStage.get(s.name) ?? [];
    const table = summaryTable(s.name, s.status, input.summary?.stages?.[s.name], recs[recs.length - 1]);
    out.push(`<section class="details" id="details-${i}" data-stage="${escapeHtml(s.name)}"><h3>${escapeHtml(s.name)}</h3>${table || '<p class="none">Nothing recorded yet: the stage has not run.</p>'}</section>`);
  });
  out.push(`</div>`);

  const info = Object.entries(input.info ?? {}).filter(([, v]) => v !== null && v !== undefined);
  out.push(`<div class="part" id="run"><h2>Run</h2>`);
  out.push(info.length ? `<table class="info"><tbody>${info.map(([k, v]) => `<tr><td>${escapeHtml(k)}</td><td>${escapeHtml(fmt(v))}</td></tr>`).join('')}</tbody></table>` : `<p class="none">No run metadata given.</p>`);
  out.push(`</div>`);
  out.push(`</body></html>\n`);
  return out.join('\n');
}
