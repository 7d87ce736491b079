// New-analysis page, the form's wiring: model, task (GET /api/tasks: the server's one task
// registry), defaults and limits from the API (GET /api/config), the submit (POST
// /api/analyses), the API token; /?from=<id> fills the form with that analysis's request.
// The custom pairs are pairs-editor.js, the vocabulary browser vocab.js.
import { api, ApiError, el, getToken, saveToken, writesNeedToken } from "./api.js";
import { initPairs, pairsBlockReason, pairsForRequest, scheduleTokenize, setPairs, sourceChanged } from "./pairs-editor.js";
import { initVocab, showVocab } from "./vocab.js";

const $ = (id) => document.getElementById(id);

const state = {
  tasks: [],
  models: [],
  submitting: false,
  readOnly: false,
  config: null, // GET /api/config: {defaults, limits, auth_required}
};

function source() {
  return document.querySelector('input[name="source"]:checked').value;
}

function showError(message) {
  const box = $("form-error");
  box.textContent = message || "";
  if (message) box.scrollIntoView({ block: "nearest" });
}

// ---------------------------------------------------------------- models and tasks
async function loadModels() {
  try {
    const models = await api("/api/models");
    state.models = models;
  } catch (err) {
    showError(`Could not list the models: ${err.message}`);
    return;
  }
  const sel = $("model");
  sel.replaceChildren();
  for (const m of state.models) {
    const name = typeof m === "string" ? m : m.name;
    const off = m.enabled === false;
    const opt = el("option", {
      value: name,
      text: off ? `${name} (not enabled: ${m.enable_with || "ask the operator"})` : name,
      disabled: off,
    });
    sel.append(opt);
  }
  const bundled = state.models.find((m) => m.bundled || m.name === "bundled");
  if (bundled) sel.value = bundled.name;
  describeModel();
}

function describeModel() {
  const m = state.models.find((x) => x.name === $("model").value);
  const bits = [];
  if (m?.description) bits.push(m.description);
  if (m?.n_layers && m?.n_heads) bits.push(`${m.n_layers} layers × ${m.n_heads} heads`);
  if (m?.enabled === false && m?.enable_with) bits.push(`not enabled: set ${m.enable_with}`);
  $("model-desc").textContent = bits.join(" · ");
}

async function loadTasks() {
  try {
    const tasks = await api("/api/tasks");
    state.tasks = tasks; // the server's one task registry (patchaudit.tasks)
  } catch (err) {
    showError(`Could not list the tasks: ${err.message}`);
    return;
  }
  const sel = $("task");
  sel.replaceChildren();
  for (const t of state.tasks) sel.append(el("option", { value: t.name, text: t.name }));
  if (state.tasks.some((t) => t.name === "ioi")) sel.value = "ioi";
  describeTask();
}

function currentTask() {
  return state.tasks.find((t) => t.name === $("task").value) || state.tasks[0] || null;
}

function exampleBlock(ex) {
  if (!ex) return null;
  return el(
    "div",
    { class: "example", "aria-label": "example prompt pair" },
    el("div", {}, "clean:     ", ex.clean ?? ""),
    el("div", {}, "corrupted: ", ex.corrupted ?? ""),
    el("div", {}, "answer: ", el("b", { text: JSON.stringify(ex.answer ?? "") }), "   wrong: ", el("b", { text: JSON.stringify(ex.wrong ?? "") })),
  );
}

function describeTask() {
  const t = currentTask();
  const box = $("task-info");
  box.replaceChildren();
  if (!t) return;
  if (t.description) box.append(el("p", { class: "muted", style: "margin:0.4rem 0 0" }, t.description));
  const sel = $("corruption");
  sel.replaceChildren(el("option", { value: "", text: t.corruptions?.length ? `default (${t.corruptions[0]})` : "default" }));
  for (const c of t.corruptions || []) sel.append(el("option", { value: c, text: c }));
  sel.disabled = !(t.corruptions?.length > 1);
  box.append(exampleBlock(t.example));
}

