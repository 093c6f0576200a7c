// The console's shell: sign-in, the navigation and the pages. Each page is a
// module whose `render(main, ctx)` fills <main>; `ctx.me` is what
// GET /v1/whoami says the token may do, so pages offer nothing else.

import { api, token } from "./api.js";
import { fill, h, field, notice } from "./dom.js";
import * as brokers from "./brokers.js";
import * as topics from "./topics.js";
import * as queues from "./queues.js";
import * as live from "./live.js";
import * as plugins from "./plugins.js";

const PAGES = [
  { id: "brokers", title: "Broker Manager", page: brokers, needs: "manage_brokers" },
  { id: "topics", title: "Topics", page: topics, needs: "manage_topics" },
  { id: "tokens", title: "Tokens", page: topics.tokens, needs: "manage_tokens" },
  { id: "queues", title: "Queues", page: queues },
  { id: "live", title: "Live flows", page: live },
  { id: "plugins", title: "Plugins", page: plugins },
];

const main = document.getElementById("main");
let me = null;
let leave = null;
let visits = 0;

function signIn(why) {
  me = null;
  visits++;
  fill(document.getElementById("nav"));
  fill(document.getElementById("who"));
  document.getElementById("sign-out").hidden = true;
  const input = h("input", { type: "password", name: "token", autocomplete: "off", required: true });
  const error = h("p", { class: "error", role: "alert" }, why ?? "");
  const form = h("form", { class: "card", id: "sign-in" },
    h("h1", {}, "Sign in"),
    h("p", {}, "Paste the admin token (",
      h("code", {}, "<state_dir>/admin.token"),
      ") or an owner token. It is kept for this tab only."),
    field("Token", input), error,
    h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    token.set(input.value.trim());
    await start();
  });
  fill(main, form);
  input.focus();
}

async function start() {
  if (!token.get()) return signIn();
  try {
    me = await api("GET", "/v1/whoami");
  } catch (e) {
    token.clear();
    return signIn(e.status === 401 ? `The token was refused (${e.message}).` : e.message);
  }
  const who = me.kind === "admin" ? "admin" : `owner ${me.owner}`;
  fill(document.getElementById("who"), `Signed in as ${who}`);
  document.getElementById("sign-out").hidden = false;
  const allowed = PAGES.filter((p) => !p.needs || me[p.needs]);
  fill(document.getElementById("nav"),
    allowed.map((p) => h("a", { href: `#/${p.id}`, id: `nav-${p.id}` }, p.title)));
  if (!location.hash || !allowed.some((p) => location.hash.startsWith(`#/${p.id}`))) {
    location.hash = `#/${allowed[0].id}`;
  } else {
    route();
  }
}

async function route() {
  if (!me) return;
  if (leave) leave();
  leave = null;
  notice("");
  const [id, ...rest] = location.hash.replace(/^#\//, "").split("/");
  const allowed = PAGES.filter((p) => !p.needs || me[p.needs]);
  const entry = allowed.find((p) => p.id === id) ?? allowed[0];
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.id === `nav-${entry.id}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  // Each visit renders into its own container: a page still loading when
  // the user moves on fills a detached one, and is left at once.
  const mine = ++visits;
  const view = h("div", { class: "page" }, h("h1", {}, entry.title));
  fill(main, view);
  try {
    const left = (await entry.page.render(view, { me, args: rest.map(decodeURIComponent) })) ?? null;
    if (mine === visits) leave = left;
    else if (left) left();
  } catch (e) {
    if (mine === visits) notice(e.message, true);
  }
}

document.getElementById("sign-out").addEventListener("click", () => {
  if (leave) leave();
  leave = null;
  token.clear();
  location.hash = "";
  signIn();
});
window.addEventListener("hashchange", route);
start();
