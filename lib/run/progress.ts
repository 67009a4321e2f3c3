/**
 * Progress display for long stages. On a terminal: one line redrawn in place,
 *
 *   sft [#######.............] 12/80 loss 0.53 reward 1.2 ETA 0:42
 *
 * elsewhere (files, CI logs): plain lines, few enough to read in a log: the
 * first step, each further tenth of the total, the last step once, and in
 * between a line when `intervalMs` has passed with something new to show,
 * spaced out to a fifteenth of the stage's expected length (from the rate so
 * far; without one, a fifth of the time elapsed), so that a stage writes
 * about 30 lines at most however long it runs. Writing never throws: a closed
 * or failing stream silently turns the display off.
 */

/** What the display writes to: a Writable such as process.stderr, or anything with `write`. */
export interface ProgressStream {
  write(chunk: string, cb?: (err?: Error | null) => void): unknown;
  isTTY?: boolean;
  /** Terminal width; lines are cut to fit so that redrawing works. */
  columns?: number;
  destroyed?: boolean;
  writableEnded?: boolean;
  on?(event: 'error', listener: (err: Error) => void): unknown;
  off?(event: 'error', listener: (err: Error) => void): unknown;
}

export interface ProgressOptions {
  label: string;
  /** Last step; <= 0 when unknown (no bar, no ETA). */
  total: number;
  /** Default process.stderr. */
  stream?: ProgressStream;
  /** Redraw one line in place. Default `stream.isTTY`. */
  isTTY?: boolean;
  /** Minimum milliseconds between outputs: redraws on a terminal (default 100); otherwise between lines that no tenth of the total prompted (default 10000). */
  intervalMs?: number;
  /** The step the work starts from (a resumed run): the ETA counts only steps done since. Default 0. */
  start?: number;
  /** Bar width in characters. Default 20. */
  width?: number;
  /** Clock in milliseconds. Default Date.now (tests pass their own). */
  now?: () => number;
}

/** Values shown after the counter: numbers with 3 significant digits, strings as they are. */
export type ProgressFields = Record<string, number | string | null | undefined>;

export interface Progress {
  /** Records that `step` is done, with the latest values to show. Outputs on the first step and the last, and as the module comment says in between. */
  tick(step: number, fields?: ProgressFields): void;
  /** Prints a line of its own without breaking the bar (the bar is redrawn below it). */
  log(line: string): void;
  /** Final output (the last state, total time, and `fields`), then a newline on a terminal. Later calls do nothing. */
  done(fields?: ProgressFields): void;
}

/** m:ss, or h:mm:ss from an hour. */
function formatDuration(ms: number): string {
  const t = Math.max(0, Math.round(ms / 1000));
  const h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60), s = t % 60;
  return h ? `${h}:${String(m).padStart(2, '0')}:${String(s).padStart(2, '0')}` : `${m}:${String(s).padStart(2, '0')}`;
}

function formatValue(v: number | string): string {
  if (typeof v === 'string') return v;
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (Number.isInteger(v) || a >= 1000) return String(Math.round(v));
  if (a !== 0 && a < 1e-3) return v.toExponential(1);
  return String(Number(v.toPrecision(3)));
}

function formatFields(fields: ProgressFields): string {
  return Object.entries(fields)
    .filter((e): e is [string, number | string] => e[1] !== null && e[1] !== undefined)
    .map(([k, v]) => ` ${k} ${formatValue(v)}`)
    .join('');
}