// ---------------------------------------------------------------- site edges
// An edge analysis computes EAP ("atp"), EAP-IG ("ig"), the HVP-corrected edge ("hvp") and edge
// patching ("ap"); the other methods are node methods: off and disabled while edges is chosen.
const EDGE_METHODS = new Set(["atp", "ig", "hvp", "ap"]);

function siteMethods() {
  const edges = $("site").value === "edges";
  for (const c of document.querySelectorAll('input[name="methods"]')) {
    const off = edges && !EDGE_METHODS.has(c.value);
    if (off) c.checked = false;
    c.disabled = off;
    c.closest("label")?.classList.toggle("muted", off);
  }
}

// ---------------------------------------------------------------- submit
function methods() {
  return [...document.querySelectorAll('input[name="methods"]:checked')].map((c) => c.value);
}

function intValue(id) {
  const v = $(id).value.trim();
  return /^\d+$/.test(v) ? Number(v) : NaN;
}

/** Why the form cannot be submitted now, or "" when it can. */
function blockReason() {
  if (state.readOnly) return "Read-only: enter an API token to start an analysis.";
  if (state.submitting) return "Submitting…";
  if (!methods().length) return "Choose at least one method.";
  const lim = state.config?.limits || {};
  for (const [id, name, max] of [["hvp_probes", "HVP probes", lim.max_hvp_probes], ["ig_steps", "steps", lim.max_ig_steps]]) {
    const v = intValue(id);
    if (!(v >= 1)) return `Set ${name} to a whole number of at least 1.`;
    if (max != null && v > max) return `Set ${name} to at most ${max} (this server's limit).`;
  }
  if (source() === "task") {
    if (!currentTask()) return "No task available.";
    const n = intValue("n_pairs");
    if (!(n >= 1)) return "Set the number of pairs to a whole number of at least 1.";
    if (lim.max_pairs != null && n > lim.max_pairs) return `Set the number of pairs to at most ${lim.max_pairs} (this server's limit).`;
    if (!(intValue("seed") >= 0)) return "Set the seed to a whole number.";
    return "";
  }
  return pairsBlockReason(lim);
}

function updateSubmit() {
  const reason = blockReason();
  $("submit").disabled = !!reason;
  $("submit-reason").textContent = reason;
  $("readonly-note").classList.toggle("hidden", !state.readOnly);
}

function buildRequest() {
  const custom = source() === "custom";
  const pairs = custom ? pairsForRequest() : null;
  const req = {
    model: $("model").value,
    task: custom ? null : $("task").value,
    n_pairs: custom ? pairs.length : intValue("n_pairs"),
    seed: custom ? 0 : intValue("seed"),
    pairs,
    site: $("site").value,
    metric: $("metric").value,
    direction: $("direction").value,
    methods: methods(),
    hvp_probes: intValue("hvp_probes"),
    ig_steps: intValue("ig_steps"),
  };
  if (!custom && $("corruption").value) req.corruption = $("corruption").value;
  return req;
}

async function submit(ev) {
  ev.preventDefault();
  if (blockReason()) return;
  showError("");
  state.submitting = true;
  updateSubmit();
  try {
    const res = await api("/api/analyses", { method: "POST", body: buildRequest(), write: true });
    const url = res.url || `/a/${res.id}`;
    window.location.assign(url);
    return;
  } catch (err) {
    if (err instanceof ApiError && err.isAuth) {
      state.readOnly = true;
      $("token-box").open = true;
    }
    showError(`The analysis was not started. ${err.message}`);
  }
  state.submitting = false;
  updateSubmit();
}


