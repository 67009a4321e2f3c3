/**
 * `rlhf-native rm --model DIR --data PAIRS.jsonl --out DIR [options]`:
 * reward-model training (LoRA + score head by default, --full for every
 * weight) with the pairwise loss and Llama 2's optional margin; see docs/rm.md.
 */
import type { Argv } from 'yargs';
import { runRm, RM_DEFAULTS, type RmStepMetrics } from '../../lib/stages/reward';
import { LR_SCHEDULES } from '../../lib/stages/schedule';
import { runCommand } from '../cli-util';
import { exitCodeFor } from '../../lib/run/signals';
import { deviceOption, splitList } from './common';

const g = (x: number) => (Math.abs(x) >= 1e-3 && Math.abs(x) < 1e4 ? x.toFixed(4) : x.toExponential(3));

function progressLine(m: RmStepMetrics, total: number): string {
  const w = String(total).length;
  return (
    `rm step ${String(m.step).padStart(w)}/${total}  loss ${g(m.loss)}  accuracy ${m.accuracy.toFixed(3)}  margin ${g(m.margin)}  lr ${m.lr.toExponential(2)}  ` +
    `tok/s ${Math.round(m.tokens_per_sec)}` +
    (m.eval_accuracy !== undefined ? `  eval_accuracy ${m.eval_accuracy.toFixed(3)}  eval_loss ${g(m.eval_loss!)}` : '')
  );
}

