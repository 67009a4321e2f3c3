import * as fs from 'node:fs';

/**
 * metrics.jsonl for a stage run: a fresh file, or on resume the existing
 * lines up to the checkpoint's step (later lines belong to the steps that
 * run again), so the finished file matches an uninterrupted run's.
 */
export function openMetrics(file: string, keepThroughStep: number): number {
  if (keepThroughStep > 0 && fs.existsSync(file)) {
    const kept = fs
      .readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => {
        if (!l.trim()) return false;
        try {
          return (JSON.parse(l).step ?? Infinity) <= keepThroughStep;
        } catch {
          return false;
        }
      });
    fs.writeFileSync(file, kept.map((l) => l + '\n').join(''));
    return fs.openSync(file, 'a');
  }
  return fs.openSync(file, 'w');
}
