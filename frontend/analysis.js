// The shareable analysis page: progress, heatmaps (one heatmap trace + one outline trace for
// flags, whatever the size), click-to-verify, Screen-Flag-Fix, tau re-flagging, scatter,
// sortable top-components table, share link and exports.
/* global Plotly */
import { api, ApiError, el, getToken, setToken, writesNeedToken } from "./api.js";
import {
  METHOD_LABELS,
  computeFlags,
  correctedMethod,
  fmt,
  mapMatrix,
  maxAbs,
  shapeOf,
  verifiedAt,
} from "./flags.js";

const $ = (id) => document.getElementById(id);
const ACTIVE = new Set(["queued", "running", "started", "deferred", "scheduled"]);
const METHOD_ORDER = ["atp", "hvp", "hvp_joint", "hvp_exact", "mhvp", "ig", "ap"];
const GREY = "#c9cdd4";
// ColorBrewer RdBu: negative blue, zero white, positive red (used with zmid = 0).
const DIVERGING = [
  [0, "#053061"], [0.1, "#2166ac"], [0.2, "#4393c3"], [0.3, "#92c5de"], [0.4, "#d1e5f0"],
  [0.5, "#f7f7f7"], [0.6, "#fddbc7"], [0.7, "#f4a582"], [0.8, "#d6604d"], [0.9, "#b2182b"], [1, "#67001f"],
];
const DARK = "#4a4f5a";

const st = {
  id: null,
  data: null,
  result: null,
  view: null,
  tau: null,
  flags: null, // computeFlags() output at st.tau
  localPending: new Map(), // "i.j" -> time the verify POST was answered
  readOnly: false,
  pollTimer: null,
  sort: { key: "absEst", dir: "desc" },
  plotSig: null,
  busyFix: false,
  stats: { renders: 0, lastRenderMs: 0 },
};
// A small read-only handle for tests and the browser console.
window.__patchaudit = Object.assign(st.stats, {
  /** Flagged cells at the page's tau, [[row, col], ...]. */
  flagged: () => {
    const out = [];
    st.flags?.flags.forEach((row, i) => row.forEach((f, j) => f && out.push([i, j])));
    return out;
  },
  /** Viewport coordinates of the centre of cell (row, col), scrolled into view first. */
  cellCenter: (i, j) => {
    const gd = $("heatmap");
    const fl = gd._fullLayout;
    let box = gd.getBoundingClientRect();
    const y0 = fl.yaxis._offset + fl.yaxis.l2p(i);
    if (box.top + y0 < 40 || box.top + y0 > window.innerHeight - 40) {
      window.scrollBy(0, box.top + y0 - window.innerHeight / 2);
      box = gd.getBoundingClientRect();
    }
    return { x: box.left + fl.xaxis._offset + fl.xaxis.l2p(j), y: box.top + y0 };
  },
  state: () => ({ view: st.view, tau: st.tau, readOnly: st.readOnly, id: st.id }),
});

// ---------------------------------------------------------------- messages
function showMessage(text) {
  $("message").textContent = text || "";
}
function showNotice(text) {
  $("notice").textContent = text || "";
}

