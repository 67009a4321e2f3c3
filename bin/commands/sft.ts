/**
 * `rlhf-native sft --model DIR --data FILE.jsonl --out DIR [options]`:
 * supervised finetuning (LoRA by default, --full for every weight). Progress
 * lines go to stderr, the final summary to stdout; see docs/sft.md.
 */
import type { Argv } from 'yargs';
import { runSft, SFT_DEFAULTS, type SftStepMetrics } from '../../lib/stages/sft';
import { LR_SCHEDULES } from '../../lib/stages/schedule';
import { runCommand } from '../cli-util';
import { exitCodeFor } from '../../lib/run/signals';
import { deviceOption, splitList } from './common';

const g = (x: number) => (Math.abs(x) >= 1e-3 && Math.abs(x) < 1e4 ? x.toFixed(4) : x.toExponential(3));

function progressLine(m: SftStepMetrics, total: number): string {
  const w = String(total).length;
  return (
    `sft step ${String(m.step).padStart(w)}/${total}  loss ${g(m.loss)}  lr ${m.lr.toExponential(2)}  grad_norm ${g(m.grad_norm)}  ` +
    `tok/s ${Math.round(m.tokens_per_sec)}  epoch ${m.epoch.toFixed(2)}` +
    (m.eval_loss !== undefined ? `  eval_loss ${g(m.eval_loss)}` : '')
  );
}

