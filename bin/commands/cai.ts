/**
 * `rlhf-native cai`: Constitutional AI's data (Bai et al. 2022). SL-CAI:
 * critique -> revision rounds on red-team prompts under a constitution's
 * principles, the final revisions (mixed with helpfulness data) as SFT data.
 * RL-CAI (--pairs): AI harmlessness preferences between two sampled answers,
 * labelled by a feedback model under drawn principles, for a reward model
 * and PPO. lib/cai/*; docs/cai.md.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Argv } from 'yargs';
import { RlhfError } from '../../lib/errors';
import { dataError, isMessages, readJsonl } from '../../lib/data/jsonl';
import { mixSeed, permutation } from '../../lib/data/batches';
import { loadModel, type Model } from '../../lib/engine/model';
import { loadTokenizer } from '../../lib/tokenizer/tokenizer';
import { readConstitution } from '../../lib/cai/constitution';
import { critiqueAndRevise, type CaiExample } from '../../lib/cai/sl-cai';
import { harmlessnessPairs } from '../../lib/cai/rl-cai';
import { checkAnswers } from '../../lib/label/judge';
import { PAIR_ANSWERS } from '../../lib/label/label';
import { runCommand } from '../cli-util';
import { adapterOption, deviceOption, openOutput } from './common';
import { EXAMPLES } from './examples';

const OUTPUTS = ['sl-cai.jsonl', 'sl-cai-trace.jsonl', 'harmlessness-pairs.jsonl'];

/** A red-team prompt: a string, or chat messages ending with the user's turn (its content is used). */
function promptText(v: unknown, file: string, line: number): string {
  if (typeof v === 'string' && v.trim()) return v;
  if (isMessages(v) && v[v.length - 1].role === 'user') return v[v.length - 1].content;
  throw dataError(file, line, '"prompt" must be a non-empty string, or chat messages ending with a user turn');
}

function readExamples(file: string): CaiExample[] {
  return readJsonl(file).map(({ line, value }) => {
    for (const k of ['prompt', 'response', 'critique', 'revision']) if (typeof value[k] !== 'string') throw dataError(file, line, `an example needs "${k}" as a string`);
    return value as unknown as CaiExample;
  });
}

