/**
 * The demo's final table, one row per stage: the labeler's held-out figures
 * of each policy, the reward models' accuracy, speed and wall time. The same
 * table is printed by `train`, kept in summary.json (`comparison`) and shown
 * first in report.html.
 */
import type { ComparisonTable } from '../run/report';
import type { PolicyEvaluation } from '../demo/labeler';
import { METHOD_STAGE, type DemoMethod } from './demo-methods';

/** What the table shows of a demo run (DemoResult has it). */
export interface DemoTableInput {
  policies: readonly { policy: DemoMethod; eval: PolicyEvaluation; winVsSft: number; greedy: PolicyEvaluation; greedyWinVsSft: number }[];
  stages: readonly { name: string; wall_s: number; tokens_per_sec: number | null }[];
  rmAccuracy: { helpfulness: number | null; safety: number | null };
}

export const DEMO_TABLE_CAPTION =
  "Held-out prompts scored by the labeler (score = Llama 2's combination of helpfulness and safety; sampled at temperature 0.7, " +
  '2 answers per prompt; exact = share of the checkable prompts answered exactly; win = share of answers better than the SFT policy\'s, ties half)';

const f3 = (x: number | null | undefined) => (x === null || x === undefined ? '-' : x.toFixed(3));

export function demoComparison(r: DemoTableInput): ComparisonTable {
  const pol = new Map(r.policies.map((p) => [METHOD_STAGE[p.policy] as string, p]));
  const rows: string[][] = r.stages.map((s) => {
    const p = pol.get(s.name);
    const acc = s.name === 'rm_helpfulness' ? r.rmAccuracy.helpfulness : s.name === 'rm_safety' ? r.rmAccuracy.safety : null;
    return [
      s.name,
      p ? f3(p.eval.helpfulness) : '-',
      p ? f3(p.eval.safety) : '-',
      p ? f3(p.eval.score) : '-',
      p ? f3(p.eval.exact) : '-',
      p ? f3(p.winVsSft) : '-',
      p ? `${f3(p.greedy.score)} / ${f3(p.greedy.exact)} / ${f3(p.greedyWinVsSft)}` : '-',
      acc === null ? '-' : f3(acc),
      s.tokens_per_sec === null ? '-' : String(Math.round(s.tokens_per_sec)),
      `${s.wall_s.toFixed(1)}s`,
    ];
  });
  return { caption: DEMO_TABLE_CAPTION, columns: ['stage', 'helpfulness', 'safety', 'score', 'exact', 'win vs SFT', 'greedy score / exact / win', 'RM accuracy', 'tok/s', 'wall'], rows };
}

/** The table as aligned text (the first column left-aligned, the others right). */
export function formatTable(t: ComparisonTable): string {
  const rows = t.rows.map((r) => r.map((v) => (v === null ? '-' : String(v))));
  const w = t.columns.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (c: string[]) => c.map((x, i) => (i === 0 ? x.padEnd(w[i]) : x.padStart(w[i]))).join('  ');
  return [line(t.columns), line(t.columns.map((_, i) => '-'.repeat(w[i]))), ...rows.map(line)].join('\n') + '\n';
}
