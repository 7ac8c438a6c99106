import { type CSSProperties, type FormEvent, useCallback, useEffect, useReducer, useRef, useState } from "react";
import { cancelJob, createJob, followEvents, type GenerateSettings, offersBrowserModel, servedDefaults } from "./api";
import { absoluteUrl, healthWarning, type JobEvent, initialState, isFinal, madeBy, uiReducer } from "./events";
import type { LocalGenerator } from "./local/generator";

/** Where images are drawn: by the server, or on this device with the server's ONNX export. */
export type RunOn = "server" | "device";

export type StyleSlot = "root" | "form" | "progress" | "preview" | "gallery" | "item";

export interface NextGenModelUIProps {
  /** Where `fractalflow serve` runs, e.g. "http://localhost:8000". */
  serverUrl: string;
  /** Called once per finished image with its absolute URL and the server's metadata. */
  onImageGenerated?: (imageData: string, metadata: Record<string, unknown>) => void;
  /** Style overrides per part of the component. */
  styles?: Partial<Record<StyleSlot, CSSProperties>>;
  /** The server's API key, when it has one. */
  apiKey?: string;
}

const RESOLUTIONS = ["preview", "standard", "high", "ultra"];

const base: Record<StyleSlot, CSSProperties> = {
  root: { fontFamily: "system-ui, sans-serif", maxWidth: 720, display: "grid", gap: 12 },
  form: { display: "flex", flexWrap: "wrap", gap: 8, alignItems: "end" },
  progress: { width: "100%" },
  preview: { width: 256, height: 256, imageRendering: "pixelated", border: "1px solid #ccc", background: "#fafafa" },
  gallery: { display: "flex", flexWrap: "wrap", gap: 8 },
  item: { display: "grid", gap: 2, fontSize: 12, width: 128 },
};

