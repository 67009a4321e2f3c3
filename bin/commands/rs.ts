/**
 * `rlhf-native rs --model DIR --data PROMPTS.jsonl --reward-model DIR --out DIR [options]`:
 * rejection sampling (Llama 2 section 3.2.3): sample K responses per prompt,
 * keep the best under the reward model(s), finetune on them; repeat for
 * --rounds. The options and their --help come from the stage's option table
 * (lib/stages/rejection/config.ts). Progress goes to stderr, the summary line
 * to stdout; see docs/rs.md.
 */
import type { Argv } from 'yargs';
import { rsStage, type RsConfig, type RsMetrics } from '../../lib/stages/rejection';
import { addCliOptions, configFromArgv } from '../../lib/train/options';
import { runCommand } from '../cli-util';
import { exitCodeFor } from '../../lib/run/signals';

const g = (x: number) => (x === 0 || (Math.abs(x) >= 1e-3 && Math.abs(x) < 1e4) ? x.toFixed(4) : x.toExponential(3));

export function register<T>(y: Argv<T>): Argv<T> {
  return y.command(
    rsStage.name,
    rsStage.summary,
    (a) =>
      addCliOptions(a, rsStage.options, { rewardModel: { required: true } }).option('log-steps', {
        type: 'number',
        default: 10,
        describe: 'an SFT progress line every N steps (and the first and last of each round)',
      }),
    (argv) =>
      runCommand(argv, async () => {
        const logEvery = Math.max(1, Math.floor(Number(argv['log-steps'])));
        const err = (line: string) => void process.stderr.write(line + '\n');
        const r = await rsStage.run(configFromArgv<RsConfig>(rsStage.options, argv as Record<string, unknown>), {
          log: err,
          onStep: (rec) => {
            const m = rec as unknown as RsMetrics;
            if (m.phase === 'sft' && (m.step === 1 || m.step % logEvery === 0)) err(`rs round ${m.round} sft step ${m.step}  loss ${g(m.loss)}  lr ${m.lr.toExponential(2)}  tok/s ${Math.round(m.tokens_per_sec)}`);
            if (m.phase === 'round' && m.sft_steps > 0) err(`rs round ${m.round}: ${m.sft_steps} SFT steps, loss ${g(m.sft_initial_loss!)} -> ${g(m.sft_final_loss!)}; round took ${m.seconds.toFixed(1)}s`);
          },
        });
        const evalPart =
          r.initialReward === null ? 'no held-out evaluation' : `held-out mean reward ${g(r.initialReward)} -> ${r.finalReward === null ? '(not measured)' : g(r.finalReward)} (${r.evalPrompts} prompts)`;
        const policy = r.policy.adapter ? `LoRA adapter ${r.policy.adapter}` : r.policy.model === argv.model ? `unchanged ${r.policy.model}` : `model ${r.policy.model}`;
        process.stdout.write(
          `rs: ${r.interrupted ? `interrupted after ${r.rounds}/${r.config.rounds}` : r.rounds} round${r.rounds === 1 ? '' : 's'} of ${r.trainPrompts} prompts x ${r.config.k} samples in ${r.seconds.toFixed(1)}s; ` +
            `${evalPart}; policy: ${policy}\n`,
        );
        if (r.interrupted) process.exitCode = exitCodeFor(r.signal); // 130 after SIGINT, 143 after SIGTERM
      }),
  );
}
