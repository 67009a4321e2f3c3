/**
 * `rlhf-native generate --model DIR (--prompt TEXT | --data FILE.jsonl)`:
 * batched generation. JSONL rows are {"prompt"} (a string, or chat messages),
 * {"messages"} (a trailing assistant turn dropped) or {"text"}; chats are
 * rendered with the tokenizer's chat template and a generation prompt.
 */
import type { Argv } from 'yargs';
import { loadModel } from '../../lib/engine/model';
import { readJsonl, dataError, isMessages } from '../../lib/data/jsonl';
import { loadTokenizer } from '../../lib/tokenizer/tokenizer';
import { tokenBytesTable } from '../../lib/tokenizer/token-bytes';
import { RlhfError } from '../../lib/errors';
import { runCommand } from '../cli-util';
import { adapterOption, deviceOption, openOutput } from './common';
import type { ChatMessage } from '../../lib/tokenizer/chat-template';
import { EXAMPLES } from './examples';

export function register<T>(y: Argv<T>): Argv<T> {
  return y.command(
    'generate',
    'generate completions for a prompt or a JSONL file of prompts / chats',
    (a) =>
      adapterOption(deviceOption(a))
        .option('model', { type: 'string', demandOption: true, describe: 'model folder (with tokenizer.json)' })
        .option('prompt', { type: 'string', describe: 'one prompt' })
        .option('data', { type: 'string', describe: 'JSONL: {"prompt"} (string or chat), {"messages"} or {"text"} per line' })
        .option('out', { type: 'string', describe: 'output JSONL (default: stdout)' })
        .option('max-new-tokens', { type: 'number', default: 64 })
        .option('temperature', { type: 'number', default: 0, describe: '0 = greedy' })
        .option('top-p', { type: 'number', default: 1 })
        .option('top-k', { type: 'number', default: 0 })
        .option('seed', { type: 'number', default: 0 })
        .option('stop', { type: 'string', array: true, describe: 'stop strings' })
        .option('batch-size', { type: 'number', default: 8 })
        .check((a) => {
          if (!a.prompt === !a.data) throw new Error('give exactly one of --prompt or --data');
          return true;
        })
        .example(...EXAMPLES.generate),
    (argv) =>
      runCommand(argv, async () => {
        const tok = loadTokenizer(argv.model);
        const texts: string[] = [];
        if (argv.prompt !== undefined) texts.push(argv.prompt);
        else {
          // The rows the stages read, as prompts: a prompt (string or chat), a
          // text, or a conversation (a trailing assistant turn is dropped, so the
          // model answers the last user turn); a completion is ignored.
          for (const r of readJsonl(argv.data!)) {
            const v = r.value;
            const chat = (m: ChatMessage[]) => texts.push(tok.applyChatTemplate(m, { addGenerationPrompt: true }));
            if (typeof v.prompt === 'string') texts.push(v.prompt);
            else if (isMessages(v.prompt)) chat(v.prompt);
            else if (isMessages(v.messages)) {
              const m = v.messages[v.messages.length - 1].role === 'assistant' ? v.messages.slice(0, -1) : v.messages;
              if (!m.length) throw dataError(argv.data!, r.line, '"messages" holds only an assistant turn: nothing to answer');
              chat(m);
            } else if (typeof v.text === 'string') texts.push(v.text);
            else throw dataError(argv.data!, r.line, 'expected {"prompt": "..." or [messages]}, {"messages": [...]} or {"text": "..."}');
          }
        }
        const model = await loadModel(argv.model, { device: argv.device, adapter: argv.adapter });
        const prompts = texts.map((t) => tok.encode(t, { addSpecialTokens: !t.startsWith(tok.bosToken ?? '\u0000') }));
        prompts.forEach((p, i) => {
          if (p.length === 0) throw new RlhfError('E_DATA', `prompt ${i + 1} encodes to no tokens`);
        });
        const stops = argv.stop ?? [];
        const tokenBytes = stops.length ? tokenBytesTable(tok, model.config.vocabSize) : undefined;
        const out = openOutput(argv.out);
        for (let i = 0; i < prompts.length; i += argv['batch-size']) {
          const g = await model.generate({
            prompts: prompts.slice(i, i + argv['batch-size']),
            maxNewTokens: argv['max-new-tokens'],
            temperature: argv.temperature,
            topP: argv['top-p'],
            topK: argv['top-k'],
            seed: argv.seed + i,
            stopStrings: stops,
            tokenBytes,
          });
          g.tokens.forEach((toks, j) => {
            let text = tok.decode(Array.from(toks), { skipSpecialTokens: true });
            if (g.finish[j] === 'stop') {
              const cut = Math.min(...stops.map((s) => text.indexOf(s)).filter((k) => k >= 0));
              if (Number.isFinite(cut)) text = text.slice(0, cut);
            }
            out.write(JSON.stringify({ prompt: texts[i + j], completion: text, tokens: toks.length, finish: g.finish[j] }) + '\n');
          });
        }
        await out.close();
        model.dispose();
      }),
  );
}
