/**
 * The built-in demo (`rlhf-native train` with no config): Llama 2's recipe
 * on the committed demo base model and the demo world (lib/demo/), with the
 * simulated labeler standing in for human raters:
 *
 *   sft             on demonstrations, a quarter of them flawed (wrong
 *                   answers, needless refusals, harmful compliance)
 *   (labeling)      K responses per prompt sampled from the SFT model, ranked
 *                   by the labeler for helpfulness and for safety; score gaps
 *                   become Llama 2's preference strengths (-> margins)
 *   rm_helpfulness  reward models with the margin loss, held-out accuracy
 *   rm_safety
 *   rs              rejection sampling scored by the two reward models
 *                   (Llama 2's combination)
 *   ppo             continues the RS policy, rewarded by the reward models
 *
 * then every policy answers held-out prompts greedily and the labeler scores
 * them: the final table shows whether the model moved toward what the
 * (simulated) humans prefer. Sizes: DEMO_SIZES; docs/demo.md.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { loadModel } from '../engine/model';
import { loadTokenizer } from '../tokenizer/tokenizer';
import { writeFileAtomic } from '../run/atomic';
import { stopOnSignals } from '../run/signals';
import { demoBaseDir } from '../demo/base';
import { chatPrompt, chatSftRow, evalPrompts, samplePrompts, sftDemonstrations, type WorldPrompt } from '../demo/world';
import { evaluatePolicy, preferencePairs, winRate, type PolicyEvaluation } from '../demo/labeler';
import { respond } from '../demo/respond';
import { resolveRecipeConfig, type StageKey } from './config';
import { METHOD_STAGE, methodSections, PAIR_STAGES, type DemoMethod } from './demo-methods';
import { demoComparison } from './demo-table';
import { demoSamples } from './demo-samples';
import { RunFolder } from '../run/run-folder';
import { runRecipe, type RecipeHooks } from './run';
import type { Device } from '../info';

/** How big each part of the demo is. 'full' is the default run; 'quick' is the shortened one the tests run. */
export const DEMO_SIZES = {
  full: {
    sftRows: 500,
    sftEpochs: 3,
    labelPrompts: 400,
    safetyPrompts: 150,
    labelSamples: 6,
    rmEpochs: 3,
    rsPrompts: 200,
    rsK: 4,
    ppoIterations: 16,
    ppoBatch: 64,
    evalPrompts: 120,
    dpoEpochs: 1,
    groupIterations: 32,
    groupPrompts: 16,
    groupSize: 16,
    restGrowSteps: 2,
    restSamples: 4,
    hirIterations: 3,
  },
  quick: {
    sftRows: 300,
    sftEpochs: 3,
    labelPrompts: 160,
    safetyPrompts: 60,
    labelSamples: 4,
    rmEpochs: 2,
    rsPrompts: 64,
    rsK: 4,
    ppoIterations: 8,
    ppoBatch: 32,
    evalPrompts: 120,
    dpoEpochs: 1,
    groupIterations: 8,
    groupPrompts: 16,
    groupSize: 8,
    restGrowSteps: 1,
    restSamples: 4,
    hirIterations: 2,
  },
};
export type DemoScale = keyof typeof DEMO_SIZES;

export interface DemoOptions {
  out: string;
  seed?: number;
  scale?: DemoScale;
  device?: Device;
  resume?: boolean;
  /** The base model folder. Default: the committed demo base (models/demo-base). */
  model?: string;
  /**
   * Every chosen method from the same SFT model, side by side (`train
   * --methods`, lib/recipes/demo-methods.ts). Default: Llama 2's recipe (sft,
   * reward models, rs, then ppo continuing rs's policy).
   */
  methods?: readonly DemoMethod[];
}

export interface DemoPolicyRow {
  policy: DemoMethod;
  /** The labeler's scores of sampled answers (temperature 0.7, fixed seeds, EVAL_SAMPLES per prompt): the headline. */
  eval: PolicyEvaluation;
  /** Fraction of held-out answers scoring above the SFT policy's answer to the same prompt and seed (ties half). */
  winVsSft: number;
  /** The same for greedy answers. */
  greedy: PolicyEvaluation;
  greedyWinVsSft: number;
}

/** Held-out prompts of rejection sampling's own before/after evaluation (scored by the reward models). */
const RS_EVAL_PROMPTS = 48;

/** Sampled answers per held-out prompt in the evaluation (seeds 1..EVAL_SAMPLES). */
export const EVAL_SAMPLES = 2;

