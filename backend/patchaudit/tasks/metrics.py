"""Metrics: logits -> one number per prompt pair (the batch metric is their mean).

All metrics read the last real position of each prompt (``last_pos``). ``kl`` is the
KL divergence from the clean distribution at that position to the model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

METRICS = ("logit_diff", "prob_diff", "logprob", "kl")


@dataclass
class MetricTargets:
    """What a metric reads, for the B prompt pairs of one copy of the batch."""

    answer_ids: Int[Tensor, " batch"]
    wrong_ids: Int[Tensor, " batch"]
    last_pos: Int[Tensor, " batch"]
    ref_logprobs: Float[Tensor, "batch d_vocab"] | None = None  # clean log-probs, for kl

    @property
    def n(self) -> int:
        return int(self.answer_ids.shape[0])


def _last_logits(logits: Tensor, t: MetricTargets) -> Tensor:
    copies = logits.shape[0] // t.n
    last = t.last_pos.repeat(copies)  # [copies * batch]
    return logits[torch.arange(logits.shape[0], device=logits.device), last]  # [N, d_vocab]


def per_example(
    name: str, logits: Float[Tensor, "n pos d_vocab"], t: MetricTargets
) -> Float[Tensor, " n"]:
    """Metric of every row of ``logits``; rows are copies of the batch (copy-major)."""
    copies = logits.shape[0] // t.n
    lg = _last_logits(logits, t)  # [N, d_vocab]
    lg = lg.to(torch.promote_types(lg.dtype, torch.float32))  # fp16/bf16 -> fp32, keep fp64
    ans = t.answer_ids.repeat(copies)[:, None]  # [N, 1]
    wrong = t.wrong_ids.repeat(copies)[:, None]  # [N, 1]
    if name == "logit_diff":
        return (lg.gather(1, ans) - lg.gather(1, wrong))[:, 0]
    if name == "prob_diff":
        p = lg.softmax(-1)
        return (p.gather(1, ans) - p.gather(1, wrong))[:, 0]
    if name == "logprob":
        return lg.log_softmax(-1).gather(1, ans)[:, 0]
    if name == "kl":
        if t.ref_logprobs is None:
            raise ValueError("metric 'kl' needs the clean distribution")
        ref = t.ref_logprobs.to(lg.dtype).repeat(copies, 1)  # [N, d_vocab]
        return (ref.exp() * (ref - lg.log_softmax(-1))).sum(-1)
    raise ValueError(f"unknown metric {name!r}: choose one of {', '.join(METRICS)}")


def per_copy(name: str, logits: Tensor, t: MetricTargets) -> Float[Tensor, " copies"]:
    """Batch metric (mean over the pairs) of each copy of the batch."""
    v = per_example(name, logits, t)
    return v.view(-1, t.n).mean(1)  # [copies, batch] -> [copies]
