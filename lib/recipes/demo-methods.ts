/**
 * `train --methods LIST`: every method of the package side by side on the
 * demo world, each starting from the same SFT model (the `methods` recipe,
 * lib/recipes/config.ts). What each method is given:
 *
 *   sft    the SFT model itself (the baseline row)
 *   rs     rejection sampling scored by the two reward models (Llama 2)
 *   ppo    PPO against the two reward models
 *   dpo    DPO on the labeler's preference pairs (helpfulness and safety), beta 0.5
 *   cdpo   conservative DPO (label smoothing 0.1) on the same pairs
 *   ipo    IPO on the same pairs
 *   simpo  SimPO on the same pairs (no reference model)
 *   orpo   ORPO on the same pairs (no reference model)
 *   kto    KTO on the same pairs, unpaired (chosen desirable, rejected not)
 *   grpo   GRPO with the built-in verifiable reward: exact match against the
 *          world's answer (the refusal, for a harmful request)
 *   rloo   RLOO with the same reward
 *   rest   ReST scored by the two reward models
 *   hir    HIR with the exact-match reward as its checker: a correct answer
 *          keeps its instruction, a wrong one is relabelled "give a wrong answer"
 *
 * The reward models are trained (and the labeler asked) only when a chosen
 * method needs them. Sizes: DEMO_SIZES in lib/recipes/demo.ts; docs/methods.md.
 */
import { RlhfError } from '../errors';
import type { StageKey, StageOptions } from './config';

export const DEMO_METHODS = ['sft', 'rs', 'ppo', 'dpo', 'cdpo', 'ipo', 'simpo', 'orpo', 'kto', 'grpo', 'rloo', 'rest', 'hir'] as const;
export type DemoMethod = (typeof DEMO_METHODS)[number];

/** The recipe section (and run-folder stage) of each method: the DPO family's losses are dpo_<name> sections of the dpo stage. */
export const METHOD_STAGE: Record<DemoMethod, StageKey> = {
  sft: 'sft',
  rs: 'rs',
  ppo: 'ppo',
  dpo: 'dpo',
  cdpo: 'dpo_cdpo',
  ipo: 'dpo_ipo',
  simpo: 'dpo_simpo',
  orpo: 'orpo',
  kto: 'kto',
  grpo: 'grpo',
  rloo: 'rloo',
  rest: 'rest',
  hir: 'hir',
};

/** The methods trained on the labeler's preference pairs (they need dpo_pairs.jsonl). */
export const PAIR_STAGES: readonly StageKey[] = ['dpo', 'dpo_cdpo', 'dpo_ipo', 'dpo_simpo', 'orpo', 'kto'];

/** The methods of a `--methods` value: a comma- or space-separated list of names, or `all`; sft always first. */
export function parseMethods(value: string | readonly string[]): DemoMethod[] {
  const names = (Array.isArray(value) ? value : String(value).split(/[\s,]+/)).map((s) => String(s).trim().toLowerCase()).filter(Boolean);
  if (!names.length) throw new RlhfError('E_ARGUMENT', `--methods needs a list of methods (${DEMO_METHODS.join(', ')}) or all`);
  const picked = new Set<DemoMethod>(['sft']);
  for (const n of names) {
    if (n === 'all') DEMO_METHODS.forEach((m) => picked.add(m));
    else if ((DEMO_METHODS as readonly string[]).includes(n)) picked.add(n as DemoMethod);
    else throw new RlhfError('E_ARGUMENT', `--methods: unknown method '${n}' (expected ${DEMO_METHODS.join(', ')} or all)`);
  }
  return DEMO_METHODS.filter((m) => picked.has(m));
}

/** The methods that score with the reward models (and so need the labeler's pairs and the rm stages). */
const NEEDS_RM: readonly DemoMethod[] = ['rs', 'ppo', 'rest'];

export interface MethodSizes {
  rsK: number;
  ppoIterations: number;
  ppoBatch: number;
  dpoEpochs: number;
  groupIterations: number;
  groupPrompts: number;
  groupSize: number;
  restGrowSteps: number;
  restSamples: number;
  hirIterations: number;
}

/**
 * The `methods` recipe's sections for the chosen methods (the others
 * skipped); `data(f)` is the path of a data file the demo writes.
 */
