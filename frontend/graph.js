// The graph view of an edge analysis (issue 22; URL /a/<id>?view=graph&k=50&rank=hvp&e=0.1->1.0.k):
// layers bottom to top (the embedding below layer 0, the logits above the last), each layer's
// heads then its MLP left to right. Only the top k edges by |score| of the chosen ranking are
// drawn (GPT-2 small has ~32,000 edges): one SVG path per edge, width by |score|, colour by
// sign, flagged edges dashed, a verified edge labelled with its edge-patching value. The order
// of every ranking is computed once (a sort of the |scores|); moving k redraws k paths.
// A click on an edge selects and verifies it (POST /verify with its key); a click on a head or
// an MLP opens its component panel (st.c, component.js). k, the ranking and the selected edge
// live in the link (state.js).
import { api, ApiError, el } from "./api.js";
import { pulseReadOnly, setReadOnly } from "./banner.js";
import { METHOD_LABELS, correctedMethod, fmt } from "./flags.js";
import { edgeName, nodeName, parseEdge, parseNode } from "./keys.js";
import { noticeText, showNotice } from "./notices.js";
import { $, METHOD_ORDER, addLocalPending, pendingKeys, pollSoon, st, update } from "./state.js";

const SVG = "http://www.w3.org/2000/svg";
const POS = "#b2182b"; // the map's diverging scale: positive red,
const NEG = "#2166ac"; // negative blue
export const MAX_K = 500; // the slider's end: more edges than this are not readable anyway
const DEFAULT_K = 50;

let layout = null; // {edges, parsed, nodes: Map key -> {x, y, kind}, width, height, sig}
const orders = new Map(); // ranking -> Int32Array of edge indices, |score| descending

/** The rankings an edge analysis offers: its methods, in the page's usual order. */
export function rankings(r = st.result) {
  const s = r?.scores || {};
  return [...METHOD_ORDER.filter((m) => s[m]), ...Object.keys(s).filter((m) => !METHOD_ORDER.includes(m))];
}

export function defaultRanking(r = st.result) {
  const s = r?.scores || {};
  return correctedMethod(s, r?.reliability_source, r?.estimate_method) || (s.atp ? "atp" : rankings(r)[0]);
}

const abs = (v) => (typeof v === "number" && Number.isFinite(v) ? Math.abs(v) : -1);

/** Edge indices by |score| of `ranking`, largest first (no value last); sorted once. */
export function orderOf(ranking) {
  const scores = st.result.scores[ranking] || [];
  const key = `${ranking}:${scores.length}:${st.id}`;
  const memo = orders.get(ranking);
  if (memo && memo.key === key) return memo.order;
  const mag = Float64Array.from(scores, abs);
  const order = Int32Array.from(scores.keys());
  order.sort((a, b) => mag[b] - mag[a] || a - b);
  orders.set(ranking, { key, order });
  return order;
}

/** The top k edge keys of a ranking (the ones drawn). */
export function topEdges(k = st.k, ranking = st.rank) {
  const order = orderOf(ranking);
  const edges = st.result.edges;
  return Array.from(order.subarray(0, Math.min(k, order.length)), (n) => edges[n]);
}

