/**
 * The GRPO family on the online loop (lib/train/online.ts): setup (inputs
 * checked, prompts, the model with the policy adapter and any reward
 * adapters on one base), then one `OnlineMethod`:
 *
 *   rollout  the iteration's prompts (seeded by (seed, iteration)), G samples
 *            each, with the log-probs the sampler recorded;
 *   score    rewards, the reference's log-probs (beta > 0), advantages;
 *   update   numIterations passes over seeded shuffles of the samples, one
 *            optimizer step per minibatch (lib/stages/grpo/loss.ts).
 *
 * No critic: a checkpoint holds the policy adapter with its AdamW state and
 * the optimizer-step counter; sampling seeded by (seed, iteration) makes a
 * resumed run reproduce the uninterrupted one.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { RlhfError } from '../../errors';
import { loadModel } from '../../engine/model';
import { allLinearTargets, loraModules } from '../../engine/train';
import { adapterHead, readAdapterConfig } from '../../model/peft';
import { openModelFolder } from '../../model/folder';
import { loadTokenizer } from '../../tokenizer/tokenizer';
import { loadPrompts } from '../../data/prompts';
import { iterationPrompts, mixSeed, permutation } from '../../data/batches';
import type { RewardSource } from '../../reward/sources';
import { lrSchedule } from '../schedule';
import { packageVersion } from '../../info';
import { checkOutFolder } from '../../train/supervised';
import { arg } from '../../train/options';
import { applyThreads } from '../../train/stage';
import { runOnline, type OnlineMethod } from '../../train/online';
import { isAdapterDir } from '../../model/peft';
import { checkRewardContext, checkRewardData, openRewardSource } from '../../reward/options';
import { resolveGrpoConfig, type GrpoConfig, type GrpoEvalResult, type GrpoHooks, type GrpoResult, type GrpoStepMetrics } from './config';
import { lossOptionsOf, minibatchGradients, type GrpoSample } from './loss';
import { mean, sampleGroups, scoreGroups, scoreSamples, type GrpoBatch, type GrpoEnv, type ScoredGroups } from './rollout';

export async function runGrpo(config: GrpoConfig, hooks: GrpoHooks = {}): Promise<GrpoResult> {
  const cfg = resolveGrpoConfig(config, { rewardSource: hooks.reward !== undefined });
  const log = hooks.log ?? (() => {});
  // Log lines and errors name the estimator (grpo, rloo, reinforce_pp).
  const name = cfg.estimator;
  applyThreads(cfg.threads, log);
  checkOutFolder(cfg.out);
  if (cfg.adapter) {
    readAdapterConfig(cfg.adapter);
    if (adapterHead(cfg.adapter)) throw new RlhfError('E_ARGUMENT', `--adapter ${cfg.adapter} has a score head (a reward model adapter), not a policy adapter`, { where: cfg.adapter });
  }
  const folder = openModelFolder(cfg.model);
  const mcfg = folder.config;
  const hasTokenizer = folder.tokenizer.json !== null;
  folder.close();
  if (mcfg.head !== 'lm') throw new RlhfError('E_MODEL', `${cfg.model}: ${name} needs a causal LM as the base (this is a ${mcfg.architecture})`, { where: cfg.model });
  if (!hasTokenizer) throw new RlhfError('E_MODEL', `${cfg.model}: no tokenizer.json (${name} encodes the prompts and decodes the responses)`, { where: cfg.model });
  if (cfg.loraTargets !== 'all-linear') loraModules(mcfg, cfg.loraTargets);
  const ctxLen = mcfg.maxSequenceLength;
  arg(cfg.maxNewTokens < ctxLen, `--max-new-tokens ${cfg.maxNewTokens} leaves no room for a prompt in the model's context (${ctxLen})`);
  const tok = loadTokenizer(cfg.model);
  const promptOpts = { tokenizer: tok, maxPromptTokens: ctxLen - cfg.maxNewTokens, limitReason: `the model's context ${ctxLen} minus --max-new-tokens ${cfg.maxNewTokens}`, vocabSize: mcfg.vocabSize };
  const prompts = loadPrompts(cfg.data, promptOpts);
  const evalPrompts = cfg.evalData ? loadPrompts(cfg.evalData, promptOpts) : [];
  checkRewardData(cfg, [...prompts, ...evalPrompts]);
  const G = cfg.numGenerations;
  const samplesPerIt = cfg.batchSize * G;
  const miniBatch = cfg.miniBatchSize || samplesPerIt;
  const totalSteps = cfg.iterations > 0 ? cfg.iterations : Math.ceil(prompts.length / cfg.batchSize);
  log(
    `${name}: ${cfg.data}: ${prompts.length} prompts; ${totalSteps} iterations of ${cfg.batchSize} prompts x ${G} samples (estimator ${cfg.estimator}), ` +
      `${cfg.numIterations} pass(es) of minibatches of ${miniBatch}`,
  );

  const longestPrompt = Math.max(1, ...[...prompts, ...evalPrompts].map((p) => p.ids.length));
  const model = await loadModel(cfg.model, {
    device: cfg.device,
    memory: {
      what: `${name} on ${cfg.model}`,
      train: 'lora',
      batch: Math.max(cfg.microBatchSize, cfg.forwardBatchSize),
      seq: longestPrompt + cfg.maxNewTokens,
      lora: { r: cfg.loraR, targets: cfg.loraTargets, adapters: 1 + [cfg.rewardModel, cfg.safetyModel].filter((d) => d && isAdapterDir(d)).length },
      extraBases: hooks.reward ? 0 : [cfg.rewardModel, cfg.safetyModel].filter((d) => d && !isAdapterDir(d)).length,
      generate: { batch: cfg.forwardBatchSize, tokens: longestPrompt + cfg.maxNewTokens },
    },
  });
  let keep = false;
  let ownedReward: RewardSource | null = null;
  try {
    const trainer = model.trainer();
    const targets = cfg.loraTargets === 'all-linear' ? allLinearTargets(mcfg) : cfg.loraTargets;
    const reward = (ownedReward = await openRewardSource(cfg, model, log, { hook: hooks.reward, batchSize: cfg.forwardBatchSize, stage: name }));
    checkRewardContext(reward, [[cfg.data, prompts], [cfg.evalData, evalPrompts]], cfg.maxNewTokens);
    const policyParams = cfg.adapter
      ? trainer.loadLora(cfg.adapter, 'policy').parameters
      : trainer.createLora({ name: 'policy', r: cfg.loraR, alpha: cfg.loraAlpha, rslora: cfg.rslora, targets, seed: cfg.seed }).parameters;
    trainer.useAdapter('policy');
    log(`${name}: policy ${cfg.adapter ? `adapter ${cfg.adapter}` : `LoRA r ${cfg.loraR} alpha ${cfg.loraAlpha}`} (${policyParams} parameters)`);

    const env: GrpoEnv = { cfg, model, trainer, tok, reward, eosIds: mcfg.eosTokenIds };
    const stepsPerIt = cfg.numIterations * Math.ceil(samplesPerIt / miniBatch);
    const scheduledSteps = totalSteps * stepsPerIt;
    const policyLr = lrSchedule({ kind: cfg.lrSchedule, lr: cfg.lr, warmupSteps: cfg.warmupSteps > 0 ? cfg.warmupSteps : Math.ceil(cfg.warmupRatio * scheduledSteps), totalSteps: scheduledSteps });
    const optim = { optimizer: 'adamw' as const, beta1: cfg.adamBeta1, beta2: cfg.adamBeta2, eps: cfg.adamEpsilon, weightDecay: cfg.weightDecay, maxGradNorm: cfg.maxGradNorm };
    const lossOpts = lossOptionsOf(cfg);

    // What the next iteration depends on beyond the adapter (checkpointed).
    let optSteps = 0, skippedUpdates = 0;
    let initialReward: number | null = null, finalReward: number | null = null;

    const method: OnlineMethod<GrpoBatch, ScoredGroups, GrpoEvalResult> = {
      name,
      unit: 'iteration',
      iterations: totalSteps,
      trainer,
      adapters: ['policy'],
      evaluateWhenStopped: true,
      rollout: async (it) =>
        sampleGroups(
          env,
          iterationPrompts(prompts.length, cfg.batchSize, it.iteration - 1, cfg.seed).map((i) => prompts[i]),
          G,
          mixSeed(cfg.seed, 0x67, it.iteration - 1),
        ),
      score: async (_it, b) => scoreGroups(env, b),
      async update(it, sg, ctx) {
        const tu = performance.now();
        const acc = { pg: 0, kl: 0, ent: 0, clip: 0, ratio: 0, akl: 0, gn: 0, n: 0, tokens: 0, lastLr: policyLr(optSteps) };
        const S = sg.samples;
        for (let ep = 0; ep < cfg.numIterations && S.length > 0; ep++) {
          const order = permutation(S.length, mixSeed(cfg.seed, 0x5c, it.iteration - 1, ep));
          for (let m0 = 0; m0 < S.length; m0 += miniBatch) {
            const mb: GrpoSample[] = order.slice(m0, m0 + miniBatch).map((i) => S[i]);
            if (mb.every((s) => s.response.length === 0)) continue;
            const { stats, seqTokens } = await minibatchGradients(trainer, mb, lossOpts);
            acc.lastLr = policyLr(optSteps);
            const st = Number.isFinite(stats.loss) ? await trainer.step({ ...optim, lr: acc.lastLr }) : null;
            optSteps++;
            if (!st || st.skipped) {
              const where = `iteration ${it.iteration}, pass ${ep + 1}, minibatch ${m0 / miniBatch + 1}`;
              const why = st ? `the policy's gradient norm is ${st.gradNorm}` : `the loss is ${stats.loss}`;
              if (cfg.nanPolicy === 'stop') throw ctx.numericStop(where, why, 'try a lower --lr or --max-grad-norm, check the rewards');
              log(`${name}: ${where}: update skipped: ${why} (--nan-policy skip)`);
              skippedUpdates++;
              continue;
            }
            acc.pg += stats.pgLoss;
            acc.kl += stats.kl;
            acc.ent += stats.entropy;
            acc.clip += stats.clipfrac;
            acc.ratio += stats.ratio;
            acc.akl += stats.approxKl;
            acc.gn += st.gradNorm;
            acc.tokens += seqTokens;
            acc.n++;
          }
        }
        const updSeconds = (performance.now() - tu) / 1000;
        const meanReward = mean(sg.reward);
        initialReward ??= meanReward;
        finalReward = meanReward;
        const n = Math.max(1, acc.n);
        const seconds = (performance.now() - it.started) / 1000;
        const seqTokens = sg.batch.rows.reduce((s, p, i) => s + p.ids.length + sg.batch.responses[i].length, 0);
        const m: GrpoStepMetrics = {
          step: it.iteration,
          reward: meanReward,
          ...Object.fromEntries(Object.entries(sg.parts).map(([k, v]) => [`reward/${k}`, mean(v)])),
          reward_std: mean(sg.groupStd),
          frac_reward_zero_std: mean(sg.zeroStd.map((z) => (z ? 1 : 0))),
          samples: S.length,
          kl: sg.kl,
          entropy: acc.ent / n,
          pg_loss: acc.pg / n,
          clipfrac: acc.clip / n,
          ratio: acc.ratio / n,
          approxkl: acc.akl / n,
          response_length: mean(sg.batch.responses.map((r) => r.length)),
          eos_fraction: mean(sg.batch.eos.map((e) => (e ? 1 : 0))),
          lr: acc.lastLr,
          grad_norm: acc.gn / n,
          tokens_per_sec: seconds > 0 ? seqTokens / seconds : 0,
          gen_tokens_per_sec: it.rolloutSeconds > 0 ? sg.batch.genTokens / it.rolloutSeconds : 0,
          update_tokens_per_sec: updSeconds > 0 ? acc.tokens / updSeconds : 0,
          elapsed_s: ctx.elapsed(),
        };
        return { record: m as unknown as Record<string, unknown> };
      },
      async evaluate(when) {
        if (!evalPrompts.length) return null;
        const b = await sampleGroups(env, evalPrompts, 1, mixSeed(cfg.seed, 0xe7a1));
        const s = await scoreSamples(env, b, cfg.evalData!);
        const e: GrpoEvalResult = {
          reward: mean(s.reward),
          parts: Object.fromEntries(Object.entries(s.parts).map(([k, v]) => [k, mean(v)])),
          responseLength: mean(b.responses.map((r) => r.length)),
        };
        log(`${name}: eval ${when}: reward ${e.reward.toFixed(4)}, response length ${e.responseLength.toFixed(1)}`);
        return e;
      },
      state: () => ({ optSteps, skippedUpdates, initialReward, finalReward }),
      restore(s) {
        optSteps = Number(s.optSteps);
        skippedUpdates = Number(s.skippedUpdates ?? 0);
        initialReward = (s.initialReward as number | null) ?? null;
        finalReward = (s.finalReward as number | null) ?? null;
      },
      async save() {
        trainer.useAdapter('policy');
        await trainer.saveLora(cfg.out, path.resolve(cfg.model));
      },
    };
    const run = await runOnline(method, { ...cfg, config: cfg as unknown as Record<string, unknown>, inputs: { data: cfg.data, reward_module: cfg.rewardModule } }, {
      log,
      signal: hooks.signal,
      handleSigint: hooks.handleSigint,
      onStep: hooks.onStep as ((m: Record<string, unknown>, info: { totalSteps: number }) => void) | undefined,
    });
    fs.writeFileSync(
      path.join(cfg.out, 'grpo_config.json'),
      JSON.stringify(
        { rlhf_native_version: packageVersion(), ...cfg, total_steps: totalSteps, steps_done: run.iterations, optimizer_steps: optSteps, interrupted: run.interrupted, skipped_updates: skippedUpdates, resumed_from: run.resumedFrom },
        null,
        2,
      ) + '\n',
    );
    const result: GrpoResult = {
      out: cfg.out,
      steps: run.iterations,
      totalSteps,
      optimizerSteps: optSteps,
      interrupted: run.interrupted,
      signal: run.signal,
      resumedFrom: run.resumedFrom,
      skippedUpdates,
      initialReward,
      finalReward,
      eval: run.evalBefore && run.evalAfter ? { before: run.evalBefore, after: run.evalAfter } : null,
      prompts: prompts.length,
      trainableParameters: policyParams,
      seconds: run.seconds,
      metricsFile: run.metricsFile,
      config: cfg,
    };
    if (hooks.keepModel) {
      keep = true;
      result.model = model;
      result.trainer = trainer;
    }
    return result;
  } finally {
    ownedReward?.dispose();
    if (!keep) model.dispose();
  }
}
