import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { NextGenModelUI } from "./NextGenModelUI";

const root = document.getElementById("root");
if (!root) throw new Error("index.html has no #root element");
createRoot(root).render(
  <StrictMode>
    <h1 style={{ fontFamily: "system-ui, sans-serif" }}>fractalflow</h1>
    <NextGenModelUI
      serverUrl={window.location.origin}
      onImageGenerated={(url, metadata) => console.info("image", url, metadata)}
    />
  </StrictMode>,
);