/** Creates a progress display (see the module comment). */
export function createProgress(opts: ProgressOptions): Progress {
  const stream = opts.stream ?? process.stderr;
  const tty = opts.isTTY ?? Boolean(stream.isTTY);
  const interval = opts.intervalMs ?? (tty ? 100 : 10_000);
  const now = opts.now ?? Date.now;
  const width = Math.max(1, Math.floor(opts.width ?? 20));
  const total = opts.total > 0 ? opts.total : 0;
  const t0 = now();
  const start = opts.start ?? 0;
  let dead = false, finished = false;
  let step = start, fields: ProgressFields = {};
  let lastOut = -Infinity, shownStep = NaN, drawn = false, ticked = false;
  // Plain lines: the tenth of the total last shown, and whether anything changed since the last line.
  let shownTenth = -1, fresh = false, lastShownAtTotal = false;

  const onError = () => {
    dead = true;
  };
  try {
    stream.on?.('error', onError);
  } catch {
    // a stream without events
  }
  const detach = () => {
    try {
      stream.off?.('error', onError);
    } catch {
      // ignore
    }
  };

  const write = (s: string, last = false) => {
    if (dead || stream.destroyed || stream.writableEnded) {
      dead = true;
      if (last) detach();
      return;
    }
    try {
      // The error listener stays until the last write has completed; after a failed write it stays for
      // good, since the stream reports the failure as an 'error' event after the write's callback.
      stream.write(s, last ? (err) => (err ? (dead = true) : detach()) : undefined);
    } catch {
      dead = true;
      if (last) detach();
    }
  };

  const counter = () => (total ? `${step}/${total}` : `${step}`);
  const eta = (t: number): string => {
    const done = step - start;
    if (!total || done <= 0 || step >= total || t <= t0) return '';
    return ` ETA ${formatDuration(((t - t0) / done) * (total - step))}`;
  };
  const bar = () => {
    if (!total) return '';
    const filled = Math.min(width, Math.floor((Math.min(step, total) / total) * width));
    return ` [${'#'.repeat(filled)}${'.'.repeat(width - filled)}]`;
  };
  const fit = (line: string) => {
    const cols = stream.columns;
    return cols && cols > 1 && line.length > cols - 1 ? line.slice(0, cols - 1) : line;
  };
  const ttyLine = (t: number) => fit(`${opts.label}${bar()} ${counter()}${formatFields(fields)}${eta(t)}`);
  const plainLine = (t: number) => {
    const pct = total ? ` (${Math.floor((Math.min(step, total) / total) * 100)}%)` : '';
    return `${opts.label} ${counter()}${pct}${formatFields(fields)} elapsed ${formatDuration(t - t0)}${eta(t)}`;
  };
  const output = (t: number) => {
    lastOut = t;
    shownStep = step;
    if (tty) {
      write(`\r${ttyLine(t)}\x1b[K`);
      drawn = true;
    } else {
      write(plainLine(t) + '\n');
      shownTenth = tenth();
      fresh = false;
      lastShownAtTotal = total > 0 && step >= total;
    }
  };
  const tenth = () => (total ? Math.floor((Math.min(step, total) / total) * 10) : -1);
  /** Whether a plain line is due at time t (after the first). */
  const lineDue = (t: number) => {
    if (total > 0 && step >= total) return !lastShownAtTotal;
    if (total > 0 && tenth() > shownTenth) return true;
    if (!fresh) return false;
    const done = step - start;
    const expected = total && done > 0 ? ((t - t0) / done) * (total - start) : 0;
    const gap = Math.max(interval, expected ? expected / 15 : (t - t0) / 5);
    return t - lastOut >= gap;
  };

  return {
    tick(s, f) {
      if (finished || dead) return;
      fresh ||= s !== step || f !== undefined;
      step = s;
      if (f) fields = { ...fields, ...f };
      const t = now();
      const first = !ticked;
      ticked = true;
      if (tty ? first || (total > 0 && s >= total) || t - lastOut >= interval : first || lineDue(t)) output(t);
    },
    log(line) {
      if (tty && drawn && !finished) write(`\r\x1b[K${line}\n${ttyLine(now())}\x1b[K`);
      else write(line + '\n');
    },
    done(f) {
      if (finished) return;
      finished = true;
      if (dead) return detach();
      if (f) fields = { ...fields, ...f };
      const t = now();
      const took = ` in ${formatDuration(t - t0)}`;
      if (tty) write(`\r${fit(`${opts.label}${bar()} ${counter()}${formatFields(fields)}${took}`)}\x1b[K\n`, true);
      else if (shownStep !== step || f) write(`${opts.label} ${counter()}${total ? ` (${Math.floor((Math.min(step, total) / total) * 100)}%)` : ''}${formatFields(fields)}${took}\n`, true);
      else write(`${opts.label} done${took}\n`, true);
    },
  };
}
