// Messages: #message (page-level errors such as a failed analysis, role=alert, in the page)
// and #notice (verify/fix/cancel progress and their errors, role=status, floating over the page
// so that it never shifts the heatmap under the pointer).
import { $ } from "./state.js";

export function showMessage(text) {
  $("message").textContent = text || "";
}

let errorTimer = 0;

/** A notice in the floating slot (verify, fix, cancel): never moves the page. `error` shows it
 * in red for 10 s. */
export function showNotice(text, { error = false } = {}) {
  const box = $("notice");
  box.textContent = text || "";
  box.classList.toggle("error-toast", !!(error && text));
  clearTimeout(errorTimer);
  if (error && text) errorTimer = setTimeout(() => box.textContent === text && showNotice(""), 10000);
}

export function noticeText() {
  return $("notice").textContent;
}
