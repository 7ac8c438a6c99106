import { describe, expect, it } from "vitest";
import {
  eulerStep,
  gridJitter,
  guide,
  guidedAt,
  jitterOffset,
  sample,
  seededNoise,
  timeGrid,
  toRgba,
} from "../src/local/sampler";

describe("the browser sampler", () => {
  it("steps on an even grid from 1 to 0, as the pipeline's plain path", () => {
    expect(Array.from(timeGrid(4))).toEqual([1, 0.75, 0.5, 0.25, 0]);
    expect(() => timeGrid(0)).toThrow(/steps=0/);
    expect(() => timeGrid(2.5)).toThrow(/whole number/);
  });

  it("warps the grid toward high noise with a time shift, as time_grid(steps, shift)", () => {
    // torch: time_grid(4, shift=3.0) -> [1, 0.9, 0.75, 0.5, 0] (float32)
    expect(Array.from(timeGrid(4, 3))).toEqual(Array.from(Float32Array.from([1, 0.9, 0.75, 0.5, 0])));
    expect(Array.from(timeGrid(4, 1))).toEqual(Array.from(timeGrid(4)));
    expect(() => timeGrid(4, 0)).toThrow(/time_shift=0/);
  });

  it("lands on the image when the velocity is the straight line's (Euler is exact there)", async () => {
    const image = Float32Array.from([0.5, -0.25, 1, -1]);
    const noise = Float32Array.from([1.5, 0.3, -0.7, 0.2]);
    const line = Float32Array.from(noise, (n, i) => n - image[i]); // v = noise - x0 on every point of the line
    const estimates: number[][] = [];
    const out = await sample(async () => line, noise, 5, ({ x0 }) => void estimates.push(Array.from(x0)));
    Array.from(out).forEach((value, i) => expect(value).toBeCloseTo(image[i], 5));
    expect(estimates).toHaveLength(5);
    estimates.forEach((x0) => x0.forEach((value, i) => expect(value).toBeCloseTo(image[i], 5)));
  });

  it("runs Adams-Bashforth 2 as the pipeline's ab2 sampler does", async () => {
    // tests/test_flow.py::test_ab2_draws_the_numbers_the_browser_sampler_checks holds torch to the same numbers
    const velocity = async (x: Float32Array, t: number) => x.map((value) => value * (1 + t) - 0.5);
    const estimates: number[][] = [];
    const noise = Float32Array.from([1.5, 0.3, -0.7, 0.2]);
    const out = await sample(velocity, noise, 4, ({ x0 }) => void estimates.push(Array.from(x0)), undefined, 3, "ab2");
    [0.7464599609375, 0.3534974753856659, 0.026028692722320557, 0.3207505941390991].forEach((value, i) =>
      expect(out[i]).toBeCloseTo(value, 5),
    );
    const euler = await sample(velocity, noise, 4, undefined, undefined, 3, "euler");
    expect(Array.from(euler)).not.toEqual(Array.from(out));
    estimates[0].forEach((value, i) => expect(value).toBeCloseTo(0.5 - noise[i], 6)); // x - t v at t = 1: x - (2x - 0.5)
  });

  it("rejects a sampler it does not run", async () => {
    await expect(sample(async (x) => x, new Float32Array(4), 2, undefined, undefined, 1, "heun" as never)).rejects.toThrow(
      /sampler heun: the browser runs euler, ab2/,
    );
  });

  it("takes x + (t_next - t) v and estimates x - t v", () => {
    const { next, x0 } = eulerStep(Float32Array.from([1]), Float32Array.from([2]), 0.75, 0.5);
    expect(next[0]).toBeCloseTo(0.5);
    expect(x0[0]).toBeCloseTo(-0.5);
  });

  it("guides: 1 is the conditional velocity, 0 the unconditional, 3 extrapolates", () => {
    const cond = Float32Array.from([1, 2]);
    const uncond = Float32Array.from([0, 4]);
    expect(Array.from(guide(cond, uncond, 1))).toEqual([1, 2]);
    expect(Array.from(guide(cond, uncond, 0))).toEqual([0, 4]);
    expect(Array.from(guide(cond, uncond, 3))).toEqual([3, -2]);
  });

  it("guides within the model's guidance interval only, ends included, and everywhere without one", () => {
    const interval: [number, number] = [0.5, 1];
    expect([1, 0.75, 0.5, 0.25, 0].map((t) => guidedAt(t, interval))).toEqual([true, true, true, false, false]);
    expect([1, 0.5, 0].map((t) => guidedAt(t, null))).toEqual([true, true, true]);
  });

  it("stops when cancelled", async () => {
    const controller = new AbortController();
    let calls = 0;
    const velocity = async (x: Float32Array) => {
      if (++calls === 2) controller.abort();
      return x;
    };
    await expect(sample(velocity, new Float32Array(4), 10, undefined, controller.signal)).rejects.toThrow(/cancelled/);
    expect(calls).toBe(2);
  });

  it("turns [-1, 1] channel planes into clamped, rounded RGBA bytes", () => {
    const size = 2;
    const chw = Float32Array.from([-1, 0, 1, 3, /* green */ 0, 0, 0, 0, /* blue */ -5, 0.5, 0, 0]);
    const rgba = Array.from(toRgba(chw, size));
    expect(rgba.slice(0, 4)).toEqual([0, 128, 0, 255]);
    expect(rgba.slice(4, 8)).toEqual([128, 128, 191, 255]);
    expect(rgba.slice(8, 16)).toEqual([255, 128, 128, 255, 255, 128, 128, 255]);
  });

  it("draws the same standard normal noise for a seed, and other noise for another", () => {
    const noise = seededNoise(7, 20_000);
    expect(Array.from(seededNoise(7, 8))).toEqual(Array.from(noise.slice(0, 8)));
    expect(Array.from(seededNoise(8, 8))).not.toEqual(Array.from(noise.slice(0, 8)));
    const mean = noise.reduce((a, b) => a + b, 0) / noise.length;
    const variance = noise.reduce((a, b) => a + (b - mean) ** 2, 0) / noise.length;
    expect(Math.abs(mean)).toBeLessThan(0.03);
    expect(Math.abs(variance - 1)).toBeLessThan(0.05);
  });
});

