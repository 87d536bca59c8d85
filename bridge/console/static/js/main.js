// Entry point: sign-in, the hash router and the overview poller every screen shares.

import * as api from "./api.js";
import { announce, clear, field, h } from "./ui.js";
import { overviewPage } from "./overview.js";
import { flagsPage } from "./flags.js";
import { runbookPage } from "./runbook.js";
import { agentsPage } from "./agents.js";
import { auditPage } from "./audit.js";
import { startPolling, stopPolling } from "./feed.js";

const PAGES = {
  overview: ["Overview", overviewPage],
  flags: ["Flags", flagsPage],
  runbook: ["Rollback runbook", runbookPage],
  agents: ["Agents", agentsPage],
  audit: ["Audit", auditPage],
};
let teardown = null;

async function route() {
  const main = document.getElementById("main");
  if (!api.operator()) return;
  const name = (location.hash.replace(/^#\/?/, "") || "overview").split("?")[0];
  const [title, render] = PAGES[name] || PAGES.overview;
  if (teardown) teardown();
  teardown = null;
  document.title = `${title} · Lighthouse console`;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.getAttribute("href") === `#/${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const heading = h("h1", { tabindex: "-1" }, title);
  const body = h("div", { class: "page" });
  clear(main, heading, body);
  teardown = (await render(body)) || null;
  heading.focus();
}

function showSignIn(message) {
  stopPolling();
  document.getElementById("nav").hidden = true;
  clear(document.getElementById("who"));
  const token = h("input", { type: "password", name: "token", autocomplete: "current-password", required: true });
  const name = h("input", { type: "text", name: "operator", autocomplete: "username", maxlength: 48, pattern: "[A-Za-z0-9_.@\\-]+" });
  const error = h("p", { class: "error", role: "alert" });
  const form = h(
    "form",
    { class: "card signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in"),
    h("p", {}, "Use the bridge's admin token (the CLI reads it from lighthouse.db.keys/admin.token). It is exchanged for a session cookie and is not kept by the browser."),
    field("Your name (recorded with every change)", name, "Letters, digits, . _ - @"),
    field("Admin token", token),
    error,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      await api.signIn(token.value, name.value.trim());
      token.value = "";
      signedIn();
    } catch (err) {
      const wait = err.status === 429 ? " Too many failed attempts from this address; wait and retry." : "";
      error.textContent = `Sign-in refused: ${err.body.reason || err.message}.${wait}`;
      token.focus();
    }
  });
  clear(document.getElementById("main"), form);
  if (message) announce(message, "warn");
  name.focus();
}

function signedIn() {
  document.getElementById("nav").hidden = false;
  const out = h("button", { type: "button", class: "link" }, "Sign out");
  out.addEventListener("click", async () => {
    try { await api.signOut(); } catch { /* the session is gone either way */ }
    showSignIn("Signed out.");
  });
  clear(document.getElementById("who"), `Signed in as ${api.operator()} `, out);
  announce(`Signed in as ${api.operator()}.`);
  startPolling();
  route();
}

api.whenSignedOut((message) => showSignIn(message));
window.addEventListener("hashchange", route);
(async () => {
  if (await api.resume()) signedIn();
  else showSignIn();
})();
