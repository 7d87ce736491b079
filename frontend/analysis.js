// The shareable analysis page, entry point: polls the analysis, keeps `st` (state.js) in step
// and wires the panels, one module each: progress.js (status, cancel), heatmap.js (the map and
// click-to-verify), verify.js (verify, Screen-Flag-Fix, flag count), table.js, scatter.js,
// cost.js (cost table, Fix summary), request.js, banner.js (read-only, token), notices.js.
import { api, ApiError, el } from "./api.js";
import { initToken } from "./banner.js";
import { renderCost, renderFix } from "./cost.js";
import { METHOD_LABELS, computeFlags, correctedMethod } from "./flags.js";
import { renderExplain } from "./explain.js";
import { cellCenter, download, renderHeatmap } from "./heatmap.js";
import { initKeys, renderKeys } from "./keyboard.js";
import { showMessage, showNotice } from "./notices.js";
import { cancel, renderProgress, rerun, statusMessage } from "./progress.js";
import { renderRequest } from "./request.js";
import { renderScatter } from "./scatter.js";
import { ACTIVE, $, METHOD_ORDER, assign, dropLocalPending, emit, errorText, on, parseUrl, pendKey, pendingKeys, recordRender, st, syncUrl, update } from "./state.js";
import { renderTable } from "./table.js";
import { fixAll, renderControls, verify } from "./verify.js";
import { graphHandle, initGraph, renderGraph } from "./graph.js"; // the graph view of an edge analysis (issue 22)
import "./component.js"; // the component panel (issue 11): follows st.c / st.pair
import "./circuit.js"; // the circuit panel (issue 12): follows st.k
import "./why.js"; // the "why" views (issue 21): follow st.c / st.why
import "./notes.js"; // labels and notes on components (issue 20): map, hover, panel
import { initCompareBox, remember } from "./history.js";

// A small read-only handle for tests and the browser console.
window.__patchaudit = Object.assign(st.stats, {
  /** Flagged cells at the page's tau, [[row, col], ...]. */
  flagged: () => {
    const out = [];
    st.flags?.flags.forEach((row, i) => row.forEach((f, j) => f && out.push([i, j])));
    return out;
  },
  cellCenter,
  graph: graphHandle,
  state: () => ({ view: st.view, tau: st.tau, readOnly: st.readOnly, id: st.id }),
});

// ---------------------------------------------------------------- polling
let pollTimer = null;
function pollSoon(ms) {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(poll, ms);
}

async function poll() {
  const started = Date.now();
  let data;
  try {
    data = await api(`/api/analyses/${encodeURIComponent(st.id)}`);
  } catch (err) {
    showMessage(err.message);
    if (!(err instanceof ApiError) || err.status !== 404) pollSoon(3000);
    return;
  }
  // Local pending entries the server has seen: trust the server's pending list now.
  const verified = data.result?.verified || {};
  const serverPending = new Set((data.pending || []).map(pendKey));
  for (const [key, when] of [...st.localPending]) {
    if (verified[key] != null) dropLocalPending(key);
    else if (when < started && !serverPending.has(key)) {
      dropLocalPending(key);
      if (!ACTIVE.has(data.status)) showNotice(`Verifying ${key} gave no value. ${errorText(data.error)}`.trim());
    }
  }
  if (st.data?.status !== data.status || data.status === "failed") showMessage("");
  reportVerificationErrors(data);
  // Redraw only when something changed (a redraw under the pointer disturbs hover and click).
  const sig = JSON.stringify([data.status, data.progress, data.jobs, data.pending, data.result?.verified, data.result?.fix, (data.verifications || []).length, data.error, [...st.localPending.keys()], data.notes]);
  const changed = sig !== st.dataSig || !st.data;
  assign({ dataSig: sig, data });
  remember(data); // "My analyses" (history.js)
  if (changed) render();
  const waiting = ACTIVE.has(data.status) || serverPending.size > 0 || st.localPending.size > 0 || (data.jobs || []).length > 0;
  if (waiting) pollSoon(ACTIVE.has(data.status) && !data.result ? 700 : 500);
}

/** Show each failed verification once (the service lists them under `verifications`). */
function reportVerificationErrors(data) {
  const list = data.verifications || [];
  if (st.seenVerifications == null) {
    assign({ seenVerifications: list.length }); // old failures of a shared link are not news
    return;
  }
  for (const v of list.slice(st.seenVerifications)) {
    if (v && v.error) {
      const comps = (v.components || []).join(", ");
      showNotice(`Verifying ${comps || "components"} failed: ${errorText(v.error)}`, { error: true });
    }
  }
  assign({ seenVerifications: list.length });
}

