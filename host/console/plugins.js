// Plugins: the loaded algorithm versions, their status and their flows.
// A version is `compiling` while the router loads new content in the
// background (flows that need it wait); the page polls until none is.

import { api } from "./api.js";
import { fill, h, table } from "./dom.js";

const POLL_MS = 1500;

export async function render(main) {
  const list = h("section", { id: "plugin-list" });
  main.append(list);
  let timer = null;
  const refresh = async () => {
    const { plugins } = await api("GET", "/v1/plugins");
    fill(list, plugins.length ? table(["Algorithm", "Status", "Hash", "Size", "Loaded", "Flows"],
      plugins.map((p) => [p.algorithm, status(p),
        p.hash ? h("code", {}, p.hash.slice(0, 16)) : "", p.size ?? "", p.loaded_at ?? "",
        p.flows.join(", ") || "none"])) : h("p", {}, "No algorithm is loaded."));
    const compiling = plugins.some((p) => p.status === "compiling");
    if (compiling && !timer) timer = setInterval(() => refresh().catch(() => {}), POLL_MS);
    if (!compiling && timer) stop();
  };
  const stop = () => { clearInterval(timer); timer = null; };
  await refresh();
  return stop;
}

function status(p) {
  if (p.status === "compiling") {
    return h("span", { class: "status compiling", title: "loading in the background; flows that need it wait" },
      p.hash ? "compiling (new content; the loaded one serves)" : "compiling");
  }
  if (p.rejected) return h("span", { class: "status error" }, `${p.status}: ${p.rejected.reason}`);
  return h("span", { class: `status ${p.status}` }, p.status);
}
