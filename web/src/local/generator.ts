// Generation on this device: the exported ONNX graphs (`fractalflow export --format onnx`) in
// onnxruntime-web, WebGPU where the browser has it and WebAssembly otherwise. Emits the same
// job events as the server's stream, so the UI's reducer drives both the same way.

import type { InferenceSession, Tensor } from "onnxruntime-web";
import { headers } from "../api";
import type { JobEvent } from "../events";
import {
  type GuidanceInterval,
  type SamplerName,
  browserSampler,
  gridJitter,
  guide,
  guidedAt,
  sample,
  seededNoise,
  toRgba,
} from "./sampler";
import { type PromptTokens, type TokenizerJson, WordPieceTokens } from "./tokens";

type Ort = typeof import("onnxruntime-web");
export type Backend = "webgpu" | "wasm";

/** `onnx_export.json` of an export folder, as far as the browser reads it. */
export interface ExportManifest {
  size: number;
  max_length: number;
  parity: Record<string, number>;
}

export interface LocalRequest {
  prompt: string;
  steps: number;
  guidance: number;
  seed: number;
  /** `(3, S, S)` starting noise; default: `seededNoise(seed)` (not the server's noise for that seed). */
  noise?: Float32Array;
}

export interface LocalResult {
  pixels: Float32Array; // (3, S, S) in [-1, 1] scale, before rounding
  rgba: Uint8ClampedArray<ArrayBuffer>;
  seconds: number;
}

let jobsStarted = 0;

/** A job id for a generation on this device (the server's ids are UUIDs: no clash). */
export function newLocalJobId(): string {
  return `local-${++jobsStarted}`;
}

/** The PNG data URL of `(3, S, S)` values in [-1, 1]. */
export function pngDataUrl(chw: Float32Array, size: number): string {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = size;
  const context = canvas.getContext("2d");
  if (!context) throw new Error("this browser gives no 2-D canvas to draw the image on");
  context.putImageData(new ImageData(toRgba(chw, size), size, size), 0, 0);
  return canvas.toDataURL("image/png");
}

async function fetchOk(url: string, apiKey?: string): Promise<Response> {
  const response = await fetch(url, { headers: headers(apiKey) });
  if (!response.ok) throw new Error(`could not load ${url}: ${response.status} ${response.statusText}`);
  return response;
}

export class LocalGenerator {
  private constructor(
    private readonly ort: Ort,
    private readonly transformer: InferenceSession,
    private readonly textEncoder: InferenceSession,
    private readonly tokens: WordPieceTokens,
    readonly manifest: ExportManifest,
    readonly backend: Backend,
    /** Where guidance applies (the export's generation_config.json); null: every step. */
    readonly guidanceInterval: GuidanceInterval,
    /** The time grid's warp (the export's generation_config.json); 1: an even grid. */
    readonly timeShift: number,
    /** Pixels the image moves under the network's grid per step (the export's generation_config.json); 0: none. */
    readonly gridJitter: number,
    /** The sampler (the export's generation_config.json): "euler" or "ab2". */
    readonly sampler: SamplerName,
  ) {}

  /** Loads an export folder served at `assetsUrl` (e.g. the server's `/v1/browser/`). */
  static async load(assetsUrl: string, apiKey?: string, prefer: Backend | "auto" = "auto"): Promise<LocalGenerator> {
    const base = assetsUrl.endsWith("/") ? assetsUrl : `${assetsUrl}/`;
    const ort: Ort = await import("onnxruntime-web/webgpu");
    // threads need a cross-origin isolated page; one thread otherwise (no SharedArrayBuffer)
    ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
    const gpu = prefer !== "wasm" && "gpu" in navigator && (await (navigator as any).gpu.requestAdapter()) !== null;
    const backend: Backend = gpu ? "webgpu" : "wasm";
    const [manifest, tokenizer, defaults] = await Promise.all([
      fetchOk(`${base}onnx_export.json`, apiKey).then((r) => r.json() as Promise<ExportManifest>),
      fetchOk(`${base}tokenizer.json`, apiKey).then((r) => r.json() as Promise<TokenizerJson>),
      // older exports have no word on the interval, the shift, the jitter or the sampler: guidance at
      // every step, an even grid, Euler
      fetch(`${base}generation_config.json`, { headers: headers(apiKey) }).then(
        (r): Promise<{
          guidance_interval?: GuidanceInterval;
          time_shift?: number;
          grid_jitter?: number;
          sampler?: string; // checked by browserSampler
        }> => (r.ok ? r.json() : Promise.resolve({})),
      ),
    ]);
    const options: InferenceSession.SessionOptions = { executionProviders: [backend] };
    const [transformer, textEncoder] = await Promise.all(
      ["transformer.onnx", "text_encoder.onnx"].map(async (name) => {
        const bytes = new Uint8Array(await (await fetchOk(`${base}${name}`, apiKey)).arrayBuffer());
        return ort.InferenceSession.create(bytes, options);
      }),
    );
    const tokens = new WordPieceTokens(tokenizer, manifest.max_length);
    const { guidance_interval: interval = null, time_shift: shift = 1, grid_jitter: jitter = 0 } = defaults;
    const sampler = browserSampler(defaults.sampler ?? "euler"); // refused here, before any image is asked for
    return new LocalGenerator(ort, transformer, textEncoder, tokens, manifest, backend, interval, shift, jitter, sampler);
  }

