// The circuit panel (issue 12): for each ranking the analysis has (its score maps: atp, hvp,
// ig, mhvp, ap, ...) a button queues POST /api/analyses/<id>/circuit {ranking}; the curves
// (result.circuits[ranking]: sizes, faithfulness, cpr, cmd, smallest_80/90, order) share one
// chart of faithfulness against circuit size. The size slider (or a click on a curve) picks k
// (URL ?k=) and the heatmap outlines the circuit: the first k components of the chosen
// ranking's order.
/* global Plotly */
import { api, ApiError, el } from "./api.js";
import { setReadOnly } from "./banner.js";
import { METHOD_LABELS, fmt, shapeOf } from "./flags.js";
import { $, ACTIVE, METHOD_ORDER, assign, on, st, update } from "./state.js";

const COLORS = { atp: "#8c96a8", hvp: "#2457c5", hvp_joint: "#5b3cc4", hvp_exact: "#0b6e99", mhvp: "#7a4fb0", ig: "#c47a12", ap: "#111111" };
const circuits = {}; // key ("hvp", "hvp:signed") -> CircuitInfo
let pollTimer = null;
// the ranking whose circuit is outlined: st.circ (URL ?circ=, so a link keeps it)
const label = (m) => METHOD_LABELS[m] || m;

function rankings() {
  const scores = st.result?.scores || {};
  return [...METHOD_ORDER.filter((m) => scores[m]), ...Object.keys(scores).filter((m) => !METHOD_ORDER.includes(m))];
}

const rank = (m) => (METHOD_ORDER.includes(m) ? METHOD_ORDER.indexOf(m) : METHOD_ORDER.length);
/** The finished absolute-ranking curves, in the page's method order. */
const done = () =>
  Object.values(circuits)
    .filter((c) => c && c.status === "done" && Array.isArray(c.sizes) && c.absolute !== false)
    .sort((a, b) => rank(a.ranking) - rank(b.ranking));
const total = () => {
  const [R, C] = shapeOf(st.result);
  return R * C;
};

function merge(from) {
  let changed = false;
  for (const [key, c] of Object.entries(from || {})) {
    const old = circuits[key];
    if (!old || old.status !== c.status || (c.sizes && !old.sizes) || old.job_id !== c.job_id) {
      circuits[key] = c;
      changed = true;
    }
  }
  return changed;
}

function setStatus(text, error = false) {
  const s = $("circuit-status");
  s.textContent = text;
  s.classList.toggle("error", error);
}

async function compute(ranking) {
  if (st.readOnly) {
    setStatus("Read-only: computing a circuit curve needs an API token (enter it under “API token”).", true);
    return;
  }
  setStatus(`Computing the ${label(ranking)} curve…`);
  try {
    const res = await api(`/api/analyses/${encodeURIComponent(st.id)}/circuit`, { method: "POST", body: { ranking }, write: true });
    circuits[res.key] = res.circuit;
  } catch (err) {
    if (err instanceof ApiError && err.isAuth) setReadOnly(true);
    setStatus(`Could not compute the ${label(ranking)} curve: ${err.message}`, true);
    return;
  }
  if (!st.circ) update({ circ: ranking });
  render();
  poll();
}

async function poll() {
  clearTimeout(pollTimer);
  const active = Object.values(circuits).some((c) => ACTIVE.has(c?.status));
  if (!active) return;
  try {
    const data = await api(`/api/analyses/${encodeURIComponent(st.id)}`);
    if (merge(data.result?.circuits)) render();
  } catch {
    /* the page's own poll reports a lost server */
  }
  pollTimer = setTimeout(poll, 600);
}

/** The ranking whose circuit the heatmap outlines: the chosen one, else the corrected one. */
function outlined() {
  const ds = done();
  if (!ds.length) return null;
  const byRank = Object.fromEntries(ds.map((c) => [c.ranking, c]));
  if (st.circ && byRank[st.circ]) return byRank[st.circ];
  const pref = [st.result?.reliability_source, "hvp", "mhvp", "ig", "atp", "ap"].find((m) => m && byRank[m]);
  return byRank[pref] || ds[0];
}

