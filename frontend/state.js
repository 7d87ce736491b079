// The analysis page's one shared state, its URL serialisation and a tiny event bus.
// Every panel module (heatmap, table, cost, verify, ...) reads `st` and talks to the others
// through `emit`/`on` instead of importing each other, so a new panel (component detail,
// circuit, compare, history) is one more module that subscribes here.
//
// URL: /a/<id>?view=&tau=&c=&pair=&k=&rank=&e=
//   view  the heatmap view (a method, reliability, error_bound, verified, diff, best), or
//         "graph" (an edge analysis: graph.js)
//   rank  the graph's ranking (a method), e the selected edge ("0.1->1.0.k"), k its top-k
//   tau   the reliability threshold the page flags at
//   c     the selected component ("i.j"), pair (a prompt pair index), k (top-k): kept for
//         the panels that use them; unknown to the others.
//   circ  the circuit ranking outlined; attn the attention pattern's prompt (corrupted);
//   scale=own  each view on its own colour scale. A link keeps every choice.
//   why   the "why" views open (why.js): "c" (the selected component's), "flagged" (the
//         model-wide view of the flagged components), or "c,flagged"

import { componentKey } from "./keys.js";

export const $ = (id) => document.getElementById(id);
export const ACTIVE = new Set(["queued", "running", "started", "deferred", "scheduled"]);
export const METHOD_ORDER = ["atp", "hvp", "hvp_joint", "hvp_exact", "sat", "mhvp", "ig", "atp_star", "graddrop", "ap"];

/** The state every panel reads. Only this module changes it: `update` for the keys panels
 * follow (subscribers and the URL follow), `assign` for the rest, and the functions below for
 * the pending map and the render stats. Every key is declared here. */
export const st = {
  id: null,
  data: null, // the last GET /api/analyses/<id> answer
  dataSig: null, // what of `data` the page draws (a redraw only when it changes)
  result: null, // data.result once there is one
  view: null,
  tau: null,
  c: null, // selected component "i.j" (URL ?c=)
  pair: null, // selected prompt pair (URL ?pair=)
  k: null, // top-k (URL ?k=)
  circ: null, // the circuit ranking outlined (URL ?circ=)
  attn: null, // the drill-down's attention pattern: "corrupted" (URL ?attn=), else clean
  why: null, // the "why" views open (URL ?why=c|flagged|c,flagged)
  rank: null, // the graph view's ranking, a method (URL ?rank=)
  e: null, // the graph view's selected edge "SENDER->RECEIVER" (URL ?e=)
  flags: null, // computeFlags() output at st.tau
  localPending: new Map(), // "i.j" -> time the verify POST was answered
  seenVerifications: null, // verifications already reported (a failed one is shown once)
  readOnly: false,
  sort: { key: "absEst", dir: "desc" },
  busyFix: false, // Fix all flagged is running
  fixPosted: false, // ... and its POST was answered
  pageFix: null, // a fix at the page's own tau: {tau, components, since}
  circuitCells: null, // the circuit panel's top-k members, [[i, j], ...]
  sharedScale: true, // one colour scale for every estimate view (the "shared scale" toggle)
  stats: { renders: 0, lastRenderMs: 0, parts: {} },
};

function checkKeys(patch) {
  for (const k of Object.keys(patch)) if (!(k in st)) throw new Error(`state.js: undeclared state key ${k}`);
}

/** Set state keys no panel follows (no "change" event, no URL). */
export function assign(patch) {
  checkKeys(patch);
  Object.assign(st, patch);
}

/** Components the page asked to verify, from `when` (ms) on. */
export function addLocalPending(keys, when = Date.now()) {
  for (const k of keys) st.localPending.set(k, when);
}

export function dropLocalPending(key) {
  st.localPending.delete(key);
}

/** One render of the result panels: per-panel milliseconds and the total. */
export function recordRender(parts, ms) {
  st.stats.parts = parts;
  st.stats.renders++;
  st.stats.lastRenderMs = ms;
}

