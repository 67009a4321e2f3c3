/**
 * A user's reward module: a .js, .cjs, .mjs or .ts file exporting
 *
 *   reward({ prompt, completion, row }) => number | Promise<number>
 *
 * as the named export `reward` or as the default export. It is called once
 * per completion, one call at a time in the batch's order (a stateful or
 * rate-limited scorer sees a fixed order). A .ts file is transpiled with
 * the `typescript` package when one can be resolved (from the module's
 * folder, then from this package); its own imports are not transpiled.
 *
 * A module that cannot be used (no file, a load error, no function) is an
 * E_ARGUMENT naming the file. A call that throws, rejects, or gives anything
 * but a finite number is an E_REWARD naming the module file and the data
 * file:line of the row it was scoring.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createRequire, Module } from 'node:module';
import { pathToFileURL } from 'node:url';
import { RlhfError } from '../errors';
import type { RewardInput, RewardSource } from './sources';

/** What the module's function is given. */
export interface RewardModuleInput {
  /** The text the model saw: the prompt string, or the rendered chat template. */
  prompt: string;
  /** The sampled response, decoded without special tokens. */
  completion: string;
  /** The prompt's whole JSONL object ({} when the input came without one). */
  row: Record<string, unknown>;
}

export type RewardModuleFn = (x: RewardModuleInput) => unknown;

const EXTENSIONS = ['.js', '.cjs', '.mjs', '.ts'];
const message = (e: unknown) => (e instanceof Error ? e.message : String(e));

/** Requires `typescript` from the module's folder, else from this package; null when neither has it. */
function findTypescript(file: string): typeof import('typescript') | null {
  for (const from of [file, __filename]) {
    try {
      return createRequire(from)('typescript') as typeof import('typescript');
    } catch {
      // not resolvable from here
    }
  }
  return null;
}

/** A .ts module: transpiled to CommonJS in memory and run as a module of its own folder (relative requires resolve there). */
function loadTs(file: string, flag: string): Record<string, unknown> {
  const ts = findTypescript(file);
  if (!ts)
    throw new RlhfError('E_ARGUMENT', `${flag} ${file}: a .ts reward module needs the "typescript" package, which cannot be found here; compile it to .js (tsc) and pass that file`, { where: file });
  const out = ts.transpileModule(fs.readFileSync(file, 'utf8'), {
    fileName: file,
    reportDiagnostics: true,
    compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
  });
  const diag = out.diagnostics?.find((d) => d.category === ts.DiagnosticCategory.Error);
  if (diag) throw new RlhfError('E_ARGUMENT', `${flag} ${file}: does not compile: ${ts.flattenDiagnosticMessageText(diag.messageText, '\n')}`, { where: file });
  type Compilable = Module & { _compile(code: string, filename: string): void; paths: string[] };
  const m = new Module(file) as Compilable;
  m.filename = file;
  m.paths = (Module as unknown as { _nodeModulePaths(dir: string): string[] })._nodeModulePaths(path.dirname(file));
  m._compile(out.outputText, file);
  return m.exports as Record<string, unknown>;
}

/** The module file exists and has a known extension (E_ARGUMENT): checked before any weights load. */
export function checkModuleFile(file: string, flag = '--reward-module'): void {
  const abs = path.resolve(file);
  if (!fs.existsSync(abs) || !fs.statSync(abs).isFile()) throw new RlhfError('E_ARGUMENT', `${flag} ${file}: no such file`, { where: file });
  const ext = path.extname(abs);
  if (!EXTENSIONS.includes(ext)) throw new RlhfError('E_ARGUMENT', `${flag} ${file}: a reward module is a ${EXTENSIONS.join(', ')} file (this is "${ext}")`, { where: file });
}

/** The module's reward function: the named export `reward`, else a default export that is a function. */
export async function loadRewardModule(file: string, flag = '--reward-module'): Promise<RewardModuleFn> {
  checkModuleFile(file, flag);
  const abs = path.resolve(file);
  const ext = path.extname(abs);
  let ns: Record<string, unknown>;
  try {
    ns = ext === '.ts' ? loadTs(abs, flag) : ((await import(pathToFileURL(abs).href)) as Record<string, unknown>);
  } catch (e) {
    if (e instanceof RlhfError) throw e;
    throw new RlhfError('E_ARGUMENT', `${flag} ${file}: the module failed to load: ${message(e)}`, { where: file, cause: e });
  }
  // A CommonJS module seen through import() has its exports as `default`; a transpiled one has `default` for `export default`.
  const def = ns.default as Record<string, unknown> | undefined;
  const fn = [ns.reward, def, typeof def === 'object' && def !== null ? def.reward : undefined].find((f) => typeof f === 'function');
  if (!fn)
    throw new RlhfError('E_ARGUMENT', `${flag} ${file}: exports no reward function (export a function named "reward", or a default export that is a function; it gets {prompt, completion, row} and returns a number)`, {
      where: file,
    });
  return fn as RewardModuleFn;
}

/** Where an input's row is, for messages: "file:line", or the input's index when it came without one. */
export const rowWhere = (x: RewardInput, i: number) => (x.file && x.line !== undefined ? `${x.file}:${x.line}` : `reward input ${i}`);

/** The module as a reward source with one part, 'module'. */
export async function moduleSource(file: string, flag = '--reward-module'): Promise<RewardSource> {
  const fn = await loadRewardModule(file, flag);
  const fail = (x: RewardInput, i: number, what: string, cause?: unknown) =>
    new RlhfError('E_REWARD', `${flag} ${file}: ${what} on the completion for ${rowWhere(x, i)}`, { where: rowWhere(x, i), ...(cause !== undefined ? { cause } : {}) });
  return {
    names: ['module'],
    async score(batch) {
      const reward = new Float64Array(batch.length);
      for (let i = 0; i < batch.length; i++) {
        const x = batch[i];
        let v: unknown;
        try {
          v = await fn({ prompt: x.prompt, completion: x.response, row: x.row ?? {} });
        } catch (e) {
          throw fail(x, i, `reward() threw "${message(e)}"`, e);
        }
        if (typeof v !== 'number' || !Number.isFinite(v)) throw fail(x, i, `reward() returned ${typeof v === 'number' ? String(v) : JSON.stringify(v) ?? typeof v}, not a finite number`);
        reward[i] = v;
      }
      return { reward, parts: { module: Float64Array.from(reward) } };
    },
    dispose() {},
  };
}
