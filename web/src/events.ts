// The server's job events (docs/events.md) and the UI state they drive.
// Kept free of React and the DOM so the rules, above all "stale events change nothing",
// are unit-tested on their own.

export type JobState = "queued" | "running" | "done" | "error" | "cancelled";

interface EventBase {
  id: number;
  job: string;
}

export type JobEvent =
  | (EventBase & { type: "queued"; position: number })
  | (EventBase & { type: "stage"; stage: string; step: number; total: number })
  | (EventBase & {
      type: "step";
      stage: string;
      step: number;
      total: number;
      elapsed: number;
      blocks_run: number | null;
      preview: string | null;
    })
  | (EventBase & { type: "done"; images: string[]; metadata: Record<string, unknown> })
  | (EventBase & { type: "error"; message: string })
  | (EventBase & { type: "cancelled" });

export const FINAL_STATES: readonly JobState[] = ["done", "error", "cancelled"];

export interface ActiveJob {
  id: string;
  state: JobState;
  stage: string;
  step: number;
  total: number;
  elapsed: number;
  preview: string | null;
  error: string | null;
  lastEventId: number;
}

/** One image's health report from the server's metadata (``metadata.health[i]``). */
export interface ImageHealth {
  finite: boolean;
  blank: boolean;
  out_of_range: number;
  flagged: boolean;
  alignment?: number;
  probable_hallucination?: boolean;
}

export interface GalleryItem {
  jobId: string;
  imageUrl: string;
  metadata: Record<string, unknown>;
  health?: ImageHealth;
}

/** Which model made an image: its A/B variant and version where the server routes, else its name. */
export function madeBy(metadata: Record<string, unknown>): string {
  const variant = metadata.variant as string | undefined;
  if (variant && variant !== "default") return `${variant} (${String(metadata.model_version ?? "")})`;
  return String(metadata.model ?? "");
}

/** What is wrong with an image, in words for a badge, or null when nothing is. */
export function healthWarning(health: ImageHealth | undefined): string | null {
  if (!health) return null;
  const problems: string[] = [];
  if (!health.finite) problems.push("non-finite values");
  if (health.blank) problems.push("blank");
  if (health.flagged && health.finite && !health.blank) problems.push("colours out of range");
  if (health.probable_hallucination) {
    problems.push(`may not show the prompt (alignment ${(health.alignment ?? 0).toFixed(2)})`);
  }
  return problems.length ? problems.join("; ") : null;
}

export interface UiState {
  job: ActiveJob | null;
  gallery: GalleryItem[];
}

export type UiAction =
  | { type: "submitted"; id: string }
  | { type: "event"; event: JobEvent; serverUrl: string }
  | { type: "cancelled-locally"; id: string }
  | { type: "failed"; message: string };

export const initialState: UiState = { job: null, gallery: [] };

export function isFinal(state: JobState): boolean {
  return FINAL_STATES.includes(state);
}

/** Whether an event belongs to the job on screen and may still change it. */
export function isLive(state: UiState, event: JobEvent): boolean {
  const job = state.job;
  return job !== null && event.job === job.id && !isFinal(job.state) && event.id > job.lastEventId;
}

function newJob(id: string): ActiveJob {
  return { id, state: "queued", stage: "", step: 0, total: 0, elapsed: 0, preview: null, error: null, lastEventId: -1 };
}

export function absoluteUrl(serverUrl: string, path: string): string {
  return new URL(path, serverUrl.endsWith("/") ? serverUrl : serverUrl + "/").toString();
}

export function uiReducer(state: UiState, action: UiAction): UiState {
  switch (action.type) {
    case "submitted":
      return { ...state, job: newJob(action.id) };
    case "cancelled-locally":
      if (!state.job || state.job.id !== action.id || isFinal(state.job.state)) return state;
      return { ...state, job: { ...state.job, state: "cancelled" } };
    case "failed":
      return state.job
        ? { ...state, job: { ...state.job, state: "error", error: action.message } }
        : { ...state, job: { ...newJob(""), state: "error", error: action.message } };
    case "event": {
      const event = action.event;
      if (!isLive(state, event)) return state; // stale: another job's, after the end, or a replay
      const job = { ...(state.job as ActiveJob), lastEventId: event.id };
      switch (event.type) {
        case "queued":
          return { ...state, job: { ...job, state: "queued" } };
        case "stage":
          return { ...state, job: { ...job, state: "running", stage: event.stage, step: event.step, total: event.total } };
        case "step":
          return {
            ...state,
            job: {
              ...job,
              state: "running",
              stage: event.stage,
              step: event.step,
              total: event.total,
              elapsed: event.elapsed,
              preview: event.preview ?? job.preview, // replayed older steps carry no preview
            },
          };
        case "done": {
          const health = event.metadata.health as ImageHealth[] | undefined;
          const items = event.images.map((path, index) => ({
            jobId: event.job,
            imageUrl: absoluteUrl(action.serverUrl, path),
            metadata: event.metadata,
            health: health?.[index],
          }));
          return { job: { ...job, state: "done", step: job.total || job.step }, gallery: [...items, ...state.gallery] };
        }
        case "error":
          return { ...state, job: { ...job, state: "error", error: event.message } };
        case "cancelled":
          return { ...state, job: { ...job, state: "cancelled" } };
      }
    }
  }
  return state;
}
