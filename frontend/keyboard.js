// Keyboard access to the heatmap: #heatmap-keys is in the tab order; arrow keys (and Home/End,
// PageUp/PageDown) move a cursor drawn on the map, the box reads the cell's numbers out
// (aria-live), Enter or Space verifies the cell. The selected cell is st.c (URL ?c=i.j).
/* global Plotly */
import { cellInfo, compName } from "./cells.js";
import { fmt, shapeOf } from "./flags.js";
import { $, emit, st, update } from "./state.js";
import { componentKey, parseKey } from "./keys.js";

let focused = false;

/** The cell under the keyboard cursor while the grid has focus, else null. */
export function keyboardCell() {
  if (!focused || !st.result) return null;
  return selected();
}

function selected() {
  const [R, C] = shapeOf(st.result);
  const m = parseKey(st.c);
  const i = m ? Math.min(R - 1, m[0]) : 0;
  const j = m ? Math.min(C - 1, m[1]) : 0;
  return [i, j];
}

function readout() {
  const box = $("heatmap-keys");
  if (!st.result) return;
  if (!focused) {
    box.textContent = "Keyboard: focus here, move with the arrow keys, press Enter to verify the selected cell.";
    return;
  }
  const [i, j] = selected();
  const c = cellInfo(i, j);
  const parts = [compName(i, j), `AtP ${fmt(c.atp)}`];
  if (c.corrName) parts.push(`corrected ${fmt(c.corr)}`);
  if (c.rel != null) parts.push(`reliability ${fmt(c.rel)}`);
  if (c.bound !== undefined) parts.push(`bound ${c.bound == null ? "unbounded" : fmt(c.bound)}`);
  parts.push(c.ver != null ? `verified ${fmt(c.ver)}` : "not verified (Enter verifies)");
  parts.push(c.flagged ? `flagged: ${c.reasons.join("; ")}` : "not flagged");
  box.textContent = parts.join(", ");
}

function drawCursor() {
  const gd = $("heatmap");
  const k = (gd.data || []).findIndex((t) => t.name === "cursor");
  if (k < 0) return;
  const cell = keyboardCell();
  const x = [];
  const y = [];
  if (cell) {
    const [i, j] = cell;
    x.push(j - 0.5, j + 0.5, j + 0.5, j - 0.5, j - 0.5);
    y.push(i - 0.5, i - 0.5, i + 0.5, i + 0.5, i - 0.5);
  }
  Plotly.restyle(gd, { x: [x], y: [y] }, [k]);
}

function onKey(ev) {
  if (!st.result) return;
  const [R, C] = shapeOf(st.result);
  let [i, j] = selected();
  const moves = {
    ArrowLeft: () => (j = Math.max(0, j - 1)),
    ArrowRight: () => (j = Math.min(C - 1, j + 1)),
    ArrowUp: () => (i = Math.max(0, i - 1)),
    ArrowDown: () => (i = Math.min(R - 1, i + 1)),
    Home: () => (j = 0),
    End: () => (j = C - 1),
    PageUp: () => (i = 0),
    PageDown: () => (i = R - 1),
  };
  if (moves[ev.key]) {
    ev.preventDefault();
    moves[ev.key]();
    update({ c: componentKey(i, j) });
    readout();
    drawCursor();
  } else if (ev.key === "Enter" || ev.key === " ") {
    ev.preventDefault();
    emit("verify", [[i, j]]); // the page verifies it (analysis.js -> verify.js)
  }
}

export function initKeys() {
  const box = $("heatmap-keys");
  box.addEventListener("keydown", onKey);
  box.addEventListener("focus", () => {
    focused = true;
    readout();
    drawCursor();
  });
  box.addEventListener("blur", () => {
    focused = false;
    readout();
    drawCursor();
  });
}

/** Refresh the read-out after a redraw (a verified value came in, tau moved). */
export function renderKeys() {
  readout();
}