// ---------------------------------------------------------------- layout
function buildLayout() {
  const edges = st.result.edges;
  const sig = `${st.id}:${edges.length}`;
  if (layout && layout.sig === sig) return layout;
  const parsed = edges.map(parseEdge);
  const keys = new Set(["logits"]);
  for (const e of parsed) if (e) keys.add(e.sender).add(e.node);
  let L = 0;
  let H = 0;
  let mlp = false;
  for (const k of keys) {
    const n = parseNode(k);
    if (!n || !Number.isFinite(n.layer) || n.layer < 0) continue;
    L = Math.max(L, n.layer + 1);
    if (n.kind === "head") H = Math.max(H, n.head + 1);
    else mlp = true;
  }
  const cols = H + (mlp ? 1 : 0);
  const width = Math.max(480, Math.min(1200, ($("graph-wrap")?.clientWidth || 1000) - 8));
  const rowH = Math.max(34, Math.min(64, 640 / (L + 2)));
  const pad = { l: 64, r: 20, t: 22, b: 40 }; // b: the column labels under the embedding
  const colW = (width - pad.l - pad.r) / Math.max(1, cols);
  const height = pad.t + pad.b + rowH * (L + 1);
  const y = (layer) => pad.t + rowH * (L - layer); // logits (layer L) on top, emb (-1) at the bottom
  const nodes = new Map();
  for (const k of keys) {
    const n = parseNode(k);
    if (!n) continue;
    let x;
    let yy;
    if (n.kind === "emb") [x, yy] = [pad.l + (width - pad.l - pad.r) / 2, y(-1)];
    else if (n.kind === "logits") [x, yy] = [pad.l + (width - pad.l - pad.r) / 2, y(L)];
    else if (n.kind === "mlp") [x, yy] = [pad.l + colW * (H + 0.5), y(n.layer)];
    else [x, yy] = [pad.l + colW * (n.head + 0.5), y(n.layer)];
    nodes.set(k, { key: k, x, y: yy, kind: n.kind, layer: n.layer });
  }
  const r = Math.max(5, Math.min(11, colW / 5, rowH / 4));
  layout = { sig, edges, parsed, nodes, width, height, L, H, r, rowH, y, pad };
  return layout;
}

/** The path of an edge: from the sender's top to the receiver's input (q, k, v side by side). */
function edgeGeometry(lay, e) {
  const a = lay.nodes.get(e.sender);
  const b = lay.nodes.get(e.node);
  const r = lay.r;
  const off = e.port === "q" ? -r : e.port === "v" ? r : 0;
  const x1 = a.x;
  const y1 = a.y - r;
  const x2 = b.x + off;
  const y2 = b.y + r;
  // a bend proportional to the length keeps edges along one column apart
  const dx = x2 - x1;
  const dy = y2 - y1;
  const len = Math.hypot(dx, dy) || 1;
  const bend = Math.min(60, 0.18 * len) * (e.sender === "emb" || e.receiver === "logits" ? 0.3 : 1);
  const cx = (x1 + x2) / 2 + (-dy / len) * bend;
  const cy = (y1 + y2) / 2 + (dx / len) * bend;
  // the midpoint of the quadratic curve (t = 0.5): where labels go and clicks land
  const mx = 0.25 * x1 + 0.5 * cx + 0.25 * x2;
  const my = 0.25 * y1 + 0.5 * cy + 0.25 * y2;
  return { d: `M${x1.toFixed(1)},${y1.toFixed(1)} Q${cx.toFixed(1)},${cy.toFixed(1)} ${x2.toFixed(1)},${y2.toFixed(1)}`, mx, my };
}

function svg(tag, attrs = {}, text = null) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v != null) n.setAttribute(k, String(v));
  if (text != null) n.textContent = text;
  return n;
}

// ---------------------------------------------------------------- drawing
const geometry = new Map(); // edge key -> {mx, my} of the drawn edges (tests click there)

