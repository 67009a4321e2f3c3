/**
 * Chat-template preference rows end at the end-of-turn token when the
 * model's stop ids are given: what the template writes after it (a newline
 * here) is dropped, so the reward is read at the token where a sampled
 * response stops.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadPreferenceData } from '../lib/data/preference-data';
import { loadTokenizer } from '../lib/tokenizer/tokenizer';
import { openModelFolder } from '../lib/model/folder';

const BASE = path.join(__dirname, '..', 'models', 'demo-base');

t.test('conversational pairs are cut after the last stop token; string pairs are not', async (t) => {
  const tok = loadTokenizer(BASE);
  const f = openModelFolder(BASE);
  const eos = f.config.eosTokenIds;
  f.close();
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-pref-stop-')), 'p.jsonl');
  fs.writeFileSync(
    file,
    [
      { prompt: [{ role: 'user', content: 'Spell cat backwards.' }], chosen: [{ role: 'assistant', content: 'tac' }], rejected: [{ role: 'assistant', content: 'cat' }] },
      { prompt: 'Spell cat backwards.', chosen: ' tac', rejected: ' cat' },
    ]
      .map((r) => JSON.stringify(r))
      .join('\n') + '\n',
  );
  const base = { tokenizer: tok, maxLen: 128, vocabSize: f.config.vocabSize, fallbackEosTokenId: eos[0] };
  const plain = loadPreferenceData(file, base).examples;
  const cut = loadPreferenceData(file, { ...base, stopTokenIds: eos }).examples;
  const endOfTurn = tok.tokenToId('<|im_end|>')!;
  t.ok(eos.includes(endOfTurn), 'the demo model stops at <|im_end|>');
  t.not(plain[0].chosen[plain[0].chosen.length - 1], endOfTurn, 'without stop ids the template newline is the last token');
  t.equal(cut[0].chosen[cut[0].chosen.length - 1], endOfTurn, 'with stop ids the chosen sequence ends at <|im_end|>');
  t.equal(cut[0].rejected[cut[0].rejected.length - 1], endOfTurn, 'and so does the rejected one');
  t.same(cut[0].chosen, plain[0].chosen.slice(0, cut[0].chosen.length), 'only the tail after it is dropped');
  t.same(cut[1].chosen, plain[1].chosen, 'string rows are unchanged');
});
