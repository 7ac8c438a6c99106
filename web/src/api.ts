// Calls to the fractalflow server (see /docs on a running server).

import { absoluteUrl, type JobEvent } from "./events";

export interface GenerateSettings {
  prompt: string;
  resolution: string;
  steps: number;
  guidance: number;
  seed: number | null;
  early_stop: number;
}

export interface JobCreated {
  id: string;
  state: string;
  events_url: string;
  job_url: string;
}

/** The headers of a call to the server: JSON, and the API key when there is one. */
export function headers(apiKey?: string): Record<string, string> {
  const result: Record<string, string> = { "Content-Type": "application/json" };
  if (apiKey) result["X-API-Key"] = apiKey;
  return result;
}

/** The server's explanation of a refused request, as one line. */
export async function errorMessage(response: Response): Promise<string> {
  try {
    const body = await response.json();
    if (Array.isArray(body.detail)) return body.detail.map((d: { msg: string }) => d.msg).join("; ");
    if (body.detail) return String(body.detail);
  } catch {
    // not JSON: fall through to the status line
  }
  return `${response.status} ${response.statusText}`;
}

export async function createJob(serverUrl: string, settings: GenerateSettings, apiKey?: string): Promise<JobCreated> {
  const body: Record<string, unknown> = { ...settings };
  if (settings.seed === null) delete body.seed;
  const response = await fetch(new URL("/v1/generate", serverUrl), {
    method: "POST",
    headers: headers(apiKey),
    body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

export async function cancelJob(serverUrl: string, id: string, apiKey?: string): Promise<void> {
  const response = await fetch(new URL(`/v1/jobs/${id}`, serverUrl), { method: "DELETE", headers: headers(apiKey) });
  if (!response.ok && response.status !== 409) throw new Error(await errorMessage(response));
}

/** Complete `data:` payloads in a server-sent event stream's text, and the unfinished rest. */
export function parseEventStream(text: string): { data: string[]; rest: string } {
  const blocks = text.replaceAll("\r\n", "\n").split("\n\n");
  const rest = blocks.pop() ?? "";
  const data = blocks
    .map((block) =>
      block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n"),
    )
    .filter((payload) => payload !== "");
  return { data, rest };
}

/**
 * Follows a job's server-sent events with fetch, so that the API key travels in a header
 * (EventSource cannot send one, and a key in a URL ends up in logs). Resolves when the
 * stream ends (after the job's final event) or `signal` aborts it.
 */
export async function followEvents(
  serverUrl: string,
  job: JobCreated,
  onEvent: (event: JobEvent) => void,
  signal: AbortSignal,
  apiKey?: string,
): Promise<void> {
  const response = await fetch(new URL(job.events_url, serverUrl), { headers: headers(apiKey), signal });
  if (!response.ok || !response.body) throw new Error(await errorMessage(response));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const parsed = parseEventStream(buffer + value);
    buffer = parsed.rest;
    for (const payload of parsed.data) onEvent(JSON.parse(payload) as JobEvent);
  }
}

/** Whether the server hands out an ONNX export for generation on this device (`/v1/browser/`). */
/** The sampling settings a form shows, as far as the served model sets their defaults. */
export type SamplingDefaults = Partial<Pick<GenerateSettings, "steps" | "guidance" | "early_stop">>;

/**
 * The defaults of `POST /v1/generate`'s request body in an OpenAPI document: the server derives
 * them from the served model's generation_config.json, so a form that starts from them draws
 * what the model's card describes. Settings the document does not state are left out.
 */
export function requestDefaults(openapi: any): SamplingDefaults {
  const body = openapi?.paths?.["/v1/generate"]?.post?.requestBody?.content?.["application/json"]?.schema;
  const name = typeof body?.$ref === "string" ? body.$ref.split("/").pop() : undefined;
  const properties = (name ? openapi?.components?.schemas?.[name] : body)?.properties ?? {};
  const defaults: SamplingDefaults = {};
  for (const key of ["steps", "guidance", "early_stop"] as const) {
    const value = properties[key]?.default;
    if (typeof value === "number" && Number.isFinite(value)) defaults[key] = value;
  }
  return defaults;
}

/** The served model's sampling defaults (`requestDefaults` of the server's /openapi.json); none when it cannot say. */
export async function servedDefaults(serverUrl: string, apiKey?: string): Promise<SamplingDefaults> {
  try {
    const response = await fetch(absoluteUrl(serverUrl, "openapi.json"), { headers: headers(apiKey) });
    return response.ok ? requestDefaults(await response.json()) : {};
  } catch {
    return {};
  }
}

export async function offersBrowserModel(serverUrl: string, apiKey?: string): Promise<boolean> {
  try {
    const response = await fetch(absoluteUrl(serverUrl, "v1/browser/onnx_export.json"), { headers: headers(apiKey) });
    return response.ok;
  } catch {
    return false;
  }
}
