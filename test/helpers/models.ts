/**
 * Test models: adjustments to the random-initialised folders of
 * lib/model/init.ts that make them behave like trained ones.
 */
import * as path from 'node:path';
import { openSafetensors, writeSafetensors } from '../../lib/safetensors';

/**
 * A random-initialised model cannot say anything confidently through frozen
 * output layers: the final RMSNorm fixes |h| = sqrt(64) and lm_head rows have
 * norm ~ 0.02 sqrt(64), so every logit stays within about +-1.3 and no LoRA
 * on the linear modules can push a token's log-prob above about -4.9 (the
 * loss plateaus there). Pretrained models have much larger output scales;
 * a final-norm weight of 8 gives this one a comparable head room.
 */
export function sharpenFinalNorm(dir: string, value: number): void {
  const file = path.join(dir, 'model.safetensors');
  const st = openSafetensors(file);
  const tensors = st.header.tensors.map((x) =>
    x.name === 'model.norm.weight' ? { name: x.name, dtype: x.dtype, shape: x.shape, fill: { kind: 'const' as const, value } } : { name: x.name, dtype: x.dtype, shape: x.shape, data: st.tensorBytes(x.name) },
  );
  st.close();
  writeSafetensors(file, tensors, { format: 'pt' });
}
