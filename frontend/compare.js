// The compare page, /compare?a=ID&b=ID (issues 11, 20): two analyses of the same model and site
// side by side on ONE colour scale (the larger |value| of the two), their difference A - B, and
// the cells where their flags disagree at one tau (noising vs denoising, abc vs swap, two seeds).
// Signs are aligned by default: every effect is multiplied by cleanSign(metric, direction) so
// that positive = the component helps the clean behaviour in both maps (noising and denoising
// have opposite conventions); "raw signs" shows each analysis in its own convention. The
// Spearman rank correlation of A and B (over the components both show) and a verified view
// (activation patching where each analysis verified a cell) come with it.
// URL: /compare?a=&b=&view=&tau=&raw=1
/* global Plotly */
import { api, el } from "./api.js";
import { METHOD_LABELS, computeFlags, correctedMethod, fmt, mapMatrix, maxAbs, shapeOf, verifiedAt } from "./flags.js";
import { DIVERGING } from "./heatmap.js";
import { listLocal, idFrom, remember } from "./history.js";
import { cleanSign, metricLabel } from "./meaning.js";
import { ACTIVE, METHOD_ORDER } from "./state.js";

const $ = (id) => document.getElementById(id);
const cmp = { a: null, b: null, A: null, B: null, view: null, tau: null, raw: false };
const CONFIG = { displaylogo: false, displayModeBar: false, responsive: false, scrollZoom: false, doubleClick: false };
const FLAG_COLORS = [
  [0, "#f4f5f7"], [0.25, "#f4f5f7"],
  [0.25, "#9aa3b2"], [0.5, "#9aa3b2"],
  [0.5, "#d6604d"], [0.75, "#d6604d"],
  [0.75, "#2166ac"], [1, "#2166ac"],
];

function message(text) {
  $("message").textContent = text;
}

function readUrl() {
  const q = new URLSearchParams(window.location.search);
  cmp.a = idFrom(q.get("a"));
  cmp.b = idFrom(q.get("b"));
  cmp.view = q.get("view");
  const t = Number(q.get("tau"));
  cmp.tau = q.get("tau") != null && Number.isFinite(t) ? Math.max(0, Math.min(1, t)) : null;
  cmp.raw = q.get("raw") === "1";
}

function writeUrl() {
  const q = new URLSearchParams({ a: cmp.a, b: cmp.b });
  if (cmp.view) q.set("view", cmp.view);
  if (cmp.tau != null) q.set("tau", cmp.tau.toFixed(2));
  if (cmp.raw) q.set("raw", "1");
  window.history.replaceState(null, "", `/compare?${q.toString()}`);
}

function describe(d) {
  const r = d.request || {};
  const task = r.task || (r.pairs ? `${r.pairs.length} custom pairs` : "custom");
  return `${r.model} · ${task}${r.n_pairs ? ` (${r.n_pairs} pairs, seed ${r.seed ?? 0})` : ""} · site ${r.site} · ${r.metric} ${r.direction}`;
}

async function load() {
  let A;
  let B;
  try {
    [A, B] = await Promise.all([api(`/api/analyses/${cmp.a}`), api(`/api/analyses/${cmp.b}`)]);
  } catch (err) {
    message(err.message);
    return;
  }
  remember(A);
  remember(B);
  const waiting = [A, B].filter((d) => !d.result && ACTIVE.has(d.status));
  const broken = [A, B].filter((d) => !d.result && !ACTIVE.has(d.status));
  if (broken.length) {
    message(`Analysis ${broken[0].id} has no result (${broken[0].status}): nothing to compare.`);
    return;
  }
  if (waiting.length) {
    message("");
    $("cmp-flags").textContent = `Waiting for ${waiting.map((d) => d.id.slice(0, 8)).join(" and ")} to finish…`;
    setTimeout(load, 1000);
    return;
  }
  const edges = [A, B].find((d) => d.result?.edges);
  if (edges) {
    message(`Analysis ${edges.id} is an edge analysis: its edges are in its graph view (/a/${edges.id}?view=graph), not on a map to compare.`);
    return;
  }
  cmp.A = A;
  cmp.B = B;
  const [ra, rb] = [A.request || {}, B.request || {}];
  const sa = shapeOf(A.result);
  const sb = shapeOf(B.result);
  if (ra.model !== rb.model || ra.site !== rb.site || sa[0] !== sb[0] || sa[1] !== sb[1]) {
    message(`These analyses cannot share a map: A is ${ra.model} ${ra.site} (${sa.join(" x ")}), B is ${rb.model} ${rb.site} (${sb.join(" x ")}). Compare analyses of the same model and site.`);
    return;
  }
  message("");
  setup();
  render();
}

