import t from 'tap';
import { RlhfError } from '../lib/errors';
import { applyChatTemplate, chatmlTemplate } from '../lib/tokenizer/chat-template';

const TWO_TURNS = [
  { role: 'user', content: 'What is 2+2?' },
  { role: 'assistant', content: 'It is 4.' },
];

t.test('ChatML, 2 turns', async (t) => {
  t.equal(
    applyChatTemplate(chatmlTemplate(false), TWO_TURNS),
    '<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\nIt is 4.<|im_end|>\n',
  );
  t.equal(
    applyChatTemplate(chatmlTemplate(true), TWO_TURNS, { bosToken: '<s>', eosToken: '</s>' }),
    '<s><|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\nIt is 4.<|im_end|>\n',
  );
  t.equal(
    applyChatTemplate(chatmlTemplate(false), TWO_TURNS.slice(0, 1), { addGenerationPrompt: true }),
    '<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n',
    'generation prompt',
  );
});

// Llama-2-chat's template as published in its tokenizer_config.json.
const LLAMA2_CHAT =
  "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

t.test("third-party template: Llama-2-chat's", async (t) => {
  const out = applyChatTemplate(LLAMA2_CHAT, [{ role: 'system', content: 'Be brief.' }, ...TWO_TURNS], { bosToken: '<s>', eosToken: '</s>' });
  t.equal(out, '<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 2+2? [/INST] It is 4. </s>');
  const err = t.throws(() => applyChatTemplate(LLAMA2_CHAT, [TWO_TURNS[1]], { bosToken: '<s>', eosToken: '</s>' })) as RlhfError;
  t.equal(err.code, 'E_TOKENIZER');
  t.match(err.message, /roles must alternate/, "the template's own raise_exception message");
});

t.test('broken template -> E_TOKENIZER', async (t) => {
  const err = t.throws(() => applyChatTemplate('{% for m in messages %}{{ m.content }}', TWO_TURNS)) as RlhfError;
  t.equal(err.code, 'E_TOKENIZER');
  t.match(err.message, /chat template/);
});

t.test('extra variables reach the template', async (t) => {
  t.equal(applyChatTemplate('{{ date_string }}|{{ messages | length }}', TWO_TURNS, { extra: { date_string: '1 Jan 2025' } }), '1 Jan 2025|2');
});
