// The runsheet's rollback procedure as one screen. Each step shows its result and records
// it in the log (RunbookStepRecorded) through the admin API, so the incident review has
// who did what, when, and what the bridge answered.

import * as api from "./api.js";
import { feed, latest, refreshNow } from "./feed.js";
import { changeFlags } from "./flags.js";
import { announce, badge, clear, confirmDialog, field, h, json, table } from "./ui.js";

async function record(step, ok, summary, detail = {}) {
  try {
    const saved = await api.post("/admin/console/runbook", { step, ok, summary, detail });
    return `recorded at position ${saved.position}`;
  } catch (err) {
    announce(`Step done, but its record failed: ${err.message}`, "error");
    return "not recorded";
  }
}

function stepCard(n, id, title, text) {
  const result = h("div", { class: "result", id: `${id}-result`, "aria-live": "polite" });
  const controls = h("div", { class: "controls" });
  const section = h(
    "section",
    { class: "card step", id, "aria-labelledby": `${id}-title` },
    h("h2", { id: `${id}-title` }, h("span", { class: "num" }, `${n}`), title, h("span", { class: "state" })),
    h("p", {}, text),
    controls,
    result,
  );
  return { section, controls, result, mark: (label, kind) => clear(section.querySelector(".state"), badge(label, kind)) };
}

function done(card, ok, message, where, detail) {
  card.mark(ok ? "done" : "problem", ok ? "ok" : "error");
  clear(card.result, h("p", { class: ok ? "ok-text" : "error" }, message, h("span", { class: "muted small" }, ` (${where})`)), detail || null);
}

function repairSummary(r) {
  const counts = {};
  for (const q of r.requests) counts[q.action] = (counts[q.action] || 0) + 1;
  const parts = Object.entries(counts).map(([a, n]) => `${n} ${a.replace("_", " ")}`);
  return `${r.status}: chain ${r.chain_ok ? "intact" : "DAMAGED"}, ${r.records_checked} records checked; requests ${parts.join(", ") || "none to resolve"}; ${r.sessions_closed.length} stale session(s) closed; ${r.appended} event(s) appended`;
}

function repairTable(r) {
  return table(
    ["Request", "Action", "Why"],
    r.requests.map((q) => h("tr", {}, h("td", { class: "mono" }, q.request_id), h("td", {}, q.action), h("td", {}, q.reason || ""))),
    "Requests repair looked at",
  );
}

