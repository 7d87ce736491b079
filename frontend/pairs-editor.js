// The custom-pairs editor of the new-analysis page: the pairs (one row of four fields each),
// checked token by token (debounced POST /api/tokenize) before anything is queued, kept in
// localStorage across reloads, pasted in bulk (POST /api/pairs/parse). It owns its state and
// its DOM (#pairs, #bulk-*); the form (new.js) reads `pairsBlockReason()` and `pairsForRequest()`
// and hears about every change through the `onChange` it passed to `initPairs`.
import { api, ApiError, debounce, el } from "./api.js";

const $ = (id) => document.getElementById(id);

const PAIRS_KEY = "patchaudit.pairs";
const EMPTY_PAIR = () => ({ clean: "", corrupted: "", answer: "", wrong: "" });

const FIELDS = [
  ["clean", "Clean prompt"],
  ["corrupted", "Corrupted prompt"],
  ["answer", "Answer"],
  ["wrong", "Wrong answer"],
];

const state = {
  pairs: [EMPTY_PAIR()],
  tokens: [], // per pair: tokenize answer or null
  tokenizing: false,
  tokenizeError: null,
  tokenizeUnavailable: false,
  tokenSeq: 0,
};

// What the form tells the editor: the model the pairs are tokenized for, the pair source
// ("task" or "custom", kept with the pairs) and whom to tell about a change.
let form = { model: () => "bundled", source: () => "task", onChange: () => {} };

// ---------------------------------------------------------------- state changes
function savePairs() {
  try {
    localStorage.setItem(PAIRS_KEY, JSON.stringify({ source: form.source(), pairs: state.pairs }));
  } catch {
    /* storage disabled: pairs live for this page only */
  }
}

/** Replace every pair (an empty list leaves one blank pair). */
export function setPairs(pairs) {
  state.pairs = pairs.length ? pairs.map((p) => ({ ...EMPTY_PAIR(), ...p })) : [EMPTY_PAIR()];
  state.tokens = [];
  savePairs();
  renderPairs();
  scheduleTokenize();
}

function addPair() {
  state.pairs.push(EMPTY_PAIR());
  savePairs();
  renderPairs();
  document.getElementById(`pair-${state.pairs.length - 1}-clean`)?.focus();
  scheduleTokenize();
}

function removePair(idx) {
  state.pairs.splice(idx, 1);
  state.tokens.splice(idx, 1);
  savePairs();
  renderPairs();
  scheduleTokenize();
}

function editPair(idx, key, value) {
  state.pairs[idx][key] = value;
  savePairs();
  scheduleTokenize();
}

/** The pairs a previous visit left, and whether they were the chosen source (custom). */
function restorePairs() {
  let saved = null;
  try {
    saved = JSON.parse(localStorage.getItem(PAIRS_KEY) || "null");
  } catch {
    saved = null;
  }
  if (!saved || !Array.isArray(saved.pairs) || !saved.pairs.length) return false;
  state.pairs = saved.pairs.map((p) => ({ ...EMPTY_PAIR(), ...p }));
  return saved.source === "custom";
}

/** The source changed (task / custom): keep it with the pairs. */
export function sourceChanged() {
  savePairs();
}

// ---------------------------------------------------------------- render
function renderPairs() {
  const box = $("pairs");
  box.replaceChildren();
  state.pairs.forEach((p, idx) => {
    const grid = el("div", { class: "pair-grid" });
    for (const [key, label] of FIELDS) {
      const id = `pair-${idx}-${key}`;
      const input = el("input", { type: "text", id, value: p[key], "data-key": key, autocomplete: "off", spellcheck: "false" });
      input.value = p[key];
      input.addEventListener("input", () => editPair(idx, key, input.value));
      grid.append(el("div", { class: "field" }, el("label", { for: id, text: `${label}` }), input));
    }
    const remove = el("button", {
      type: "button",
      class: "small danger",
      "aria-label": `Remove pair ${idx + 1}`,
      disabled: state.pairs.length <= 1,
      onclick: () => removePair(idx),
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
  form.onChange();
}

// ---------------------------------------------------------------- tokenize
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
    const body = { model: form.model(), pairs: state.pairs.map((p) => ({ ...p })) };
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

/** Check the pairs again (after an edit, or for another model). */
export function scheduleTokenize() {
  state.tokenizing = true;
  state.tokenSeq++; // invalidate answers in flight
  form.onChange();
  tokenizeSoon();
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

// ---------------------------------------------------------------- what the form reads
/** Why the pairs cannot be submitted now ("" when they can), under this server's `limits`. */
export function pairsBlockReason(limits = {}) {
  if (limits.max_pairs != null && state.pairs.length > limits.max_pairs) return `${state.pairs.length} pairs is over this server's limit of ${limits.max_pairs}.`;
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

/** The pairs as the request carries them. */
export function pairsForRequest() {
  return state.pairs.map((p) => ({ ...p }));
}

/**
 * Wire the editor. `opts`: {model: () => name, source: () => "task"|"custom", onChange,
 * example: () => the chosen task's example pair}. Returns whether the pairs a previous visit
 * left were the chosen source (the form then selects "custom").
 */
export function initPairs(opts) {
  form = { ...form, ...opts };
  $("add-pair").addEventListener("click", addPair);
  $("fill-example").addEventListener("click", () => {
    const ex = opts.example?.();
    if (ex) setPairs([{ clean: ex.clean, corrupted: ex.corrupted, answer: ex.answer, wrong: ex.wrong }]);
  });
  $("clear-pairs").addEventListener("click", () => setPairs([]));
  $("bulk-add").addEventListener("click", addBulk);
  const custom = restorePairs();
  renderPairs();
  return custom;
}
