/** `rlhf-native score --model DIR --data FILE.jsonl [--out FILE]`: per-token log-probs (and rewards) as JSON lines. */
import * as fs from 'node:fs';
import type { Argv } from 'yargs';
import { loadModel } from '../../lib/engine/model';
import { scoreRows } from '../../lib/engine/score';
import { readJsonl } from '../../lib/data/jsonl';
import { loadTokenizer } from '../../lib/tokenizer/tokenizer';
import { runCommand } from '../cli-util';
import { adapterOption, deviceOption, openOutput } from './common';
import { EXAMPLES } from './examples';

export function register<T>(y: Argv<T>): Argv<T> {
  return y.command(
    'score',
    'per-token log-probabilities (and score-head rewards) for JSONL rows',
    (a) =>
      adapterOption(deviceOption(a))
        .option('model', { type: 'string', demandOption: true, describe: 'model folder' })
        .option('data', { type: 'string', demandOption: true, describe: 'JSONL: {"input_ids"} or {"prompt","completion"} per line' })
        .option('out', { type: 'string', describe: 'output JSONL (default: stdout)' })
        .option('batch-size', { type: 'number', default: 8 })
        .example(...EXAMPLES.score),
    (argv) =>
      runCommand(argv, async () => {
        const rows = readJsonl(argv.data);
        const model = await loadModel(argv.model, { device: argv.device, adapter: argv.adapter });
        const needsTok = rows.some((r) => !('input_ids' in r.value) && typeof r.value.prompt === 'string');
        const tok = needsTok ? loadTokenizer(argv.model) : null;
        const scored = await scoreRows(model, rows, argv.data, tok, argv['batch-size']);
        const out = openOutput(argv.out);
        for (const s of scored) out.write(JSON.stringify(s) + '\n');
        await out.close();
        model.dispose();
      }),
  );
}
