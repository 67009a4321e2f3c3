/**
 * `rlhf-native ppo --model DIR --data PROMPTS.jsonl --reward-model DIR --out DIR [options]`:
 * PPO against one or two reward models (LoRA policy and critic on one base).
 * Progress lines go to stderr, the final summary to stdout; see docs/ppo.md.
 */
import type { Argv } from 'yargs';
import { runPpo, PPO_DEFAULTS, type PpoStepMetrics } from '../../lib/stages/ppo';
import { LR_SCHEDULES } from '../../lib/stages/schedule';
import { runCommand } from '../cli-util';
import { exitCodeFor } from '../../lib/run/signals';
import { deviceOption, splitList } from './common';

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
    'ppo',
    'PPO against reward models: a LoRA policy and a critic (from the reward model) on one base',
    (a) =>
      deviceOption(a)
        .option('model', { type: 'string', demandOption: true, describe: 'base model folder (the SFT model, causal LM)' })
        .option('data', { type: 'string', demandOption: true, describe: 'prompts, JSONL: {prompt}, {prompt: [messages]} or {messages}, optional "safe"' })
        .option('out', { type: 'string', demandOption: true, describe: 'output folder: policy adapter (PEFT), critic/, metrics.jsonl, ppo_config.json' })
        .option('reward-model', { type: 'string', demandOption: true, describe: 'helpfulness reward model: *ForSequenceClassification folder or PEFT adapter with a score head' })
        .option('safety-model', { type: 'string', describe: 'safety reward model (Llama 2 combination)' })
        .option('combine', { choices: ['llama2', 'helpfulness'] as const, describe: 'how two reward models combine [default: llama2 with --safety-model]' })
        .option('safety-threshold', { type: 'number', default: PPO_DEFAULTS.safetyThreshold, describe: 'Llama 2 safety threshold (sigmoid scale)' })
        .option('adapter', { type: 'string', describe: 'continue this PEFT LoRA adapter as the policy' })
        .option('critic', { type: 'string', describe: 'start the critic from this PEFT adapter with a score head (default: from the reward model)' })
        .option('lora-r', { type: 'number', describe: `LoRA rank of new adapters [default: ${PPO_DEFAULTS.loraR}]` })
        .option('lora-alpha', { type: 'number', describe: `LoRA alpha [default: ${PPO_DEFAULTS.loraAlpha}]` })
        .option('lora-targets', { type: 'string', array: true, describe: 'PEFT module names, comma- or space-separated, or all-linear [default: all-linear]' })
        .option('rslora', { type: 'boolean', describe: 'rsLoRA scaling alpha / sqrt(r) [default: false]' })
        .option('lr', { type: 'number', default: PPO_DEFAULTS.lr, describe: 'policy learning rate' })
        .option('critic-lr', { type: 'number', describe: 'critic learning rate [default: --lr]' })
        .option('adam-beta1', { type: 'number', default: PPO_DEFAULTS.adamBeta1 })
        .option('adam-beta2', { type: 'number', default: PPO_DEFAULTS.adamBeta2 })
        .option('adam-epsilon', { type: 'number', default: PPO_DEFAULTS.adamEpsilon })
        .option('weight-decay', { type: 'number', default: PPO_DEFAULTS.weightDecay })
        .option('max-grad-norm', { type: 'number', default: PPO_DEFAULTS.maxGradNorm, describe: 'gradient-norm clipping per adapter; 0 disables' })
        .option('lr-schedule', { choices: LR_SCHEDULES, default: PPO_DEFAULTS.lrSchedule, describe: 'over all optimizer steps' })
        .option('warmup-steps', { type: 'number', default: PPO_DEFAULTS.warmupSteps })
        .option('iterations', { type: 'number', default: PPO_DEFAULTS.iterations, describe: 'PPO iterations; 0: one pass over the prompts' })
        .option('batch-size', { type: 'number', default: PPO_DEFAULTS.batchSize, describe: 'rollouts per iteration' })
        .option('mini-batch-size', { type: 'number', default: PPO_DEFAULTS.miniBatchSize, describe: 'rollouts per optimizer step' })
        .option('micro-batch-size', { type: 'number', describe: 'rollouts per training forward [default: --mini-batch-size]' })
        .option('forward-batch-size', { type: 'number', default: PPO_DEFAULTS.forwardBatchSize, describe: 'rollouts per generate call and inference forward' })
        .option('ppo-epochs', { type: 'number', default: PPO_DEFAULTS.ppoEpochs, describe: 'passes over each batch' })
        .option('max-new-tokens', { type: 'number', default: PPO_DEFAULTS.maxNewTokens, describe: 'response budget' })
        .option('temperature', { type: 'number', default: PPO_DEFAULTS.temperature })
        .option('top-k', { type: 'number', default: PPO_DEFAULTS.topK, describe: '0: off' })
        .option('top-p', { type: 'number', default: PPO_DEFAULTS.topP })
        .option('cliprange', { type: 'number', default: PPO_DEFAULTS.cliprange })
        .option('cliprange-value', { type: 'number', default: PPO_DEFAULTS.cliprangeValue, describe: '<= 0: no value clipping' })
        .option('vf-coef', { type: 'number', default: PPO_DEFAULTS.vfCoef })
        .option('ent-coef', { type: 'number', default: PPO_DEFAULTS.entCoef })
        .option('gamma', { type: 'number', default: PPO_DEFAULTS.gamma })
        .option('lam', { type: 'number', default: PPO_DEFAULTS.lam })
        .option('kl-coef', { type: 'number', default: PPO_DEFAULTS.klCoef, describe: 'KL penalty coefficient (initial value with --kl-target)' })
        .option('kl-target', { type: 'number', describe: 'adaptive KL control towards this KL per response (Ziegler et al.) [default: fixed coefficient]' })
        .option('kl-horizon', { type: 'number', default: PPO_DEFAULTS.klHorizon })
        .option('kl-estimator', { choices: ['k1', 'k3'] as const, default: PPO_DEFAULTS.klEstimator })
        .option('whiten-rewards', { type: 'boolean', default: PPO_DEFAULTS.whitenRewards })
        .option('whiten-advantages', { type: 'boolean', default: PPO_DEFAULTS.whitenAdvantages })
        .option('missing-eos-penalty', { type: 'number', describe: 'subtracted from the score of responses without EOS [default: none]' })
        .option('seed', { type: 'number', default: PPO_DEFAULTS.seed })
        .option('nan-policy', { choices: ['stop', 'skip'] as const, default: 'stop' as const, describe: 'a step whose loss or gradient is NaN/infinite: stop the run, or skip the step' })
        .option('eval-data', { type: 'string', describe: 'held-out prompts: reward and KL before and after training' })
        .option('log-steps', { type: 'number', default: 1, describe: 'a progress line on stderr every N iterations (and the first and last)' }),
    (argv) =>
      runCommand(argv, async () => {
        const logEvery = Math.max(1, Math.floor(argv['log-steps']));
        const r = await runPpo(
          {
            model: argv.model,
            data: argv.data,
            out: argv.out,
            rewardModel: argv['reward-model'],
            safetyModel: argv['safety-model'] ?? null,
            combine: argv.combine,
            safetyThreshold: argv['safety-threshold'],
            adapter: argv.adapter ?? null,
            critic: argv.critic ?? null,
            loraR: argv['lora-r'],
            loraAlpha: argv['lora-alpha'],
            loraTargets: splitList(argv['lora-targets']),
            rslora: argv.rslora,
            lr: argv.lr,
            criticLr: argv['critic-lr'],
            adamBeta1: argv['adam-beta1'],
            adamBeta2: argv['adam-beta2'],
            adamEpsilon: argv['adam-epsilon'],
            weightDecay: argv['weight-decay'],
            maxGradNorm: argv['max-grad-norm'],
            lrSchedule: argv['lr-schedule'],
            warmupSteps: argv['warmup-steps'],
            iterations: argv.iterations,
            batchSize: argv['batch-size'],
            miniBatchSize: argv['mini-batch-size'],
            microBatchSize: argv['micro-batch-size'],
            forwardBatchSize: argv['forward-batch-size'],
            ppoEpochs: argv['ppo-epochs'],
            maxNewTokens: argv['max-new-tokens'],
            temperature: argv.temperature,
            topK: argv['top-k'],
            topP: argv['top-p'],
            cliprange: argv.cliprange,
            cliprangeValue: argv['cliprange-value'],
            vfCoef: argv['vf-coef'],
            entCoef: argv['ent-coef'],
            gamma: argv.gamma,
            lam: argv.lam,
            klCoef: argv['kl-coef'],
            klTarget: argv['kl-target'] ?? null,
            klHorizon: argv['kl-horizon'],
            klEstimator: argv['kl-estimator'],
            whitenRewards: argv['whiten-rewards'],
            whitenAdvantages: argv['whiten-advantages'],
            missingEosPenalty: argv['missing-eos-penalty'] ?? null,
            seed: argv.seed,
            nanPolicy: argv['nan-policy'],
            evalData: argv['eval-data'] ?? null,
            device: argv.device,
          },
          {
            log: (line) => void process.stderr.write(line + '\n'),
            onStep: (m, { totalSteps }) => {
              if (m.step === 1 || m.step === totalSteps || m.step % logEvery === 0) process.stderr.write(progressLine(m, totalSteps) + '\n');
            },
          },
        );
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
