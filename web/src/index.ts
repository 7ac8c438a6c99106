// The package's entry: the component, the reducer its events go through, and the pieces of
// generation on this device (loaded on demand by the component).
export { NextGenModelUI, type NextGenModelUIProps, type RunOn, type StyleSlot } from "./NextGenModelUI";
export {
  type ActiveJob,
  type GalleryItem,
  type ImageHealth,
  type JobEvent,
  type JobState,
  type UiAction,
  type UiState,
  healthWarning,
  initialState,
  madeBy,
  uiReducer,
} from "./events";
export { type GenerateSettings, type JobCreated, cancelJob, createJob, followEvents } from "./api";
export { seededNoise } from "./local/sampler";
