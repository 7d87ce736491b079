// The "why" views (issue 21): why AtP is wrong for a component, from pa.diagnose.
//   - in the component panel (st.c): a stacked bar of the second-order term q/2 by layer and
//     kind of operation (attention scores, softmax, pattern x V, norms, MLP activation / gate,
//     soft-caps, the metric), the unexplained remainder ap − A1 − q/2 next to it, and a
//     sentence saying where the error comes from;
//     GET /api/analyses/<id>/components/<key>/why (202 while a worker computes it once);
//   - model-wide: for the flagged components of the analysis, which layers carry their error
//     (each component's shares per layer as a fraction of its sum |share|);
//     GET /api/analyses/<id>/why.
// Both are in the link: ?why=c, ?why=flagged or ?why=c,flagged (state.js).
/* global Plotly */
import { api } from "./api.js";
import { fmt } from "./flags.js";
import { DIVERGING } from "./heatmap.js";
import { $, on, st, update } from "./state.js";

const KINDS = ["attn.qk", "attn.softcap", "attn.softmax", "attn.pv", "attn.other", "norm", "mlp.act", "mlp.gate", "logits.softcap", "metric", "other"];
const KIND_LABELS = {
  "attn.qk": "attention scores (QK^T)",
  "attn.softcap": "attention soft-cap",
  "attn.softmax": "attention softmax",
  "attn.pv": "pattern × V",
  "attn.other": "other attention op",
  norm: "normalisation",
  "mlp.act": "MLP activation",
  "mlp.gate": "MLP gate product",
  "logits.softcap": "final logit soft-cap",
  metric: "the metric (log-softmax)",
  other: "other",
};
const KIND_COLORS = {
  "attn.qk": "#6a3d9a",
  "attn.softcap": "#cab2d6",
  "attn.softmax": "#2457c5",
  "attn.pv": "#8fb3f0",
  "attn.other": "#a6cee3",
  norm: "#33a02c",
  "mlp.act": "#e6550d",
  "mlp.gate": "#fdae6b",
  "logits.softcap": "#b15928",
  metric: "#111111",
  other: "#999999",
};
const CONFIG = { displaylogo: false, displayModeBar: false, responsive: false, scrollZoom: false, doubleClick: false };

const cache = new Map(); // "i.j" | "flagged" -> the API's diagnosis
let wanted = { c: null, flagged: null };
const retry = { c: null, flagged: null };

/** The kind of operation of a share key ("L3.attn.softmax" -> "attn.softmax", "L4.ln1" -> "norm"). */
export function kindOf(key) {
  const m = key.match(/^L\d+(H\d+)?\.(.*)$/);
  const rest = m ? m[2] : key;
  if (KINDS.includes(rest)) return rest;
  if (rest.includes("ln") || rest.includes("norm")) return "norm";
  if (rest.startsWith("attn.")) return "attn.other";
  if (rest.startsWith("mlp.")) return "mlp.act";
  return "other";
}

/** The column a share key falls in: "L3", "final" (the final norm / soft-cap) or "metric". */
export function columnOf(key) {
  const m = key.match(/^L(\d+)/);
  if (m) return `L${m[1]}`;
  return key === "metric" ? "metric" : "final";
}

const open = () => new Set(String(st.why || "").split(",").filter(Boolean));

function setOpen(part, yes) {
  const s = open();
  if (yes) s.add(part);
  else s.delete(part);
  const order = ["c", "flagged"].filter((p) => s.has(p));
  update({ why: order.length ? order.join(",") : null });
}

function columns(nLayers) {
  return [...Array.from({ length: nLayers }, (_, i) => `L${i}`), "final", "metric"];
}

function nLayers(d) {
  return d.n_layers || st.result?.labels?.rows?.length || 0;
}

// ------------------------------------------------------------------ the component's view

