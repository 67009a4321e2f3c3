/**
 * `rlhf-native bench [--config S,M] [--json] ...`: tokens/sec of forward and
 * decode next to an eager PyTorch peer on the same model and tokens, with MFU
 * against a matmul peak measured in the same run (bench/README.md). Options
 * are passed through to bench/forward.js.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Argv } from 'yargs';
import { PACKAGE_ROOT } from '../../lib/native';
import { RlhfError } from '../../lib/errors';
import { runCommand } from '../cli-util';

export function register<T>(y: Argv<T>): Argv<T> {
  return y.command(
    'bench',
    'forward/decode tokens per second vs PyTorch (see bench/README.md; extra options pass through)',
    (a) => a.strict(false).parserConfiguration({ 'unknown-options-as-args': true }),
    (argv) =>
      runCommand(argv, () => {
        const script = path.join(PACKAGE_ROOT, 'bench', 'forward.js');
        if (!fs.existsSync(script)) throw new RlhfError('E_IO', `${script} is missing from this installation`);
        const args = process.argv.slice(process.argv.indexOf('bench') + 1);
        const r = spawnSync(process.execPath, [script, ...args], { stdio: 'inherit' });
        process.exitCode = r.status ?? 1;
      }),
  );
}
