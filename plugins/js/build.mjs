// Builds a JavaScript algorithm into a component:
//
//     node plugins/js/build.mjs DIR OUT.wasm
//
// DIR holds `app.js`. It is bundled with this SDK (imported as "eventflow")
// into one module, which componentize-js turns into a component of the
// `batch-algorithm` world of wit/algorithm.wit, 0.2.0 (plus the WASI environment, for
// secrets: see wit/algorithm-js.wit). The build tools are found through
// EVENTFLOW_NPM (the directory they are installed in; `cargo xtask plugins`
// installs the versions package.json pins under ~/.cache/eventflow-npm; it
// pins preview2-shim too, which componentize-js 0.23 imports but lists only
// as a development dependency: 0.17, as it asks, since later versions open no
// directories by default and the build cannot read its own files).
//
// The router grants no HTTP, so the component is built without StarlingMonkey's
// `wasi:http` imports (`fetch` and the fetch event); stdio, clocks and random
// are kept (WASI grants them, sandboxed).

import { copyFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const args = process.argv.slice(2);
const http = args.includes("--http");
const [dir, out] = args.filter((a) => a !== "--http");
if (!dir || !out) {
  console.error("usage: node build.mjs DIR OUT.wasm [--http]");
  process.exit(2);
}
const tools = process.env.EVENTFLOW_NPM;
if (!tools) {
  console.error("EVENTFLOW_NPM is not set: it names the directory the build tools are installed in");
  process.exit(2);
}
const { rolldown } = await import(pathToFileURL(join(tools, "node_modules/rolldown/dist/index.mjs")));
const { componentize } = await import(
  pathToFileURL(join(tools, "node_modules/@bytecodealliance/componentize-js/src/componentize.js"))
);

const here = new URL(".", import.meta.url).pathname;
const work = await mkdtemp(join(tmpdir(), "eventflow-js-"));
try {
  const wit = join(work, "wit");
  await mkdir(join(wit, "deps/algorithm"), { recursive: true });
  await mkdir(join(wit, "deps/algorithm-0.1.0"), { recursive: true });
  await mkdir(join(wit, "deps/cli"), { recursive: true });
  await copyFile(join(here, "wit/algorithm-js.wit"), join(wit, "algorithm-js.wit"));
  await copyFile(resolve(here, "../../wit/algorithm.wit"), join(wit, "deps/algorithm/algorithm.wit"));
  await copyFile(
    resolve(here, "../../wit/deps/algorithm-0.1.0/algorithm.wit"),
    join(wit, "deps/algorithm-0.1.0/algorithm.wit"),
  );
  await copyFile(join(here, "wit/wasi-cli-environment.wit"), join(wit, "deps/cli/environment.wit"));
  const entry = join(work, "entry.js");
  await writeFile(
    entry,
    `import * as app from ${JSON.stringify(resolve(dir, "app.js"))};
import { handleBoth } from "eventflow";
const run = handleBoth(app.apply, app.applyBatch);
export function apply(msg) { return run.apply(msg); }
export function applyBatch(msgs) { return run.applyBatch(msgs); }
`,
  );
  const bundle = await rolldown({
    input: entry,
    external: [/^eventflow:algorithm\//, /^wasi:/],
    resolve: { alias: { eventflow: join(here, "eventflow.js") } },
    logLevel: "warn",
  });
  const { output } = await bundle.generate({ format: "esm" });
  const source = join(work, "bundle.js");
  await writeFile(source, output[0].code);
  const { component } = await componentize({
    sourcePath: source,
    witPath: wit,
    worldName: "algorithm-js",
    // With --http, componentize-js's defaults: `fetch` over wasi:http.
    disableFeatures: http ? [] : ["http", "fetch-event"],
  });
  await writeFile(out, component);
} finally {
  await rm(work, { recursive: true, force: true });
}
