/**
 * Verifiable rewards (the RLVR setting): a completion is checked against the
 * reference answer that its prompt row carries, 1 when it matches, else 0.
 *
 *   exact    the completion and the reference, each trimmed with every run
 *            of whitespace collapsed to one space, are equal (case counts);
 *   numeric  the final number of the completion equals the final number of
 *            the reference (`finalNumber`: `#### 42` as in GSM8K, else the
 *            last `\boxed{...}` as in MATH, else the last number).
 *
 * The reference is the row's `answerField` (default "answer"): a string, or
 * a JSON number. docs/rewards.md has the rules with a table of examples.
 */
import { RlhfError } from '../errors';
import { dataError } from '../data/jsonl';
import type { RewardInput, RewardSource } from './sources';

export const VERIFIERS = ['exact', 'numeric'] as const;
export type VerifierName = (typeof VERIFIERS)[number];

/** Trimmed, every run of whitespace one space. */
export const normalizeText = (s: string): string => s.trim().replace(/\s+/g, ' ');

// A number: an optional sign that does not follow a word character (so the
// "-" of "3-2" is not read as a sign and "x2" holds no number), digits with
// optional thousands commas (groups of exactly three) and decimals, or ".5";
// optionally "/d" (a fraction with a whole-number denominator).
const SIGN = '[-+\\u2212]';
const UNSIGNED = '(?:(?:\\d{1,3}(?:,\\d{3})+(?!\\d)|\\d+)(?:\\.\\d+)?|\\.\\d+)';
const NUMBER = new RegExp(`(?<![\\w.])(?:${SIGN})?${UNSIGNED}(?:/\\d+(?![\\d.]))?`, 'g');
const WHOLE_NUMBER = new RegExp(`^(?:${SIGN})?${UNSIGNED}(?:/\\d+)?$`);

/** The value of one number token ("-1,000.5", "3/4"); null when it is not finite (e.g. a zero denominator). */
function tokenValue(tok: string): number | null {
  let s = tok.replace(/,/g, '').replace('\u2212', '-');
  let den = 1;
  const slash = s.indexOf('/');
  if (slash >= 0) {
    den = Number(s.slice(slash + 1));
    s = s.slice(0, slash);
  }
  const v = Number(s) / den;
  return Number.isFinite(v) ? v : null;
}

function numbersIn(text: string): number[] {
  const out: number[] = [];
  for (const m of text.matchAll(NUMBER)) {
    const v = tokenValue(m[0]);
    if (v !== null) out.push(v);
  }
  return out;
}

/** The content of the last \boxed{...} (braces balanced), or null. */
function lastBoxed(text: string): string | null {
  const at = text.lastIndexOf('\\boxed{');
  if (at < 0) return null;
  let depth = 0;
  for (let i = at + '\\boxed'.length; i < text.length; i++) {
    if (text[i] === '{') depth++;
    else if (text[i] === '}' && --depth === 0) return text.slice(at + '\\boxed{'.length, i);
  }
  return null;
}

/**
 * A boxed answer as a number: the whole content must be one number, after
 * dropping spaces, `$`, LaTeX spacing (`\!`, `\,`, `\;`), `\text{...}` (units),
 * `^\circ` and a trailing `%`, with `{,}` read as a thousands comma; or
 * `\frac{a}{b}` (also `\dfrac`, `\tfrac`) of two such numbers. Anything else
 * (`\sqrt{2}`, `(1, 2)`, `x + 1`) is not a number: null.
 */
function boxedValue(content: string): number | null {
  const s = content
    .replace(/\\(?:text|mbox|mathrm)\{[^{}]*\}/g, '')
    .replace(/\^\{?\\circ\}?/g, '')
    .replace(/\{,\}/g, ',')
    .replace(/\\[!,;]|\\?\$|\s/g, '')
    .replace(/\\?%$/, '');
  const frac = /^([-+\u2212]?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$/.exec(s);
  if (frac) {
    const [a, b] = [frac[2], frac[3]].map((x) => (WHOLE_NUMBER.test(x) ? tokenValue(x) : null));
    if (a === null || b === null || b === 0) return null;
    const v = (frac[1] === '' || frac[1] === '+' ? 1 : -1) * (a / b);
    return Number.isFinite(v) ? v : null;
  }
  return WHOLE_NUMBER.test(s) ? tokenValue(s) : null;
}

/**
 * The final numeric answer of a text: after the last `####`, the first
 * number there (GSM8K); else the last `\boxed{...}`, when it holds a number
 * (MATH); else the last number in the text. null when there is none (a
 * `####` or `\boxed{}` without a number is no answer: no fallback).
 */
export function finalNumber(text: string): number | null {
  const hash = text.lastIndexOf('####');
  if (hash >= 0) return numbersIn(text.slice(hash + 4))[0] ?? null;
  const boxed = lastBoxed(text);
  if (boxed !== null) return boxedValue(boxed);
  if (text.includes('\\boxed{')) return null; // an unclosed box
  const all = numbersIn(text);
  return all.length ? all[all.length - 1] : null;
}

export function exactMatch(completion: string, reference: string): 0 | 1 {
  return normalizeText(completion) === normalizeText(reference) ? 1 : 0;
}

/** 1 when the completion's final number equals the reference's (float64 equality: 1/2 = 0.5 = .50). */
export function numericMatch(completion: string, reference: number): 0 | 1 {
  return finalNumber(completion) === reference ? 1 : 0;
}

/**
 * The reference answer of a prompt row for `verifier`: the string (or JSON
 * number) in `field`, as a number for 'numeric'. E_DATA naming file:line
 * and the field when the row has none, or it is not a string or a number,
 * or (numeric) it holds no number.
 */
export function referenceOf(row: Record<string, unknown>, field: string, verifier: VerifierName, file: string, line: number): string | number {
  const v = row[field];
  const what = `the "${verifier}" reward's reference answer (--answer-field ${field})`;
  if (v === undefined || v === null) throw dataError(file, line, `no "${field}": ${what} is missing`);
  if (typeof v !== 'string' && !(typeof v === 'number' && Number.isFinite(v))) throw dataError(file, line, `"${field}" must be a string or a number (${what}), got ${JSON.stringify(v)}`);
  if (verifier === 'exact') return String(v);
  const n = typeof v === 'number' ? v : finalNumber(v);
  if (n === null) throw dataError(file, line, `"${field}" holds no number (#### n, \\boxed{n} or a plain number): ${what}; use --reward-function exact or a --reward-module for answers that are not numbers`);
  return n;
}

/** A built-in verifier as a reward source with one part, named after it. */
export function verifierSource(verifier: VerifierName, answerField: string): RewardSource {
  return {
    names: [verifier],
    async score(batch: RewardInput[]) {
      const reward = Float64Array.from(batch, (x, i) => {
        if (!x.row) throw new RlhfError('E_ARGUMENT', `reward input ${i} has no data row: the "${verifier}" reward reads the reference answer from the prompt's row`);
        const ref = referenceOf(x.row, answerField, verifier, x.file ?? '(prompt data)', x.line ?? i + 1);
        return verifier === 'exact' ? exactMatch(x.response, ref as string) : numericMatch(x.response, ref as number);
      });
      return { reward, parts: { [verifier]: Float64Array.from(reward) } };
    },
    dispose() {},
  };
}
