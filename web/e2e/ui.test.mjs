// End to end: `fractalflow serve` with the shipped model and an API key, the demo page in
// headless Chromium. Types a prompt, sees previews and the finished image, cancels a second
// job and sees it cancelled (on the page and on the server); the key never shows in the
// server's log; saves docs/images/ui.png. Then draws on "this device" (the model's ONNX export in
// onnxruntime-web) with no request to /v1/generate, and compares the image with the Python
// pipeline's for the same noise.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const fractalflow = process.env.FRACTALFLOW ?? path.join(repo, ".venv/bin/fractalflow");
const browserPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
// no background connections: this machine has no network and Chromium would keep trying
const chromiumArgs = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const skip = existsSync(browserPath) ? false : `no Chromium at ${browserPath} (make system-deps installs it)`;

let server;
let serverLog = "";
let exported;
let browser;
let base;
const apiKey = "e2e-key-4f9c21";
const keyHeader = { "X-API-Key": apiKey };

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

async function waitForHealth(url, seconds) {
  const deadline = Date.now() + seconds * 1000;
  while (Date.now() < deadline) {
    try {
      if ((await fetch(`${url}/healthz`)).ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`the server did not answer within ${seconds} s:\n${serverLog}`);
}

before(async () => {
  if (skip) return;
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  exported = mkdtempSync(path.join(tmpdir(), "fractalflow-onnx-"));
  execFileSync(fractalflow, ["export", "--format", "onnx", "--out", exported], { cwd: repo, stdio: "pipe" });
  const serveArgs = ["serve", "--port", String(port), "--profile", "cpu", "--browser-model", exported];
  server = spawn(fractalflow, serveArgs, {
    cwd: repo,
    env: { ...process.env, FRACTALFLOW_API_KEY: apiKey, PYTHONUNBUFFERED: "1" },
  });
  server.stdout.on("data", (chunk) => (serverLog += chunk));
  server.stderr.on("data", (chunk) => (serverLog += chunk));
  await waitForHealth(base, 90);
  browser = await chromium.launch({ executablePath: browserPath, headless: true, args: chromiumArgs });
});

after(async () => {
  await browser?.close();
  if (server && server.exitCode === null) {
    const exited = new Promise((resolve) => server.once("exit", resolve));
    server.kill("SIGTERM");
    await exited;
  }
  if (exported) rmSync(exported, { recursive: true, force: true });
});

test("generate with live previews, then cancel a running job", { timeout: 180_000, skip }, async () => {
  const page = await browser.newPage({ viewport: { width: 900, height: 720 } });
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(error.message));
  await page.goto(`${base}/#key=${apiKey}`);

  await page.getByLabel("prompt").fill("red heart");
  await page.getByLabel("seed").fill("1");
  await page.getByRole("button", { name: "Generate" }).click();
  const preview = page.getByTestId("preview");
  await preview.waitFor({ timeout: 60_000 });
  assert.match(await preview.getAttribute("src"), /^data:image\/png;base64,/);
  const gallery = page.getByTestId("gallery").locator("img");
  await gallery.first().waitFor({ timeout: 60_000 });
  assert.match(await page.getByTestId("status").innerText(), /^done/);
  const finished = await gallery.first().evaluate((img) => img.decode().then(() => img.naturalWidth));
  assert.equal(finished, 64, "the finished 64 px image loaded from the server");

  // a long job: ultra resolution, many steps; cancel it once it is running
  await page.getByLabel("prompt").fill("bicycle icon");
  await page.getByLabel("resolution").selectOption("ultra");
  await page.getByLabel("steps").fill("100");
  const created = page.waitForResponse((r) => r.url().endsWith("/v1/generate"));
  await page.getByRole("button", { name: "Generate" }).click();
  const job = await (await created).json();
  await page.getByTestId("status").filter({ hasText: /^running/ }).waitFor({ timeout: 60_000 });
  const deleted = page.waitForResponse((r) => r.request().method() === "DELETE" && r.url().endsWith(job.id));
  await page.getByRole("button", { name: "Cancel" }).click();
  await page.getByTestId("status").filter({ hasText: /^cancelled/ }).waitFor({ timeout: 10_000 });
  assert.equal((await deleted).status(), 200);

  const info = await (await fetch(`${base}/v1/jobs/${job.id}`, { headers: keyHeader })).json();
  assert.equal(info.state, "cancelled");
  await new Promise((r) => setTimeout(r, 1000)); // late events, if any, must not change the page
  assert.match(await page.getByTestId("status").innerText(), /^cancelled/);
  assert.equal(await gallery.count(), 1, "the cancelled job added nothing to the gallery");
  assert.deepEqual(pageErrors, []);
  assert.equal((await fetch(`${base}/v1/models`)).status, 401, "the server does need the key");
  assert.ok(serverLog.includes("GET /v1/jobs/"), "the access log was read");
  assert.ok(!serverLog.includes(apiKey), "the key is in no log line");

  await page.screenshot({ path: path.join(repo, "docs/images/ui.png"), fullPage: true });
});

/** The Python pipeline's 64 px image for `prompt` started from the browser's noise for `seed`: RGB bytes. */
function pythonPixels(prompt, seed, steps, guidance) {
  const script = [
    "import sys, json, numpy as np, torch",
    "from fractalflow import FractalFlowPipeline",
    "from fractalflow.export.runtime import browser_noise",
    "prompt, seed, steps, guidance = json.loads(sys.argv[1])",
    "latents = torch.from_numpy(browser_noise(seed, (1, 3, 64, 64)))",
    "image = FractalFlowPipeline.default(device='cpu').generate(prompt, latents=latents, steps=steps, guidance=guidance)",
    "sys.stdout.write(json.dumps(np.asarray(image.images[0]).reshape(-1).tolist()))",
  ].join("\n");
  const python = path.join(path.dirname(fractalflow), "python");
  const args = ["-c", script, JSON.stringify([prompt, seed, steps, guidance])];
  return JSON.parse(execFileSync(python, args, { cwd: repo, maxBuffer: 1 << 24 }));
}

test("generate on this device: no request to /v1/generate, the pipeline's image", { timeout: 300_000, skip }, async () => {
  const page = await browser.newPage({ viewport: { width: 900, height: 720 } });
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(error.message));
  const generateCalls = [];
  page.on("request", (request) => request.url().includes("/v1/generate") && generateCalls.push(request.url()));
  await page.goto(`${base}/#key=${apiKey}`);

  const device = page.getByLabel("run on").locator("option[value=device]");
  await page.waitForFunction((option) => !option.disabled, await device.elementHandle(), { timeout: 10_000 });
  await page.getByLabel("run on").selectOption("device");
  const [prompt, seed, steps] = ["red heart", 5, 8];
  // the form starts from the served model's defaults (its generation_config.json), not the UI's own
  const modelDefaults = JSON.parse(readFileSync(path.join(repo, "src/fractalflow/weights/default/generation_config.json"), "utf8"));
  await page.waitForFunction((wanted) => document.querySelector("input[aria-label=guidance]")?.value === String(wanted),
    modelDefaults.guidance, { timeout: 10_000 });
  const guidance = Number(await page.getByLabel("guidance").inputValue());
  await page.getByLabel("prompt").fill(prompt);
  await page.getByLabel("seed").fill(String(seed));
  await page.getByLabel("steps").fill(String(steps));
  await page.getByRole("button", { name: "Generate" }).click();
  await page.getByTestId("preview").waitFor({ timeout: 240_000 });
  const gallery = page.getByTestId("gallery").locator("figure");
  await gallery.first().waitFor({ timeout: 120_000 });
  assert.match(await page.getByTestId("status").innerText(), /^done/);
  const caption = await gallery.first().locator("figcaption").innerText();
  assert.match(caption, /this device \((wasm|webgpu)\)/);
  assert.deepEqual(generateCalls, [], "nothing was sent to /v1/generate");

  const browserPixels = await gallery.first().locator("img").evaluate(async (img) => {
    await img.decode();
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(img, 0, 0);
    const rgba = context.getImageData(0, 0, canvas.width, canvas.height).data;
    return Array.from(rgba).filter((_, i) => i % 4 !== 3); // RGB
  });
  const expected = pythonPixels(prompt, seed, steps, guidance);
  assert.equal(browserPixels.length, expected.length);
  const differences = browserPixels.map((value, i) => Math.abs(value - expected[i]));
  const largest = Math.max(...differences);
  const mean = differences.reduce((a, b) => a + b, 0) / differences.length;
  const seconds = Number(/([0-9.]+) s/.exec(caption)?.[1]);
  console.log(`in-browser image: ${caption}; |browser - pipeline| largest ${largest}/255, mean ${mean.toFixed(4)}`);
  assert.ok(largest <= 4 && mean < 0.1, `the browser's image is the pipeline's (largest ${largest}, mean ${mean})`);
  assert.ok(seconds > 0);
  assert.deepEqual(pageErrors, []);
});