describe("the browser's noise", () => {
  it("is what Python's browser_noise gives for the same seed (tests/fixtures/browser-noise.json)", async () => {
    const { readFileSync } = await import("node:fs");
    const fixture = JSON.parse(readFileSync(new URL("./fixtures/browser-noise.json", import.meta.url), "utf8"));
    for (const [seed, values] of Object.entries(fixture.seeds) as [string, number[]][]) {
      expect(Array.from(seededNoise(Number(seed), values.length))).toEqual(values);
    }
  });
});

describe("grid jitter", () => {
  it("moves the grid as Python's GridJitter does (fixtures/grid-jitter.json)", async () => {
    const { readFileSync } = await import("node:fs");
    const fixture = JSON.parse(readFileSync(new URL("./fixtures/grid-jitter.json", import.meta.url), "utf8"));
    const ramp = Float32Array.from(fixture.ramp as number[]);
    const velocity = async (x: Float32Array, t: number) => x.map((value, i) => value * ramp[i] + t);
    const jittered = gridJitter(velocity, fixture.amplitude, fixture.size);
    (fixture.offsets as [number, number][]).forEach((offset, call) => {
      expect(jitterOffset(call, fixture.amplitude)).toEqual(offset);
    });
    for (const call of fixture.calls as { t: number; x: number[]; velocity: number[] }[]) {
      const got = await jittered(Float32Array.from(call.x), call.t);
      got.forEach((value, i) => expect(value).toBeCloseTo(call.velocity[i], 4));
    }
  });

  it("is the velocity itself at amplitude 0", async () => {
    const velocity = async (x: Float32Array) => x.map((value) => 2 * value);
    expect(gridJitter(velocity, 0, 4)).toBe(velocity);
  });
});
