#!/usr/bin/env node
/** The rlhf-native command line. Each command lives in bin/commands/<name>.ts. */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import * as info from './commands/info';
import * as inspect from './commands/inspect';
import * as init from './commands/init';
import * as train from './commands/train';
import * as score from './commands/score';
import * as label from './commands/label';
import * as cai from './commands/cai';
import * as generate from './commands/generate';
import * as bench from './commands/bench';
import * as sft from './commands/sft';
import * as rm from './commands/rm';
import * as merge from './commands/merge';
import * as rs from './commands/rs';
import * as rest from './commands/rest';
import * as hir from './commands/hir';
import * as dpo from './commands/dpo';
import * as kto from './commands/kto';
import * as ppo from './commands/ppo';
import * as grpo from './commands/grpo';
import * as rloo from './commands/rloo';
import * as orpo from './commands/orpo';
import { packageVersion } from '../lib/info';

/** The status a shell reports for a process killed by SIGPIPE (128 + 13). */
const EXIT_SIGPIPE = 141;

// A reader that closed the pipe (`rlhf-native score ... | head -1`): stop quietly, as a
// process killed by SIGPIPE would (Node ignores the signal and reports EPIPE instead).
for (const stream of [process.stdout, process.stderr])
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') throw e;
    process.exit(EXIT_SIGPIPE);
  });

async function main(): Promise<void> {
  let y = yargs(hideBin(process.argv))
    .scriptName('rlhf-native')
    .version(packageVersion())
    .option('debug', { type: 'boolean', default: false, describe: 'print stack traces on errors' })
    .strict()
    .demandCommand(1, 'name a command (see --help)')
    .recommendCommands()
    .fail((msg, err, yy) => {
      if (err) throw err;
      process.stderr.write(`rlhf-native: ${msg}\n(see rlhf-native --help)\n`);
      process.exit(1);
    })
    .help()
    .wrap(Math.min(110, process.stdout.columns || 100));
  for (const c of [train, info, inspect, init, score, label, cai, generate, bench, sft, rm, merge, dpo, kto, rs, rest, hir]) y = c.register(y);
  y = ppo.register(y);
  y = grpo.register(y);
  y = rloo.register(y);
  y = orpo.register(y);
  await y.parseAsync();
}

main().catch((e) => {
  process.stderr.write(`rlhf-native: internal error: ${(e as Error)?.message ?? e}\n`);
  process.exitCode = 70;
});