/** Draw the graph: every node, the top k edges of the ranking, labels and the selection. */
export function renderGraph() {
  const r = st.result;
  if (!r?.edges) return;
  const t0 = performance.now();
  const lay = buildLayout();
  const ranking = st.rank;
  const scores = r.scores[ranking] || [];
  const order = orderOf(ranking);
  const n = Math.min(st.k ?? DEFAULT_K, order.length);
  const top = order.subarray(0, n);
  const maxMag = n ? abs(scores[top[0]]) || 1 : 1;
  const pend = pendingKeys();
  const verified = r.verified || {};
  const host = $("graph");
  const root = svg("svg", { width: lay.width, height: lay.height, viewBox: `0 0 ${lay.width} ${lay.height}`, role: "img", "aria-label": `edge graph: the top ${n} edges by |${METHOD_LABELS[ranking] || ranking}|` });
  // layer guides and labels
  const guides = svg("g", { class: "graph-guides" });
  for (let l = -1; l <= lay.L; l++) {
    const yy = lay.y(l);
    guides.append(svg("line", { x1: lay.pad.l - 6, x2: lay.width - lay.pad.r, y1: yy, y2: yy }));
    guides.append(svg("text", { x: 6, y: yy + 4, class: "graph-layer" }, l < 0 ? "emb" : l === lay.L ? "logits" : `L${l}`));
  }
  root.append(guides);
  // edges: smallest first, so the strongest lie on top
  const edgeLayer = svg("g", { class: "graph-edges" });
  const labelLayer = svg("g", { class: "graph-labels" });
  geometry.clear();
  for (let t = n - 1; t >= 0; t--) {
    const idx = top[t];
    const e = lay.parsed[idx];
    if (!e) continue;
    const key = lay.edges[idx];
    const v = scores[idx];
    const g = edgeGeometry(lay, e);
    geometry.set(key, { mx: g.mx, my: g.my });
    const w = 1 + 7 * (abs(v) / maxMag);
    const flagged = !!r.flags?.[idx];
    const ver = verified[key];
    const cls = ["edge", flagged ? "flagged" : "", key === st.e ? "selected" : "", ver != null ? "verified" : "", pend.has(key) ? "pending" : ""].filter(Boolean).join(" ");
    const group = svg("g", { class: cls, "data-key": key, "data-rank": t, tabindex: 0, role: "button", "aria-label": `${edgeName(key)}: ${fmt(v)}${flagged ? ", flagged" : ""}${ver != null ? `, verified ${fmt(ver)}` : ""}` });
    if (key === st.e) group.append(svg("path", { d: g.d, class: "edge-halo", "stroke-width": w + 6 }));
    group.append(svg("path", { d: g.d, class: "edge-line", stroke: (v ?? 0) < 0 ? NEG : POS, "stroke-width": w.toFixed(2), "stroke-dasharray": flagged ? `${(2 * w + 4).toFixed(1)} ${(1.5 * w + 3).toFixed(1)}` : null }));
    group.append(svg("path", { d: g.d, class: "edge-hit", "stroke-width": Math.max(10, w + 6) }));
    group.append(svg("title", {}, `${edgeName(key)}\n${key}\n${METHOD_LABELS[ranking] || ranking}: ${fmt(v)}${flagged ? "\nflagged: " + reasonsOf(idx).join(", ") : ""}${ver != null ? `\nverified (edge patching): ${fmt(ver)}` : ""}`));
    edgeLayer.append(group);
    if (ver != null || pend.has(key)) {
      const text = ver != null ? fmt(ver) : "verifying…";
      labelLayer.append(svg("text", { x: g.mx, y: g.my - 4, class: `edge-value${ver != null ? "" : " pending"}`, "data-key": key, "data-value": ver != null ? String(ver) : null, "text-anchor": "middle" }, text));
    }
  }
  root.append(edgeLayer);
  // nodes
  const nodeLayer = svg("g", { class: "graph-nodes" });
  for (const node of lay.nodes.values()) {
    const clickable = node.kind === "head" || node.kind === "mlp";
    const g = svg("g", { class: `node ${node.kind}${st.c === node.key ? " selected" : ""}`, "data-node": node.key, tabindex: clickable ? 0 : null, role: clickable ? "button" : null, "aria-label": clickable ? `${nodeName(node.key)}: open its panel` : nodeName(node.key) });
    const rr = node.kind === "emb" || node.kind === "logits" ? lay.r * 1.2 : lay.r;
    if (node.kind === "mlp") g.append(svg("rect", { x: node.x - rr, y: node.y - rr, width: 2 * rr, height: 2 * rr, rx: 2 }));
    else g.append(svg("circle", { cx: node.x, cy: node.y, r: rr }));
    g.append(svg("title", {}, nodeName(node.key) + (clickable ? " (click: its panel)" : "")));
    if (node.kind === "emb" || node.kind === "logits") g.append(svg("text", { x: node.x + rr + 4, y: node.y + 4, class: "graph-node-label" }, node.kind === "emb" ? "embedding" : "logits (metric)"));
    nodeLayer.append(g);
  }
  root.append(nodeLayer);
  // column labels under the layers
  const colLabels = svg("g", { class: "graph-cols" });
  for (let h = 0; h < lay.H; h++) {
    const node = lay.nodes.get(`0.${h}`);
    if (node) colLabels.append(svg("text", { x: node.x, y: lay.height - 4, "text-anchor": "middle" }, `H${h}`));
  }
  const m0 = lay.nodes.get("m0");
  if (m0) colLabels.append(svg("text", { x: m0.x, y: lay.height - 4, "text-anchor": "middle" }, "MLP"));
  root.append(colLabels);
  root.append(labelLayer);
  host.replaceChildren(root);
  // the controls and the numbers
  const thr = n ? abs(scores[top[n - 1]]) : null;
  $("graph-k-value").textContent = `${n} of ${lay.edges.length} edges` + (thr != null && thr >= 0 ? ` (|score| ≥ ${fmt(thr)})` : "");
  $("graph-k").value = String(n);
  $("graph-rank").value = ranking;
  host.dataset.k = String(n);
  host.dataset.rank = ranking;
  host.dataset.edges = String(lay.edges.length);
  host.dataset.selected = st.e || "";
  host.dataset.verified = String(Object.keys(verified).length);
  host.dataset.ms = String(Math.round(performance.now() - t0));
  if (!pend.size && /^Verifying /.test(noticeText())) showNotice(""); // the value is on the edge now
  renderInfo();
}

