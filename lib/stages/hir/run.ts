/**
 * The HIR stage on the online loop (lib/train/online.ts); one iteration:
 *
 *   rollout  samplesPerPrompt outputs per training prompt from the current
 *            policy (temperature 1.0 by default; seeded by (seed, iteration));
 *   score    the checker (a reward source) on each new distinct output, the
 *            hindsight relabelling (lib/stages/hir/relabel.ts), the new
 *            outputs added to the growing, de-duplicated buffer;
 *   update   `epochs` seeded passes over the whole buffer with HIR's loss
 *            (lib/stages/hir/loss.ts), AdamW at a constant learning rate.
 *
 * The held-out share of correct outputs (the original instruction, sampled
 * with one fixed seed) is measured before the first iteration and after the
 * last. A checkpoint
 * after an iteration holds the adapter with its AdamW state, the buffer and
 * the counters, so --resume continues exactly.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { RlhfError } from '../../errors';
import { loadModel } from '../../engine/model';
import { allLinearTargets } from '../../engine/train';
import { openModelFolder } from '../../model/folder';
import { readAdapterConfig } from '../../model/peft';
import { loadTokenizer } from '../../tokenizer/tokenizer';
import { loadPrompts, type PromptRow } from '../../data/prompts';
import { readJsonl } from '../../data/jsonl';
import { mixSeed, permutation } from '../../data/batches';
import { splitEval } from '../../data/sft-data';
import type { RewardSource } from '../../reward/sources';
import { checkRewardData, openRewardSource } from '../../reward/options';
import { packageVersion } from '../../info';
import { applyThreads } from '../../train/stage';
import { runOnline, type OnlineMethod } from '../../train/online';
import { checkOutFolder } from '../../train/supervised';
import { mean, rewardInputs, samplePolicy, scoreAll, stopTokenIds, type Sample } from '../self-training/sampling';
import { hasChecker, resolveHirConfig, type HirConfig, type HirEval, type HirHooks, type HirMetrics, type HirResult, type ResolvedHirConfig } from './config';
import { hirMicroBatch, type HirExample } from './loss';
import { instructionIds, loadRelabelModule, relabelByVerdict, relabelWithModule, SampleBuffer, type BufferEntry, type RelabelFn } from './relabel';

/** The checker: the configured reward sources (reward models, a module, built-ins) mixed with hooks.reward; null when none is (a relabel module decides alone). */
async function openChecker(cfg: ResolvedHirConfig, hook: RewardSource | undefined, log: (l: string) => void): Promise<RewardSource | null> {
  if (!hasChecker(cfg, hook !== undefined)) return null;
  return openRewardSource(cfg, null, log, { hook, batchSize: cfg.rewardBatchSize, stage: 'hir' });
}

/** An earlier HIR run in `out` is continued only with --resume. */
function refuseEarlierRun(out: string, resume: boolean): void {
  if (!fs.existsSync(out) || resume) return;
  const earlier = fs.readdirSync(out).filter((f) => ['hir_config.json', 'metrics.jsonl', 'buffer.jsonl'].includes(f));
  if (earlier.length)
    throw new RlhfError('E_ARGUMENT', `--out ${out} already holds an HIR run (${earlier.join(', ')}); choose a new folder, or continue it with --resume`, { where: out });
}

interface Scored {
  samples: number;
  correct: number | null;
  meanReward: number | null;
  added: number;
  generateSeconds: number;
}

