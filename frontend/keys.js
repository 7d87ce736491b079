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
