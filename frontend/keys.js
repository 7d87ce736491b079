// Component keys: the one place the dashboard writes and reads the "L.C" strings that name a
// component (the API's and the store's keys; backend/patchaudit/component_keys.py is the
// server's one parser). "L.H" is a head (on the q / k / v sites the head's query, key or value;
// a key/value head where they are grouped), "L.P" a residual position, "L" an MLP layer.

/** [layer, comp] (or a "L.C" string) -> "L.C". */
export function componentKey(i, j) {
  if (Array.isArray(i)) return i.map(Number).join(".");
  if (j === undefined) return String(i);
  return `${i}.${j}`;
}

/** "L.C" (or "L") -> [layer, comp] as numbers, or null when it is not a component key. */
export function parseKey(key) {
  const m = /^(\d{1,6})(?:\.(\d{1,6}))?$/.exec(String(key ?? ""));
  return m ? [Number(m[1]), m[2] == null ? 0 : Number(m[2])] : null;
}

// Edges of an edge analysis (site "edges"; component_keys.py has the server's parser):
// "SENDER->RECEIVER", a sender "emb" / "L.H" (a head's output) / "mL" (an MLP's output), a
// receiver "L.H.q|k|v" (a head's query, key or value input) / "mL" (an MLP's input) / "logits".
const SENDER = /^(?:emb|m(\d{1,6})|(\d{1,6})\.(\d{1,6}))$/;
const RECEIVER = /^(?:logits|m(\d{1,6})|(\d{1,6})\.(\d{1,6})\.([qkv]))$/;

/** "0.1->1.0.k" -> {key, sender, receiver, node (the receiver's node "1.0"), port ("q"|"k"|"v"|null)}, or null. */
export function parseEdge(key) {
  const parts = String(key ?? "").split("->");
  if (parts.length !== 2) return null;
  const [sender, receiver] = parts;
  const r = RECEIVER.exec(receiver);
  if (!SENDER.test(sender) || !r) return null;
  const node = r[2] != null ? `${r[2]}.${r[3]}` : receiver;
  return { key: String(key), sender, receiver, node, port: r[4] || null };
}

/** A graph node "emb" / "L.H" / "mL" / "logits" -> {kind, layer, head}, or null. */
export function parseNode(key) {
  const s = String(key ?? "");
  if (s === "emb") return { kind: "emb", layer: -1, head: null };
  if (s === "logits") return { kind: "logits", layer: Infinity, head: null };
  const m = /^m(\d{1,6})$/.exec(s);
  if (m) return { kind: "mlp", layer: Number(m[1]), head: null };
  const h = /^(\d{1,6})\.(\d{1,6})$/.exec(s);
  return h ? { kind: "head", layer: Number(h[1]), head: Number(h[2]) } : null;
}

const PORTS = { q: "query", k: "key", v: "value" };

/** A node in words: "head 1.0", "MLP 3", "the embedding", "the logits". */
export function nodeName(key) {
  const n = parseNode(key);
  if (!n) return String(key);
  if (n.kind === "emb") return "the embedding";
  if (n.kind === "logits") return "the logits";
  if (n.kind === "mlp") return `MLP ${n.layer}`;
  return `head ${n.layer}.${n.head}`;
}

/** An edge in words: "head 0.1 → head 1.0 (key)". */
export function edgeName(key) {
  const e = parseEdge(key);
  if (!e) return String(key);
  return `${nodeName(e.sender)} → ${nodeName(e.node)}${e.port ? ` (${PORTS[e.port]})` : e.receiver === "logits" ? "" : " (input)"}`;
}
