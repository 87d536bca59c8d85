// Line charts as plain SVG: a few series over time and, where the runsheet has one, the
// threshold the auto-rollback guard acts on, drawn as a dashed red line and labelled.

const NS = "http://www.w3.org/2000/svg";
const W = 420, H = 150, PAD = { l: 46, r: 10, t: 12, b: 22 };
export const PALETTE = ["#1f5fa8", "#b35900", "#2e7d32", "#7b3fa0", "#a11d4a", "#00695c"];

function s(tag, attrs, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function nice(max) {
  if (max <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= max) return m * step;
  return 10 * step;
}

// series: [{name, points: [[t, v|null], ...]}]; threshold: {value, label} or null.
export function lineChart({ title, unit, series, threshold, format = (v) => v.toFixed(1) }) {
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart" });
  const latest = series
    .map((x) => {
      const last = [...x.points].reverse().find((p) => p[1] !== null);
      return `${x.name} ${last ? format(last[1]) : "no data"}`;
    })
    .join(", ");
  svg.append(s("title", {}, `${title}: ${latest || "no data"}${threshold ? `; threshold ${threshold.label}` : ""}`));
  const times = series.flatMap((x) => x.points.map((p) => p[0]));
  const values = series.flatMap((x) => x.points.map((p) => p[1]).filter((v) => v !== null));
  const t1 = times.length ? Math.max(...times) : Date.now() / 1000;
  const t0 = Math.min(t1 - 60, times.length ? Math.min(...times) : t1 - 60);
  const top = nice(Math.max(...values, threshold ? threshold.value * 1.15 : 0, 0));
  const x = (t) => PAD.l + ((t - t0) / Math.max(1, t1 - t0)) * (W - PAD.l - PAD.r);
  const y = (v) => H - PAD.b - (Math.min(v, top) / top) * (H - PAD.t - PAD.b);
  for (const frac of [0, 0.5, 1]) {
    const v = top * frac;
    svg.append(s("line", { x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(s("text", { x: PAD.l - 4, y: y(v) + 4, class: "axis", "text-anchor": "end" }, format(v)));
  }
  svg.append(s("text", { x: PAD.l, y: H - 6, class: "axis" }, `−${Math.round(t1 - t0)} s`));
  svg.append(s("text", { x: W - PAD.r, y: H - 6, class: "axis", "text-anchor": "end" }, `now · ${unit}`));
  if (threshold) {
    const ty = y(threshold.value);
    svg.append(s("line", { x1: PAD.l, x2: W - PAD.r, y1: ty, y2: ty, class: "threshold" }));
    svg.append(s("text", { x: W - PAD.r - 2, y: ty - 4, class: "threshold-label", "text-anchor": "end" }, threshold.label));
  }
  series.forEach((line, i) => {
    let d = "";
    let pen = false;
    for (const [t, v] of line.points) {
      if (v === null) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    }
    if (d) svg.append(s("path", { d, fill: "none", stroke: PALETTE[i % PALETTE.length], "stroke-width": 2 }));
  });
  return svg;
}

// Quantile from cumulative histogram bucket deltas, like Prometheus' histogram_quantile.
export function quantile(q, le, counts) {
  const total = counts[counts.length - 1] || 0;
  if (total <= 0) return null;
  const rank = q * total;
  let prevLe = 0, prevCount = 0;
  for (let i = 0; i < le.length; i++) {
    if (counts[i] >= rank) {
      if (!Number.isFinite(le[i])) return prevLe;
      const inBucket = counts[i] - prevCount;
      return prevLe + (le[i] - prevLe) * (inBucket > 0 ? (rank - prevCount) / inBucket : 0);
    }
    prevLe = le[i];
    prevCount = counts[i];
  }
  return prevLe;
}
