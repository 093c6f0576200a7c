// Live flows: the status API polled every 1.5 s, a rate chart per flow over
// the last five minutes, and each flow's dead letters with replay.

import { api, seg } from "./api.js";
import { act, fill, h, table } from "./dom.js";

const POLL_MS = 1500;
const KEEP = 200; // samples: five minutes at 1.5 s
const history = new Map(); // flow -> [{in, ok, failed}], kept across visits

export async function render(main, { args }) {
  const grid = h("section", { id: "live", class: "grid" });
  const letters = h("section", { id: "dead-letters" });
  main.append(h("p", { class: "hint" }, "Rates are per second over the last minute; updated every 1.5 s."), grid, letters);
  let hashes = new Map();
  let polls = 0;
  const poll = async () => {
    if (polls++ % 10 === 0) hashes = await componentHashes();
    const { flows } = await api("GET", "/v1/flows");
    fill(grid, flows.length ? flows.map((f) => flowCard(f, hashes, letters)) : h("p", {}, "No flows."));
  };
  await poll();
  if (args[0]) await showDeadLetters(letters, args[0]);
  let stopped = false;
  const timer = setInterval(() => { if (!stopped) poll().catch(() => {}); }, POLL_MS);
  return () => { stopped = true; clearInterval(timer); };
}

/** flow name -> the hash of the component serving it, from the plugins API. */
async function componentHashes() {
  const { plugins } = await api("GET", "/v1/plugins");
  const map = new Map();
  for (const p of plugins) for (const f of p.flows) map.set(f, { version: p.algorithm, hash: p.hash });
  return map;
}

function flowCard(f, hashes, letters) {
  const samples = history.get(f.name) ?? [];
  samples.push({ in: f.received_per_sec, ok: f.succeeded_per_sec, failed: f.failed_per_sec });
  if (samples.length > KEEP) samples.shift();
  history.set(f.name, samples);
  const serving = hashes.get(f.name);
  const rate = formatRate;
  return h("article", { class: "card live-flow", "data-flow": f.name },
    h("h2", {}, f.name, " ", h("span", { class: `state ${f.state}` }, f.state)),
    table(["In/s", "Ok/s", "Failed/s", "In flight", "Dead letters", "Received", "Processed"],
      [[h("span", { class: "rate-in" }, rate(f.received_per_sec)), h("span", { class: "rate-ok" }, rate(f.succeeded_per_sec)),
        h("span", { class: "rate-failed" }, rate(f.failed_per_sec)), f.in_flight,
        h("span", { class: "dead-lettered" }, f.dead_lettered), h("span", { class: "received" }, f.received),
        h("span", { class: "succeeded" }, f.succeeded)]]),
    chart(samples),
    h("p", {}, `Topic ${f.topic}, algorithm ${serving ? serving.version : f.algorithm}`),
    serving?.hash ? h("p", { class: "hash" }, `Component ${serving.hash.slice(0, 16)}…`) : null,
    f.waiting_for ? h("p", { class: "waiting" }, `Waiting: ${f.waiting_for}`) : null,
    f.last_error ? h("p", { class: "error" }, `Last error ${f.last_error[0]}: ${f.last_error[1]}`) : null,
    f.rollout ? canaryLine(f.rollout) : null,
    f.shadow ? shadowLine(f.shadow) : null,
    f.parked_keys ? h("p", { class: "parked" },
      `Parked keys: ${f.parked_keys} holding ${f.parked_messages} messages (eventflow keys list ${f.name})`) : null,
    h("button", { type: "button", onclick: () => showDeadLetters(letters, f.name) }, "Dead letters"));
}

const percent = (x) => `${(x * 100).toFixed(1)} %`;

/** The flow's canary: its share, state and numbers against the serving version's. */
function canaryLine(r) {
  const side = (s) => `${s.messages} messages, ${percent(s.window_failure_rate)} failed, p99 ${(s.window_p99_secs * 1000).toFixed(1)} ms`;
  return h("div", { class: "rollout" },
    h("p", {}, `Canary ${r.canary_version}: `, h("span", { class: `state ${r.state}` }, r.state.replace("_", " ")),
      `, ${r.percent} % of the messages`),
    h("p", { class: "hint" }, `canary: ${side(r.canary)}; serving: ${side(r.serving)}`),
    r.decided ? h("p", { class: "hint" }, `${r.decided[0]}: ${r.decided[1]}`) : null);
}

