/**
 * `train` refuses what it would otherwise ignore, through the CLI: unknown
 * flags, stage overrides the stage has no option for (with the nearest valid
 * spelling), positional arguments, and options of the other mode (demo vs
 * recipe). Each refusal is one stderr line, exit 1, before anything runs
 * (no run folder appears). A valid override gets past the check.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cliBuilt, runCli } from './helpers/cli';
import { editDistance, nearest } from '../bin/commands/train-args';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-train-args-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const cfg = path.join(tmp, 'run.yaml');
fs.writeFileSync(cfg, `recipe: instructgpt\nmodel: ${path.join(tmp, 'no-model')}\nout: ${path.join(tmp, 'run')}\nsft: { data: a.jsonl }\nrm: { data: b.jsonl }\nppo: { data: c.jsonl }\n`);

t.test('edit distance and the nearest spelling', async (t) => {
  t.equal(editDistance('iterationz', 'iterations'), 1);
  t.equal(editDistance('', 'abc'), 3);
  t.equal(editDistance('kitten', 'sitting'), 3);
  t.equal(nearest('iteratons', ['iterations', 'lr', 'batch-size']), 'iterations');
  t.equal(nearest('zzz', ['iterations', 'lr']), null, 'nothing near: no suggestion');
});

const refusals: [string, string[], RegExp][] = [
  ['an unknown flag', ['train', '--foo'], /unknown option --foo\b/],
  ['a near miss of a train option', ['train', '--method', 'all'], /unknown option --method \(did you mean --methods\?\)/],
  ['a stage option the stage lacks', ['train', '--config', cfg, '--ppo.iterationz', '3'], /unknown option --ppo\.iterationz: the ppo stage has no such option \(did you mean --ppo\.iterations\?\)/],
  ['a kebab-case near miss', ['train', '--config', cfg, '--ppo.mini-batch-sise', '4'], /did you mean --ppo\.mini-batch-size\?/],
  ['an option of another stage', ['train', '--config', cfg, '--rm.kl-coef', '0.1'], /the rm stage has no such option/],
  ['a misspelt stage', ['train', '--config', cfg, '--pp.iterations', '3'], /unknown option --pp\.iterations \(did you mean --ppo\.iterations\?\)/],
  ['a stage with no option', ['train', '--config', cfg, '--ppo', '3'], /--ppo needs an option: --ppo\.<option>/],
  ['a positional argument', ['train', 'quick'], /unexpected argument 'quick'/],
  ['a stage override on the demo', ['train', '--ppo.iterations', '2'], /--ppo\.\* applies to a recipe run/],
  ['--model on the demo', ['train', '--model', tmp], /--model applies to a recipe run/],
  ['--no-<stage> on the demo', ['train', '--no-rs'], /--no-rs applies to a recipe run/],
  ['--scale with a config', ['train', '--config', cfg, '--scale', 'quick'], /--scale applies to the built-in demo/],
];

t.test('refusals: one line, exit 1, nothing run', { skip: !cliBuilt() && 'CLI not compiled' }, async (t) => {
  for (const [what, args, re] of refusals) {
    const cwd = fs.mkdtempSync(path.join(tmp, 'cwd-'));
    const r = runCli(args, { cwd });
    t.equal(r.status, 1, `${what}: exit 1`);
    const lines = r.stderr.split('\n').filter(Boolean);
    t.equal(lines.length, 1, `${what}: one stderr line (${JSON.stringify(r.stderr)})`);
    t.match(lines[0] ?? '', re, `${what}: ${lines[0]}`);
    t.same(fs.readdirSync(cwd), [], `${what}: no run folder`);
    t.notOk(fs.existsSync(path.join(tmp, 'run')), `${what}: the config's run folder was not made`);
  }
});

t.test('valid overrides pass the check (the run then stops at the missing model)', { skip: !cliBuilt() && 'CLI not compiled' }, async (t) => {
  for (const o of [['--ppo.iterations', '2'], ['--ppo.mini-batch-size', '4'], ['--rm.lr', '1e-4'], ['--no-rm']]) {
    const r = runCli(['train', '--config', cfg, '--device', 'cpu', ...o], { cwd: tmp });
    t.equal(r.status, 1, `${o.join(' ')}: exit 1`);
    t.notMatch(r.stderr, /unknown option|applies to|needs an option/, `${o.join(' ')}: accepted (${r.stderr.trim()})`);
  }
});
