// Overview: what is running, how it is doing, and the guard's view of elicitation.

import { feed, latest } from "./feed.js";
import { lineChart, quantile } from "./charts.js";
import { ago, badge, clear, h } from "./ui.js";

const WINDOW_S = 30; // latency quantiles over the last 30 s of histogram deltas

function rateSeries(snaps, metric) {
  const keys = new Set(snaps.flatMap((s) => Object.keys(s.metrics[metric])));
  return [...keys].sort().map((key) => ({
    name: key,
    points: snaps.slice(1).map((s, i) => {
      const prev = snaps[i];
      const dt = s.time - prev.time;
      const dv = (s.metrics[metric][key] || 0) - (prev.metrics[metric][key] || 0);
      return [s.time, dt > 0 ? Math.max(0, dv) / dt : null];
    }),
  }));
}

function latencySeries(snaps, q) {
  const paths = new Set(snaps.flatMap((s) => Object.keys(s.metrics.latency)));
  return [...paths].sort().map((path) => ({
    name: `${path} p${Math.round(q * 100)}`,
    points: snaps.map((s, i) => {
      let j = i;
      while (j > 0 && s.time - snaps[j - 1].time <= WINDOW_S) j--;
      const now = s.metrics.latency[path];
      const then = j < i ? snaps[j].metrics.latency[path] : null;
      if (!now || j === i) return [s.time, null];
      const counts = now.counts.map((c, k) => c - (then ? then.counts[k] : 0));
      const v = quantile(q, now.le, counts);
      return [s.time, v === null ? null : v * 1000];
    }),
  }));
}

function guardSeries(snaps, key, scale) {
  return [{ name: "guard window", points: snaps.filter((s) => s.guard).map((s) => [s.time, s.guard.window[key] * scale]) }];
}

export function charts(snaps) {
  const guard = latest()?.guard;
  const t = guard?.thresholds;
  const ms = (v) => `${Math.round(v)}`;
  return [
    ["Asks per second by path", "asks/s", rateSeries(snaps, "asks"), null, (v) => v.toFixed(1)],
    [
      "Ask latency p50 / p99 by path",
      "ms",
      [...latencySeries(snaps, 0.5), ...latencySeries(snaps, 0.99)],
      t ? { value: t.p99_ms, label: `rollback: p99 > ${t.p99_ms} ms` } : null,
      ms,
    ],
    [
      "Elicitation error rate (guard window)",
      "%",
      guardSeries(snaps, "error_rate", 100),
      t ? { value: t.error_rate * 100, label: `rollback: > ${t.error_rate * 100} %` } : null,
      (v) => v.toFixed(1),
    ],
    [
      "Elicitation p99 (guard window)",
      "ms",
      guardSeries(snaps, "p99_ms", 1),
      t ? { value: t.p99_ms, label: `rollback: > ${t.p99_ms} ms` } : null,
      ms,
    ],
    ["Fallbacks to legacy by cause", "per s", rateSeries(snaps, "fallbacks"), null, (v) => v.toFixed(2)],
    ["Auth rejections by reason", "per s", rateSeries(snaps, "auth_rejections"), null, (v) => v.toFixed(2)],
    ["Rate-limited requests by scope", "per s", rateSeries(snaps, "rate_limited"), null, (v) => v.toFixed(2)],
  ].map(([title, unit, series, threshold, format]) =>
    h(
      "figure",
      { class: "card chart-card" },
      h("figcaption", {}, title),
      lineChart({ title, unit, series, threshold, format }),
      h("ul", { class: "legend" }, series.map((x, i) => h("li", { class: `c${i % 6}` }, x.name))),
    ),
  );
}

function stat(label, value, extra) {
  return h("div", { class: "stat" }, h("dt", {}, label), h("dd", {}, value, extra ? h("span", { class: "muted small" }, extra) : null));
}

export function guardPanel(guard, flags) {
  if (!guard) return h("p", {}, "The auto-rollback guard is not running.");
  const w = guard.window, t = guard.thresholds;
  const d = guard.last_decision;
  const armed = flags.elicitation_enabled;
  return h(
    "section",
    { class: "card", "aria-labelledby": "guard-title" },
    h("h2", { id: "guard-title" }, "Auto-rollback guard ", armed ? badge("watching", "ok") : badge("elicitation off", "warn")),
    h(
      "dl",
      { class: "stats" },
      stat("Samples in window", `${w.samples}`, ` / ${t.min_samples} needed · ${t.window_s} s window`),
      stat("Error rate", `${(w.error_rate * 100).toFixed(1)} %`, ` limit ${(t.error_rate * 100).toFixed(0)} %`),
      stat("p99", `${Math.round(w.p99_ms)} ms`, ` limit ${t.p99_ms} ms`),
      stat("Last trip", d ? `${ago(d.at)}: ${d.reason}` : "never"),
    ),
  );
}

function summary(snap) {
  const s = snap.store, f = snap.flags;
  const open = Object.entries(snap.sessions).filter(([, n]) => n > 0);
  const sessions = open.map(([p, n]) => `${n} × ${p}`).join(", ") || "none";
  return h(
    "dl",
    { class: "stats card" },
    stat("Status", snap.status === "ok" ? badge("ok", "ok") : badge(snap.status, "warn")),
    stat("Version", snap.version),
    stat("Node", snap.node),
    stat("Store head", `${s.position}`, ` ${s.head_hash.slice(0, 12)}…`),
    stat("Last checkpoint", s.last_checkpoint ? `${s.last_checkpoint.size}` : "none", s.last_checkpoint ? ` ${ago(s.last_checkpoint.time)}` : ""),
    stat("Sessions", sessions),
    stat("Open requests", `${snap.open_requests}`, ` ${snap.in_flight.count} elicitation(s) in flight`),
    stat(
      "Elicitation",
      f.elicitation_enabled ? badge(`on · ${f.rollout_percent} %`, "ok") : badge("off (legacy only)", "warn"),
      ` flags v${f.version}`,
    ),
  );
}

export async function overviewPage(root) {
  const top = h("div");
  const guard = h("div");
  const grid = h("div", { class: "charts", "aria-label": "Live charts, refreshed every 3 seconds" });
  root.append(top, guard, h("h2", {}, "Live (every 3 s, last 6 min)"), grid);
  const draw = () => {
    const snap = latest();
    if (!snap) return clear(top, h("p", {}, "Loading…"));
    clear(top, summary(snap));
    clear(guard, guardPanel(snap.guard, snap.flags));
    clear(grid, charts(feed.snapshots));
  };
  draw();
  feed.listeners.add(draw);
  return () => feed.listeners.delete(draw);
}