function views() {
  const sa = cmp.A.result.scores || {};
  const sb = cmp.B.result.scores || {};
  const common = [...METHOD_ORDER, ...Object.keys(sa)].filter((m, k, all) => sa[m] && sb[m] && all.indexOf(m) === k);
  const out = common.map((m) => [m, METHOD_LABELS[m] || m]);
  if (hasVerified(cmp.A.result) || hasVerified(cmp.B.result)) out.push(["verified", "Verified (activation patching)"]);
  if (cmp.A.result.reliability && cmp.B.result.reliability) out.push(["reliability", "Reliability"]);
  return out;
}

function setup() {
  const vs = views();
  const sel = $("cmp-view");
  sel.replaceChildren(...vs.map(([v, l]) => el("option", { value: v, text: l })));
  const corr = correctedMethod(cmp.A.result.scores, cmp.A.result.reliability_source);
  const fallback = vs.some(([v]) => v === corr) ? corr : vs[0]?.[0];
  cmp.view = vs.some(([v]) => v === cmp.view) ? cmp.view : fallback;
  sel.value = cmp.view;
  if (cmp.tau == null) cmp.tau = typeof cmp.A.result.tau === "number" ? cmp.A.result.tau : 0.5;
  $("cmp-tau").value = String(cmp.tau);
  $("cmp-tau-value").textContent = cmp.tau.toFixed(2);
  const meta = $("compare-meta");
  const link = (d) => el("a", { href: `/a/${d.id}`, class: "mono", text: d.id.slice(0, 12) });
  meta.replaceChildren(
    el("dt", { text: "A" }), el("dd", {}, link(cmp.A), ` ${describe(cmp.A)}`),
    el("dt", { text: "B" }), el("dd", {}, link(cmp.B), ` ${describe(cmp.B)}`),
  );
  $("compare-card").classList.remove("hidden");
  document.title = `patchaudit: compare ${cmp.a.slice(0, 6)} and ${cmp.b.slice(0, 6)}`;
}

function hasVerified(r) {
  return !!r.scores?.ap || Object.keys(r.verified || {}).length > 0;
}

/** ap where the analysis has it: the full sweep, else the cells it verified; null elsewhere. */
function verifiedMatrix(r) {
  const [R, C] = shapeOf(r);
  return mapMatrix(R, C, (i, j) => r.scores?.ap?.[i]?.[j] ?? verifiedAt(r.verified, i, j));
}

/** The sign applied to analysis d's effects: +1 raw, else cleanSign of its metric and direction. */
function signOf(d) {
  return cmp.raw || cmp.view === "reliability" ? 1 : cleanSign(d.request?.metric || "logit_diff", d.request?.direction || "noising");
}

function matrix(d) {
  const r = d.result;
  if (cmp.view === "reliability") return r.reliability;
  const m = cmp.view === "verified" ? verifiedMatrix(r) : r.scores[cmp.view];
  const s = signOf(d);
  return m.map((row) => row.map((v) => (typeof v === "number" ? s * v : null)));
}

/** Average ranks (ties share their mean rank), 1-based. */
function ranks(xs) {
  const order = xs.map((v, k) => [v, k]).sort((p, q) => p[0] - q[0]);
  const out = new Array(xs.length);
  for (let a = 0; a < order.length;) {
    let b = a;
    while (b + 1 < order.length && order[b + 1][0] === order[a][0]) b++;
    for (let k = a; k <= b; k++) out[order[k][1]] = (a + b) / 2 + 1;
    a = b + 1;
  }
  return out;
}

