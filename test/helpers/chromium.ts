/**
 * Opens a local HTML file in headless Chromium and evaluates an expression
 * in the loaded page, through the DevTools protocol over a pipe
 * (--remote-debugging-pipe: the browser reads NUL-terminated JSON messages
 * on fd 3 and writes them on fd 4), so no npm package and no port are
 * needed. What the page logs as an error (uncaught exceptions,
 * console.error, the browser's own error entries such as failed loads) and
 * every network request other than the file itself are collected.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Readable, Writable } from 'node:stream';

/** The Chromium binary: $CHROMIUM, or chromium / chromium-browser / google-chrome on the PATH; null when none. */
export function findChromium(): string | null {
  if (process.env.CHROMIUM && fs.existsSync(process.env.CHROMIUM)) return process.env.CHROMIUM;
  for (const dir of (process.env.PATH ?? '').split(path.delimiter))
    for (const name of ['chromium', 'chromium-browser', 'google-chrome'])
      if (dir && fs.existsSync(path.join(dir, name))) return path.join(dir, name);
  return null;
}

export interface PageResult<T> {
  /** The expression's value (returned by value, so it must be JSON). */
  value: T;
  /** Error messages: exceptions, console.error / console.assert, the browser's error log entries. */
  errors: string[];
  /** URLs the page requested besides the file itself. */
  requests: string[];
}

/** Loads `file`, waits for its load event, evaluates `expression` in it, closes the browser. */
export async function inspectPage<T>(browser: string, file: string, expression: string, timeoutMs = 60_000): Promise<PageResult<T>> {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-chromium-'));
  const proc = spawn(browser, ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run', '--remote-debugging-pipe', `--user-data-dir=${profile}`], {
    stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  proc.stderr!.on('data', (d) => (stderr += d));
  const toBrowser = proc.stdio[3] as Writable, fromBrowser = proc.stdio[4] as Readable;
  // A pipe closed by a browser that exited: the exit is reported below, not as a stream error.
  toBrowser.on('error', () => {});
  fromBrowser.on('error', () => {});
  const pending = new Map<number, { resolve: (v: any) => void; reject: (e: Error) => void }>(); // eslint-disable-line @typescript-eslint/no-explicit-any
  const listeners: ((msg: any) => void)[] = []; // eslint-disable-line @typescript-eslint/no-explicit-any
  let buf = '', nextId = 1;
  fromBrowser.on('data', (d: Buffer) => {
    buf += d.toString('utf8');
    for (let i = buf.indexOf('\0'); i >= 0; i = buf.indexOf('\0')) {
      const msg = JSON.parse(buf.slice(0, i));
      buf = buf.slice(i + 1);
      if (msg.id !== undefined && pending.has(msg.id)) {
        const p = pending.get(msg.id)!;
        pending.delete(msg.id);
        if (msg.error) p.reject(new Error(`${msg.error.message} (${JSON.stringify(msg.error)})`));
        else p.resolve(msg.result);
      } else listeners.forEach((l) => l(msg));
    }
  });
  const send = (method: string, params: object = {}, sessionId?: string) =>
    new Promise<any>((resolve, reject) => { // eslint-disable-line @typescript-eslint/no-explicit-any
      const id = nextId++;
      pending.set(id, { resolve, reject });
      toBrowser.write(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }) + '\0');
    });
  let timeout: NodeJS.Timeout | undefined;
  const exited = new Promise<never>((_, reject) => proc.on('exit', (code) => reject(new Error(`chromium exited (${code}): ${stderr.slice(-2000)}`))));
  const timer = new Promise<never>((_, reject) => (timeout = setTimeout(() => reject(new Error(`chromium: no answer in ${timeoutMs} ms`)), timeoutMs)));
  // Whichever loses the race below must not surface later as an unhandled rejection.
  exited.catch(() => {});
  timer.catch(() => {});
  const url = pathToFileURL(path.resolve(file)).href;
  const errors: string[] = [], requests: string[] = [];
  const work = async (): Promise<PageResult<T>> => {
    const { targetId } = await send('Target.createTarget', { url: 'about:blank' });
    const { sessionId } = await send('Target.attachToTarget', { targetId, flatten: true });
    let loaded!: () => void;
    const load = new Promise<void>((res) => (loaded = res));
    listeners.push((m) => {
      if (m.sessionId !== sessionId) return;
      const p = m.params;
      if (m.method === 'Page.loadEventFired') loaded();
      else if (m.method === 'Runtime.exceptionThrown') errors.push(`exception: ${p.exceptionDetails.exception?.description ?? p.exceptionDetails.text}`);
      else if (m.method === 'Runtime.consoleAPICalled' && (p.type === 'error' || p.type === 'assert')) errors.push(`console.${p.type}: ${p.args.map((a: { value?: unknown; description?: string }) => a.value ?? a.description).join(' ')}`);
      else if (m.method === 'Log.entryAdded' && p.entry.level === 'error') errors.push(`log (${p.entry.source}): ${p.entry.text}${p.entry.url ? ` ${p.entry.url}` : ''}`);
      else if (m.method === 'Network.requestWillBeSent' && p.request.url !== url) requests.push(p.request.url);
    });
    for (const domain of ['Page', 'Runtime', 'Log', 'Network']) await send(`${domain}.enable`, {}, sessionId);
    await send('Page.navigate', { url }, sessionId);
    await load;
    const r = await send('Runtime.evaluate', { expression, returnByValue: true, awaitPromise: true }, sessionId);
    if (r.exceptionDetails) throw new Error(`the expression threw: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`);
    return { value: r.result.value as T, errors, requests };
  };
  try {
    return await Promise.race([work(), exited, timer]);
  } finally {
    clearTimeout(timeout);
    proc.removeAllListeners('exit');
    // The browser may exit before it answers: wait for the answer a few seconds at most.
    let wait: NodeJS.Timeout | undefined;
    await Promise.race([send('Browser.close').catch(() => {}), new Promise((res) => (wait = setTimeout(res, 3000)))]);
    clearTimeout(wait);
    if (proc.exitCode === null && proc.signalCode === null)
      await new Promise((res) => {
        const kill = setTimeout(() => proc.kill('SIGKILL'), 5000);
        proc.once('exit', () => {
          clearTimeout(kill);
          res(null);
        });
      });
    fs.rmSync(profile, { recursive: true, force: true });
  }
}
