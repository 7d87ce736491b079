// The sortable top-components table (the 20 largest, plus every flagged or verified one).
import { el } from "./api.js";
import { cellInfo, compName, shortName } from "./cells.js";
import { METHOD_LABELS, correctedMethod, fmt, shapeOf } from "./flags.js";
import { $, assign, emit, pendingKeys, st } from "./state.js";
import { componentKey } from "./keys.js";

const COLUMNS = [
  ["name", "Component"],
  ["atp", "AtP"],
  ["corr", "Corrected"],
  ["rel", "Reliability"],
  ["bound", "Bound"],
  ["flag", "Flag"],
  ["ver", "Verified"],
  ["err", "Error"],
];

function tableRows() {
  const r = st.result;
  const [R, C] = shapeOf(r);
  const all = [];
  for (let i = 0; i < R; i++) for (let j = 0; j < C; j++) all.push(cellInfo(i, j));
  const top = [...all].sort((a, b) => Math.abs(b.est ?? 0) - Math.abs(a.est ?? 0));
  const chosen = new Set(top.slice(0, 20));
  for (const c of all) if (chosen.size < 200 && (c.flagged || c.ver != null)) chosen.add(c);
  return [...chosen];
}

function sortValue(c, key) {
  switch (key) {
    case "name": return c.i * 1e6 + c.j;
    case "absEst": return Math.abs(c.est ?? 0);
    case "flag": return c.flagged ? 1 : 0;
    case "bound": return c.bound === null ? Infinity : (c.bound ?? -Infinity);
    case "err": return c.ver != null && c.est != null ? Math.abs(c.est - c.ver) : -Infinity;
    default: return c[key] ?? -Infinity;
  }
}

export function renderTable() {
  const tbl = $("top-table");
  const thead = tbl.tHead;
  const corrLabel = METHOD_LABELS[correctedMethod(st.result.scores, st.result.reliability_source)] || "Corrected";
  const tr = el("tr");
  for (const [key, label] of COLUMNS) {
    const sorted = st.sort.key === key ? (st.sort.dir === "asc" ? "ascending" : "descending") : null;
    const text = key === "corr" ? corrLabel : label;
    const btn = el("button", { type: "button", "data-key": key, text, title: `Sort by ${text}` });
    btn.addEventListener("click", () => {
      assign({ sort: { key, dir: st.sort.key === key && st.sort.dir === "desc" ? "asc" : "desc" } });
      renderTable();
      tbl.querySelector(`th button[data-key="${key}"]`)?.focus();
    });
    tr.append(el("th", { scope: "col", "aria-sort": sorted || "none" }, btn));
  }
  tr.append(el("th", { scope: "col" }, el("span", { class: "small muted", text: "Verify" })));
  thead.replaceChildren(tr);

  const rows = tableRows();
  const dir = st.sort.dir === "asc" ? 1 : -1;
  rows.sort((a, b) => {
    const x = sortValue(a, st.sort.key);
    const y = sortValue(b, st.sort.key);
    return x < y ? -dir : x > y ? dir : 0;
  });
  const pending = pendingKeys();
  const tb = tbl.tBodies[0];
  const frag = document.createDocumentFragment();
  for (const c of rows) {
    const key = componentKey(c.i, c.j);
    const isPending = pending.has(key);
    let action;
    if (c.ver != null) action = el("span", { class: "verified-mark", text: "✓", title: "verified by activation patching", "aria-label": "verified" });
    else if (isPending) action = el("span", { class: "muted", text: "verifying…" });
    else {
      action = el("button", { type: "button", class: "small", disabled: st.readOnly, "aria-label": `Verify ${compName(c.i, c.j)}`, text: "Verify" });
      action.addEventListener("click", () => emit("verify", [[c.i, c.j]]));
    }
    frag.append(el("tr", { class: c.flagged ? "flagged" : null, "data-key": key },
      el("td", { text: shortName(c.i, c.j) }),
      el("td", { text: fmt(c.atp) }),
      el("td", { text: fmt(c.corr) }),
      el("td", { text: fmt(c.rel) }),
      el("td", { text: c.bound === null ? "∞" : fmt(c.bound) }),
      el("td", { class: c.flagged ? "yes flag-codes" : null, text: c.flagged ? c.codes.join(", ") || "flagged" : "", title: c.reasons.join("; ") }),
      el("td", { text: c.ver != null ? fmt(c.ver) : "" }),
      el("td", { text: c.ver != null && c.est != null ? fmt(c.est - c.ver) : "" }),
      el("td", {}, action)));
  }
  tb.replaceChildren(frag);
}

