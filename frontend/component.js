// The component panel (issue 11): the selected cell (st.c, URL ?c=) in detail, from
// GET /api/analyses/<id>/components/<key> (202 while a worker computes it the first time):
//   - per-pair bars: each method's estimate on every prompt pair, the verified (ap) value per
//     pair when there is one, the verified mean as a line; unreliable pairs are marked;
//   - per-position heatmap of the chosen pair (st.pair, URL ?pair=) with its tokens;
//   - heads: the attention pattern on the clean or the corrupted prompt (query rows, key columns).
// Keyboard: the pair select and the clean/corrupted radio buttons are ordinary form controls;
// the heatmap's arrow keys (keyboard.js) move the selection.
/* global Plotly */
import { api, el } from "./api.js";
import { METHOD_LABELS, fmt } from "./flags.js";
import { DIVERGING } from "./heatmap.js";
import { $, METHOD_ORDER, on, st, update } from "./state.js";
import { nodeName, parseKey } from "./keys.js";
import { verifyPosted } from "./verify.js";

const cache = new Map(); // "i.j" -> detail (the API's ComponentDetail JSON)
let wanted = null; // the key being fetched
let retry = null;
let debounce = null;
const side = () => st.attn || "clean"; // the attention pattern shown (URL ?attn=)
let drawnTau = null;
let tauTimer = null;

const COLORS = { atp: "#8c96a8", hvp: "#2457c5", hvp_joint: "#5b3cc4", hvp_exact: "#0b6e99", mhvp: "#7a4fb0", ig: "#c47a12", ap: "#111111" };
const CONFIG = { displaylogo: false, displayModeBar: false, responsive: false, scrollZoom: false, doubleClick: false };

const tokLabel = (t) => {
  const s = JSON.stringify(String(t ?? "")).slice(1, -1);
  return s.trim() ? s : "␣";
};

function setStatus(text, error = false) {
  const s = $("comp-status");
  s.textContent = text;
  s.classList.toggle("error", error);
  $("component-card").dataset.state = error ? "error" : text ? "loading" : "ready";
}

/** Fetch (or read from the cache) the selected component and draw it. */
async function load() {
  clearTimeout(retry);
  const card = $("component-card");
  if (!st.result || st.c == null || st.c === "") {
    card.classList.add("hidden");
    return;
  }
  const key = String(st.c);
  card.classList.remove("hidden");
  card.dataset.key = key;
  $("comp-title").textContent = name(key);
  if (cache.has(key)) {
    setStatus("");
    draw(cache.get(key));
    return;
  }
  wanted = key;
  clear();
  setStatus(`Computing ${name(key)} (per pair, per position, attention)…`);
  await verifyPosted(); // the click's verify first: the drill-down goes after it
  if (wanted !== key) return;
  let res;
  try {
    res = await api(`/api/analyses/${encodeURIComponent(st.id)}/components/${encodeURIComponent(key)}?wait=2`, { write: true });
  } catch (err) {
    if (wanted !== key) return;
    const auth = err.status === 401 || err.status === 403;
    setStatus(auth ? `Computing a component's detail the first time needs an API token (enter it under “API token”). ${err.message}` : err.message, true);
    return;
  }
  if (wanted !== key || String(st.c) !== key) return; // the selection moved on
  if (res && res.per_pair) {
    cache.set(key, res);
    setStatus("");
    draw(res);
  } else {
    retry = setTimeout(load, Math.max(300, 1000 * (res?.retry_after_s ?? 0.7)));
  }
}

function name(key) {
  const site = st.result?.site || st.data?.request?.site || "heads";
  if (site === "edges") return nodeName(key); // a node of the edge graph: "L.H" or "mL"
  const [i, j] = parseKey(key) || [key, ""];
  if (site === "heads") return `head L${i}H${j}`;
  if (site === "mlp") return `MLP L${i}`;
  if (site === "resid") return `resid L${i} position ${j}`;
  if (site === "q") return `query of head L${i}H${j}`;
  if (site === "k" || site === "v") {
    const what = site === "k" ? "key" : "value";
    const kv = st.result?.labels?.col_name === "kv head" ? "key/value head" : "head";
    return `${what} of ${kv} L${i}H${j}`;
  }
  return String(key);
}

