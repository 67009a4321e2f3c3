/** `rlhf-native info [--json]`: version, backends compiled in, CUDA devices (or why none), SIMD level, threads. */
import type { Argv } from 'yargs';
import { runtimeInfo } from '../../lib/info';
import { runCommand } from '../cli-util';
import { EXAMPLES } from './examples';

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

export function register<T>(y: Argv<T>): Argv<T> {
  return y.command(
    'info',
    'show the version, compiled backends, CUDA devices, SIMD level and threads',
    (a) => a.option('json', { type: 'boolean', default: false, describe: 'print one JSON object' }).example(...EXAMPLES.info),
    (argv) =>
      runCommand(argv, () => {
        const info = runtimeInfo();
        if (argv.json) {
          process.stdout.write(JSON.stringify(info, null, 2) + '\n');
          return;
        }
        const lines = [
          `rlhf-native ${info.version} (Node ${info.node}, ${info.platform})`,
          `backends compiled in: ${info.backends.join(', ')}`,
          `cpu: ${info.cpu.simd} SIMD, ${info.cpu.threads} threads`,
          info.cuda.compiled
            ? `cuda: runtime ${info.cuda.runtimeVersion}, driver ${info.cuda.driverVersion ?? 'none'}, archs ${info.cuda.archs.join(' ')}`
            : 'cuda: not compiled in',
          ...info.cuda.devices.map((d) => `  cuda:${d.index} ${d.name} (sm_${d.computeCapability.replace('.', '')}, ${d.smCount} SMs, ${gib(d.totalMemory)})`),
          ...(info.cuda.reason ? [`  no CUDA device: ${info.cuda.reason}`] : []),
          `default device: ${info.defaultDevice}`,
          `addon: ${info.build.addon ?? '(loaded from RLHF_NATIVE_PATH)'} (built with ${info.build.system ?? 'unknown'}, ${info.build.compiler})`,
        ];
        process.stdout.write(lines.join('\n') + '\n');
      }),
  );
}