function faithAt(c, k) {
  if (!c?.sizes) return null;
  let best = null;
  c.sizes.forEach((s, n) => {
    if (s <= k) best = c.faithfulness[n];
  });
  return best;
}

function render() {
  const card = $("circuit-card");
  if (!card || !st.result) return;
  card.classList.remove("hidden");
  const n = total();
  // buttons: one per ranking
  const box = $("circuit-buttons");
  const want = rankings();
  if (box.dataset.for !== want.join(",")) {
    box.replaceChildren(...want.map((m) => el("button", { type: "button", class: "small", id: `circuit-${m}`, "data-ranking": m, onclick: () => compute(m) })));
    box.dataset.for = want.join(",");
  }
  for (const m of want) {
    const c = circuits[m];
    const b = $(`circuit-${m}`);
    const busy = c && ACTIVE.has(c.status);
    b.textContent = busy ? `${label(m)}: computing…` : c?.status === "done" ? `${label(m)}: done` : c?.status === "failed" ? `${label(m)}: failed, retry` : `Compute ${label(m)}`;
    b.disabled = !!busy || c?.status === "done" || st.readOnly;
  }
  const failed = Object.values(circuits).filter((c) => c?.status === "failed" && c.error);
  if (failed.length) setStatus(`The ${label(failed[0].ranking)} curve failed: ${failed[0].error.message || failed[0].error.type}`, true);
  else if (Object.values(circuits).some((c) => ACTIVE.has(c?.status))) setStatus("Computing…");
  else setStatus("");

  const ds = done();
  const sel = $("circuit-ranking");
  const cur = outlined();
  if (sel.dataset.for !== ds.map((c) => c.ranking).join(",")) {
    sel.replaceChildren(...ds.map((c) => el("option", { value: c.ranking, text: label(c.ranking) })));
    sel.dataset.for = ds.map((c) => c.ranking).join(",");
  }
  sel.disabled = ds.length === 0;
  if (cur) sel.value = cur.ranking;
  const slider = $("circuit-k");
  slider.max = String(n);
  slider.disabled = ds.length === 0;
  const k = Math.max(0, Math.min(n, st.k ?? 0));
  slider.value = String(k);
  drawChart(ds, k);
  drawOutline();
  const table = ds.map((c) => `${label(c.ranking)}: CPR ${fmt(c.cpr)} (area under f, higher is better), CMD ${fmt(c.cmd)} (area of |1 − f|, lower is better), 80 % at ${c.smallest_80 ?? "—"}, 90 % at ${c.smallest_90 ?? "—"}`);
  $("circuit-summary").textContent = ds.length ? table.join(" · ") : "Compute a curve: each ranking's top-k components are kept (the rest patched) and f = how much of the behaviour they carry.";
  card.dataset.curves = String(ds.length);
}

