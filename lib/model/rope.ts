/**
 * RoPE settings of a config.json: transformers v5's rope_parameters or v4's
 * rope_theta + rope_scaling, normalised to one RopeConfig, and back.
 */
import { fail, Reader, type Json } from './config-reader';

export type RopeScaling =
  | { type: 'none' }
  | { type: 'linear'; factor: number }
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositions: number }
  /** LongRoPE (Phi-3): divisors of each frequency up to / past originalMaxPositions; cos and sin times attentionFactor. */
  | { type: 'longrope'; shortFactor: number[]; longFactor: number[]; originalMaxPositions: number; attentionFactor: number };

export interface RopeConfig {
  theta: number;
  scaling: RopeScaling;
}

/**
 * rope_theta + rope_scaling (transformers v4) or rope_parameters (v5); both
 * present must agree. `longrope` is accepted where the architecture uses it
 * (Phi-3) and refused elsewhere.
 */
export function parseRope(r: Reader, maxPositions: number, longrope: boolean): RopeConfig {
  const params = r.obj.rope_parameters;
  const scaling = r.obj.rope_scaling;
  const fromDict = (d: unknown, key: string): { theta?: number; scaling: RopeScaling } => {
    if (d === undefined || d === null) return { scaling: { type: 'none' } };
    if (typeof d !== 'object' || Array.isArray(d)) fail(r.file, `"${key}" must be an object, got ${JSON.stringify(d)}`, key);
    const dr = new Reader(d as Json, r.file, `${key}.`);
    if (!dr.has('rope_type') && !dr.has('type') && !dr.has('rope_theta'))
      fail(r.file, `"${key}" has no "rope_type" (per-layer-type rope parameters are not supported)`, key);
    const type = dr.alias('rope_type', 'type', (k) => dr.str(k, 'default'));
    const theta = dr.has('rope_theta') ? dr.posNum('rope_theta') : undefined;
    switch (type) {
      case 'default':
        return { theta, scaling: { type: 'none' } };
      case 'linear':
        return { theta, scaling: { type: 'linear', factor: dr.posNum('factor') } };
      case 'longrope':
      case 'su': {
        if (!longrope) fail(r.file, `unsupported RoPE type "${type}" in "${key}" for this architecture (LongRoPE is read for Phi-3 only)`, key);
        // LongRoPE (Phi-3; "su" is its old name). original_max_position_embeddings
        // may sit in the dict or at the top level; the attention factor is
        // given, or derived from factor = max_position_embeddings / original.
        const orig = dr.has('original_max_position_embeddings')
          ? dr.posInt('original_max_position_embeddings')
          : r.posInt('original_max_position_embeddings', maxPositions);
        const factor = dr.has('factor') ? dr.posNum('factor') : maxPositions / orig;
        const attentionFactor = dr.has('attention_factor')
          ? dr.posNum('attention_factor')
          : factor <= 1
            ? 1
            : Math.sqrt(1 + Math.log(factor) / Math.log(orig));
        return {
          theta,
          scaling: { type: 'longrope', shortFactor: dr.posNumList('short_factor'), longFactor: dr.posNumList('long_factor'), originalMaxPositions: orig, attentionFactor },
        };
      }
      case 'llama3':
        return {
          theta,
          scaling: {
            type: 'llama3',
            factor: dr.posNum('factor'),
            lowFreqFactor: dr.posNum('low_freq_factor'),
            highFreqFactor: dr.posNum('high_freq_factor'),
            originalMaxPositions: dr.posInt('original_max_position_embeddings'),
          },
        };
      default:
        return fail(
          r.file,
          `unsupported RoPE type "${type}" in "${key}" (dynamic NTK and YaRN are not implemented); supported: default, linear, llama3, longrope`,
          key,
        );
    }
  };
  const v5 = fromDict(params, 'rope_parameters');
  const v4 = fromDict(scaling, 'rope_scaling');
  const v4Theta = r.has('rope_theta') ? r.posNum('rope_theta') : undefined;
  if (params !== undefined && params !== null) {
    if (v4Theta !== undefined && v5.theta !== undefined && v4Theta !== v5.theta)
      fail(r.file, `contradictory keys "rope_theta" (${v4Theta}) and "rope_parameters.rope_theta" (${v5.theta})`, 'rope_theta');
    if (scaling !== undefined && scaling !== null && JSON.stringify(v4.scaling) !== JSON.stringify(v5.scaling))
      fail(r.file, `contradictory keys "rope_scaling" and "rope_parameters"`, 'rope_scaling');
  }
  const scal = params !== undefined && params !== null ? v5.scaling : v4.scaling;
  if (scal.type === 'llama3' && scal.highFreqFactor <= scal.lowFreqFactor)
    fail(r.file, `"high_freq_factor" must be greater than "low_freq_factor" for llama3 RoPE scaling`, 'rope_scaling');
  return { theta: v5.theta ?? v4Theta ?? 10000, scaling: scal };
}

export const ropeToHf = (rope: RopeConfig): Json | null => {
  const s = rope.scaling;
  switch (s.type) {
    case 'none':
      return null;
    case 'linear':
      // `type` too, for transformers versions before `rope_type` (< 4.42).
      return { rope_type: 'linear', type: 'linear', factor: s.factor };
    case 'longrope':
      return {
        rope_type: 'longrope',
        type: 'longrope',
        short_factor: s.shortFactor,
        long_factor: s.longFactor,
        original_max_position_embeddings: s.originalMaxPositions,
        attention_factor: s.attentionFactor,
      };
    case 'llama3':
      return {
        rope_type: 'llama3',
        factor: s.factor,
        low_freq_factor: s.lowFreqFactor,
        high_freq_factor: s.highFreqFactor,
        original_max_position_embeddings: s.originalMaxPositions,
      };
  }
};
