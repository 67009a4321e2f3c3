/**
 * `rlhf-native ppo --model DIR --data PROMPTS.jsonl --reward-model DIR --out DIR [options]`:
 * PPO against one or two reward models (LoRA policy and critic on one base).
 * The options and their --help come from the stage's option table
 * (lib/stages/ppo/config.ts). Progress lines go to stderr, the final summary
 * to stdout; see docs/ppo.md.
 */
import type { Argv } from 'yargs';
import { ppoStage, type PpoConfig, type PpoStepMetrics } from '../../lib/stages/ppo';
import { addCliOptions, configFromArgv } from '../../lib/train/options';
import { runCommand } from '../cli-util';
import { exitCodeFor } from '../../lib/run/signals';

const g = (x: number) => (x === 0 || (Math.abs(x) >= 1e-3 && Math.abs(x) < 1e4) ? x.toFixed(4) : x.toExponential(3));

function progressLine(m: PpoStepMetrics, total: number): string {
  const w = String(total).length;
  return (
    `ppo step ${String(m.step).padStart(w)}/${total}  reward ${g(m.reward)}  kl ${g(m.kl)}  kl_coef ${g(m.kl_coef)}  approxkl ${g(m.approxkl)}  ` +
    `clipfrac ${g(m.clipfrac)}  value_loss ${g(m.value_loss)}  len ${m.response_length.toFixed(1)}  tok/s ${Math.round(m.tokens_per_sec)}`
  );
}

export function register<T>(y: Argv<T>): Argv<T> {
  return y.command(
    ppoStage.name,
    ppoStage.summary,
    (a) =>
      addCliOptions(a, ppoStage.options, { rewardModel: { required: true } }).option('log-steps', {
        type: 'number',
        default: 1,
        describe: 'a progress line on stderr every N iterations (and the first and last)',
      }),
    (argv) =>
      runCommand(argv, async () => {
        const logEvery = Math.max(1, Math.floor(Number(argv['log-steps'])));
        const r = await ppoStage.run(configFromArgv<PpoConfig>(ppoStage.options, argv as Record<string, unknown>), {
          log: (line) => void process.stderr.write(line + '\n'),
          onStep: (rec, { totalSteps }) => {
            const m = rec as unknown as PpoStepMetrics;
            if (m.step === 1 || m.step === totalSteps || m.step % logEvery === 0) process.stderr.write(progressLine(m, totalSteps) + '\n');
          },
        });
        const rewardPart = r.initialReward === null ? 'no iteration done' : `reward ${g(r.initialReward)} -> ${g(r.finalReward!)}, kl ${g(r.finalKl!)}`;
        process.stdout.write(
          `ppo: ${r.interrupted ? `interrupted after ${r.steps}/${r.totalSteps}` : r.steps} iterations (${r.optimizerSteps} optimizer steps, ${r.prompts} prompts) in ${r.seconds.toFixed(1)}s; ${rewardPart}` +
            (r.eval ? `; eval reward ${g(r.eval.before.reward)} -> ${g(r.eval.after.reward)}, kl ${g(r.eval.after.kl)}` : '') +
            `; policy adapter saved to ${r.out}, critic to ${r.out}/critic\n`,
        );
        if (r.interrupted) process.exitCode = exitCodeFor(r.signal); // 130 after SIGINT, 143 after SIGTERM
      }),
  );
}
