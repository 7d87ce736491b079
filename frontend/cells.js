// Per-component numbers and names shared by the heatmap hover, the table and the verify notices.
import { correctedMethod, fmt, verifiedAt, METHOD_LABELS } from "./flags.js";
import { componentKey } from "./keys.js";
import { escapeHtml, noteAt } from "./notes.js";
import { METHOD_ORDER, st } from "./state.js";

export function cellInfo(i, j) {
  const r = st.result;
  const scores = r.scores || {};
  const corrName = correctedMethod(scores, r.reliability_source, r.estimate_method);
  const atp = scores.atp?.[i]?.[j] ?? null;
  const corr = corrName ? (scores[corrName]?.[i]?.[j] ?? null) : null;
  const ver = verifiedAt(r.verified, i, j);
  const bound = r.error_bound ? r.error_bound[i]?.[j] : undefined;
  return {
    i,
    j,
    atp,
    corr,
    corrName,
    rel: r.reliability?.[i]?.[j] ?? null,
    bound, // null = unbounded, undefined = not reported
    ver,
    est: corr ?? atp,
    flagged: st.flags.flags[i][j],
    reasons: st.flags.reasons[i][j],
    codes: st.flags.codes[i][j],
    serverCodes: st.result.flag_reasons?.[i]?.[j] ?? null, // at the server's tau
    material: r.material ? !!r.material[i]?.[j] : null,
  };
}

/** The tokens at the positions of a resid map (labels.positions), else null. */
export function positionTokens() {
  const lab = st.result.labels || {};
  const toks = lab.positions || null;
  return Array.isArray(toks) && toks.length === (lab.cols?.length ?? -1) ? toks.map(String) : null;
}

function positionToken(j) {
  return positionTokens()?.[j] ?? null;
}

const isPositions = (lab) => (lab.col_name || "") === "position";

export function compName(i, j) {
  const lab = st.result.labels || {};
  if (isPositions(lab)) return shortName(i, j);
  const row = lab.rows?.[i] ?? i;
  const col = lab.cols?.[j] ?? j;
  const rn = lab.row_name || "layer";
  const cn = lab.col_name || "head";
  return (lab.cols?.length ?? 2) === 1 ? `${rn} ${row}` : `${rn} ${row}, ${cn} ${col}`;
}

export function shortName(i, j) {
  const lab = st.result.labels || {};
  if (isPositions(lab)) {
    // resid: layer and position, with the token there: L1 @3 'store'
    const tok = positionToken(j);
    return `L${lab.rows?.[i] ?? i} @${lab.cols?.[j] ?? j}${tok != null ? ` '${tok.trim() || tok}'` : ""}`;
  }
  return (lab.cols?.length ?? 2) === 1 ? `L${lab.rows?.[i] ?? i}` : `L${lab.rows?.[i] ?? i}.H${lab.cols?.[j] ?? j}`;
}

/** Every method in display order: the known ones first, then any others. */
export function methodNames(scores) {
  return METHOD_ORDER.filter((m) => scores[m]).concat(Object.keys(scores).filter((k) => !METHOD_ORDER.includes(k)));
}

export function hoverText(i, j, pending) {
  const c = cellInfo(i, j);
  const scores = st.result.scores || {};
  const lines = [`<b>${compName(i, j)}</b>`];
  for (const m of methodNames(scores)) lines.push(`${METHOD_LABELS[m] || m}: ${fmt(scores[m][i]?.[j])}`);
  if (c.corr != null && c.atp != null) lines.push(`corrected − AtP: ${fmt(c.corr - c.atp)}`);
  if (st.result.reliability) lines.push(`reliability: ${fmt(c.rel)}`);
  if (c.bound !== undefined) lines.push(`error bound: ${c.bound == null ? "unbounded" : `± ${fmt(c.bound)}`}`);
  const iv = st.result.interval;
  if (iv && c.flagged && c.ver == null) {
    const lo = iv.lower?.[i]?.[j], hi = iv.upper?.[i]?.[j];
    lines.push(`<b>uncertain: the true effect may lie anywhere in [${lo == null ? "−∞" : fmt(lo)}, ${hi == null ? "∞" : fmt(hi)}]</b>`);
  }
  const sat = st.result.saturation?.[`${i}.${j}`];
  if (sat?.length) lines.push(`saturation through ${sat.map((h) => `L${h.layer}.H${h.head} (${fmt(h.share)})`).join(", ")}`);
  if (c.ver != null) {
    lines.push(`verified (activation patching): ${fmt(c.ver)}`);
    if (c.atp != null) lines.push(`error of AtP: ${fmt(c.atp - c.ver)}`);
    if (c.corr != null) lines.push(`error of corrected: ${fmt(c.corr - c.ver)}`);
  } else {
    lines.push(pending ? "verifying…" : "not verified: click to verify");
  }
  const note = noteAt(componentKey(i, j)); // a member's label and note (notes.js)
  if (note) lines.push(`<b>label: ${escapeHtml(note.label)}</b> (${escapeHtml(note.author)})${note.text ? `: ${escapeHtml(note.text.length > 80 ? `${note.text.slice(0, 79)}…` : note.text)}` : ""}`);
  if (c.material === false) lines.push("not material");
  lines.push(c.flagged ? `FLAGGED (${c.codes.join(", ")}): ${c.reasons.join("; ")}` : "not flagged");
  if (c.serverCodes?.length) lines.push(`server's flag reasons at τ ${fmt(st.result.tau, 2)}: ${c.serverCodes.join(", ")}`);
  if (st.result.calibration?.why) lines.push(`flags: ${st.result.calibration.calibrated ? "calibrated" : "not calibrated for this combination"}`);
  return lines.join("<br>");
}