function reasonsOf(idx) {
  return st.result.flag_reasons?.[idx] || [];
}

/** The selected edge's numbers: every method, reliability, bound, flags, verified value. */
function renderInfo() {
  const box = $("graph-info");
  const key = st.e;
  const idx = key ? st.result.edges.indexOf(key) : -1;
  if (idx < 0) {
    box.replaceChildren(el("p", { class: "small muted", text: "Click an edge to verify it with edge patching; click a head or an MLP to open its panel." }));
    return;
  }
  const r = st.result;
  const ver = r.verified?.[key];
  const bits = rankings().map((m) => `${METHOD_LABELS[m] || m} ${fmt(r.scores[m][idx])}`);
  if (r.reliability) bits.push(`reliability ${fmt(r.reliability[idx])}`);
  if (r.error_bound) bits.push(`error bound ${r.error_bound[idx] == null ? "unbounded" : fmt(r.error_bound[idx])}`);
  const flagged = !!r.flags?.[idx];
  const state = ver != null ? `verified (edge patching): ${fmt(ver)}` : pendingKeys().has(key) ? "verifying…" : "not verified";
  const button = el("button", { type: "button", class: "small", id: "graph-verify", text: ver != null ? "Verified" : "Verify" });
  button.disabled = ver != null || pendingKeys().has(key) || st.readOnly;
  button.addEventListener("click", () => verifyEdge(key));
  box.replaceChildren(
    el("p", {}, el("strong", { text: edgeName(key) }), " ", el("span", { class: "mono small", text: key })),
    el("p", { class: "small", text: `${bits.join(" · ")}${flagged ? ` · flagged (${reasonsOf(idx).join(", ") || "flag"})` : ""}` }),
    el("p", { class: "small", id: "graph-edge-state" }, el("span", { text: state }), " ", button),
  );
  box.dataset.key = key;
  box.dataset.verified = ver != null ? String(ver) : "";
}

