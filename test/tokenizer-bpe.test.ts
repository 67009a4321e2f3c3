import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { RlhfError } from '../lib/errors';
import { bpeTokenizerJson, trainBpe, tokenizerConfigJson, writeTokenizerFiles, type BpeModel } from '../lib/tokenizer/bpe-train';
import { BUILTIN_CORPUS } from '../lib/tokenizer/corpus';
import { loadTokenizer } from '../lib/tokenizer/tokenizer';

// ---- Plain reference implementations, written independently of lib/ ----

// GPT-2's bytes_to_unicode, transcribed from the original Python.
function refByteChars(): Map<number, string> {
  const bs: number[] = [];
  for (let b = '!'.charCodeAt(0); b <= '~'.charCodeAt(0); b++) bs.push(b);
  for (let b = '¡'.charCodeAt(0); b <= '¬'.charCodeAt(0); b++) bs.push(b);
  for (let b = '®'.charCodeAt(0); b <= 'ÿ'.charCodeAt(0); b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++)
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  return new Map(bs.map((b, i) => [b, String.fromCharCode(cs[i])]));
}
const REF_BYTES = refByteChars();
const REF_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

function refPieces(text: string): string[][] {
  return (text.match(REF_SPLIT) ?? []).map((p) => [...Buffer.from(p, 'utf8')].map((b) => REF_BYTES.get(b)!));
}

/** Brute force: every word occurrence kept separately, all pairs recounted at every step. */
function refTrain(corpus: string, specials: string[], vocabSize: number): { merges: [string, string][]; vocab: Map<string, number> } {
  const vocab = new Map<string, number>();
  for (const s of specials) vocab.set(s, vocab.size);
  for (const ch of [...REF_BYTES.values()].sort((a, b) => a.charCodeAt(0) - b.charCodeAt(0))) vocab.set(ch, vocab.size);
  const words = refPieces(corpus);
  const merges: [string, string][] = [];
  while (vocab.size < vocabSize) {
    const counts = new Map<string, number>();
    for (const w of words)
      for (let i = 0; i + 1 < w.length; i++) {
        const k = JSON.stringify([w[i], w[i + 1]]);
        counts.set(k, (counts.get(k) ?? 0) + 1);
      }
    let best: [string, string] | null = null;
    let bestCount = 0;
    for (const [k, c] of counts) {
      const pair = JSON.parse(k) as [string, string];
      const better =
        c > bestCount ||
        (c === bestCount && best !== null &&
          (vocab.get(pair[0])! < vocab.get(best[0])! || (vocab.get(pair[0]) === vocab.get(best[0]) && vocab.get(pair[1])! < vocab.get(best[1])!)));
      if (better) {
        best = pair;
        bestCount = c;
      }
    }
    if (!best || bestCount < 2) break;
    merges.push(best);
    const merged = best[0] + best[1];
    if (!vocab.has(merged)) vocab.set(merged, vocab.size);
    for (const w of words) {
      for (let i = 0; i + 1 < w.length; i++) if (w[i] === best[0] && w[i + 1] === best[1]) w.splice(i, 2, merged);
    }
  }
  return { merges, vocab };
}

