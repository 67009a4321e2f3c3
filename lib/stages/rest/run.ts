/**
 * ReST (Gulcehre et al. 2023) and ReST-EM (Singh et al. 2023) on the online
 * loop (lib/train/online.ts); one iteration is one Grow step with its
 * Improve steps, in the stage folder `out`:
 *
 *   rollout  Grow: load the current policy; sample N responses for every
 *            training prompt (batched, seeded by (seed, grow step, call));
 *   score    score every sample with the RewardSource; the Improve steps'
 *            filters (given thresholds, or quantiles of this Grow set's
 *            rewards; ReST-EM: reward > 0 or >= its one threshold); write
 *            `grow-g/samples.jsonl`;
 *   update   Improve: for each filter in turn, the kept samples (at most
 *            maxPerPrompt per prompt) become `grow-g/improve-i/sft.jsonl`
 *            and an SFT run into `grow-g/improve-i/` trains on them with
 *            plain NLL. ReST continues the policy of the previous Improve
 *            step (of this Grow step or the one before); ReST-EM trains the
 *            base (--model, --adapter) afresh in every iteration.
 *
 * The held-out mean reward (fixed seed) is measured before the first Grow
 * step and after the last. A checkpoint after a Grow step holds the current
 * policy and the figures so far; a Grow step cut short by a stop, in its
 * sampling or in any of its Improve steps, is done again on --resume from
 * its start: its sampling is seeded by (seed, grow step) and Improve step k
 * of the run by seed + k, so it comes out as it would have.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { loadModel, type Model } from '../../engine/model';
import { readAdapterConfig } from '../../model/peft';
import { mixSeed } from '../../data/batches';
import { runSft } from '../sft';
import { packageVersion } from '../../info';
import { removeDirAtomic } from '../../run/atomic';
import { applyThreads } from '../../train/stage';
import { runOnline, type OnlineMethod } from '../../train/online';
import { checkOutFolder } from '../../train/supervised';
import { evaluatePolicy, mean, rewardInputs, sampleFigures, samplePolicy, scoreAll, sftRow, writeSamples, writeSftRows, type Sample, type SampleOptions } from '../self-training/sampling';
import { checkRewardContext, loadPromptSet, refuseEarlierRun } from '../self-training/setup';
import { sftRunConfig } from '../self-training/sft-options';
import { improveFilters, selectKept, type ImproveFilter } from './filter';
import { improveSteps, resolveRestConfig, type RestConfig, type RestGrowSummary, type RestHooks, type RestImproveSummary, type RestMetrics, type RestResult } from './config';
import { openReward } from './reward';

interface Grown {
  samples: Sample[];
  generateSeconds: number;
}
interface Scored {
  dir: string;
  samples: Sample[];
  reward: Float64Array;
  filters: ImproveFilter[];
  grow: RestMetrics & { phase: 'grow' };
}

export async function runRest(config: RestConfig, hooks: RestHooks = {}): Promise<RestResult> {
  const cfg = resolveRestConfig(config, { rewardSource: hooks.reward !== undefined });
  const log = hooks.log ?? (() => {});
  applyThreads(cfg.threads, log);
  checkOutFolder(cfg.out);
  refuseEarlierRun(cfg.out, cfg.resume, (f) => f === 'rest_config.json' || f === 'metrics.jsonl' || /^grow-\d+$/.test(f), 'a ReST run');
  if (cfg.adapter) readAdapterConfig(cfg.adapter);
  const em = cfg.variant === 'em';
  const name = em ? 'rest-em' : 'rest';
  const perGrow = improveSteps(cfg);

  // The policy's config and tokenizer, then the data: bad rows fail before any weights load or anything is written.
  const promptSet = loadPromptSet(cfg, hooks.reward);
  const { tok, eosIds, train, held } = promptSet;
  const { source: reward, own: ownReward } = await openReward(cfg, hooks.reward);
  try {
    if (ownReward) checkRewardContext(reward, promptSet, cfg.maxNewTokens);
    log(
      `${name}: ${train.length} prompts x ${cfg.samplesPerPrompt} samples, ${cfg.growSteps} Grow step${cfg.growSteps > 1 ? 's' : ''} x ${perGrow} Improve step${perGrow > 1 ? 's' : ''}` +
        (held.length ? `; ${held.length} held-out prompts${cfg.evalData ? ` from ${cfg.evalData}` : ` (--eval-fraction ${cfg.evalFraction})`}` : '; no held-out evaluation') +
        `; reward: ${reward.names.join(' + ')}`,
    );
    fs.mkdirSync(cfg.out, { recursive: true });
    fs.writeFileSync(
      path.join(cfg.out, 'rest_config.json'),
      JSON.stringify({ rlhf_native_version: packageVersion(), ...cfg, improve_steps: perGrow, train_prompts: train.length, eval_prompts: held.length, reward_parts: reward.names }, null, 2) + '\n',
    );

    // What the next Grow step depends on (checkpointed): the current policy and the figures.
    let policyModel = cfg.model, policyAdapter = cfg.adapter;
    let initialReward: number | null = null, finalReward: number | null = null;
    let growStats: RestGrowSummary[] = [];
    let loaded: Model | null = null; // the policy loaded for the evaluation before Grow step 1, reused by its sampling

    const loadPolicy = () => loadModel(policyModel, { device: cfg.device, adapter: policyAdapter ?? undefined });
    const sampling = (seed: number, k: number, shouldStop?: () => boolean): SampleOptions => ({
      k,
      temperature: cfg.temperature,
      topP: cfg.topP,
      topK: cfg.topK,
      maxNewTokens: cfg.maxNewTokens,
      batchSize: cfg.genBatchSize,
      seed,
      eosIds,
      shouldStop,
    });
    const evalSeed = mixSeed(cfg.seed, 0x0e7a1);
    const growDir = (g: number) => path.join(cfg.out, `grow-${g}`);

    const method: OnlineMethod<Grown, Scored, number> = {
      name,
      unit: 'Grow step',
      iterations: cfg.growSteps,
      adapters: [],
      async evaluate(when, ctx) {
        if (!held.length) return null;
        const grow = when === 'before' ? 0 : growStats.length ? growStats[growStats.length - 1].grow : 0;
        const policy = await loadPolicy();
        try {
          const te = performance.now();
          const e = await evaluatePolicy(policy, tok, held, reward, sampling(evalSeed, cfg.evalSamples));
          ctx.emit({ phase: 'eval', grow, mean_reward: e.meanReward, prompts: e.prompts, samples: e.samples, mean_response_tokens: e.meanResponseTokens, parts: e.parts, seconds: (performance.now() - te) / 1000 });
          log(`${name}: held-out mean reward ${grow === 0 ? 'before Grow step 1' : `after Grow step ${grow}`}: ${e.meanReward.toFixed(4)} (${e.samples} samples, ${e.meanResponseTokens.toFixed(1)} tokens each)`);
          if (when === 'before') (initialReward = e.meanReward), (loaded = policy);
          else finalReward = e.meanReward;
          return e.meanReward;
        } finally {
          if (loaded !== policy) policy.dispose();
        }
      },
      async rollout(it, ctx) {
        // A Grow step cut short earlier is done again from the start.
        if (fs.existsSync(growDir(it.iteration))) removeDirAtomic(growDir(it.iteration));
        const policy = loaded ?? (await loadPolicy());
        loaded = null;
        try {
          const tg = performance.now();
          const { samples, complete } = await samplePolicy(policy, tok, train, sampling(mixSeed(cfg.seed, it.iteration), cfg.samplesPerPrompt, () => ctx.stopping));
          return complete && !ctx.stopping ? { samples, generateSeconds: (performance.now() - tg) / 1000 } : null;
        } finally {
          policy.dispose();
        }
      },
      async score(it, { samples, generateSeconds }, ctx) {
        const g = it.iteration;
        const ts = performance.now();
        const scored = await scoreAll(reward, rewardInputs(train, samples));
        const scoreS = (performance.now() - ts) / 1000;
        const filters = improveFilters(scored.reward, cfg);
        const dir = growDir(g);
        fs.mkdirSync(dir, { recursive: true });
        writeSamples(path.join(dir, 'samples.jsonl'), train, samples, scored);
        const gm: RestMetrics & { phase: 'grow' } = {
          phase: 'grow',
          grow: g,
          prompts: train.length,
          samples: samples.length,
          thresholds: filters.map((f) => f.threshold),
          ...sampleFigures(samples, scored, generateSeconds, scoreS),
        };
        ctx.emit(gm);
        log(
          `${name} grow ${g}/${cfg.growSteps}: reward mean ${gm.mean_reward.toFixed(4)}, max ${gm.max_reward.toFixed(4)}; ` +
            `thresholds ${filters.map((f) => `${f.strict ? '>' : '>='} ${f.threshold.toFixed(4)}`).join(', ')}; ${gm.mean_response_tokens.toFixed(1)} tokens per response; ${gm.samples_per_sec.toFixed(1)} samples/s`,
        );
        return { dir, samples, reward: scored.reward, filters, grow: gm };
      },
      async update(it, s, ctx) {
        const g = it.iteration;
        const candidates = s.samples.map((x, i) => ({ prompt: x.prompt, index: x.index, reward: s.reward[i] }));
        const improved: RestImproveSummary[] = [];
        let sftSteps = 0;
        for (const [j, f] of s.filters.entries()) {
          // A stop between Improve steps: the Grow step is incomplete and is done again on --resume.
          if (ctx.stopping) return { record: null, complete: false };
          const i = j + 1, ti = performance.now();
          const dir = path.join(s.dir, `improve-${i}`);
          fs.mkdirSync(dir, { recursive: true });
          const { kept, capped } = selectKept(candidates, f, cfg.maxPerPrompt);
          const data = path.join(dir, 'sft.jsonl');
          writeSftRows(
            data,
            kept.map((k) => sftRow(train[s.samples[k].prompt], s.samples[k], s.reward[k], { grow: g, sample: s.samples[k].index })),
          );
          let steps = 0, initial: number | null = null, final: number | null = null, complete = true;
          if (kept.length === 0) {
            log(`${name} grow ${g} improve ${i}: no sample reached the threshold ${f.strict ? '>' : '>='} ${f.threshold}; the policy is unchanged`);
          } else {
            // ReST continues the current policy; ReST-EM finetunes the base in every iteration.
            const from = em ? { model: cfg.model, adapter: cfg.adapter } : { model: policyModel, adapter: policyAdapter };
            const sc = sftRunConfig(cfg, cfg.seed + (g - 1) * perGrow + i, from.model, cfg.full ? null : from.adapter, data, dir);
            const r = await runSft(sc, {
              handleSigint: false,
              signal: ctx.signal,
              log: (l) => log(`${name} grow ${g} improve ${i}: ${l}`),
              onStep: (m) => ctx.emit({ phase: 'sft', grow: g, improve: i, ...m }),
            });
            steps = r.steps;
            initial = r.initialLoss;
            final = r.finalLoss;
            complete = !r.interrupted;
            if (cfg.full) policyModel = dir;
            else policyAdapter = dir;
          }
          if (!complete) return { record: null, complete: false };
          sftSteps += steps;
          const keptRewards = kept.map((k) => s.reward[k]);
          ctx.emit({
            phase: 'improve',
            grow: g,
            improve: i,
            threshold: f.threshold,
            strict: f.strict,
            kept: kept.length,
            prompts_kept: new Set(kept.map((k) => s.samples[k].prompt)).size,
            capped,
            mean_kept_reward: kept.length ? mean(keptRewards) : null,
            sft_steps: steps,
            sft_initial_loss: initial,
            sft_final_loss: final,
            seconds: (performance.now() - ti) / 1000,
          });
          improved.push({ improve: i, threshold: f.threshold, kept: kept.length, sftSteps: steps, sftFinalLoss: final });
        }
        growStats.push({ grow: g, meanReward: s.grow.mean_reward, maxReward: s.grow.max_reward, samplesPerSec: s.grow.samples_per_sec, improve: improved });
        return { record: { phase: 'iteration', grow: g, improve_steps: s.filters.length, sft_steps: sftSteps, seconds: (performance.now() - it.started) / 1000 } };
      },
      state: () => ({ policyModel, policyAdapter, initialReward, growStats }),
      restore(st) {
        policyModel = st.policyModel as string;
        policyAdapter = (st.policyAdapter as string | null) ?? null;
        initialReward = (st.initialReward as number | null) ?? null;
        growStats = (st.growStats as RestGrowSummary[]) ?? [];
      },
      // Grow step g's records stay when g is done; the evaluation after the last is measured again.
      keepMetrics: (m, done) => (m.phase === 'eval' ? m.grow === 0 : (m.grow as number) <= done),
      save: async () => {},
    };
    const t0 = performance.now();
    let run;
    try {
      run = await runOnline(method, { ...cfg, config: cfg as unknown as Record<string, unknown>, inputs: { data: cfg.data, eval_data: cfg.evalData } }, {
        log,
        signal: hooks.signal,
        handleSigint: hooks.handleSigint,
        onStep: (m, info) => {
          hooks.onMetrics?.(m as RestMetrics);
          hooks.onStep?.(m as RestMetrics, info);
        },
      });
    } finally {
      (loaded as Model | null)?.dispose();
    }
    const result: RestResult = {
      out: cfg.out,
      growSteps: run.iterations,
      interrupted: run.interrupted,
      signal: run.signal,
      resumedFrom: run.resumedFrom,
      initialReward,
      finalReward,
      trainPrompts: train.length,
      evalPrompts: held.length,
      growStats,
      policy: { model: policyModel, adapter: cfg.full ? null : policyAdapter },
      metricsFile: run.metricsFile,
      seconds: (performance.now() - t0) / 1000,
      config: cfg,
    };
    fs.writeFileSync(
      path.join(cfg.out, 'rest_result.json'),
      JSON.stringify({ ...result, config: undefined, policy: { model: path.resolve(policyModel), adapter: result.policy.adapter && path.resolve(result.policy.adapter) } }, null, 2) + '\n',
    );
    return result;
  } finally {
    if (ownReward) reward.dispose();
  }
}
