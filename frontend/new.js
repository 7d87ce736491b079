// New-analysis page: model and task from the API, custom pairs checked token by token
// (debounced /api/tokenize) before anything is queued.
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
    state.models = Array.isArray(models) ? models : models.models || [];
  } catch (err) {
    showError(`Could not list the models: ${err.message}`);
    return;
  }
  const sel = $("model");
  sel.replaceChildren();
  for (const m of state.models) {
    const name = typeof m === "string" ? m : m.name;
    sel.append(el("option", { value: name, text: name }));
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
  for (const [id, name] of [["hvp_probes", "HVP probes"], ["ig_steps", "steps"]]) {
    const v = intValue(id);
    if (!(v >= 1)) return `Set ${name} to a whole number of at least 1.`;
  }
  if (source() === "task") {
    if (!currentTask()) return "No task available.";
    const n = intValue("n_pairs");
    if (!(n >= 1)) return "Set the number of pairs to a whole number of at least 1.";
    if (!(intValue("seed") >= 0)) return "Set the seed to a whole number.";
    return "";
  }
  if (state.tokenizing) return "Checking tokens…";
  if (state.tokenizeError) return `Cannot check the pairs: ${state.tokenizeError}`;
  const bad = [];
  state.pairs.forEach((_, idx) => {
    if (pairProblems(idx).length) bad.push(idx + 1);
  });
  if (bad.length) return `Fix pair ${bad.join(", ")} first (see the problems under ${bad.length > 1 ? "them" : "it"}).`;
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

// ---------------------------------------------------------------- wiring
function setSource() {
  const custom = source() === "custom";
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
    if (source() === "custom") scheduleTokenize();
  });
  $("add-pair").addEventListener("click", () => {
    state.pairs.push({ clean: "", corrupted: "", answer: "", wrong: "" });
    renderPairs();
    document.getElementById(`pair-${state.pairs.length - 1}-clean`)?.focus();
    scheduleTokenize();
  });
  $("fill-example").addEventListener("click", fillExample);
  $("analysis-form").addEventListener("submit", submit);
  $("analysis-form").addEventListener("input", updateSubmit);
  $("analysis-form").addEventListener("change", updateSubmit);
  renderPairs();
  updateSubmit();
  Promise.all([loadModels(), loadTasks(), initToken()]).then(() => {
    document.body.dataset.ready = "1";
    updateSubmit();
  });
}

init();
