// Time per image in the browser: the demo page's "this device" mode in headless Chromium,
// on WebAssembly (GPU off) and on WebGPU where Chromium offers an adapter (here SwiftShader,
// Vulkan emulated on the CPU: a check that the WebGPU path runs, not a GPU's speed).
// Starts `fractalflow serve` with the model's ONNX export; writes
// benchmarks/results/browser-cpu.json.
//
//     node web/bench/browser.mjs --repeats 5 --steps 20 --backends wasm
//     node web/bench/browser.mjs --repeats 2 --backends webgpu --out benchmarks/results/browser-webgpu-swiftshader.json
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const fractalflow = path.join(repo, ".venv/bin/fractalflow");
const quiet = ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync"];
const backends = {
  wasm: ["--disable-gpu"],
  webgpu: ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"],
};
const options = {
  repeats: { type: "string", default: "5" },
  steps: { type: "string", default: "20" },
  port: { type: "string", default: "8766" },
  backends: { type: "string", default: "wasm,webgpu" },
  out: { type: "string", default: "benchmarks/results/browser-cpu.json" },
};
const { values } = parseArgs({ options });
const [repeats, steps] = [Number(values.repeats), Number(values.steps)];

const exported = mkdtempSync(path.join(tmpdir(), "fractalflow-onnx-"));
execFileSync(fractalflow, ["export", "--format", "onnx", "--out", exported], { cwd: repo, stdio: "inherit" });
const base = `http://127.0.0.1:${values.port}`;
const server = spawn(fractalflow, ["serve", "--port", values.port, "--profile", "cpu", "--browser-model", exported], { cwd: repo });
for (let i = 0; i < 300; i++) {
  try {
    if ((await fetch(`${base}/healthz`)).ok) break;
  } catch {}
  await new Promise((r) => setTimeout(r, 200));
}

const rows = [];
let browserVersion = "";
try {
  for (const name of values.backends.split(",")) {
    const flags = backends[name];
    const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: [...quiet, ...flags] });
    browserVersion = `Chromium ${browser.version()}`;
    const page = await browser.newPage();
    page.on("pageerror", (error) => console.error(`${name}: page error: ${error.message}`));
    page.on("console", (message) => message.type() === "error" && console.error(`${name}: ${message.text()}`));
    await page.goto(base);
    const option = page.getByLabel("run on").locator("option[value=device]");
    await page.waitForFunction((o) => !o.disabled, await option.elementHandle());
    await page.getByLabel("run on").selectOption("device");
    await page.getByLabel("prompt").fill("red heart");
    await page.getByLabel("steps").fill(String(steps));
    const seconds = [];
    let firstWall = 0;
    for (let i = 0; i <= repeats; i++) {
      await page.getByLabel("seed").fill(String(i));
      const started = Date.now();
      await page.getByRole("button", { name: "Generate" }).click();
      // finished: one more image in the gallery, or an error
      const finished = (count) =>
        document.querySelectorAll("[data-testid=gallery] figure").length === count ||
        document.querySelector("[data-testid=status]")?.textContent?.startsWith("error");
      await page.waitForFunction(finished, i + 1, { timeout: 600_000, polling: 100 });
      const status = await page.getByTestId("status").innerText();
      if (status.startsWith("error")) throw new Error(`${name}: ${status}`);
      const caption = await page.getByTestId("gallery").locator("figure").first().locator("figcaption").innerText();
      if (i === 0) firstWall = (Date.now() - started) / 1000; // loading the graphs, compiling, then the image
      else seconds.push(Number(/([0-9.]+) s ·/.exec(caption)[1]));
      if (i === 0) rows.push({ backend: name, used: /this device \((\w+)\)/.exec(caption)[1] });
    }
    seconds.sort((a, b) => a - b);
    Object.assign(rows.at(-1), { first_image_with_loading_s: firstWall, median_s: seconds[Math.floor(seconds.length / 2)], runs_s: seconds });
    await browser.close();
  }
} finally {
  server.kill("SIGTERM");
  rmSync(exported, { recursive: true, force: true });
}
console.log(`${"backend".padEnd(10)} ${"used".padEnd(8)} ${"first image incl. loading s".padStart(28)} ${"median s".padStart(9)}`);
for (const row of rows) {
  console.log(`${row.backend.padEnd(10)} ${row.used.padEnd(8)} ${row.first_image_with_loading_s.toFixed(2).padStart(28)} ${row.median_s.toFixed(2).padStart(9)}`);
}
const chromiumVersion = browserVersion;
const payload = { hardware: `${cpus()[0].model} (${cpus().length} cores)`, browser: chromiumVersion, image: "64 px, red heart", steps, guidance: 3, threads: 1, repeats, rows };
writeFileSync(path.resolve(repo, values.out), JSON.stringify(payload, null, 2) + "\n");
