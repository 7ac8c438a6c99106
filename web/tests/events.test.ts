import { describe, expect, it } from "vitest";
import { healthWarning, madeBy, type JobEvent, type UiState, initialState, uiReducer } from "../src/events";

const server = "http://localhost:8000";

function apply(state: UiState, ...events: JobEvent[]): UiState {
  return events.reduce((s, event) => uiReducer(s, { type: "event", event, serverUrl: server }), state);
}

const step = (job: string, id: number, n: number): JobEvent => ({
  id,
  job,
  type: "step",
  stage: n <= 2 ? "32px" : "64px",
  step: n,
  total: 4,
  elapsed: n * 0.01,
  blocks_run: n * 10,
  preview: `data:image/png;base64,preview${n}`,
});
const done = (job: string, id: number): JobEvent => ({
  id,
  job,
  type: "done",
  images: [`/v1/images/${job}.png`],
  metadata: { prompts: ["red heart"], seeds: [3], size: 64 },
});

describe("uiReducer", () => {
  it("follows a job from queued through its steps to a gallery image", () => {
    let state = uiReducer(initialState, { type: "submitted", id: "a" });
    state = apply(state, { id: 0, job: "a", type: "queued", position: 0 }, step("a", 1, 1), step("a", 2, 2));
    expect(state.job).toMatchObject({ state: "running", stage: "32px", step: 2, total: 4 });
    expect(state.job?.preview).toBe("data:image/png;base64,preview2");
    state = apply(state, step("a", 3, 3), done("a", 4));
    expect(state.job?.state).toBe("done");
    expect(state.gallery).toEqual([
      { jobId: "a", imageUrl: "http://localhost:8000/v1/images/a.png", metadata: { prompts: ["red heart"], seeds: [3], size: 64 } },
    ]);
  });

  it("ignores events that arrive after the job was cancelled here", () => {
    let state = uiReducer(initialState, { type: "submitted", id: "a" });
    state = apply(state, step("a", 1, 1));
    state = uiReducer(state, { type: "cancelled-locally", id: "a" });
    const after = apply(state, step("a", 2, 2), done("a", 3));
    expect(after).toBe(state); // not a single field changed
    expect(after.job?.state).toBe("cancelled");
    expect(after.gallery).toEqual([]);
  });

  it("ignores events after the job's final event", () => {
    let state = uiReducer(initialState, { type: "submitted", id: "a" });
    state = apply(state, step("a", 1, 1), done("a", 2));
    const after = apply(state, step("a", 3, 3), { id: 4, job: "a", type: "error", message: "late" }, done("a", 5));
    expect(after).toBe(state);
    expect(after.gallery).toHaveLength(1);
  });

  it("ignores another job's events and replays of events already seen", () => {
    let state = uiReducer(initialState, { type: "submitted", id: "b" });
    state = apply(state, step("b", 1, 1), step("b", 2, 2));
    expect(apply(state, step("a", 3, 3), done("a", 4))).toBe(state); // an older job's stream still talking
    expect(apply(state, step("b", 1, 1))).toBe(state); // a reconnect that replays event 1
  });

  it("a new job starts clean and keeps the gallery", () => {
    let state = uiReducer(initialState, { type: "submitted", id: "a" });
    state = apply(state, step("a", 1, 1), done("a", 2));
    state = uiReducer(state, { type: "submitted", id: "b" });
    expect(state.job).toMatchObject({ id: "b", state: "queued", step: 0, preview: null });
    expect(state.gallery).toHaveLength(1);
  });

  it("shows the server's error and a refused request", () => {
    let state = uiReducer(initialState, { type: "submitted", id: "a" });
    state = apply(state, { id: 0, job: "a", type: "error", message: "unknown resolution" });
    expect(state.job).toMatchObject({ state: "error", error: "unknown resolution" });
    const refused = uiReducer(initialState, { type: "failed", message: "steps: 500 steps is over the limit" });
    expect(refused.job).toMatchObject({ state: "error", error: "steps: 500 steps is over the limit" });
  });
});

describe("image health", () => {
  const healthy = { finite: true, blank: false, out_of_range: 0, flagged: false };

  it("gives each gallery image its own health report", () => {
    const event: JobEvent = {
      id: 1,
      job: "h",
      type: "done",
      images: ["/v1/images/a.png", "/v1/images/b.png"],
      metadata: { health: [healthy, { ...healthy, alignment: 0.05, probable_hallucination: true }] },
    };
    const state = apply(uiReducer(initialState, { type: "submitted", id: "h" }), event);
    expect(state.gallery.map((item) => item.health?.probable_hallucination ?? false)).toEqual([false, true]);
  });

  it("words a warning only for an image with something wrong", () => {
    expect(healthWarning(healthy)).toBeNull();
    expect(healthWarning(undefined)).toBeNull();
    expect(healthWarning({ ...healthy, blank: true, flagged: true })).toBe("blank");
    expect(healthWarning({ ...healthy, alignment: 0.123, probable_hallucination: true })).toBe(
      "may not show the prompt (alignment 0.12)",
    );
  });
});

describe("madeBy", () => {
  it("names the A/B variant and version, or the single model", () => {
    expect(madeBy({ variant: "canary", model_version: "emoji:2", model: "v2" })).toBe("canary (emoji:2)");
    expect(madeBy({ variant: "default", model_version: "", model: "default" })).toBe("default");
  });
});
