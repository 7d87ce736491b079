// The progress card: status badge, progress bar, Cancel.
import { api, ApiError } from "./api.js";
import { setReadOnly } from "./banner.js";
import { showMessage, showNotice } from "./notices.js";
import { $, ACTIVE, pollSoon, st } from "./state.js";

/** Status badge, progress bar and the Cancel button for the last poll's answer. */
export function renderProgress() {
  const d = st.data;
  const status = d.status || "unknown";
  const badge = $("status");
  badge.textContent = status;
  badge.className = `status ${status}`;
  document.body.dataset.status = status;

  const active = ACTIVE.has(status);
  $("progress-card").classList.toggle("hidden", !active);
  if (active) {
    const frac = Math.max(0, Math.min(1, Number(d.progress?.fraction) || 0));
    const bar = $("progress-bar");
    bar.firstElementChild.style.width = `${(frac * 100).toFixed(1)}%`;
    bar.setAttribute("aria-valuenow", (frac * 100).toFixed(0));
    const phase = d.progress?.phase || status;
    $("progress-text").textContent = `${phase} · ${(frac * 100).toFixed(0)}%`;
  }
  $("cancel").disabled = !active || st.readOnly;
}

export async function cancel() {
  try {
    await api(`/api/analyses/${encodeURIComponent(st.id)}/cancel`, { method: "POST", write: true });
    showNotice("Cancelling…");
  } catch (err) {
    if (err instanceof ApiError && err.isAuth) setReadOnly(true);
    showMessage(`Could not cancel: ${err.message}`);
  }
  pollSoon(300);
}

