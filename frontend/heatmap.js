// The Plotly heatmap: one heatmap trace (+ a dark layer for unbounded error bounds), one outline
// path for the flags, markers for verified and pending cells; click a cell to verify it.
/* global Plotly */
import { hoverText } from "./cells.js";
import { correctedMethod, mapMatrix, maxAbs, shapeOf, verifiedAt } from "./flags.js";
import { $, pendingKeys, st } from "./state.js";
import { verify } from "./verify.js";

const GREY = "#c9cdd4";
// ColorBrewer RdBu: negative blue, zero white, positive red (used with zmid = 0).
const DIVERGING = [
  [0, "#053061"], [0.1, "#2166ac"], [0.2, "#4393c3"], [0.3, "#92c5de"], [0.4, "#d1e5f0"],
  [0.5, "#f7f7f7"], [0.6, "#fddbc7"], [0.7, "#f4a582"], [0.8, "#d6604d"], [0.9, "#b2182b"], [1, "#67001f"],
];
const DARK = "#4a4f5a";

function viewMatrix(R, C) {
  const r = st.result;
  const scores = r.scores || {};
  const corrName = correctedMethod(scores, st.result.reliability_source);
  const v = st.view;
  if (scores[v]) return { z: scores[v], kind: "diverging" };
  if (v === "reliability") return { z: r.reliability, kind: "unit" };
  if (v === "error_bound") {
    const z = mapMatrix(R, C, (i, j) => r.error_bound[i]?.[j] ?? null);
    const unb = mapMatrix(R, C, (i, j) => (r.error_bound[i]?.[j] == null ? 1 : null));
    return { z, kind: "positive", unbounded: unb };
  }
  if (v === "verified") return { z: mapMatrix(R, C, (i, j) => verifiedAt(r.verified, i, j, C)), kind: "diverging" };
  if (v === "diff") return { z: mapMatrix(R, C, (i, j) => scores[corrName][i][j] - scores.atp[i][j]), kind: "diverging" };
  if (v === "best") {
    const base = scores[corrName] || scores.atp;
    return { z: mapMatrix(R, C, (i, j) => verifiedAt(r.verified, i, j, C) ?? base[i][j]), kind: "diverging" };
  }
  return { z: mapMatrix(R, C, () => null), kind: "diverging" };
}

function quantile(matrix, q) {
  const v = [];
  for (const row of matrix || []) for (const x of row || []) if (typeof x === "number" && Number.isFinite(x)) v.push(x);
  if (!v.length) return 0;
  v.sort((a, b) => a - b);
  return v[Math.min(v.length - 1, Math.floor(q * (v.length - 1)))];
}

function geometry(R, C) {
  const container = $("heatmap").clientWidth || 1000;
  const margin = { l: 70, r: 110, t: 34, b: 60 };  // t: room for the mode bar above the cells
  const avail = Math.max(200, container - margin.l - margin.r);
  const cellW = Math.max(10, Math.min(120, avail / C));
  let cellH = Math.max(14, Math.min(80, cellW));
  if (R * cellH > 900) cellH = Math.max(12, 900 / R);
  return {
    margin,
    width: Math.round(Math.min(container, C * cellW + margin.l + margin.r)),
    height: Math.round(R * cellH + margin.t + margin.b),
    cellW,
    cellH,
  };
}

function outlinePath(cells, inset) {
  const x = [];
  const y = [];
  for (const [i, j] of cells) {
    const a = j - inset;
    const b = j + inset;
    const c = i - inset;
    const d = i + inset;
    x.push(a, b, b, a, a, null);
    y.push(c, c, d, d, c, null);
  }
  return { x, y };
}

