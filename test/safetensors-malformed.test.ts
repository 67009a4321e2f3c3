// Every malformed-file rule of the reader, one test each: the error is an
// RlhfError E_SAFETENSORS whose single-line message names the file and says
// what is wrong. Cases live in safetensors-cases.ts (shared with the CLI test).
import t from 'tap';
import * as fs from 'node:fs';
import { RlhfError } from '../lib/errors';
import { openSafetensors } from '../lib/safetensors';
import { MALFORMED_CASES, stBytes, entry, tmpDir, writeCase } from './safetensors-cases';

const obj2 = (...entries: string[]) => `{${entries.join(',')}}`;

const dir = tmpDir();
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

MALFORMED_CASES.forEach((c, i) => {
  t.test(c.name, async (t) => {
    const file = writeCase(dir, c, i);
    const err = t.throws(() => openSafetensors(file)) as RlhfError;
    t.type(err, RlhfError);
    t.equal(err.code, 'E_SAFETENSORS');
    t.ok(err.message.startsWith(`${file}: `), 'message starts with the file path');
    t.ok(err.message.includes(c.message), `message has "${c.message}"\n  got: ${err.message}`);
    t.notOk(err.message.includes('\n'), 'message is one line');
  });
});

t.test('the validation is no stricter than the format: edge cases that must open', async (t) => {
  const ok: Array<[string, Buffer]> = [
    ['no tensors at all', stBytes('{}')],
    ['only __metadata__', stBytes('{"__metadata__":{"a":"b"}}')],
    ['__metadata__ null (serde reads it as absent)', stBytes('{"__metadata__":null}')],
    ['trailing JSON whitespace after the header', stBytes('{} \t\r\n  ')],
    ['JSON whitespace before the header (the reference reads it)', stBytes(' \n{}')],
    ['a tensor name given twice: the last entry counts', stBytes(obj2(entry('a', 'U8', '[4]', '[4,8]'), entry('a', 'U8', '[4]', '[0,4]')), 4)],
    ['a metadata key given twice: the last value counts', stBytes('{"__metadata__":{"k":"a","k":"b"}}')],
    ['other keys in an entry are ignored, whatever they hold', stBytes('{"a":{"dtype":"U8","shape":[4],"x":[1,{"q":null,"q":2}],"data_offsets":[0,4],"x":0}}', 4)],
    ['an entry as an array [dtype, shape, data_offsets]', stBytes('{"a":["U8",[4],[0,4]]}', 4)],
    ['header keys not in data order', stBytes(`{${entry('b', 'U8', '[2]', '[2,4]')},${entry('a', 'U8', '[2]', '[0,2]')}}`, 4)],
    ['two empty tensors at the same offset', stBytes(`{${entry('x', 'F32', '[0]', '[0,0]')},${entry('y', 'F64', '[3,0]', '[0,0]')}}`)],
    ['a scalar', stBytes(`{${entry('s', 'F64', '[]', '[0,8]')}}`, 8)],
    ['escapes and non-ASCII in names', stBytes('{"\\u00e9\\n\\"\\/ \u{1F600}":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', 1)],
    ['a surrogate pair escape', stBytes(`{"\\ud83d\\ude00":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, 1)],
    ['an F4 tensor with an even count', stBytes(`{${entry('q', 'F4', '[2,3]', '[0,3]')}}`, 3)],
    ['the newer dtypes', stBytes(`{${entry('c', 'C64', '[1]', '[0,8]')},${entry('e', 'F8_E8M0', '[2]', '[8,10]')}}`, 10)],
    ['a huge dim beside a zero dim', stBytes(`{${entry('z', 'U8', '[0,18446744073709551615]', '[0,0]')}}`)],
    ['nesting at the depth limit (127)', stBytes('{"__metadata__":{},"x":' + '['.repeat(125) + ']'.repeat(125) + '}')],
  ];
  for (const [name, bytes] of ok) {
    const file = `${dir}/ok-${name.replace(/[^a-z0-9]+/gi, '_')}.safetensors`;
    fs.writeFileSync(file, bytes);
    if (name.startsWith('nesting')) {
      // Deep but within the limit: the JSON parses, then the entry is rejected (an array of one, not [dtype, shape, data_offsets]).
      const err = t.throws(() => openSafetensors(file)) as RlhfError;
      t.match(err.message, /tensor "x": an entry written as an array must hold/, name);
      continue;
    }
    t.doesNotThrow(() => openSafetensors(file).close(), name);
  }
  const f = openSafetensors(`${dir}/ok-escapes_and_non_ASCII_in_names.safetensors`);
  t.same(f.tensorNames, ['\u00e9\n"/ \u{1F600}']);
  f.close();
  const twice = openSafetensors(`${dir}/ok-a_tensor_name_given_twice_the_last_entry_counts.safetensors`);
  t.same(twice.header.tensors.map((x) => [x.name, x.dataOffsets]), [['a', [0, 4]]], 'the last entry of a repeated name');
  twice.close();
  const meta = openSafetensors(`${dir}/ok-a_metadata_key_given_twice_the_last_value_counts.safetensors`);
  t.same(meta.metadata, { k: 'b' }, 'the last value of a repeated metadata key');
  meta.close();
  const g = openSafetensors(`${dir}/ok-a_huge_dim_beside_a_zero_dim.safetensors`);
  t.same(g.header.tensors[0].shape, [0, 18446744073709551615]);
  g.close();
});
