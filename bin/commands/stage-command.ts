/**
 * A training stage as a command: its options and --help come from the
 * stage's option table (lib/train/options.ts), the config from the parsed
 * arguments; progress lines go to stderr (every --log-steps steps, the first
 * and last, and every step with held-out figures), the one-line summary to
 * stdout; exit 130 after SIGINT, 143 after SIGTERM (the output is saved).
 * A stage command file holds only its progress and summary lines.
 */
import type { Argv } from 'yargs';
import type { Stage, StageRunResult } from '../../lib/train/stage';
import { addCliOptions, configFromArgv, type OptionSpec } from '../../lib/train/options';
import { exitCodeFor } from '../../lib/run/signals';
import { isRoot, launcherWorld } from '../../lib/engine/distributed';
import { RlhfError } from '../../lib/errors';
import { runCommand } from '../cli-util';
import { withExample } from './examples';

export interface StageCommand<C, R extends StageRunResult, M> {
  stage: Stage<C, R>;
  /** One progress line of a metrics record (printed on the first and last step and every --log-steps). */
  progress?(m: M, totalSteps: number): string;
  /** Print this record whatever the cadence (e.g. it carries held-out figures). */
  always?(m: M): boolean;
  /** Instead of `progress`: the lines of a record, given the cadence (stages whose records are not steps). */
  lines?(m: M, logEvery: number): string[];
  /** The line printed on stdout when the run ends. */
  summary(r: R, argv: Record<string, unknown>): string;
  /** CLI-only changes to rows of the option table (e.g. an option the CLI demands). */
  cliOverrides?: Record<string, Partial<OptionSpec>>;
  /** --log-steps: its default and what a step is. Default 1, 'steps'. */
  logSteps?: { default: number; unit: string };
}

/** A number for a progress line: fixed below 1e4 and above 1e-3, else exponent notation. */
export const fmt = (x: number) => (x === 0 || (Math.abs(x) >= 1e-3 && Math.abs(x) < 1e4) ? x.toFixed(4) : x.toExponential(3));

export function registerStage<T, C, R extends StageRunResult, M>(y: Argv<T>, cmd: StageCommand<C, R, M>): Argv<T> {
  const { stage } = cmd;
  return y.command(
    stage.name,
    stage.summary,
    (a) =>
      withExample(
        addCliOptions(a, stage.options, cmd.cliOverrides).option('log-steps', {
          type: 'number',
          default: cmd.logSteps?.default ?? 1,
          describe: `a progress line on stderr every N ${cmd.logSteps?.unit ?? 'steps'} (and the first and last)`,
        }),
        stage.name,
      ),
    (argv) =>
      runCommand(argv, async () => {
        const lw = launcherWorld();
        // Under mpirun/srun, a stage that cannot split its work would run the same job on every rank, all writing one --out.
        if (lw.size > 1 && !stage.dataParallel)
          throw new RlhfError('E_UNSUPPORTED', `${stage.name} does not train data-parallel yet (world of ${lw.size} ranks from ${lw.launcher}); run it as one process, without mpirun/srun (docs/distributed.md)`);
        const logEvery = Math.max(1, Math.floor(Number(argv['log-steps'])));
        const r = await stage.run(configFromArgv(stage.options, argv as Record<string, unknown>), {
          log: (line: string) => void process.stderr.write(line + '\n'),
          onStep: (m: unknown, { totalSteps }: { totalSteps: number }) => {
            const rec = m as M & { step: number };
            if (cmd.lines) for (const l of cmd.lines(rec, logEvery)) process.stderr.write(l + '\n');
            else if (cmd.progress && (rec.step === 1 || rec.step === totalSteps || rec.step % logEvery === 0 || cmd.always?.(rec))) process.stderr.write(cmd.progress(rec, totalSteps) + '\n');
          },
        });
        if (isRoot()) process.stdout.write(cmd.summary(r, argv as Record<string, unknown>) + '\n');
        if (r.interrupted) process.exitCode = exitCodeFor(r.signal); // 130 after SIGINT, 143 after SIGTERM
      }),
  );
}

/** "N/total" with N padded to the width of total. */
export const stepOf = (step: number, total: number) => `${String(step).padStart(String(total).length)}/${total}`;
