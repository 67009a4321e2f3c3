import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { RlhfError, callNative, fromNative } from '../lib/errors';
import { native } from '../lib/native';
import { runCli, cliBuilt } from './helpers/cli';

t.test('native errors surface as RlhfError with the code and the caller stack', async (t) => {
  const err = t.throws(() => callNative(() => new (native().SafetensorsFile)('/nonexistent/dir/x.safetensors'))) as RlhfError;
  t.type(err, RlhfError);
  t.equal(err.code, 'E_IO');
  t.match(err.message, /\/nonexistent\/dir\/x\.safetensors/);
  t.match(err.stack ?? '', /errors\.test\.ts/, 'stack shows the JS call site');
});

t.test('native argument errors carry E_ARGUMENT', async (t) => {
  const err = t.throws(() => callNative(() => new (native().SafetensorsFile)(42 as unknown as string))) as RlhfError;
  t.equal(err.code, 'E_ARGUMENT');
});

t.test('fromNative keeps unknown errors as E_INTERNAL and passes RlhfError through', async (t) => {
  const e = new RlhfError('E_CONFIG', 'x');
  t.equal(fromNative(e), e);
  t.equal(fromNative(new TypeError('boom')).code, 'E_INTERNAL');
  t.equal(fromNative({ code: 'E_IO', message: 'm' }).code, 'E_IO');
});

t.test('the loader explains what it tried when the addon cannot load', async (t) => {
  const script = `
    process.env.RLHF_NATIVE_PATH = '/nonexistent/rlhf.node';
    const nodeGypBuild = require.resolve('node-gyp-build');
    // node-gyp-build's two entry points (load and resolve), both finding nothing.
    const none = () => { throw new Error('No native build was found for platform=linux'); };
    require.cache[nodeGypBuild] = { id: nodeGypBuild, filename: nodeGypBuild, loaded: true,
      exports: Object.assign(none, { resolve: none, path: none }) };
    const { native } = require(${JSON.stringify(path.join(__dirname, '..', 'dist', 'lib', 'native.js'))});
    try { native(); console.log('LOADED'); } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }
  `;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', cwd: path.join(__dirname, '..') });
  const out = JSON.parse(r.stdout.trim());
  t.equal(out.code, 'E_NATIVE_LOAD');
  t.match(out.message, /Tried:/);
  t.match(out.message, /RLHF_NATIVE_PATH=\/nonexistent\/rlhf\.node/);
  t.match(out.message, /node-gyp-build/);
  t.match(out.message, /What to do: no binary was built; run `npm rebuild rlhf-native`/);
});

t.test('CLI: unknown command and missing arguments fail with exit 1 and no stack', { skip: !cliBuilt() && 'CLI not compiled' }, async (t) => {
  const r = runCli(['frobnicate']);
  t.equal(r.status, 1);
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace');
  const r2 = runCli(['inspect']);
  t.equal(r2.status, 1);
  const r3 = runCli(['inspect', '/nonexistent/file.safetensors']);
  t.equal(r3.status, 1);
  t.equal(r3.stderr.trim().split('\n').length, 1, 'one line');
  t.match(r3.stderr, /E_IO: \/nonexistent\/file\.safetensors/);
});