// ---------------------------------------------------------------- render
function render() {
  const d = st.data;
  renderProgress();
  const said = statusMessage();
  if (said) showMessage(said);

  renderRequest();
  if (d.result?.edges) {
    // an edge analysis: the graph view (graph.js) instead of the map panels
    const first = !st.result;
    assign({ result: d.result });
    if (first) {
      initGraph(parseUrl());
      syncUrl();
    }
    renderGraph();
    return;
  }
  if (d.result) {
    const first = !st.result;
    assign({ result: d.result });
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
  const corr = correctedMethod(r.scores, r.reliability_source, r.estimate_method);
  const fallback = corr || (r.scores?.atp ? "atp" : views[0]?.[0]);
  const tau = url.tau ?? (typeof r.tau === "number" ? r.tau : 0.5);
  update({
    view: views.some(([v]) => v === url.view) ? url.view : fallback,
    tau: Math.max(0, Math.min(1, tau)),
    c: url.c,
    pair: url.pair,
    k: url.k,
    why: url.why,
    circ: url.circ,
    attn: url.attn,
  }, { url: false });
  assign({ sharedScale: url.scale !== "own" });
  $("shared-scale").checked = st.sharedScale;
  sel.value = st.view;
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
  const corr = correctedMethod(scores, r.reliability_source, r.estimate_method);
  if (corr && scores.atp) views.push(["diff", `${METHOD_LABELS[corr] || corr} minus AtP`]);
  if (corr || scores.atp) views.push(["best", "Best estimate (verified where available)"]);
  return views;
}

function renderResult({ tauOnly = false } = {}) {
  const t0 = performance.now();
  const r = st.result;
  const parts = {};
  const timed = (name, fn) => {
    const t = performance.now();
    fn();
    parts[name] = Math.round(performance.now() - t);
  };
  timed("flags", () => assign({ flags: computeFlags(r, st.tau) }));
  timed("heatmap", renderHeatmap);
  timed("explain", () => {
    renderExplain();
    renderKeys();
    renderControls();
  });
  timed("table", renderTable);
  if (!tauOnly) {
    timed("scatter", renderScatter); // neither depends on tau
    timed("cost", renderCost);
  }
  renderFix();
  recordRender(parts, performance.now() - t0); // per-panel milliseconds of the last render
  const hm = $("heatmap");
  hm.dataset.view = st.view;
  hm.dataset.tau = st.tau.toFixed(2);
  hm.dataset.flagged = String(st.flags.count);
  hm.dataset.verified = String(Object.keys(r.verified || {}).length);
  hm.dataset.pending = String(pendingKeys().size);
  hm.dataset.renders = String(st.stats.renders);
  emit("rendered"); // panels that follow the map (component.js, circuit.js)
}

// ---------------------------------------------------------------- wiring
let tauFrame = 0;
function onTau() {
  update({ tau: Number($("tau").value) }, { url: false });
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

function init() {
  parseUrl();
  if (!st.id) {
    showMessage("No analysis id in the link. Links look like /a/<id>.");
    return;
  }
  $("analysis-id").textContent = st.id;
  document.title = `patchaudit: analysis ${st.id.slice(0, 8)}`;
  $("view").addEventListener("change", () => {
    update({ view: $("view").value });
    renderResult();
  });
  $("tau").addEventListener("input", onTau);
  $("fix").addEventListener("click", fixAll);
  $("cancel").addEventListener("click", cancel);
  $("rerun").addEventListener("click", rerun);
  $("shared-scale").addEventListener("change", () => {
    assign({ sharedScale: $("shared-scale").checked });
    renderResult();
    syncUrl(); // the link keeps the choice (scale=own)
  });
  initKeys();
  $("copy-link").addEventListener("click", copyLink);
  $("download-png").addEventListener("click", () => download("png"));
  $("download-svg").addEventListener("click", () => download("svg"));
  if (typeof Plotly === "undefined") {
    showMessage("The plotting library did not load (/static/plotly.min.js). The numbers are in the CSV export.");
  }
  initToken();
  initCompareBox();
  poll();
}

on("render", (opts) => st.result && (st.result.edges ? renderGraph() : renderResult(opts)));
on("poll", (ms) => pollSoon(ms));
on("verify", (components) => verify(components)); // a cell clicked (heatmap), Enter (keyboard), a table row
on("readonly", (ro) => {
  renderControls();
  if (st.result) (st.result.edges ? renderGraph() : renderTable());
  if (st.data) $("cancel").disabled = !ACTIVE.has(st.data.status) || ro;
});

init();
