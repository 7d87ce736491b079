// New-analysis page: model, task, defaults and limits from the API (GET /api/config), custom
// pairs checked token by token (debounced /api/tokenize) before anything is queued, kept in
// localStorage across reloads, pasted in bulk (POST /api/pairs/parse); the model's vocabulary
// (GET /api/models/{name}/vocab); /?from=<id> fills the form with that analysis's request.
import { api, ApiError, debounce, el, getToken, saveToken, writesNeedToken } from "./api.js";

const $ = (id) => document.getElementById(id);

const state = {
  tasks: [],
  models: [],
  pairs: [{ clean: "", corrupted: "", answer: "", wrong: "" }],
  tokens: [], // per pair: tokenize answer or null
  tokenizing: false,
  tokenizeError: null,
  tokenizeUnavailable: false,
  tokenSeq: 0,
  submitting: false,
  readOnly: false,
  config: null, // GET /api/config: {defaults, limits, auth_required}
  vocab: new Map(), // model -> {size, words} or {error}
};

const PAIRS_KEY = "patchaudit.pairs";
const EMPTY_PAIR = () => ({ clean: "", corrupted: "", answer: "", wrong: "" });

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
    state.models = Array.isArray(models) ? models : models.models || [];
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
    state.tasks = Array.isArray(tasks) ? tasks : tasks.tasks || [];
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

// ---------------------------------------------------------------- custom pairs
const FIELDS = [
  ["clean", "Clean prompt"],
  ["corrupted", "Corrupted prompt"],
  ["answer", "Answer"],
  ["wrong", "Wrong answer"],
];

function renderPairs() {
  const box = $("pairs");
  box.replaceChildren();
  state.pairs.forEach((p, idx) => {
    const grid = el("div", { class: "pair-grid" });
    for (const [key, label] of FIELDS) {
      const id = `pair-${idx}-${key}`;
      const input = el("input", { type: "text", id, value: p[key], "data-key": key, autocomplete: "off", spellcheck: "false" });
      input.value = p[key];
      input.addEventListener("input", () => {
        state.pairs[idx][key] = input.value;
        savePairs();
        scheduleTokenize();
      });
      grid.append(el("div", { class: "field" }, el("label", { for: id, text: `${label}` }), input));
    }
    const remove = el("button", {
      type: "button",
      class: "small danger",
      "aria-label": `Remove pair ${idx + 1}`,
      disabled: state.pairs.length <= 1,
      onclick: () => {
        state.pairs.splice(idx, 1);
        state.tokens.splice(idx, 1);
        savePairs();
        renderPairs();
        scheduleTokenize();
      },
    }, "Remove");
    grid.append(remove);
    const pairBox = el("div", { class: "pair", id: `pair-${idx}`, "data-index": idx },
      el("div", { class: "small muted" }, `Pair ${idx + 1}`), grid,
      el("div", { class: "tokens", id: `pair-${idx}-tokens`, "aria-live": "polite" }),
      el("ul", { class: "problems", id: `pair-${idx}-problems` }));
    box.append(pairBox);
  });
  renderTokens();
}

function tokenLine(what, toks, other) {
  const line = el("div", { class: "line" }, el("span", { class: "what", text: `${what} (${toks.length})` }));
  toks.forEach((t, k) => {
    const diff = other && other[k] !== t;
    line.append(el("span", { class: diff ? "tok diff" : "tok", text: t }));
  });
  return line;
}

/** Problems of one pair: empty fields, the server's problems, and our own length checks. */
function pairProblems(idx) {
  const p = state.pairs[idx];
  const probs = [];
  const empty = FIELDS.filter(([k]) => !p[k]).map(([, label]) => label.toLowerCase());
  if (empty.length) probs.push(`Fill in: ${empty.join(", ")}.`);
  const tk = state.tokens[idx];
  if (tk && !empty.length) {
    for (const pr of tk.problems || []) probs.push(pr);
    if (!(tk.problems || []).length) {
      const nc = tk.clean_tokens?.length ?? 0;
      const nx = tk.corrupted_tokens?.length ?? 0;
      if (nc !== nx) probs.push(`The clean prompt has ${nc} tokens and the corrupted prompt ${nx}: they must be the same length.`);
      if ((tk.answer_tokens?.length ?? 1) !== 1) probs.push(`The answer is ${tk.answer_tokens.length} tokens: it must be one token.`);
      if ((tk.wrong_tokens?.length ?? 1) !== 1) probs.push(`The wrong answer is ${tk.wrong_tokens.length} tokens: it must be one token.`);
    }
  }
  return probs;
}

