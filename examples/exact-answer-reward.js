/**
 * A verifiable reward for the demo world (examples/grpo.yaml): 1 when the
 * completion is the prompt row's `answer` (for a harmful request, the
 * refusal), else 0; a completion that carries the answer among other words
 * gets 0.5, so that early, wordy samples still point the right way.
 * The loader (lib/reward/module.ts) calls reward({prompt, completion, row})
 * once per sampled completion.
 */
'use strict';

const norm = (s) => String(s).trim().toLowerCase().replace(/[.!]+$/, '');

exports.reward = function reward({ completion, row }) {
  const want = norm(row.answer);
  const got = norm(completion);
  if (got === want) return 1;
  return got.split(/\s+/).includes(want) ? 0.5 : 0;
};