export function register<T>(y: Argv<T>): Argv<T> {
  return y.command(
    'cai',
    "Constitutional AI's data: critique -> revision SFT data (SL-CAI) and AI harmlessness pairs (RL-CAI)",
    (a) =>
      adapterOption(deviceOption(a))
        .option('model', { type: 'string', demandOption: true, describe: 'the helpful model that answers, critiques and revises' })
        .option('constitution', { type: 'string', demandOption: true, describe: 'JSON/YAML: principles {name?, critique, revision, comparison?}' })
        .option('prompts', { type: 'string', demandOption: true, describe: 'JSONL of red-team prompts {"prompt": ...}' })
        .option('out', { type: 'string', demandOption: true, describe: 'output folder (sl-cai.jsonl, sl-cai-trace.jsonl, harmlessness-pairs.jsonl)' })
        .option('rounds', { type: 'number', default: 1, describe: 'critique -> revision rounds per prompt' })
        .option('examples', { type: 'string', describe: 'few-shot JSONL {prompt, response, critique, revision}' })
        .option('helpful-data', { type: 'string', describe: 'SFT JSONL {prompt, completion} mixed into sl-cai.jsonl' })
        .option('pairs', { type: 'boolean', default: false, describe: 'also write AI harmlessness pairs (RL-CAI)' })
        .option('judge', { type: 'string', describe: 'feedback model for the pairs [default: --model]' })
        .option('principles-per-label', { type: 'number', default: 1, describe: "principles drawn per pair, their labels averaged" })
        .option('cot-tokens', { type: 'number', default: 0, describe: 'the feedback model writes a rationale first (labels then clamped to [0.4, 0.6])' })
        .option('debias', { type: 'boolean', default: true, describe: 'label both orders of the two answers and average' })
        .option('max-new-tokens', { type: 'number', default: 64 })
        .option('temperature', { type: 'number', default: 0.7 })
        .option('seed', { type: 'number', default: 0 })
        .option('batch-size', { type: 'number', default: 16 })
        .example(...EXAMPLES.cai),
    (argv) =>
      runCommand(argv, async () => {
        for (const k of ['rounds', 'principles-per-label', 'max-new-tokens', 'batch-size'] as const)
          if (!Number.isInteger(argv[k]) || argv[k] < 1) throw new RlhfError('E_ARGUMENT', `--${k} must be a whole number >= 1, got ${argv[k]}`);
        if (!Number.isInteger(argv['cot-tokens']) || argv['cot-tokens'] < 0) throw new RlhfError('E_ARGUMENT', `--cot-tokens must be a whole number >= 0, got ${argv['cot-tokens']}`);
        if (!(argv.temperature >= 0)) throw new RlhfError('E_ARGUMENT', `--temperature must be >= 0, got ${argv.temperature}`);
        // Everything checkable before any weights load: nothing the user has is overwritten.
        const principles = readConstitution(argv.constitution);
        const prompts = readJsonl(argv.prompts).map(({ line, value }) => promptText(value.prompt, argv.prompts, line));
        const examples = argv.examples ? readExamples(argv.examples) : undefined;
        const helpful = argv['helpful-data'] ? readJsonl(argv['helpful-data']).map((r) => r.value) : [];
        const existing = OUTPUTS.map((f) => path.join(argv.out, f)).filter((f) => fs.existsSync(f));
        if (existing.length) throw new RlhfError('E_ARGUMENT', `--out ${argv.out} already holds ${existing.map((f) => path.basename(f)).join(', ')}; give a new folder`, { where: argv.out });
        const tok = loadTokenizer(argv.model);
        const judgeTok = argv.pairs ? loadTokenizer(argv.judge ?? argv.model) : null;
        if (judgeTok) checkAnswers(judgeTok, PAIR_ANSWERS, 'the preference answers of --judge');
        fs.mkdirSync(argv.out, { recursive: true });
        const sample = { maxNewTokens: argv['max-new-tokens'], temperature: argv.temperature, seed: argv.seed, batchSize: argv['batch-size'] };
        const log = (s: string) => process.stderr.write(`cai: ${s}\n`);
        const model = await loadModel(argv.model, { device: argv.device, adapter: argv.adapter });
        let judge: Model | null = null;
        try {
          const t0 = performance.now();
          const traces = await critiqueAndRevise(model, tok, prompts, principles, { ...sample, rounds: argv.rounds, examples });
          const revised = traces.filter((t) => t.revisions[t.revisions.length - 1]).map((t) => ({ prompt: t.prompt, completion: t.revisions[t.revisions.length - 1] }));
          const rows = [...revised, ...helpful];
          const order = permutation(rows.length, mixSeed(argv.seed, 0x5f));
          let out = openOutput(path.join(argv.out, 'sl-cai.jsonl'));
          for (const i of order) out.write(JSON.stringify(rows[i]) + '\n');
          await out.close();
          out = openOutput(path.join(argv.out, 'sl-cai-trace.jsonl'));
          for (const t of traces) out.write(JSON.stringify(t) + '\n');
          await out.close();
          log(`${prompts.length} red-team prompts, ${argv.rounds} round(s): ${revised.length} revisions${helpful.length ? ` + ${helpful.length} helpfulness rows` : ''} -> ${path.join(argv.out, 'sl-cai.jsonl')} (${((performance.now() - t0) / 1000).toFixed(1)}s)`);
          if (argv.pairs) {
            judge = argv.judge ? await loadModel(argv.judge, { device: argv.device }) : model;
            const t1 = performance.now();
            const pairs = await harmlessnessPairs(model, tok, judge, judgeTok!, prompts, principles, { ...sample, perLabel: argv['principles-per-label'], cotTokens: argv['cot-tokens'], debias: argv.debias });
            const kept = pairs.filter((p) => p.chosen && p.rejected && p.chosen !== p.rejected);
            out = openOutput(path.join(argv.out, 'harmlessness-pairs.jsonl'));
            for (const p of kept) out.write(JSON.stringify(p) + '\n');
            await out.close();
            log(`${kept.length} harmlessness pairs (${pairs.length - kept.length} dropped: an empty answer or two equal answers) -> ${path.join(argv.out, 'harmlessness-pairs.jsonl')} (${((performance.now() - t1) / 1000).toFixed(1)}s)`);
          }
        } finally {
          if (judge && judge !== model) judge.dispose();
          model.dispose();
        }
      }),
  );
}