function clear() {
  for (const id of ["comp-pairs", "comp-pos", "comp-attn"]) {
    const d = $(id);
    if (window.Plotly && d.data) Plotly.purge(d);
    d.replaceChildren();
  }
  $("comp-summary").textContent = "";
  $("comp-attn-box").classList.add("hidden");
}

const methodsOf = (d) => [...METHOD_ORDER.filter((m) => m !== "ap" && d.per_pair[m]), ...Object.keys(d.per_pair).filter((m) => !METHOD_ORDER.includes(m) && m !== "reliability")];
const label = (m) => METHOD_LABELS[m] || m;

function pairIndex(d) {
  const n = d.n_pairs || 1;
  const p = Number.isInteger(st.pair) ? st.pair : 0;
  return Math.max(0, Math.min(n - 1, p));
}

function pairText(d, p) {
  const toks = d.tokens?.clean?.[p] || [];
  // byte-level BPE tokens carry their own leading space; word-level ones do not
  const spaced = toks.some((t) => /^\s/.test(String(t)));
  const text = toks.join(spaced ? "" : " ").replace(/\s+/g, " ").trim();
  return text.length > 70 ? `…${text.slice(-70)}` : text;
}

function draw(d) {
  if (typeof Plotly === "undefined") return;
  const p = pairIndex(d);
  const card = $("component-card");
  card.dataset.pair = String(p);
  card.dataset.pairs = String(d.n_pairs);
  card.dataset.site = d.site;
  // summary line: the map's values and the verified mean
  const bits = methodsOf(d).map((m) => `${label(m)} ${fmt(d.map_value?.[m])}`);
  if (d.verified != null) bits.push(`verified ${fmt(d.verified)}`);
  $("comp-summary").textContent = `${d.n_pairs} prompt pairs, ${d.n_pos} positions. Map value: ${bits.join(", ")}.`;
  // the pair select
  const sel = $("comp-pair");
  if (sel.options.length !== d.n_pairs || sel.dataset.key !== d.key) {
    sel.replaceChildren(...Array.from({ length: d.n_pairs }, (_, k) => el("option", { value: String(k), text: `pair ${k}: ${pairText(d, k)}` })));
    sel.dataset.key = d.key;
  }
  sel.value = String(p);
  drawPairs(d, p);
  drawPositions(d, p);
  drawAttention(d, p);
  drawnTau = st.tau;
}