function renderTokens() {
  state.pairs.forEach((p, idx) => {
    const tokBox = $(`pair-${idx}-tokens`);
    const probBox = $(`pair-${idx}-problems`);
    const pairBox = $(`pair-${idx}`);
    if (!tokBox) return;
    tokBox.replaceChildren();
    probBox.replaceChildren();
    const tk = state.tokens[idx];
    if (tk) {
      tokBox.append(tokenLine("clean", tk.clean_tokens || [], tk.corrupted_tokens));
      tokBox.append(tokenLine("corrupted", tk.corrupted_tokens || [], tk.clean_tokens));
      const ans = el("div", { class: "line" }, el("span", { class: "what", text: "answer / wrong" }));
      for (const t of tk.answer_tokens || []) ans.append(el("span", { class: "tok", text: t }));
      ans.append(" / ");
      for (const t of tk.wrong_tokens || []) ans.append(el("span", { class: "tok", text: t }));
      tokBox.append(ans);
    }
    const probs = pairProblems(idx);
    const shown = probs.filter((pr) => !pr.startsWith("Fill in") || p.clean || p.corrupted || p.answer || p.wrong);
    for (const pr of shown) probBox.append(el("li", { text: pr }));
    pairBox.classList.toggle("bad", tk != null && shown.length > 0);
  });
  updateSubmit();
}

async function tokenize() {
  const seq = ++state.tokenSeq;
  const complete = state.pairs.filter((p) => p.clean || p.corrupted || p.answer || p.wrong);
  if (!complete.length) {
    state.tokenizing = false;
    state.tokens = [];
    renderTokens();
    return;
  }
  try {
    const body = { model: $("model").value, pairs: state.pairs.map((p) => ({ ...p })) };
    const res = await api("/api/tokenize", { method: "POST", body });
    if (seq !== state.tokenSeq) return; // a newer request is on its way
    state.tokens = res.pairs || [];
    state.tokenizeError = null;
    state.tokenizeUnavailable = false;
  } catch (err) {
    if (seq !== state.tokenSeq) return;
    state.tokens = [];
    if (err instanceof ApiError && (err.status === 404 || err.status === 405)) {
      state.tokenizeUnavailable = true;
      state.tokenizeError = null;
    } else {
      state.tokenizeError = err.message;
    }
  }
  state.tokenizing = false;
  renderTokens();
}

const tokenizeSoon = debounce(tokenize, 350);
function scheduleTokenize() {
  state.tokenizing = true;
  state.tokenSeq++; // invalidate answers in flight
  updateSubmit();
  tokenizeSoon();
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
  if (lim.max_pairs != null && state.pairs.length > lim.max_pairs) return `${state.pairs.length} pairs is over this server's limit of ${lim.max_pairs}.`;
  if (state.tokenizing) return "Checking tokens…";
  if (state.tokenizeError) return `Cannot check the pairs: ${state.tokenizeError}`;
  const bad = [];
  state.pairs.forEach((_, idx) => {
    if (pairProblems(idx).length) bad.push(idx + 1);
  });
  if (bad.length) {
    // Name the first problem (e.g. the unknown words) in the form's own message.
    const first = pairProblems(bad[0] - 1)[0];
    return `Fix pair ${bad.join(", ")} first: ${first}${bad.length > 1 ? " (see the problems under each)" : ""}`;
  }
  if (!state.tokenizeUnavailable && state.tokens.length !== state.pairs.length) return "Checking tokens…";
  return "";
}

function updateSubmit() {
  const reason = blockReason();
  $("submit").disabled = !!reason;
  $("submit-reason").textContent = reason;
  $("readonly-note").classList.toggle("hidden", !state.readOnly);
}