async function loadComponent() {
  clearTimeout(retry.c);
  const view = $("why-view");
  const on_ = open().has("c");
  $("why-toggle").setAttribute("aria-expanded", String(on_));
  $("why-toggle").textContent = on_ ? "Hide the diagnosis" : "Why is AtP wrong here?";
  view.classList.toggle("hidden", !on_);
  if (!on_ || !st.result || st.c == null || st.c === "") return;
  const key = String(st.c);
  $("why-box").dataset.key = key;
  if (cache.has(key)) {
    drawComponent(cache.get(key));
    return;
  }
  wanted.c = key;
  clearComponent();
  status("why-status", "Diagnosing (the second-order term split by operation)…");
  let res;
  try {
    res = await api(`/api/analyses/${encodeURIComponent(st.id)}/components/${encodeURIComponent(key)}/why?wait=2`, { write: true });
  } catch (err) {
    if (wanted.c !== key) return;
    const auth = err.status === 401 || err.status === 403;
    status("why-status", auth ? `Diagnosing a component the first time needs an API token (enter it under “API token”). ${err.message}` : err.message, true);
    return;
  }
  if (wanted.c !== key || String(st.c) !== key) return;
  if (res && Array.isArray(res.components)) {
    cache.set(key, res);
    drawComponent(res);
  } else {
    retry.c = setTimeout(loadComponent, 700);
  }
}

function status(id, text, error = false) {
  const s = $(id);
  s.textContent = text;
  s.classList.toggle("error", error);
}

function clearComponent() {
  const div = $("why-bar");
  if (window.Plotly && div.data) Plotly.purge(div);
  div.replaceChildren();
  $("why-sentence").textContent = "";
  $("why-numbers").textContent = "";
  $("why-box").dataset.state = "loading";
}

function drawComponent(d) {
  if (typeof Plotly === "undefined") return;
  const c = d.components?.[0];
  const box = $("why-box");
  if (!c) {
    status("why-status", "No diagnosis for this component.", true);
    return;
  }
  status("why-status", "");
  const cols = columns(nLayers(d));
  const half = (v) => v / 2; // the bars are the Taylor term q/2, in the metric's units
  const cells = new Map(); // kind -> column -> value
  for (const [key, v] of Object.entries(c.shares || {})) {
    const k = kindOf(key);
    const col = columnOf(key);
    if (!cells.has(k)) cells.set(k, new Map());
    cells.get(k).set(col, (cells.get(k).get(col) || 0) + half(v));
  }
  const x = [...cols, "unexplained"];
  const traces = [];
  let total = 0;
  for (const k of KINDS) {
    if (!cells.has(k)) continue;
    const y = x.map((col) => cells.get(k).get(col) ?? 0);
    for (const v of y) total += v;
    traces.push({ type: "bar", name: KIND_LABELS[k], x, y, marker: { color: KIND_COLORS[k] }, hovertemplate: `%{x}: ${KIND_LABELS[k]} %{y:.4g}<extra></extra>` });
  }
  const rem = c.remainder;
  traces.push({
    type: "bar",
    name: "unexplained (ap − A1 − q/2)",
    x: ["unexplained"],
    y: [rem ?? 0],
    marker: { color: "#bbbbbb", pattern: { shape: "/" } },
    hovertemplate: "no second-order term explains %{y:.4g}<extra></extra>",
  });
  const layout = {
    title: { text: `Second-order term q/2 of ${c.name} by layer and kind`, font: { size: 12 }, x: 0, xanchor: "left" },
    barmode: "relative",
    height: 300,
    margin: { l: 60, r: 10, t: 30, b: 40 },
    xaxis: { type: "category", categoryarray: x, fixedrange: true },
    yaxis: { title: { text: d.metric }, zeroline: true, fixedrange: true },
    legend: { orientation: "h", y: -0.2, font: { size: 11 } },
    dragmode: false,
  };
  const div = $("why-bar");
  Plotly.react(div, traces, layout, CONFIG);
  const term = half(c.q);
  div.dataset.total = String(total);
  div.dataset.term = String(term);
  div.dataset.bars = String(traces.length - 1);
  div.dataset.remainder = String(rem ?? "");
  $("why-sentence").textContent = c.sentence || "";
  const fr = c.fractions || {};
  $("why-numbers").textContent =
    `Second-order term q/2 = ${fmt(term)} (the sum of the coloured bars). ` +
    `AtP ${fmt(c.a1)}, AtP + q/2 = ${fmt(c.a1 + term)}, activation patching ${fmt(c.ap)}; ` +
    `unexplained remainder ap − A1 − q/2 = ${fmt(rem)}. Saturation-aware estimate ${fmt(c.saturation)}. ` +
    `Local curvature ${Math.round(100 * (fr.local || 0))} %, downstream ${Math.round(100 * (fr.downstream || 0))} % of sum |share|.`;
  $("why-numbers").dataset.term = String(term);
  box.dataset.state = "ready";
}

