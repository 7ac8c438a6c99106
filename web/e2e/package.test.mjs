// The component as a package: `npm pack` builds the library (dist/, type declarations, React
// as a peer), a small sample app imports the packed tarball, type-checks against its
// declarations, is bundled by Vite, and renders NextGenModelUI in headless Chromium.
// The tests run offline, so the tarball is unpacked into the app's node_modules by hand
// and its dependencies (React, onnxruntime-web, tokenizers.js) are linked from web/node_modules,
// where `npm ci` put them; the tarball itself is what `npm publish` would upload.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createReadStream, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const web = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const bin = (name) => path.join(web, "node_modules/.bin", name);
const browserPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const skip = existsSync(browserPath) ? false : `no Chromium at ${browserPath} (make system-deps installs it)`;
const work = mkdtempSync(path.join(tmpdir(), "fractalflow-pack-"));
after(() => rmSync(work, { recursive: true, force: true }));

const APP = `import { createElement } from "react";
import { createRoot } from "react-dom/client";
import { NextGenModelUI, type NextGenModelUIProps, uiReducer, initialState } from "fractalflow-web";

const props: NextGenModelUIProps = { serverUrl: "http://127.0.0.1:9", styles: { root: { maxWidth: 500 } } };
const state = uiReducer(initialState, { type: "submitted", id: "job-1" });
document.title = \`sample app: \${state.job?.state}\`;
createRoot(document.getElementById("root")!).render(createElement(NextGenModelUI, props));
`;

function serve(folder) {
  const types = { ".html": "text/html", ".js": "text/javascript" };
  const server = createServer((request, response) => {
    const file = path.join(folder, request.url === "/" ? "index.html" : path.normalize(request.url));
    if (!file.startsWith(folder) || !existsSync(file)) return response.writeHead(404).end();
    response.writeHead(200, { "Content-Type": types[path.extname(file)] ?? "application/octet-stream" });
    createReadStream(file).pipe(response);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

test("npm pack gives a package that a sample app imports, type-checks and renders", { timeout: 180_000, skip }, async () => {
  execFileSync("npm", ["pack", "--pack-destination", work, "--loglevel=error"], { cwd: web, stdio: "pipe" });
  const [tarball] = readdirSync(work).filter((name) => name.endsWith(".tgz"));
  const listed = execFileSync("tar", ["tzf", path.join(work, tarball)]).toString().trim().split("\n");
  assert.ok(listed.includes("package/dist/index.js") && listed.includes("package/dist/types/index.d.ts"), listed.join(" "));
  assert.ok(!listed.some((file) => file.includes("/src/") || file.includes("node_modules")), "only the build is packed");
  const packed = JSON.parse(execFileSync("tar", ["xzOf", path.join(work, tarball), "package/package.json"]).toString());
  assert.deepEqual(Object.keys(packed.peerDependencies), ["react", "react-dom"]);
  assert.ok(!("react" in packed.dependencies), "React is the app's, not a copy of the package's");

  const app = path.join(work, "app");
  const modules = path.join(app, "node_modules");
  mkdirSync(path.join(modules, "fractalflow-web"), { recursive: true });
  execFileSync("tar", ["xzf", path.join(work, tarball), "-C", path.join(modules, "fractalflow-web"), "--strip-components=1"]);
  mkdirSync(path.join(modules, "@huggingface"));
  mkdirSync(path.join(modules, "@types"));
  for (const name of ["react", "react-dom", "scheduler", "onnxruntime-web", "onnxruntime-common", "@huggingface/tokenizers", "@types/react", "@types/react-dom"]) {
    symlinkSync(path.join(web, "node_modules", name), path.join(modules, name));
  }
  writeFileSync(path.join(app, "package.json"), JSON.stringify({ name: "sample-app", private: true, type: "module" }));
  writeFileSync(path.join(app, "main.ts"), APP);
  writeFileSync(path.join(app, "index.html"), '<!doctype html><div id="root"></div><script type="module" src="/main.ts"></script>');
  const tsconfig = { compilerOptions: { strict: true, module: "ESNext", moduleResolution: "bundler", target: "ES2022", lib: ["ES2022", "DOM"], noEmit: true, skipLibCheck: true }, files: ["main.ts"] };
  writeFileSync(path.join(app, "tsconfig.json"), JSON.stringify(tsconfig));
  execFileSync(bin("tsc"), ["-p", app], { stdio: "pipe" }); // the declarations type the app
  execFileSync(bin("vite"), ["build", app, "--logLevel", "error"], { cwd: app, stdio: "pipe" });

  const server = await serve(path.join(app, "dist"));
  const browser = await chromium.launch({ executablePath: browserPath, headless: true, args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"] });
  try {
    const page = await browser.newPage();
    const pageErrors = [];
    page.on("pageerror", (error) => pageErrors.push(error.message));
    await page.goto(`http://127.0.0.1:${server.address().port}/`);
    await page.getByTestId("nextgen-ui").waitFor({ timeout: 20_000 });
    assert.equal(await page.getByLabel("prompt").getAttribute("placeholder"), "red heart");
    assert.equal(await page.getByRole("button", { name: "Generate" }).count(), 1);
    assert.equal(await page.title(), "sample app: queued");
    assert.ok(await page.getByLabel("run on").locator("option[value=device]").isDisabled(), "no server: no device model");
    assert.deepEqual(pageErrors, []);
  } finally {
    await browser.close();
    server.close();
  }
});
