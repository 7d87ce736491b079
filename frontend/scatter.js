// Estimate against the verified (activation patching) value, one point per verified component.
/* global Plotly */
import { shortName } from "./cells.js";
import { METHOD_LABELS, correctedMethod, shapeOf, verifiedAt } from "./flags.js";
import { $, st } from "./state.js";

export function renderScatter() {
  const r = st.result;
  const [R, C] = shapeOf(r);
  const scores = r.scores || {};
  const corrName = correctedMethod(scores, st.result.reliability_source);
  const pts = [];
  for (let i = 0; i < R; i++)
    for (let j = 0; j < C; j++) {
      const v = verifiedAt(r.verified, i, j);
      if (v != null) pts.push([i, j, v]);
    }
  $("scatter-empty").classList.toggle("hidden", pts.length > 0);
  const div = $("scatter");
  div.classList.toggle("hidden", pts.length === 0);
  div.dataset.points = String(pts.length);
  if (!pts.length) return;
  const traces = [];
  let lo = Infinity;
  let hi = -Infinity;
  const add = (name, m, color, symbol) => {
    if (!scores[m]) return;
    const xs = pts.map((p) => p[2]);
    const ys = pts.map((p) => scores[m][p[0]][p[1]]);
    for (const v of xs.concat(ys)) if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    traces.push({
      type: "scatter",
      mode: "markers",
      name,
      x: xs,
      y: ys,
      text: pts.map((p) => shortName(p[0], p[1])),
      marker: { color, symbol, size: 9, line: { color: "#fff", width: 1 } },
      hovertemplate: `%{text}<br>verified %{x:.4f}<br>${name} %{y:.4f}<extra></extra>`,
    });
  };
  add("AtP", "atp", "#d62728", "circle");
  if (corrName) add(METHOD_LABELS[corrName] || corrName, corrName, "#1f4fbf", "diamond");
  const pad = (hi - lo) * 0.08 || 0.1;
  lo -= pad;
  hi += pad;
  traces.unshift({ type: "scatter", mode: "lines", name: "y = x", x: [lo, hi], y: [lo, hi], line: { color: "#777", dash: "dash", width: 1 }, hoverinfo: "skip" });
  Plotly.react(div, traces, {
    height: 360,
    margin: { l: 60, r: 10, t: 10, b: 50 },
    xaxis: { title: { text: "verified (activation patching)" }, range: [lo, hi], zeroline: true },
    yaxis: { title: { text: "estimate" }, range: [lo, hi], zeroline: true },
    legend: { orientation: "h", y: 1.08 },
  }, { displaylogo: false, responsive: true, displayModeBar: false }); // no invisible buttons in the tab order
}

