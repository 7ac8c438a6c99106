import react from "@vitejs/plugin-react";
import { defineConfig } from "vitest/config";

// The build goes inside the Python package, so `fractalflow serve` serves it at /.
export default defineConfig({
  plugins: [react()],
  base: "./",
  build: { outDir: "../src/fractalflow/serving/ui", emptyOutDir: true },
  test: { include: ["tests/**/*.test.ts"] },
});
