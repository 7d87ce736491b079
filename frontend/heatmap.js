// The Plotly heatmap: one heatmap trace (+ a dark layer for unbounded error bounds), one outline
// path for the flags, markers for verified and pending cells; a click on a cell is emitted ("verify"); the page POSTs.
/* global Plotly */
import { hoverText, positionTokens } from "./cells.js";
import { noteLabels } from "./notes.js";
import { correctedMethod, fmt, mapMatrix, maxAbs, shapeOf, verifiedAt } from "./flags.js";
import { keyboardCell } from "./keyboard.js";
import { metricLabel } from "./meaning.js";
import { $, emit, pendingKeys, st, update } from "./state.js";
import { componentKey, parseKey } from "./keys.js";

const GREY = "#c9cdd4";
// ColorBrewer RdBu: negative blue, zero white, positive red (used with zmid = 0).
export const DIVERGING = [
  [0, "#053061"], [0.1, "#2166ac"], [0.2, "#4393c3"], [0.3, "#92c5de"], [0.4, "#d1e5f0"],
  [0.5, "#f7f7f7"], [0.6, "#fddbc7"], [0.7, "#f4a582"], [0.8, "#d6604d"], [0.9, "#b2182b"], [1, "#67001f"],
];
const DARK = "#4a4f5a";

/** The matrix of the current view, its colour-scale kind and (error bounds) the unbounded cells. */
function viewMatrix(R, C, view = st.view) {
  const r = st.result;
  const scores = r.scores || {};
  const corrName = correctedMethod(scores, r.reliability_source, r.estimate_method);
  const v = view;
  // A flagged, unverified cell of a corrected view is uncertain: it shows no confident value
  // (drawn grey; its hover gives the interval the true effect may lie in).
  const blank = (z) => mapMatrix(R, C, (i, j) => (uncertainAt(i, j) ? null : z[i]?.[j] ?? null));
  const uncertain = mapMatrix(R, C, (i, j) => (uncertainAt(i, j) ? 1 : null));
  if (scores[v] && v !== "atp" && v !== "ap") return { z: blank(scores[v]), kind: "diverging", uncertain };
  if (scores[v]) return { z: scores[v], kind: "diverging" };
  if (v === "reliability") return { z: r.reliability, kind: "unit" };
  if (v === "error_bound") {
    const z = mapMatrix(R, C, (i, j) => finite(r.error_bound[i]?.[j]));
    const unb = mapMatrix(R, C, (i, j) => (finite(r.error_bound[i]?.[j]) == null ? 1 : null));
    return { z, kind: "positive", unbounded: unb };
  }
  if (v === "verified") return { z: mapMatrix(R, C, (i, j) => verifiedAt(r.verified, i, j)), kind: "diverging" };
  if (v === "diff") return { z: mapMatrix(R, C, (i, j) => scores[corrName][i][j] - scores.atp[i][j]), kind: "diverging", delta: true };
  if (v === "best") {
    const base = scores[corrName] || scores.atp;
    const z = mapMatrix(R, C, (i, j) => verifiedAt(r.verified, i, j) ?? (uncertainAt(i, j) ? null : base[i][j]));
    return { z, kind: "diverging", uncertain };
  }
  return { z: mapMatrix(R, C, () => null), kind: "diverging" };
}

const finite = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

/** Flagged by the server and not verified yet: the screen cannot give this cell a number. */
function uncertainAt(i, j) {
  const r = st.result;
  return !!(r.flags?.[i]?.[j]) && verifiedAt(r.verified, i, j) == null;
}

/** Views whose values are in the metric's units: they share one scale when asked to. The
 * scale is set by the analysis's own maps: a verify adds values but never moves it (values
 * beyond it are clipped, and the note below the map says how many). */
function effectViews() {
  const scores = st.result.scores || {};
  return Object.keys(scores);
}

/**
 * The colour scale of a diverging view: symmetric about zero, ±max|z| of this view, or with
 * the shared scale on, ±max over the analysis's own maps (AtP, HVP, ap, ...; verified values
 * arrive later and never move it), so the
 * views compare by eye. Returns {zmax, shared, clipped} (clipped: cells beyond the scale).
 */
export function divergingScale(z, delta = false) {
  const [R, C] = shapeOf(st.result);
  let m = maxAbs(z);
  let shared = false;
  if (st.sharedScale && !delta) {
    m = sharedMax(R, C) || m; // the analysis's maps set it: verified values never move it
    shared = true;
  }
  m = m || 1;
  return { zmax: m, shared, clipped: countBeyond(z, m) };
}