export function renderHeatmap() {
  const r = st.result;
  const [R, C] = shapeOf(r);
  const { z, kind, unbounded } = viewMatrix(R, C);
  const pending = pendingKeys();
  const text = mapMatrix(R, C, (i, j) => hoverText(i, j, pending.has(`${i}.${j}`)));
  const xs = Array.from({ length: C }, (_, j) => j);
  const ys = Array.from({ length: R }, (_, i) => i);
  const lab = r.labels || {};

  const hm = {
    type: "heatmap",
    x: xs,
    y: ys,
    z,
    text,
    hovertemplate: "%{text}<extra></extra>",
    xgap: 1,
    ygap: 1,
    colorbar: { thickness: 14, len: 0.9 },
    hoverongaps: true,
  };
  if (kind === "diverging") {
    const m = maxAbs(z) || 1;
    Object.assign(hm, { colorscale: DIVERGING, zmid: 0, zmin: -m, zmax: m });
    hm.colorbar.title = { text: st.view === "diff" ? "Δ" : "metric", side: "right" };
  } else if (kind === "unit") {
    Object.assign(hm, { colorscale: "Viridis", zmin: 0, zmax: 1 });
    hm.colorbar.title = { text: "reliability", side: "right" };
  } else {
    // 0 = pale; the top of the scale at the 95th percentile so one huge bound does not wash
    // out the rest (hover shows the exact value).
    Object.assign(hm, { colorscale: "YlOrRd", reversescale: true, zmin: 0, zmax: quantile(z, 0.95) || maxAbs(z) || 1 });
    hm.colorbar.title = { text: "± bound", side: "right" };
  }
  const traces = [hm];
  // Unbounded error bounds: a dark layer under nothing else (null cells are transparent).
  traces.push({
    type: "heatmap",
    x: xs,
    y: ys,
    z: unbounded || [[null]],
    colorscale: [[0, DARK], [1, DARK]],
    showscale: false,
    hoverinfo: "skip",
    xgap: 1,
    ygap: 1,
    visible: !!unbounded,
  });
  $("legend-unbounded").classList.toggle("hidden", !unbounded);

  const flagged = [];
  const verifiedCells = [];
  const pendingCells = [];
  for (let i = 0; i < R; i++) {
    for (let j = 0; j < C; j++) {
      if (st.flags.flags[i][j]) flagged.push([i, j]);
      if (verifiedAt(r.verified, i, j, C) != null) verifiedCells.push([i, j]);
      else if (pending.has(`${i}.${j}`)) pendingCells.push([i, j]);
    }
  }
  const g = geometry(R, C);
  const outline = outlinePath(flagged, 0.44);
  const lineW = g.cellW < 18 || g.cellH < 18 ? 1.6 : 2.4;
  traces.push({ type: "scatter", mode: "lines", ...outline, line: { color: "#ffffff", width: lineW + 2 }, hoverinfo: "skip", showlegend: false, name: "flag-halo" });
  traces.push({ type: "scatter", mode: "lines", ...outline, line: { color: "#000000", width: lineW }, hoverinfo: "skip", showlegend: false, name: "flagged" });
  const ms = Math.max(5, Math.min(13, Math.min(g.cellW, g.cellH) * 0.38));
  traces.push({
    type: "scatter",
    mode: "markers",
    x: verifiedCells.map((c) => c[1]),
    y: verifiedCells.map((c) => c[0]),
    marker: { symbol: "diamond", size: ms, color: "#111", line: { color: "#fff", width: 1.5 } },
    hoverinfo: "skip",
    showlegend: false,
    name: "verified",
  });
  traces.push({
    type: "scatter",
    mode: "markers",
    x: pendingCells.map((c) => c[1]),
    y: pendingCells.map((c) => c[0]),
    marker: { symbol: "hourglass", size: ms + 2, color: "#111", line: { color: "#fff", width: 1 } },
    hoverinfo: "skip",
    showlegend: false,
    name: "pending",
  });

  // A tick label every k cells, k chosen so labels are at least 14 px apart.
  const tickStep = (px) => Math.max(1, Math.ceil(14 / px));
  const xStep = tickStep(g.cellW);
  const yStep = tickStep(g.cellH);
  const layout = {
    width: g.width,
    height: g.height,
    margin: g.margin,
    plot_bgcolor: GREY,
    paper_bgcolor: "#ffffff",
    xaxis: {
      title: { text: lab.col_name || "head" },
      tickvals: xs.filter((j) => j % xStep === 0),
      ticktext: xs.filter((j) => j % xStep === 0).map((j) => String(lab.cols?.[j] ?? j)),
      range: [-0.5, C - 0.5],
      showgrid: false,
      zeroline: false,
      fixedrange: false,
    },
    yaxis: {
      title: { text: lab.row_name || "layer" },
      tickvals: ys.filter((i) => i % yStep === 0),
      ticktext: ys.filter((i) => i % yStep === 0).map((i) => String(lab.rows?.[i] ?? i)),
      range: [R - 0.5, -0.5],
      showgrid: false,
      zeroline: false,
    },
    hovermode: "closest",
    hoverlabel: { align: "left", bgcolor: "#ffffff", font: { size: 12 } },
    dragmode: false,
    uirevision: `${st.id}`,
  };
  const config = {
    responsive: false,
    displaylogo: false,
    modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"],
    toImageButtonOptions: { filename: `patchaudit-${st.id}-${st.view}`, scale: 2 },
  };
  const div = $("heatmap");
  Plotly.react(div, traces, layout, config);
  if (!div.dataset.bound) {
    div.dataset.bound = "1";
    // A native click listener: Plotly's own plotly_click skips the second of two clicks that
    // come within its double-click delay, even on different cells.
    div.addEventListener("click", onCellClick);
  }
}

function onCellClick(e) {
  // Only clicks on the plot area (Plotly's drag layer), not on the mode bar or colour bar.
  if (!st.result || !(e.target instanceof Element) || !e.target.classList.contains("nsewdrag")) return;
  const gd = $("heatmap");
  const fl = gd._fullLayout;
  if (!fl?.xaxis?.p2l) return;
  const [R, C] = shapeOf(st.result);
  const box = gd.getBoundingClientRect();
  const j = Math.round(fl.xaxis.p2l(e.clientX - box.left - fl.xaxis._offset));
  const i = Math.round(fl.yaxis.p2l(e.clientY - box.top - fl.yaxis._offset));
  if (i >= 0 && i < R && j >= 0 && j < C) verify([[i, j]]);
}

export function download(format) {
  Plotly.downloadImage($("heatmap"), { format, filename: `patchaudit-${st.id}-${st.view}`, scale: format === "png" ? 2 : 1 });
}

/** Viewport coordinates of the centre of cell (row, col), scrolled into view first. */
export function cellCenter(i, j) {
  const gd = $("heatmap");
  const fl = gd._fullLayout;
  let box = gd.getBoundingClientRect();
  const y0 = fl.yaxis._offset + fl.yaxis.l2p(i);
  if (box.top + y0 < 40 || box.top + y0 > window.innerHeight - 40) {
    window.scrollBy(0, box.top + y0 - window.innerHeight / 2);
    box = gd.getBoundingClientRect();
  }
  return { x: box.left + fl.xaxis._offset + fl.xaxis.l2p(j), y: box.top + y0 };
}
