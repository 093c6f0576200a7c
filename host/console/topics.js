// Topics and their access lists (admin), and owner tokens (admin).

import { api, seg } from "./api.js";
import { act, confirm, field, fill, h, table } from "./dom.js";

export async function render(main, { args }) {
  const { brokers } = await api("GET", "/v1/brokers");
  if (!brokers.length) {
    main.append(h("p", {}, "No broker connection yet: create one in the Broker Manager."));
    return;
  }
  const broker = args[0] && brokers.some((b) => b.name === args[0]) ? args[0] : brokers[0].name;
  const pick = h("select", { name: "broker" },
    brokers.map((b) => h("option", { value: b.name, selected: b.name === broker }, b.name)));
  pick.addEventListener("change", () => { location.hash = `#/topics/${seg(pick.value)}`; });
  const list = h("section", { id: "topic-list" });
  main.append(field("Broker connection", pick), list, declareForm(broker, () => refresh()));
  const refresh = async () => {
    const listing = await api("GET", `/v1/brokers/${seg(broker)}/topics`);
    fill(list, listing.topics.filter((t) => t.declared).map((t) => topicCard(broker, t, refresh)));
    const undeclared = listing.topics.filter((t) => !t.declared).map((t) => t.name);
    if (undeclared.length) list.append(h("p", {}, `Listed by the broker, not declared: ${undeclared.join(", ")}`));
    if (listing.listing_error) list.append(h("p", { class: "error" }, listing.listing_error));
  };
  await refresh();
}

function topicCard(broker, topic, refresh) {
  const path = `/v1/brokers/${seg(broker)}/topics/${seg(topic.name)}`;
  const revoke = (algorithm, grant) => act(`Removed ${algorithm} from ${topic.name}.`,
    () => api("POST", `${path}/grants/revoke`, { algorithm, [grant]: true }), refresh);
  const list = (title, names, grant) => h("div", { class: "grants" }, h("h3", {}, title),
    names.length ? h("ul", {}, names.map((n) => h("li", {}, h("span", { class: "grant" }, n), " ",
      h("button", { type: "button", class: "small", "aria-label": `Remove ${n} from ${title.toLowerCase()}`, onclick: () => revoke(n, grant) }, "Remove"))))
      : h("p", { class: "hint" }, "none"));
  const algorithm = h("input", { name: "algorithm", placeholder: "owner/name or owner/*", required: true });
  const consume = h("input", { type: "checkbox", name: "consume", checked: true });
  const publish = h("input", { type: "checkbox", name: "publish" });
  const grant = h("form", { class: "inline" }, field("Algorithm", algorithm),
    h("label", {}, consume, " may consume"), h("label", {}, publish, " may publish"),
    h("button", { type: "submit" }, "Grant"));
  grant.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = { algorithm: algorithm.value.trim(), consume: consume.checked, publish: publish.checked };
    act(`Granted ${body.algorithm} on ${topic.name}.`, () => api("POST", `${path}/grants`, body), refresh);
  });
  const remove = async () => {
    if (!(await confirm(`Delete topic ${topic.name}? Flows on it stop.`, [], "Delete topic"))) return;
    await act(`Deleted topic ${topic.name}.`, () => api("DELETE", `${path}?force=true`), refresh);
  };
  return h("article", { class: "card topic", "data-topic": topic.name },
    h("h2", {}, h("span", { class: "topic-name" }, topic.name),
      topic.address ? h("small", {}, ` (address ${topic.address})`) : null),
    h("div", { class: "columns" }, list("Consumers", topic.consumers, "consume"),
      list("Publishers", topic.publishers, "publish")),
    grant,
    h("button", { type: "button", class: "danger", onclick: remove }, "Delete topic"));
}

function declareForm(broker, refresh) {
  const name = h("input", { name: "topic", required: true });
  const address = h("input", { name: "address" });
  const form = h("form", { class: "card", id: "declare-topic" }, h("h2", {}, "Declare a topic"),
    field("Name", name), field("Address (optional)", address, "the broker's own name, if it differs"),
    h("button", { type: "submit" }, "Declare topic"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = address.value.trim() ? { address: address.value.trim() } : {};
    act(`Declared topic ${name.value}.`,
      () => api("PUT", `/v1/brokers/${seg(broker)}/topics/${seg(name.value.trim())}`, body),
      async () => { form.reset(); await refresh(); });
  });
  return form;
}

/** The Tokens page: owner-scoped tokens, created, listed and revoked. */
export const tokens = {
  async render(main) {
    const list = h("section", { id: "token-list" });
    const shown = h("div", { id: "new-token", "aria-live": "polite" });
    const refresh = async () => {
      const { tokens } = await api("GET", "/v1/tokens");
      fill(list, table(["Id", "Owner", "Created", ""], tokens.map((t) => [t.id, t.owner, t.created_at,
        h("button", { type: "button", class: "danger", onclick: async () => {
          if (await confirm(`Revoke token ${t.id} of ${t.owner}?`, [], "Revoke")) {
            await act(`Revoked ${t.id}.`, () => api("DELETE", `/v1/tokens/${seg(t.id)}`), refresh);
          }
        } }, "Revoke")])));
    };
    const owner = h("input", { name: "owner", required: true });
    const form = h("form", { class: "card" }, h("h2", {}, "New owner token"),
      field("Owner", owner, "the token manages this owner's algorithms only"),
      h("button", { type: "submit" }, "Create token"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      act("Created a token: copy it now, it is not shown again.",
        () => api("POST", "/v1/tokens", { owner: owner.value.trim() }), async (created) => {
          fill(shown, field(`Token for ${created.owner} (shown once)`,
            h("input", { id: "created-token", readonly: true, value: created.token })));
          form.reset();
          await refresh();
        });
    });
    main.append(form, shown, list);
    await refresh();
  },
};