let sharedMemo = { key: null, value: 0 };

/** max |value| over every effect view; recomputed only when the result or verified values change. */
function sharedMax(R, C) {
  const key = st.result;
  if (sharedMemo.key !== key) {
    let m = 0;
    for (const v of effectViews()) m = Math.max(m, maxAbs(viewMatrix(R, C, v).z));
    sharedMemo = { key, value: m };
  }
  return sharedMemo.value;
}

function countBeyond(z, lim) {
  let n = 0;
  for (const row of z || []) for (const v of row || []) if (typeof v === "number" && Number.isFinite(v) && Math.abs(v) > lim) n++;
  return n;
}

const tokenLabels = () => positionTokens();

/** Column tick labels: "3 'store'" for resid positions with tokens, else the column label. */
function colTicks() {
  const lab = st.result.labels || {};
  const toks = tokenLabels();
  const cols = lab.cols || [];
  return cols.map((c, j) => (toks ? `${c} ${JSON.stringify(toks[j]).slice(1, -1).trim() || "␣"}` : String(c)));
}

function geometry(R, C) {
  const wrap = $("heatmap-wrap");
  const container = (wrap || $("heatmap")).clientWidth || 1000;
  const toks = tokenLabels();
  const margin = { l: 70, r: 150, t: 44, b: toks ? 90 : 60 }; // t: the title
  const avail = Math.max(200, container - margin.l - margin.r);
  // Never shrink below readable cells: the map scrolls sideways instead (#heatmap-wrap).
  const minW = toks ? 34 : 14;
  const cellW = Math.max(minW, Math.min(120, avail / C));
  let cellH = Math.max(16, Math.min(80, cellW));
  if (R * cellH > 900) cellH = Math.max(12, 900 / R);
  return {
    margin,
    width: Math.round(Math.max(Math.min(container, C * cellW + margin.l + margin.r), C * cellW + margin.l + margin.r)),
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

/**
 * The title fits its figure (a one-column MLP map is ~340 px wide and cut the title): the right
 * margin grows up to the container's width, and what still does not fit wraps at " · ". Changes
 * `g` (width, height, margin) in place; returns the title text (lines joined by <br>).
 */
function fitTitle(text, g) {
  const charPx = 7.4; // 13 px sans-serif, a generous average
  const container = ($("heatmap-wrap") || $("heatmap"))?.clientWidth || g.width;
  const want = Math.ceil(text.length * charPx) + 16;
  if (want > g.width && g.width < container) {
    const extra = Math.min(want, container) - g.width;
    g.margin = { ...g.margin, r: g.margin.r + extra };
    g.width += extra;
  }
  const perLine = Math.max(12, Math.floor((g.width - 16) / charPx));
  const lines = [];
  for (const bit of text.split(" · ")) {
    const last = lines.length ? lines[lines.length - 1] : null;
    if (last != null && `${last} · ${bit}`.length <= perLine) lines[lines.length - 1] = `${last} · ${bit}`;
    else lines.push(bit);
  }
  if (lines.length > 1) {
    const add = 17 * (lines.length - 1);
    g.margin = { ...g.margin, t: g.margin.t + add };
    g.height += add;
  }
  return lines.join("<br>");
}

/** The figure's title: model, task, site, view, tau (on the page and in every export). */
export function figureTitle() {
  const req = st.data?.request || {};
  const r = st.result;
  const viewLabel = $("view")?.selectedOptions?.[0]?.textContent || st.view;
  const prompts = req.task ? `${req.task}${req.n_pairs ? ` (${req.n_pairs} pairs)` : ""}` : `${(req.pairs || []).length} custom pairs`;
  const bits = [req.model, prompts, `site ${r.site || req.site}`, `${r.metric || req.metric} ${r.direction || req.direction}`, viewLabel, `τ = ${st.tau.toFixed(2)}`];
  return bits.filter(Boolean).join(" · ");
}

export function renderHeatmap() {
  const r = st.result;
  const [R, C] = shapeOf(r);
  const { z, kind, unbounded, delta, uncertain } = viewMatrix(R, C);
  const pending = pendingKeys();
  const text = mapMatrix(R, C, (i, j) => hoverText(i, j, pending.has(componentKey(i, j))));
  const xs = Array.from({ length: C }, (_, j) => j);
  const ys = Array.from({ length: R }, (_, i) => i);
  const lab = r.labels || {};
  const metric = r.metric_label || metricLabel(r.metric || st.data?.request?.metric);

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
  let scaleNote = "";
  if (kind === "diverging") {
    const sc = divergingScale(z, delta);
    Object.assign(hm, { colorscale: DIVERGING, zmid: 0, zmin: -sc.zmax, zmax: sc.zmax });
    hm.colorbar.title = { text: delta ? `Δ ${metric}` : metric, side: "right" };
    const grows = !sc.shared && (st.view === "verified" || st.view === "best");
    scaleNote = `Colour scale ±${fmt(sc.zmax)}${sc.shared ? " (shared by every estimate view of this analysis; fixed: verifying does not change it)" : grows ? " (this view only: it grows as verified values arrive)" : " (this view only)"}; blue negative, red positive.`;
    if (sc.clipped) scaleNote += ` ${sc.clipped} cell${sc.clipped === 1 ? "" : "s"} beyond the scale, clipped at ±${fmt(sc.zmax)}${sc.shared ? " (hover for the value)" : ""}.`;
  } else if (kind === "unit") {
    Object.assign(hm, { colorscale: "Viridis", zmin: 0, zmax: 1 });
    hm.colorbar.title = { text: "reliability (0 to 1)", side: "right" };
    scaleNote = "Reliability from 0 (unreliable) to 1.";
  } else {
    // 0 = pale; the top of the scale is the largest finite bound (hover shows each value);
    // unbounded cells are drawn dark, apart from every finite value.
    const top = maxAbs(z) || 1;
    Object.assign(hm, { colorscale: "YlOrRd", reversescale: true, zmin: 0, zmax: top });
    hm.colorbar.title = { text: `± bound (${metric})`, side: "right" };
    const nUnb = (unbounded || []).flat().filter((v) => v === 1).length;
    scaleNote = `Colour scale 0 to ${fmt(top)}, the largest finite bound (not clipped).` + (nUnb ? ` ${nUnb} unbounded cell${nUnb === 1 ? "" : "s"} drawn dark grey.` : "");
  }
  $("scale-note").textContent = scaleNote;
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
  // Uncertain (flagged, unverified) cells: a light grey layer; the hover names the interval.
  const nUnc = (uncertain || []).flat().filter((x) => x === 1).length;
  traces.push({
    type: "heatmap",
    x: xs,
    y: ys,
    z: nUnc ? uncertain : [[null]],
    colorscale: [[0, "#d9d9d9"], [1, "#d9d9d9"]],
    showscale: false,
    hoverinfo: "skip",
    xgap: 1,
    ygap: 1,
    visible: nUnc > 0,
    name: "uncertain",
  });
  if (nUnc) $("scale-note").textContent += ` ${nUnc} flagged cell${nUnc === 1 ? "" : "s"} drawn grey: uncertain until verified (hover: the interval).`;

  const flagged = [];
  const verifiedCells = [];
  const pendingCells = [];
  for (let i = 0; i < R; i++) {
    for (let j = 0; j < C; j++) {
      if (st.flags.flags[i][j]) flagged.push([i, j]);
      if (verifiedAt(r.verified, i, j) != null) verifiedCells.push([i, j]);
      else if (pending.has(componentKey(i, j))) pendingCells.push([i, j]);
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
  traces.push(noteLabels(R, C, g.cellW)); // members' labels on their components (notes.js)
  // The circuit panel's top-k members (circuit.js sets st.circuitCells and restyles this trace).
  const circ = outlinePath(st.circuitCells || [], 0.32);
  traces.push({ type: "scatter", mode: "lines", ...circ, line: { color: "#00a651", width: 2.5 }, hoverinfo: "skip", showlegend: false, name: "circuit" });
  // The selected component (st.c, shown in the component panel).
  const selm = parseKey(st.c);
  const sel = outlinePath(selm && selm[0] < R && selm[1] < C ? [selm] : [], 0.5);
  traces.push({ type: "scatter", mode: "lines", ...sel, line: { color: "#f0a500", width: 2.5 }, hoverinfo: "skip", showlegend: false, name: "selected" });
  // The keyboard cursor (keyboard.js): a dashed box on the selected cell while the grid has focus.
  const cur = keyboardCell();
  const cursor = outlinePath(cur ? [cur] : [], 0.5);
  traces.push({ type: "scatter", mode: "lines", ...cursor, line: { color: "#2457c5", width: 3, dash: "dot" }, hoverinfo: "skip", showlegend: false, name: "cursor" });

  // A tick label every k cells, k chosen so labels are at least 14 px apart.
  const tickStep = (px) => Math.max(1, Math.ceil(14 / px));
  const xStep = tokenLabels() ? 1 : tickStep(g.cellW);
  const yStep = tickStep(g.cellH);
  const xt = colTicks();
  const title = fitTitle(figureTitle(), g);
  const layout = {
    title: { text: title, font: { size: 13 }, x: 0, xanchor: "left", y: 0.99, yanchor: "top", pad: { l: 4 } },
    width: g.width,
    height: g.height,
    margin: g.margin,
    plot_bgcolor: GREY,
    paper_bgcolor: "#ffffff",
    xaxis: {
      title: { text: tokenLabels() ? `${lab.col_name || "position"} and token` : lab.col_name || "head" },
      tickvals: xs.filter((j) => j % xStep === 0),
      ticktext: xs.filter((j) => j % xStep === 0).map((j) => xt[j] ?? String(j)),
      tickangle: tokenLabels() ? -45 : 0,
      range: [-0.5, C - 0.5],
      showgrid: false,
      zeroline: false,
      fixedrange: true,
    },
    yaxis: {
      title: { text: lab.row_name || "layer" },
      tickvals: ys.filter((i) => i % yStep === 0),
      ticktext: ys.filter((i) => i % yStep === 0).map((i) => String(lab.rows?.[i] ?? i)),
      range: [R - 0.5, -0.5],
      showgrid: false,
      zeroline: false,
      fixedrange: true,
    },
    hovermode: "closest",
    hoverlabel: { align: "left", bgcolor: "#ffffff", font: { size: 12 } },
    dragmode: false,
    uirevision: `${st.id}`,
  };
  // No mode bar (its buttons sat in the tab order and under quick clicks; PNG/SVG/CSV buttons
  // are below the map), no double-click axis reset, no zoom: a click is a click on a cell.
  const config = {
    responsive: false,
    displaylogo: false,
    displayModeBar: false,
    doubleClick: false,
    scrollZoom: false,
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
  // Only clicks on the plot area (Plotly's drag layer), not on the colour bar or the title.
  if (!st.result || !(e.target instanceof Element) || !e.target.classList.contains("nsewdrag")) return;
  const gd = $("heatmap");
  const fl = gd._fullLayout;
  if (!fl?.xaxis?.p2l) return;
  const [R, C] = shapeOf(st.result);
  const box = gd.getBoundingClientRect();
  const j = Math.round(fl.xaxis.p2l(e.clientX - box.left - fl.xaxis._offset));
  const i = Math.round(fl.yaxis.p2l(e.clientY - box.top - fl.yaxis._offset));
  if (i >= 0 && i < R && j >= 0 && j < C) {
    update({ c: componentKey(i, j) }); // select it: the component panel (component.js) shows it
    emit("verify", [[i, j]]); // the page verifies it (analysis.js -> verify.js)
  }
}

/** PNG/SVG of the map as drawn: its title names model, task, site, view and tau, its colour
 * bar the metric. */
export function download(format) {
  const gd = $("heatmap");
  Plotly.downloadImage(exportFigure(), { format, filename: `patchaudit-${st.id}-${st.view}`, width: gd.layout.width, height: gd.layout.height, scale: format === "png" ? 2 : 1 });
}

// What belongs to the page's interaction, not to the figure: the selection box, the keyboard
// cursor and the "verifying" hourglasses are left out of every export.
const TRANSIENT = new Set(["selected", "cursor", "pending"]);

/** The map as exported: its traces less the transient ones, its layout. */
export function exportFigure() {
  const gd = $("heatmap");
  return { data: gd.data.filter((t) => !TRANSIENT.has(t.name)), layout: { ...gd.layout } };
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
  const x0 = fl.xaxis._offset + fl.xaxis.l2p(j);
  const wrap = $("heatmap-wrap");
  const wb = wrap.getBoundingClientRect();
  if (box.left + x0 < wb.left + 20 || box.left + x0 > wb.right - 20) {
    wrap.scrollLeft += box.left + x0 - (wb.left + wb.right) / 2;
    box = gd.getBoundingClientRect();
  }
  return { x: box.left + fl.xaxis._offset + fl.xaxis.l2p(j), y: box.top + y0 };
}