/** Spearman's rank correlation of the pairs (x, y); null under 3 pairs or a constant side. */
export function spearman(xs, ys) {
  const n = xs.length;
  if (n < 3) return null;
  const rx = ranks(xs);
  const ry = ranks(ys);
  const mean = (n + 1) / 2;
  let sxy = 0;
  let sxx = 0;
  let syy = 0;
  for (let k = 0; k < n; k++) {
    sxy += (rx[k] - mean) * (ry[k] - mean);
    sxx += (rx[k] - mean) ** 2;
    syy += (ry[k] - mean) ** 2;
  }
  return sxx > 0 && syy > 0 ? sxy / Math.sqrt(sxx * syy) : null;
}

function conventionText() {
  const one = (name, d) => {
    const r = d.request || {};
    const s = cleanSign(r.metric || "logit_diff", r.direction || "noising");
    return `${name} (${r.direction || "noising"}, ${metricLabel(r.metric)}) ${s < 0 ? "is shown with its sign flipped" : "is shown as computed"}`;
  };
  const sa = cleanSign(cmp.A.request?.metric || "logit_diff", cmp.A.request?.direction || "noising");
  const sb = cleanSign(cmp.B.request?.metric || "logit_diff", cmp.B.request?.direction || "noising");
  if (cmp.view === "reliability") return "Reliability has no sign: both maps show it from 0 to 1.";
  if (cmp.raw) {
    return sa === sb
      ? "Raw signs: each value as its analysis computed it (m(patched run) − m(base run)); A and B share one sign convention."
      : "Raw signs: each value as its analysis computed it (m(patched run) − m(base run)). A and B have OPPOSITE sign conventions (noising vs denoising, or KL vs a logit metric): the same role has opposite signs, and A − B adds the two effects instead of subtracting them. Untick “raw signs” to align them.";
  }
  return `Signs aligned: positive (red) = the component helps the clean behaviour (corrupting it moves the metric away from the clean run, restoring it moves the metric back); negative (blue) = it works against it. ${one("A", cmp.A)}; ${one("B", cmp.B)}.`;
}

function layout(title, R, C, labels) {
  const cell = Math.max(14, Math.min(40, 420 / Math.max(R, C)));
  return {
    title: { text: title, font: { size: 12 }, x: 0, xanchor: "left" },
    width: Math.round(C * cell + 170),
    height: Math.round(R * cell + 100),
    margin: { l: 55, r: 100, t: 34, b: 50 },
    xaxis: { title: { text: labels.col_name || "head" }, range: [-0.5, C - 0.5], fixedrange: true, showgrid: false, zeroline: false },
    yaxis: { title: { text: labels.row_name || "layer" }, range: [R - 0.5, -0.5], fixedrange: true, showgrid: false, zeroline: false },
    plot_bgcolor: "#c9cdd4",
    dragmode: false,
  };
}

function heat(div, z, title, scale, extra = {}, more = []) {
  const r = cmp.A.result;
  const [R, C] = shapeOf(r);
  const labels = r.labels || {};
  const bar = { thickness: 10, len: 0.9, title: { text: cmp.view === "reliability" ? "reliability" : metricLabel(cmp.A.request?.metric), side: "right", font: { size: 10 } } };
  const trace = { type: "heatmap", z, x: [...Array(C).keys()], y: [...Array(R).keys()], xgap: 1, ygap: 1, showscale: true, hovertemplate: "L%{y} H%{x}: %{z:.4g}<extra></extra>", ...scale, ...extra };
  trace.colorbar = { ...bar, ...(scale.colorbar || {}), ...(extra.colorbar || {}) };
  const lay = layout(title, R, C, labels);
  // never wider than its grid cell: the page fits 1280 px
  const room = $(div).clientWidth;
  if (room > 200 && lay.width > room) lay.width = room;
  Plotly.react($(div), [trace, ...more], lay, CONFIG);
}

function countVerified(r) {
  return r.scores?.ap ? "all" : Object.keys(r.verified || {}).length;
}

