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

/**
 * Calls `onGone` once when the launcher goes away; returns a function that
 * stops watching. Does nothing under RLHF_ORPHAN=continue, or when the
 * parent is already init (nothing launched us that could go away).
 */
export function watchLauncher(onGone: (why: string) => void, everyMs = 500): () => void {
  if (process.env.RLHF_ORPHAN === 'continue') return () => {};
  const parent = process.ppid;
  if (parent <= 1) return () => {};
  const grand = parentOf(parent);
  const watched = grand !== null && grand > 1 ? [parent, grand] : [parent];
  const timer = setInterval(() => {
    const gone = process.ppid !== parent ? parent : watched.find((p) => !alive(p));
    if (gone === undefined) return;
    clearInterval(timer);
    onGone(`the process that launched this one (pid ${gone}) has exited`);
  }, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
