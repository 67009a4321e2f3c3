/**
 * The rejection-sampling stage on the online loop (lib/train/online.ts);
 * one iteration is one round, in the stage folder `out`:
 *
 *   rollout  load the policy (base + adapter merged, or the full model of
 *            round r-1); sample K responses for every training prompt
 *            (batched, seeded by (seed, round, call));
 *   score    score every (prompt, response) with the RewardSource; keep the
 *            best of each prompt's K (optionally only >= minReward; with
 *            `accumulate`, the best seen over every round so far); write
 *            `round-r/samples.jsonl` (all samples) and `round-r/sft.jsonl`
 *            (the kept pairs, pre-tokenised so the SFT stage trains on
 *            exactly the sampled ids);
 *   update   SFT on the kept pairs into `round-r/` (LoRA: a new adapter in
 *            round 1, continued via `adapter` later; full: a new model
 *            folder).
 *
 * The held-out mean reward (fixed seed) is measured before round 1 and after
 * the last round. A checkpoint after a round holds what the next round
 * depends on besides the round folders: the current policy, the best samples
 * so far (accumulate), the per-round figures; a round cut short by a stop is
 * done again on --resume (its sampling is seeded, so it comes out the same).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { RlhfError } from '../../errors';
import { loadModel, type Model } from '../../engine/model';
import { readAdapterConfig } from '../../model/peft';
import { mixSeed } from '../../data/batches';
import type { RewardSource } from '../../reward/sources';
import { checkRewardData, openRewardSource } from '../../reward/options';
import { runSft } from '../sft';
import { packageVersion } from '../../info';
import { removeDirAtomic } from '../../run/atomic';
import { applyThreads } from '../../train/stage';
import { runOnline, type OnlineMethod } from '../../train/online';
import { checkOutFolder } from '../../train/supervised';
import { resolveRsConfig, sftRoundConfig, type RsConfig, type RsHooks, type RsMetrics, type RsResult, type RsRoundSummary } from './config';
import { evaluatePolicy, mean, rewardInputs, sampleFigures, samplePolicy, scoreAll, sftRow, writeSamples, writeSftRows, type Kept, type Sample, type SampleOptions } from '../self-training/sampling';
import { checkRewardContext, loadPromptSet, refuseEarlierRun } from '../self-training/setup';

/** A round's samples, and the scored round ready for its SFT. */
interface RoundSamples {
  samples: Sample[];
  generateSeconds: number;
}
interface RoundScored {
  dir: string;
  sftData: string;
  rows: number;
  sample: RsMetrics & { phase: 'sample' };
}

