// Flags: every change is previewed (what it does, to whom) and sent with If-Match, so an
// edit based on flags someone else has since changed is refused (409), never applied.

import * as api from "./api.js";
import { refreshNow } from "./feed.js";
import { announce, badge, clear, confirmDialog, field, h, iso, table } from "./ui.js";

function fmt(value) {
  if (typeof value === "boolean") return value ? "on" : "off";
  if (value && typeof value === "object") {
    const entries = Object.entries(value);
    return entries.length ? entries.map(([k, v]) => `${k}=${v ? "on" : "off"}`).join(", ") : "none";
  }
  return String(value);
}

export function previewBody(preview) {
  return h(
    "div",
    {},
    table(
      ["Setting", "Now", "After"],
      preview.changes.map((c) => h("tr", {}, h("th", { scope: "row" }, c.field), h("td", {}, fmt(c.old)), h("td", {}, fmt(c.new)))),
      "What changes",
    ),
    h("p", {}, `Agents on elicitation: ${preview.elicitation_before} → ${preview.elicitation_after} of ${preview.agents_total}.`),
    preview.to_legacy.length ? h("p", {}, "Moving to legacy: ", preview.to_legacy.join(", ")) : null,
    preview.to_elicitation.length ? h("p", {}, "Moving to elicitation: ", preview.to_elicitation.join(", ")) : null,
    h("ul", { class: "effects" }, preview.effects.map((e) => h("li", {}, e))),
  );
}

// Preview, confirm, apply with the version the operator saw. Returns the new flags or null.
export async function changeFlags(body, version, title, { danger = false } = {}) {
  let preview;
  try {
    preview = await api.post("/admin/console/flag-preview", body);
  } catch (err) {
    announce(`Not applied: ${err.body.message || err.message}`, "error");
    return null;
  }
  if (preview.version !== version) {
    announce(`Not applied: the flags changed since you loaded them (now version ${preview.version}). Review the current values and try again.`, "error");
    return { stale: true };
  }
  const ok = await confirmDialog({ title, body: previewBody(preview), confirm: "Apply change", danger });
  if (!ok) {
    announce("Cancelled; nothing was changed.");
    return null;
  }
  try {
    const result = await api.post("/feature_flags", body, { "If-Match": String(version) });
    announce(`Applied: flags are now version ${result.version}.`, "ok");
    refreshNow();
    return result;
  } catch (err) {
    if (err.status === 409) {
      announce(`Refused as stale: ${err.body.message}. Someone changed the flags meanwhile; review the current values.`, "error");
      return { stale: true };
    }
    announce(`Not applied: ${err.body.message || err.message}`, "error");
    return null;
  }
}

function history(events) {
  const rows = [...events].reverse().map((e) => {
    const o = e.data.old || {}, n = e.data.new || {};
    const diff = Object.keys(n).filter((k) => JSON.stringify(o[k]) !== JSON.stringify(n[k]));
    return h(
      "tr",
      {},
      h("td", { class: "nowrap" }, iso(e.time)),
      h("td", {}, e.actor),
      h("td", {}, e.data.reason || h("span", { class: "muted" }, "(no reason given)")),
      h("td", {}, diff.length ? diff.map((k) => h("div", {}, `${k}: ${fmt(o[k])} → ${fmt(n[k])}`)) : "no change"),
    );
  });
  return table(["When (UTC)", "Who", "Why", "Old → new"], rows);
}

export async function flagsPage(root) {
  const state = h("section", { class: "card", "aria-labelledby": "flags-now" });
  const editor = h("section", { class: "card", "aria-labelledby": "flags-edit" });
  const kill = h("section", { class: "card danger-zone", "aria-labelledby": "flags-kill" });
  const past = h("section", { class: "card", "aria-labelledby": "flags-history" });
  root.append(h("div", { class: "two" }, state, kill), editor, past);

  async function load() {
    const [flags, agents, changes] = await Promise.all([
      api.get("/feature_flags"),
      api.get("/admin/agents"),
      api.get("/admin/events?type=FlagChanged&limit=10000"),
    ]);
    const version = flags.version;
    clear(
      state,
      h("h2", { id: "flags-now" }, "Current"),
      h(
        "dl",
        { class: "stats" },
        h("div", { class: "stat" }, h("dt", {}, "Elicitation"), h("dd", {}, flags.elicitation_enabled ? badge("on", "ok") : badge("off", "warn"))),
        h("div", { class: "stat" }, h("dt", {}, "Rollout"), h("dd", {}, `${flags.rollout_percent} %`)),
        h("div", { class: "stat" }, h("dt", {}, "Overrides"), h("dd", {}, fmt(flags.overrides))),
        h("div", { class: "stat" }, h("dt", {}, "Version"), h("dd", {}, `${version}`, h("span", { class: "muted small" }, ` by ${flags.changed_by || "—"} ${flags.changed_at ? iso(flags.changed_at) : ""}`))),
      ),
    );

    const enabled = h("input", { type: "checkbox", checked: flags.elicitation_enabled });
    const percent = h("input", { type: "number", min: 0, max: 100, step: 1, value: flags.rollout_percent, required: true, inputmode: "numeric" });
    const agentSel = h("select", {}, h("option", { value: "" }, "— choose an agent —"), agents.agents.map((a) => h("option", { value: a.agent }, a.agent)));
    const mode = h("select", {}, h("option", { value: "true" }, "always elicitation"), h("option", { value: "false" }, "always legacy"), h("option", { value: "null" }, "remove override"));
    const reason = h("input", { type: "text", maxlength: 300, placeholder: "e.g. canary at 10 % for team blue" });
    const form = h(
      "form",
      { "aria-labelledby": "flags-edit" },
      h("h2", { id: "flags-edit" }, "Change"),
      h("div", { class: "row" },
        h("div", { class: "field check" }, enabled, h("label", { for: (enabled.id = "flag-enabled") }, "Elicitation enabled")),
        field("Rollout percent (0–100)", percent, "Agents whose stable bucket is below this get elicitation."),
      ),
      h("div", { class: "row" }, field("Override for agent", agentSel), field("Override", mode)),
      field("Reason (recorded)", reason),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Preview change…")),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = { elicitation_enabled: enabled.checked, rollout_percent: Number(percent.value) };
      if (agentSel.value) body.overrides = { [agentSel.value]: JSON.parse(mode.value) };
      if (reason.value.trim()) body.reason = reason.value.trim();
      const done = await changeFlags(body, version, "Apply this flag change?");
      if (done) await load();
    });
    clear(editor, form);

    const killReason = h("textarea", { required: true, rows: 2, maxlength: 300, placeholder: "e.g. p99 over 1 s since 14:02, incident INC-42" });
    const killForm = h(
      "form",
      { "aria-labelledby": "flags-kill" },
      h("h2", { id: "flags-kill" }, "Forced kill switch"),
      h("p", {}, "Turns elicitation off for everyone and moves elicitations already in flight to the legacy mailbox at once. Agents keep working through the mailbox."),
      field("Reason (required, recorded)", killReason),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "danger" }, "Preview kill switch…")),
    );
    killForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = { elicitation_enabled: false, force: true, reason: killReason.value.trim() };
      const done = await changeFlags(body, version, "Force the kill switch?", { danger: true });
      if (done) await load();
    });
    clear(kill, killForm);
    clear(past, h("h2", { id: "flags-history" }, "History"), history(changes.events));
  }
  await load();
}
