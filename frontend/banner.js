// Read-only mode and the API token: the read-only banner, the token form.
import { getToken, saveToken, writesNeedToken } from "./api.js";
import { showMessage } from "./notices.js";
import { $, assign, emit, st } from "./state.js";

export function setReadOnly(on) {
  assign({ readOnly: on });
  $("readonly-note").classList.toggle("hidden", !on);
  if (on) $("token-box").open = true;
  emit("readonly", on);
}

/** Draw the eye to the read-only banner (a click on a cell while read-only). */
export function pulseReadOnly() {
  const note = $("readonly-note");
  note.classList.remove("hidden");
  note.classList.add("pulse");
  $("token-box").open = true;
  setTimeout(() => note.classList.remove("pulse"), 1500);
}

export async function checkReadOnly() {
  const needs = await writesNeedToken(`/api/analyses/${encodeURIComponent(st.id)}/verify`, { components: [] });
  setReadOnly(needs === true && !getToken());
}

export async function initToken() {
  $("token-input").value = getToken();
  $("token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const ok = await saveToken($("token-input").value.trim(), $("token-status"));
    if (!ok) return; // a wrong token is not kept: the form says so, once
    showMessage("");
    await checkReadOnly();
  });
  await checkReadOnly();
}
