// Agents: list, add, rotate a key, revoke. A new secret is shown once, in a dialog the
// operator closes after copying it; it is never stored by the page or the server's log.

import * as api from "./api.js";
import { announce, badge, clear, confirmDialog, field, h, iso, table } from "./ui.js";

function secretBox(result, what) {
  const secret = h("input", { type: "text", readonly: true, value: result.secret, class: "mono secret", "aria-label": "Secret" });
  return h(
    "div",
    {},
    h("p", {}, `${what} Copy the secret now: it is shown once and cannot be read back.`),
    h("dl", { class: "stats" },
      h("div", { class: "stat" }, h("dt", {}, "Agent"), h("dd", {}, result.agent)),
      h("div", { class: "stat" }, h("dt", {}, "Key id"), h("dd", { class: "mono" }, result.key_id)),
    ),
    h("div", { class: "copy-row" }, field("Secret", secret), h("button", { type: "button", onclick: () => copy(secret) }, "Copy")),
    result.previous_valid_until
      ? h("p", {}, `The previous key(s) keep working until ${iso(result.previous_valid_until)} UTC so the agent can switch over.`)
      : null,
  );
}

async function copy(input) {
  input.select();
  try {
    await navigator.clipboard.writeText(input.value);
    announce("Secret copied to the clipboard.");
  } catch {
    announce("Select the secret and copy it (Ctrl+C): the clipboard is not available here.", "warn");
  }
}

async function showSecret(result, what) {
  await confirmDialog({ title: "Save this secret", body: secretBox(result, what), confirm: "I have saved it", cancel: false });
}

const splitList = (text) => text.split(",").map((x) => x.trim()).filter(Boolean);

export async function agentsPage(root) {
  const list = h("section", { class: "card", "aria-labelledby": "agents-list" });
  const name = h("input", { type: "text", required: true, maxlength: 128 });
  const roles = h("input", { type: "text", placeholder: "expert, reviewer" });
  const caps = h("input", { type: "text", placeholder: "review" });
  const form = h(
    "form",
    { class: "card", "aria-labelledby": "agents-add" },
    h("h2", { id: "agents-add" }, "Add an agent"),
    h("div", { class: "row" }, field("Name", name), field("Roles (comma-separated)", roles), field("Capabilities (comma-separated)", caps)),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Add agent…")),
  );
  root.append(form, list);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: name.value.trim(), roles: splitList(roles.value), capabilities: splitList(caps.value) };
    const ok = await confirmDialog({
      title: `Add agent ${body.name}?`,
      body: h("p", {}, `Registers ${body.name} with roles [${body.roles.join(", ")}] and capabilities [${body.capabilities.join(", ")}], and issues its first key.`),
      confirm: "Add agent",
    });
    if (!ok) return;
    try {
      const result = await api.post("/admin/agents", body);
      form.reset();
      await showSecret(result, `Agent ${result.agent} is registered.`);
      announce(`Agent ${result.agent} added.`, "ok");
      await load();
    } catch (err) {
      announce(`Not added: ${err.body.message || err.message}`, "error");
    }
  });

  async function act(agent, verb) {
    const rotate = verb === "rotate";
    const ok = await confirmDialog({
      title: rotate ? `Rotate ${agent}'s key?` : `Revoke ${agent}?`,
      body: h("p", {}, rotate
        ? "Issues a new key. The current key keeps working for the grace period, then stops."
        : "Every key of this agent stops working immediately. This cannot be undone."),
      confirm: rotate ? "Rotate key" : "Revoke agent",
      danger: !rotate,
    });
    if (!ok) return;
    try {
      const result = await api.post(`/admin/agents/${encodeURIComponent(agent)}/${verb}`);
      if (rotate) await showSecret(result, `New key for ${agent}.`);
      announce(rotate ? `Rotated ${agent}'s key.` : `Revoked ${agent}.`, "ok");
      await load();
    } catch (err) {
      announce(`Not done: ${err.body.message || err.message}`, "error");
    }
  }

  async function load() {
    const { agents } = await api.get("/admin/agents");
    const rows = agents.map((a) =>
      h(
        "tr",
        {},
        h("th", { scope: "row" }, a.agent),
        h("td", {}, a.revoked ? badge("revoked", "error") : badge("active", "ok")),
        h("td", {}, a.roles.join(", ") || "—"),
        h("td", {}, a.capabilities.join(", ") || "—"),
        h("td", { class: "mono small" }, a.active_key_ids.join(", ") || "—"),
        h(
          "td",
          { class: "nowrap" },
          a.revoked ? null : [
            h("button", { type: "button", onclick: () => act(a.agent, "rotate"), "aria-label": `Rotate key of ${a.agent}` }, "Rotate key"),
            " ",
            h("button", { type: "button", class: "danger", onclick: () => act(a.agent, "revoke"), "aria-label": `Revoke ${a.agent}` }, "Revoke"),
          ],
        ),
      ),
    );
    clear(list, h("h2", { id: "agents-list" }, `Agents (${agents.length})`), table(["Agent", "State", "Roles", "Capabilities", "Active keys", "Actions"], rows));
  }
  await load();
}