// ---------------------------------------------------------------- URL state
function parseUrl() {
  const m = window.location.pathname.match(/\/a\/([^/?#]+)/);
  st.id = m ? decodeURIComponent(m[1]) : new URLSearchParams(window.location.search).get("id");
  const q = new URLSearchParams(window.location.search);
  const h = new URLSearchParams(window.location.hash.replace(/^#/, ""));
  const view = q.get("view") || h.get("view");
  const tau = q.get("tau") ?? h.get("tau");
  return { view, tau: tau != null && tau !== "" && Number.isFinite(Number(tau)) ? Number(tau) : null };
}

function shareUrl() {
  const q = new URLSearchParams();
  if (st.view) q.set("view", st.view);
  if (st.tau != null) q.set("tau", st.tau.toFixed(2));
  return `${window.location.origin}/a/${encodeURIComponent(st.id)}?${q.toString()}`;
}

function syncUrl() {
  const url = shareUrl();
  if (url !== window.location.href) window.history.replaceState(null, "", url);
  $("share-link").value = url;
}

/** A pending entry is "layer.head" or [layer, head]. */
function pendKey(c) {
  return Array.isArray(c) ? c.join(".") : String(c);
}

// ---------------------------------------------------------------- polling
function schedulePoll(ms) {
  clearTimeout(st.pollTimer);
  st.pollTimer = setTimeout(poll, ms);
}

async function poll() {
  const started = Date.now();
  let data;
  try {
    data = await api(`/api/analyses/${encodeURIComponent(st.id)}`);
  } catch (err) {
    showMessage(err.message);
    if (!(err instanceof ApiError) || err.status !== 404) schedulePoll(3000);
    return;
  }
  // Local pending entries the server has seen: trust the server's pending list now.
  const verified = data.result?.verified || {};
  const serverPending = new Set((data.pending || []).map(pendKey));
  for (const [key, when] of [...st.localPending]) {
    if (verified[key] != null) st.localPending.delete(key);
    else if (when < started && !serverPending.has(key)) {
      st.localPending.delete(key);
      if (!ACTIVE.has(data.status)) showNotice(`Verifying ${key} gave no value. ${errorText(data.error)}`.trim());
    }
  }
  if (st.data?.status !== data.status || data.status === "failed") showMessage("");
  reportVerificationErrors(data);
  // Redraw only when something changed (a redraw under the pointer disturbs hover and click).
  const sig = JSON.stringify([data.status, data.progress, data.pending, data.result?.verified, data.result?.fix, (data.verifications || []).length, data.error, [...st.localPending.keys()]]);
  const changed = sig !== st.dataSig || !st.data;
  st.dataSig = sig;
  st.data = data;
  if (changed) render();
  const waiting = ACTIVE.has(data.status) || serverPending.size > 0 || st.localPending.size > 0;
  if (waiting) schedulePoll(ACTIVE.has(data.status) && !data.result ? 700 : 500);
}

/** Show each failed verification once (the service lists them under `verifications`). */
function reportVerificationErrors(data) {
  const list = data.verifications || [];
  if (st.seenVerifications == null) {
    st.seenVerifications = list.length; // old failures of a shared link are not news
    return;
  }
  for (const v of list.slice(st.seenVerifications)) {
    if (v && v.error) {
      const comps = (v.components || []).join(", ");
      showMessage(`Verifying ${comps || "components"} failed: ${errorText(v.error)}`);
    }
  }
  st.seenVerifications = list.length;
}

function errorText(error) {
  if (!error) return "";
  if (typeof error === "string") return error;
  const t = error.type ? `${error.type}: ` : "";
  return `${t}${error.message || ""}`;
}

// ---------------------------------------------------------------- render
function render() {
  const d = st.data;
  const status = d.status || "unknown";
  const badge = $("status");
  badge.textContent = status;
  badge.className = `status ${status}`;
  document.body.dataset.status = status;

  const active = ACTIVE.has(status);
  $("progress-card").classList.toggle("hidden", !active);
  if (active) {
    const frac = Math.max(0, Math.min(1, Number(d.progress?.fraction) || 0));
    const bar = $("progress-bar");
    bar.firstElementChild.style.width = `${(frac * 100).toFixed(1)}%`;
    bar.setAttribute("aria-valuenow", (frac * 100).toFixed(0));
    const phase = d.progress?.phase || status;
    $("progress-text").textContent = `${phase} · ${(frac * 100).toFixed(0)}%`;
  }
  $("cancel").disabled = !active || st.readOnly;

  if (status === "failed") showMessage(`The analysis failed. ${errorText(d.error) || "No reason was given."}`);
  if (status === "cancelled") showMessage("The analysis was cancelled.");

  renderRequest();
  if (d.result) {
    const first = !st.result;
    st.result = d.result;
    if (first) initResult();
    renderResult();
  }
}

function initResult() {
  const r = st.result;
  const url = parseUrl();
  const sel = $("view");
  sel.replaceChildren();
  const views = viewList(r);
  for (const [value, label] of views) sel.append(el("option", { value, text: label }));
  const corr = correctedMethod(r.scores, r.reliability_source);
  const fallback = corr || (r.scores?.atp ? "atp" : views[0]?.[0]);
  st.view = views.some(([v]) => v === url.view) ? url.view : fallback;
  sel.value = st.view;
  const tau = url.tau ?? (typeof r.tau === "number" ? r.tau : 0.5);
  st.tau = Math.max(0, Math.min(1, tau));
  $("tau").value = String(st.tau);
  $("tau-value").textContent = st.tau.toFixed(2);
  $("result-card").classList.remove("hidden");
  $("scatter-card").classList.remove("hidden");
  $("table-card").classList.remove("hidden");
  $("export-csv").href = `/api/analyses/${encodeURIComponent(st.id)}/export.csv`;
  syncUrl();
}

function viewList(r) {
  const views = [];
  const scores = r.scores || {};
  const methods = [...METHOD_ORDER.filter((m) => scores[m]), ...Object.keys(scores).filter((m) => !METHOD_ORDER.includes(m))];
  for (const m of methods) views.push([m, METHOD_LABELS[m] || m]);
  if (r.reliability) views.push(["reliability", "Reliability"]);
  if (r.error_bound) views.push(["error_bound", "Error bound"]);
  views.push(["verified", "Verified (activation patching)"]);
  const corr = correctedMethod(scores, r.reliability_source);
  if (corr && scores.atp) views.push(["diff", `${METHOD_LABELS[corr] || corr} minus AtP`]);
  if (corr || scores.atp) views.push(["best", "Best estimate (verified where available)"]);
  return views;
}

function pendingKeys() {
  const keys = new Set((st.data?.pending || []).map(pendKey));
  for (const k of st.localPending.keys()) keys.add(k);
  return keys;
}

function renderResult({ tauOnly = false } = {}) {
  const t0 = performance.now();
  const r = st.result;
  st.flags = computeFlags(r, st.tau);
  renderHeatmap();
  renderControls();
  renderTable();
  if (!tauOnly) {
    renderScatter(); // neither depends on tau
    renderCost();
  }
  renderFix();
  st.stats.renders++;
  st.stats.lastRenderMs = performance.now() - t0;
  const hm = $("heatmap");
  hm.dataset.view = st.view;
  hm.dataset.tau = st.tau.toFixed(2);
  hm.dataset.flagged = String(st.flags.count);
  hm.dataset.verified = String(Object.keys(r.verified || {}).length);
  hm.dataset.pending = String(pendingKeys().size);
  hm.dataset.renders = String(st.stats.renders);
}

// ---------------------------------------------------------------- cell numbers
function cellInfo(i, j) {
  const r = st.result;
  const [, C] = shapeOf(r);
  const scores = r.scores || {};
  const corrName = correctedMethod(scores, st.result.reliability_source);
  const atp = scores.atp?.[i]?.[j] ?? null;
  const corr = corrName ? (scores[corrName]?.[i]?.[j] ?? null) : null;
  const ver = verifiedAt(r.verified, i, j, C);
  const bound = r.error_bound ? r.error_bound[i]?.[j] : undefined;
  return {
    i,
    j,
    atp,
    corr,
    corrName,
    rel: r.reliability?.[i]?.[j] ?? null,
    bound, // null = unbounded, undefined = not reported
    ver,
    est: corr ?? atp,
    flagged: st.flags.flags[i][j],
    reasons: st.flags.reasons[i][j],
    material: r.material ? !!r.material[i]?.[j] : null,
  };
}

function compName(i, j) {
  const lab = st.result.labels || {};
  const row = lab.rows?.[i] ?? i;
  const col = lab.cols?.[j] ?? j;
  const rn = lab.row_name || "layer";
  const cn = lab.col_name || "head";
  return (lab.cols?.length ?? 2) === 1 ? `${rn} ${row}` : `${rn} ${row}, ${cn} ${col}`;
}

function shortName(i, j) {
  const lab = st.result.labels || {};
  return (lab.cols?.length ?? 2) === 1 ? `L${lab.rows?.[i] ?? i}` : `L${lab.rows?.[i] ?? i}.H${lab.cols?.[j] ?? j}`;
}

function hoverText(i, j, pending) {
  const c = cellInfo(i, j);
  const scores = st.result.scores || {};
  const lines = [`<b>${compName(i, j)}</b>`];
  for (const m of METHOD_ORDER.concat(Object.keys(scores).filter((k) => !METHOD_ORDER.includes(k)))) {
    if (scores[m]) lines.push(`${METHOD_LABELS[m] || m}: ${fmt(scores[m][i]?.[j])}`);
  }
  if (c.corr != null && c.atp != null) lines.push(`corrected − AtP: ${fmt(c.corr - c.atp)}`);
  if (st.result.reliability) lines.push(`reliability: ${fmt(c.rel)}`);
  if (c.bound !== undefined) lines.push(`error bound: ${c.bound == null ? "unbounded" : `± ${fmt(c.bound)}`}`);
  if (c.ver != null) {
    lines.push(`verified (activation patching): ${fmt(c.ver)}`);
    if (c.atp != null) lines.push(`error of AtP: ${fmt(c.atp - c.ver)}`);
    if (c.corr != null) lines.push(`error of corrected: ${fmt(c.corr - c.ver)}`);
  } else {
    lines.push(pending ? "verifying…" : "not verified: click to verify");
  }
  if (c.material === false) lines.push("not material");
  lines.push(c.flagged ? `FLAGGED: ${c.reasons.join("; ")}` : "not flagged");
  return lines.join("<br>");
}

// ---------------------------------------------------------------- heatmap
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

function renderHeatmap() {
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

// ---------------------------------------------------------------- verify and fix
function setReadOnly(on) {
  st.readOnly = on;
  $("readonly-note").classList.toggle("hidden", !on);
  if (on) $("token-box").open = true;
  renderControls();
  if (st.result) renderTable();
  if (st.data) $("cancel").disabled = !ACTIVE.has(st.data.status) || on;
}

async function verify(components) {
  if (st.readOnly) {
    showNotice("Read-only: enter an API token at the top to verify components.");
    return;
  }
  const [, C] = shapeOf(st.result);
  const todo = components.filter(([i, j]) => verifiedAt(st.result.verified, i, j, C) == null && !pendingKeys().has(`${i}.${j}`));
  if (!todo.length) {
    const [i, j] = components[0];
    const v = verifiedAt(st.result.verified, i, j, C);
    showNotice(v != null ? `${compName(i, j)} is verified: ${fmt(v)}.` : `${compName(i, j)} is being verified.`);
    return;
  }
  showNotice(`Verifying ${todo.map(([i, j]) => shortName(i, j)).join(", ")}…`);
  try {
    await api(`/api/analyses/${encodeURIComponent(st.id)}/verify`, { method: "POST", body: { components: todo }, write: true });
  } catch (err) {
    if (err instanceof ApiError && err.isAuth) setReadOnly(true);
    showNotice("");
    showMessage(`Could not verify: ${err.message}`);
    return;
  }
  const now = Date.now();
  for (const [i, j] of todo) st.localPending.set(`${i}.${j}`, now);
  renderResult();
  schedulePoll(250);
}

/** Screen-Flag-Fix step 3. At the server's tau: POST /fix (the service reports the cost).
 * At another tau on the page: verify the cells flagged on the page, and report the cost
 * from the verifications (patched forwards) against a full sweep. */
async function fixAll() {
  if (st.readOnly || st.busyFix) return;
  const [R, C] = shapeOf(st.result);
  const todo = [];
  for (let i = 0; i < R; i++)
    for (let j = 0; j < C; j++)
      if (st.flags.flags[i][j] && verifiedAt(st.result.verified, i, j, C) == null && !pendingKeys().has(`${i}.${j}`)) todo.push([i, j]);
  const serverTau = typeof st.result.tau === "number" ? st.result.tau : null;
  const atServerTau = serverTau == null || Math.abs(serverTau - st.tau) < 1e-9;
  st.busyFix = true;
  renderControls();
  showNotice(`Screen-Flag-Fix: verifying ${todo.length} flagged component${todo.length === 1 ? "" : "s"}…`);
  try {
    if (atServerTau) {
      st.pageFix = null;
      await api(`/api/analyses/${encodeURIComponent(st.id)}/fix`, { method: "POST", write: true });
    } else {
      st.pageFix = { tau: st.tau, components: todo.map(([i, j]) => `${i}.${j}`), since: (st.data.verifications || []).length };
      if (todo.length) await api(`/api/analyses/${encodeURIComponent(st.id)}/verify`, { method: "POST", body: { components: todo }, write: true });
    }
  } catch (err) {
    if (err instanceof ApiError && err.isAuth) setReadOnly(true);
    showNotice("");
    showMessage(`Could not run Fix: ${err.message}`);
    st.busyFix = false;
    st.pageFix = null;
    renderControls();
    return;
  }
  st.fixPosted = true;
  const now = Date.now();
  for (const [i, j] of todo) st.localPending.set(`${i}.${j}`, now);
  renderResult();
  schedulePoll(250);
}

async function cancel() {
  try {
    await api(`/api/analyses/${encodeURIComponent(st.id)}/cancel`, { method: "POST", write: true });
    showNotice("Cancelling…");
  } catch (err) {
    if (err instanceof ApiError && err.isAuth) setReadOnly(true);
    showMessage(`Could not cancel: ${err.message}`);
  }
  schedulePoll(300);
}

// ---------------------------------------------------------------- controls, fix, cost
function renderControls() {
  if (!st.result || !st.flags) return;
  const [R, C] = shapeOf(st.result);
  const f = st.flags;
  let unverified = 0;
  for (let i = 0; i < R; i++)
    for (let j = 0; j < C; j++) if (f.flags[i][j] && verifiedAt(st.result.verified, i, j, C) == null) unverified++;
  $("flag-count").textContent = `${f.count} of ${R * C} (${f.material} material), ${unverified} not yet verified`;
  const pend = pendingKeys().size + (ACTIVE.has(st.result.fix?.status) ? 1 : 0);
  // Fix is over once its POST was answered and nothing is pending any more.
  if (st.busyFix && st.fixPosted && pend === 0 && !ACTIVE.has(st.data?.status)) {
    st.busyFix = false;
    st.fixPosted = false;
    showNotice("");
  }
  if (!st.busyFix && pend === 0 && /^Verifying /.test($("notice").textContent)) showNotice("");
  const fix = $("fix");
  fix.disabled = st.readOnly || st.busyFix || pend > 0 || unverified === 0;
  fix.title = st.readOnly ? "Read-only: needs an API token" : unverified === 0 ? "Nothing flagged is left to verify" : "";
  fix.textContent = st.busyFix || pend > 0 ? "Fixing…" : "Fix all flagged";
}

function pageFixInfo() {
  const pf = st.pageFix;
  if (!pf) return null;
  const verified = st.result.verified || {};
  const left = pf.components.filter((k) => verified[k] == null && pendingKeys().has(k));
  if (left.length) return { status: "running" };
  const mine = new Set(pf.components);
  let forwards = 0;
  for (const v of (st.data.verifications || []).slice(pf.since)) {
    if ((v.components || []).some((k) => mine.has(k))) forwards += v.forwards ?? (v.components || []).length;
  }
  const [R, C] = shapeOf(st.result);
  return {
    status: "done",
    forwards,
    full_sweep_forwards: st.result.fix?.full_sweep_forwards ?? R * C,
    components: pf.components,
    tau: pf.tau,
  };
}

function renderFix() {
  const fx = pageFixInfo() || st.result.fix;
  const box = $("fix-summary");
  if (!fx) {
    box.classList.add("hidden");
    return;
  }
  if (fx.error || fx.status === "failed") {
    box.className = "msg error";
    box.textContent = `Screen-Flag-Fix failed: ${errorText(fx.error) || "no reason was given."}`;
    box.classList.remove("hidden");
    return;
  }
  if (ACTIVE.has(fx.status)) {
    box.className = "msg info";
    box.textContent = "Screen-Flag-Fix is running…";
    box.classList.remove("hidden");
    return;
  }
  box.className = "msg ok";
  const n = (fx.components || []).length;
  const fw = fx.forwards ?? 0;
  const full = fx.full_sweep_forwards ?? 0;
  const ratio = fw > 0 ? ` (${(full / fw).toFixed(1)}× fewer)` : "";
  box.textContent =
    `Screen-Flag-Fix verified ${n} flagged component${n === 1 ? "" : "s"} with ${fw} patched forward${fw === 1 ? "" : "s"}, ` +
    `against ${full} for a full activation-patching sweep${ratio}` +
    (fx.tau != null ? ` (flags at τ = ${fx.tau.toFixed(2)}).` : ".");
  box.classList.remove("hidden");
}

function renderCost() {
  const cost = st.result.cost || {};
  const box = $("cost");
  box.replaceChildren();
  const names = Object.keys(cost);
  if (!names.length) return;
  const tbl = el("table", { class: "comp", style: "max-width:36rem" },
    el("thead", {}, el("tr", {}, el("th", { text: "cost" }), el("th", { text: "forward" }), el("th", { text: "backward" }), el("th", { text: "seconds" }))));
  const tb = el("tbody");
  for (const m of names) {
    const c = cost[m] || {};
    tb.append(el("tr", {}, el("td", { text: METHOD_LABELS[m] || m }), el("td", { text: c.forward ?? "–" }), el("td", { text: c.backward ?? "–" }), el("td", { text: c.seconds != null ? Number(c.seconds).toFixed(3) : "–" })));
  }
  tbl.append(tb);
  box.append(tbl);
}

// ---------------------------------------------------------------- scatter
function renderScatter() {
  const r = st.result;
  const [R, C] = shapeOf(r);
  const scores = r.scores || {};
  const corrName = correctedMethod(scores, st.result.reliability_source);
  const pts = [];
  for (let i = 0; i < R; i++)
    for (let j = 0; j < C; j++) {
      const v = verifiedAt(r.verified, i, j, C);
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
  }, { displaylogo: false, responsive: true });
}

// ---------------------------------------------------------------- table
const COLUMNS = [
  ["name", "Component"],
  ["atp", "AtP"],
  ["corr", "Corrected"],
  ["rel", "Reliability"],
  ["bound", "Bound"],
  ["flag", "Flag"],
  ["ver", "Verified"],
  ["err", "Error"],
];

function tableRows() {
  const r = st.result;
  const [R, C] = shapeOf(r);
  const all = [];
  for (let i = 0; i < R; i++) for (let j = 0; j < C; j++) all.push(cellInfo(i, j));
  const top = [...all].sort((a, b) => Math.abs(b.est ?? 0) - Math.abs(a.est ?? 0));
  const chosen = new Set(top.slice(0, 20));
  for (const c of all) if (chosen.size < 200 && (c.flagged || c.ver != null)) chosen.add(c);
  return [...chosen];
}

function sortValue(c, key) {
  switch (key) {
    case "name": return c.i * 1e6 + c.j;
    case "absEst": return Math.abs(c.est ?? 0);
    case "flag": return c.flagged ? 1 : 0;
    case "bound": return c.bound === null ? Infinity : (c.bound ?? -Infinity);
    case "err": return c.ver != null && c.est != null ? Math.abs(c.est - c.ver) : -Infinity;
    default: return c[key] ?? -Infinity;
  }
}

function renderTable() {
  const tbl = $("top-table");
  const thead = tbl.tHead;
  const corrLabel = METHOD_LABELS[correctedMethod(st.result.scores, st.result.reliability_source)] || "Corrected";
  const tr = el("tr");
  for (const [key, label] of COLUMNS) {
    const sorted = st.sort.key === key ? (st.sort.dir === "asc" ? "ascending" : "descending") : null;
    const text = key === "corr" ? corrLabel : label;
    const btn = el("button", { type: "button", "data-key": key, text, title: `Sort by ${text}` });
    btn.addEventListener("click", () => {
      st.sort = { key, dir: st.sort.key === key && st.sort.dir === "desc" ? "asc" : "desc" };
      renderTable();
      tbl.querySelector(`th button[data-key="${key}"]`)?.focus();
    });
    tr.append(el("th", { scope: "col", "aria-sort": sorted || "none" }, btn));
  }
  tr.append(el("th", { scope: "col" }, el("span", { class: "small muted", text: "Verify" })));
  thead.replaceChildren(tr);

  const rows = tableRows();
  const dir = st.sort.dir === "asc" ? 1 : -1;
  rows.sort((a, b) => {
    const x = sortValue(a, st.sort.key);
    const y = sortValue(b, st.sort.key);
    return x < y ? -dir : x > y ? dir : 0;
  });
  const pending = pendingKeys();
  const tb = tbl.tBodies[0];
  const frag = document.createDocumentFragment();
  for (const c of rows) {
    const key = `${c.i}.${c.j}`;
    const isPending = pending.has(key);
    let action;
    if (c.ver != null) action = el("span", { class: "verified-mark", text: "✓", title: "verified by activation patching", "aria-label": "verified" });
    else if (isPending) action = el("span", { class: "muted", text: "verifying…" });
    else {
      action = el("button", { type: "button", class: "small", disabled: st.readOnly, "aria-label": `Verify ${compName(c.i, c.j)}`, text: "Verify" });
      action.addEventListener("click", () => verify([[c.i, c.j]]));
    }
    frag.append(el("tr", { class: c.flagged ? "flagged" : null, "data-key": key },
      el("td", { text: shortName(c.i, c.j) }),
      el("td", { text: fmt(c.atp) }),
      el("td", { text: fmt(c.corr) }),
      el("td", { text: fmt(c.rel) }),
      el("td", { text: c.bound === null ? "∞" : fmt(c.bound) }),
      el("td", { class: c.flagged ? "yes" : null, text: c.flagged ? "flagged" : "" , title: c.reasons.join("; ") }),
      el("td", { text: c.ver != null ? fmt(c.ver) : "" }),
      el("td", { text: c.ver != null && c.est != null ? fmt(c.est - c.ver) : "" }),
      el("td", {}, action)));
  }
  tb.replaceChildren(frag);
}

// ---------------------------------------------------------------- request
function renderRequest() {
  const d = st.data;
  const req = d.request || {};
  const key = JSON.stringify(req) + JSON.stringify(d.result?.pairs || d.result?.prompts || null);
  if (renderRequest.key === key) return;
  renderRequest.key = key;
  const dl = $("request");
  dl.replaceChildren();
  const rows = [
    ["Model", req.model],
    ["Prompts", req.task ? [`task ${req.task}`, req.corruption ? `corruption ${req.corruption}` : null, req.n_pairs != null ? `${req.n_pairs} pairs` : null, `seed ${req.seed ?? 0}`].filter(Boolean).join(", ") : `${(req.pairs || []).length} custom pairs`],
    ["Site", req.site],
    ["Metric", req.metric],
    ["Direction", req.direction],
    ["Methods", (req.methods || []).join(", ")],
    ["HVP probes", req.hvp_probes],
    ["IG steps", req.ig_steps],
  ];
  for (const [k, v] of Object.entries(req)) {
    if (["model", "task", "corruption", "tokens", "n_pairs", "seed", "pairs", "site", "metric", "direction", "methods", "hvp_probes", "ig_steps"].includes(k)) continue;
    if (v != null && typeof v !== "object") rows.push([k, v]);
  }
  for (const [k, v] of rows) {
    if (v == null || v === "") continue;
    dl.append(el("dt", { text: k }), el("dd", { text: String(v) }));
  }
  const pairs = d.result?.pairs || d.result?.prompts || req.pairs || [];
  const box = $("prompts");
  box.replaceChildren();
  if (!pairs.length && req.task) {
    // The task's pairs are generated on the server: show the task's example pair.
    api("/api/tasks")
      .then((tasks) => {
        const t = (Array.isArray(tasks) ? tasks : []).find((x) => x.name === req.task);
        if (!t?.example || renderRequest.key !== key) return;
        box.append(el("p", { class: "muted small", style: "font-family:inherit" },
          `Example pair of the ${req.task} task (the analysis uses ${req.n_pairs ?? "its"} generated pairs):`));
        box.append(pairTable([t.example]));
      })
      .catch(() => {});
    return;
  }
  if (pairs.length) box.append(pairTable(pairs));
}

function pairTable(pairs) {
  const tbl = el("table", {}, el("thead", {}, el("tr", {}, el("th", { text: "#" }), el("th", { text: "clean" }), el("th", { text: "corrupted" }), el("th", { text: "answer" }), el("th", { text: "wrong" }))));
  const tb = el("tbody");
  pairs.forEach((p, k) => tb.append(el("tr", {}, el("td", { text: k + 1 }), el("td", { text: p.clean }), el("td", { text: p.corrupted }), el("td", { text: JSON.stringify(p.answer) }), el("td", { text: JSON.stringify(p.wrong) }))));
  tbl.append(tb);
  return tbl;
}

// ---------------------------------------------------------------- wiring
let tauFrame = 0;
function onTau() {
  st.tau = Number($("tau").value);
  $("tau-value").textContent = st.tau.toFixed(2);
  cancelAnimationFrame(tauFrame);
  tauFrame = requestAnimationFrame(() => {
    renderResult({ tauOnly: true });
    syncUrl();
  });
}

async function copyLink() {
  syncUrl();
  const input = $("share-link");
  const url = input.value;
  let ok = false;
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(url);
      ok = true;
    }
  } catch {
    ok = false;
  }
  if (!ok) {
    input.focus();
    input.select();
    try {
      ok = document.execCommand("copy");
    } catch {
      ok = false;
    }
  }
  $("copy-status").textContent = ok ? "Link copied." : "Select the link and copy it.";
}

function download(format) {
  Plotly.downloadImage($("heatmap"), { format, filename: `patchaudit-${st.id}-${st.view}`, scale: format === "png" ? 2 : 1 });
}

async function initToken() {
  $("token-input").value = getToken();
  $("token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    setToken($("token-input").value.trim());
    showMessage("");
    await checkReadOnly();
  });
  await checkReadOnly();
}

async function checkReadOnly() {
  const needs = await writesNeedToken(`/api/analyses/${encodeURIComponent(st.id)}/verify`, { components: [] });
  setReadOnly(needs === true && !getToken());
}

function init() {
  parseUrl();
  if (!st.id) {
    showMessage("No analysis id in the link. Links look like /a/<id>.");
    return;
  }
  $("analysis-id").textContent = st.id;
  document.title = `patchaudit: analysis ${st.id.slice(0, 8)}`;
  $("view").addEventListener("change", () => {
    st.view = $("view").value;
    renderResult();
    syncUrl();
  });
  $("tau").addEventListener("input", onTau);
  $("fix").addEventListener("click", fixAll);
  $("cancel").addEventListener("click", cancel);
  $("copy-link").addEventListener("click", copyLink);
  $("download-png").addEventListener("click", () => download("png"));
  $("download-svg").addEventListener("click", () => download("svg"));
  if (typeof Plotly === "undefined") {
    showMessage("The plotting library did not load (/static/plotly.min.js). The numbers are in the CSV export.");
  }
  initToken();
  poll();
}

init();
