/**
 * ReST's Improve filters, in float64: the rising thresholds of a Grow set
 * (given, or quantiles of its rewards), and which grown samples an Improve
 * step trains on (reward at or above its threshold; ReST-EM's default
 * counts a sample when its reward exceeds 0; at most `maxPerPrompt` per
 * prompt).
 */

/** What an Improve step keeps: reward >= threshold, or reward > threshold when `strict`. */
export interface ImproveFilter {
  threshold: number;
  strict: boolean;
}

/**
 * The q-quantile of `values` by linear interpolation between the order
 * statistics (numpy.quantile's default): position h = (n - 1) q in the
 * sorted values, x[floor h] + (h - floor h) (x[floor h + 1] - x[floor h]).
 */
export function quantile(values: ArrayLike<number>, q: number): number {
  const x = Float64Array.from(values).sort();
  if (x.length === 0) throw new RangeError('quantile of no values');
  const h = (x.length - 1) * q;
  const lo = Math.floor(h);
  return lo + 1 < x.length ? x[lo] + (h - lo) * (x[lo + 1] - x[lo]) : x[lo];
}

export interface ScheduleOptions {
  variant: 'rest' | 'em';
  /** Fixed thresholds, rising. */
  thresholds: readonly number[] | null;
  /** Quantiles of the Grow set's rewards, rising (used when thresholds is null). */
  quantiles: readonly number[] | null;
}

/**
 * The filters of one Grow step's Improve steps, in order: the given
 * thresholds; else the given quantiles of `rewards` (the whole Grow set);
 * ReST-EM without a threshold counts a sample when its reward is > 0.
 */
export function improveFilters(rewards: ArrayLike<number>, o: ScheduleOptions): ImproveFilter[] {
  if (o.thresholds) return o.thresholds.map((threshold) => ({ threshold, strict: false }));
  if (o.variant === 'em') return [{ threshold: 0, strict: true }];
  if (!o.quantiles) throw new RangeError('ReST needs thresholds or quantiles');
  return o.quantiles.map((q) => ({ threshold: quantile(rewards, q), strict: false }));
}

export interface Candidate {
  /** Index of the prompt. */
  prompt: number;
  /** The sample's index among its prompt's samples. */
  index: number;
  reward: number;
}

/**
 * The candidates an Improve step keeps (their positions in `items`): those
 * passing the filter; with `maxPerPrompt` > 0, the best `maxPerPrompt` of a
 * prompt (highest reward, ties to the lower sample index). In prompt order,
 * then sample order. `capped`: passing samples left out by the cap.
 */
export function selectKept(items: readonly Candidate[], f: ImproveFilter, maxPerPrompt: number): { kept: number[]; capped: number } {
  const byPrompt = new Map<number, number[]>();
  items.forEach((c, i) => {
    if (f.strict ? c.reward > f.threshold : c.reward >= f.threshold) {
      const l = byPrompt.get(c.prompt);
      if (l) l.push(i);
      else byPrompt.set(c.prompt, [i]);
    }
  });
  const kept: number[] = [];
  let capped = 0;
  for (const l of byPrompt.values()) {
    let mine = l;
    if (maxPerPrompt > 0 && l.length > maxPerPrompt) {
      mine = [...l].sort((a, b) => items[b].reward - items[a].reward || items[a].index - items[b].index).slice(0, maxPerPrompt);
      capped += l.length - maxPerPrompt;
    }
    kept.push(...mine);
  }
  kept.sort((a, b) => items[a].prompt - items[b].prompt || items[a].index - items[b].index);
  return { kept, capped };
}
