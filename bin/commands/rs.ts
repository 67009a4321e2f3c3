/**
 * `rlhf-native rs --model DIR --data PROMPTS.jsonl --reward-model DIR --out DIR [options]`:
 * rejection sampling (Llama 2 section 3.2.3): sample K responses per prompt,
 * keep the best under the reward model(s), finetune on them; repeat for
 * --rounds. Progress goes to stderr, the summary line to stdout; see docs/rs.md.
 */
import type { Argv } from 'yargs';
import { runRejectionSampling, RS_DEFAULTS, type RsMetrics } from '../../lib/stages/rejection';
import { SFT_DEFAULTS } from '../../lib/stages/sft';
import { LR_SCHEDULES } from '../../lib/stages/schedule';
import { runCommand } from '../cli-util';
import { exitCodeFor } from '../../lib/run/signals';
import { deviceOption, splitList } from './common';

const g = (x: number) => (x === 0 || (Math.abs(x) >= 1e-3 && Math.abs(x) < 1e4) ? x.toFixed(4) : x.toExponential(3));

export function register<T>(y: Argv<T>): Argv<T> {
  return y.command(
    'rs',
    'rejection sampling: sample K responses per prompt, finetune on the best under the reward model(s)',
    (a) =>
      deviceOption(a)
        .option('model', { type: 'string', demandOption: true, describe: 'policy model folder (Hugging Face causal LM)' })
        .option('data', { type: 'string', demandOption: true, describe: 'prompt JSONL: {"prompt"} or {"messages"} per line, optional "safe": true|false' })
        .option('out', { type: 'string', demandOption: true, describe: 'stage folder: rs_config.json, metrics.jsonl, round-N/ (samples, SFT data, policy)' })
        .option('reward-model', { type: 'string', demandOption: true, describe: 'helpfulness reward model: a *ForSequenceClassification folder (num_labels 1) or a LoRA adapter with a score head' })
        .option('safety-model', { type: 'string', describe: 'safety reward model, the same kinds (Llama 2 combination)' })
        .option('combine', { choices: ['llama2', 'helpfulness'] as const, describe: 'how two reward models combine [default: llama2 with --safety-model]' })
        .option('safety-threshold', { type: 'number', default: RS_DEFAULTS.safetyThreshold, describe: 'sigmoid-scale safety score under which safety decides' })
        .option('reward-batch-size', { type: 'number', default: RS_DEFAULTS.rewardBatchSize, describe: 'sequences per reward-model forward' })
        .option('adapter', { type: 'string', describe: 'the starting policy PEFT LoRA adapter (round 1 continues it)' })
        .option('full', { type: 'boolean', default: false, describe: 'finetune every weight instead of a LoRA adapter' })
        .option('rounds', { type: 'number', default: RS_DEFAULTS.rounds, describe: 'sample / select / finetune rounds' })
        .option('k', { type: 'number', default: RS_DEFAULTS.k, describe: 'samples per prompt' })
        .option('temperature', { type: 'number', default: RS_DEFAULTS.temperature })
        .option('top-p', { type: 'number', default: RS_DEFAULTS.topP })
        .option('top-k', { type: 'number', default: RS_DEFAULTS.topK, describe: '0: off' })
        .option('max-new-tokens', { type: 'number', default: RS_DEFAULTS.maxNewTokens })
        .option('gen-batch-size', { type: 'number', default: RS_DEFAULTS.genBatchSize, describe: 'sequences per generate call' })
        .option('min-reward', { type: 'number', describe: "keep a prompt's best response only when its reward is >= this" })
        .option('accumulate', { type: 'boolean', default: RS_DEFAULTS.accumulate, describe: 'train each round on the best response of each prompt over all rounds so far' })
        .option('eval-data', { type: 'string', describe: 'held-out prompt JSONL for the before/after mean reward' })
        .option('eval-fraction', { type: 'number', describe: `hold out this fraction of --data instead (0: no evaluation) [default: ${RS_DEFAULTS.evalFraction}]` })
        .option('eval-samples', { type: 'number', default: RS_DEFAULTS.evalSamples, describe: 'samples per held-out prompt' })
        .option('seed', { type: 'number', default: RS_DEFAULTS.seed })
        .option('lora-r', { type: 'number', describe: `LoRA rank of a new adapter [default: ${SFT_DEFAULTS.loraR}]` })
        .option('lora-alpha', { type: 'number', describe: `LoRA alpha of a new adapter [default: ${SFT_DEFAULTS.loraAlpha}]` })
        .option('lora-targets', { type: 'string', array: true, describe: 'PEFT module names or all-linear [default: all-linear]' })
        .option('lr', { type: 'number', describe: `SFT learning rate [default: ${SFT_DEFAULTS.lrLora} LoRA, ${SFT_DEFAULTS.lrFull} --full]` })
        .option('lr-schedule', { choices: LR_SCHEDULES, describe: `SFT schedule [default: ${SFT_DEFAULTS.lrSchedule}]` })
        .option('warmup-steps', { type: 'number', describe: 'SFT warmup steps [default: 0]' })
        .option('weight-decay', { type: 'number', describe: 'SFT weight decay [default: 0]' })
        .option('max-grad-norm', { type: 'number', describe: `SFT gradient clipping [default: ${SFT_DEFAULTS.maxGradNorm}]` })
        .option('epochs', { type: 'number', describe: `SFT epochs per round [default: ${SFT_DEFAULTS.epochs}]` })
        .option('steps', { type: 'number', describe: 'SFT optimizer steps per round; > 0 overrides --epochs' })
        .option('batch-size', { type: 'number', describe: `SFT rows per micro-batch [default: ${SFT_DEFAULTS.batchSize}]` })
        .option('grad-accum', { type: 'number', describe: `SFT micro-batches per step [default: ${SFT_DEFAULTS.gradAccum}]` })
        .option('max-len', { type: 'number', describe: `SFT rows are cut to this many tokens [default: ${SFT_DEFAULTS.maxLen}]` })
        .option('log-steps', { type: 'number', default: 10, describe: 'an SFT progress line every N steps (and the first and last of each round)' }),
    (argv) =>
      runCommand(argv, async () => {
        const logEvery = Math.max(1, Math.floor(argv['log-steps']));
        const err = (line: string) => void process.stderr.write(line + '\n');
        const r = await runRejectionSampling(
          {
            model: argv.model,
            data: argv.data,
            out: argv.out,
            adapter: argv.adapter ?? null,
            full: argv.full,
            rewardModel: argv['reward-model'],
            safetyModel: argv['safety-model'] ?? null,
            combine: argv.combine,
            safetyThreshold: argv['safety-threshold'],
            rewardBatchSize: argv['reward-batch-size'],
            rounds: argv.rounds,
            k: argv.k,
            temperature: argv.temperature,
            topP: argv['top-p'],
            topK: argv['top-k'],
            maxNewTokens: argv['max-new-tokens'],
            genBatchSize: argv['gen-batch-size'],
            minReward: argv['min-reward'] ?? null,
            accumulate: argv.accumulate,
            evalData: argv['eval-data'] ?? null,
            evalFraction: argv['eval-fraction'],
            evalSamples: argv['eval-samples'],
            seed: argv.seed,
            device: argv.device,
            sft: {
              loraR: argv['lora-r'],
              loraAlpha: argv['lora-alpha'],
              loraTargets: splitList(argv['lora-targets']),
              lr: argv.lr,
              lrSchedule: argv['lr-schedule'],
              warmupSteps: argv['warmup-steps'],
              weightDecay: argv['weight-decay'],
              maxGradNorm: argv['max-grad-norm'],
              epochs: argv.epochs,
              steps: argv.steps,
              batchSize: argv['batch-size'],
              gradAccum: argv['grad-accum'],
              maxLen: argv['max-len'],
            },
          },
          {
            log: err,
            onMetrics: (m: RsMetrics) => {
              if (m.phase === 'sft' && (m.step === 1 || m.step % logEvery === 0)) err(`rs round ${m.round} sft step ${m.step}  loss ${g(m.loss)}  lr ${m.lr.toExponential(2)}  tok/s ${Math.round(m.tokens_per_sec)}`);
              if (m.phase === 'round' && m.sft_steps > 0) err(`rs round ${m.round}: ${m.sft_steps} SFT steps, loss ${g(m.sft_initial_loss!)} -> ${g(m.sft_final_loss!)}; round took ${m.seconds.toFixed(1)}s`);
            },
          },
        );
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
