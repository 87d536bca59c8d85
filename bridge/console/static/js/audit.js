// Audit: search the log, follow one request's timeline, the security report, verify the
// store, and download a verifiable export of exactly what the search selects.

import * as api from "./api.js";
import { announce, badge, clear, field, h, iso, table } from "./ui.js";

const TYPES = [
  "RequestCreated", "RequestRouted", "RequestDelivered", "RequestFellBack", "RequestAnswered",
  "RequestDeclined", "RequestCancelled", "RequestTimedOut", "RequestExpired", "AnswerRejected",
  "MessageSent", "MessageDelivered", "MailboxAcknowledged", "SessionOpened", "SessionClosed",
  "AgentRegistered", "AgentKeyIssued", "AgentKeyRotated", "AgentRevoked", "FlagChanged",
  "DrainStarted", "DrainFinished", "RepairCompleted", "DamageAccepted", "AutoRollbackTriggered",
  "RunbookStepRecorded", "AuthRejected", "RateLimited", "AdminAuthFailed", "ConsoleSignedIn",
  "ConsoleSignedOut",
];
const PAGE = 200;

function brief(data) {
  const text = JSON.stringify(data);
  return text.length > 160 ? `${text.slice(0, 157)}…` : text;
}

function utc(input) {
  return input.value ? `${input.value}Z` : "";
}

