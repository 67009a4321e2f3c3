/** `rlhf-native score --model DIR --data FILE.jsonl [--out FILE]`: per-token log-probs (and rewards) as JSON lines, rows tokenised as `sft` tokenises them. */
import * as fs from 'node:fs';
import * as path from 'node:path';
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
        .option('data', { type: 'string', demandOption: true, describe: 'JSONL: {"input_ids"}, {"text"}, {"prompt","completion"} or {"messages"} per line, tokenised as sft does' })
        .option('tokenize', { choices: ['trl', 'separate'] as const, default: 'trl' as const, describe: "as sft's --tokenize: TRL's tokenization, or prompt and completion encoded apart" })
        .option('assistant-only-loss', { type: 'boolean', default: false, describe: '{"messages"} rows: score the assistant turns only' })
        .option('out', { type: 'string', describe: 'output JSONL (default: stdout)' })
        .option('batch-size', { type: 'number', default: 8 })
        .example(...EXAMPLES.score),
    (argv) =>
      runCommand(argv, async () => {
        const rows = readJsonl(argv.data);
        const model = await loadModel(argv.model, { device: argv.device, adapter: argv.adapter });
        // The tokenizer only where a row needs one (a folder of ids-only rows may have none).
        const needsTok = rows.some((r) => !('input_ids' in r.value)) && fs.existsSync(path.join(argv.model, 'tokenizer.json'));
        const tok = needsTok ? loadTokenizer(argv.model) : null;
        const scored = await scoreRows(model, rows, argv.data, tok, argv['batch-size'], { tokenize: argv.tokenize, assistantOnlyLoss: argv['assistant-only-loss'] });
        const out = openOutput(argv.out);
        for (const s of scored) out.write(JSON.stringify(s) + '\n');
        await out.close();
        model.dispose();
      }),
  );
}
