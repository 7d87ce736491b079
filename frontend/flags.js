// Pure functions over an analysis result: which estimate is "corrected", the server's flags at
// the page's tau, and number formatting. No DOM here.
import { componentKey } from "./keys.js";

export const METHOD_LABELS = {
  atp: "AtP",
  hvp: "HVP-corrected",
  hvp_joint: "HVP joint probe",
  hvp_exact: "HVP exact",
  ig: "Integrated gradients",
  mhvp: "Multi-step HVP",
  sat: "Saturation-aware",
  atp_star: "AtP* QK fix",
  graddrop: "AtP* GradDrop (magnitude)",
  ap: "Activation patching (full sweep)",
};

// Preference order for the second-order estimate the reliability score is built on.
const CORRECTED_ORDER = ["hvp", "hvp_exact", "hvp_joint", "sat", "mhvp"];

export function correctedMethod(scores, source = null, shown = null) {
  if (shown && scores && scores[shown]) return shown; // the estimate the server calibrated and shows
  if (source && scores && scores[source] && source !== "atp") return source;
  for (const m of CORRECTED_ORDER) if (scores && scores[m]) return m;
  return null;
}

export function shapeOf(result) {
  const rows = result.labels?.rows?.length ?? 0;
  const cols = result.labels?.cols?.length ?? 0;
  if (rows && cols) return [rows, cols];
  const any = Object.values(result.scores || {})[0] || result.reliability || [];
  return [any.length, any[0]?.length ?? 0];
}

export function verifiedAt(verified, i, j) {
  if (!verified) return null;
  return verified[componentKey(i, j)] ?? null;
}

const at = (m, i, j) => (m && m[i] ? m[i][j] : null);
const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

const REASON_TEXT = {
  sign: "the interval holds 0: the sign is unknown",
  cutoff: "interval straddles the circuit cut-off",
  unbounded: "unbounded error bound",
  atp_error: "the interval admits an AtP error above 50%",
  estimate_error: "the interval admits an error of the shown estimate above 50%",
  saturation: "a downstream attention softmax saturates (see the heads named)",
  vanishing: "the first-order term vanishes for this metric and direction",
};

/**
 * The server's flags (METHODS.md) at the page's threshold `tau`. The server writes, per
 * component, why it is flagged (`flag_reasons`: reliability, sign, cutoff, unbounded,
 * atp_error); every reason but "reliability" does not depend on tau, so the page keeps those
 * and only moves the one tau-dependent term, reliability < tau, of the material components.
 * At the server's tau this is exactly the server's `flags`.
 * Returns {flags: bool[][], reasons: string[][][] (sentences), codes: string[][][], count,
 * material}.
 */
export function computeFlags(result, tau) {
  const [R, C] = shapeOf(result);
  const rel = result.reliability;
  const material = result.material;
  const serverReasons = result.flag_reasons;
  const flags = new Array(R);
  const reasons = new Array(R);
  const codes = new Array(R);
  let count = 0;
  let nMaterial = 0;
  for (let i = 0; i < R; i++) {
    const fr = new Array(C);
    const rr = new Array(C);
    const cr = new Array(C);
    for (let j = 0; j < C; j++) {
      const why = [];
      const code = [];
      if (material && at(material, i, j)) {
        nMaterial++;
        const r = num(at(rel, i, j));
        if (r != null && r < tau) {
          code.push("reliability");
          why.push(`reliability ${fmt(r, 2)} < τ ${fmt(tau, 2)}`);
        }
        for (const k of at(serverReasons, i, j) || []) {
          if (k === "reliability") continue;
          code.push(k);
          why.push(REASON_TEXT[k] || k);
        }
      }
      fr[j] = why.length > 0;
      rr[j] = why;
      cr[j] = code;
      if (fr[j]) count++;
    }
    flags[i] = fr;
    reasons[i] = rr;
    codes[i] = cr;
  }
  return { flags, reasons, codes, count, material: nMaterial };
}

export function fmt(v, digits = 3) {
  if (v == null) return "–";
  if (typeof v !== "number") return String(v);
  if (!Number.isFinite(v)) return v > 0 ? "∞" : "−∞";
  const a = Math.abs(v);
  let out;
  if (a !== 0 && (a < 1e-3 || a >= 1e4)) out = v.toExponential(2);
  else if (a !== 0 && a < 1) out = v.toPrecision(digits); // 3 significant digits below 1
  else out = v.toFixed(digits);
  return out.replace(/-/g, "−");
}

export function maxAbs(matrix) {
  let m = 0;
  for (const row of matrix || [])
    for (const v of row || []) if (typeof v === "number" && Number.isFinite(v)) m = Math.max(m, Math.abs(v));
  return m;
}

export function mapMatrix(R, C, fn) {
  const out = new Array(R);
  for (let i = 0; i < R; i++) {
    const row = new Array(C);
    for (let j = 0; j < C; j++) row[j] = fn(i, j);
    out[i] = row;
  }
  return out;
}
