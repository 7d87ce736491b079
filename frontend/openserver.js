// Every page: on a server without API tokens, a banner says it is open to every local user
// (anyone with an account on this machine can read, start, cancel and delete analyses), and
// how to give members their own tokens. Reads GET /api/config (auth_required).
function banner() {
  const b = document.createElement("div");
  b.id = "open-server-banner";
  b.className = "open-server";
  b.setAttribute("role", "note");
  b.textContent =
    "This server has no API tokens: every user of this machine can read, start, cancel and delete its analyses. " +
    "To give each member a name and their own analyses, start it with a tokens file (PATCHAUDIT_TOKENS_FILE, see docs/SECURITY.md).";
  return b;
}

export async function showOpenBanner() {
  let config;
  try {
    const resp = await fetch("/api/config", { headers: { Accept: "application/json" } });
    if (!resp.ok) return;
    config = await resp.json();
  } catch {
    return;
  }
  if (config?.auth_required !== false || document.getElementById("open-server-banner")) return;
  const top = document.querySelector("header.top");
  if (top) top.after(banner());
  else document.body.prepend(banner());
}

showOpenBanner();
