/**
 * `rlhf-native inspect PATH [--json]`: every tensor's name, dtype and shape of a
 * .safetensors file or a model folder (plus the parsed architecture for a
 * folder). Exit 0 on valid input; exit 1 with one line naming what is wrong
 * and where on invalid input.
 */
import * as fs from 'node:fs';
import type { Argv } from 'yargs';
import { RlhfError } from '../../lib/errors';
import { openSafetensors } from '../../lib/safetensors';
import { openModelFolder } from '../../lib/model/folder';
import { runCommand } from '../cli-util';
import { EXAMPLES } from './examples';

interface Row {
  name: string;
  dtype: string;
  shape: number[];
  file?: string;
}

function table(rows: Row[]): string {
  const w = Math.max(4, ...rows.map((r) => r.name.length));
  return rows.map((r) => `${r.name.padEnd(w)}  ${r.dtype.padEnd(7)} [${r.shape.join(', ')}]`).join('\n');
}

function numel(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function register<T>(y: Argv<T>): Argv<T> {
  return y.command(
    'inspect <path>',
    'list the tensors of a .safetensors file or a Hugging Face model folder',
    (a) =>
      a
        .positional('path', { type: 'string', demandOption: true, describe: '.safetensors file or model folder' })
        .option('json', { type: 'boolean', default: false, describe: 'print one JSON object' })
        .example(...EXAMPLES.inspect),
    (argv) =>
      runCommand(argv, () => {
        const target = argv.path as string;
        let stat: fs.Stats;
        try {
          stat = fs.statSync(target);
        } catch {
          throw new RlhfError('E_IO', `${target}: no such file or folder`, { where: target });
        }
        if (stat.isDirectory()) {
          const model = openModelFolder(target);
          try {
            const rows: Row[] = model.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, file: t.file }));
            const params = rows.reduce((s, r) => s + numel(r.shape), 0);
            if (argv.json) {
              process.stdout.write(JSON.stringify({ path: target, kind: 'model', config: model.config, parameters: params, tensors: rows }, null, 2) + '\n');
              return;
            }
            const c = model.config;
            process.stdout.write(
              [
                `${target}: ${c.architecture} (${c.arch}), ${c.numLayers} layers, hidden ${c.hiddenSize}, heads ${c.numHeads}/${c.numKvHeads} kv, head_dim ${c.headDim}, vocab ${c.vocabSize}, ${(params / 1e6).toFixed(2)}M parameters in ${rows.length} tensors`,
                table(rows),
              ].join('\n') + '\n',
            );
          } finally {
            model.close?.();
          }
          return;
        }
        const file = openSafetensors(target);
        try {
          const h = file.header;
          const rows: Row[] = h.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape }));
          if (argv.json) {
            process.stdout.write(JSON.stringify({ path: target, kind: 'safetensors', metadata: h.metadata, headerLength: h.headerLength, tensors: h.tensors }, null, 2) + '\n');
            return;
          }
          const meta = h.metadata ? Object.entries(h.metadata).map(([k, v]) => `  ${k}: ${v}`) : [];
          process.stdout.write(
            [`${target}: ${rows.length} tensors, header ${h.headerLength} bytes, data ${h.fileSize - h.dataStart} bytes`, ...(meta.length ? ['metadata:', ...meta] : []), table(rows)].join('\n') + '\n',
          );
        } finally {
          file.close();
        }
      }),
  );
}