export interface DemoResult {
  run: string;
  interrupted: boolean;
  /** The signal that stopped the run, if one did. */
  signal?: 'SIGINT' | 'SIGTERM' | 'SIGHUP';
  policies: DemoPolicyRow[];
  /** Held-out accuracy of the reward models (on a tenth of their pairs). */
  rmAccuracy: { helpfulness: number | null; safety: number | null };
  /** Per stage: wall seconds and tokens/sec where the stage reports it. */
  stages: { name: string; wall_s: number; tokens_per_sec: number | null }[];
  labelPairs: { helpfulness: number; safety: number };
  seconds: number;
  summaryFile: string;
  reportFile: string;
}

const jsonl = (rows: object[]) => rows.map((r) => JSON.stringify(r)).join('\n') + '\n';

export async function runDemo(opts: DemoOptions, hooks: Omit<RecipeHooks, 'prepare'> = {}): Promise<DemoResult> {
  const t0 = performance.now();
  const seed = opts.seed ?? 0;
  const size = DEMO_SIZES[opts.scale ?? 'full'];
  const model = opts.model ?? demoBaseDir();
  const out = path.resolve(opts.out);
  const data = (f: string) => path.join(out, 'data', f);
  const log = hooks.log ?? (() => {});
  const common = { lrSchedule: 'cosine', warmupSteps: 0 };
  // The reward models read their score where a sampled answer stops (<|im_end|>), not at the newline the chat
  // template writes after it: the demo's pairs end at the stop token, as the policies' samples do.
  const endAtStop = { endAtStop: true };
  const sections: Record<string, Record<string, unknown>> = {
    sft: { data: data('sft.jsonl'), full: true, lr: 1e-3, epochs: size.sftEpochs, batchSize: 16, evalFraction: 0.1, checkpointSteps: 0, ...common },
    rm_helpfulness: { data: data('rm_helpfulness.jsonl'), full: true, lr: 1e-3, epochs: size.rmEpochs, batchSize: 16, evalFraction: 0.1, checkpointSteps: 0, ...common, ...endAtStop },
    rm_safety: { data: data('rm_safety.jsonl'), full: true, lr: 1e-3, epochs: size.rmEpochs, batchSize: 16, evalFraction: 0.1, checkpointSteps: 0, ...common, ...endAtStop },
    rs: {
      data: data('rs_prompts.jsonl'),
      rounds: 1,
      k: size.rsK,
      maxNewTokens: 16,
      temperature: 1,
      // Held-out prompts of the eval split: the reward models' mean reward before and after, in summary.json and the report.
      evalData: data('rs_eval.jsonl'),
      sft: { steps: 0, epochs: 2, batchSize: 16, lr: 1e-3, loraR: 16, loraAlpha: 32 },
    },
    ppo: {
      data: data('ppo_prompts.jsonl'),
      iterations: size.ppoIterations,
      batchSize: size.ppoBatch,
      miniBatchSize: 16,
      maxNewTokens: 16,
      temperature: 0.7,
      lr: 5e-4,
      klCoef: 0.1,
      ppoEpochs: 2,
    },
  };
  const methods = opts.methods ?? null;
  if (methods)
    for (const [k, v] of Object.entries(methodSections(methods, size, data))) sections[k] = v.skip ? { skip: true } : { ...(sections[k] ?? {}), ...v };
  const cfg = resolveRecipeConfig({ recipe: methods ? 'methods' : 'llama2', model, out, seed, device: opts.device ?? 'auto', ...sections });

  const labelPairs = { helpfulness: 0, safety: 0 };
  const prepare: RecipeHooks['prepare'] = async (stage: StageKey, ctx) => {
    fs.mkdirSync(path.join(out, 'data'), { recursive: true });
    if (stage === 'sft') {
      writeFileAtomic(data('demo.json'), JSON.stringify({ seed, scale: opts.scale ?? 'full', ...(methods ? { methods } : {}) }) + '\n');
      const demos = sftDemonstrations(size.sftRows, { seed });
      writeFileAtomic(data('sft.jsonl'), jsonl(demos.map(chatSftRow)));
      const flawed = demos.filter((d) => d.flaw !== 'none').length;
      log(`demo: ${demos.length} demonstrations, ${flawed} of them flawed (wrong answers, needless refusals, harmful compliance)`);
    } else if (stage === 'rm_helpfulness' || (PAIR_STAGES.includes(stage) && !fs.existsSync(data('dpo_pairs.jsonl')))) {
      // The labeling round: sample from the SFT model, rank with the labeler, keep pairs with a gap.
      // Safety pairs come from harmful prompts, with a fifth of helpfulness pairs mixed in (as Llama 2's
      // safety model also saw helpfulness data), so that the safety model does not learn "refuse everything".
      const general = samplePrompts(size.labelPrompts, { split: 'train', seed: seed + 101, distinct: true });
      const harmful = samplePrompts(size.safetyPrompts, { split: 'train', seed: seed + 102, distinct: true, unsafeFraction: 1 });
      const prompts = [...general, ...harmful];
      const m = await loadModel(ctx.base, { device: opts.device ?? 'auto' });
      const tok = loadTokenizer(ctx.base);
      const answers: string[][] = prompts.map(() => []);
      try {
        for (let k = 0; k < size.labelSamples; k++) {
          const r = await respond(m, tok, prompts, { temperature: 1, seed: seed * 1000 + k, maxNewTokens: 16 });
          r.forEach((x, i) => answers[i].push(x));
        }
      } finally {
        m.dispose();
      }
      const rows = (which: 'helpfulness' | 'safety' | 'overall', from: number, to: number) =>
        prompts.slice(from, to).flatMap((p, i) =>
          preferencePairs(p, answers[from + i], which === 'overall' ? (p.safe ? 'helpfulness' : 'safety') : which).map((r) => ({
            prompt: chatPrompt(p),
            chosen: [{ role: 'assistant', content: r.chosen }],
            rejected: [{ role: 'assistant', content: r.rejected }],
            rating: r.rating,
            safe: r.safe,
          })),
        );
      const help = rows('helpfulness', 0, general.length);
      const safeOnly = rows('safety', general.length, prompts.length);
      const mixed = [...safeOnly, ...help.filter((_, i) => i % 5 === 0).slice(0, Math.ceil(safeOnly.length / 4))];
      labelPairs.helpfulness = help.length;
      labelPairs.safety = mixed.length;
      writeFileAtomic(data('rm_helpfulness.jsonl'), jsonl(help));
      writeFileAtomic(data('rm_safety.jsonl'), jsonl(mixed));
      // DPO has no reward models to combine, so its pairs are judged as the combination does: on
      // helpfulness for a safe prompt, on safety for a harmful one (every labelled prompt once).
      writeFileAtomic(data('dpo_pairs.jsonl'), jsonl(rows('overall', 0, prompts.length)));
      log(`demo: the labeler ranked ${size.labelSamples} SFT samples for each of ${prompts.length} prompts: ${help.length} helpfulness pairs, ${mixed.length} safety pairs (${mixed.length - safeOnly.length} of them helpfulness pairs)`);
    } else if (stage === 'rs' || stage === 'ppo' || stage === 'rest' || stage === 'grpo' || stage === 'rloo' || stage === 'hir') {
      // Prompt rows carry the world's answer: the verifiable reward of grpo and rloo checks against it.
      const group = stage === 'grpo' || stage === 'rloo' || stage === 'hir';
      const n = stage === 'rs' || stage === 'rest' ? size.rsPrompts : stage === 'ppo' ? size.ppoIterations * size.ppoBatch : size.groupIterations * size.groupPrompts;
      const salt = { rs: 202, ppo: 303, rest: 202, grpo: 505, rloo: 505, hir: 505 }[stage];
      const prompts = samplePrompts(Math.min(n, 400), { split: 'train', seed: seed + salt, distinct: true });
      writeFileAtomic(data(`${group ? 'group' : stage}_prompts.jsonl`), jsonl(prompts.map((p) => ({ messages: chatPrompt(p), safe: p.safe, answer: p.answer }))));
      if (stage === 'rs') writeFileAtomic(data('rs_eval.jsonl'), jsonl(evalPrompts(RS_EVAL_PROMPTS, seed + 404).map((p) => ({ messages: chatPrompt(p), safe: p.safe, answer: p.answer }))));
    }
  };

  const r = await runRecipe(cfg, { ...hooks, prepare, resume: opts.resume });
  for (const k of ['helpfulness', 'safety'] as const) {
    const f = data(`rm_${k}.jsonl`);
    if (fs.existsSync(f)) labelPairs[k] = fs.readFileSync(f, 'utf8').split('\n').filter(Boolean).length;
  }
  const summary = JSON.parse(fs.readFileSync(r.summaryFile, 'utf8'));
  const tokPerSec = (stage: string): number | null => {
    const lines = fs
      .readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l))
      .filter((m) => m.stage === stage && typeof m.tokens_per_sec === 'number');
    if (!lines.length) return null;
    const xs = lines.map((m) => m.tokens_per_sec as number).sort((a, b) => a - b);
    return xs[xs.length >> 1];
  };
  const stages = r.stages.map((s) => ({ name: s.name, wall_s: Number(summary.stages[s.name]?.wall_s ?? 0), tokens_per_sec: tokPerSec(s.name) }));
  const result: DemoResult = {
    run: r.run,
    interrupted: r.interrupted,
    signal: r.signal,
    policies: [],
    rmAccuracy: { helpfulness: summary.stages.rm_helpfulness?.eval?.accuracy ?? null, safety: summary.stages.rm_safety?.eval?.accuracy ?? null },
    stages,
    labelPairs,
    seconds: 0,
    summaryFile: r.summaryFile,
    reportFile: r.reportFile,
  };
  if (r.interrupted) return { ...result, seconds: (performance.now() - t0) / 1000 };

  // Held-out evaluation by the labeler: greedy answers of each policy.
  const held: WorldPrompt[] = evalPrompts(size.evalPrompts, seed + 1);
  const out_ = (k: StageKey) => r.stages.find((s) => s.name === k)?.outputs ?? {};
  const sftModel = out_('sft').model;
  const policies: { policy: DemoMethod; model?: string; adapter?: string }[] = (methods ?? (['sft', 'rs', 'ppo'] as DemoMethod[])).map((m) =>
    m === 'sft' ? { policy: m } : { policy: m, model: out_(METHOD_STAGE[m]).adapter ? undefined : out_(METHOD_STAGE[m]).model, adapter: out_(METHOD_STAGE[m]).adapter },
  );
  const tok = loadTokenizer(sftModel);
  const answers: Record<string, { sampled: string[]; greedy: string[] }> = {};
  const heldSampled = Array.from({ length: EVAL_SAMPLES }, () => held).flat();
  // Stoppable like the stages: a stop ends the evaluation (nothing of it is kept; train --resume runs it again).
  const stopper = stopOnSignals({ label: 'demo', log, handleSignals: hooks.handleSigint ?? true, abort: hooks.signal, then: 'stopping the held-out evaluation (train --resume runs it again)' });
  try {
    for (const p of policies) {
      if (stopper.requested) break;
      await evaluateOne(p);
    }
  } finally {
    stopper.dispose();
  }
  if (stopper.requested) return { ...result, interrupted: true, signal: (stopper.signal ?? undefined) as DemoResult['signal'], seconds: (performance.now() - t0) / 1000 };
  // The table goes into summary.json and report.html too.
  const folder = RunFolder.open(out, { resume: true });
  try {
    folder.setSamples(demoSamples(held, Object.fromEntries(Object.entries(answers).map(([k, v]) => [k, v.greedy])), result.policies.map((p) => p.policy)));
    folder.setComparison(demoComparison(result));
  } finally {
    folder.close();
  }
  const evalFile = path.join(out, 'demo_eval.json');
  writeFileAtomic(evalFile, JSON.stringify({ prompts: held.map((p) => p.text), answers, policies: result.policies, rmAccuracy: result.rmAccuracy }, null, 2) + '\n');
  result.seconds = (performance.now() - t0) / 1000;
  return result;

  async function evaluateOne(p: { policy: DemoMethod; model?: string; adapter?: string }): Promise<void> {
    const m = await loadModel(p.model ?? sftModel, { device: opts.device ?? 'auto', adapter: p.adapter });
    try {
      const sampled: string[] = [];
      for (let k = 1; k <= EVAL_SAMPLES; k++) sampled.push(...(await respond(m, tok, held, { temperature: 0.7, seed: 7919 * k, maxNewTokens: 16 })));
      answers[p.policy] = { sampled, greedy: await respond(m, tok, held, { temperature: 0, maxNewTokens: 16 }) };
    } finally {
      m.dispose();
    }
    const a = answers[p.policy], base = answers.sft;
    result.policies.push({
      policy: p.policy,
      eval: evaluatePolicy(heldSampled.map((q, i) => ({ prompt: q, response: a.sampled[i] }))),
      winVsSft: winRate(heldSampled, a.sampled, base.sampled).winRate,
      greedy: evaluatePolicy(held.map((q, i) => ({ prompt: q, response: a.greedy[i] }))),
      greedyWinVsSft: winRate(held, a.greedy, base.greedy).winRate,
    });
  }
}
