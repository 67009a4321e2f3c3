/**
 * Every command's --help, through the CLI: an "Examples:" section with one
 * line that runs the command, using only flags the command lists; each
 * stage command lists every default of its option table.
 */
import t from 'tap';
import { cliBuilt, runCli } from './helpers/cli';
import { STAGES } from '../lib/train/registry';
import { flagOf, type OptionSpec } from '../lib/train/options';

const skip = !cliBuilt() && 'CLI not compiled';

/** The option entries of a help text by flag (`--lr`, `-k`), each with its wrapped continuation lines. */
function optionEntries(help: string): Map<string, string> {
  const out = new Map<string, string>();
  let cur: string | null = null;
  for (const line of help.split('\n')) {
    // An option starts its line after at most 6 spaces; a wrapped description is indented further (and may name a flag).
    const m = /^ {2,6}(?:-(\w), )?(--[\w-]+|-\w)\b/.exec(line);
    if (m) {
      cur = m[2];
      out.set(cur, line);
      if (m[1]) out.set(`-${m[1]}`, line);
    } else if (cur && /^\s{8,}\S/.test(line)) out.set(cur, out.get(cur) + ' ' + line.trim());
    else cur = null;
  }
  return out;
}

t.test('every command has one example line, with flags the command has', { skip }, async (t) => {
  const top = runCli(['--help']);
  t.equal(top.status, 0);
  const commands = [...top.stdout.matchAll(/^\s+rlhf-native (\w+)/gm)].map((m) => m[1]);
  t.ok(commands.length >= 19, `${commands.length} commands: ${commands.join(' ')}`);
  for (const c of commands) {
    const r = runCli([c, '--help']);
    t.equal(r.status, 0, `${c} --help: exit 0`);
    const examples = r.stdout.split(/^Examples:$/m)[1];
    t.ok(examples, `${c}: an Examples: section`);
    const lines = (examples ?? '').split('\n').filter((l) => /^\s+rlhf-native /.test(l));
    t.equal(lines.length, 1, `${c}: one example line`);
    const line = (lines[0] ?? '').trim();
    t.match(line, new RegExp(`^rlhf-native ${c}( |$)`), `${c}: the example runs the command: ${line}`);
    const flags = [...line.split(/\s{2,}/)[0].matchAll(/(?:^|\s)(--?[a-zA-Z][\w-]*)/g)].map((m) => m[1].replace(/^--no-/, '--'));
    const known = optionEntries(r.stdout);
    const unknown = flags.filter((f) => !known.has(f));
    t.same(unknown, [], `${c}: every flag of the example is one of the command's (${flags.join(' ')})`);
  }
});

t.test('stage commands show every default of their option table', { skip }, async (t) => {
  for (const stage of Object.values(STAGES)) {
    const r = runCli([stage.name, '--help']);
    const entries = optionEntries(r.stdout);
    const missing: string[] = [];
    for (const [k, s] of Object.entries(stage.options as Record<string, OptionSpec>)) {
      // null: no default (the option is off unless given); the help says so in words where it matters.
      if (s.apiOnly || s.type === 'object' || ((s.default === undefined || s.default === null) && !s.defaultText)) continue;
      const entry = entries.get(flagOf(k, s)) ?? entries.get(flagOf(k, s).slice(1)) ?? '';
      const want = s.defaultText ?? (Array.isArray(s.default) ? s.default.join(',') : String(s.default));
      // Compared with the wrapping (and a multi-line default's newline) as single spaces.
      if (!entry.replace(/\s+/g, ' ').includes(`[default: ${want.replace(/\s+/g, ' ')}]`)) missing.push(`${flagOf(k, s)} (${want})`);
    }
    t.same(missing, [], `${stage.name}: every default shown`);
  }
});
