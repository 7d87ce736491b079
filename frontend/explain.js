// What the page's numbers mean: the screen's own warning when it cannot rank (e.g. KL
// noising), the sign of a value for this metric and direction, and the flag rule with this
// analysis's numbers (materiality threshold, tau, cut-off, circuit, m(clean), m(corrupted)).
import { el } from "./api.js";
import { shortName } from "./cells.js";
import { fmt } from "./flags.js";
import { metricLabel, signMeaning } from "./meaning.js";
import { $, st } from "./state.js";

/** m(clean) and m(corrupted), from the contract's names or the report's base/src pair. */
export function metricEnds(r) {
  const dir = r.direction || st.data?.request?.direction;
  let clean = r.m_clean;
  let corr = r.m_corrupted;
  if (clean == null && r.metric_base != null) {
    [clean, corr] = dir === "denoising" ? [r.metric_src, r.metric_base] : [r.metric_base, r.metric_src];
  }
  return { clean: clean ?? null, corr: corr ?? null };
}

export function materialThreshold(r) {
  if (typeof r.material_threshold === "number") return r.material_threshold;
  const { clean, corr } = metricEnds(r);
  const total = typeof r.total_effect === "number" ? r.total_effect : clean != null && corr != null ? corr - clean : null;
  return total == null ? null : 0.01 * Math.abs(total);
}

function renderScreenWarning() {
  const box = $("screen-warning");
  const scr = st.result.screen;
  const uninformative = scr && scr.informative === false;
  box.classList.toggle("hidden", !uninformative);
  box.textContent = uninformative
    ? `The screen cannot rank components for this analysis: ${scr.message || "its first-order term vanishes."} ` +
      "A blank or pale map here does not mean nothing matters; verify components by activation patching."
    : "";
  $("heatmap").dataset.informative = uninformative ? "0" : "1";
}

function renderFlagRule() {
  const r = st.result;
  const metric = metricLabel(r.metric);
  const thr = materialThreshold(r);
  const { clean, corr } = metricEnds(r);
  const body = $("flag-rule-body");
  const circuit = Array.isArray(r.circuit) ? r.circuit : [];
  const names = circuit.map((c) => shortName(c.layer, c.comp));
  const dl = el("dl", {},
    el("dt", { text: "m(clean)" }), el("dd", { text: `${fmt(clean)} (${metric})` }),
    el("dt", { text: "m(corrupted)" }), el("dd", { text: fmt(corr) }),
    el("dt", { text: "materiality threshold" }), el("dd", { id: "material-threshold", text: thr == null ? "–" : `${fmt(thr)} (1% of |m(clean) − m(corrupted)|)` }),
    el("dt", { text: "τ" }), el("dd", { text: `${st.tau.toFixed(2)} (the slider; the server flagged at ${typeof r.tau === "number" ? r.tau.toFixed(2) : "–"})` }),
    el("dt", { text: "circuit cut-off" }), el("dd", { id: "cutoff", text: r.cutoff == null ? "–" : `|estimate| = ${fmt(r.cutoff)}` }),
    el("dt", { text: "circuit" }), el("dd", { id: "circuit", text: names.length ? `${names.length} components: ${names.join(", ")}` : "–" }),
  );
  const cal = r.calibration || {};
  body.replaceChildren(
    el("p", {}, "Each component gets an ", el("b", { text: "interval" }),
      ` for its true effect: the shown estimate (${cal.estimate || "corrected"}) ± scale × (|q/2| + its probe error + |sat − AtP| + (κ + F − 1) × |estimate|), clipped to what the metric can reach; F is how much of the total effect the screen leaves unexplained.`),
    el("p", { id: "calibration-note" }, cal.why ? `Calibration: ${cal.why}.` : "No calibration information (an older result)."),
    el("p", {}, "A component is ", el("b", { text: "material" }),
      ` when its interval reaches the materiality threshold (${thr == null ? "1% of the larger of the total effect and the summed estimates" : fmt(thr)}).`),
    el("p", {}, "A material component is ", el("b", { text: "flagged" }), " (drawn grey until verified: the screen cannot give it a number) when any of these holds:"),
    el("ul", {},
      el("li", { text: "the interval admits an AtP error above 50%", "data-code": "atp_error" }),
      el("li", { text: "the interval admits an error of the shown estimate above 50%", "data-code": "estimate_error" }),
      el("li", { text: "the interval holds 0: the sign is unknown", "data-code": "sign" }),
      el("li", { text: "a downstream attention softmax bends the path (saturation: its exact change departs from the linear one by ≥ 10% of the estimate); the hover names the heads", "data-code": "saturation" }),
      el("li", { text: "the first-order term vanishes for this metric and direction", "data-code": "vanishing" }),
      el("li", { text: `reliability < τ (now ${st.tau.toFixed(2)}; only when τ > 0)`, "data-code": "reliability" })),
    el("p", { class: "muted" }, "At most 35% of the components are flagged; past that the ones whose interval reaches least far are deferred (uncertain, low stakes)."),
    dl,
  );
}

export function renderExplain() {
  if (!st.result) return;
  const r = st.result;
  $("meaning").textContent = signMeaning(r.metric || st.data?.request?.metric, r.direction || st.data?.request?.direction);
  renderScreenWarning();
  renderFlagRule();
}
