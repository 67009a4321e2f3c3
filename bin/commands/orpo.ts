/**
 * `rlhf-native orpo --model DIR --data PAIRS.jsonl --out DIR [options]`:
 * ORPO (Hong et al. 2024), the dpo stage with the odds-ratio loss and no
 * reference model. Options: lib/stages/dpo.ts (ORPO_OPTIONS); see docs/dpo.md.
 */
import type { Argv } from 'yargs';
import { orpoStage } from '../../lib/stages/dpo';
import { familyCommand } from './dpo';

export function register<T>(y: Argv<T>): Argv<T> {
  return familyCommand(y, orpoStage);
}