export async function auditPage(root) {
  const agent = h("input", { type: "text", maxlength: 128 });
  const request = h("input", { type: "text", maxlength: 128, class: "mono" });
  const type = h("select", {}, h("option", { value: "" }, "any type"), TYPES.map((t) => h("option", { value: t }, t)));
  const since = h("input", { type: "datetime-local", step: 1 });
  const until = h("input", { type: "datetime-local", step: 1 });
  const results = h("div", { class: "results" });
  const exportLink = h("a", { class: "button", href: "#", download: "" }, "Download export of these filters");
  const form = h(
    "form",
    { class: "card", role: "search", "aria-labelledby": "audit-search" },
    h("h2", { id: "audit-search" }, "Search the log"),
    h("div", { class: "row" }, field("Agent", agent, "Actor or any agent named in the event"), field("Request id", request), field("Type", type)),
    h("div", { class: "row" }, field("From (UTC)", since), field("To (UTC)", until)),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Search"), exportLink),
  );
  const timeline = h("section", { class: "card", "aria-labelledby": "audit-timeline", id: "timeline" });
  const security = h("section", { class: "card", "aria-labelledby": "audit-security" });
  const verify = h("section", { class: "card", "aria-labelledby": "audit-verify" });
  root.append(form, results, timeline, h("div", { class: "two" }, security, verify));

  const params = () => {
    const p = new URLSearchParams();
    if (agent.value.trim()) p.set("agent", agent.value.trim());
    if (request.value.trim()) p.set("request", request.value.trim());
    if (type.value) p.set("type", type.value);
    if (utc(since)) p.set("since", utc(since));
    if (utc(until)) p.set("until", utc(until));
    return p;
  };
  const syncExport = () => exportLink.setAttribute("href", `/admin/console/export?${params()}`);
  form.addEventListener("input", syncExport);
  syncExport();

  async function search(from = 1) {
    const p = params();
    p.set("limit", String(PAGE));
    p.set("from_position", String(from));
    try {
      const page = await api.get(`/admin/events?${p}`);
      const rows = page.events.map((e) =>
        h(
          "tr",
          {},
          h("td", {}, `${e.position}`),
          h("td", { class: "nowrap" }, iso(e.time)),
          h("td", {}, e.type),
          h("td", {}, e.actor),
          h("td", {}, e.data.request_id ? h("button", { type: "button", class: "link mono", onclick: () => showTimeline(e.data.request_id) }, e.data.request_id) : "—"),
          h("td", { class: "mono small" }, brief(e.data)),
        ),
      );
      const more = page.next_position
        ? h("button", { type: "button", onclick: () => search(page.next_position) }, `Next ${PAGE} →`)
        : null;
      clear(
        results,
        h("section", { class: "card", "aria-labelledby": "audit-results" },
          h("h2", { id: "audit-results" }, `${page.events.length} event(s)`, h("span", { class: "muted small" }, ` from position ${from}; store head ${page.head}`)),
          table(["#", "When (UTC)", "Type", "Actor", "Request", "Data"], rows),
          more),
      );
      announce(`${page.events.length} event(s) found.`);
    } catch (err) {
      announce(`Search refused: ${err.body.message || err.message}`, "error");
    }
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    search();
  });

  async function showTimeline(id) {
    const page = await api.get(`/admin/events?request=${encodeURIComponent(id)}&limit=10000`);
    const start = page.events.length ? page.events[0].time : 0;
    clear(
      timeline,
      h("h2", { id: "audit-timeline", tabindex: "-1" }, "Timeline of ", h("span", { class: "mono" }, id)),
      h("ol", { class: "timeline" }, page.events.map((e) =>
        h("li", {},
          h("span", { class: "t" }, `+${(e.time - start).toFixed(3)} s`),
          h("strong", {}, e.type),
          ` by ${e.actor} · #${e.position} · ${iso(e.time)}`,
          h("div", { class: "mono small" }, brief(e.data))))),
      h("a", { class: "button", href: `/admin/console/export?request=${encodeURIComponent(id)}`, download: "" }, "Download this request's export"),
    );
    timeline.querySelector("h2").focus();
  }
  clear(timeline, h("h2", { id: "audit-timeline" }, "Request timeline"), h("p", { class: "muted" }, "Pick a request id in the results to see its history."));

  const reportSince = h("input", { type: "datetime-local", step: 1 });
  const report = h("div");
  const reportForm = h(
    "form",
    {},
    h("h2", { id: "audit-security" }, "Security report"),
    h("div", { class: "row" }, field("Since (UTC, empty = all)", reportSince)),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Build report")),
    report,
  );
  reportForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const q = utc(reportSince) ? `?since=${encodeURIComponent(utc(reportSince))}` : "";
    const r = await api.get(`/admin/console/security${q}`);
    const tally = (title, obj) =>
      table([title, "Count"], Object.entries(obj).map(([k, n]) => h("tr", {}, h("td", {}, k), h("td", {}, `${n}`))));
    clear(
      report,
      h("dl", { class: "stats" },
        ...[["Auth rejections", r.auth_rejections.total], ["Replays", r.replays.total], ["Rate limited", r.rate_limited.total], ["Admin auth failures", r.admin_auth_failures.total], ["Flag changes", r.flag_changes.length]]
          .map(([k, v]) => h("div", { class: "stat" }, h("dt", {}, k), h("dd", {}, `${v}`)))),
      tally("Rejection reason", r.auth_rejections.by_reason),
      tally("Admin failure reason", r.admin_auth_failures.by_reason),
      tally("Admin failure address", r.admin_auth_failures.by_remote),
      table(
        ["When (UTC)", "Who", "Why"],
        r.flag_changes.map((c) => h("tr", {}, h("td", { class: "nowrap" }, c.time), h("td", {}, c.actor), h("td", {}, c.reason || "—"))),
        "Flag changes",
      ),
    );
  });
  clear(security, reportForm);

  const verifyBtn = h("button", { type: "button" }, "Verify the store");
  const verifyOut = h("div", { "aria-live": "polite" });
  verifyBtn.addEventListener("click", async () => {
    verifyBtn.disabled = true;
    clear(verifyOut, "Verifying…");
    try {
      const v = await api.get("/admin/console/verify");
      clear(
        verifyOut,
        h("p", {}, v.ok ? badge("intact", "ok") : badge("problems", "error"), ` ${v.records_checked} records, ${v.checkpoints_checked} signed checkpoint(s) checked; last checkpoint at ${v.last_checkpoint}.`),
        v.problems.length ? table(["Position", "Kind", "Detail"], v.problems.map((p) => h("tr", {}, h("td", {}, `${p.position}`), h("td", {}, p.kind), h("td", {}, p.detail)))) : null,
      );
    } catch (err) {
      clear(verifyOut, h("p", { class: "error" }, `Verify failed: ${err.message}`));
    } finally {
      verifyBtn.disabled = false;
    }
  });
  clear(
    verify,
    h("h2", { id: "audit-verify" }, "Integrity"),
    h("p", {}, "Recomputes the hash chain over every record and checks the Ed25519-signed checkpoints. Exports carry their own proof: check one offline with ", h("code", {}, "lighthouse audit verify-export"), "."),
    h("div", { class: "actions" }, verifyBtn),
    verifyOut,
  );
}