// ------------------------------------------------------------------ the model-wide view

async function loadFlagged() {
  clearTimeout(retry.flagged);
  const card = $("why-model-card");
  if (!st.result) {
    card.classList.add("hidden");
    return;
  }
  card.classList.remove("hidden");
  const on_ = open().has("flagged");
  $("why-model-toggle").setAttribute("aria-expanded", String(on_));
  $("why-model-toggle").textContent = on_ ? "Hide" : "Show";
  $("why-model-view").classList.toggle("hidden", !on_);
  if (!on_) return;
  if (cache.has("flagged")) {
    drawFlagged(cache.get("flagged"));
    return;
  }
  wanted.flagged = st.id;
  status("why-model-status", "Diagnosing the flagged components…");
  card.dataset.state = "loading";
  let res;
  try {
    res = await api(`/api/analyses/${encodeURIComponent(st.id)}/why?wait=2`, { write: true });
  } catch (err) {
    const auth = err.status === 401 || err.status === 403;
    status("why-model-status", auth ? `Diagnosing needs an API token the first time (enter it under “API token”). ${err.message}` : err.message, true);
    return;
  }
  if (res && Array.isArray(res.components)) {
    cache.set("flagged", res);
    drawFlagged(res);
  } else {
    retry.flagged = setTimeout(loadFlagged, 700);
  }
}

function drawFlagged(d) {
  if (typeof Plotly === "undefined") return;
  const card = $("why-model-card");
  const comps = d.components || [];
  const div = $("why-model");
  if (!comps.length) {
    status("why-model-status", "No flagged components: nothing to diagnose.");
    div.replaceChildren();
    card.dataset.state = "ready";
    div.dataset.rows = "0";
    return;
  }
  status("why-model-status", "");
  const cols = columns(nLayers(d));
  const z = comps.map((c) => {
    const mass = Object.values(c.shares || {}).reduce((a, v) => a + Math.abs(v), 0) || 1;
    return cols.map((col) => (c.by_layer?.[col] ?? 0) / mass);
  });
  const y = comps.map((c) => c.name);
  Plotly.react(
    div,
    [{ type: "heatmap", x: cols, y, z, colorscale: DIVERGING, zmid: 0, zmin: -1, zmax: 1, xgap: 1, ygap: 1, colorbar: { thickness: 10, title: { text: "share of |q|", side: "right" } }, hovertemplate: "%{y}: %{x} carries %{z:.0%} of its second-order term<extra></extra>" }],
    {
      title: { text: "Which layers carry each flagged component's second-order term", font: { size: 12 }, x: 0, xanchor: "left" },
      height: 120 + 24 * comps.length,
      margin: { l: 90, r: 10, t: 30, b: 40 },
      xaxis: { type: "category", fixedrange: true },
      yaxis: { type: "category", autorange: "reversed", fixedrange: true },
      dragmode: false,
    },
    CONFIG,
  );
  const down = comps.reduce((a, c) => a + (c.fractions?.downstream || 0), 0) / comps.length;
  $("why-model-summary").textContent =
    `${comps.length} flagged component${comps.length === 1 ? "" : "s"} (least reliable first): on average ${Math.round(100 * down)} % of the second-order term's magnitude comes from operations downstream of the component's own sub-block, ${Math.round(100 * (1 - down))} % from local curvature.`;
  div.dataset.rows = String(comps.length);
  card.dataset.state = "ready";
}

function init() {
  if (!$("why-box")) return;
  $("why-toggle").addEventListener("click", () => setOpen("c", !open().has("c")));
  $("why-model-toggle").addEventListener("click", () => setOpen("flagged", !open().has("flagged")));
  on("change", (keys) => {
    if (keys.includes("c") || keys.includes("why") || keys.includes("view")) {
      loadComponent();
      loadFlagged();
    }
  });
  on("rendered", () => {
    if (st.result && $("why-model-card").classList.contains("hidden")) loadFlagged();
  });
}

init();
