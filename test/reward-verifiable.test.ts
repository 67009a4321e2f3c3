/**
 * The built-in verifiable rewards against a table of cases written by hand
 * in the formats of GSM8K (`#### 72` after the worked solution) and MATH
 * (`\boxed{...}` in the solution), plus plain text; each expected value was
 * worked out from the rules in docs/rewards.md, not taken from the code.
 */
import t from 'tap';
import { exactMatch, finalNumber, numericMatch, referenceOf, verifierSource } from '../lib/reward/verifiable';
import type { RlhfError } from '../lib/errors';
import type { RewardInput } from '../lib/reward/sources';

const GSM8K_ANSWER = 'Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72';
const MATH_SOLUTION = 'The probability is $\\frac{3}{6} = \\boxed{\\frac{1}{2}}$.';

t.test('finalNumber: #### first, then the last \\boxed{}, then the last number', async (t) => {
  const cases: [string, number | null][] = [
    [GSM8K_ANSWER, 72],
    ['#### 1,000', 1000],
    ['#### -5', -5],
    ['so she pays #### $18.50.', 18.5],
    ['#### 12 and later 13', 12], // the first number after ####
    ['5 apples #### none', null], // #### without a number: no fallback to 5
    [MATH_SOLUTION, 0.5],
    ['The answer is \\boxed{42}.', 42],
    ['\\boxed{-\\dfrac{3}{4}}', -0.75],
    ['\\boxed{\\tfrac{6}{4}}', 1.5],
    ['\\boxed{1{,}000}', 1000],
    ['\\boxed{50\\%}', 50],
    ['\\boxed{90^\\circ}', 90],
    ['\\boxed{5\\text{ cm}}', 5],
    ['\\boxed{\\$18.90}', 18.9],
    ['\\boxed{ 2.50 }', 2.5],
    ['first \\boxed{3} then \\boxed{4}', 4],
    ['\\boxed{\\sqrt{2}}', null], // not a number: no fallback
    ['\\boxed{(1,2)}', null],
    ['7 and \\boxed{x+1}', null],
    ['She has 3 apples and 5 pears, 8 in all.', 8],
    ['It costs 1,234.5 dollars', 1234.5],
    ['The value is -0.25', -0.25],
    ['3-2 = 1', 1],
    ['the answer: 3-2', 2], // the "-" after a digit is not a sign
    ['half of it is 3/4', 0.75],
    ['about .5 of it', 0.5],
    ['+7', 7],
    ['\u22123', -3], // U+2212 MINUS SIGN
    ['1,2', 2], // not a thousands group: two numbers
    ['no numbers here', null],
    ['model v2', null], // a number glued to a word is not one
    ['', null],
  ];
  for (const [text, want] of cases) t.equal(finalNumber(text), want, JSON.stringify(text));
});

t.test('numeric: final numbers equal (references in GSM8K, MATH or plain form)', async (t) => {
  const cases: [string, string | number, 0 | 1][] = [
    ['48 + 24 = 72 clips. The answer is 72.', GSM8K_ANSWER, 1],
    ['Natalia sold 72 clips.\n#### 72', GSM8K_ANSWER, 1],
    ['She sold 73 clips.', GSM8K_ANSWER, 0],
    ['72 clips, or rather 73', GSM8K_ANSWER, 0], // the last number counts
    ['So the answer is \\boxed{0.5}', MATH_SOLUTION, 1],
    ['1/2', MATH_SOLUTION, 1],
    ['0.50', '\\boxed{\\frac{1}{2}}', 1],
    ['0.333', '\\boxed{\\frac{1}{3}}', 0], // no tolerance
    ['#### 1,000', 1000, 1], // a JSON number as the reference
    ['1000.0', '1,000', 1],
    ['-5', '5', 0],
    ['no idea', '#### 4', 0],
  ];
  for (const [completion, ref, want] of cases) {
    const r = referenceOf({ answer: ref }, 'answer', 'numeric', 'd.jsonl', 1);
    t.equal(numericMatch(completion, r as number), want, `${JSON.stringify(completion)} vs ${JSON.stringify(ref)}`);
  }
});

t.test('exact: trimmed, whitespace runs collapsed, otherwise equal', async (t) => {
  const cases: [string, string | number, 0 | 1][] = [
    ['  Paris \n', 'Paris', 1],
    ['The  capital\tis\nParis', 'The capital is Paris', 1],
    ['paris', 'Paris', 0], // case counts
    ['Paris.', 'Paris', 0],
    ['42', 42, 1],
    ['72', GSM8K_ANSWER, 0], // exact compares with the whole field
    ['', '', 1],
  ];
  for (const [completion, ref, want] of cases) {
    const r = referenceOf({ answer: ref }, 'answer', 'exact', 'd.jsonl', 1);
    t.equal(exactMatch(completion, r as string), want, `${JSON.stringify(completion)} vs ${JSON.stringify(ref)}`);
  }
});

t.test('a row without its reference: E_DATA naming file:line and the field', async (t) => {
  const bad: [Record<string, unknown>, string, 'exact' | 'numeric', RegExp][] = [
    [{ prompt: 'q' }, 'answer', 'numeric', /^gsm\.jsonl:3: no "answer": the "numeric" reward's reference answer \(--answer-field answer\) is missing$/],
    [{ answer: '#### 4' }, 'solution', 'exact', /^gsm\.jsonl:3: no "solution"/],
    [{ answer: null }, 'answer', 'exact', /^gsm\.jsonl:3: no "answer"/],
    [{ answer: ['4'] }, 'answer', 'exact', /^gsm\.jsonl:3: "answer" must be a string or a number .*, got \["4"\]$/],
    [{ solution: '\\boxed{\\sqrt{2}}' }, 'solution', 'numeric', /^gsm\.jsonl:3: "solution" holds no number/],
  ];
  for (const [row, field, v, re] of bad) {
    const e = t.throws(() => referenceOf(row, field, v, 'gsm.jsonl', 3)) as RlhfError;
    t.equal(e.code, 'E_DATA');
    t.match(e.message, re);
  }
});

t.test('verifierSource: one part named after the verifier; the row read from the input', async (t) => {
  const input = (response: string, row: Record<string, unknown>, line: number): RewardInput => ({ prompt: 'q', promptIds: [1], response, responseIds: [2], row, file: 'm.jsonl', line });
  const src = verifierSource('numeric', 'solution');
  t.same(src.names, ['numeric']);
  const r = await src.score([input('it is 4', { solution: '\\boxed{4}' }, 1), input('it is 5', { solution: '\\boxed{4}' }, 2)]);
  t.same(Array.from(r.reward), [1, 0]);
  t.same(Array.from(r.parts.numeric), [1, 0]);
  const e = (await src.score([input('4', { solution: '4' }, 1), input('4', { answer: '4' }, 7)]).catch((e) => e)) as RlhfError;
  t.equal(e.code, 'E_DATA');
  t.match(e.message, /^m\.jsonl:7: no "solution"/);
});
