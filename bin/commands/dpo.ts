/**
 * `rlhf-native dpo --model DIR --data PAIRS.jsonl --out DIR [options]`:
 * Direct Preference Optimization (LoRA by default, --full for every weight).
 * Progress lines go to stderr, the final summary to stdout; see docs/dpo.md.
 */
import type { Argv } from 'yargs';
import { runDpo, DPO_DEFAULTS, DPO_LOSS_TYPES, type DpoStepMetrics } from '../../lib/stages/dpo';
import { LR_SCHEDULES } from '../../lib/stages/schedule';
import { runCommand } from '../cli-util';
import { exitCodeFor } from '../../lib/run/signals';
import { deviceOption, splitList } from './common';

const g = (x: number) => (Math.abs(x) >= 1e-3 && Math.abs(x) < 1e4 ? x.toFixed(4) : x === 0 ? '0' : x.toExponential(3));

function progressLine(m: DpoStepMetrics, total: number): string {
  const w = String(total).length;
  return (
    `dpo step ${String(m.step).padStart(w)}/${total}  loss ${g(m.loss!)}  margin ${g(m['rewards/margins']!)}  acc ${m['rewards/accuracies']!.toFixed(3)}  ` +
    `lr ${m.lr!.toExponential(2)}  grad_norm ${g(m.grad_norm!)}  tok/s ${Math.round(m.tokens_per_sec!)}  epoch ${m.epoch.toFixed(2)}` +
    (m.eval_loss !== undefined ? `  eval_loss ${g(m.eval_loss)}  eval_margin ${g(m['eval_rewards/margins']!)}  eval_acc ${m['eval_rewards/accuracies']!.toFixed(3)}` : '')
  );
}

