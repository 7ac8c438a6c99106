// The sampler of the Python pipeline's plain path, for generation in the browser: a time
// grid from 1 to 0 (even, or warped by the model's time shift), Euler or Adams-Bashforth 2
// steps, classifier-free guidance within the model's guidance interval. Pure array code (no
// onnxruntime, no DOM), so it is unit-tested on its own; src/fractalflow/export/runtime.py
// is the same loop in numpy.

/**
 * `steps + 1` flow times from 1 (noise) to 0 (image): an even grid warped to
 * `shift t / (1 + (shift - 1) t)`, as `fractalflow.flow.samplers.time_grid` (shift 1: even;
 * above 1, more steps at high noise).
 */
export function timeGrid(steps: number, shift = 1): Float32Array {
  if (!Number.isInteger(steps) || steps < 1) throw new Error(`steps=${steps}: give a whole number of steps >= 1`);
  if (!(shift > 0 && Number.isFinite(shift))) throw new Error(`time_shift=${shift}: give a finite number > 0`);
  return Float32Array.from({ length: steps + 1 }, (_, i) => {
    const t = Math.fround(1 - i / steps);
    return (shift * t) / (1 + (shift - 1) * t);
  });
}

/** `uncond + guidance * (cond - uncond)`: the guided velocity from one batch of both rows. */
export function guide(conditional: Float32Array, unconditional: Float32Array, guidance: number): Float32Array {
  const out = new Float32Array(conditional.length);
  for (let i = 0; i < out.length; i++) {
    out[i] = unconditional[i] + guidance * (conditional[i] - unconditional[i]);
  }
  return out;
}

/** A guidance interval `[low, high]` of flow times (`guidance_interval` in the model's generation_config.json). */
export type GuidanceInterval = [number, number] | null;

/** Whether guidance applies at flow time `t`: everywhere without an interval, else within it (ends included). */
export function guidedAt(t: number, interval: GuidanceInterval): boolean {
  return interval === null || (interval[0] <= t && t <= interval[1]);
}

/**
 * One step from `t` to `tNext` along `moved` (Euler: the velocity `v` itself), and the
 * clean-image estimate `x - t v` the preview shows, whatever the sampler moves along.
 */
export function eulerStep(x: Float32Array, v: Float32Array, t: number, tNext: number, moved: Float32Array = v) {
  const next = new Float32Array(x.length);
  const x0 = new Float32Array(x.length);
  const dt = tNext - t;
  for (let i = 0; i < x.length; i++) {
    next[i] = x[i] + dt * moved[i];
    x0[i] = x[i] - t * v[i];
  }
  return { next, x0 };
}

/** The samplers the browser runs, as `fractalflow.export.runtime.RUNTIME_SAMPLERS`. */
export const SAMPLERS = ["euler", "ab2"] as const;
export type SamplerName = (typeof SAMPLERS)[number];

/** `name` as a sampler the browser runs, or an error that names the ones it does. */
export function browserSampler(name: string): SamplerName {
  if (!(SAMPLERS as readonly string[]).includes(name)) {
    throw new Error(`sampler ${name}: the browser runs ${SAMPLERS.join(", ")}`);
  }
  return name as SamplerName;
}

/**
 * The velocity a step moves along: `v` itself (Euler, and the first step of Adams-Bashforth 2),
 * or Adams-Bashforth 2's `v + h / (2 hPrev) (v - vPrev)` from the previous step's velocity
 * and size, as `fractalflow.flow.samplers.AdamsBashforth2`.
 */
export function ab2Velocity(v: Float32Array, h: number, previous: { v: Float32Array; h: number } | null): Float32Array {
  if (previous === null) return v;
  const ratio = h / (2 * previous.h);
  return Float32Array.from(v, (value, i) => value + ratio * (value - previous.v[i]));
}

export type Velocity = (x: Float32Array, t: number) => Promise<Float32Array>;

// the R2 low-discrepancy sequence's steps, as fractalflow.flow.jitter.R2_STEPS
const R2_STEPS = [0.7548776662466927, 0.5698402909980532];

/**
 * The `[dy, dx]` pixel shift of velocity evaluation number `call` under grid jitter, each
 * spread evenly over the whole pixels in `[-amplitude, amplitude]`; `[0, 0]` for call 0. The
 * same numbers as `fractalflow.flow.jitter.jitter_offset`.
 */
export function jitterOffset(call: number, amplitude: number): [number, number] {
  const [dy, dx] = R2_STEPS.map((step) => Math.floor((2 * amplitude + 1) * ((0.5 + call * step) % 1)) - amplitude);
  return [dy, dx];
}

