// The request card: what was asked (model, prompts, site, metric, ...) and the prompt pairs.
import { api, el } from "./api.js";
import { $, st } from "./state.js";

export function renderRequest() {
  const d = st.data;
  const req = d.request || {};
  const key = JSON.stringify(req) + JSON.stringify(d.result?.pairs || d.result?.prompts || null) + (d.owner || "");
  if (renderRequest.key === key) return;
  renderRequest.key = key;
  const dl = $("request");
  dl.replaceChildren();
  const rows = [
    ["Model", req.model],
    ["Prompts", req.task ? [`task ${req.task}`, req.corruption ? `corruption ${req.corruption}` : null, req.n_pairs != null ? `${req.n_pairs} pairs` : null, `seed ${req.seed ?? 0}`].filter(Boolean).join(", ") : `${(req.pairs || []).length} custom pairs`],
    ["Site", req.site],
    ["Metric", req.metric],
    ["Direction", req.direction],
    ["Methods", (req.methods || []).join(", ")],
    ["HVP probes", req.hvp_probes],
    ["IG steps", req.ig_steps],
    ["Owner", d.owner && d.owner !== "local" ? d.owner : null], // the member who ran it (issue 20)
  ];
  for (const [k, v] of Object.entries(req)) {
    if (["model", "task", "corruption", "tokens", "n_pairs", "seed", "pairs", "site", "metric", "direction", "methods", "hvp_probes", "ig_steps"].includes(k)) continue;
    if (v != null && typeof v !== "object") rows.push([k, v]);
  }
  for (const [k, v] of rows) {
    if (v == null || v === "") continue;
    dl.append(el("dt", { text: k }), el("dd", { text: String(v) }));
  }
  const pairs = d.result?.pairs || req.pairs || [];
  const box = $("prompts");
  box.replaceChildren();
  if (!pairs.length && req.task) {
    // The task's pairs are generated on the server: show the task's example pair.
    api("/api/tasks")
      .then((tasks) => {
        const t = (Array.isArray(tasks) ? tasks : []).find((x) => x.name === req.task);
        if (!t?.example || renderRequest.key !== key) return;
        box.append(el("p", { class: "muted small", style: "font-family:inherit" },
          `Example pair of the ${req.task} task (the analysis uses ${req.n_pairs ?? "its"} generated pairs):`));
        box.append(pairTable([t.example]));
      })
      .catch(() => {});
    return;
  }
  if (pairs.length) box.append(pairTable(pairs));
}

function pairTable(pairs) {
  const tbl = el("table", {}, el("thead", {}, el("tr", {}, el("th", { text: "#" }), el("th", { text: "clean" }), el("th", { text: "corrupted" }), el("th", { text: "answer" }), el("th", { text: "wrong" }))));
  const tb = el("tbody");
  pairs.forEach((p, k) => tb.append(el("tr", {}, el("td", { text: k + 1 }), el("td", { class: "prompt-col", text: p.clean }), el("td", { class: "prompt-col", text: p.corrupted }), el("td", { class: "tok-col", text: JSON.stringify(p.answer) }), el("td", { class: "tok-col", text: JSON.stringify(p.wrong) }))));
  tbl.append(tb);
  return tbl;
}

