// Click-to-verify (POST /verify) and Screen-Flag-Fix (POST /fix, or the page's own flags at
// another tau), and the controls that show their state: the flag count and the Fix button.
import { api, ApiError } from "./api.js";
import { compName, shortName } from "./cells.js";
import { pulseReadOnly, setReadOnly } from "./banner.js";
import { fmt, shapeOf, verifiedAt } from "./flags.js";
import { noticeText, showNotice } from "./notices.js";
import { $, ACTIVE, addLocalPending, assign, errorText, pendingKeys, pollSoon, renderAll, st } from "./state.js";
import { componentKey } from "./keys.js";

let posting = Promise.resolve();
/** Resolves once the last click's verify POST is answered: the panel's drill-down is requested
 * after it, so it never queues ahead of that click's verify (both run in the interactive lane). */
export const verifyPosted = () => posting;

export async function verify(components) {
  if (st.readOnly) {
    pulseReadOnly(); // the read-only banner already says what to do: one banner, not two
    return;
  }
  const todo = components.filter(([i, j]) => verifiedAt(st.result.verified, i, j) == null && !pendingKeys().has(componentKey(i, j)));
  if (!todo.length) {
    const [i, j] = components[0];
    const v = verifiedAt(st.result.verified, i, j);
    showNotice(v != null ? `${compName(i, j)} is verified: ${fmt(v)}.` : `${compName(i, j)} is being verified.`);
    return;
  }
  showNotice(`Verifying ${todo.map(([i, j]) => shortName(i, j)).join(", ")}…`);
  try {
    const req = api(`/api/analyses/${encodeURIComponent(st.id)}/verify`, { method: "POST", body: { components: todo }, write: true });
    posting = req.then(() => undefined, () => undefined);
    await req;
  } catch (err) {
    if (err instanceof ApiError && err.isAuth) setReadOnly(true);
    showNotice(`Could not verify: ${err.message}`, { error: true });
    return;
  }
  addLocalPending(todo.map(([i, j]) => componentKey(i, j)));
  renderAll();
  pollSoon(250);
}

/** Screen-Flag-Fix step 3. At the server's tau: POST /fix (the service reports the cost).
 * At another tau on the page: verify the cells flagged on the page, and report the cost
 * from the verifications (patched forwards) against a full sweep. */
export async function fixAll() {
  if (st.readOnly || st.busyFix) return;
  const [R, C] = shapeOf(st.result);
  const todo = [];
  for (let i = 0; i < R; i++)
    for (let j = 0; j < C; j++)
      if (st.flags.flags[i][j] && verifiedAt(st.result.verified, i, j) == null && !pendingKeys().has(componentKey(i, j))) todo.push([i, j]);
  const serverTau = typeof st.result.tau === "number" ? st.result.tau : null;
  const atServerTau = serverTau == null || Math.abs(serverTau - st.tau) < 1e-9;
  assign({ busyFix: true });
  renderControls();
  showNotice(`Screen-Flag-Fix: verifying ${todo.length} flagged component${todo.length === 1 ? "" : "s"}…`);
  try {
    if (atServerTau) {
      assign({ pageFix: null });
      await api(`/api/analyses/${encodeURIComponent(st.id)}/fix`, { method: "POST", write: true });
    } else {
      assign({ pageFix: { tau: st.tau, components: todo.map(([i, j]) => componentKey(i, j)), since: (st.data.verifications || []).length } });
      if (todo.length) await api(`/api/analyses/${encodeURIComponent(st.id)}/verify`, { method: "POST", body: { components: todo }, write: true });
    }
  } catch (err) {
    if (err instanceof ApiError && err.isAuth) setReadOnly(true);
    showNotice(`Could not run Fix: ${err.message}`, { error: true });
    assign({ busyFix: false, pageFix: null });
    renderControls();
    return;
  }
  assign({ fixPosted: true });
  addLocalPending(todo.map(([i, j]) => componentKey(i, j)));
  renderAll();
  pollSoon(250);
}

export function renderControls() {
  if (!st.result || !st.flags) return;
  const [R, C] = shapeOf(st.result);
  const f = st.flags;
  let unverified = 0;
  for (let i = 0; i < R; i++)
    for (let j = 0; j < C; j++) if (f.flags[i][j] && verifiedAt(st.result.verified, i, j) == null) unverified++;
  $("flag-count").textContent = `${f.count} of ${R * C} (${f.material} material), ${unverified} not yet verified`;
  const pend = pendingKeys().size + (ACTIVE.has(st.result.fix?.status) ? 1 : 0);
  // Fix is over once its POST was answered and nothing is pending any more.
  if (st.busyFix && st.fixPosted && pend === 0 && !ACTIVE.has(st.data?.status)) {
    assign({ busyFix: false, fixPosted: false });
    const fx = st.result.fix;
    // a Fix whose worker stopped twice (or that raised) says so, it does not just end
    if (fx?.status === "failed") showNotice(`Fix failed: ${errorText(fx.error) || "no reason was given"}`, { error: true });
    else showNotice("");
  }
  if (!st.busyFix && pend === 0 && /^Verifying /.test(noticeText())) showNotice("");
  const fix = $("fix");
  fix.disabled = st.readOnly || st.busyFix || pend > 0 || unverified === 0;
  fix.title = st.readOnly ? "Read-only: needs an API token" : unverified === 0 ? "Nothing flagged is left to verify" : "";
  fix.textContent = st.busyFix || pend > 0 ? "Fixing…" : "Fix all flagged";
}

