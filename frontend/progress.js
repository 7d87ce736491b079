// The progress card and the analysis's life: status badge, progress bar, Cancel, Re-run,
// Edit and re-run (a link to the form, filled with this request).
import { api, ApiError } from "./api.js";
import { setReadOnly } from "./banner.js";
import { noticeText, showNotice } from "./notices.js";
import { $, ACTIVE, errorText, pollSoon, st } from "./state.js";

/** What a phase is called on the page (the engine's own name otherwise: a method). */
const PHASES = {
  queued: "queued",
  starting: "starting",
  load_model: "loading the model (a large one takes minutes, once per worker)",
  base: "base pass",
  requeued: "retrying: its worker stopped, another run starts",
  retrying: "retrying: its worker stopped, another run starts",
  worker_lost: "its worker stopped: retrying",
  verify: "patching",
  fix: "patching the flagged components",
  circuit: "circuit curve",
};

/** A phase in words: "base + hvp" is the base pass carrying hvp's tangents. */
export function phaseText(phase) {
  if (PHASES[phase]) return PHASES[phase];
  const m = /^base \+ (.+)$/.exec(phase || "");
  if (m) return `base pass + ${m[1]}`;
  return phase ? `computing ${phase}` : "";
}

/** "12 / ~40 passes · about 8 s left" from a progress record (what is known so far). */
export function progressDetail(p) {
  const parts = [];
  if (p?.passes) parts.push(p.passes_total ? `${p.passes} / ~${Math.max(p.passes, p.passes_total)} passes` : `${p.passes} passes`);
  if (p?.eta_s != null && Number.isFinite(Number(p.eta_s))) {
    const s = Math.round(Number(p.eta_s));
    parts.push(s < 1 ? "less than a second left" : s < 90 ? `about ${s} s left` : `about ${Math.round(s / 60)} min left`);
  }
  return parts.join(" · ");
}

/** What each kind of job is called on the page. */
const KIND_NAMES = { analysis: "analysis", verify: "verify", fix: "Fix", circuit: "circuit curve", inspect: "drill-down", why: "why", edge_verify: "edge check" };

/** One line per job of this analysis not finished yet: its kind, state, phase and estimate
 * (verify, fix, circuit, drill-down ...; "retrying" as soon as its worker is gone). */
export function renderJobs() {
  const box = $("jobs");
  if (!box) return;
  const jobs = (st.data?.jobs || []).filter((j) => j.kind !== "analysis");
  box.replaceChildren();
  for (const j of jobs) {
    const li = document.createElement("li");
    li.className = `job ${j.status}`;
    li.dataset.kind = j.kind;
    li.dataset.status = j.status;
    const name = KIND_NAMES[j.kind] || j.kind;
    let state = j.status;
    if (j.status === "running") {
      const pct = Math.round(100 * Math.max(0, Math.min(1, Number(j.fraction) || 0)));
      state = [`${phaseText(j.phase)} ${pct}%`, progressDetail(j)].filter(Boolean).join(" · ");
    } else if (j.status === "retrying") state = "retrying: its worker stopped, it runs once more";
    else if (j.status === "worker_lost") state = "failed: its worker stopped twice";
    else if (j.status === "queued" && j.interactive) state = "queued (interactive lane)";
    li.textContent = `${name}${j.what ? ` ${j.what}` : ""}: ${state}`;
    box.append(li);
  }
  box.classList.toggle("hidden", jobs.length === 0);
}

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
    const detail = progressDetail(d.progress);
    $("progress-text").textContent = `${phaseText(phase)} · ${(frac * 100).toFixed(0)}%${detail ? ` · ${detail}` : ""}`;
  }
  renderJobs();
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