function render() {
  if (typeof Plotly === "undefined") {
    message("The plotting library did not load (/static/plotly.min.js).");
    return;
  }
  const [R, C] = shapeOf(cmp.A.result);
  const za = matrix(cmp.A);
  const zb = matrix(cmp.B);
  const rel = cmp.view === "reliability";
  const top = rel ? 1 : Math.max(maxAbs(za), maxAbs(zb)) || 1;
  const scale = rel ? { colorscale: "Viridis", zmin: 0, zmax: 1 } : { colorscale: DIVERGING, zmid: 0, zmin: -top, zmax: top };
  const label = $("cmp-view").selectedOptions[0]?.textContent || cmp.view;
  const dirA = `${cmp.A.request?.direction ?? ""}`;
  const dirB = `${cmp.B.request?.direction ?? ""}`;
  const signed = rel ? "" : cmp.raw ? ", raw" : ", aligned";
  const verBoth = [];
  const onlyVerA = [];
  const onlyVerB = [];
  if (cmp.view === "verified") {
    for (let i = 0; i < R; i++) for (let j = 0; j < C; j++) {
      const a = typeof za[i]?.[j] === "number";
      const b = typeof zb[i]?.[j] === "number";
      if (a && b) verBoth.push([i, j]);
      else if (a) onlyVerA.push([i, j]);
      else if (b) onlyVerB.push([i, j]);
    }
  }
  const marks = cmp.view === "verified" ? [{ type: "scatter", mode: "markers", x: verBoth.map((c) => c[1]), y: verBoth.map((c) => c[0]), marker: { symbol: "circle-open", size: 9, color: "#111", line: { width: 1.5 } }, name: "verified in both", hoverinfo: "skip", showlegend: false }] : [];
  heat("map-a", za, `A: ${label} (${dirA}${signed})`, scale, {}, marks);
  heat("map-b", zb, `B: ${label} (${dirB}${signed})`, scale, {}, marks);
  const diff = mapMatrix(R, C, (i, j) => (typeof za[i]?.[j] === "number" && typeof zb[i]?.[j] === "number" ? za[i][j] - zb[i][j] : null));
  const dtop = maxAbs(diff) || 1;
  heat("map-diff", diff, `A − B (${label}${signed})`, { colorscale: DIVERGING, zmid: 0, zmin: -dtop, zmax: dtop, colorbar: { title: { text: "A − B", side: "right" } } }, {}, marks);
  const xs = [];
  const ys = [];
  for (let i = 0; i < R; i++) for (let j = 0; j < C; j++) {
    if (typeof za[i]?.[j] === "number" && typeof zb[i]?.[j] === "number") {
      xs.push(za[i][j]);
      ys.push(zb[i][j]);
    }
  }
  const rho = spearman(xs, ys);
  const unit = "components";
  $("cmp-rank").textContent = rho == null
    ? `Spearman rank correlation of A and B: not defined (${xs.length} ${unit} with a value in both${xs.length < 3 ? ", fewer than 3" : ", one side constant"}).`
    : `Spearman rank correlation of A and B: ρ = ${rho.toFixed(3)} over the ${xs.length} ${unit} with a value in both (on the values shown${signed ? (cmp.raw ? ", raw signs" : ", signs aligned") : ""}).`;
  $("cmp-convention").textContent = conventionText();
  const name = ([i, j]) => (R === 1 || C === 1 ? `L${i}` : `L${i}H${j}`);
  const few = (xs) => (xs.length ? xs.slice(0, 12).map(name).join(", ") + (xs.length > 12 ? ` and ${xs.length - 12} more` : "") : "none");
  $("cmp-verified").textContent = cmp.view === "verified"
    ? `Verified in both (ringed; the difference and ρ use only these): ${verBoth.length} — ${few(verBoth)}. Verified in A only: ${onlyVerA.length}. Verified in B only: ${onlyVerB.length}. Click cells on each analysis's page to verify more.`
    : (hasVerified(cmp.A.result) || hasVerified(cmp.B.result))
      ? `Verified cells: ${countVerified(cmp.A.result)} in A, ${countVerified(cmp.B.result)} in B — choose “Verified (activation patching)” to compare them.`
      : "Neither analysis has verified cells yet (click cells on its page to verify them).";
  $("cmp-scale").textContent = rel
    ? "Reliability from 0 to 1 on both maps."
    : `A and B share one colour scale, ±${fmt(top)} (the larger |value| of the two); blue negative, red positive. The difference has its own scale, ±${fmt(dtop)}; every map has its colour bar.`;

  // flags at one tau: 0 neither, 1 both, 2 only A, 3 only B
  const fa = computeFlags(cmp.A.result, cmp.tau);
  const fb = computeFlags(cmp.B.result, cmp.tau);
  const onlyA = [];
  const onlyB = [];
  let both = 0;
  const code = mapMatrix(R, C, (i, j) => {
    const a = fa.flags[i][j];
    const b = fb.flags[i][j];
    if (a && b) both++;
    if (a && !b) onlyA.push(`L${i}H${j}`);
    if (b && !a) onlyB.push(`L${i}H${j}`);
    return a && b ? 1 : a ? 2 : b ? 3 : 0;
  });
  const names = ["flagged in neither", "flagged in both", "flagged in A only", "flagged in B only"];
  heat("map-flags", code, `Flags at τ = ${cmp.tau.toFixed(2)}: where A and B disagree`, { colorscale: FLAG_COLORS, zmin: -0.5, zmax: 3.5, colorbar: { thickness: 10, title: { text: "" }, tickvals: [0, 1, 2, 3], ticktext: ["neither", "both", "A only", "B only"] } }, {
    text: code.map((row) => row.map((v) => names[v])),
    hovertemplate: "L%{y} H%{x}: %{text}<extra></extra>",
  });
  const list = (xs) => (xs.length ? xs.slice(0, 12).join(", ") + (xs.length > 12 ? ` and ${xs.length - 12} more` : "") : "none");
  $("cmp-flags").textContent = `At τ = ${cmp.tau.toFixed(2)}: ${fa.count} flagged in A, ${fb.count} in B, ${both} in both. Flagged in A only: ${list(onlyA)}. Flagged in B only: ${list(onlyB)}.`;
  const card = $("compare-card");
  card.dataset.view = cmp.view;
  card.dataset.zmax = String(top);
  card.dataset.spearman = rho == null ? "" : String(rho);
  card.dataset.aligned = String(!cmp.raw && !rel);
  card.dataset.verifiedBoth = String(verBoth.length);
  card.dataset.disagree = String(onlyA.length + onlyB.length);
  card.dataset.rendered = String(Number(card.dataset.rendered || 0) + 1);
  writeUrl();
}