function buildRequest() {
  const custom = source() === "custom";
  const req = {
    model: $("model").value,
    task: custom ? null : $("task").value,
    n_pairs: custom ? state.pairs.length : intValue("n_pairs"),
    seed: custom ? 0 : intValue("seed"),
    pairs: custom ? state.pairs.map((p) => ({ ...p })) : null,
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

// ---------------------------------------------------------------- pairs kept across reloads
function savePairs() {
  try {
    localStorage.setItem(PAIRS_KEY, JSON.stringify({ source: source(), pairs: state.pairs }));
  } catch {
    /* storage disabled: pairs live for this page only */
  }
}

function restorePairs() {
  let saved = null;
  try {
    saved = JSON.parse(localStorage.getItem(PAIRS_KEY) || "null");
  } catch {
    saved = null;
  }
  if (!saved || !Array.isArray(saved.pairs) || !saved.pairs.length) return;
  state.pairs = saved.pairs.map((p) => ({ ...EMPTY_PAIR(), ...p }));
  if (saved.source === "custom") document.querySelector('input[name="source"][value="custom"]').checked = true;
}

function setPairs(pairs) {
  state.pairs = pairs.length ? pairs.map((p) => ({ ...EMPTY_PAIR(), ...p })) : [EMPTY_PAIR()];
  state.tokens = [];
  savePairs();
  renderPairs();
  scheduleTokenize();
}

// ---------------------------------------------------------------- bulk paste
async function addBulk() {
  const status = $("bulk-status");
  status.classList.remove("bad");
  const text = $("bulk-text").value;
  if (!text.trim()) {
    status.textContent = "Paste some pairs first.";
    status.classList.add("bad");
    return;
  }
  status.textContent = "Reading the pairs…";
  try {
    const res = await api("/api/pairs/parse", { method: "POST", body: { text, format: $("bulk-format").value } });
    const blank = state.pairs.every((p) => !p.clean && !p.corrupted && !p.answer && !p.wrong);
    setPairs(blank ? res.pairs : state.pairs.concat(res.pairs));
    status.textContent = `Added ${res.pairs.length} pair${res.pairs.length === 1 ? "" : "s"} (${res.format.toUpperCase()}).`;
    $("bulk-text").value = "";
  } catch (err) {
    status.textContent = `The pairs were not added: ${err.message}`;
    status.classList.add("bad");
  }
}

// ---------------------------------------------------------------- vocabulary
async function showVocab() {
  if (!$("vocab-box").open) return;
  const model = $("model").value;
  const status = $("vocab-status");
  if (!state.vocab.has(model)) {
    status.textContent = "Loading the vocabulary…";
    try {
      state.vocab.set(model, await api(`/api/models/${encodeURIComponent(model)}/vocab`));
    } catch (err) {
      state.vocab.set(model, { error: err.message });
    }
  }
  if ($("model").value !== model) return;
  const v = state.vocab.get(model);
  status.classList.toggle("bad", !!v.error);
  status.textContent = v.error || "";
  $("vocab-size").textContent = v.error ? "" : `${v.size} words in ${model}'s vocabulary`;
  filterVocab();
}

function filterVocab() {
  const v = state.vocab.get($("model").value);
  const box = $("vocab-words");
  box.replaceChildren();
  if (!v || v.error) return;
  const q = $("vocab-filter").value.trim().toLowerCase();
  const words = q ? v.words.filter((w) => w.toLowerCase().includes(q)) : v.words;
  for (const w of words.slice(0, 2000)) box.append(el("span", { text: w }));
  if (words.length > 2000) box.append(el("span", { class: "muted", text: `… ${words.length - 2000} more` }));
  box.dataset.count = String(words.length);
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
  $("from-note").textContent = `Filled in from analysis ${from.slice(0, 8)}: change anything, then run it.`;
  setSource();
}

// ---------------------------------------------------------------- wiring
function setSource() {
  const custom = source() === "custom";
  savePairs();
  $("task-section").classList.toggle("hidden", custom);
  $("custom-section").classList.toggle("hidden", !custom);
  if (custom) scheduleTokenize();
  updateSubmit();
}

function fillExample() {
  const ex = currentTask()?.example;
  if (!ex) return;
  state.pairs = [{ clean: ex.clean, corrupted: ex.corrupted, answer: ex.answer, wrong: ex.wrong }];
  state.tokens = [];
  savePairs();
  renderPairs();
  scheduleTokenize();
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
  $("add-pair").addEventListener("click", () => {
    state.pairs.push(EMPTY_PAIR());
    savePairs();
    renderPairs();
    document.getElementById(`pair-${state.pairs.length - 1}-clean`)?.focus();
    scheduleTokenize();
  });
  $("fill-example").addEventListener("click", fillExample);
  $("clear-pairs").addEventListener("click", () => setPairs([]));
  $("bulk-add").addEventListener("click", addBulk);
  $("vocab-box").addEventListener("toggle", showVocab);
  $("vocab-filter").addEventListener("input", filterVocab);
  $("analysis-form").addEventListener("submit", submit);
  $("analysis-form").addEventListener("input", updateSubmit);
  $("analysis-form").addEventListener("change", updateSubmit);
  restorePairs();
  renderPairs();
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