  /** Text features for one prompt: pooled `(1, 384)`, tokens `(1, L, 384)`, mask `(1, L)`. */
  async encode(prompt: string): Promise<Record<string, Tensor>> {
    const { ids, length }: PromptTokens = this.tokens.encode(prompt);
    const mask = new Uint8Array(length).fill(1);
    const out = await this.textEncoder.run({
      ids: new this.ort.Tensor("int64", ids, [1, length]),
      mask: new this.ort.Tensor("bool", mask, [1, length]),
    });
    return { pooled: out.pooled, tokens: out.tokens, mask: new this.ort.Tensor("bool", mask, [1, length]) };
  }

  private velocity(text: Record<string, Tensor>, guidance: number) {
    const size = this.manifest.size;
    const plane = 3 * size * size;
    const [tokens, pooled] = [text.tokens.data as Float32Array, text.pooled.data as Float32Array];
    const length = text.mask.dims[1];
    const rows = (count: number, data: Float32Array) => {
      if (count === 1) return data;
      const out = new Float32Array(data.length * count);
      for (let row = 0; row < count; row++) out.set(data, row * data.length);
      return out;
    };
    // one row (the prompt) or two (the prompt and the null condition, for guidance)
    const feeds = (count: number) => ({
      pooled: new this.ort.Tensor("float32", rows(count, pooled), [count, pooled.length]),
      tokens: new this.ort.Tensor("float32", rows(count, tokens), [count, length, tokens.length / length]),
      mask: new this.ort.Tensor("bool", new Uint8Array(count * length).fill(1), [count, length]),
      drop: new this.ort.Tensor("bool", Uint8Array.from([0, 1].slice(0, count)), [count]),
    });
    const [single, both] = [feeds(1), feeds(2)];
    return async (x: Float32Array, t: number) => {
      const count = guidance !== 1 && guidedAt(t, this.guidanceInterval) ? 2 : 1;
      const out = await this.transformer.run({
        ...(count === 2 ? both : single),
        x: new this.ort.Tensor("float32", rows(count, x), [count, 3, size, size]),
        t: new this.ort.Tensor("float32", new Float32Array(count).fill(t), [count]),
      });
      const velocity = out.velocity.data as Float32Array;
      return count === 2 ? guide(velocity.subarray(0, plane), velocity.subarray(plane), guidance) : velocity;
    };
  }

  /** Draws one image, emitting `stage`, `step` (with a preview) and `done` events as the server does. */
  async generate(request: LocalRequest, job: string, onEvent: (event: JobEvent) => void, signal?: AbortSignal) {
    const size = this.manifest.size;
    let id = 0;
    const stage = `${size}px`;
    const started = performance.now();
    const noise = request.noise ?? seededNoise(request.seed, 3 * size * size);
    if (noise.length !== 3 * size * size) throw new Error(`noise of ${noise.length} values: this model takes 3x${size}x${size}`);
    onEvent({ id: id++, job, type: "stage", stage, step: 0, total: request.steps });
    const velocity = gridJitter(this.velocity(await this.encode(request.prompt), request.guidance), this.gridJitter, size);
    const pixels = await sample(
      velocity,
      noise,
      request.steps,
      ({ step, total, x0 }) =>
        onEvent({
          id: id++,
          job,
          type: "step",
          stage,
          step,
          total,
          elapsed: (performance.now() - started) / 1000,
          blocks_run: null,
          preview: pngDataUrl(x0, size),
        }),
      signal,
      this.timeShift,
      this.sampler,
    );
    const seconds = (performance.now() - started) / 1000;
    const metadata = {
      prompts: [request.prompt],
      seeds: [request.seed],
      size,
      seconds,
      config: {
        steps: request.steps,
        guidance: request.guidance,
        guidance_interval: this.guidanceInterval,
        time_shift: this.timeShift,
        grid_jitter: this.gridJitter,
        sampler: this.sampler,
      },
      model: `this device (${this.backend})`,
    };
    onEvent({ id: id++, job, type: "done", images: [pngDataUrl(pixels, size)], metadata });
    return { pixels, rgba: toRgba(pixels, size), seconds } satisfies LocalResult;
  }
}
