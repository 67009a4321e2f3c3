/**
 * `rlhf-native bench [--device cpu|cuda] [--only NAMES] [--config S|M|L|FILE] [--json] [--smoke]`:
 * tokens/sec and MFU of every stage's per-step work (forward, decode, SFT,
 * reward-model step, PPO rollout and update) and of each fused kernel alone,
 * next to an eager PyTorch peer measured alternately in the same run
 * (bench/README.md). The runner is bench/bench.js, started as a child process
 * so that its thread count is set before the addon starts its pool.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Argv } from 'yargs';
import { PACKAGE_ROOT } from '../../lib/native';
import { RlhfError } from '../../lib/errors';
import { runtimeInfo } from '../../lib/info';
import { runCommand } from '../cli-util';
import { EXAMPLES } from './examples';

export function register<T>(y: Argv<T>): Argv<T> {
  return y.command(
    'bench',
    'tokens/sec and MFU per stage and per kernel, side by side with PyTorch (bench/README.md)',
    (a) =>
      a
        .option('device', { type: 'string', choices: ['cpu', 'cuda'], describe: 'where our engine runs (default cpu)' })
        .option('config', { type: 'string', describe: 'S, M, L, tiny or a JSON config file; comma-separated for several (default S)' })
        .option('only', { type: 'string', describe: 'comma-separated workloads or groups (stages, kernels, decode, sft, ppo, ...; --list names them)' })
        .option('json', { type: 'boolean', describe: 'one JSON object per line on stdout (the table goes to stderr)' })
        .option('smoke', { type: 'boolean', describe: 'seconds-long run of every workload on a tiny model, 1 repeat, no peer (not a measurement)' })
        .option('repeats', { type: 'number', describe: 'timed repeats per engine of each stage workload (default 3)' })
        .option('kernel-repeats', { type: 'number', describe: 'timed samples per engine of each kernel (default 5)' })
        .option('warmup', { type: 'number', describe: 'untimed runs per engine before the timed ones (default 1)' })
        .option('threads', { type: 'number', describe: 'threads for both engines (default RLHF_NUM_THREADS or every usable core)' })
        .option('peer', { type: 'boolean', describe: 'measure the PyTorch peer too (default on, off with --smoke); --no-peer: ours alone' })
        .option('python', { type: 'string', describe: 'python with torch for the peer (default TORCH_PEER_PYTHON or /usr/bin/python3)' })
        .option('blas-dir', { type: 'string', describe: "folder of the OpenMP OpenBLAS put first on the peer's library path" })
        .option('peer-wait-policy', { type: 'string', describe: "the peer's OMP_WAIT_POLICY: PASSIVE (default), ACTIVE or default" })
        .option('out', { type: 'string', describe: 'cache folder of the model folders and adapters (default bench/out)' })
        .option('list', { type: 'boolean', describe: 'print the workload names and exit' })
        .example(...EXAMPLES.bench),
    (argv) =>
      runCommand(argv, () => {
        if (argv.device === 'cuda') {
          // No GPU here: one clear line, exit 1 (the runner says the same when started directly).
          const info = runtimeInfo();
          if (info.cuda.devices.length === 0)
            throw new RlhfError('E_CUDA', `--device cuda: no CUDA device is usable here: ${(info.cuda.reason ?? 'none found').replace(/; running on the CPU$/, '')} (use --device cpu)`);
        }
        const script = path.join(PACKAGE_ROOT, 'bench', 'bench.js');
        if (!fs.existsSync(script)) throw new RlhfError('E_IO', `${script} is missing from this installation`);
        const args: string[] = [];
        const str = (flag: string, v: unknown) => {
          if (v !== undefined && v !== null) args.push(flag, String(v));
        };
        const bool = (flag: string, v: unknown) => {
          if (v) args.push(flag);
        };
        str('--device', argv.device);
        str('--config', argv.config);
        str('--only', argv.only);
        bool('--json', argv.json);
        bool('--smoke', argv.smoke);
        str('--repeats', argv.repeats);
        str('--kernel-repeats', argv['kernel-repeats']);
        str('--warmup', argv.warmup);
        str('--threads', argv.threads);
        if (argv.peer !== undefined) args.push(argv.peer ? '--peer' : '--no-peer');
        str('--python', argv.python);
        str('--blas-dir', argv['blas-dir']);
        str('--peer-wait-policy', argv['peer-wait-policy']);
        str('--out', argv.out);
        bool('--list', argv.list);
        const r = spawnSync(process.execPath, [script, ...args], { stdio: 'inherit' });
        if (r.error) throw new RlhfError('E_IO', `could not run ${script}: ${r.error.message}`);
        process.exitCode = r.status ?? 1;
      }),
  );
}
