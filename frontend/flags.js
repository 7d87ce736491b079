// Pure functions over an analysis result: which estimate is "corrected", the flag rule of
// METHODS.md recomputed for any tau, and number formatting. No DOM here.

export const METHOD_LABELS = {
  atp: "AtP",
  hvp: "HVP-corrected",
  hvp_joint: "HVP joint probe",
  hvp_exact: "HVP exact",
  ig: "Integrated gradients",
  mhvp: "Multi-step HVP",
  ap: "Activation patching (full sweep)",
};

// Preference order for the second-order estimate the reliability score is built on.
const CORRECTED_ORDER = ["hvp", "hvp_exact", "hvp_joint", "mhvp"];

export function correctedMethod(scores, source = null) {
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

export function verifiedAt(verified, i, j, nCols) {
  if (!verified) return null;
  const k = `${i}.${j}`;
  if (k in verified) return verified[k];
  if (nCols === 1 && String(i) in verified) return verified[String(i)];
  return null;
}

const at = (m, i, j) => (m && m[i] ? m[i][j] : null);
const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

// The circuit is a cut-off on |estimate|: |A2| - e < cutoff < |A2| + e.
function straddles(est, bound, cutoff) {
  if (bound == null) return true; // unbounded interval straddles any finite cut-off
  const mag = Math.abs(est);
  return mag - bound < cutoff && mag + bound > cutoff;
}

const REASON_TEXT = {
  sign: "AtP and corrected disagree in sign",
  cutoff: "interval straddles the circuit cut-off",
  unbounded: "unbounded error bound",
  atp_error: "the interval admits an AtP error above 50%",
};

/**
 * Flags for threshold `tau` (METHODS.md): material and (reliability < tau, or any reason that
 * does not depend on tau). With the server's `flag_reasons` (codes per component: reliability,
 * sign, cutoff, unbounded, atp_error) those tau-free reasons are the server's own, so the page
 * agrees with the server at its tau and only re-applies reliability < tau. Without them they
 * are recomputed from the numbers: a sign flip, or the interval corrected +- bound straddling
 * the cut-off (result.cutoff; or read back from the server's flags at the server's tau).
 * Returns {flags: bool[][], reasons: string[][][] (sentences), codes: string[][][], count,
 * material}.
 */
export function computeFlags(result, tau) {
  const [R, C] = shapeOf(result);
  const scores = result.scores || {};
  const atp = scores.atp;
  const corrName = correctedMethod(scores, result.reliability_source);
  const corr = corrName ? scores[corrName] : null;
  const rel = result.reliability;
  const bound = result.error_bound;
  const material = result.material;
  const serverFlags = result.flags;
  const serverReasons = result.flag_reasons;
  const tau0 = num(result.tau);
  const cutoff = num(result.cutoff ?? result.circuit_cutoff);
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
      const mat = material ? !!at(material, i, j) : corr != null;
      const why = [];
      const code = [];
      const add = (c, text) => {
        code.push(c);
        why.push(text);
      };
      if (mat) {
        nMaterial++;
        const r = num(at(rel, i, j));
        const a = num(at(atp, i, j));
        const c = num(at(corr, i, j));
        if (r != null && r < tau) add("reliability", `reliability ${fmt(r, 2)} < τ ${fmt(tau, 2)}`);
        const sr = serverReasons ? at(serverReasons, i, j) : null;
        if (Array.isArray(sr)) {
          for (const k of sr) if (k !== "reliability") add(k, REASON_TEXT[k] || k);
        } else {
          if (a != null && c != null && Math.sign(a) !== Math.sign(c)) add("sign", REASON_TEXT.sign);
          if (c != null) {
            const b = at(bound, i, j);
            const e = b == null ? null : num(b);
            let straddle;
            if (cutoff != null) {
              straddle = straddles(c, e, cutoff);
            } else if (serverFlags) {
              const sf = !!at(serverFlags, i, j);
              const known =
                (r != null && tau0 != null && r < tau0) ||
                (a != null && Math.sign(a) !== Math.sign(c));
              straddle = sf ? (known ? e == null : true) : false;
            } else {
              straddle = false;
            }
            if (straddle && e == null) add("unbounded", REASON_TEXT.unbounded);
            else if (straddle) add("cutoff", REASON_TEXT.cutoff);
          }
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