export function register<T>(y: Argv<T>): Argv<T> {
  return y.command(
    'rm',
    'reward-model training on preference pairs (LoRA + score head, or --full)',
    (a) =>
      deviceOption(a)
        .option('model', { type: 'string', demandOption: true, describe: 'SFT model folder (Hugging Face layout)' })
        .option('data', { type: 'string', demandOption: true, describe: 'JSONL pairs: {prompt, chosen, rejected} (+ margin or rating)' })
        .option('out', { type: 'string', demandOption: true, describe: 'output folder: PEFT SEQ_CLS adapter (or *ForSequenceClassification model), metrics.jsonl' })
        .option('full', { type: 'boolean', default: false, describe: 'train every weight; save a *ForSequenceClassification folder' })
        .option('adapter', { type: 'string', describe: 'continue this reward-model adapter' })
        .option('lora-r', { type: 'number', describe: `LoRA rank [default: ${RM_DEFAULTS.loraR}]` })
        .option('lora-alpha', { type: 'number', describe: `LoRA alpha [default: ${RM_DEFAULTS.loraAlpha}]` })
        .option('lora-targets', { type: 'string', array: true, describe: 'PEFT module names or all-linear [default: all-linear]' })
        .option('rslora', { type: 'boolean', describe: 'rsLoRA scaling [default: false]' })
        .option('head-std', { type: 'number', describe: "std of the fresh score head [default: the model's initializer_range]" })
        .option('margin', { type: 'boolean', default: RM_DEFAULTS.useMargin, describe: "use each pair's margin (Llama 2's margin loss); --no-margin ignores it" })
        .option('margin-scale', { choices: ['small', 'large'] as const, default: RM_DEFAULTS.marginScale, describe: 'Llama 2 Table 27 column mapping ratings to margins' })
        .option('optimizer', { choices: ['adamw', 'sgd'] as const, default: RM_DEFAULTS.optimizer })
        .option('lr', { type: 'number', describe: `peak learning rate [default: ${RM_DEFAULTS.lrLora} LoRA, ${RM_DEFAULTS.lrFull} --full]` })
        .option('weight-decay', { type: 'number', default: RM_DEFAULTS.weightDecay })
        .option('max-grad-norm', { type: 'number', default: RM_DEFAULTS.maxGradNorm })
        .option('lr-schedule', { choices: LR_SCHEDULES, default: RM_DEFAULTS.lrSchedule })
        .option('warmup-ratio', { type: 'number', default: RM_DEFAULTS.warmupRatio })
        .option('warmup-steps', { type: 'number', default: RM_DEFAULTS.warmupSteps, describe: '> 0 overrides --warmup-ratio' })
        .option('steps', { type: 'number', default: RM_DEFAULTS.steps, describe: 'optimizer steps; > 0 overrides --epochs' })
        .option('epochs', { type: 'number', default: RM_DEFAULTS.epochs })
        .option('batch-size', { type: 'number', default: RM_DEFAULTS.batchSize, describe: 'pairs per micro-batch' })
        .option('grad-accum', { type: 'number', default: RM_DEFAULTS.gradAccum })
        .option('max-len', { type: 'number', default: RM_DEFAULTS.maxLen })
        .option('seed', { type: 'number', default: RM_DEFAULTS.seed })
        .option('nan-policy', { choices: ['stop', 'skip'] as const, default: 'stop' as const, describe: 'a step whose loss or gradient is NaN/infinite: stop the run, or skip the step' })
        .option('resume-mismatch', { type: 'boolean', default: false, describe: 'with --resume: continue from a checkpoint written with other options or data' })
        .option('shuffle', { type: 'boolean', default: RM_DEFAULTS.shuffle })
        .option('eval-data', { type: 'string', describe: 'held-out preference JSONL (accuracy, loss)' })
        .option('eval-fraction', { type: 'number', default: RM_DEFAULTS.evalFraction })
        .option('eval-steps', { type: 'number', default: RM_DEFAULTS.evalSteps })
        .option('checkpoint-steps', { type: 'number', default: RM_DEFAULTS.checkpointSteps, describe: 'resumable checkpoint every N steps (0: none)' })
        .option('resume', { type: 'boolean', default: false, describe: 'continue from the newest checkpoint in OUT/checkpoints' })
        .option('log-steps', { type: 'number', default: 1 }),
    (argv) =>
      runCommand(argv, async () => {
        const logEvery = Math.max(1, Math.floor(argv['log-steps']));
        const r = await runRm(
          {
            model: argv.model,
            data: argv.data,
            out: argv.out,
            adapter: argv.adapter ?? null,
            full: argv.full,
            loraR: argv['lora-r'],
            loraAlpha: argv['lora-alpha'],
            loraTargets: splitList(argv['lora-targets']),
            rslora: argv.rslora,
            headStd: argv['head-std'],
            useMargin: argv.margin,
            marginScale: argv['margin-scale'],
            optimizer: argv.optimizer,
            lr: argv.lr,
            weightDecay: argv['weight-decay'],
            maxGradNorm: argv['max-grad-norm'],
            lrSchedule: argv['lr-schedule'],
            warmupRatio: argv['warmup-ratio'],
            warmupSteps: argv['warmup-steps'],
            steps: argv.steps,
            epochs: argv.epochs,
            batchSize: argv['batch-size'],
            gradAccum: argv['grad-accum'],
            maxLen: argv['max-len'],
            seed: argv.seed,
            nanPolicy: argv['nan-policy'],
            resumeMismatch: argv['resume-mismatch'],
            shuffle: argv.shuffle,
            evalData: argv['eval-data'] ?? null,
            evalFraction: argv['eval-fraction'],
            evalSteps: argv['eval-steps'],
            checkpointSteps: argv['checkpoint-steps'],
            resume: argv.resume,
            device: argv.device,
          },
          {
            log: (line) => void process.stderr.write(line + '\n'),
            onStep: (m, { totalSteps }) => {
              if (m.step === 1 || m.step === totalSteps || m.step % logEvery === 0 || m.eval_accuracy !== undefined) process.stderr.write(progressLine(m, totalSteps) + '\n');
            },
          },
        );
        const ev = r.finalEval ? `; held-out accuracy ${r.initialEval ? `${r.initialEval.accuracy.toFixed(3)} -> ` : ''}${r.finalEval.accuracy.toFixed(3)} (${r.evalPairs} pairs)` : '';
        process.stdout.write(
          `rm: ${r.interrupted ? `interrupted after ${r.steps}/${r.totalSteps}` : r.steps} steps (${r.trainPairs} pairs) in ${r.seconds.toFixed(1)}s, ${Math.round(r.tokensPerSec)} tok/s` +
            (r.finalLoss !== null ? `; loss ${g(r.finalLoss)}` : '') +
            ev +
            `; ${r.saved === 'model' ? 'reward model' : 'LoRA adapter + score head'} saved to ${r.out}\n`,
        );
        if (r.interrupted) process.exitCode = exitCodeFor(r.signal); // 130 after SIGINT, 143 after SIGTERM
      }),
  );
}