function drawPairs(d, p) {
  const n = d.n_pairs;
  const xs = Array.from({ length: n }, (_, k) => k);
  const rel = d.per_pair.reliability || null;
  const unreliable = xs.filter((k) => rel && typeof rel[k] === "number" && rel[k] < st.tau);
  const traces = methodsOf(d).map((m) => ({
    type: "bar",
    name: `${label(m)} (estimate)`,
    x: xs,
    y: d.per_pair[m],
    marker: { color: COLORS[m] || "#888" },
    hovertemplate: `pair %{x}: ${label(m)} %{y:.4g}<extra></extra>`,
  }));
  if (d.per_pair.ap) {
    traces.push({ type: "bar", name: "verified (ap)", x: xs, y: d.per_pair.ap, marker: { color: COLORS.ap }, hovertemplate: "pair %{x}: ap %{y:.4g}<extra></extra>" });
  }
  // unreliable pairs: a warning mark above the pair (reliability < τ on that pair alone)
  let top = 0;
  for (const t of traces) for (const v of t.y || []) if (typeof v === "number") top = Math.max(top, Math.abs(v));
  traces.push({
    type: "scatter",
    mode: "markers",
    name: `unreliable (ρ < ${st.tau.toFixed(2)})`,
    x: unreliable,
    y: unreliable.map(() => top * 1.12 || 1),
    // a marker the legend can show (a 1 px marker under a text glyph left its legend dot invisible)
    marker: { symbol: "triangle-down", size: 11, color: "#b3261e", line: { color: "#ffffff", width: 1 } },
    hovertemplate: unreliable.map((k) => `pair ${k}: reliability ${fmt(rel[k], 2)} < τ<extra></extra>`),
  });
  const shapes = [{ type: "rect", xref: "x", yref: "paper", x0: p - 0.5, x1: p + 0.5, y0: 0, y1: 1, fillcolor: "rgba(36,87,197,0.08)", line: { color: "#2457c5", width: 1.5, dash: "dot" } }];
  if (d.verified != null) shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: d.verified, y1: d.verified, line: { color: "#111", width: 1.5, dash: "dash" } });
  const layout = {
    title: { text: "Per prompt pair (click a pair to inspect it)", font: { size: 12 }, x: 0, xanchor: "left" },
    barmode: "group",
    height: 300,
    margin: { l: 60, r: 10, t: 30, b: 84 }, // b: the axis title, then the legend below it
    xaxis: { title: { text: "prompt pair" }, tickvals: xs, ticktext: xs.map((k) => (unreliable.includes(k) ? `${k} ⚠` : String(k))), range: [-0.5, n - 0.5], fixedrange: true },
    yaxis: { title: { text: d.metric }, zeroline: true, fixedrange: true },
    legend: { orientation: "h", x: 0, y: -0.34, yanchor: "top", font: { size: 11 } },
    shapes,
    dragmode: false,
  };
  const div = $("comp-pairs");
  Plotly.react(div, traces, layout, CONFIG);
  div.dataset.unreliable = String(unreliable.length);
  div.dataset.bars = String(traces.filter((t) => t.type === "bar").length);
  if (!div.dataset.bound) {
    div.dataset.bound = "1";
    div.on("plotly_click", (ev) => {
      const pt = ev?.points?.[0];
      if (pt && Number.isInteger(pt.x)) update({ pair: pt.x });
    });
  }
}

function positionTicks(d, p, which = "clean") {
  const toks = d.tokens?.[which]?.[p] || [];
  return Array.from({ length: d.n_pos }, (_, k) => `${k} ${tokLabel(toks[k])}`);
}

function drawPositions(d, p) {
  const ms = methodsOf(d).filter((m) => d.per_position?.[m]);
  const z = ms.map((m) => d.per_position[m][p] || []);
  let m = 0;
  for (const row of z) for (const v of row) if (typeof v === "number") m = Math.max(m, Math.abs(v));
  const xs = Array.from({ length: d.n_pos }, (_, k) => k);
  const ticks = positionTicks(d, p);
  const div = $("comp-pos");
  Plotly.react(
    div,
    [{ type: "heatmap", x: xs, y: ms.map(label), z, colorscale: DIVERGING, zmid: 0, zmin: -(m || 1), zmax: m || 1, xgap: 1, ygap: 1, colorbar: { thickness: 10, title: { text: d.metric, side: "right" } }, customdata: z.map(() => ticks), hovertemplate: "%{y} at %{customdata}: %{z:.4g}<extra></extra>" }],
    {
      title: { text: `Per position, pair ${p} (rows sum to the pair's value)`, font: { size: 12 }, x: 0, xanchor: "left" },
      height: 120 + 34 * ms.length,
      margin: { l: 90, r: 10, t: 30, b: 90 },
      xaxis: { tickvals: xs, ticktext: ticks, tickangle: -45, fixedrange: true },
      yaxis: { fixedrange: true, autorange: "reversed" },
      dragmode: false,
    },
    CONFIG,
  );
  div.dataset.positions = String(d.n_pos);
  div.dataset.ticks = JSON.stringify(ticks);
}

