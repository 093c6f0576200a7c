// An algorithm's Queues tab: the topics it may consume, each with its flow;
// enable, edit, disable and delete flows; its secrets by name.

import { api, seg } from "./api.js";
import { act, confirm, field, fill, h, table } from "./dom.js";

export async function render(main, { args }) {
  const { plugins } = await api("GET", "/v1/plugins");
  const algorithms = [...new Set(plugins.map((p) => p.algorithm.split("/").slice(0, 2).join("/")))];
  const versions = [...new Set(plugins.map((p) => p.algorithm.split("/")[2]))];
  const chosen = args.length >= 2 ? `${args[0]}/${args[1]}` : algorithms[0];
  const pick = h("input", { name: "algorithm", list: "algorithms", value: chosen ?? "", placeholder: "owner/name" });
  const form = h("form", { class: "inline" }, field("Algorithm", pick),
    h("datalist", { id: "algorithms" }, algorithms.map((a) => h("option", { value: a }))),
    h("datalist", { id: "versions" }, ["latest", ...versions].map((v) => h("option", { value: v }))),
    h("button", { type: "submit" }, "Open"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/queues/${pick.value.trim().split("/").map(seg).join("/")}`;
  });
  main.append(form);
  if (!chosen) return;
  const [owner, name] = chosen.split("/");
  const base = `/v1/algorithms/${seg(owner)}/${seg(name)}`;
  const queues = h("section", { id: "queues" });
  const secrets = h("section", { id: "secrets" });
  main.append(h("h2", {}, `Queues of ${chosen}`), queues, secrets);
  const refresh = async () => {
    const { topics, may_publish: publish } = await api("GET", `${base}/topics`);
    fill(queues, topics.length ? topics.map((t) => queueCard(chosen, t, publish, refresh))
      : h("p", {}, "This algorithm may consume no topic yet: an administrator grants it one."));
  };
  await Promise.all([refresh(), renderSecrets(secrets, base)]);
}

/** `publish`: the topics the algorithm may publish to, the dead-letter
 *  choices (named `broker:topic` when on another connection). */
function queueCard(algorithm, topic, publish, refresh) {
  const topics = publish.map((p) => (p.broker === topic.broker ? p.topic : `${p.broker}:${p.topic}`));
  const card = h("article", { class: "card queue", "data-topic": topic.topic },
    h("h3", {}, h("span", { class: "topic-name" }, topic.topic), h("small", {}, ` on ${topic.broker}`)));
  if (!topic.flows.length) {
    card.append(h("p", {}, "No flow."), flowForm(null, { algorithm, topic, topics }, refresh));
    return card;
  }
  for (const flow of topic.flows) card.append(flowRow(flow, { algorithm, topic, topics }, refresh));
  return card;
}

function flowRow(flow, ctx, refresh) {
  const path = `/v1/flows/${seg(flow.name)}`;
  const editing = h("div", {});
  const toggle = async () => {
    if (flow.enabled && !(await confirm(`Disable flow ${flow.name}? Its messages wait in the broker.`, [], "Disable"))) return;
    await act(`${flow.enabled ? "Disabled" : "Enabled"} ${flow.name}.`,
      () => api("PATCH", path, { enabled: !flow.enabled }), refresh);
  };
  const remove = async () => {
    if (!(await confirm(`Delete flow ${flow.name}?`, [], "Delete flow"))) return;
    await act(`Deleted ${flow.name}.`, () => api("DELETE", path), refresh);
  };
  return h("div", { class: "flow", "data-flow": flow.name },
    table(["Flow", "Enabled", "Version", "Dead-letter topic", "Timeout", "Max receives", "Concurrency"],
      [[flow.name, flow.enabled ? "enabled" : "disabled", flow.version, flow.dead_letter_topic ?? "none",
        `${flow.timeout_secs} s`, flow.max_receives, flow.concurrency]]),
    flow.waiting_for ? h("p", { class: "error" }, `Waiting for ${flow.waiting_for}`) : null,
    h("div", { class: "actions" },
      h("button", { type: "button", onclick: () => fill(editing, flowForm(flow, ctx, refresh)) }, "Edit"),
      h("button", { type: "button", onclick: toggle }, flow.enabled ? "Disable" : "Enable"),
      h("button", { type: "button", class: "danger", onclick: remove }, "Delete")),
    editing);
}

/** The enable form (no flow yet) or the edit form of `flow`. */
function flowForm(flow, { algorithm, topic, topics }, refresh) {
  const version = h("input", { name: "version", list: "versions", value: flow?.version ?? "latest", required: true });
  const dlq = h("select", { name: "dead_letter_topic" }, h("option", { value: "" }, "none"),
    topics.map((t) => h("option", { value: t, selected: t === flow?.dead_letter_topic }, t)),
    flow?.dead_letter_topic && !topics.includes(flow.dead_letter_topic)
      ? h("option", { value: flow.dead_letter_topic, selected: true }, flow.dead_letter_topic) : null);
  const other = h("input", { name: "dead_letter_other", placeholder: "another topic" });
  const timeout = h("input", { name: "timeout_secs", type: "number", min: "0.001", step: "any", value: flow?.timeout_secs ?? 30 });
  const receives = h("input", { name: "max_receives", type: "number", min: "1", value: flow?.max_receives ?? 10 });
  const concurrency = h("input", { name: "concurrency", type: "number", min: "1", value: flow?.concurrency ?? 8 });
  const form = h("form", { class: "flow-form" },
    field("Version", version, "a semver version, or latest"),
    field("Dead-letter topic", dlq, "the topics the algorithm may publish to"),
    field("Or another dead-letter topic", other, "the router writes dead letters, so no grant is needed"),
    field("Timeout (seconds)", timeout), field("Max receives", receives), field("Concurrency", concurrency),
    h("button", { type: "submit" }, flow ? "Save" : "Enable"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const dead = other.value.trim() || dlq.value || null;
    const settings = {
      version: version.value.trim(),
      timeout_secs: Number(timeout.value),
      max_receives: Number(receives.value),
      concurrency: Number(concurrency.value),
    };
    if (flow) {
      act(`Saved ${flow.name}.`, () => api("PATCH", `/v1/flows/${seg(flow.name)}`,
        { ...settings, dead_letter_topic: dead }), refresh);
    } else {
      const body = { ...settings, topic: topic.topic, broker: topic.broker, algorithm };
      if (dead) body.dead_letter_topic = dead;
      act(`Enabled ${topic.topic} for ${algorithm}.`, () => api("POST", "/v1/flows", body), refresh);
    }
  });
  return form;
}

async function renderSecrets(section, base) {
  const refresh = async () => {
    const { secrets } = await api("GET", `${base}/secrets`);
    fill(list, secrets.length ? table(["Secret", ""], secrets.map((s) => [s,
      h("button", { type: "button", class: "danger", onclick: async () => {
        if (await confirm(`Delete secret ${s}?`, [], "Delete secret")) {
          await act(`Deleted secret ${s}.`, () => api("DELETE", `${base}/secrets/${seg(s)}`), refresh);
        }
      } }, "Delete")])) : h("p", { class: "hint" }, "No secrets."));
  };
  const list = h("div", {});
  const key = h("input", { name: "secret", required: true, pattern: "[A-Za-z_][A-Za-z0-9_]*" });
  const value = h("input", { name: "value", type: "password", autocomplete: "off", required: true });
  const form = h("form", { class: "inline" }, field("Name", key), field("Value", value, "write-only"),
    h("button", { type: "submit" }, "Set secret"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    act(`Set secret ${key.value}.`, () => api("PUT", `${base}/secrets/${seg(key.value.trim())}`, { value: value.value }),
      async () => { form.reset(); await refresh(); });
  });
  fill(section, h("h2", {}, "Secrets"), h("p", { class: "hint" }, "Values are never shown; the algorithm reads them as environment variables."), list, form);
  await refresh();
}
