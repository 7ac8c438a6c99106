// Calls to the fractalflow server (see /docs on a running server).

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

function headers(apiKey?: string): Record<string, string> {
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

export function eventsUrl(serverUrl: string, job: JobCreated, apiKey?: string): string {
  const url = new URL(job.events_url, serverUrl);
  if (apiKey) url.searchParams.set("api_key", apiKey);
  return url.toString();
}