export async function runHir(config: HirConfig, hooks: HirHooks = {}): Promise<HirResult> {
  const cfg = resolveHirConfig(config, { rewardSource: hooks.reward !== undefined });
  const log = hooks.log ?? (() => {});
  applyThreads(cfg.threads, log);
  checkOutFolder(cfg.out);
  refuseEarlierRun(cfg.out, cfg.resume);
  if (cfg.adapter) readAdapterConfig(cfg.adapter);

  // Model config, tokenizer, data and the relabel module: bad input fails before any weights load.
  const folder = openModelFolder(cfg.model);
  const mcfg = folder.config;
  folder.close();
  if (mcfg.head !== 'lm') throw new RlhfError('E_MODEL', `--model ${cfg.model}: HIR needs a causal LM (this is a ${mcfg.architecture})`, { where: cfg.model });
  const ctxLen = mcfg.maxSequenceLength;
  if (cfg.maxNewTokens >= ctxLen) throw new RlhfError('E_ARGUMENT', `--max-new-tokens ${cfg.maxNewTokens} leaves no room for a prompt in the model's context (${ctxLen})`);
  const tok = loadTokenizer(cfg.model);
  const eosIds = stopTokenIds(cfg.model);
  const popts = { maxPromptTokens: ctxLen - cfg.maxNewTokens, limitReason: `the model's context ${ctxLen} minus --max-new-tokens ${cfg.maxNewTokens}`, vocabSize: mcfg.vocabSize };
  const all = loadPrompts(cfg.data, tok, popts);
  const rawRows = new Map(readJsonl(cfg.data).map((r) => [r.line, r.value]));
  let train: PromptRow[] = all, held: PromptRow[] = [];
  if (cfg.evalData) held = loadPrompts(cfg.evalData, tok, popts);
  else if (cfg.evalFraction > 0) {
    const split = splitEval(all.length, cfg.evalFraction, cfg.seed);
    train = split.train.map((i) => all[i]);
    held = split.eval.map((i) => all[i]);
  }
  const relabelFn: RelabelFn | null = cfg.relabelModule ? await loadRelabelModule(cfg.relabelModule) : null;

  if (hasChecker(cfg, hooks.reward !== undefined)) checkRewardData(cfg, [...all, ...held]);
  const checker = await openChecker(cfg, hooks.reward, log);
  let model: Awaited<ReturnType<typeof loadModel>> | null = null;
  try {
    const longest = Math.max(1, ...all.map((p) => p.ids.length), ...held.map((p) => p.ids.length));
    model = await loadModel(cfg.model, {
      device: cfg.device,
      memory: { what: `hir on ${cfg.model}`, train: 'lora', batch: 2 * cfg.batchSize, seq: Math.min(ctxLen, 2 * longest + cfg.maxNewTokens), lora: { r: cfg.loraR, targets: cfg.loraTargets, adapters: 1 } },
    });
    const m = model;
    const trainer = m.trainer();
    const targets = cfg.loraTargets === 'all-linear' ? allLinearTargets(mcfg) : cfg.loraTargets;
    const params = cfg.adapter ? trainer.loadLora(cfg.adapter, 'policy').parameters : trainer.createLora({ name: 'policy', r: cfg.loraR, alpha: cfg.loraAlpha, rslora: cfg.rslora, targets, seed: cfg.seed }).parameters;
    log(
      `hir: ${train.length} prompts x ${cfg.samplesPerPrompt} samples, ${cfg.iterations} iterations of ${cfg.epochs} epochs over the buffer; ` +
        (held.length ? `${held.length} held-out prompts; ` : 'no held-out evaluation; ') +
        `checker: ${checker ? `${checker.names.join(' + ')} (correct when reward >= ${cfg.threshold})` : 'none'}` +
        (relabelFn ? `; relabel module ${cfg.relabelModule}` : '') +
        `; policy ${cfg.adapter ? `adapter ${cfg.adapter}` : `LoRA r ${cfg.loraR}`} (${params} parameters)`,
    );
    fs.mkdirSync(cfg.out, { recursive: true });
    fs.writeFileSync(
      path.join(cfg.out, 'hir_config.json'),
      JSON.stringify({ rlhf_native_version: packageVersion(), ...cfg, train_prompts: train.length, eval_prompts: held.length, checker: checker?.names ?? null }, null, 2) + '\n',
    );

    // What the next iteration depends on (checkpointed).
    let buffer = new SampleBuffer();
    let optSteps = 0, skipped = 0;
    let evalBefore: HirEval | null = null, evalAfter: HirEval | null = null;
    const optim = { optimizer: 'adamw' as const, beta1: cfg.adamBeta1, beta2: cfg.adamBeta2, eps: cfg.adamEpsilon, weightDecay: cfg.weightDecay, maxGradNorm: cfg.maxGradNorm, lr: cfg.lr };

    const relabel = async (s: Sample, reward: number | null): Promise<BufferEntry | null> => {
      const p = train[s.prompt];
      const where = `${cfg.data}:${p.line}`;
      const correct = reward !== null && reward >= cfg.threshold;
      const r = relabelFn
        ? await relabelWithModule(relabelFn, { prompt: p.prompt, completion: s.text, row: rawRows.get(p.line) ?? {}, reward }, { module: cfg.relabelModule!, where, wrongTemplate: cfg.wrongTemplate })
        : relabelByVerdict(p.prompt, correct, cfg.wrongTemplate, where);
      const pos = instructionIds(tok, r.pos), neg = instructionIds(tok, r.neg);
      // Rows that do not fit the context are left out of the buffer.
      if (s.ids.length === 0 || Math.max(pos.length, neg.length) + s.ids.length > ctxLen) return null;
      return { prompt: s.prompt, output: s.ids, text: s.text, reward, correct, pos, neg, iteration: 0 };
    };

    const evaluate = async (): Promise<HirEval | null> => {
      if (!held.length || !checker) return null;
      trainer.useAdapter('policy');
      const o = { k: cfg.evalSamples, temperature: cfg.temperature, topP: cfg.topP, topK: cfg.topK, maxNewTokens: cfg.maxNewTokens, batchSize: cfg.genBatchSize, eosIds };
      const { samples } = await samplePolicy(m, tok, held, { ...o, seed: mixSeed(cfg.seed, 0xe7a1) });
      const r = await scoreAll(checker, rewardInputs(held, samples));
      return { correct: mean(Array.from(r.reward, (x) => (x >= cfg.threshold ? 1 : 0))), meanReward: mean(r.reward), prompts: held.length, samples: samples.length };
    };

    const method: OnlineMethod<{ samples: Sample[]; seconds: number }, Scored, HirEval> = {
      name: 'hir',
      unit: 'iteration',
      iterations: cfg.iterations,
      trainer,
      adapters: ['policy'],
      async evaluate(when, ctx) {
        const t0 = performance.now();
        const e = await evaluate();
        if (!e) return null;
        const iteration = when === 'before' ? 0 : cfg.iterations;
        ctx.emit({ phase: 'eval', iteration, correct: e.correct, mean_reward: e.meanReward, prompts: e.prompts, seconds: (performance.now() - t0) / 1000 } satisfies HirMetrics);
        log(`hir: held-out share correct ${when} training: ${e.correct.toFixed(4)} (mean reward ${e.meanReward.toFixed(4)}, ${e.samples} samples of ${e.prompts} prompts)`);
        if (when === 'before') evalBefore = e;
        else evalAfter = e;
        return e;
      },
      async rollout(it, ctx) {
        trainer.useAdapter('policy');
        const t0 = performance.now();
        const { samples, complete } = await samplePolicy(m, tok, train, {
          k: cfg.samplesPerPrompt,
          temperature: cfg.temperature,
          topP: cfg.topP,
          topK: cfg.topK,
          maxNewTokens: cfg.maxNewTokens,
          batchSize: cfg.genBatchSize,
          seed: mixSeed(cfg.seed, 0x41, it.iteration),
          eosIds,
          shouldStop: () => ctx.stopping,
        });
        return complete && !ctx.stopping ? { samples, seconds: (performance.now() - t0) / 1000 } : null;
      },
      async score(it, { samples, seconds }) {
        // Each distinct new output once: duplicates within the iteration and of earlier ones are not scored again.
        const fresh: Sample[] = [];
        const seen = new Set<string>();
        for (const s of samples) {
          const k = SampleBuffer.key(s.prompt, s.ids);
          if (!buffer.has(s.prompt, s.ids) && !seen.has(k)) seen.add(k), fresh.push(s);
        }
        const rewards = checker && fresh.length ? (await scoreAll(checker, rewardInputs(train, fresh))).reward : null;
        let added = 0;
        for (let i = 0; i < fresh.length; i++) {
          const e = await relabel(fresh[i], rewards ? rewards[i] : null);
          if (e && buffer.add({ ...e, iteration: it.iteration })) added++;
        }
        // The iteration's share correct is over all its samples (duplicates too), as the policy produced them.
        const byKey = new Map(fresh.map((s, i) => [SampleBuffer.key(s.prompt, s.ids), rewards ? rewards[i] : null]));
        const known = new Map(buffer.entries.map((e) => [SampleBuffer.key(e.prompt, e.output), e.reward]));
        const all = samples.map((s) => byKey.get(SampleBuffer.key(s.prompt, s.ids)) ?? known.get(SampleBuffer.key(s.prompt, s.ids)) ?? null);
        const scored = all.filter((x): x is number => x !== null);
        return {
          samples: samples.length,
          correct: checker && scored.length ? mean(scored.map((x) => (x >= cfg.threshold ? 1 : 0))) : null,
          meanReward: checker && scored.length ? mean(scored) : null,
          added,
          generateSeconds: seconds,
        };
      },
      async update(it, s, ctx) {
        trainer.useAdapter('policy');
        const t0 = performance.now();
        const entries = buffer.entries;
        const perStep = cfg.batchSize * cfg.gradAccum;
        const acc = { tokens: 0, pairs: 0, nll: 0, smoothed: 0, entropy: 0, contrastive: 0, correct: 0, gn: 0, steps: 0 };
        let complete = true;
        for (let ep = 0; ep < cfg.epochs && complete; ep++) {
          const order = permutation(entries.length, mixSeed(cfg.seed, 0x5c, it.iteration, ep));
          for (let s0 = 0; s0 < order.length; s0 += perStep) {
            if (ctx.stopping) {
              complete = false; // the iteration is done again on --resume, from its checkpoint
              break;
            }
            const step = order.slice(s0, s0 + perStep).map((i) => entries[i]);
            const tokens = step.reduce((n, e) => n + e.output.length, 0);
            const o = { eps: cfg.labelSmoothing, contrastiveCoef: cfg.contrastiveCoef, entropyCoef: cfg.entropyCoef, tokens, pairs: step.length };
            await trainer.zeroGrad();
            const sums = { nll: 0, smoothed: 0, entropy: 0, contrastive: 0, correct: 0 };
            for (let b0 = 0; b0 < step.length; b0 += cfg.batchSize) {
              const ex: HirExample[] = step.slice(b0, b0 + cfg.batchSize).map((e) => ({ pos: e.pos, neg: e.neg, output: e.output }));
              const r = await hirMicroBatch(trainer, ex, o);
              for (const k of Object.keys(sums) as (keyof typeof sums)[]) sums[k] += r[k];
            }
            const loss = sums.smoothed / tokens + (cfg.contrastiveCoef * sums.contrastive) / step.length - (cfg.entropyCoef * sums.entropy) / tokens;
            const st = Number.isFinite(loss) ? await trainer.step(optim) : null;
            optSteps++;
            if (!st || st.skipped) {
              const where = `iteration ${it.iteration}, epoch ${ep + 1}, step ${s0 / perStep + 1}`;
              const why = !st ? `the loss is ${loss}` : `the gradient norm is ${st.gradNorm}`;
              if (cfg.nanPolicy === 'stop') throw ctx.numericStop(where, why, 'try a lower --lr or --max-grad-norm');
              log(`hir: ${where}: step skipped: ${why} (--nan-policy skip)`);
              skipped++;
              continue;
            }
            acc.tokens += tokens;
            acc.pairs += step.length;
            for (const k of Object.keys(sums) as (keyof typeof sums)[]) acc[k] += sums[k];
            acc.gn += st.gradNorm;
            acc.steps++;
          }
        }
        const T = Math.max(1, acc.tokens), P = Math.max(1, acc.pairs);
        const m: HirMetrics = {
          phase: 'iteration',
          iteration: it.iteration,
          step: it.iteration,
          samples: s.samples,
          correct: s.correct ?? 0,
          mean_reward: s.meanReward ?? 0,
          added: s.added,
          buffer: buffer.size,
          loss: acc.smoothed / T + (cfg.contrastiveCoef * acc.contrastive) / P - (cfg.entropyCoef * acc.entropy) / T,
          nll: acc.nll / T,
          contrastive: acc.contrastive / P,
          contrastive_accuracy: acc.correct / P,
          entropy: acc.entropy / T,
          lr: cfg.lr,
          grad_norm: acc.steps ? acc.gn / acc.steps : 0,
          opt_steps: acc.steps,
          generate_s: s.generateSeconds,
          train_s: (performance.now() - t0) / 1000,
          elapsed_s: ctx.elapsed(),
        };
        if (complete)
          log(
            `hir iteration ${it.iteration}/${cfg.iterations}: ${s.samples} samples` +
              (s.correct !== null ? `, ${(100 * s.correct).toFixed(1)}% correct` : '') +
              `; buffer ${buffer.size} (+${s.added}); ${acc.steps} steps, loss ${m.loss.toFixed(4)}, nll ${m.nll.toFixed(4)}, contrastive ${m.contrastive.toFixed(4)}`,
          );
        return { record: complete ? (m as unknown as Record<string, unknown>) : null, complete };
      },
      state: () => ({ buffer: buffer.entries, optSteps, skipped, evalBefore }),
      restore(st) {
        buffer = new SampleBuffer((st.buffer as BufferEntry[]) ?? []);
        optSteps = Number(st.optSteps ?? 0);
        skipped = Number(st.skipped ?? 0);
        evalBefore = (st.evalBefore as HirEval | null) ?? null;
      },
      keepMetrics: (r, done) => (r.phase === 'eval' ? r.iteration === 0 : (r.iteration as number) <= done),
      async save() {
        trainer.useAdapter('policy');
        await trainer.saveLora(cfg.out, path.resolve(cfg.model));
        const lines = buffer.entries.map((e) =>
          JSON.stringify({ source_line: train[e.prompt].line, completion: e.text, reward: e.reward, correct: e.correct, iteration: e.iteration, output_ids: e.output, pos_ids: e.pos, neg_ids: e.neg }),
        );
        fs.writeFileSync(path.join(cfg.out, 'buffer.jsonl'), lines.join('\n') + (lines.length ? '\n' : ''));
      },
    };
    const t0 = performance.now();
    const run = await runOnline(method, { ...cfg, config: cfg as unknown as Record<string, unknown>, inputs: { data: cfg.data, eval_data: cfg.evalData } }, {
      log,
      signal: hooks.signal,
      handleSigint: hooks.handleSigint,
      onStep: hooks.onStep as ((m: Record<string, unknown>, info: { totalSteps: number }) => void) | undefined,
    });
    const result: HirResult = {
      out: cfg.out,
      iterations: run.iterations,
      interrupted: run.interrupted,
      signal: run.signal,
      resumedFrom: run.resumedFrom,
      evalBefore: run.evalBefore ?? evalBefore,
      evalAfter,
      buffer: buffer.size,
      optSteps,
      trainPrompts: train.length,
      evalPrompts: held.length,
      policy: { model: cfg.model, adapter: cfg.out },
      metricsFile: run.metricsFile,
      seconds: (performance.now() - t0) / 1000,
      config: cfg,
    };
    fs.writeFileSync(path.join(cfg.out, 'hir_result.json'), JSON.stringify({ ...result, config: undefined, skipped_steps: skipped }, null, 2) + '\n');
    return result;
  } finally {
    model?.dispose();
    checker?.dispose();
  }
}