export function register<T>(y: Argv<T>): Argv<T> {
  return y.command(
    'sft',
    'supervised finetuning (LoRA adapter or --full) on JSONL data',
    (a) =>
      deviceOption(a)
        .option('model', { type: 'string', demandOption: true, describe: 'base model folder (Hugging Face layout)' })
        .option('data', { type: 'string', demandOption: true, describe: 'JSONL rows: {prompt, completion}, {messages}, {text} or {input_ids, labels}' })
        .option('out', { type: 'string', demandOption: true, describe: 'output folder: PEFT adapter (or full model), metrics.jsonl, sft_config.json' })
        .option('full', { type: 'boolean', default: false, describe: 'train every weight instead of a LoRA adapter' })
        .option('adapter', { type: 'string', describe: 'continue training this PEFT LoRA adapter folder' })
        .option('lora-r', { type: 'number', describe: `LoRA rank [default: ${SFT_DEFAULTS.loraR}]` })
        .option('lora-alpha', { type: 'number', describe: `LoRA alpha [default: ${SFT_DEFAULTS.loraAlpha}]` })
        .option('lora-dropout', { type: 'number', default: 0, describe: 'PEFT lora_dropout while training a new adapter' })
        .option('lora-targets', { type: 'string', array: true, describe: 'PEFT module names, comma- or space-separated, or all-linear [default: all-linear]' })
        .option('rslora', { type: 'boolean', describe: 'rsLoRA scaling alpha / sqrt(r) [default: false]' })
        .option('optimizer', { choices: ['adamw', 'sgd'] as const, default: SFT_DEFAULTS.optimizer })
        .option('lr', { type: 'number', describe: `peak learning rate [default: ${SFT_DEFAULTS.lrLora} LoRA, ${SFT_DEFAULTS.lrFull} --full]` })
        .option('adam-beta1', { type: 'number', default: SFT_DEFAULTS.adamBeta1 })
        .option('adam-beta2', { type: 'number', default: SFT_DEFAULTS.adamBeta2 })
        .option('adam-epsilon', { type: 'number', default: SFT_DEFAULTS.adamEpsilon })
        .option('momentum', { type: 'number', default: SFT_DEFAULTS.momentum, describe: 'SGD momentum' })
        .option('weight-decay', { type: 'number', default: SFT_DEFAULTS.weightDecay, describe: 'decoupled weight decay (not on biases and norm weights)' })
        .option('max-grad-norm', { type: 'number', default: SFT_DEFAULTS.maxGradNorm, describe: 'global gradient-norm clipping; 0 disables' })
        .option('lr-schedule', { choices: LR_SCHEDULES, default: SFT_DEFAULTS.lrSchedule, describe: "transformers' schedules" })
        .option('warmup-steps', { type: 'number', default: SFT_DEFAULTS.warmupSteps })
        .option('steps', { type: 'number', default: SFT_DEFAULTS.steps, describe: 'optimizer steps; > 0 overrides --epochs' })
        .option('epochs', { type: 'number', default: SFT_DEFAULTS.epochs })
        .option('batch-size', { type: 'number', default: SFT_DEFAULTS.batchSize, describe: 'rows per micro-batch' })
        .option('grad-accum', { type: 'number', default: SFT_DEFAULTS.gradAccum, describe: 'micro-batches per optimizer step (token-weighted)' })
        .option('max-len', { type: 'number', default: SFT_DEFAULTS.maxLen, describe: "rows are cut to this many tokens (and to the model's context)" })
        .option('seed', { type: 'number', default: SFT_DEFAULTS.seed })
        .option('nan-policy', { choices: ['stop', 'skip'] as const, default: 'stop' as const, describe: 'a step whose loss or gradient is NaN/infinite: stop the run, or skip the step' })
        .option('resume-mismatch', { type: 'boolean', default: false, describe: 'with --resume: continue from a checkpoint written with other options or data' })
        .option('shuffle', { type: 'boolean', default: SFT_DEFAULTS.shuffle, describe: 'shuffle rows each epoch (seeded); default: file order' })
        .option('eval-data', { type: 'string', describe: 'held-out JSONL for eval loss' })
        .option('eval-fraction', { type: 'number', default: SFT_DEFAULTS.evalFraction, describe: 'hold out this fraction of --data for eval loss' })
        .option('eval-steps', { type: 'number', default: SFT_DEFAULTS.evalSteps, describe: 'eval every N steps (and at the end); 0: only at the end' })
        .option('eval-batch-size', { type: 'number', describe: 'eval rows per batch [default: --batch-size]' })
        .option('checkpoint-steps', { type: 'number', default: SFT_DEFAULTS.checkpointSteps, describe: 'resumable checkpoint every N steps into OUT/checkpoints (0: none)' })
        .option('resume', { type: 'boolean', default: false, describe: 'continue from the newest checkpoint in OUT/checkpoints' })
        .option('log-steps', { type: 'number', default: 1, describe: 'a progress line on stderr every N steps (and the first and last)' }),
    (argv) =>
      runCommand(argv, async () => {
        const logEvery = Math.max(1, Math.floor(argv['log-steps']));
        const r = await runSft(
          {
            model: argv.model,
            data: argv.data,
            out: argv.out,
            adapter: argv.adapter ?? null,
            full: argv.full,
            loraR: argv['lora-r'],
            loraAlpha: argv['lora-alpha'],
            loraDropout: argv['lora-dropout'],
            loraTargets: splitList(argv['lora-targets']),
            rslora: argv.rslora,
            optimizer: argv.optimizer,
            lr: argv.lr,
            adamBeta1: argv['adam-beta1'],
            adamBeta2: argv['adam-beta2'],
            adamEpsilon: argv['adam-epsilon'],
            momentum: argv.momentum,
            weightDecay: argv['weight-decay'],
            maxGradNorm: argv['max-grad-norm'],
            lrSchedule: argv['lr-schedule'],
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
            evalBatchSize: argv['eval-batch-size'],
            checkpointSteps: argv['checkpoint-steps'],
            resume: argv.resume,
            device: argv.device,
          },
          {
            log: (line) => void process.stderr.write(line + '\n'),
            onStep: (m, { totalSteps }) => {
              if (m.step === 1 || m.step === totalSteps || m.step % logEvery === 0 || m.eval_loss !== undefined) process.stderr.write(progressLine(m, totalSteps) + '\n');
            },
          },
        );
        const what = r.saved === 'model' ? 'full model' : 'LoRA adapter';
        const lossPart = r.initialLoss === null ? 'no step taken' : `loss ${g(r.initialLoss)} -> ${g(r.finalLoss!)}`;
        process.stdout.write(
          `sft: ${r.interrupted ? `interrupted after ${r.steps}/${r.totalSteps}` : r.steps} steps (${r.epochs.toFixed(2)} epochs, ${r.trainRows} rows) in ${r.seconds.toFixed(1)}s, ` +
            `${Math.round(r.tokensPerSec)} tok/s; ${lossPart}` +
            (r.evalLoss !== null ? `; eval loss ${g(r.evalLoss)} (${r.evalRows} rows)` : '') +
            `; ${what} (${r.trainableParameters} trainable parameters) saved to ${r.out}\n`,
        );
        if (r.interrupted) process.exitCode = exitCodeFor(r.signal); // 130 after SIGINT, 143 after SIGTERM
      }),
  );
}