function drawChart(ds, k) {
  if (typeof Plotly === "undefined") return;
  const div = $("circuit-chart");
  const n = total();
  const traces = ds.map((c) => ({
    type: "scatter",
    mode: c.sizes.length > 40 ? "lines" : "lines+markers",
    name: `${label(c.ranking)} (CPR ${fmt(c.cpr, 2)}, CMD ${fmt(c.cmd, 2)})`,
    x: c.sizes,
    y: c.faithfulness,
    line: { color: COLORS[c.ranking] || undefined, width: 2 },
    marker: { size: 6 },
    hovertemplate: `${label(c.ranking)}: top %{x} → f = %{y:.3f}<extra></extra>`,
  }));
  const layout = {
    title: { text: "Faithfulness of the top-k circuit (click a point to outline it)", font: { size: 12 }, x: 0, xanchor: "left" },
    height: 300,
    margin: { l: 55, r: 10, t: 30, b: 45 },
    xaxis: { title: { text: "circuit size k (components kept)" }, range: [-0.5, n + 0.5], fixedrange: true },
    yaxis: { title: { text: "faithfulness f" }, fixedrange: true, zeroline: true },
    legend: { orientation: "h", y: -0.3, font: { size: 11 } },
    // the reference lines say what they are
    annotations: [
      { xref: "paper", x: 1, xanchor: "right", y: 1, yanchor: "bottom", text: "f = 1: the whole model", showarrow: false, font: { size: 10, color: "#666" } },
      { xref: "paper", x: 1, xanchor: "right", y: 0.9, yanchor: "top", text: "f = 0.9: 90 % of the behaviour", showarrow: false, font: { size: 10, color: "#1b7a3a" } },
    ],
    shapes: [
      { type: "line", xref: "paper", x0: 0, x1: 1, y0: 1, y1: 1, line: { color: "#999", width: 1, dash: "dot" } },
      { type: "line", xref: "paper", x0: 0, x1: 1, y0: 0.9, y1: 0.9, line: { color: "#1b7a3a", width: 1, dash: "dot" } },
      { type: "line", yref: "paper", x0: k, x1: k, y0: 0, y1: 1, line: { color: "#00a651", width: 2 } },
    ],
    dragmode: false,
    hovermode: "closest",
  };
  Plotly.react(div, traces, layout, { displaylogo: false, displayModeBar: false, responsive: false, scrollZoom: false, doubleClick: false });
  if (!div.dataset.bound) {
    div.dataset.bound = "1";
    div.on("plotly_click", (ev) => {
      const pt = ev?.points?.[0];
      if (!pt || !Number.isFinite(pt.x)) return;
      const r = ds.find((c) => `${label(c.ranking)}` === String(pt.data?.name || "").split(" (")[0]);
      if (r) update({ circ: r.ranking });
      setK(pt.x);
    });
  }
}

/** The first k components of the outlined ranking, drawn on the heatmap ("circuit" trace). */
function drawOutline() {
  const c = outlined();
  const k = st.k ?? 0;
  const cells = c?.order ? c.order.slice(0, k) : [];
  assign({ circuitCells: cells });
  const f = c ? faithAt(c, k) : null;
  $("circuit-k-value").textContent = c ? `k = ${k} of ${total()} (${label(c.ranking)}): f = ${f == null ? "—" : fmt(f, 3)}` : "k = —";
  const gd = $("heatmap");
  gd.dataset.circuit = JSON.stringify(cells);
  const idx = (gd.data || []).findIndex((t) => t.name === "circuit");
  if (idx < 0 || typeof Plotly === "undefined") return;
  const x = [];
  const y = [];
  for (const [i, j] of cells) {
    x.push(j - 0.32, j + 0.32, j + 0.32, j - 0.32, j - 0.32, null);
    y.push(i - 0.32, i - 0.32, i + 0.32, i + 0.32, i - 0.32, null);
  }
  Plotly.restyle(gd, { x: [x], y: [y] }, [idx]);
}

function setK(k) {
  const n = total();
  update({ k: Math.max(0, Math.min(n, Math.round(Number(k)))) });
}

function init() {
  if (!$("circuit-card")) return;
  $("circuit-k").addEventListener("input", () => setK($("circuit-k").value));
  $("circuit-ranking").addEventListener("change", () => {
    update({ circ: $("circuit-ranking").value });
    render();
  });
  on("change", (keys) => {
    if (keys.includes("k") && st.result && !st.result.edges) {
      $("circuit-k").value = String(st.k ?? 0);
      drawChart(done(), st.k ?? 0);
      drawOutline();
    }
  });
  // After each redraw of the page: redraw the panel only when a curve or the write access
  // changed (a tau drag redraws the page many times a second; the map keeps the outline).
  let drawn = null;
  on("rendered", () => {
    const changed = merge(st.result?.circuits);
    const sig = JSON.stringify([st.readOnly, Object.entries(circuits).map(([k, c]) => [k, c?.status])]);
    if (changed || sig !== drawn) {
      drawn = sig;
      render();
      poll();
    }
  });
  on("readonly", () => st.result && render());
}

init();
