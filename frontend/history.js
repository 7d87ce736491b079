// "My analyses": the browser remembers the analyses it created or opened (localStorage:
// id, model, task, site, metric, when, status) and the home page lists them, next to the
// server's own list (GET /api/analyses, paginated) where the server allows it (API-token
// holders; everyone on a token-less loopback server), as "Team" (everyone's) or "Mine" (the
// caller's: GET /api/analyses?scope=mine), with each analysis's owner; the owner may delete
// one (DELETE /api/analyses/<id>).
import { api, ApiError, el } from "./api.js";

const KEY = "patchaudit.history";
const MAX = 200;
const PER_PAGE = 20;

/** The remembered analyses, newest first: [{id, model, task, site, metric, direction, when, status}]. */
export function listLocal() {
  try {
    const rows = JSON.parse(localStorage.getItem(KEY) || "[]");
    return Array.isArray(rows) ? rows.filter((r) => r && typeof r.id === "string") : [];
  } catch {
    return [];
  }
}

/** Remember an analysis (a GET /api/analyses/<id> answer, or {id, request, status}). */
export function remember(data) {
  if (!data || !data.id) return;
  const req = data.request || {};
  const custom = req.pairs || req.tokens;
  const entry = {
    id: data.id,
    model: req.model ?? null,
    task: req.task || (custom ? "custom" : null),
    site: req.site ?? data.result?.site ?? null,
    metric: req.metric ?? data.result?.metric ?? null,
    direction: req.direction ?? data.result?.direction ?? null,
    status: data.status ?? null,
    when: Date.now(),
  };
  const rows = listLocal();
  const old = rows.find((r) => r.id === data.id);
  if (old && old.status === entry.status && old.model === entry.model) {
    // nothing new: keep the time it was first seen (no write on every poll)
    return;
  }
  if (old) entry.when = old.when;
  const next = [entry, ...rows.filter((r) => r.id !== data.id)].slice(0, MAX);
  try {
    localStorage.setItem(KEY, JSON.stringify(next));
  } catch {
    /* storage disabled or full: the list is a convenience */
  }
}

export function forget(id) {
  try {
    localStorage.setItem(KEY, JSON.stringify(listLocal().filter((r) => r.id !== id)));
  } catch {
    /* ignore */
  }
}

function when(t) {
  if (!t) return "";
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleString();
}

function rowsTable(rows, { serverTimes = false, onForget = null, member = null, onDelete = null } = {}) {
  const owners = member != null;
  const cols = ["When", ...(owners ? ["Owner"] : []), "Model", "Task", "Site", "Metric", "Status", "Analysis", ""];
  const head = el("tr", {}, ...cols.map((h) => el("th", { scope: "col", text: h })));
  const mayDelete = (r) => onDelete && (!r.owner || r.owner === member || r.owner === "local");
  const body = rows.map((r) =>
    el(
      "tr",
      { "data-id": r.id, "data-owner": r.owner ?? "", class: owners && r.owner === member ? "mine" : null },
      el("td", { text: when(serverTimes ? (r.created_at || 0) * 1000 : r.when) }),
      owners ? el("td", { class: "owner", text: r.owner ? (r.owner === member && member !== "local" ? `${r.owner} (you)` : r.owner) : "" }) : null,
      el("td", { text: r.model ?? "" }),
      el("td", { text: r.task ?? "" }),
      el("td", { text: r.site ?? "" }),
      el("td", { text: [r.metric, r.direction].filter(Boolean).join(" ") }),
      el("td", { text: r.status ?? "" }),
      el("td", {}, el("a", { href: `/a/${encodeURIComponent(r.id)}`, class: "mono", text: r.id.slice(0, 12) })),
      el(
        "td",
        {},
        onForget ? el("button", { type: "button", class: "small", text: "Forget", "aria-label": `Forget ${r.id}`, onclick: () => onForget(r.id) }) : "",
        mayDelete(r) ? el("button", { type: "button", class: "small danger", text: "Delete", "aria-label": `Delete ${r.id} from the server`, onclick: () => onDelete(r) }) : "",
      ),
    ),
  );
  return el("table", { class: "comp history" }, el("thead", {}, head), el("tbody", {}, ...body));
}

function renderLocal() {
  const box = document.getElementById("history-local");
  if (!box) return;
  const rows = listLocal();
  box.replaceChildren(
    rows.length
      ? rowsTable(rows, {
          onForget: (id) => {
            forget(id);
            renderLocal();
          },
        })
      : el("p", { class: "muted small", text: "None yet: analyses you start or open in this browser appear here." }),
  );
}

