/**
 * Several reward sources as one: reward = sum of weight x each source's
 * reward, in float64, in the sources' order; `parts` holds every source's
 * parts under their own names. A source with other than one part (two
 * reward models: helpfulness and safety) also reports its own reward as the
 * part `combined`, so that the reward is always the weighted sum of parts a
 * reader can see. One source of weight 1 is passed through untouched.
 */
import { RlhfError } from '../errors';
import type { RewardSource } from './sources';

export interface WeightedSource {
  source: RewardSource;
  weight: number;
  /** Disposed with the mix (false: the caller's, e.g. hooks.reward). */
  owned: boolean;
}

/** The part that holds a multi-part source's own reward in a mix. */
export const COMBINED_PART = 'combined';

const ownPart = (s: RewardSource) => s.names.length !== 1;

export function mixRewards(sources: WeightedSource[]): RewardSource {
  if (sources.length === 0) throw new RlhfError('E_ARGUMENT', 'no reward source to mix');
  const dispose = () => sources.forEach((s) => s.owned && s.source.dispose());
  const limits = sources.map((s) => s.source.maxTokens).filter((x): x is number => x !== undefined);
  const maxTokens = limits.length ? Math.min(...limits) : undefined;
  if (sources.length === 1 && sources[0].weight === 1) {
    const only = sources[0].source;
    return { names: only.names, score: (batch) => only.score(batch), dispose, ...(maxTokens !== undefined ? { maxTokens } : {}) };
  }
  const names = sources.flatMap((s) => [...s.source.names, ...(ownPart(s.source) && sources.length > 1 ? [COMBINED_PART] : [])]);
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice !== undefined) {
    dispose();
    throw new RlhfError('E_ARGUMENT', `two reward sources report a part named "${twice}" (parts: ${names.join(', ')}); each part needs its own name`);
  }
  return {
    names,
    ...(maxTokens !== undefined ? { maxTokens } : {}),
    async score(batch) {
      const reward = new Float64Array(batch.length);
      const parts: Record<string, Float64Array> = {};
      for (const { source, weight } of sources) {
        const r = await source.score(batch);
        if (r.reward.length !== batch.length) throw new RlhfError('E_ARGUMENT', `a reward source (${source.names.join(', ')}) returned ${r.reward.length} rewards for ${batch.length} inputs`);
        for (let i = 0; i < batch.length; i++) reward[i] += weight * r.reward[i];
        Object.assign(parts, r.parts);
        if (ownPart(source) && sources.length > 1) parts[COMBINED_PART] = Float64Array.from(r.reward);
      }
      return { reward, parts };
    },
    dispose,
  };
}
