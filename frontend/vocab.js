// The vocabulary browser of the new-analysis page (GET /api/models/{name}/vocab), in the
// #vocab-box details element: loaded once per model when opened, filtered as one types.
import { api, el } from "./api.js";

const $ = (id) => document.getElementById(id);

const vocab = new Map(); // model -> {size, words} or {error}
let currentModel = () => "bundled";

/** Show the vocabulary of the chosen model (when the box is open). */
export async function showVocab() {
  if (!$("vocab-box").open) return;
  const model = currentModel();
  const status = $("vocab-status");
  if (!vocab.has(model)) {
    status.textContent = "Loading the vocabulary…";
    try {
      vocab.set(model, await api(`/api/models/${encodeURIComponent(model)}/vocab`));
    } catch (err) {
      vocab.set(model, { error: err.message });
    }
  }
  if (currentModel() !== model) return;
  const v = vocab.get(model);
  status.classList.toggle("bad", !!v.error);
  status.textContent = v.error || "";
  $("vocab-size").textContent = v.error ? "" : `${v.size} words in ${model}'s vocabulary`;
  filterVocab();
}

function filterVocab() {
  const v = vocab.get(currentModel());
  const box = $("vocab-words");
  box.replaceChildren();
  if (!v || v.error) return;
  const q = $("vocab-filter").value.trim().toLowerCase();
  const words = q ? v.words.filter((w) => w.toLowerCase().includes(q)) : v.words;
  for (const w of words.slice(0, 2000)) box.append(el("span", { text: w }));
  if (words.length > 2000) box.append(el("span", { class: "muted", text: `… ${words.length - 2000} more` }));
  box.dataset.count = String(words.length);
}

/** Wire the browser; `model()` names the chosen model. */
export function initVocab(model) {
  currentModel = model;
  $("vocab-box").addEventListener("toggle", showVocab);
  $("vocab-filter").addEventListener("input", filterVocab);
}
