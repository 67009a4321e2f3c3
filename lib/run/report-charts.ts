/**
 * The report's charts: inline SVG line charts of a stage's metrics, drawn
 * here (no script, no library). Each training series is drawn twice, as
 * TensorBoard and W&B draw them: the raw values faint, and an exponential
 * moving average on top (debiased as TensorBoard's, so it starts at the
 * first value instead of at 0). Held-out (`eval_*`) series are few points
 * and are drawn raw, dashed.
 */

/** One line of metrics.jsonl. */
export interface MetricRecord {
  stage: string;
  step: number;
  [key: string]: unknown;
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
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** A number for tables and tooltips: up to 6 significant digits. */
export function fmt(v: unknown): string {
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

interface Series {
  key: string;
  points: [number, number][];
}

export interface Chart {
  family: string;
  label: string;
  /** What x is: the step, or (when a series' steps repeat) the n-th value in the order written. */
  xlabel: string;
  series: Series[];
}

/**
 * The EMA weight for a series of n points: TensorBoard's default 0.6 for
 * short series, heavier for long ones (at 0.6 a 1000-step loss would stay as
 * noisy as the raw line).
 */
export function emaWeight(n: number): number {
  return Number(Math.min(0.95, Math.max(0.6, 1 - 30 / n)).toFixed(2));
}

/** TensorBoard's smoothing: an EMA divided by (1 - w^k), the weight the first k values have. */
export function ema(ys: readonly number[], w: number): number[] {
  let last = 0, acc = 1;
  return ys.map((y) => {
    last = last * w + (1 - w) * y;
    acc *= w;
    return last / (1 - acc);
  });
}

/**
 * The charted series of one stage's records, grouped by family (families in
 * CHARTED_METRICS order, series by first appearance). A stage whose records
 * carry a `phase` (rejection sampling's sample, sft and round records) gets a
 * series per phase (`loss (sft)`), so that values of different phases are
 * not joined into one line. A series whose steps repeat (each round's SFT
 * steps share the round's step) is drawn against the order its values were
 * written instead, in a chart of its own.
 */
export function stageCharts(records: readonly MetricRecord[]): Chart[] {
  const byKey = new Map<string, { family: string; pts: [number, number][]; sft: boolean }>();
  for (const r of records) {
    if (typeof r.step !== 'number' || !Number.isFinite(r.step)) continue;
    for (const [k, v] of Object.entries(r)) {
      if (k === 'stage' || k === 'step' || typeof v !== 'number' || !Number.isFinite(v)) continue;
      const fam = FAMILY_OF.exec(k);
      if (!fam) continue;
      const key = typeof r.phase === 'string' ? `${k} (${r.phase})` : k;
      let s = byKey.get(key);
      if (!s) byKey.set(key, (s = { family: fam[1], pts: [], sft: true }));
      s.pts.push([r.step, v]);
      s.sft &&= typeof r.sft_step === 'number';
    }
  }
  const out: Chart[] = [];
  for (const c of CHARTED_METRICS) {
    const groups = new Map<string, Series[]>();
    const keys = [...byKey.keys()].filter((k) => byKey.get(k)!.family === c.family);
    // the plain key first, then its eval twin, then per-name lines
    keys.sort((a, b) => rank(a) - rank(b));
    for (const key of keys) {
      const s = byKey.get(key)!;
      const repeats = s.pts.some((p, i) => i > 0 && p[0] <= s.pts[i - 1][0]);
      const xlabel = !repeats ? 'step' : s.sft ? 'SFT step (rounds in sequence)' : 'value (in the order written)';
      const points: [number, number][] = repeats ? s.pts.map((p, i) => [i + 1, p[1]]) : s.pts;
      let list = groups.get(xlabel);
      if (!list) groups.set(xlabel, (list = []));
      list.push({ key, points });
    }
    for (const [xlabel, series] of groups) out.push({ family: c.family, label: c.label, xlabel, series });
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

const W = 560, H = 250, ML = 64, MR = 16, MT = 14, MB = 42;
/** Held-out series: `eval_*` keys, and any key of a record whose phase is 'eval'. */
const isEval = (key: string) => key.startsWith('eval_') || key.endsWith(' (eval)');
/** Series with fewer points than this are drawn raw only: an average of two or three values shows nothing more. */
const MIN_SMOOTHED = 4;

export function renderChart(chart: Chart): string {
  const drawn = chart.series.map((s) => {
    const smooth = !isEval(s.key) && s.points.length >= MIN_SMOOTHED;
    const w = emaWeight(s.points.length);
    const ys = smooth ? ema(s.points.map((p) => p[1]), w) : [];
    return { ...s, draw: reduce(s.points), smooth: smooth ? reduce(s.points.map((p, i) => [p[0], ys[i]] as [number, number])) : null, w };
  });
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
  const poly = (pts: [number, number][]) => pts.map(([x, y]) => `${r2(sx(x))},${r2(sy(y))}`).join(' ');
  const xStep = xt.ticks.length > 1 ? xt.ticks[1] - xt.ticks[0] : 1, yStep = yt.ticks.length > 1 ? yt.ticks[1] - yt.ticks[0] : 1;
  const parts: string[] = [];
  const aria = `${chart.label} by ${chart.xlabel}: ${chart.series.map((s) => s.key).join(', ')}`;
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
  parts.push(`<text class="xlabel" x="${ML + pw / 2}" y="${H - 6}" text-anchor="middle">${escapeHtml(chart.xlabel)}</text>`);
  parts.push(`<text class="ylabel" transform="translate(14 ${MT + ph / 2}) rotate(-90)" text-anchor="middle">${escapeHtml(chart.label)}</text>`);
  parts.push(`</g>`);
  drawn.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    const dash = isEval(s.key) ? ' stroke-dasharray="5 3"' : '';
    parts.push(`<g class="series" data-series="${escapeHtml(s.key)}" data-n="${s.points.length}">`);
    // The raw line first (faint when a smoothed line is drawn over it).
    parts.push(`<polyline class="raw" points="${poly(s.draw)}" fill="none" stroke="${color}" stroke-width="1.6"${s.smooth ? ' stroke-opacity="0.3"' : ''}${dash}><title>${escapeHtml(s.key)}</title></polyline>`);
    if (s.smooth) parts.push(`<polyline class="ema" points="${poly(s.smooth)}" fill="none" stroke="${color}" stroke-width="2"><title>${escapeHtml(`${s.key}, EMA (weight ${s.w})`)}</title></polyline>`);
    if (s.draw.length <= 60)
      for (const [x, y] of s.draw)
        parts.push(`<circle cx="${r2(sx(x))}" cy="${r2(sy(y))}" r="${s.smooth ? 1.8 : 2.6}" fill="${color}"${s.smooth ? ' fill-opacity="0.4"' : ''}><title>${escapeHtml(`${s.key} at ${chart.xlabel} ${fmt(x)}: ${fmt(y)}`)}</title></circle>`);
    parts.push(`</g>`);
  });
  parts.push(`</svg>`);
  const legend =
    chart.series.length > 1 || chart.series[0].key !== chart.family
      ? `<ul class="legend">${drawn.map((s, i) => `<li><span class="swatch${isEval(s.key) ? ' dashed' : ''}" style="border-color:${PALETTE[i % PALETTE.length]}"></span>${escapeHtml(s.key)}${s.draw.length < s.points.length ? ` <small>(${s.points.length} points, ${s.draw.length} drawn)</small>` : ''}</li>`).join('')}</ul>`
      : '';
  const smoothed = drawn.filter((s) => s.smooth);
  const notes: string[] = [];
  if (smoothed.length) notes.push(`faint: raw values; solid: EMA (weight ${[...new Set(smoothed.map((s) => s.w))].join(', ')})`);
  const single = chart.series.filter((s) => s.points.length === 1);
  if (single.length === chart.series.length)
    notes.push(`one value${chart.series.length > 1 ? ' per line' : ''}: the stage recorded it once (e.g. a single round); more rounds or steps draw a line`);
  else if (single.length) notes.push(`${single.map((s) => s.key).join(', ')}: one value, recorded once (e.g. a single round)`);
  const note = notes.length ? `<p class="note">${escapeHtml(notes.join('; '))}</p>` : '';
  return `<figure class="chart" data-family="${escapeHtml(chart.family)}"><figcaption>${escapeHtml(chart.label)}</figcaption>${parts.join('')}${legend}${note}</figure>`;
}
