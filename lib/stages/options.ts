/** Checks shared by the stages' config resolvers: a failed check is E_ARGUMENT naming the option. */
import { RlhfError } from '../errors';

export function arg(ok: boolean, msg: string): void {
  if (!ok) throw new RlhfError('E_ARGUMENT', msg);
}
export const posInt = (x: number) => Number.isInteger(x) && x > 0;
export const nonNegInt = (x: number) => Number.isInteger(x) && x >= 0;
export const finite = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x);
