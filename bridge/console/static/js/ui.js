// Small DOM helpers. Everything from the server goes in as text (never innerHTML), so a
// hostile agent name or reason in the log cannot inject markup into an operator's page.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let uid = 0;
export function field(label, input, hint) {
  const id = input.id || `f${++uid}`;
  input.id = id;
  const hintEl = hint ? h("span", { class: "hint", id: `${id}-hint` }, hint) : null;
  if (hintEl) input.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: "field" }, h("label", { for: id }, label), input, hintEl);
}

export function iso(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  return new Date(seconds * 1000).toISOString().replace(".000", "").replace("T", " ");
}

export function ago(seconds) {
  if (!seconds) return "never";
  const s = Math.max(0, Date.now() / 1000 - seconds);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

export function json(value) {
  return JSON.stringify(value, null, 2);
}

export function badge(text, kind) {
  return h("span", { class: `badge ${kind}` }, text);
}

const live = () => document.getElementById("live");

// Announce to screen readers and show in the status line.
export function announce(text, kind = "info") {
  const el = live();
  el.className = `status-line ${kind}`;
  el.textContent = text;
}

// A modal confirmation: resolves true only when the operator presses the confirm button.
// `body` is a node describing exactly what will happen; Escape or Cancel resolves false.
export function confirmDialog({ title, body, confirm = "Confirm", danger = false, cancel = true }) {
  const dialog = document.getElementById("dialog");
  return new Promise((resolve) => {
    const yes = h("button", { type: "submit", value: "yes", class: danger ? "danger" : "primary" }, confirm);
    const no = cancel ? h("button", { type: "submit", value: "no", formnovalidate: true }, "Cancel") : null;
    const form = h(
      "form",
      { method: "dialog" },
      h("h2", { id: "dialog-title" }, title),
      h("div", { class: "dialog-body" }, body),
      h("div", { class: "actions" }, no, yes),
    );
    clear(dialog, form);
    dialog.setAttribute("aria-labelledby", "dialog-title");
    dialog.addEventListener(
      "close",
      () => resolve(dialog.returnValue === "yes"),
      { once: true },
    );
    dialog.returnValue = "";
    dialog.showModal();
    (no || yes).focus();
  });
}

export function table(headers, rows, caption) {
  return h(
    "table",
    {},
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "empty" }, "Nothing to show."))),
  );
}