// ---------------------------------------------------------------- events
const handlers = new Map();

/** Subscribe to an event ("change", "render", "poll", "readonly", ...). Returns an unsubscribe. */
export function on(event, fn) {
  if (!handlers.has(event)) handlers.set(event, new Set());
  handlers.get(event).add(fn);
  return () => handlers.get(event).delete(fn);
}

export function emit(event, payload) {
  for (const fn of handlers.get(event) || []) fn(payload);
}

/** Set state keys, keep the URL in step, and tell subscribers which keys changed. */
export function update(patch, { url = true } = {}) {
  checkKeys(patch);
  const changed = Object.keys(patch).filter((k) => st[k] !== patch[k]);
  Object.assign(st, patch);
  if (url && changed.some((k) => URL_KEYS.includes(k))) syncUrl();
  if (changed.length) emit("change", changed);
  return changed;
}

// ---------------------------------------------------------------- URL state
const URL_KEYS = ["view", "tau", "c", "pair", "k", "why", "rank", "e", "circ", "attn"];

/** Read the id and the URL keys. Returns {view, tau, c, pair, k, rank, e} (null where absent). */
export function parseUrl() {
  const m = window.location.pathname.match(/\/a\/([^/?#]+)/);
  st.id = m ? decodeURIComponent(m[1]) : new URLSearchParams(window.location.search).get("id");
  const q = new URLSearchParams(window.location.search);
  const h = new URLSearchParams(window.location.hash.replace(/^#/, ""));
  const get = (k) => q.get(k) ?? h.get(k);
  const num = (v) => (v != null && v !== "" && Number.isFinite(Number(v)) ? Number(v) : null);
  return { view: get("view"), tau: num(get("tau")), c: get("c"), pair: num(get("pair")), k: num(get("k")), why: get("why"), rank: get("rank"), e: get("e"), circ: get("circ"), attn: get("attn") === "corrupted" ? "corrupted" : null, scale: get("scale") };
}

export function shareUrl() {
  const q = new URLSearchParams();
  if (st.view) q.set("view", st.view);
  if (st.tau != null) q.set("tau", st.tau.toFixed(2));
  if (st.c != null) q.set("c", st.c);
  if (st.pair != null) q.set("pair", String(st.pair));
  if (st.k != null) q.set("k", String(st.k));
  if (st.why) q.set("why", st.why);
  if (st.rank != null) q.set("rank", st.rank);
  if (st.e != null) q.set("e", st.e);
  if (st.circ) q.set("circ", st.circ);
  if (st.attn) q.set("attn", st.attn);
  if (!st.sharedScale) q.set("scale", "own");
  return `${window.location.origin}/a/${encodeURIComponent(st.id)}?${q.toString()}`;
}

export function syncUrl() {
  if (!st.id) return;
  const url = shareUrl();
  if (url !== window.location.href) window.history.replaceState(null, "", url);
  const box = $("share-link");
  if (box) box.value = url;
}

// ---------------------------------------------------------------- shared helpers
/** A pending entry is "layer.head" or [layer, head]. */
export function pendKey(c) {
  return componentKey(c);
}

/** Components being verified: the server's pending list plus the page's own requests. */
export function pendingKeys() {
  const keys = new Set((st.data?.pending || []).map(pendKey));
  for (const k of st.localPending.keys()) keys.add(k);
  return keys;
}

export function errorText(error) {
  if (!error) return "";
  if (typeof error === "string") return error;
  const t = error.type ? `${error.type}: ` : "";
  return `${t}${error.message || ""}`;
}

/** Ask the entry point to redraw the result panels ({tauOnly} skips tau-independent ones). */
export function renderAll(opts = {}) {
  emit("render", opts);
}

/** Ask the entry point to poll the analysis again in `ms`. */
export function pollSoon(ms) {
  emit("poll", ms);
}
