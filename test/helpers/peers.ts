/**
 * The real Python libraries as test references: the venv that
 * scripts/peer-venv.sh builds (or finds) once per machine, and a runner for
 * the scripts in test/peers/ (JSON in on stdin, JSON out on stdout).
 */
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';

const root = path.resolve(__dirname, '..', '..');
let python: string | null = null;

/** The peer venv's python (built on first use: about a minute offline). */
export function peerPython(): string {
  if (python) return python;
  const out = execFileSync('bash', [path.join(root, 'scripts', 'peer-venv.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 20 });
  python = out.trim().split('\n').pop()!;
  return python;
}

/** Runs test/peers/<script> with `input` as JSON on stdin; returns its JSON output. */
export function runPeer<T>(script: string, input: unknown): T {
  const out = execFileSync(peerPython(), [path.join(root, 'test', 'peers', script)], {
    input: JSON.stringify(input),
    encoding: 'utf8',
    stdio: ['pipe', 'pipe', 'pipe'],
    maxBuffer: 64 << 20,
    env: { ...process.env, TOKENIZERS_PARALLELISM: 'false', HF_HUB_OFFLINE: '1', TRANSFORMERS_VERBOSITY: 'error' },
  });
  return JSON.parse(out) as T;
}
