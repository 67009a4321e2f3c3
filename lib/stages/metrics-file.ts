import * as fs from 'node:fs';

/**
 * metrics.jsonl for a stage run: a fresh file, or on resume the existing
 * lines up to the checkpoint's step (later lines belong to the steps that
 * run again), so the finished file matches an uninterrupted run's. `keep`
 * picks the lines to keep instead of `step <= keepThroughStep` (a stage
 * whose records are not numbered by step, e.g. rejection sampling's rounds).
 */
export function openMetrics(file: string, keepThroughStep: number, keep?: (record: Record<string, unknown>) => boolean): number {
  if (keepThroughStep > 0 && fs.existsSync(file)) {
    const kept = fs
      .readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => {
        if (!l.trim()) return false;
        try {
          const m = JSON.parse(l);
          return keep ? keep(m) : (m.step ?? Infinity) <= keepThroughStep;
        } catch {
          return false;
        }
      });
    fs.writeFileSync(file, kept.map((l) => l + '\n').join(''));
    return fs.openSync(file, 'a');
  }
  return fs.openSync(file, 'w');
}
