// Plugins: the loaded algorithm versions, their status and their flows.

import { api } from "./api.js";
import { h, table } from "./dom.js";

export async function render(main) {
  const { plugins } = await api("GET", "/v1/plugins");
  main.append(plugins.length ? table(["Algorithm", "Status", "Hash", "Size", "Loaded", "Flows"],
    plugins.map((p) => [p.algorithm,
      p.rejected ? h("span", { class: "error" }, `${p.status}: ${p.rejected.reason}`) : p.status,
      p.hash ? h("code", {}, p.hash.slice(0, 16)) : "", p.size ?? "", p.loaded_at ?? "",
      p.flows.join(", ") || "none"])) : h("p", {}, "No algorithm is loaded."));
}