// ---------------------------------------------------------------- actions
/** Select an edge and verify it (edge patching), unless it is verified or on its way. */
export async function verifyEdge(key) {
  if (st.e !== key) update({ e: key });
  renderGraph();
  if (st.result.verified?.[key] != null || pendingKeys().has(key)) return;
  if (st.readOnly) {
    pulseReadOnly();
    return;
  }
  showNotice(`Verifying ${edgeName(key)}…`);
  try {
    await api(`/api/analyses/${encodeURIComponent(st.id)}/verify`, { method: "POST", body: { components: [key] }, write: true });
  } catch (err) {
    if (err instanceof ApiError && err.isAuth) setReadOnly(true);
    showNotice(`Could not verify: ${err.message}`, { error: true });
    return;
  }
  addLocalPending([key]);
  renderGraph();
  pollSoon(250);
}

function openNode(key) {
  const n = parseNode(key);
  if (!n || (n.kind !== "head" && n.kind !== "mlp")) {
    showNotice(`${nodeName(key)} has no component panel: click a head or an MLP.`);
    return;
  }
  update({ c: key, pair: null });
  renderGraph();
  $("component-card")?.scrollIntoView({ block: "nearest" });
}

/** For tests and the console (window.__patchaudit.graph): the top k keys, the drawn ones,
 * and the page coordinates of an edge's midpoint (where a click lands on it). */
export const graphHandle = {
  topEdges: () => topEdges(),
  drawn: () => [...document.querySelectorAll("#graph g.edge")].map((g) => g.dataset.key),
  point: (key) => {
    const p = geometry.get(key);
    const box = document.querySelector("#graph svg")?.getBoundingClientRect();
    return p && box ? { x: box.left + p.mx, y: box.top + p.my } : null;
  },
};

let frame = 0;
function onK() {
  update({ k: Number($("graph-k").value) });
  cancelAnimationFrame(frame);
  frame = requestAnimationFrame(renderGraph);
}

/** Once per page, when the first edge result arrives: the controls from the link. */
export function initGraph(url) {
  const r = st.result;
  const ranks = rankings(r);
  const sel = $("graph-rank");
  sel.replaceChildren(...ranks.map((m) => el("option", { value: m, text: METHOD_LABELS[m] || m })));
  const slider = $("graph-k");
  slider.max = String(Math.max(1, Math.min(MAX_K, r.edges.length)));
  const k = Number.isFinite(url.k) && url.k >= 1 ? Math.min(Math.round(url.k), Number(slider.max)) : Math.min(DEFAULT_K, r.edges.length);
  const e = url.e && r.edges.includes(url.e) ? url.e : null;
  update({ view: "graph", rank: ranks.includes(url.rank) ? url.rank : defaultRanking(r), k, e, c: url.c, pair: url.pair, tau: url.tau ?? (typeof r.tau === "number" ? r.tau : 0.5) }, { url: false });
  $("graph-card").classList.remove("hidden");
  $("graph-export-csv").href = `/api/analyses/${encodeURIComponent(st.id)}/export.csv`;
  for (const id of ["result-card", "scatter-card", "table-card", "circuit-card"]) $(id)?.classList.add("hidden");
}

function init() {
  if (!$("graph-card")) return;
  $("graph-k").addEventListener("input", onK);
  $("graph-rank").addEventListener("change", () => {
    update({ rank: $("graph-rank").value });
    renderGraph();
  });
  const host = $("graph");
  const act = (target) => {
    const edge = target.closest?.("g.edge");
    if (edge) return verifyEdge(edge.dataset.key);
    const node = target.closest?.("g.node");
    if (node) return openNode(node.dataset.node);
    return null;
  };
  host.addEventListener("click", (ev) => act(ev.target));
  host.addEventListener("keydown", (ev) => {
    if (ev.key !== "Enter" && ev.key !== " ") return;
    if (act(ev.target) !== null) ev.preventDefault();
  });
}

init();