export function register<T>(y: Argv<T>): Argv<T> {
  return y.command(
    'dpo',
    'Direct Preference Optimization (LoRA adapter or --full) on preference pairs',
    (a) =>
      deviceOption(a)
        .option('model', { type: 'string', demandOption: true, describe: 'base model folder (Hugging Face layout); also the reference model' })
        .option('data', { type: 'string', demandOption: true, describe: 'JSONL pairs: {prompt, chosen, rejected} (strings or messages) or {prompt_ids, chosen_ids, rejected_ids}' })
        .option('out', { type: 'string', demandOption: true, describe: 'output folder: PEFT adapter (or full model), metrics.jsonl, dpo_config.json' })
        .option('full', { type: 'boolean', default: false, describe: 'train every weight instead of a LoRA adapter' })
        .option('adapter', { type: 'string', describe: 'continue training this PEFT LoRA adapter folder (base + adapter is then the reference)' })
        .option('lora-r', { type: 'number', describe: `LoRA rank [default: ${DPO_DEFAULTS.loraR}]` })
        .option('lora-alpha', { type: 'number', describe: `LoRA alpha [default: ${DPO_DEFAULTS.loraAlpha}]` })
        .option('lora-targets', { type: 'string', array: true, describe: 'PEFT module names, comma- or space-separated, or all-linear [default: all-linear]' })
        .option('rslora', { type: 'boolean', describe: 'rsLoRA scaling alpha / sqrt(r) [default: false]' })
        .option('beta', { type: 'number', default: DPO_DEFAULTS.beta, describe: 'DPO beta: inverse temperature of the implicit reward' })
        .option('label-smoothing', { type: 'number', default: DPO_DEFAULTS.labelSmoothing, describe: 'conservative DPO: probability that a label is flipped, in [0, 0.5)' })
        .option('loss-type', { type: 'string', default: DPO_DEFAULTS.lossType, describe: `DPO loss (${DPO_LOSS_TYPES.join(', ')})` })
        .option('optimizer', { choices: ['adamw', 'sgd'] as const, default: DPO_DEFAULTS.optimizer })
        .option('lr', { type: 'number', describe: `peak learning rate [default: ${DPO_DEFAULTS.lrLora} LoRA, ${DPO_DEFAULTS.lrFull} --full]` })
        .option('adam-beta1', { type: 'number', default: DPO_DEFAULTS.adamBeta1 })
        .option('adam-beta2', { type: 'number', default: DPO_DEFAULTS.adamBeta2 })
        .option('adam-epsilon', { type: 'number', default: DPO_DEFAULTS.adamEpsilon })
        .option('momentum', { type: 'number', default: DPO_DEFAULTS.momentum, describe: 'SGD momentum' })
        .option('weight-decay', { type: 'number', default: DPO_DEFAULTS.weightDecay, describe: 'decoupled weight decay (not on biases and norm weights)' })
        .option('max-grad-norm', { type: 'number', default: DPO_DEFAULTS.maxGradNorm, describe: 'global gradient-norm clipping; 0 disables' })
        .option('lr-schedule', { choices: LR_SCHEDULES, default: DPO_DEFAULTS.lrSchedule, describe: "transformers' schedules" })
        .option('warmup-steps', { type: 'number', default: DPO_DEFAULTS.warmupSteps })
        .option('steps', { type: 'number', default: DPO_DEFAULTS.steps, describe: 'optimizer steps; > 0 overrides --epochs' })
        .option('epochs', { type: 'number', default: DPO_DEFAULTS.epochs })
        .option('batch-size', { type: 'number', default: DPO_DEFAULTS.batchSize, describe: 'pairs per micro-batch (two sequences each)' })
        .option('grad-accum', { type: 'number', default: DPO_DEFAULTS.gradAccum, describe: 'micro-batches per optimizer step' })
        .option('max-len', { type: 'number', default: DPO_DEFAULTS.maxLen, describe: "chosen/rejected sequences are cut to this many tokens (and to the model's context)" })
        .option('seed', { type: 'number', default: DPO_DEFAULTS.seed })
        .option('nan-policy', { choices: ['stop', 'skip'] as const, default: 'stop' as const, describe: 'a step whose loss or gradient is NaN/infinite: stop the run, or skip the step' })
        .option('shuffle', { type: 'boolean', default: DPO_DEFAULTS.shuffle, describe: 'shuffle pairs each epoch (seeded); default: file order' })
        .option('eval-data', { type: 'string', describe: 'held-out preference JSONL' })
        .option('eval-fraction', { type: 'number', default: DPO_DEFAULTS.evalFraction, describe: 'hold out this fraction of --data' })
        .option('eval-steps', { type: 'number', default: DPO_DEFAULTS.evalSteps, describe: 'eval every N steps (and before the first and after the last); 0: start and end only' })
        .option('eval-batch-size', { type: 'number', describe: 'eval and reference pairs per batch [default: --batch-size]' })
        .option('log-steps', { type: 'number', default: 1, describe: 'a progress line on stderr every N steps (and the first and last)' }),
    (argv) =>
      runCommand(argv, async () => {
        const logEvery = Math.max(1, Math.floor(argv['log-steps']));
        const r = await runDpo(
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
            beta: argv.beta,
            labelSmoothing: argv['label-smoothing'],
            lossType: argv['loss-type'] as 'sigmoid',
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
            shuffle: argv.shuffle,
            evalData: argv['eval-data'] ?? null,
            evalFraction: argv['eval-fraction'],
            evalSteps: argv['eval-steps'],
            evalBatchSize: argv['eval-batch-size'],
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
        const evalPart =
          r.initialEval && r.finalEval
            ? `; eval reward margin ${g(r.initialEval.margin)} -> ${g(r.finalEval.margin)}, accuracy ${r.initialEval.accuracy.toFixed(3)} -> ${r.finalEval.accuracy.toFixed(3)} (${r.evalPairs} pairs)`
            : '';
        process.stdout.write(
          `dpo: ${r.interrupted ? `interrupted after ${r.steps}/${r.totalSteps}` : r.steps} steps (${r.epochs.toFixed(2)} epochs, ${r.trainPairs} pairs) in ${r.seconds.toFixed(1)}s, ` +
            `${Math.round(r.tokensPerSec)} tok/s; ${lossPart}${evalPart}` +
            `; ${what} (${r.trainableParameters} trainable parameters) saved to ${r.out}\n`,
        );
        if (r.interrupted) process.exitCode = exitCodeFor(r.signal); // 130 after SIGINT, 143 after SIGTERM
      }),
  );
}