function drawAttention(d, p) {
  const box = $("comp-attn-box");
  const att = d.attention;
  if (!att || !att.clean) {
    box.classList.add("hidden");
    return;
  }
  box.classList.remove("hidden");
  for (const r of document.querySelectorAll('input[name="comp-attn-side"]')) r.checked = r.value === side(); // as the link says
  const div = $("comp-attn");
  const pat = att[side()]?.[p];
  if (!pat) {
    // attention is kept for the first pairs only (settings.attention_pairs)
    Plotly.purge(div);
    div.replaceChildren(el("p", { class: "muted small", text: `No attention pattern stored for pair ${p} (the first ${att.clean.length} pairs have one).` }));
    div.dataset.side = side();
    div.dataset.rows = "0";
    return;
  }
  if (!div.querySelector(".main-svg")) div.replaceChildren();
  const n = pat.length;
  const ticks = positionTicks(d, p, side());
  const idx = Array.from({ length: n }, (_, k) => k);
  Plotly.react(
    div,
    [{ type: "heatmap", x: idx, y: idx, z: pat, zmin: 0, zmax: 1, colorscale: [[0, "#ffffff"], [1, "#08306b"]], xgap: 1, ygap: 1, colorbar: { thickness: 10, title: { text: "attention", side: "right" } }, hovertemplate: "query %{y} → key %{x}: %{z:.3f}<extra></extra>" }],
    {
      title: { text: `Attention of ${name(d.key)}, pair ${p}, ${side()} prompt`, font: { size: 12 }, x: 0, xanchor: "left" },
      height: Math.max(260, 140 + 22 * n),
      width: Math.max(320, 170 + 24 * n),
      margin: { l: 110, r: 10, t: 30, b: 100 },
      xaxis: { title: { text: "key (attended to)" }, tickvals: idx, ticktext: ticks.slice(0, n), tickangle: -45, fixedrange: true, side: "bottom" },
      yaxis: { title: { text: "query" }, tickvals: idx, ticktext: ticks.slice(0, n), autorange: "reversed", fixedrange: true },
      dragmode: false,
    },
    CONFIG,
  );
  div.dataset.side = side();
  div.dataset.rows = String(n);
}

function redraw() {
  const d = cache.get(String(st.c));
  if (d) draw(d);
}

function init() {
  if (!$("component-card")) return;
  $("comp-pair").addEventListener("change", () => update({ pair: Number($("comp-pair").value) }));
  for (const r of document.querySelectorAll('input[name="comp-attn-side"]')) {
    r.addEventListener("change", () => {
      if (!r.checked) return;
      update({ attn: r.value === "corrupted" ? "corrupted" : null });
      redraw();
    });
  }
  $("comp-close").addEventListener("click", () => update({ c: null, pair: null }));
  on("change", (keys) => {
    if (keys.includes("c")) {
      clearTimeout(debounce);
      debounce = setTimeout(load, st.result && cache.has(String(st.c)) ? 0 : 150);
    } else if (keys.includes("pair")) redraw();
  });
  // After each redraw of the page: a new tau re-marks unreliable pairs; a verification that
  // came in adds every pair's ap value to the stored detail: read it again.
  on("rendered", () => {
    const key = st.c == null ? null : String(st.c);
    const d = key && cache.get(key);
    if (!d) return;
    if (d.verified == null && st.result?.verified?.[key] != null) {
      cache.delete(key);
      load();
    } else if (drawnTau !== st.tau) {
      // a tau drag redraws the page many times a second: re-mark the pairs once it rests
      clearTimeout(tauTimer);
      tauTimer = setTimeout(() => {
        drawnTau = st.tau;
        const cur = cache.get(String(st.c));
        if (cur) drawPairs(cur, pairIndex(cur));
      }, 120);
    }
  });
}

init();
