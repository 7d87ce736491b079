// Read-only mode and the API token: the read-only banner, the token form.
import { getToken, setToken, writesNeedToken } from "./api.js";
import { showMessage } from "./notices.js";
import { $, emit, st } from "./state.js";

export function setReadOnly(on) {
  st.readOnly = on;
  $("readonly-note").classList.toggle("hidden", !on);
  if (on) $("token-box").open = true;
  emit("readonly", on);
}

export async function checkReadOnly() {
  const needs = await writesNeedToken(`/api/analyses/${encodeURIComponent(st.id)}/verify`, { components: [] });
  setReadOnly(needs === true && !getToken());
}

export async function initToken() {
  $("token-input").value = getToken();
  $("token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    setToken($("token-input").value.trim());
    showMessage("");
    await checkReadOnly();
  });
  await checkReadOnly();
}
