// Building the page: every value goes in as text (a text node or an
// attribute), never as HTML, so nothing the API returns can become markup.

/** An element: `attrs` are attributes, except `on*` (listeners) and
 *  boolean-valued ones (set when true); children are nodes or text. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces an element's content. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let fieldId = 0;

/** A labelled form field; `input` is an element made with `h`. */
export function field(label, input, hint) {
  const id = input.id || `f${++fieldId}`;
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input,
    hint ? h("small", {}, hint) : null);
}

/** A table with a header row; `rows` are arrays of cells. */
export function table(headers, rows, caption) {
  return h("table", {},
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))));
}

/** Shows a short message in the status line (errors in red). */
export function notice(text, isError = false) {
  const el = document.getElementById("notice");
  el.className = isError ? "error" : "";
  el.textContent = text;
}

/** Asks before a destructive step; resolves to true when confirmed. The
 *  dialog names what will happen and, in `items`, what it affects. */
export function confirm(text, items = [], action = "Confirm") {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  fill(document.getElementById("confirm-list"), items.map((i) => h("li", {}, i)));
  const yes = document.getElementById("confirm-yes");
  const no = document.getElementById("confirm-no");
  yes.textContent = action;
  return new Promise((resolve) => {
    const done = (answer) => {
      yes.removeEventListener("click", onYes);
      no.removeEventListener("click", onNo);
      dialog.removeEventListener("cancel", onNo);
      dialog.close();
      resolve(answer);
    };
    const onYes = () => done(true);
    const onNo = () => done(false);
    yes.addEventListener("click", onYes);
    no.addEventListener("click", onNo);
    dialog.addEventListener("cancel", onNo);
    dialog.showModal();
    no.focus();
  });
}

/** Runs an API call from a button or form, reporting its outcome. */
export async function act(what, call, then) {
  try {
    const result = await call();
    notice(what);
    if (then) await then(result);
    return result;
  } catch (e) {
    notice(`${e.message}`, true);
    return undefined;
  }
}
