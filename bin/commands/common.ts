/** Options and helpers shared by several commands. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Argv } from 'yargs';
import { RlhfError } from '../../lib/errors';

export function deviceOption<T>(y: Argv<T>) {
  return y.option('device', { choices: ['auto', 'cpu', 'cuda', 'cpu-guarded'] as const, default: 'auto' as const, describe: 'compute device (cpu-guarded: the CPU on the device-memory path, for testing)' });
}

export function adapterOption<T>(y: Argv<T>) {
  return y.option('adapter', { type: 'string', describe: 'PEFT LoRA adapter folder applied on top of the model' });
}

/** stdout, or a file written through a temporary name and renamed when complete. */
export function openOutput(file?: string): { write(s: string): void; close(): Promise<void> } {
  if (!file) return { write: (s) => void process.stdout.write(s), close: async () => {} };
  const dir = path.dirname(path.resolve(file));
  if (!fs.existsSync(dir)) throw new RlhfError('E_IO', `cannot write ${file}: folder ${dir} does not exist`, { where: file });
  const tmp = `${file}.tmp-${process.pid}`;
  let fd: number;
  try {
    fd = fs.openSync(tmp, 'w');
  } catch (e) {
    throw new RlhfError('E_IO', `cannot write ${file}: ${(e as Error).message}`, { where: file, cause: e });
  }
  return {
    write: (s) => void fs.writeSync(fd, s),
    close: async () => {
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      fs.renameSync(tmp, file);
    },
  };
}
