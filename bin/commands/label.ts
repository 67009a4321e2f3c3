/** `rlhf-native label --judge DIR --data FILE --out PAIRS.jsonl`: preference pairs labelled by a judge model (RLAIF; lib/label/label.ts). */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Argv } from 'yargs';
import { RlhfError } from '../../lib/errors';
import { loadModel } from '../../lib/engine/model';
import { loadTokenizer } from '../../lib/tokenizer/tokenizer';
import { agreement, checkTemplate, labelPairs, readFewShot, readLabelPairs, PAIR_ANSWERS } from '../../lib/label/label';
import { checkAnswers } from '../../lib/label/judge';
import { runCommand } from '../cli-util';
import { adapterOption, deviceOption, openOutput } from './common';
import { EXAMPLES } from './examples';

export function register<T>(y: Argv<T>): Argv<T> {
  return y.command(
    'label',
    'label preference pairs with a judge model (RLAIF soft labels, position-debiased)',
    (a) =>
      adapterOption(deviceOption(a))
        .option('judge', { type: 'string', demandOption: true, describe: 'judge model folder' })
        .option('data', { type: 'string', demandOption: true, describe: 'JSONL: {"prompt","chosen","rejected"} to relabel, or {"prompt","responses":[a,b]}' })
        .option('out', { type: 'string', demandOption: true, describe: 'output JSONL: TRL preference rows plus label_prob, margin, label_probs' })
        .option('template', { type: 'string', describe: 'judge template file with {prompt}, {response_1}, {response_2} (and {examples}); default: a built-in rubric' })
        .option('cue', { type: 'string', default: 'Preferred response:', describe: "the start of the judge's reply; it answers ' 1' or ' 2' after it" })
        .option('system', { type: 'string', describe: 'system message (judges with a chat template)' })
        .option('format', { choices: ['auto', 'chat', 'plain'] as const, default: 'auto' as const, describe: "auto: the judge's chat template when it has one" })
        .option('debias', { type: 'boolean', default: true, describe: 'score both orders of the two responses and average (--no-debias: the first order only)' })
        .option('cot-tokens', { type: 'number', default: 0, describe: 'chain of thought: let the judge write a rationale of up to N tokens (greedy) before answering' })
        .option('few-shot', { type: 'string', describe: 'JSONL of examples {prompt, response_1, response_2, preferred: 1|2, rationale?}' })
        .option('batch-size', { type: 'number', default: 16 })
        .example(...EXAMPLES.label),
    (argv) =>
      runCommand(argv, async () => {
        if (path.resolve(argv.out) === path.resolve(argv.data)) throw new RlhfError('E_ARGUMENT', `--out ${argv.out} is the input file; write the labels to a new file`);
        if (!Number.isInteger(argv['cot-tokens']) || argv['cot-tokens'] < 0) throw new RlhfError('E_ARGUMENT', `--cot-tokens must be a whole number >= 0, got ${argv['cot-tokens']}`);
        if (!Number.isInteger(argv['batch-size']) || argv['batch-size'] < 1) throw new RlhfError('E_ARGUMENT', `--batch-size must be a whole number >= 1, got ${argv['batch-size']}`);
        // Everything that can be checked before the judge's weights are read.
        const tok = loadTokenizer(argv.judge);
        if (argv.format === 'chat' && !tok.chatTemplate)
          throw new RlhfError('E_TOKENIZER', `${argv.judge}: --format chat, but the judge's tokenizer has no chat template (tokenizer_config.json "chat_template" or chat_template.jinja)`, { where: argv.judge });
        if (argv.format === 'plain') tok.chatTemplate = null;
        if (argv.system && !tok.chatTemplate) throw new RlhfError('E_ARGUMENT', `--system needs a judge with a chat template; ${argv.judge} has none (or --format plain was given)`);
        let template: string | undefined;
        if (argv.template) {
          try {
            template = fs.readFileSync(argv.template, 'utf8');
          } catch (e) {
            throw new RlhfError('E_IO', `cannot read --template ${argv.template}: ${(e as Error).message}`, { where: argv.template, cause: e });
          }
          checkTemplate(template, argv.template);
        }
        checkAnswers(tok, PAIR_ANSWERS, 'the preference answers');
        const examples = argv['few-shot'] ? readFewShot(argv['few-shot']) : undefined;
        const pairs = readLabelPairs(argv.data);
        const model = await loadModel(argv.judge, { device: argv.device, adapter: argv.adapter });
        try {
          const t0 = performance.now();
          const labelled = await labelPairs(model, tok, pairs, { template, cue: argv.cue, system: argv.system, debias: argv.debias, cotTokens: argv['cot-tokens'], examples, batchSize: argv['batch-size'] }, (n) =>
            process.stderr.write(`\rlabel: ${n}/${pairs.length} pairs`),
          );
          process.stderr.write('\n');
          const out = openOutput(argv.out);
          for (const l of labelled) out.write(JSON.stringify(l.row) + '\n');
          await out.close();
          const ag = agreement(pairs, labelled);
          const mean = labelled.reduce((s, l) => s + (l.row.label_prob as number), 0) / labelled.length;
          process.stderr.write(`label: ${labelled.length} pairs to ${argv.out} in ${((performance.now() - t0) / 1000).toFixed(1)}s; mean label_prob ${mean.toFixed(3)}\n`);
          if (ag)
            process.stderr.write(
              `label: agreement with the input's chosen/rejected on ${ag.pairs} pairs: ${ag.debiased.toFixed(3)}${argv.debias ? ` (both orders), ${ag.firstOrder.toFixed(3)} (first order only)` : ''}\n`,
            );
        } finally {
          model.dispose();
        }
      }),
  );
}
