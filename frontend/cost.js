// The cost table (passes and seconds per method) and the Screen-Flag-Fix summary.
import { el } from "./api.js";
import { METHOD_LABELS, shapeOf } from "./flags.js";
import { $, ACTIVE, errorText, pendingKeys, st } from "./state.js";

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
    fix_forwards: pf.components.length,
    fix_batch_passes: forwards,
    full_sweep_forwards: R * C,
    components: pf.components,
    tau: pf.tau,
  };
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

/** "12 component forwards (3 batched passes, 0.41 s)": the same three units on both sides. */
function costText(forwards, passes, seconds, estimated = false) {
  const bits = [];
  if (passes != null) bits.push(plural(passes, "batched pass").replace(/passs$/, "passes"));
  if (seconds != null) bits.push(`${estimated ? "≈ " : ""}${Number(seconds).toFixed(2)} s${estimated ? " estimated" : ""}`);
  return `${plural(forwards ?? 0, "component forward")}${bits.length ? ` (${bits.join(", ")})` : ""}`;
}

export function renderFix() {
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
  // The fix's fields as the worker writes them (service/contract.py FixInfo).
  const n = (fx.components || []).length;
  const mine = costText(fx.fix_forwards, fx.fix_batch_passes, fx.fix_seconds);
  const theirs = costText(fx.full_sweep_forwards, fx.full_sweep_batch_passes, fx.full_sweep_seconds, !!fx.full_sweep_seconds_estimated);
  box.textContent =
    `Screen-Flag-Fix verified ${plural(n, "flagged component")} with ${mine}, ` +
    `against ${theirs} for a full activation-patching sweep` +
    (fx.tau != null ? ` (flags at τ = ${fx.tau.toFixed(2)}).` : ".");
  box.classList.remove("hidden");
}

export function renderCost() {
  const cost = st.result.cost || {};
  const box = $("cost");
  box.replaceChildren();
  const names = Object.keys(cost);
  if (!names.length) return;
  const tbl = el("table", { class: "comp cost", style: "max-width:60rem" },
    el("thead", {}, el("tr", {}, el("th", { text: "cost" }), el("th", { text: "forward" }), el("th", { text: "backward" }), el("th", { text: "seconds" }), el("th", { class: "cost-note", text: "how it runs" }))));
  const tb = el("tbody");
  for (const m of names) {
    const c = cost[m] || {};
    const label = el("td", { text: METHOD_LABELS[m] || m });
    if (m === "plan") {
      // The memory plan chosen up front: no passes of its own.
      const what = c.max_copies != null ? `up to ${plural(c.max_copies, "copy").replace(/copys$/, "copies")} of the batch per pass, ${c.memory_budget_mb} MiB budget` : "";
      tb.append(el("tr", { "data-method": m, class: "cached" }, el("td", { text: "memory plan" }), el("td", { colspan: 3, class: "cost-note", text: what }), el("td", { class: "cost-note", text: c.note || "" })));
      continue;
    }
    if (c.cached) {
      // Served from the activation cache: no pass ran, so no "0 0 0.000" row.
      tb.append(el("tr", { "data-method": m, class: "cached" }, label, el("td", { colspan: 3, class: "cost-note", text: "cached (served from the activation cache, no pass ran)" }), el("td", { class: "cost-note", text: c.note || "" })));
      continue;
    }
    tb.append(el("tr", { "data-method": m }, label, el("td", { text: c.forward ?? "–" }), el("td", { text: c.backward ?? "–" }), el("td", { text: c.seconds != null ? Number(c.seconds).toFixed(3) : "–" }), el("td", { class: "cost-note", text: c.note || "" })));
  }
  tbl.append(tb);
  box.append(el("p", { class: "small muted", style: "margin:0 0 0.3rem" }, "Passes count batched forwards and backwards over all prompt pairs, as the engine runs them."), tbl);
}