export async function runRejectionSampling(config: RsConfig, hooks: RsHooks = {}): Promise<RsResult> {
  const cfg = resolveRsConfig(config, { rewardSource: hooks.reward !== undefined });
  const log = hooks.log ?? (() => {});
  applyThreads(cfg.threads, log);
  checkOutFolder(cfg.out);
  refuseEarlierRun(cfg.out, cfg.resume, (f) => f === 'rs_config.json' || f === 'metrics.jsonl' || /^round-\d+$/.test(f), 'a rejection-sampling run');
  if (cfg.adapter) readAdapterConfig(cfg.adapter);

  // The policy's config and tokenizer, then the data: bad rows fail before any weights load or anything is written.
  const reward0 = hooks.reward;
  const promptSet = loadPromptSet(cfg, reward0);
  const { tok, eosIds, train, held } = promptSet;

  checkRewardData(cfg, [...train, ...held]);

  // The policy is reloaded every round, so reward adapters are merged into reward models of their own (no shared base).
  const reward: RewardSource = await openRewardSource(cfg, null, log, { hook: reward0, batchSize: cfg.rewardBatchSize, stage: 'rs' });
  try {
    checkRewardContext(reward, promptSet, cfg.maxNewTokens);
    log(
      `rs: ${train.length} prompts x ${cfg.k} samples, ${cfg.rounds} round${cfg.rounds > 1 ? 's' : ''}` +
        (held.length ? `; ${held.length} held-out prompts${cfg.evalData ? ` from ${cfg.evalData}` : ` (--eval-fraction ${cfg.evalFraction})`}` : '; no held-out evaluation') +
        `; reward: ${reward.names.join(' + ')}`,
    );
    fs.mkdirSync(cfg.out, { recursive: true });
    fs.writeFileSync(path.join(cfg.out, 'rs_config.json'), JSON.stringify({ rlhf_native_version: packageVersion(), ...cfg, train_prompts: train.length, eval_prompts: held.length, reward_parts: reward.names }, null, 2) + '\n');

    // What the next round depends on (checkpointed): the current policy, the best samples so far, the figures.
    let policyModel = cfg.model, policyAdapter = cfg.adapter;
    let initialReward: number | null = null, finalReward: number | null = null;
    let roundStats: RsRoundSummary[] = [];
    let best = new Map<number, Kept>();
    let loaded: Model | null = null; // the policy loaded for the evaluation before round 1, reused by its sampling

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
    const roundDir = (round: number) => path.join(cfg.out, `round-${round}`);

    const method: OnlineMethod<RoundSamples, RoundScored, number> = {
      name: 'rs',
      unit: 'round',
      iterations: cfg.rounds,
      adapters: [],
      async evaluate(when, ctx) {
        if (!held.length) return null;
        const round = when === 'before' ? 0 : roundStats.length ? roundStats[roundStats.length - 1].round : 0;
        const policy = await loadPolicy();
        try {
          const te = performance.now();
          const e = await evaluatePolicy(policy, tok, held, reward, sampling(evalSeed, cfg.evalSamples));
          ctx.emit({ phase: 'eval', round, mean_reward: e.meanReward, prompts: e.prompts, samples: e.samples, mean_response_tokens: e.meanResponseTokens, parts: e.parts, seconds: (performance.now() - te) / 1000 });
          log(`rs: held-out mean reward ${round === 0 ? 'before round 1' : `after round ${round}`}: ${e.meanReward.toFixed(4)} (${e.samples} samples, ${e.meanResponseTokens.toFixed(1)} tokens each)`);
          if (when === 'before') (initialReward = e.meanReward), (loaded = policy);
          else finalReward = e.meanReward;
          return e.meanReward;
        } finally {
          if (loaded !== policy) policy.dispose();
        }
      },
      async rollout(it, ctx) {
        // A round cut short earlier is done again from the start.
        if (fs.existsSync(roundDir(it.iteration))) removeDirAtomic(roundDir(it.iteration));
        const policy = loaded ?? (await loadPolicy());
        loaded = null;
        try {
          const tg = performance.now();
          const { samples, complete } = await samplePolicy(policy, tok, train, sampling(mixSeed(cfg.seed, it.iteration), cfg.k, () => ctx.stopping));
          return complete && !ctx.stopping ? { samples, generateSeconds: (performance.now() - tg) / 1000 } : null;
        } finally {
          policy.dispose();
        }
      },
      async score(it, { samples, generateSeconds }, ctx) {
        const round = it.iteration;
        const ts = performance.now();
        const scored = await scoreAll(reward, rewardInputs(train, samples));
        const scoreS = (performance.now() - ts) / 1000;
        // The best of each prompt's K.
        const roundBest = new Map<number, Kept>();
        samples.forEach((s, i) => {
          const b = roundBest.get(s.prompt);
          if (!b || scored.reward[i] > b.reward) roundBest.set(s.prompt, { prompt: s.prompt, round, reward: scored.reward[i], sample: s });
        });
        const keptNow = [...roundBest.values()].filter((k) => cfg.minReward === null || k.reward >= cfg.minReward);
        for (const k of keptNow) {
          const prev = best.get(k.prompt);
          if (!prev || k.reward > prev.reward) best.set(k.prompt, k);
        }
        const rows = (cfg.accumulate ? [...best.values()] : keptNow).sort((a, b) => a.prompt - b.prompt);
        // The samples and the SFT data.
        const dir = roundDir(round);
        fs.mkdirSync(dir, { recursive: true });
        writeSamples(path.join(dir, 'samples.jsonl'), train, samples, scored);
        const sftData = path.join(dir, 'sft.jsonl');
        writeSftRows(sftData, rows.map((k) => sftRow(train[k.prompt], k.sample, k.reward, { round: k.round })));
        const fig = sampleFigures(samples, scored, generateSeconds, scoreS);
        const sm: RsMetrics & { phase: 'sample' } = {
          phase: 'sample',
          round,
          prompts: train.length,
          samples: samples.length,
          mean_reward: fig.mean_reward,
          mean_best_reward: mean([...roundBest.values()].map((k) => k.reward)),
          max_reward: fig.max_reward,
          min_reward: fig.min_reward,
          kept: keptNow.length,
          sft_rows: rows.length,
          mean_response_tokens: fig.mean_response_tokens,
          eos_fraction: fig.eos_fraction,
          samples_per_sec: fig.samples_per_sec,
          generate_s: fig.generate_s,
          score_s: fig.score_s,
          parts: fig.parts,
        };
        ctx.emit(sm);
        log(
          `rs round ${round}/${cfg.rounds}: reward mean ${sm.mean_reward.toFixed(4)}, best-of-${cfg.k} mean ${sm.mean_best_reward.toFixed(4)}, max ${sm.max_reward.toFixed(4)}; ` +
            `kept ${sm.kept}/${train.length}; ${sm.mean_response_tokens.toFixed(1)} tokens per response; ${sm.samples_per_sec.toFixed(1)} samples/s`,
        );
        return { dir, sftData, rows: rows.length, sample: sm };
      },
      async update(it, s, ctx) {
        const round = it.iteration;
        let sftSteps = 0, sftInitial: number | null = null, sftFinal: number | null = null, complete = true;
        if (s.rows === 0) {
          log(`rs round ${round}: no response reached --min-reward ${cfg.minReward}; the policy is unchanged this round`);
        } else {
          const sc = sftRoundConfig(cfg, round, policyModel, cfg.full ? null : policyAdapter, s.sftData, s.dir);
          const r = await runSft(sc, {
            handleSigint: false,
            signal: ctx.signal,
            log: (l) => log(`rs round ${round}: ${l}`),
            onStep: (m) => ctx.emit({ phase: 'sft', round, ...m }),
          });
          sftSteps = r.steps;
          sftInitial = r.initialLoss;
          sftFinal = r.finalLoss;
          complete = !r.interrupted;
          if (cfg.full) policyModel = s.dir;
          else policyAdapter = s.dir;
        }
        roundStats.push({
          round,
          meanReward: s.sample.mean_reward,
          meanBestReward: s.sample.mean_best_reward,
          maxReward: s.sample.max_reward,
          kept: s.sample.kept,
          sftRows: s.rows,
          sftSteps,
          sftFinalLoss: sftFinal,
          samplesPerSec: s.sample.samples_per_sec,
        });
        return { record: { phase: 'round', round, sft_steps: sftSteps, sft_initial_loss: sftInitial, sft_final_loss: sftFinal, seconds: (performance.now() - it.started) / 1000 }, complete };
      },
      state: () => ({ policyModel, policyAdapter, initialReward, roundStats, best: cfg.accumulate ? [...best.values()] : [] }),
      restore(st) {
        policyModel = st.policyModel as string;
        policyAdapter = (st.policyAdapter as string | null) ?? null;
        initialReward = (st.initialReward as number | null) ?? null;
        roundStats = (st.roundStats as RsRoundSummary[]) ?? [];
        best = new Map(((st.best as Kept[]) ?? []).map((k) => [k.prompt, k]));
      },
      // Round r's records stay when r is done; the evaluation after the last round is measured again.
      keepMetrics: (m, done) => (m.phase === 'eval' ? m.round === 0 : (m.round as number) <= done),
      save: async () => {},
    };
    const t0 = performance.now();
    let run;
    try {
      run = await runOnline(method, { ...cfg, config: cfg as unknown as Record<string, unknown>, inputs: { data: cfg.data, eval_data: cfg.evalData, reward_module: cfg.rewardModule } }, {
        log,
        signal: hooks.signal,
        handleSigint: hooks.handleSigint,
        onStep: (m, info) => {
          hooks.onMetrics?.(m as RsMetrics);
          hooks.onStep?.(m as RsMetrics, info);
        },
      });
    } finally {
      (loaded as Model | null)?.dispose();
    }
    const result: RsResult = {
      out: cfg.out,
      rounds: run.iterations,
      interrupted: run.interrupted,
      signal: run.signal,
      resumedFrom: run.resumedFrom,
      initialReward,
      finalReward,
      trainPrompts: train.length,
      evalPrompts: held.length,
      roundStats,
      policy: { model: policyModel, adapter: cfg.full ? null : policyAdapter },
      metricsFile: run.metricsFile,
      seconds: (performance.now() - t0) / 1000,
      config: cfg,
    };
    fs.writeFileSync(
      path.join(cfg.out, 'rs_result.json'),
      JSON.stringify({ ...result, config: undefined, policy: { model: path.resolve(policyModel), adapter: result.policy.adapter && path.resolve(result.policy.adapter) } }, null, 2) + '\n',
    );
    return result;
  } finally {
    reward.dispose();
  }
}
