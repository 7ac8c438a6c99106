import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// The npm package (`npm run build:lib`): ES module in dist/, React left to the app (a peer
// dependency), onnxruntime-web and tokenizers.js imported from the app's node_modules, and
// the in-browser generator split out so an app that never runs on the device never loads it.
export default defineConfig({
  plugins: [react()],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    lib: { entry: "src/index.ts", formats: ["es"], fileName: "index" },
    rollupOptions: {
      external: [/^react($|\/)/, /^react-dom($|\/)/, /^onnxruntime-web($|\/)/, "@huggingface/tokenizers"],
    },
  },
});
