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
    forwards,
    full_sweep_forwards: st.result.fix?.full_sweep_forwards ?? R * C,
    components: pf.components,
    tau: pf.tau,
  };
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

export function renderCost() {
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

