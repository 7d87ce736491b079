// Notes on components (issue 20): a member labels a component ("name mover") and writes a
// note. The label shows on the map cell (heatmap.js, noteLabels) and in its hover
// (cells.js); label + note + author + time in the component panel, with a form to write,
// change or delete it (PUT / DELETE /api/analyses/<id>/notes/<key>; any member may write a
// component's first note, only its author may change or delete it). The page keeps
// st.data.notes in step with the server every few seconds, so a teammate's label appears
// without a reload.
import { api, el } from "./api.js";
import { $, on, renderAll, st } from "./state.js";

const LABEL_MAX = 40;
const TEXT_MAX = 2000;
const REFRESH_MS = 5000;

/** The note of component "L.C" (st.data.notes), or null. */
export function noteAt(key) {
  return st.data?.notes?.[String(key)] || null;
}

/** Plotly text (hover, cell labels) is HTML: a label is shown as text, never as markup. */
export function escapeHtml(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function when(t) {
  const d = new Date((t || 0) * 1000);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleString();
}

function box() {
  let b = $("comp-note");
  if (b) return b;
  const summary = $("comp-summary");
  if (!summary) return null;
  b = el("div", { id: "comp-note", class: "note-box", "aria-label": "label and note of the selected component" });
  summary.after(b);
  return b;
}

function setNotes(notes) {
  if (!st.data) return;
  st.data.notes = notes;
  renderAll();
  render();
}

async function save(key, label, text, status) {
  status.textContent = "Saving…";
  status.classList.remove("bad");
  try {
    const note = await api(`/api/analyses/${encodeURIComponent(st.id)}/notes/${encodeURIComponent(key)}`, { method: "PUT", body: { label, text } });
    setNotes({ ...(st.data?.notes || {}), [key]: note });
    $("comp-note-status").textContent = "Saved: everyone with the link sees it.";
  } catch (err) {
    status.textContent = err.message;
    status.classList.add("bad");
  }
}

async function remove(key, status) {
  status.textContent = "Deleting…";
  status.classList.remove("bad");
  try {
    await api(`/api/analyses/${encodeURIComponent(st.id)}/notes/${encodeURIComponent(key)}`, { method: "DELETE" });
    const next = { ...(st.data?.notes || {}) };
    delete next[key];
    setNotes(next);
    $("comp-note-status").textContent = "Note deleted.";
  } catch (err) {
    status.textContent = err.message;
    status.classList.add("bad");
  }
}

/** The note box of the selected component (st.c). */
export function render() {
  const b = box();
  if (!b) return;
  const key = st.c == null || st.c === "" ? null : String(st.c);
  if (!key || !st.result) {
    b.replaceChildren();
    return;
  }
  const note = noteAt(key);
  if (b.dataset.key === key && b.dataset.sig === JSON.stringify(note) && b.childElementCount) return; // unchanged: keep what is being typed
  b.dataset.key = key;
  b.dataset.sig = JSON.stringify(note);
  const status = el("span", { id: "comp-note-status", class: "small muted", role: "status", "aria-live": "polite" });
  const label = el("input", { id: "comp-note-label", type: "text", maxlength: LABEL_MAX, required: true, placeholder: "label, e.g. name mover", value: note?.label || "", "aria-label": "label (shown on the map)" });
  const text = el("textarea", { id: "comp-note-text", rows: 3, maxlength: TEXT_MAX, placeholder: "note (optional)", "aria-label": "note" });
  text.value = note?.text || "";
  const form = el(
    "form",
    { id: "comp-note-form", class: "note-form" },
    el("div", { class: "row" }, label, el("button", { type: "submit", class: "small", id: "comp-note-save", text: note ? "Save note" : "Add note" }), note ? el("button", { type: "button", class: "small", id: "comp-note-delete", text: "Delete note", onclick: () => remove(key, status) }) : null),
    text,
    status,
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const l = label.value.trim();
    if (!l) {
      status.textContent = "Write a label first (a few words).";
      status.classList.add("bad");
      return;
    }
    save(key, l, text.value, status);
  });
  const view = note
    ? el(
        "div",
        { id: "comp-note-view", class: "note-view" },
        el("p", {}, el("strong", { class: "note-label", id: "comp-note-shown-label", text: note.label }), el("span", { class: "small muted", text: ` · by ${note.author} · ${when(note.updated_at)}` })),
        note.text ? el("p", { class: "note-text", id: "comp-note-shown-text", text: note.text }) : null,
      )
    : el("p", { id: "comp-note-view", class: "small muted", text: "No note on this component yet." });
  const edit = el("details", { id: "comp-note-edit", open: !note || null }, el("summary", { class: "small", text: note ? "Change or delete the note" : "Label this component" }), form);
  b.replaceChildren(view, edit);
}

async function refresh() {
  if (!st.id || !st.data || document.hidden) return;
  try {
    const res = await api(`/api/analyses/${encodeURIComponent(st.id)}/notes`);
    const notes = res?.notes || {};
    if (JSON.stringify(notes) !== JSON.stringify(st.data.notes || {})) setNotes(notes);
  } catch {
    /* the next refresh tries again */
  }
}

function init() {
  if (!$("component-card")) return;
  on("change", (keys) => {
    if (keys.includes("c")) render();
  });
  on("rendered", render);
  setInterval(refresh, REFRESH_MS);
}

init();

/** The map's label layer: each noted component's label on its cell (shortened to fit; a pencil
 * when the cell is too small), drawn in the upper part of the cell. */
export function noteLabels(R, C, cellW) {
  const x = [];
  const y = [];
  const text = [];
  const fit = Math.floor(cellW / 6);
  for (const [key, n] of Object.entries(st.data?.notes || {})) {
    const m = /^(\d+)\.(\d+)$/.exec(key);
    if (!m || +m[1] >= R || +m[2] >= C || !n?.label) continue;
    let t = String(n.label);
    if (fit < 3) t = "✎";
    else if (t.length > fit) t = `${t.slice(0, fit - 1)}…`;
    x.push(+m[2]);
    y.push(+m[1] - 0.28);
    text.push(escapeHtml(t));
  }
  return { type: "scatter", mode: "text", x, y, text, textfont: { size: 9, color: "#000" }, hoverinfo: "skip", showlegend: false, name: "notes" };
}