/** Prompt, settings, a live preview while the server samples, cancel, and a gallery of results. */
export function NextGenModelUI({ serverUrl, onImageGenerated, styles = {}, apiKey }: NextGenModelUIProps) {
  const [state, dispatch] = useReducer(uiReducer, initialState);
  const [settings, setSettings] = useState<GenerateSettings>({
    prompt: "",
    resolution: "standard",
    steps: 20,
    guidance: 3,
    seed: null,
    early_stop: 0.02,
  });
  const edited = useRef(false); // once the user has changed a setting, the server's defaults no longer replace it
  const edit = (next: GenerateSettings) => {
    edited.current = true;
    setSettings(next);
  };
  const [runOn, setRunOn] = useState<RunOn>("server");
  const [deviceOffered, setDeviceOffered] = useState(false);
  const listening = useRef<AbortController | null>(null);
  const notified = useRef(new Set<string>());
  const local = useRef<Promise<LocalGenerator> | null>(null);
  const style = (slot: StyleSlot) => ({ ...base[slot], ...styles[slot] });

  const stopListening = useCallback(() => {
    listening.current?.abort();
    listening.current = null;
  }, []);
  useEffect(() => stopListening, [stopListening]);
  useEffect(() => {
    let current = true;
    offersBrowserModel(serverUrl, apiKey).then((offered) => current && setDeviceOffered(offered));
    // the form starts from the served model's defaults (its generation_config.json)
    servedDefaults(serverUrl, apiKey).then(
      (defaults) => current && !edited.current && setSettings((s) => ({ ...s, ...defaults })),
    );
    return () => {
      current = false;
    };
  }, [serverUrl, apiKey]);

  useEffect(() => {
    if (!onImageGenerated) return;
    for (const item of state.gallery) {
      if (notified.current.has(item.imageUrl)) continue;
      notified.current.add(item.imageUrl);
      onImageGenerated(item.imageUrl, item.metadata);
    }
  }, [state.gallery, onImageGenerated]);

  const running = state.job !== null && !isFinal(state.job.state);

  /** Draws on this device: the same events, through the same reducer, with no request to /v1/generate. */
  async function generateHere(controller: AbortController) {
    const { LocalGenerator, newLocalJobId } = await import("./local/generator");
    const id = newLocalJobId();
    dispatch({ type: "submitted", id });
    local.current ??= LocalGenerator.load(absoluteUrl(serverUrl, "v1/browser/"), apiKey);
    const generator = await local.current.catch((error) => {
      local.current = null; // try again on the next click
      throw error;
    });
    const seed = settings.seed ?? Math.floor(Math.random() * 2 ** 31);
    const request = { prompt: settings.prompt, steps: settings.steps, guidance: settings.guidance, seed };
    const onEvent = (event: JobEvent) => dispatch({ type: "event", event, serverUrl });
    await generator.generate(request, id, onEvent, controller.signal);
  }

  async function submit(event: FormEvent) {
    event.preventDefault();
    if (running || !settings.prompt.trim()) return;
    stopListening();
    if (runOn === "device") {
      const controller = new AbortController();
      listening.current = controller;
      try {
        await generateHere(controller);
      } catch (error) {
        if ((error as Error).name === "AbortError") return;
        dispatch({ type: "failed", message: (error as Error).message });
      }
      return;
    }
    try {
      const job = await createJob(serverUrl, settings, apiKey);
      dispatch({ type: "submitted", id: job.id });
      const controller = new AbortController();
      listening.current = controller;
      const onEvent = (event: JobEvent) => dispatch({ type: "event", event, serverUrl });
      await followEvents(serverUrl, job, onEvent, controller.signal, apiKey);
    } catch (error) {
      if ((error as Error).name === "AbortError") return; // cancelled, or another job started
      dispatch({ type: "failed", message: (error as Error).message });
    }
  }

  async function cancel() {
    if (!state.job || !running) return;
    const id = state.job.id;
    dispatch({ type: "cancelled-locally", id });
    stopListening();
    if (runOn === "device") return; // nothing runs on the server
    try {
      await cancelJob(serverUrl, id, apiKey);
    } catch (error) {
      dispatch({ type: "failed", message: (error as Error).message });
    }
  }

  const number = (key: "steps" | "guidance") => (e: { target: { value: string } }) =>
    edit({ ...settings, [key]: Number(e.target.value) });
  const job = state.job;
  const percent = job && job.total ? Math.round((100 * job.step) / job.total) : 0;

  return (
    <div style={style("root")} data-testid="nextgen-ui">
      <form style={style("form")} onSubmit={submit}>
        <label>
          Prompt
          <input
            aria-label="prompt"
            value={settings.prompt}
            placeholder="red heart"
            onChange={(e) => edit({ ...settings, prompt: e.target.value })}
            style={{ display: "block", width: 280 }}
          />
        </label>
        <label>
          Run on
          <select
            aria-label="run on"
            value={runOn}
            disabled={running}
            onChange={(e) => setRunOn(e.target.value as RunOn)}
            style={{ display: "block" }}
          >
            <option value="server">server</option>
            <option value="device" disabled={!deviceOffered}>
              this device
            </option>
          </select>
        </label>
        <label>
          Resolution
          <select
            aria-label="resolution"
            disabled={runOn === "device"}
            value={settings.resolution}
            onChange={(e) => edit({ ...settings, resolution: e.target.value })}
            style={{ display: "block" }}
          >
            {RESOLUTIONS.map((name) => (
              <option key={name}>{name}</option>
            ))}
          </select>
        </label>
        <label>
          Steps
          <input aria-label="steps" type="number" min={1} value={settings.steps} onChange={number("steps")}
            style={{ display: "block", width: 64 }} />
        </label>
        <label>
          Guidance
          <input aria-label="guidance" type="number" min={0} step={0.5} value={settings.guidance}
            onChange={number("guidance")} style={{ display: "block", width: 64 }} />
        </label>
        <label>
          Seed
          <input
            aria-label="seed"
            type="number"
            min={0}
            placeholder="random"
            value={settings.seed ?? ""}
            onChange={(e) => edit({ ...settings, seed: e.target.value === "" ? null : Number(e.target.value) })}
            style={{ display: "block", width: 80 }}
          />
        </label>
        <button type="submit" disabled={running || !settings.prompt.trim()}>
          Generate
        </button>
        <button type="button" onClick={cancel} disabled={!running}>
          Cancel
        </button>
      </form>

      {job && (
        <div>
          <progress style={style("progress")} max={100} value={percent} aria-label="progress" />
          <div data-testid="status">
            {job.state}
            {job.stage && ` · ${job.stage}`}
            {job.total > 0 && ` · step ${job.step} of ${job.total}`}
            {job.error && ` · ${job.error}`}
          </div>
        </div>
      )}

      {job?.preview && <img alt="preview" data-testid="preview" src={job.preview} style={style("preview")} />}

      <div style={style("gallery")} data-testid="gallery">
        {state.gallery.map((item) => (
          <figure key={item.imageUrl} style={{ ...style("item"), margin: 0 }}>
            <img alt={String((item.metadata.prompts as string[] | undefined)?.[0] ?? "image")} src={item.imageUrl}
              style={{ width: 128, height: 128, imageRendering: "pixelated" }} />
            {healthWarning(item.health) && (
              <span data-testid="health-badge" role="status" title={healthWarning(item.health) ?? ""}
                style={{ display: "block", color: "#9a3412", fontSize: 12 }}>
                ⚠ {healthWarning(item.health)}
              </span>
            )}
            <figcaption>
              {String((item.metadata.prompts as string[] | undefined)?.[0] ?? "")} · seed{" "}
              {String((item.metadata.seeds as number[] | undefined)?.[0] ?? "")} · {String(item.metadata.size)} px ·{" "}
              {Number(item.metadata.seconds ?? 0).toFixed(2)} s · {madeBy(item.metadata)}
            </figcaption>
          </figure>
        ))}
      </div>
    </div>
  );
}