/** GPT-2's encoder: per piece, repeatedly merge the lowest-ranked adjacent pair everywhere. */
function refEncode(text: string, merges: [string, string][], vocab: Map<string, number>, specials: string[]): number[] {
  const rank = new Map(merges.map((m, i) => [m[0] + '\u0000' + m[1], i]));
  const out: number[] = [];
  const encodePlain = (s: string) => {
    for (let word of refPieces(s)) {
      for (;;) {
        let bestI = -1;
        let bestRank = Infinity;
        for (let i = 0; i + 1 < word.length; i++) {
          const r = rank.get(word[i] + '\u0000' + word[i + 1]);
          if (r !== undefined && r < bestRank) {
            bestRank = r;
            bestI = i;
          }
        }
        if (bestI < 0) break;
        const [a, b] = merges[bestRank];
        const next: string[] = [];
        for (let i = 0; i < word.length; i++) {
          if (i + 1 < word.length && word[i] === a && word[i + 1] === b) {
            next.push(a + b);
            i++;
          } else next.push(word[i]);
        }
        word = next;
      }
      for (const tkn of word) out.push(vocab.get(tkn)!);
    }
  };
  // Special tokens are matched before pre-tokenization.
  let rest = text;
  while (rest.length) {
    let at = -1;
    let which = '';
    for (const s of specials) {
      const i = rest.indexOf(s);
      if (i >= 0 && (at < 0 || i < at)) {
        at = i;
        which = s;
      }
    }
    if (at < 0) {
      encodePlain(rest);
      break;
    }
    encodePlain(rest.slice(0, at));
    out.push(vocab.get(which)!);
    rest = rest.slice(at + which.length);
  }
  return out;
}

// A seeded generator for random test strings (mulberry32).
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const ALPHABET = [...'abcdefghijklmnopqrstuvwxyz ABCXYZ 0123456789 .,;:!?\'"-()[]{} \n\t  ', 'é', 'ß', 'ü', '中', '文', '日本', 'Ω', 'Ж', '🎉', '👩‍👩‍👧', '🇫🇷', '\u00a0', '\u200b', 'ﬁ', '’', "'s", "'ll", '  '];
function randomStrings(n: number, seed: number): string[] {
  const r = rng(seed);
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const len = Math.floor(r() * 40);
    let s = '';
    for (let j = 0; j < len; j++) s += ALPHABET[Math.floor(r() * ALPHABET.length)];
    out.push(s);
  }
  return out;
}

const FIXED = [
  '', ' ', '  ', '\n', '\n\n', '\t x', 'Hello world!', ' leading space', 'trailing space ', 'multiple   spaces  here',
  "don't you'll they've I'm we'd it's", 'The river runs past the old mill.', 'Ünïcödé ÀÉÎÕÜ ß', '中文字符和日本語のテキスト',
  'emoji 🎉🎉 and 👩‍👩‍👧 family and 🇫🇷 flag', 'numbers 12345 3.14159 1,000,000', 'tabs\tand\r\nwindows newlines',
  'symbols: @#$%^&*()_+-=[]{}|\\;:\'",.<>/?`~', 'zero\u200bwidth and non\u00a0breaking', 'a'.repeat(300), 'ab '.repeat(100),
];

function trainedDir(t: Tap, model: BpeModel, specials: { bos: string | null; eos: string; pad: string | null }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-bpe-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  writeTokenizerFiles(dir, model, { bosToken: specials.bos, eosToken: specials.eos, padToken: specials.pad, modelMaxLength: 256, chatTemplate: null });
  return dir;
}
type Tap = Parameters<Parameters<typeof t.test>[1]>[0];

t.test('hand-checked tiny corpus', async (t) => {
  // "aaabdaaabac" is one pre-token. Adjacent pairs: aa x4, ab x2, bd, da, ba, ac.
  // 1. merge (a,a): [aa a b d aa a b a c]; now (aa,a) x2 and (a,b) x2 tie;
  //    ids: a=64, b=65 (bytes in code-point order from '!'=0), aa=256, so (a,b) < (aa,a).
  // 2. merge (a,b): [aa ab d aa ab a c]; (aa,ab) x2.
  // 3. merge (aa,ab): [aaab d aaab a c]; every pair now occurs once: stop.
  const m = trainBpe({ corpus: 'aaabdaaabac', vocabSize: 1000 });
  t.same(m.merges, [['a', 'a'], ['a', 'b'], ['aa', 'ab']]);
  t.equal(m.vocab.size, 259);
  t.equal(m.vocab.get('a'), 64);
  t.equal(m.vocab.get('!'), 0);
  t.equal(m.vocab.get('aa'), 256);
  t.equal(m.vocab.get('aaab'), 258);
  t.same(refTrain('aaabdaaabac', [], 1000).merges, m.merges, 'the brute-force reference agrees');
  t.same(trainBpe({ corpus: 'aaabdaaabac', vocabSize: 257 }).merges, [['a', 'a']], 'stops at the target size');
  t.same(trainBpe({ corpus: 'aaabdaaabac', vocabSize: 1000, minFrequency: 3 }).merges, [['a', 'a']], 'minFrequency');
});

