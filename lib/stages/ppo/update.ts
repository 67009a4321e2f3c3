/**
 * PPO's update: `ppoEpochs` passes over seeded shuffles of the batch, each
 * minibatch one critic step (clipped value loss) and one policy step
 * (clipped surrogate), each adapter with its own AdamW state, gradient
 * clipping and scheduled learning rate. A minibatch whose loss or gradient
 * is not finite is never applied (nanPolicy: stop the run, or skip it).
 */
import type { Trainer } from '../../engine/train';
import { mixSeed, permutation } from '../../data/batches';
import type { RlhfError } from '../../errors';
import { criticGradients, policyGradients, type PpoUpdateOptions, type Rollout } from './loss';
import type { ResolvedPpoConfig } from './config';

/** Sums over an iteration's applied minibatches (token-weighted losses, summed gradient norms). */
export interface UpdateSums {
  tokens: number;
  pg: number;
  vf: number;
  ent: number;
  akl: number;
  clip: number;
  vclip: number;
  ratio: number;
  gn: number;
  vgn: number;
  /** Minibatches applied. */
  n: number;
  /** Tokens through training forwards and backwards (both adapters). */
  updTokens: number;
  /** Learning rate of the last policy step. */
  lastLr: number;
  /** Minibatches skipped (nanPolicy 'skip'). */
  skipped: number;
}

export interface UpdateEnv {
  cfg: ResolvedPpoConfig;
  trainer: Trainer;
  /** Learning rates by optimizer step (0-based): the schedules over all optimizer steps. */
  policyLr: (step: number) => number;
  criticLr: (step: number) => number;
  log: (line: string) => void;
  numericStop: (where: string, why: string, hint?: string) => RlhfError;
}

/**
 * The PPO epochs of iteration `it` (0-based), from optimizer step `optStep`
 * on; returns the sums and the optimizer-step counter after them (skipped
 * minibatches count, so the schedule does not depend on what was skipped).
 */
export async function ppoEpochs(env: UpdateEnv, rollouts: readonly Rollout[], it: number, optStep: number): Promise<{ sums: UpdateSums; optSteps: number }> {
  const { cfg, trainer } = env;
  const o: PpoUpdateOptions = { cliprange: cfg.cliprange, cliprangeValue: cfg.cliprangeValue, vfCoef: cfg.vfCoef, entCoef: cfg.entCoef, temperature: cfg.temperature, microBatchSize: cfg.microBatchSize };
  const optim = { optimizer: 'adamw' as const, beta1: cfg.adamBeta1, beta2: cfg.adamBeta2, eps: cfg.adamEpsilon, weightDecay: cfg.weightDecay, maxGradNorm: cfg.maxGradNorm };
  const acc: UpdateSums = { tokens: 0, pg: 0, vf: 0, ent: 0, akl: 0, clip: 0, vclip: 0, ratio: 0, gn: 0, vgn: 0, n: 0, updTokens: 0, lastLr: 0, skipped: 0 };
  const B = rollouts.length;
  let optSteps = optStep;
  for (let ep = 0; ep < cfg.ppoEpochs; ep++) {
    const order = permutation(B, mixSeed(cfg.seed, 0x5b, it, ep));
    for (let m0 = 0; m0 < B; m0 += cfg.miniBatchSize) {
      const mb = order.slice(m0, m0 + cfg.miniBatchSize).map((i) => rollouts[i]);
      if (mb.every((r) => r.response.length === 0)) continue;
      // A non-finite loss is never stepped on; the engine refuses a non-finite gradient itself (skipped).
      const c = await criticGradients(trainer, mb, o);
      const cs = Number.isFinite(c.vfLoss) ? await trainer.step({ ...optim, lr: env.criticLr(optSteps) }) : null;
      const p = await policyGradients(trainer, mb, o);
      acc.lastLr = env.policyLr(optSteps);
      const ps = Number.isFinite(p.pgLoss) ? await trainer.step({ ...optim, lr: acc.lastLr }) : null;
      const bad = !cs
        ? `the value loss is ${c.vfLoss}`
        : cs.skipped
          ? `the critic's gradient norm is ${cs.gradNorm}`
          : !ps
            ? `the policy loss is ${p.pgLoss}`
            : ps.skipped
              ? `the policy's gradient norm is ${ps.gradNorm}`
              : null;
      if (bad || !cs || !ps) {
        const where = `iteration ${it + 1}, epoch ${ep + 1}, minibatch ${m0 / cfg.miniBatchSize + 1}`;
        if (cfg.nanPolicy === 'stop') throw env.numericStop(where, bad ?? 'a loss is not finite', 'try a lower --lr, --max-grad-norm or --kl-coef, check the rewards');
        env.log(`ppo: ${where}: update skipped: ${bad} (--nan-policy skip)`);
        acc.skipped++;
        optSteps++;
        continue;
      }
      acc.tokens += p.tokens;
      acc.pg += p.pgLoss * p.tokens;
      acc.ent += p.entropy * p.tokens;
      acc.akl += p.approxKl * p.tokens;
      acc.clip += p.clipfrac * p.tokens;
      acc.ratio += p.ratio * p.tokens;
      acc.vf += c.vfLoss * c.tokens;
      acc.vclip += c.vfClipfrac * c.tokens;
      acc.updTokens += p.seqTokens + c.seqTokens;
      acc.gn += ps.gradNorm;
      acc.vgn += cs.gradNorm;
      acc.n++;
      optSteps++;
    }
  }
  return { sums: acc, optSteps };
}
