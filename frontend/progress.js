// The progress card and the analysis's life: status badge, progress bar, Cancel, Re-run,
// Edit and re-run (a link to the form, filled with this request).
import { api, ApiError } from "./api.js";
import { setReadOnly } from "./banner.js";
import { noticeText, showNotice } from "./notices.js";
import { $, ACTIVE, errorText, pollSoon, st } from "./state.js";

/** What a phase is called on the page (the engine's own name otherwise). */
const PHASES = {
  load_model: "loading the model (a large one takes minutes, once per worker)",
  base: "base pass",
};

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
    $("progress-text").textContent = `${PHASES[phase] || phase} · ${(frac * 100).toFixed(0)}%`;
  }
  $("cancel").disabled = !active || st.readOnly;
  if (!active && noticeText() === "Cancelling…") showNotice("");
  // A cancelled or failed analysis can be run again as it was (a fresh job on the server).
  $("rerun").classList.toggle("hidden", !(status === "cancelled" || status === "failed"));
  $("rerun").disabled = st.readOnly;
  $("edit-rerun").href = `/?from=${encodeURIComponent(st.id)}`;
}

/** What the status line says about a finished, failed or cancelled analysis. */
export function statusMessage() {
  const d = st.data;
  if (d.status === "failed") return `The analysis failed. ${errorText(d.error) || "No reason was given."}`;
  if (d.status === "cancelled") {
    const done = Object.keys(d.result?.scores || {});
    return d.result?.partial && done.length
      ? `The analysis was cancelled. The methods that finished before it stopped are shown: ${done.join(", ")}.`
      : "The analysis was cancelled before any method finished.";
  }
  return null;
}

/** Re-run: POST the same request again; the server starts a fresh job and answers its id. */
export async function rerun() {
  const btn = $("rerun");
  btn.disabled = true;
  try {
    const res = await api("/api/analyses", { method: "POST", body: st.data.request, write: true });
    window.location.assign(res.url || `/a/${res.id}`);
  } catch (err) {
    if (err instanceof ApiError && err.isAuth) setReadOnly(true);
    showNotice(`Could not re-run: ${err.message}`, { error: true });
    btn.disabled = false;
  }
}

export async function cancel() {
  try {
    await api(`/api/analyses/${encodeURIComponent(st.id)}/cancel`, { method: "POST", write: true });
    showNotice("Cancelling…");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) setReadOnly(true); // 403: another member's
    showNotice(`Could not cancel: ${err.message}`, { error: true });
  }
  pollSoon(300);
}

