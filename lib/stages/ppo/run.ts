/**
 * The PPO stage on the online loop (lib/train/online.ts): setup (inputs
 * checked, prompts, the model with the policy, critic and reward adapters
 * on one base), then one `OnlineMethod`:
 *
 *   rollout  the iteration's prompts (seeded by (seed, iteration)), one
 *            response each from the policy;
 *   score    the reward source, the policy's and the reference's log-probs,
 *            the critic's values; KL-shaped rewards, GAE advantages;
 *   update   the PPO epochs (lib/stages/ppo/update.ts), the KL controller,
 *            the iteration's metrics line.
 *
 * A checkpoint holds both adapters with their AdamW states, the KL
 * coefficient, the optimizer-step counter (the learning-rate schedule) and
 * the first figures; with sampling seeded by (seed, iteration), a resumed run
 * reproduces the uninterrupted one.
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
import { iterationPrompts, mixSeed } from '../../data/batches';
import type { RewardSource } from '../../reward/sources';
import { klController } from '../../ppo/kl-controller';
import { lrSchedule } from '../schedule';
import { packageVersion } from '../../info';
import { checkOutFolder } from '../../train/supervised';
import { arg } from '../../train/options';
import { applyThreads } from '../../train/stage';
import { runOnline, type OnlineMethod } from '../../train/online';
import { resolvePpoConfig, type PpoConfig, type PpoEvalResult, type PpoHooks, type PpoResult, type PpoStepMetrics } from './config';
import { isAdapterDir, rewardModelHead } from './reward-source';
import { checkRewardContext, checkRewardData, checkRewardOptions, openRewardSource } from '../../reward/options';
import { evaluatePrompts, mean, sampleResponses, scoreResponses, toRollouts, type PpoSamples, type PpoScored, type RolloutEnv } from './rollout';
import { ppoEpochs } from './update';

/** The adapters a PPO checkpoint holds. */
export const PPO_ADAPTERS = ['policy', 'critic'] as const;

