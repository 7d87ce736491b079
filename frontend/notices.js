// One-line messages above the result: #message (errors, role=alert) and #notice (progress of
// verify/fix, role=status).
import { $ } from "./state.js";

export function showMessage(text) {
  $("message").textContent = text || "";
}

export function showNotice(text) {
  $("notice").textContent = text || "";
}

export function noticeText() {
  return $("notice").textContent;
}