t.test('training matches the brute-force reference on the built-in corpus', async (t) => {
  const specials = ['<|endoftext|>', '<|im_start|>', '<|im_end|>'];
  const m = trainBpe({ corpus: BUILTIN_CORPUS, vocabSize: 600, specialTokens: specials });
  const ref = refTrain(BUILTIN_CORPUS, specials, 600);
  t.equal(m.merges.length, ref.merges.length);
  t.same(m.merges, ref.merges, 'same merges in the same order');
  t.same([...m.vocab], [...ref.vocab], 'same vocab and ids');
  t.equal(m.vocab.size, 600);
  t.same([0, 1, 2].map((i) => [...m.vocab.keys()][i]), specials, 'special tokens take ids 0..k-1');
  t.same(trainBpe({ corpus: BUILTIN_CORPUS, vocabSize: 600, specialTokens: specials }), m, 'deterministic');
});

t.test('@huggingface/tokenizers on our tokenizer.json == the reference encoder; decode(encode(s)) == s', async (t) => {
  const specials = ['<s>', '</s>', '<pad>', '<|im_start|>', '<|im_end|>'];
  const m = trainBpe({ corpus: BUILTIN_CORPUS, vocabSize: 600, specialTokens: specials });
  const dir = trainedDir(t, m, { bos: '<s>', eos: '</s>', pad: '<pad>' });
  const tok = loadTokenizer(dir);
  t.equal(tok.vocabSize, 600);
  t.same([tok.bosTokenId, tok.eosTokenId, tok.padTokenId], [0, 1, 2]);
  t.same(tok.specialTokens, { '<s>': 0, '</s>': 1, '<pad>': 2, '<|im_start|>': 3, '<|im_end|>': 4 });
  const strings = [...FIXED, ...BUILTIN_CORPUS.split('\n'), ...randomStrings(300, 7)];
  let mismatches = 0;
  let roundTrips = 0;
  for (const s of strings) {
    const ids = tok.encode(s, { addSpecialTokens: false });
    if (JSON.stringify(ids) !== JSON.stringify(refEncode(s, m.merges, m.vocab, specials))) {
      if (mismatches++ < 3) t.same(ids, refEncode(s, m.merges, m.vocab, specials), `encode ${JSON.stringify(s)}`);
    }
    if (tok.decode(ids) === s) roundTrips++;
    else t.equal(tok.decode(ids), s, `round trip ${JSON.stringify(s)}`);
  }
  t.equal(mismatches, 0, `all ${strings.length} strings encode as the reference does`);
  t.equal(roundTrips, strings.length, 'all strings round-trip');
  t.same(tok.encode('hi', { addSpecialTokens: true }), tok.encode('hi', { addSpecialTokens: false }), 'no BOS/EOS added on encode');
  const chat = '<|im_start|>user\nhello<|im_end|>';
  const ids = tok.encode(chat);
  t.equal(ids[0], 3, 'special tokens are single ids');
  t.equal(ids[ids.length - 1], 4);
  t.same(ids, refEncode(chat, m.merges, m.vocab, specials));
  t.equal(tok.decode(ids), chat);
  t.equal(tok.decode(ids, { skipSpecialTokens: true }), 'user\nhello');
  t.ok(tok.encode('the river runs').length < Buffer.byteLength('the river runs'), 'merges compress common text');
});

