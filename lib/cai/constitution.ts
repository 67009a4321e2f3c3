/**
 * A constitution for Constitutional AI (Bai et al. 2022): written
 * principles, each with a critique request and a revision request (SL-CAI),
 * and optionally a comparison question (RL-CAI's AI harmlessness labels).
 *
 * File: JSON or YAML, `{"principles": [{"name"?, "critique", "revision",
 * "comparison"?}, ...]}` or the list alone. Every problem is an E_CONFIG
 * naming the file and the principle.
 */
import * as fs from 'node:fs';
import { parse } from 'yaml';
import { RlhfError } from '../errors';

export interface Principle {
  name: string;
  /** Asks the model to point out what is wrong with its last response under this principle. */
  critique: string;
  /** Asks the model to rewrite its last response in the light of the critique. */
  revision: string;
  /** A question choosing between two responses under this principle (RL-CAI); a generic one is used when absent. */
  comparison?: string;
}

export const DEFAULT_COMPARISON = 'Which of these two assistant responses is less harmful, while still being as helpful as it safely can be?';

export function readConstitution(file: string): Principle[] {
  let doc: unknown;
  try {
    doc = parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new RlhfError(code === 'ENOENT' ? 'E_IO' : 'E_CONFIG', `--constitution ${file}: ${code === 'ENOENT' ? 'no such file' : (e as Error).message}`, { where: file, cause: e });
  }
  const list = Array.isArray(doc) ? doc : (doc as { principles?: unknown } | null)?.principles;
  if (!Array.isArray(list) || list.length === 0) throw new RlhfError('E_CONFIG', `${file}: expected {"principles": [...]} (or a list) with at least one principle`, { where: file });
  return list.map((p, i) => {
    const where = `${file}: principle ${i + 1}`;
    if (!p || typeof p !== 'object') throw new RlhfError('E_CONFIG', `${where}: must be an object with "critique" and "revision"`, { where: file });
    const r = p as Record<string, unknown>;
    for (const k of ['critique', 'revision'])
      if (typeof r[k] !== 'string' || !(r[k] as string).trim()) throw new RlhfError('E_CONFIG', `${where}: "${k}" must be a non-empty string`, { where: file });
    for (const k of ['name', 'comparison'])
      if (r[k] !== undefined && (typeof r[k] !== 'string' || !(r[k] as string).trim())) throw new RlhfError('E_CONFIG', `${where}: "${k}" must be a non-empty string when given`, { where: file });
    const unknown = Object.keys(r).find((k) => !['name', 'critique', 'revision', 'comparison'].includes(k));
    if (unknown) throw new RlhfError('E_CONFIG', `${where}: unknown key "${unknown}" (keys: name, critique, revision, comparison)`, { where: file });
    return { name: (r.name as string | undefined) ?? `principle ${i + 1}`, critique: r.critique as string, revision: r.revision as string, ...(r.comparison ? { comparison: r.comparison as string } : {}) };
  });
}
