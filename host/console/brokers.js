// Broker Manager (admin): list, create, view and delete broker connections.
// Never edit: a connection is replaced by creating a new one.

import { api, seg } from "./api.js";
import { act, confirm, field, fill, h, table } from "./dom.js";

/** The fields of each kind's form: [name, label, type, hint]. Type
 *  "secret" is a write-only credential, sent as {"value": ...}. */
const KINDS = {
  embedded: [["path", "Directory (optional)", "text", "default: <state_dir>/broker-<name>"]],
  kafka: [
    ["bootstrap_servers", "Bootstrap servers", "text", "host:port,host:port"],
    ["security_protocol", "Security protocol (optional)", "text", "plaintext, ssl, sasl_plaintext, sasl_ssl"],
    ["sasl_mechanism", "SASL mechanism (optional)", "text", "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"],
    ["sasl_username", "SASL username (optional)", "text"],
    ["sasl_password", "SASL password (optional)", "secret"],
  ],
  eventhubs: [["connection_string", "Connection string", "secret"]],
  sqs: [
    ["region", "Region", "text", "e.g. us-east-1"],
    ["role_arn", "Role ARN (optional)", "text"],
    ["endpoint_url", "Endpoint URL (optional)", "text", "local servers, VPC endpoints"],
  ],
  servicebus: [
    ["connection_string", "Connection string", "secret", "Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=..."],
    ["endpoint", "Endpoint (optional)", "text"],
  ],
};

export async function render(main, { args }) {
  if (args[0]) return view(main, args[0]);
  const list = h("section", { id: "broker-list" });
  const form = h("section", { id: "broker-create" });
  main.append(
    h("p", { class: "hint" },
      "Connections are not edited. To replace one, create a new connection, move the topics and flows to it, then delete the old one."),
    list, form);
  const refresh = async () => {
    const { brokers } = await api("GET", "/v1/brokers");
    fill(list, h("h2", {}, "Connections"), table(
      ["Name", "Kind", "State", "Used by flows", ""],
      brokers.map((b) => [
        h("a", { href: `#/brokers/${seg(b.name)}` }, b.name),
        b.kind,
        h("span", { class: `state ${b.state ?? ""}` }, b.state ?? "unknown"),
        b.used_by_flows.join(", ") || "none",
        h("button", { type: "button", class: "danger", onclick: () => remove(b, refresh) }, "Delete"),
      ])));
  };
  createForm(form, refresh);
  await refresh();
}

function createForm(section, refresh) {
  const name = h("input", { name: "name", required: true, pattern: "[A-Za-z0-9_.\\-]{1,128}" });
  const kind = h("select", { name: "kind" }, Object.keys(KINDS).map((k) => h("option", { value: k }, k)));
  const fields = h("div", { class: "kind-fields" });
  const inputs = {};
  const showKind = () => {
    for (const key of Object.keys(inputs)) delete inputs[key];
    fill(fields, KINDS[kind.value].map(([key, label, type, hint]) => {
      const input = h("input", { name: key, type: type === "secret" ? "password" : "text", autocomplete: "off" });
      inputs[key] = [input, type];
      return field(label, input, type === "secret" ? "write-only: stored as a secret, shown redacted" : hint);
    }));
  };
  kind.addEventListener("change", showKind);
  showKind();
  const form = h("form", { class: "card" }, h("h2", {}, "New connection"),
    field("Name", name), field("Kind", kind), fields, h("button", { type: "submit" }, "Create connection"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = { name: name.value.trim(), kind: kind.value };
    for (const [key, [input, type]] of Object.entries(inputs)) {
      const value = input.value.trim();
      if (value) body[key] = type === "secret" ? { value } : value;
    }
    act(`Created connection ${body.name}.`, () => api("POST", "/v1/brokers", body), async () => {
      form.reset();
      showKind();
      await refresh();
    });
  });
  fill(section, form);
}

async function remove(broker, refresh) {
  const flows = broker.used_by_flows;
  const ok = await confirm(
    flows.length
      ? `Delete connection ${broker.name}? These flows use it and will be disabled:`
      : `Delete connection ${broker.name}? No flow uses it.`,
    flows, "Delete connection");
  if (!ok) return;
  const force = flows.length ? "?force=true" : "";
  await act(`Deleted connection ${broker.name}.`,
    () => api("DELETE", `/v1/brokers/${seg(broker.name)}${force}`), refresh);
}

async function view(main, name) {
  const [broker, listing] = await Promise.all([
    api("GET", `/v1/brokers/${seg(name)}`),
    api("GET", `/v1/brokers/${seg(name)}/topics`),
  ]);
  const skip = new Set(["name", "used_by_flows"]);
  const settings = Object.entries(broker).filter(([k]) => !skip.has(k))
    .map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)]);
  main.append(
    h("p", {}, h("a", { href: "#/brokers" }, "All connections")),
    h("h2", {}, `Connection ${broker.name}`),
    table(["Setting", "Value"], settings),
    h("p", {}, `Used by flows: ${broker.used_by_flows.join(", ") || "none"}`),
    h("h2", {}, "Topics"),
    listing.listing_error ? h("p", { class: "error" }, `The broker did not list its topics: ${listing.listing_error}`) : null,
    table(["Topic", "Address", "Declared", "Consumers", "Publishers"],
      listing.topics.map((t) => [t.name, t.address ?? "", t.declared ? "declared" : "broker only",
        t.consumers.join(", "), t.publishers.join(", ")])),
    h("button", { type: "button", class: "danger", onclick: () => remove(broker, () => { location.hash = "#/brokers"; }) },
      "Delete connection"));
}