function init() {
  readUrl();
  const opts = listLocal().map((r) => el("option", { value: r.id, label: `${r.model ?? ""} · ${r.task ?? ""} · ${r.site ?? ""} · ${[r.metric, r.direction].filter(Boolean).join(" ")}` }));
  $("pick-list").replaceChildren(...opts);
  if (cmp.a) $("pick-a").value = cmp.a;
  if (cmp.b) $("pick-b").value = cmp.b;
  $("pick").addEventListener("submit", (e) => {
    e.preventDefault();
    const a = idFrom($("pick-a").value);
    const b = idFrom($("pick-b").value);
    if (!a || !b) {
      message("Enter two analysis ids or links (32 hex characters each).");
      return;
    }
    window.location.href = `/compare?a=${a}&b=${b}`;
  });
  $("cmp-view").addEventListener("change", () => {
    cmp.view = $("cmp-view").value;
    render();
  });
  $("cmp-raw").checked = cmp.raw;
  $("cmp-raw").addEventListener("change", () => {
    cmp.raw = $("cmp-raw").checked;
    render();
  });
  $("cmp-tau").addEventListener("input", () => {
    cmp.tau = Number($("cmp-tau").value);
    $("cmp-tau-value").textContent = cmp.tau.toFixed(2);
    render();
  });
  if (!cmp.a || !cmp.b) {
    message(cmp.a || cmp.b ? "A comparison needs two analyses: /compare?a=ID&b=ID." : "");
    return;
  }
  load();
}

init();
