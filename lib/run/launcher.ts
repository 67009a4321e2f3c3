/**
 * Noticing that the process that launched us has gone. Wrappers such as
 * `npx` / `npm exec` (npm -> sh -c -> node) and `bash -c` do not pass a
 * SIGTERM on to the training process: a scheduler, CI runner or `timeout`
 * that signals the process it started would otherwise leave the training
 * running, orphaned, to the end. So a long run watches its parent and, where
 * /proc tells it, its grandparent (the process behind a `sh -c` wrapper):
 * when either is gone, the run stops as on SIGTERM (finish the step, save,
 * checkpoint) and exits 129 (EXIT_ORPHANED, as a shell reports a hangup).
 *
 * A run meant to outlive its launcher (nohup, a detached background job)
 * sets RLHF_ORPHAN=continue. See docs/reliability.md.
 */
import * as fs from 'node:fs';

export const EXIT_ORPHANED = 129;

/** The parent pid of `pid` from /proc (Linux), or null. */
function parentOf(pid: number): number | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // pid (comm) state ppid ...: comm may hold spaces and parentheses, so read after the last ')'.
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    return Number.isInteger(ppid) ? ppid : null;
  } catch {
    return null;
  }
}

/** The process exists and has not exited (an exited one not yet reaped is a zombie: state Z in /proc). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false; // EPERM: exists, not ours to signal
  }
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true; // no /proc: the signal test is all there is
  }
}

const SHELLS = new Set(['sh', 'dash', 'bash', 'zsh', 'ksh', 'mksh', 'ash', 'busybox']);

function readProc(pid: number, file: string): string | null {
  try {
    return fs.readFileSync(`/proc/${pid}/${file}`, 'utf8');
  } catch {
    return null;
  }
}

/** How often the process has been scheduled off the CPU (voluntary + involuntary), from /proc; null where unknown. */
function switches(pid: number): number | null {
  const status = readProc(pid, 'status');
  if (status === null) return null;
  const v = /^voluntary_ctxt_switches:\s+(\d+)/m.exec(status);
  const n = /^nonvoluntary_ctxt_switches:\s+(\d+)/m.exec(status);
  return v && n ? Number(v[1]) + Number(n[1]) : null;
}

/** The pids `pid`'s main thread has forked and not yet had reaped, from /proc; null where unknown. */
function childrenOf(pid: number): number[] | null {
  const c = readProc(pid, `task/${pid}/children`);
  return c === null ? null : c.trim().split(/\s+/).filter(Boolean).map(Number);
}

/**
 * A shell between our launcher and us (`npx`: npm -> sh -c -> node) that
 * receives SIGINT catches it, waits for us, and only then exits, so npm's
 * forwarding of a SIGINT sent to npx never reaches the training. The shell
 * sleeps in wait() for its one child, us: it runs again only when a signal
 * is delivered to it or when we exit. So, when our parent is a shell whose
 * only child is this process, a rise in its context-switch count while we
 * run means a signal reached it. SIGTERM and SIGHUP kill the shell (seen as
 * "exited"); signals it ignores (SIGWINCH) or SIGCONT to a running shell do
 * not wake it; a job-control stop (Ctrl-Z) does, and stops us too, so a wake
 * that comes with our own SIGCONT is not taken for an interrupt.
 */
function shellWake(parent: number): { ran(): boolean; continuedLately(): boolean; onlyChild(): boolean; dispose(): void } | null {
  const comm = readProc(parent, 'comm')?.trim() ?? '';
  const only = childrenOf(parent);
  if (!SHELLS.has(comm) || only === null || only.length !== 1 || only[0] !== process.pid) return null;
  let base = switches(parent);
  if (base === null) return null;
  let continuedAt = -Infinity;
  const onCont = () => {
    continuedAt = Date.now();
  };
  process.on('SIGCONT', onCont);
  return {
    /** The shell ran since the last call (its switch count rose). */
    ran() {
      const now = switches(parent);
      if (now === null || base === null || now === base) return false;
      base = now;
      return true;
    },
    /** The run was resumed after a job-control stop within the last 2 s. */
    continuedLately: () => Date.now() - continuedAt < 2000,
    /** The shell still has this process as its only child (no other child's SIGCHLD could have woken it). */
    onlyChild() {
      const kids = childrenOf(parent);
      return kids !== null && kids.length === 1 && kids[0] === process.pid;
    },
    dispose: () => process.off('SIGCONT', onCont),
  };
}

/** Why the launcher watch fired: the launcher is gone, or the shell that started us was sent an interrupt. */
export type LauncherEvent = 'exited' | 'interrupted';

/**
 * Calls `onGone` once when the launcher goes away ('exited') or when the
 * shell that started us is interrupted ('interrupted': see shellWake);
 * returns a function that stops watching. Does nothing under
 * RLHF_ORPHAN=continue, or when the parent is already init (nothing launched
 * us that could go away).
 */
export function watchLauncher(onGone: (why: string, event: LauncherEvent) => void, everyMs = 500): () => void {
  if (process.env.RLHF_ORPHAN === 'continue') return () => {};
  const parent = process.ppid;
  if (parent <= 1) return () => {};
  const grand = parentOf(parent);
  const watched = grand !== null && grand > 1 ? [parent, grand] : [parent];
  const wake = shellWake(parent);
  let deciding = false;
  const stop = () => {
    clearInterval(timer);
    wake?.dispose();
  };
  const timer = setInterval(() => {
    if (deciding) return;
    const gone = process.ppid !== parent ? parent : watched.find((p) => !alive(p));
    if (gone !== undefined) {
      stop();
      onGone(`the process that launched this one (pid ${gone}) has exited`, 'exited');
      return;
    }
    if (!wake?.ran()) return;
    // Decide once the pending signal events have run: our own SIGCONT after
    // a job-control stop, or the same Ctrl-C reaching us directly, come first.
    deciding = true;
    setTimeout(() => {
      deciding = false;
      if (wake.continuedLately() || !wake.onlyChild()) return;
      stop();
      onGone(`the shell that launched this one (pid ${parent}) was interrupted`, 'interrupted');
    }, 50);
  }, everyMs);
  timer.unref();
  return stop;
}