export function methodSections(methods: readonly DemoMethod[], size: MethodSizes, data: (f: string) => string): Partial<Record<StageKey, StageOptions>> {
  const on = (m: DemoMethod) => methods.includes(m);
  const rm = NEEDS_RM.some(on);
  const cosine = { lrSchedule: 'cosine', warmupSteps: 0 };
  const skip = { skip: true };
  // The DPO family: every pair of the labeler once per epoch, from the SFT model.
  // endAtStop: the pairs end at the chat template's stop token, as the policies' samples do (the data the demo was measured with).
  const pairs = { data: data('dpo_pairs.jsonl'), lr: 5e-4, epochs: size.dpoEpochs, batchSize: 16, endAtStop: true, ...cosine };
  const group = (estimator: 'grpo' | 'rloo'): StageOptions => ({
    data: data('group_prompts.jsonl'),
    estimator,
    rewardFunction: ['exact'],
    iterations: size.groupIterations,
    batchSize: size.groupPrompts,
    numGenerations: size.groupSize,
    maxNewTokens: 16,
    // Sampled (and the ratio taken) at the evaluation's temperature: the distribution the table measures is the one trained.
    temperature: 0.7,
    miniBatchSize: 64,
    numIterations: 2,
    lr: 2e-3,
    beta: estimator === 'rloo' ? 0.05 : 0,
    ...cosine,
  });
  return {
    rm_helpfulness: rm ? {} : skip,
    rm_safety: rm ? {} : skip,
    rs: on('rs') ? {} : skip,
    // From the SFT model (not rs's policy) a smaller step than the default demo's 5e-4 keeps the greedy answers improving too.
    ppo: on('ppo') ? { lr: 2e-4 } : skip,
    // beta 0.5 (not TRL's 0.1): at 0.1 this small model drifts far enough from SFT in one pass to lose helpfulness (seed 0: 0.44 vs SFT's 0.47).
    dpo: on('dpo') ? { ...pairs, beta: 0.5 } : skip,
    dpo_cdpo: on('cdpo') ? { ...pairs, beta: 0.5, labelSmoothing: 0.1 } : skip,
    dpo_ipo: on('ipo') ? { ...pairs, lossType: 'ipo', beta: 0.5 } : skip,
    // SimPO has no reference to hold it back: a smaller step (at 5e-4 seed 0's score fell to 0.45).
    dpo_simpo: on('simpo') ? { ...pairs, lossType: 'simpo', lr: 2e-4 } : skip,
    orpo: on('orpo') ? { ...pairs } : skip,
    // Each pair is two rows: 32 rows a step is DPO's 16 pairs (and its step count). beta 0.5: at 0.1 helpfulness fell (seed 0: 0.420 vs SFT's 0.468).
    kto: on('kto') ? { ...pairs, beta: 0.5, batchSize: 32 } : skip,
    grpo: on('grpo') ? group('grpo') : skip,
    rloo: on('rloo') ? group('rloo') : skip,
    rest: on('rest')
      ? {
          data: data('rest_prompts.jsonl'),
          growSteps: size.restGrowSteps,
          samplesPerPrompt: size.restSamples,
          maxNewTokens: 16,
          evalFraction: 0,
          sft: { epochs: 1, batchSize: 16, lr: 1e-3, loraR: 16, loraAlpha: 32 },
        }
      : skip,
    hir: on('hir')
      ? // Sampled at 0.3: at higher temperatures most of this small model's samples are wrong, every wrong output is a
        // distinct buffer row while correct ones collapse to one per prompt, and the buffer fills with relabelled
        // errors (seed 2 at 0.5: 347 of 1514 rows correct). Label smoothing and the contrastive term both lowered the
        // sampled score here (about 0.06 and 0.04 on seed 2), so this row is HIR's relabelling with the plain NLL.
        {
          data: data('group_prompts.jsonl'),
          rewardFunction: ['exact'],
          iterations: size.hirIterations,
          samplesPerPrompt: 4,
          temperature: 0.3,
          maxNewTokens: 16,
          batchSize: 16,
          epochs: 1,
          lr: 5e-4,
          evalFraction: 0,
          labelSmoothing: 0,
          contrastiveCoef: 0,
        }
      : skip,
  };
}
