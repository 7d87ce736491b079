// Thin client for the patchaudit REST API (same origin, no build step).
// Every error becomes an ApiError whose message is meant for a person: the API's
// `detail` (a string, or FastAPI's list of {loc, msg}), never a traceback.

const TOKEN_KEY = "patchaudit.token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
  get isAuth() {
    return this.status === 401 || this.status === 403;
  }
}

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage disabled: the token lives for this page only */
  }
}

/** Turn a FastAPI `detail` (string | [{loc, msg}] | object) into readable text. */
export function formatDetail(detail) {
  if (detail == null) return "";
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((d) => {
        if (typeof d === "string") return d;
        const loc = Array.isArray(d.loc)
          ? d.loc.filter((p) => p !== "body").join(" → ")
          : "";
        const msg = d.msg || d.message || JSON.stringify(d);
        return loc ? `${loc}: ${msg}` : msg;
      })
      .join("\n");
  }
  if (typeof detail === "object") {
    if (detail.message) return String(detail.message);
    if (detail.msg) return String(detail.msg);
    return JSON.stringify(detail);
  }
  return String(detail);
}

const STATUS_HINT = {
  401: "This server needs an API token for changes. Enter it under “API token”.",
  403: "The API token was refused. Check it under “API token”.",
  404: "Not found. The link may be wrong, or the analysis was deleted.",
  413: "The request is too large for this server. Use fewer or shorter prompt pairs.",
  422: "The request was refused.",
  429: "The server is busy. Try again in a moment.",
  500: "The server failed while handling the request.",
  502: "The server cannot be reached.",
  503: "The server is not ready. Try again in a moment.",
};

async function errorFrom(resp) {
  let detail = null;
  let said = "";
  try {
    const body = await resp.json();
    detail = body && typeof body === "object" && "detail" in body ? body.detail : body;
    // The service adds a one-sentence `message`; FastAPI's own errors only have `detail`.
    if (body && typeof body.message === "string") said = body.message;
  } catch {
    /* not JSON: never show raw bodies (could be a traceback page) */
  }
  let text = said || formatDetail(detail);
  // Refuse to show anything that looks like a Python traceback.
  if (/Traceback \(most recent call last\)/.test(text)) text = "";
  const hint = STATUS_HINT[resp.status] || `The server answered ${resp.status}.`;
  // 422 and auth errors: the server's own sentence is the message (the hint would repeat it).
  const own = resp.status === 422 || resp.status === 401 || resp.status === 403;
  return new ApiError(resp.status, text ? (own ? text : `${hint} ${text}`.trim()) : hint);
}

export async function api(path, { method = "GET", body = undefined, write = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (write || method !== "GET") {
    const token = getToken();
    if (token) headers["X-API-Token"] = token;
  }
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "The server cannot be reached. Is `patchaudit serve` running?");
  }
  if (!resp.ok) throw await errorFrom(resp);
  if (resp.status === 204) return null;
  const type = resp.headers.get("content-type") || "";
  return type.includes("json") ? resp.json() : resp.text();
}

/**
 * Whether writes need a token we do not hold (true), or not (false); null when unknown.
 * 1. /healthz may say so (`auth_required` / `token_required`).
 * 2. Otherwise `probePath` is POSTed an invalid `probeBody` with the held token: the server
 *    checks the token before the body, so 401/403 means "token needed or wrong" and 422 means
 *    "writes allowed". An invalid body never starts anything.
 */
export async function writesNeedToken(probePath = null, probeBody = {}) {
  try {
    const resp = await fetch("/healthz", { headers: { Accept: "application/json" } });
    if (resp.ok) {
      const body = await resp.json();
      for (const key of ["auth_required", "token_required", "writes_need_token"]) {
        if (body && typeof body[key] === "boolean") return body[key] && !getToken() ? true : body[key] ? null : false;
      }
    }
  } catch {
    /* fall through to the probe */
  }
  if (!probePath) return null;
  try {
    const headers = { Accept: "application/json", "Content-Type": "application/json" };
    const token = getToken();
    if (token) headers["X-API-Token"] = token;
    const resp = await fetch(probePath, { method: "POST", headers, body: JSON.stringify(probeBody) });
    if (resp.status === 401 || resp.status === 403) return true;
    if (resp.status === 422 || resp.status === 400) return false;
  } catch {
    /* unknown */
  }
  return null;
}

/**
 * Check a token with GET /api/whoami before keeping it. Returns {ok, message}: ok=false with
 * the server's plain message when the token is wrong; ok=true (message "") when it is right
 * or no token is needed; ok=null when the server cannot say (no /api/whoami).
 */
export async function checkToken(token) {
  const headers = { Accept: "application/json" };
  if (token) headers["X-API-Token"] = token;
  let resp;
  try {
    resp = await fetch("/api/whoami", { headers });
  } catch {
    return { ok: null, message: "The server cannot be reached to check the token." };
  }
  if (resp.ok) {
    let body = {};
    try {
      body = await resp.json();
    } catch {
      /* keep {} */
    }
    if (body.token_ok === false && body.auth_required) return { ok: false, message: "The server refused this API token: it is wrong." };
    return { ok: true, message: "", authRequired: !!body.auth_required };
  }
  if (resp.status === 401 || resp.status === 403) {
    const err = await errorFrom(resp);
    const said = err.message;
    return { ok: false, message: /wrong|invalid|refused|incorrect/i.test(said) ? said : `That API token is wrong. ${said}`.trim() };
  }
  return { ok: null, message: "" };
}

/**
 * The token form's Save, on either page: check the token first, keep it only when the server
 * accepts it (or cannot say), and write one clear line into `statusEl`.
 */
export async function saveToken(token, statusEl) {
  statusEl.textContent = token ? "Checking the token…" : "";
  statusEl.classList.remove("bad");
  const res = token ? await checkToken(token) : { ok: true, message: "" };
  if (res.ok === false) {
    statusEl.textContent = res.message;
    statusEl.classList.add("bad");
    return false;
  }
  setToken(token);
  statusEl.textContent = token ? (res.ok ? "Token accepted." : "Token saved (the server could not check it).") : "Token cleared.";
  return true;
}

/** Debounce: run fn once calls stop for `ms`. */
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (v === true) node.setAttribute(k, "");
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