t.test('tokenizer.json is the HF tokenizers format; list-of-pairs merges read the same', async (t) => {
  const m = trainBpe({ corpus: BUILTIN_CORPUS, vocabSize: 400, specialTokens: ['<|endoftext|>'] });
  const j = bpeTokenizerJson(m) as Record<string, any>;
  t.equal(j.version, '1.0');
  t.same(j.pre_tokenizer, { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true });
  t.equal(j.decoder.type, 'ByteLevel');
  t.equal(j.post_processor.type, 'ByteLevel');
  t.equal(j.normalizer, null);
  t.match(j.model, { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false });
  t.same(j.added_tokens, [{ id: 0, content: '<|endoftext|>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }]);
  t.ok((j.model.merges as string[]).every((s) => s.split(' ').length === 2), 'merges are "a b" strings');
  const ids = Object.values(j.model.vocab as Record<string, number>).sort((a, b) => a - b);
  t.same(ids, [...Array(400).keys()], 'ids are 0..n-1, each once');
  // Newer HF tokenizers write merges as [a, b] pairs; ours must read the same either way.
  const dir = trainedDir(t, m, { bos: '<|endoftext|>', eos: '<|endoftext|>', pad: null });
  const pairs = { ...j, model: { ...j.model, merges: m.merges } };
  const dir2 = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-bpe-pairs-'));
  t.teardown(() => fs.rmSync(dir2, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir2, 'tokenizer.json'), JSON.stringify(pairs));
  fs.copyFileSync(path.join(dir, 'tokenizer_config.json'), path.join(dir2, 'tokenizer_config.json'));
  const a = loadTokenizer(dir);
  const b = loadTokenizer(dir2);
  for (const s of FIXED) t.same(b.encode(s), a.encode(s), `pairs form: ${JSON.stringify(s).slice(0, 30)}`);
  const cfg = tokenizerConfigJson(m, { bosToken: '<|endoftext|>', eosToken: '<|endoftext|>', padToken: null, modelMaxLength: 1024, chatTemplate: 'x' });
  t.match(cfg, { tokenizer_class: 'PreTrainedTokenizerFast', bos_token: '<|endoftext|>', eos_token: '<|endoftext|>', pad_token: null, model_max_length: 1024, chat_template: 'x', clean_up_tokenization_spaces: false });
});

t.test('errors', async (t) => {
  const e1 = t.throws(() => trainBpe({ corpus: 'x', vocabSize: 257, specialTokens: ['<a>', '<b>'] })) as RlhfError;
  t.equal(e1.code, 'E_ARGUMENT');
  t.match(e1.message, /258/);
  const m = trainBpe({ corpus: 'abab', vocabSize: 300, specialTokens: ['<s>'] });
  const e2 = t.throws(() => tokenizerConfigJson(m, { bosToken: '<x>', eosToken: '<s>', padToken: null, modelMaxLength: 8, chatTemplate: null })) as RlhfError;
  t.equal(e2.code, 'E_ARGUMENT');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rlhf-tok-err-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const missing = t.throws(() => loadTokenizer(dir)) as RlhfError;
  t.equal(missing.code, 'E_TOKENIZER');
  t.match(missing.message, path.join(dir, 'tokenizer.json'));
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), '{"model": ');
  const bad = t.throws(() => loadTokenizer(dir)) as RlhfError;
  t.equal(bad.code, 'E_TOKENIZER');
  t.match(bad.message, 'tokenizer.json');
  writeTokenizerFiles(dir, m, { bosToken: '<s>', eosToken: '<s>', padToken: null, modelMaxLength: 8, chatTemplate: null });
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<nope>' }));
  const unknown = t.throws(() => loadTokenizer(dir)) as RlhfError;
  t.equal(unknown.code, 'E_TOKENIZER');
  t.match(unknown.message, /tokenizer_config\.json: bos_token "<nope>" is not in the vocabulary/);
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: { content: '<s>', __type: 'AddedToken' } }));
  t.equal(loadTokenizer(dir).bosTokenId, 0, 'AddedToken-dict form of a special token');
});
