/** How every CLI command reports failure: one line, a code, exit 1; the stack only with --debug or RLHF_DEBUG=1. */
import { RlhfError } from '../lib/errors';

export const EXIT_INVALID_INPUT = 1;
export const EXIT_INTERNAL = 70; // sysexits EX_SOFTWARE: a bug, not bad input

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, '; ').trim();
}

export function reportError(e: unknown, debug: boolean): number {
  if (e instanceof RlhfError) {
    process.stderr.write(`rlhf-native: error ${e.code}: ${oneLine(e.message)}\n`);
    if (debug && e.stack) process.stderr.write(e.stack + '\n');
    return e.code === 'E_INTERNAL' ? EXIT_INTERNAL : EXIT_INVALID_INPUT;
  }
  const err = e as Error;
  process.stderr.write(`rlhf-native: internal error: ${oneLine(err?.message ?? String(e))} (please report it; rerun with --debug for the stack)\n`);
  if (debug && err?.stack) process.stderr.write(err.stack + '\n');
  return EXIT_INTERNAL;
}

export function isDebug(argv: { [key: string]: unknown }): boolean {
  return Boolean(argv.debug) || process.env.RLHF_DEBUG === '1';
}

/** Runs a command body, turning any error into the one-line report and exit code. */
export async function runCommand(argv: { [key: string]: unknown }, body: () => Promise<void> | void): Promise<void> {
  try {
    await body();
  } catch (e) {
    process.exitCode = reportError(e, isDebug(argv));
  }
}
