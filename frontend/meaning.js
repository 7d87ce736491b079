// What the numbers mean: the metric's name and units for colour bars, and what a negative
// (or positive) value says for this metric and direction. No DOM here.

const METRICS = {
  logit_diff: "logit diff (answer − wrong)",
  prob_diff: "prob diff (p(answer) − p(wrong))",
  logprob: "log p(answer)",
  kl: "KL(clean ‖ patched)",
};

/** The metric's name and units, for colour bars and axis titles. */
export function metricLabel(metric) {
  return METRICS[metric] || metric || "metric";
}

/**
 * One sentence on the sign of an effect: every estimate is m(patched run) − m(base run),
 * noising = the corrupted activation patched into the clean run, denoising = the clean
 * activation patched into the corrupted run.
 */
export function signMeaning(metric, direction) {
  const m = metricLabel(metric);
  if (metric === "kl") {
    return direction === "denoising"
      ? `Values are the change in ${m} when the component's clean activation is patched into the corrupted run. Negative (blue): restoring it moves the output towards the clean distribution; positive (red): away from it.`
      : `Values are the change in ${m} when the component's corrupted activation is patched into the clean run. KL is 0 on the clean run and cannot fall below 0, so a real effect is positive (red): the larger, the more the component matters; a negative (blue) value is estimation error.`;
  }
  const what = { logit_diff: "the logit difference between answer and wrong answer", prob_diff: "the probability difference between answer and wrong answer", logprob: "the answer's log probability" }[metric] || "the metric";
  return direction === "denoising"
    ? `Values are the change in ${m} when the component's clean activation is patched into the corrupted run. Positive (red): restoring it raises ${what}, so it carries the answer; negative (blue): restoring it lowers ${what}, so it works against the answer.`
    : `Values are the change in ${m} when the component's corrupted activation is patched into the clean run. Negative (blue): corrupting it lowers ${what}, so the component supports the answer; positive (red): corrupting it raises ${what}, so it works against the answer.`;
}

/**
 * The sign that turns an effect of this metric and direction into "positive = the component
 * helps the clean behaviour" (compare.js aligns two analyses with it). Noising patches the
 * corrupted activation into the clean run, so a helpful component LOWERS logit diff, prob
 * diff and log p (-1) and RAISES KL from the clean distribution (+1); denoising restores the
 * clean activation in the corrupted run, so the signs flip.
 */
export function cleanSign(metric, direction) {
  const d = direction === "denoising" ? 1 : -1;
  return metric === "kl" ? -d : d;
}
