import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { NextGenModelUI } from "./NextGenModelUI";

// a server with an API key: open the page as /#key=<key> (a fragment never reaches the server)
const apiKey = new URLSearchParams(window.location.hash.slice(1)).get("key") ?? undefined;
const root = document.getElementById("root");
if (!root) throw new Error("index.html has no #root element");
createRoot(root).render(
  <StrictMode>
    <h1 style={{ fontFamily: "system-ui, sans-serif" }}>fractalflow</h1>
    <NextGenModelUI
      serverUrl={window.location.origin}
      apiKey={apiKey}
      onImageGenerated={(url, metadata) => console.info("image", url, metadata)}
    />
  </StrictMode>,
);