export async function runbookPage(root) {
  root.append(h("p", { class: "lead" }, "Work top to bottom. Each step shows what the bridge answered and is recorded in the audit log. Budget: 15 minutes."));
  const s1 = stepCard(1, "step-kill", "Kill switch", "Force elicitation off for everyone; in-flight elicitations move to the legacy mailbox.");
  const s2 = stepCard(2, "step-drain", "Drain", "Stop new elicitations, give those in flight time to finish, then move the rest to the mailbox.");
  const s3 = stepCard(3, "step-legacy", "Confirm legacy is serving", "Elicitation is off, nothing is in flight, and new asks are going to the mailbox.");
  const s4 = stepCard(4, "step-repair", "Repair", "Verify the log, rebuild state from it and resolve requests left open. Dry run first; apply only what the dry run showed.");
  const s5 = stepCard(5, "step-verify", "Verify", "Check the whole hash chain and the signed checkpoints.");
  root.append(s1.section, s2.section, s3.section, s4.section, s5.section);

  // 1. Kill switch
  const reason = h("input", { type: "text", required: true, maxlength: 300, placeholder: "incident id and symptom" });
  const killBtn = h("button", { type: "submit", class: "danger" }, "Preview kill switch…");
  const killForm = h("form", { class: "row" }, field("Reason (required)", reason), h("div", { class: "actions" }, killBtn));
  s1.controls.append(killForm);
  killForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const flags = await api.get("/feature_flags");
    const body = { elicitation_enabled: false, force: true, reason: reason.value.trim() };
    const result = await changeFlags(body, flags.version, "Force the kill switch?", { danger: true });
    if (!result || result.stale) return;
    const where = await record("kill_switch", true, `elicitation off (forced), flags v${result.version}: ${body.reason}`, { version: result.version });
    done(s1, true, `Elicitation is off for everyone (flags version ${result.version}).`, where);
  });

  // 2. Drain, with a live view of what is still in flight
  const timeout = h("input", { type: "number", min: 0, max: 3600, value: 30, required: true });
  const drainBtn = h("button", { type: "submit", class: "primary" }, "Drain…");
  const drainForm = h("form", { class: "row" }, field("Seconds to let in-flight elicitations finish", timeout), h("div", { class: "actions" }, drainBtn));
  const progress = h("div", { class: "progress-view" });
  s2.controls.append(drainForm, progress);
  const showInFlight = (snap) => {
    if (!snap) return;
    const items = snap.in_flight.shown;
    clear(
      progress,
      h("p", {}, h("strong", {}, `${snap.in_flight.count}`), " elicitation(s) in flight", snap.draining ? " · draining" : ""),
      items.length
        ? table(["Request", "From", "To", "Age (s)"], items.map((r) => h("tr", {}, h("td", { class: "mono" }, r.request_id), h("td", {}, r.caller), h("td", {}, r.recipient), h("td", {}, `${r.age_s}`))))
        : null,
    );
  };
  showInFlight(latest());
  feed.listeners.add(showInFlight);
  drainForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const seconds = Number(timeout.value);
    const snap = await refreshNow();
    const ok = await confirmDialog({
      title: "Drain now?",
      body: h("p", {}, `${snap.in_flight.count} elicitation(s) in flight get up to ${seconds} s to finish; the rest move to the legacy mailbox. New asks go to the mailbox until you resume.`),
      confirm: "Drain",
    });
    if (!ok) return;
    drainBtn.disabled = true;
    s2.mark("running", "warn");
    const fast = setInterval(() => refreshNow().then(showInFlight), 500);
    try {
      const report = await api.post("/admin/drain", { timeout: seconds });
      const msg = `${report.in_flight_at_start} in flight at start: ${report.finished} finished, ${report.moved_to_legacy} moved to legacy.`;
      done(s2, true, msg, await record("drain", true, msg, report), h("pre", {}, json(report)));
    } catch (err) {
      done(s2, false, `Drain failed: ${err.message}`, await record("drain", false, `drain failed: ${err.message}`));
    } finally {
      clearInterval(fast);
      drainBtn.disabled = false;
      refreshNow();
    }
  });

  // 3. Confirm legacy is serving
  const checkBtn = h("button", { type: "button", class: "primary" }, "Check now");
  s3.controls.append(h("div", { class: "actions" }, checkBtn));
  checkBtn.addEventListener("click", async () => {
    const first = await refreshNow();
    await new Promise((r) => setTimeout(r, 3000));
    const snap = await refreshNow();
    const legacy = (m) => m.metrics.asks.legacy || 0;
    const elic = (m) => m.metrics.asks.elicitation || 0;
    const checks = [
      ["Elicitation flag is off", !snap.flags.elicitation_enabled],
      ["No elicitation in flight", snap.in_flight.count === 0],
      ["No ask finished by elicitation in the last 3 s", elic(snap) === elic(first)],
    ];
    const ok = checks.every(([, pass]) => pass);
    const summary = `${ok ? "legacy serving" : "NOT confirmed"}: ${checks.map(([t, p]) => `${t}: ${p ? "yes" : "no"}`).join("; ")}; legacy asks answered so far ${legacy(snap)}`;
    const where = await record("confirm_legacy", ok, summary, { checks: Object.fromEntries(checks), legacy_asks: legacy(snap) });
    done(
      s3,
      ok,
      ok ? `Legacy is serving (${legacy(snap)} legacy asks answered since start).` : "Not confirmed: see the failed checks.",
      where,
      h("ul", { class: "checks" }, checks.map(([t, pass]) => h("li", {}, pass ? badge("yes", "ok") : badge("no", "error"), " ", t))),
    );
  });

  // 4. Repair: dry run, then apply
  const dryBtn = h("button", { type: "button", class: "primary" }, "Dry run");
  const applyBtn = h("button", { type: "button", disabled: true }, "Apply repair…");
  s4.controls.append(h("div", { class: "actions" }, dryBtn, applyBtn));
  let planned = null;
  dryBtn.addEventListener("click", async () => {
    dryBtn.disabled = true;
    try {
      const r = await api.post("/admin/repair", { dry_run: true });
      planned = r;
      const where = await record("repair_dry_run", r.status !== "refused", repairSummary(r), { status: r.status, appended: r.appended });
      done(s4, r.status !== "refused", `Dry run — ${repairSummary(r)}.`, where, repairTable(r));
      s4.mark("dry run done", "warn");
      applyBtn.disabled = r.status === "refused";
      if (!applyBtn.disabled) applyBtn.classList.add("primary");
    } catch (err) {
      const r = err.body;
      done(s4, false, `Repair refused: ${r.status ? repairSummary(r) : err.message}`, await record("repair_dry_run", false, `refused: ${err.message}`));
    } finally {
      dryBtn.disabled = false;
    }
  });
  applyBtn.addEventListener("click", async () => {
    const ok = await confirmDialog({ title: "Apply the repair?", body: h("div", {}, h("p", {}, `The dry run planned: ${repairSummary(planned)}.`), repairTable(planned)), confirm: "Apply repair" });
    if (!ok) return;
    applyBtn.disabled = true;
    try {
      const r = await api.post("/admin/repair", { dry_run: false });
      const where = await record("repair_apply", true, repairSummary(r), { status: r.status, appended: r.appended, head_after: r.head_after });
      done(s4, true, `Applied — ${repairSummary(r)}.`, where, repairTable(r));
    } catch (err) {
      done(s4, false, `Repair failed: ${err.message}`, await record("repair_apply", false, `failed: ${err.message}`));
    }
  });

  // 5. Verify
  const verifyBtn = h("button", { type: "button", class: "primary" }, "Verify the store");
  s5.controls.append(h("div", { class: "actions" }, verifyBtn));
  verifyBtn.addEventListener("click", async () => {
    verifyBtn.disabled = true;
    try {
      const v = await api.get("/admin/console/verify");
      const msg = v.ok
        ? `Chain intact: ${v.records_checked} records, ${v.checkpoints_checked} signed checkpoint(s) checked (last at ${v.last_checkpoint}).`
        : `${v.problems.length} problem(s): first at position ${v.problems[0].position}, ${v.problems[0].kind}: ${v.problems[0].detail}`;
      done(s5, v.ok, msg, await record("verify", v.ok, msg, { size: v.size, problems: v.problems.length }));
    } catch (err) {
      done(s5, false, `Verify failed: ${err.message}`, await record("verify", false, `failed: ${err.message}`));
    } finally {
      verifyBtn.disabled = false;
    }
  });
  return () => feed.listeners.delete(showInFlight);
}
