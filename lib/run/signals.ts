/**
 * Stopping a stage cleanly on SIGINT (Ctrl-C), SIGTERM (`kill`, a job
 * scheduler, a container stop) or an AbortSignal: the first request lets the
 * current step finish, then the stage saves (its output, and a checkpoint
 * where it has them) and returns `interrupted`; the CLI then exits 130 after
 * SIGINT, 143 after SIGTERM (128 + the signal number, as shells report a
 * process killed by it). A second signal exits at once with that code: every
 * file the stages write is written to a temporary name and renamed into
 * place (lib/run/atomic.ts, the native safetensors writer), so an exit at any
 * point leaves the previous versions intact. See docs/reliability.md.
 */

import { EXIT_ORPHANED, watchLauncher } from './launcher';

export { EXIT_ORPHANED };

export const EXIT_SIGINT = 130;
export const EXIT_SIGTERM = 143;

/** The exit code of a run stopped by `signal` (130 for SIGINT and by default, 143 for SIGTERM, 129 when its launcher went away: 'SIGHUP'). */
export function exitCodeFor(signal: NodeJS.Signals | null | undefined): number {
  return signal === 'SIGTERM' ? EXIT_SIGTERM : signal === 'SIGHUP' ? EXIT_ORPHANED : EXIT_SIGINT;
}

export interface StopRequest {
  /** A stop was requested (signal or abort). */
  readonly requested: boolean;
  /** The signal that requested it, or null (not requested, or aborted). */
  readonly signal: NodeJS.Signals | null;
  /** Removes the handlers. */
  dispose(): void;
}

export interface StopOptions {
  /** Prefix of the log lines, e.g. 'sft'. */
  label: string;
  log: (line: string) => void;
  /** Install the SIGINT and SIGTERM handlers (false: only `abort` stops). Default true. */
  handleSignals?: boolean;
  abort?: AbortSignal;
  /** What happens after the first request. Default 'finishing the current step, then saving'. */
  then?: string;
  /** Called once, on the first request. */
  onStop?: () => void;
}

/** Installs the handlers described in the file comment; call dispose() when the stage ends. */
export function stopOnSignals(opts: StopOptions): StopRequest {
  const then = opts.then ?? 'finishing the current step, then saving';
  let requested = false;
  let signal: NodeJS.Signals | null = null;
  const request = (why: string, sig: NodeJS.Signals | null, again: string) => {
    if (requested) return;
    opts.log(`${opts.label}: ${why}: ${then}${again}`);
    requested = true;
    signal = sig;
    opts.onStop?.();
  };
  // Only a signal received by this process counts as the first of two: a stop
  // inferred from the launcher (its shell interrupted, or gone) may be the
  // same Ctrl-C that reaches us directly a moment later.
  let signalled = false;
  const onSignal = (sig: NodeJS.Signals) => {
    const again = signalled;
    signalled = true;
    if (requested && !again) return;
    if (requested) {
      process.stderr.write(`${opts.label}: ${sig === 'SIGINT' ? 'interrupted' : 'terminated'} again: exiting without saving\n`);
      process.exit(exitCodeFor(sig));
    }
    if (sig === 'SIGINT') request('interrupted', sig, ' (press Ctrl-C again to exit without saving)');
    else request(`terminated (${sig})`, sig, ' (a second signal exits without saving)');
  };
  const onAbort = () => request('aborted', null, '');
  const handle = opts.handleSignals ?? true;
  let unwatch = () => {};
  if (handle) {
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    // A launcher that went away without passing its signal on (npx, sh -c): stop as on SIGTERM, exit 129;
    // its shell interrupted (SIGINT to npx, which the shell keeps): stop as on SIGINT, exit 130.
    unwatch = watchLauncher((why, event) =>
      event === 'interrupted' ? request(why, 'SIGINT', ' (a second interrupt exits without saving)') : request(why, 'SIGHUP', ' (a signal exits without saving)'),
    );
  }
  opts.abort?.addEventListener('abort', onAbort);
  if (opts.abort?.aborted) onAbort();
  return {
    get requested() {
      return requested;
    },
    get signal() {
      return signal;
    },
    dispose() {
      if (handle) {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
        unwatch();
      }
      opts.abort?.removeEventListener('abort', onAbort);
    },
  };
}