export async function runPpo(config: PpoConfig, hooks: PpoHooks = {}): Promise<PpoResult> {
  const cfg = resolvePpoConfig(config);
  const log = hooks.log ?? (() => {});
  checkRewardOptions(cfg, hooks.reward !== undefined);
  applyThreads(cfg.threads, log);
  checkOutFolder(cfg.out);
  if (cfg.adapter) {
    readAdapterConfig(cfg.adapter);
    if (adapterHead(cfg.adapter)) throw new RlhfError('E_ARGUMENT', `--adapter ${cfg.adapter} has a score head (a reward model or critic adapter), not a policy adapter`, { where: cfg.adapter });
  }
  if (cfg.critic) {
    readAdapterConfig(cfg.critic);
    if (!adapterHead(cfg.critic)) throw new RlhfError('E_ARGUMENT', `--critic ${cfg.critic} has no score head (base_model.model.score.weight): a critic adapter needs a value head`, { where: cfg.critic });
  }

  // The base: a causal LM; its context bounds prompt + response.
  const folder = openModelFolder(cfg.model);
  const mcfg = folder.config;
  const hasTokenizer = folder.tokenizer.json !== null;
  folder.close();
  if (mcfg.head !== 'lm') throw new RlhfError('E_MODEL', `${cfg.model}: PPO needs a causal LM as the base (this is a ${mcfg.architecture})`, { where: cfg.model });
  if (!hasTokenizer) throw new RlhfError('E_MODEL', `${cfg.model}: no tokenizer.json (PPO encodes the prompts and decodes the responses)`, { where: cfg.model });
  if (cfg.loraTargets !== 'all-linear') loraModules(mcfg, cfg.loraTargets);
  const rmHead = rewardModelHead(cfg, mcfg);
  const ctxLen = mcfg.maxSequenceLength;
  arg(cfg.maxNewTokens < ctxLen, `--max-new-tokens ${cfg.maxNewTokens} leaves no room for a prompt in the model's context (${ctxLen})`);
  const tok = loadTokenizer(cfg.model);
  const promptOpts = { tokenizer: tok, maxPromptTokens: ctxLen - cfg.maxNewTokens, limitReason: `the model's context ${ctxLen} minus --max-new-tokens ${cfg.maxNewTokens}`, vocabSize: mcfg.vocabSize };
  const prompts = loadPrompts(cfg.data, promptOpts);
  const evalPrompts = cfg.evalData ? loadPrompts(cfg.evalData, promptOpts) : [];
  checkRewardData(cfg, [...prompts, ...evalPrompts]);
  const totalSteps = cfg.iterations > 0 ? cfg.iterations : Math.ceil(prompts.length / cfg.batchSize);
  log(`ppo: ${cfg.data}: ${prompts.length} prompts; ${totalSteps} iterations of ${cfg.batchSize} rollouts, ${cfg.ppoEpochs} epochs of minibatches of ${cfg.miniBatchSize}`);

  const longestPrompt = Math.max(1, ...[...prompts, ...evalPrompts].map((p) => p.ids.length));
  const model = await loadModel(cfg.model, {
    device: cfg.device,
    memory: {
      what: `ppo on ${cfg.model}`,
      train: 'lora',
      batch: Math.max(cfg.microBatchSize, cfg.forwardBatchSize),
      seq: longestPrompt + cfg.maxNewTokens,
      // policy, critic, and reward adapters on the same base; full reward-model folders are further bases
      lora: { r: cfg.loraR, targets: cfg.loraTargets, adapters: 2 + [cfg.rewardModel, cfg.safetyModel].filter((d) => d && isAdapterDir(d)).length },
      extraBases: hooks.reward ? 0 : [cfg.rewardModel, cfg.safetyModel].filter((d) => d && !isAdapterDir(d)).length,
      generate: { batch: cfg.forwardBatchSize, tokens: longestPrompt + cfg.maxNewTokens },
    },
  });
  let keep = false;
  let ownedReward: RewardSource | null = null;
  try {
    const trainer = model.trainer();
    const targets = cfg.loraTargets === 'all-linear' ? allLinearTargets(mcfg) : cfg.loraTargets;
    const newLora = (name: string, seed: number, head?: boolean | { from: [string, string] }) =>
      trainer.createLora({ name, r: cfg.loraR, alpha: cfg.loraAlpha, rslora: cfg.rslora, targets, seed, head }).parameters;

    // Rewards (hooks.reward takes the reward models' place in scoring; a reward model given still starts the critic).
    const reward = (ownedReward = await openRewardSource(cfg, model, log, { hook: hooks.reward, batchSize: cfg.forwardBatchSize, stage: 'ppo' }));
    checkRewardContext(reward, [[cfg.data, prompts], [cfg.evalData, evalPrompts]], cfg.maxNewTokens);

    // Critic: from --critic, else the reward model (its adapter, or a full model's score head), else a fresh head.
    let criticInit: PpoResult['criticInit'];
    let criticParams: number;
    if (cfg.critic) {
      criticParams = trainer.loadLora(cfg.critic, 'critic').parameters;
      criticInit = 'adapter';
    } else if (cfg.rewardModel && isAdapterDir(cfg.rewardModel)) {
      if (!adapterHead(cfg.rewardModel)) throw new RlhfError('E_MODEL', `${cfg.rewardModel}: a reward adapter needs a score head`, { where: cfg.rewardModel });
      criticParams = trainer.loadLora(cfg.rewardModel, 'critic').parameters;
      criticInit = 'reward-adapter';
    } else if (rmHead) {
      criticParams = newLora('critic', mixSeed(cfg.seed, 0xc1), { from: rmHead });
      criticInit = 'reward-model';
    } else {
      criticParams = newLora('critic', mixSeed(cfg.seed, 0xc1), true);
      criticInit = 'fresh';
    }
    // Policy.
    const policyParams = cfg.adapter ? trainer.loadLora(cfg.adapter, 'policy').parameters : newLora('policy', cfg.seed);
    log(
      `ppo: policy ${cfg.adapter ? `adapter ${cfg.adapter}` : `LoRA r ${cfg.loraR} alpha ${cfg.loraAlpha}`} (${policyParams} parameters); ` +
        `critic from ${criticInit === 'adapter' ? cfg.critic : criticInit === 'fresh' ? 'a fresh value head' : `the reward model ${cfg.rewardModel}`} (${criticParams} parameters)`,
    );

    const env: RolloutEnv = { cfg, model, trainer, tok, reward, eosIds: mcfg.eosTokenIds };
    const totalOptSteps = totalSteps * cfg.ppoEpochs * Math.ceil(cfg.batchSize / cfg.miniBatchSize);
    const warmup = cfg.warmupSteps > 0 ? cfg.warmupSteps : Math.ceil(cfg.warmupRatio * totalOptSteps);
    const policyLr = lrSchedule({ kind: cfg.lrSchedule, lr: cfg.lr, warmupSteps: warmup, totalSteps: totalOptSteps });
    const criticLr = lrSchedule({ kind: cfg.lrSchedule, lr: cfg.criticLr, warmupSteps: warmup, totalSteps: totalOptSteps });

    // What the next iteration depends on beyond the two adapters (checkpointed).
    let kl = klController(cfg.klCoef, cfg.klTarget, cfg.klHorizon);
    let optSteps = 0, skippedUpdates = 0;
    let initialReward: number | null = null, finalReward: number | null = null, finalKl: number | null = null;

    const method: OnlineMethod<PpoSamples, PpoScored, PpoEvalResult> = {
      name: 'ppo',
      unit: 'iteration',
      iterations: totalSteps,
      trainer,
      adapters: PPO_ADAPTERS,
      evaluateWhenStopped: true,
      rollout: async (it) => sampleResponses(env, iterationPrompts(prompts.length, cfg.batchSize, it.iteration - 1, cfg.seed).map((i) => prompts[i]), mixSeed(cfg.seed, 0x6e, it.iteration - 1)),
      score: async (_it, s) => scoreResponses(env, s, cfg.data, true),
      async update(it, ro, ctx) {
        const klCoef = kl.value;
        const { rollouts, scores, klSums } = toRollouts(cfg, ro, klCoef);
        const tu = performance.now();
        const upd = await ppoEpochs({ cfg, trainer, policyLr, criticLr, log, numericStop: ctx.numericStop }, rollouts, it.iteration - 1, optSteps);
        const acc = upd.sums;
        optSteps = upd.optSteps;
        skippedUpdates += acc.skipped;
        const updSeconds = (performance.now() - tu) / 1000;
        const meanScore = mean(ro.scored.reward);
        const meanKl = mean(klSums);
        kl.update(meanKl, rollouts.length);
        initialReward ??= meanScore;
        finalReward = meanScore;
        finalKl = meanKl;
        const T = Math.max(1, acc.tokens);
        const seqTokens = ro.seqs.reduce((s, x) => s + x.length, 0);
        const seconds = (performance.now() - it.started) / 1000;
        const m: PpoStepMetrics = {
          step: it.iteration,
          reward: meanScore,
          ...Object.fromEntries(Object.entries(ro.scored.parts).map(([k, v]) => [`reward/${k}`, mean(v)])),
          kl: meanKl,
          rlhf_reward: mean(Array.from(scores, (s, b) => s - klCoef * klSums[b])),
          approxkl: acc.akl / T,
          clipfrac: acc.clip / T,
          vf_clipfrac: acc.vclip / T,
          entropy: acc.ent / T,
          value_loss: acc.vf / T,
          pg_loss: acc.pg / T,
          ratio: acc.ratio / T,
          kl_coef: klCoef,
          response_length: mean(ro.responses.map((r) => r.length)),
          eos_fraction: mean(ro.eos.map((e) => (e ? 1 : 0))),
          lr: acc.lastLr,
          grad_norm: acc.n ? acc.gn / acc.n : 0,
          value_grad_norm: acc.n ? acc.vgn / acc.n : 0,
          tokens_per_sec: seconds > 0 ? seqTokens / seconds : 0,
          gen_tokens_per_sec: it.rolloutSeconds > 0 ? ro.genTokens / it.rolloutSeconds : 0,
          update_tokens_per_sec: updSeconds > 0 ? acc.updTokens / updSeconds : 0,
          elapsed_s: ctx.elapsed(),
        };
        return { record: m as unknown as Record<string, unknown> };
      },
      async evaluate(when) {
        if (!evalPrompts.length) return null;
        const e = await evaluatePrompts(env, evalPrompts, cfg.evalData!);
        log(`ppo: eval ${when}: reward ${e.reward.toFixed(4)}, kl ${e.kl.toFixed(4)}, response length ${e.responseLength.toFixed(1)}`);
        return e;
      },
      state: () => ({ optSteps, skippedUpdates, klCoef: kl.value, initialReward, finalReward, finalKl }),
      restore(s) {
        optSteps = Number(s.optSteps);
        skippedUpdates = Number(s.skippedUpdates ?? 0);
        // The coefficient is the controller's whole state.
        kl = klController(Number(s.klCoef), cfg.klTarget, cfg.klHorizon);
        initialReward = (s.initialReward as number | null) ?? null;
        finalReward = (s.finalReward as number | null) ?? null;
        finalKl = (s.finalKl as number | null) ?? null;
      },
      async save() {
        trainer.useAdapter('policy');
        await trainer.saveLora(cfg.out, path.resolve(cfg.model));
        trainer.useAdapter('critic');
        await trainer.saveLora(path.join(cfg.out, 'critic'), path.resolve(cfg.model));
        trainer.useAdapter('policy');
      },
    };
    const run = await runOnline(method, { ...cfg, config: cfg as unknown as Record<string, unknown>, inputs: { data: cfg.data, reward_module: cfg.rewardModule } }, {
      log,
      signal: hooks.signal,
      handleSigint: hooks.handleSigint,
      onStep: hooks.onStep as ((m: Record<string, unknown>, info: { totalSteps: number }) => void) | undefined,
    });
    fs.writeFileSync(
      path.join(cfg.out, 'ppo_config.json'),
      JSON.stringify(
        {
          rlhf_native_version: packageVersion(),
          ...cfg,
          total_steps: totalSteps,
          steps_done: run.iterations,
          optimizer_steps: optSteps,
          kl_coef_final: kl.value,
          critic_init: criticInit,
          interrupted: run.interrupted,
          skipped_updates: skippedUpdates,
          resumed_from: run.resumedFrom,
        },
        null,
        2,
      ) + '\n',
    );
    const result: PpoResult = {
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
      finalKl,
      klCoef: kl.value,
      eval: run.evalBefore && run.evalAfter ? { before: run.evalBefore, after: run.evalAfter } : null,
      prompts: prompts.length,
      trainableParameters: { policy: policyParams, critic: criticParams },
      criticInit,
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
