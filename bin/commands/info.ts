/** `rlhf-native info [--json]`: version, backends compiled in, CUDA devices (or why none), SIMD level, threads. */
import type { Argv } from 'yargs';
import { runtimeInfo } from '../../lib/info';
import { runCommand } from '../cli-util';
import { EXAMPLES } from './examples';

const ADDON_KIND = { prebuild: 'prebuilt binary', local: 'local build', RLHF_NATIVE_PATH: 'RLHF_NATIVE_PATH' } as const;

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
          `world: rank ${info.rank} of ${info.world_size}` + (info.distributed.mpi ? ` (${info.distributed.mpi.version}, ${info.distributed.launcher})` : info.world_size > 1 ? '' : ' (no launcher; single process)'),
          `addon: ${ADDON_KIND[info.build.kind]} ${info.build.addon} (built with ${info.build.system ?? 'unknown'}, ${info.build.compiler})`,
          ...(info.build.prebuild ? [`  prebuild: ${info.build.prebuild.variant} variant, needs glibc >= ${info.build.prebuild.glibc ?? '?'}, built ${info.build.prebuild.built}`] : []),
        ];
        process.stdout.write(lines.join('\n') + '\n');
      }),
  );
}