/** The flow's shadow: what it ran, skipped, failed, and how often it agreed. */
function shadowLine(s) {
  const agreement = s.agreement === undefined ? "no comparison yet" : `${percent(s.agreement)} agreement`;
  return h("div", { class: "shadow" },
    h("p", {}, `Shadow ${s.version}: `, h("span", { class: `state ${s.state}` }, s.state),
      `, ${s.runs} runs, ${s.skipped} skipped, ${s.failures} failed, ${agreement}`),
    s.stopped ? h("p", { class: "hint" }, `${s.stopped[0]}: ${s.stopped[1]}`) : null);
}

/** A rate per second: two decimals below 10, whole numbers above. */
function formatRate(x) {
  return x < 10 ? x.toFixed(2) : Math.round(x).toLocaleString("en");
}

/** A small line chart of the in, ok and failed rates. */
function chart(samples) {
  const canvas = h("canvas", { width: 320, height: 80, class: "chart", role: "img",
    "aria-label": "Rates over the last minutes: in (blue), ok (green), failed (red)" });
  const ctx = canvas.getContext("2d");
  // Scaled to the highest rate shown, so a flow at 0.05/s draws as clearly
  // as one at 5,000/s; the scale is written in the corner.
  const peak = Math.max(0, ...samples.flatMap((s) => [s.in, s.ok, s.failed]));
  const top = peak > 0 ? peak : 1;
  ctx.strokeStyle = "#ccc";
  ctx.strokeRect(0.5, 0.5, canvas.width - 1, canvas.height - 1);
  ctx.fillStyle = "#555";
  ctx.font = "10px sans-serif";
  ctx.fillText(`${formatRate(peak)}/s`, 4, 11);
  const series = [["in", "#2b5797"], ["ok", "#2e7d32"], ["failed", "#c62828"]];
  // At least the last minute spans the width (40 samples), up to five.
  const step = canvas.width / Math.max(40, samples.length - 1);
  for (const [key, color] of series) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    samples.forEach((s, i) => {
      const x = canvas.width - (samples.length - 1 - i) * step - 1;
      const y = canvas.height - 2 - (s[key] / top) * (canvas.height - 14);
      if (i === 0) ctx.moveTo(x - (samples.length === 1 ? step : 0), y);
      if (i > 0 || samples.length === 1) ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
  return canvas;
}

async function showDeadLetters(section, flow) {
  const path = `/v1/flows/${seg(flow)}/dead-letters`;
  const refresh = () => showDeadLetters(section, flow);
  const replay = (id) => act(id ? `Replayed ${id}.` : `Replayed the dead letters of ${flow}.`,
    () => api("POST", `${path}/replay`, id ? { id } : {}), refresh);
  const list = await api("GET", path);
  const preview = (e) => {
    const text = e.payload_encoding === "utf8" ? e.payload : `(base64) ${e.payload}`;
    return text.length > 120 ? `${text.slice(0, 120)}…` : text;
  };
  fill(section, h("h2", {}, `Dead letters of ${flow}`),
    h("p", {}, `${list.verified} verified, ${list.unverified} unverified.`),
    list.dead_letters.length ? table(
      ["Message", "Reason", "Attempts", "Dead-lettered", "Algorithm", "Payload", ""],
      list.dead_letters.map((d) => {
        const e = d.envelope;
        return [e.source?.message_id ?? d.dead_letter_id,
          `${e.last_failure?.reason ?? ""}: ${e.last_failure?.detail ?? ""}`,
          e.attempts, e.dead_lettered_at, e.algorithm, h("code", {}, preview(e)),
          d.verified ? h("button", { type: "button", class: "replay", onclick: () => replay(d.dead_letter_id) }, "Replay")
            : "unverified"];
      })) : h("p", {}, "No dead letters."),
    list.dead_letters.length ? h("button", { type: "button", id: "replay-all", onclick: () => replay(null) }, "Replay all") : null);
}