/**
 * Grid jitter (`grid_jitter` in the model's generation_config.json), as the Python pipeline's
 * `GridJitter`: `velocity` evaluated on the `(C, S, S)` image seen through a frame moved by the
 * next offset (the rows and columns it opens mirrored), the result moved back; pixels the frame
 * left out keep their last velocity. The network's token grid falls elsewhere on every step,
 * so it leaves no seams. Amplitude 0 is `velocity` itself.
 */
export function gridJitter(velocity: Velocity, amplitude: number, size: number): Velocity {
  if (amplitude === 0) return velocity;
  const pad = Math.min(amplitude, size - 1);
  const reflect = (i: number) => (i < 0 ? -i : i >= size ? 2 * (size - 1) - i : i);
  let calls = 0;
  let last: Float32Array | null = null;
  return async (x, t) => {
    const [dy, dx] = jitterOffset(calls++, pad);
    if (last === null || (dy === 0 && dx === 0)) {
      last = await velocity(x, t);
      return last;
    }
    const plane = size * size;
    const moved = new Float32Array(x.length);
    for (let c = 0; c < x.length / plane; c++) {
      for (let i = 0; i < size; i++) {
        for (let j = 0; j < size; j++) {
          moved[c * plane + i * size + j] = x[c * plane + reflect(i - dy) * size + reflect(j - dx)];
        }
      }
    }
    const out = await velocity(moved, t);
    const next = Float32Array.from(last);
    for (let c = 0; c < x.length / plane; c++) {
      for (let i = Math.max(0, -dy); i < Math.min(size, size - dy); i++) {
        for (let j = Math.max(0, -dx); j < Math.min(size, size - dx); j++) {
          next[c * plane + i * size + j] = out[c * plane + (i + dy) * size + (j + dx)];
        }
      }
    }
    last = next;
    return next;
  };
}

export interface StepInfo {
  step: number; // 1-based: steps done
  total: number;
  t: number;
  x0: Float32Array;
}

/**
 * Integrate from `noise` at t = 1 to t = 0 on `timeGrid(steps, shift)` with `sampler`;
 * `onStep` after every step; stops when `signal` aborts.
 */
export async function sample(
  velocity: Velocity,
  noise: Float32Array,
  steps: number,
  onStep?: (info: StepInfo) => void | Promise<void>,
  signal?: AbortSignal,
  shift = 1,
  sampler: SamplerName = "euler",
): Promise<Float32Array> {
  browserSampler(sampler);
  const times = timeGrid(steps, shift);
  let x = noise;
  let previous: { v: Float32Array; h: number } | null = null;
  for (let i = 0; i < steps; i++) {
    if (signal?.aborted) throw new DOMException("generation cancelled", "AbortError");
    const [t, tNext] = [times[i], times[i + 1]];
    const v = await velocity(x, t);
    const moved = sampler === "ab2" ? ab2Velocity(v, tNext - t, previous) : v;
    const { next, x0 } = eulerStep(x, v, t, tNext, moved);
    await onStep?.({ step: i + 1, total: steps, t, x0 });
    x = next;
    previous = { v, h: tNext - t };
  }
  return x;
}

/** `(C, S, S)` channel-first values in [-1, 1] -> RGBA bytes for ImageData, rounded as the pipeline does. */
export function toRgba(chw: Float32Array, size: number): Uint8ClampedArray<ArrayBuffer> {
  const plane = size * size;
  const rgba = new Uint8ClampedArray(plane * 4);
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++) {
      const value = Math.min(1, Math.max(-1, chw[c * plane + p]));
      rgba[p * 4 + c] = Math.round((value + 1) * 127.5);
    }
    rgba[p * 4 + 3] = 255;
  }
  return rgba;
}

/**
 * Standard normal noise from a seed (mulberry32 and Box-Muller): the same seed gives the
 * same image in every browser, but not the server's image for that seed (torch's generator
 * is not reproduced here; pass the server's noise to `sample` for that).
 */
export function seededNoise(seed: number, count: number): Float32Array {
  let state = seed >>> 0;
  const uniform = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return (((z ^ (z >>> 14)) >>> 0) + 0.5) / 4294967296; // (0, 1)
  };
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const radius = Math.sqrt(-2 * Math.log(uniform()));
    const angle = 2 * Math.PI * uniform();
    out[i] = radius * Math.cos(angle);
    if (i + 1 < count) out[i + 1] = radius * Math.sin(angle);
  }
  return out;
}