// ---------------------------------------------------------------- defaults and limits
async function loadConfig() {
  try {
    state.config = await api("/api/config");
  } catch (err) {
    showError(`Could not read the server's defaults and limits: ${err.message}`);
    return;
  }
  const { defaults = {}, limits = {} } = state.config;
  const set = (id, value, max) => {
    const input = $(id);
    if (value != null && input.value === "") input.value = String(value);
    if (max != null) input.max = String(max);
  };
  set("hvp_probes", defaults.hvp_probes, limits.max_hvp_probes);
  set("ig_steps", defaults.ig_steps, limits.max_ig_steps);
  set("n_pairs", defaults.n_pairs, limits.max_pairs);
  $("limits-note").textContent =
    `This server's limits: ${limits.max_pairs} pairs, ${limits.max_hvp_probes} HVP probes, ${limits.max_ig_steps} steps` +
    (limits.max_prompt_tokens ? `, ${limits.max_prompt_tokens} tokens a prompt.` : ".");
}

// ---------------------------------------------------------------- edit and re-run
/** /?from=<id>: fill the form with that analysis's request. */
async function fillFromAnalysis() {
  const from = new URLSearchParams(window.location.search).get("from");
  if (!from) return;
  let data;
  try {
    data = await api(`/api/analyses/${encodeURIComponent(from)}`);
  } catch (err) {
    showError(`Could not load the analysis to edit: ${err.message}`);
    return;
  }
  const req = data.request || {};
  const setVal = (id, v) => {
    if (v != null && $(id)) $(id).value = String(v);
  };
  if (req.model && [...$("model").options].some((o) => o.value === req.model)) $("model").value = req.model;
  describeModel();
  const custom = Array.isArray(req.pairs) && req.pairs.length > 0;
  document.querySelector(`input[name="source"][value="${custom ? "custom" : "task"}"]`).checked = true;
  if (custom) {
    setPairs(req.pairs);
  } else {
    setVal("task", req.task);
    describeTask();
    setVal("corruption", req.corruption || "");
    setVal("n_pairs", req.n_pairs);
    setVal("seed", req.seed);
  }
  for (const k of ["site", "metric", "direction", "hvp_probes", "ig_steps"]) setVal(k, req[k]);
  const methods = new Set(req.methods || []);
  for (const c of document.querySelectorAll('input[name="methods"]')) c.checked = methods.has(c.value);
  siteMethods();
  $("from-note").textContent = `Filled in from analysis ${from.slice(0, 8)}: change anything, then run it.`;
  setSource();
}

// ---------------------------------------------------------------- wiring
function setSource() {
  const custom = source() === "custom";
  sourceChanged();
  $("task-section").classList.toggle("hidden", custom);
  $("custom-section").classList.toggle("hidden", !custom);
  if (custom) scheduleTokenize();
  updateSubmit();
}

async function initToken() {
  $("token-input").value = getToken();
  $("token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!(await saveToken($("token-input").value.trim(), $("token-status")))) return;
    state.readOnly = false;
    checkReadOnly();
  });
  await checkReadOnly();
}

async function checkReadOnly() {
  const needs = await writesNeedToken("/api/analyses", { methods: [] });
  state.readOnly = needs === true && !getToken();
  if (state.readOnly) $("token-box").open = true;
  updateSubmit();
}

function init() {
  for (const r of document.querySelectorAll('input[name="source"]')) r.addEventListener("change", setSource);
  $("task").addEventListener("change", describeTask);
  $("model").addEventListener("change", () => {
    describeModel();
    showVocab();
    if (source() === "custom") scheduleTokenize();
  });
  $("site").addEventListener("change", siteMethods);
  $("analysis-form").addEventListener("submit", submit);
  $("analysis-form").addEventListener("input", updateSubmit);
  $("analysis-form").addEventListener("change", updateSubmit);
  initVocab(() => $("model").value);
  const custom = initPairs({
    model: () => $("model").value,
    source,
    onChange: updateSubmit,
    example: () => currentTask()?.example,
  });
  if (custom) document.querySelector('input[name="source"][value="custom"]').checked = true;
  updateSubmit();
  Promise.all([loadModels(), loadTasks(), loadConfig(), initToken()])
    .then(fillFromAnalysis)
    .then(() => {
      setSource();
      document.body.dataset.ready = "1";
      updateSubmit();
    });
}

init();