let page = 1;
let scope = "team"; // "team": everyone's analyses; "mine": the caller's

async function deleteAnalysis(r) {
  if (!window.confirm(`Delete analysis ${r.id.slice(0, 12)} with its results and notes, for everyone?`)) return;
  const note = document.getElementById("history-server-note");
  try {
    await api(`/api/analyses/${encodeURIComponent(r.id)}`, { method: "DELETE" });
    forget(r.id);
    renderLocal();
    await renderServer();
  } catch (err) {
    if (note) note.textContent = err.message;
  }
}

async function renderServer() {
  const box = document.getElementById("history-server");
  if (!box) return;
  let data;
  try {
    data = await api(`/api/analyses?page=${page}&per_page=${PER_PAGE}&scope=${scope}`, { write: true });
  } catch (err) {
    const why =
      err instanceof ApiError && err.isAuth
        ? "This server lists its analyses to API-token holders only (enter the token under “API token”)."
        : `Could not list the server's analyses: ${err.message}`;
    box.replaceChildren(el("p", { class: "muted small", text: why }));
    return;
  }
  const items = data.items || [];
  const nav = el(
    "div",
    { class: "row pager" },
    el("button", { type: "button", class: "small", id: "history-prev", disabled: page <= 1, text: "Newer", onclick: () => ((page = Math.max(1, page - 1)), renderServer()) }),
    el("span", { class: "small", id: "history-page", text: `page ${data.page} of ${data.pages} (${data.total} analyses)` }),
    el("button", { type: "button", class: "small", id: "history-next", disabled: page >= data.pages, text: "Older", onclick: () => ((page += 1), renderServer()) }),
  );
  const pick = (which) => () => {
    scope = which;
    page = 1;
    renderServer();
  };
  const tabs = el(
    "div",
    { class: "row", role: "group", "aria-label": "whose analyses" },
    el("button", { type: "button", class: "small", id: "history-team", "aria-pressed": String(scope === "team"), text: "Team", onclick: pick("team") }),
    el("button", { type: "button", class: "small", id: "history-mine", "aria-pressed": String(scope === "mine"), text: "Mine", onclick: pick("mine") }),
    el("span", { class: "small muted", id: "history-member", text: data.member && data.member !== "local" ? `signed in as ${data.member}` : "no members on this server: every local user is one" }),
  );
  const empty = scope === "mine" ? "You have no analyses on this server yet." : "The server has no analyses yet.";
  box.dataset.scope = scope;
  box.replaceChildren(
    tabs,
    items.length ? rowsTable(items, { serverTimes: true, member: data.member ?? null, onDelete: deleteAnalysis }) : el("p", { class: "muted small", text: empty }),
    el("p", { class: "small bad", id: "history-server-note", role: "status" }),
    nav,
  );
}

export function initHistory() {
  if (!document.getElementById("history-card")) return;
  renderLocal();
  renderServer();
  window.addEventListener("storage", (e) => e.key === KEY && renderLocal());
}

initHistory();

/** An analysis id from a pasted id or link (/a/<id>, /compare?a=..), else null. */
export function idFrom(text) {
  const m = String(text || "").trim().match(/([0-9a-f]{32})/);
  return m ? m[1] : null;
}

/**
 * The analysis page's "Compare with…" box: pick a remembered analysis (same model and site
 * first) or paste an id or link; opens /compare?a=<this>&b=<other>.
 */
export function initCompareBox() {
  const form = document.getElementById("compare-form");
  if (!form) return;
  const here = () => (window.location.pathname.match(/\/a\/([^/?#]+)/) || [])[1];
  const fill = () => {
    const me = listLocal().find((r) => r.id === here()) || {};
    const others = listLocal().filter((r) => r.id !== here());
    others.sort((a, b) => Number(b.model === me.model && b.site === me.site) - Number(a.model === me.model && a.site === me.site));
    document.getElementById("compare-list").replaceChildren(
      ...others.map((r) => el("option", { value: r.id, label: `${r.model ?? ""} · ${r.task ?? ""} · ${r.site ?? ""} · ${[r.metric, r.direction].filter(Boolean).join(" ")} · ${when(r.when)}` })),
    );
  };
  document.getElementById("compare-box").addEventListener("toggle", fill);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const other = idFrom(document.getElementById("compare-with").value);
    const note = document.getElementById("compare-note");
    if (!other) {
      note.textContent = "Enter another analysis's id or link (32 hex characters).";
      return;
    }
    window.location.href = `/compare?a=${encodeURIComponent(here())}&b=${encodeURIComponent(other)}`;
  });
}
