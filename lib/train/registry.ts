/**
 * Every training stage, by name: what the CLI registers as stage commands
 * and what recipes chain. A new method adds one line here.
 */
import { sftStage } from '../stages/sft';
import { rmStage } from '../stages/reward';
import { dpoStage, orpoStage } from '../stages/dpo';
import { ktoStage } from '../stages/kto';
import { rsStage } from '../stages/rejection/stage';
import { ppoStage } from '../stages/ppo/stage';
import { grpoStage, rlooStage } from '../stages/grpo/stage';
import { restStage } from '../stages/rest/stage';
import { hirStage } from '../stages/hir/stage';
import type { AnyStage } from './stage';

export const STAGES = {
  sft: sftStage,
  rm: rmStage,
  dpo: dpoStage,
  orpo: orpoStage,
  kto: ktoStage,
  rs: rsStage,
  ppo: ppoStage,
  grpo: grpoStage,
  rloo: rlooStage,
  rest: restStage,
  hir: hirStage,
} as const satisfies Record<string, AnyStage>;

export type StageName = keyof typeof STAGES;

/** The stage a recipe section runs: its own name, or a named instance of one (rm_helpfulness, rm_safety are rm). */
export function stageOf(key: string): AnyStage | undefined {
  if (key in STAGES) return STAGES[key as StageName];
  const base = key.split('_')[0];
  return base in STAGES ? STAGES[base as StageName] : undefined;
}
