"""COPAL-style continual importance: a weight stays if it matters for ANY domain seen so far.

COPAL (Malla, Choi & Choi, "COPAL: Continual Pruning in Large Language Generative Models", ICML 2024) prunes
along a sequence of calibration sets without retraining, guided by a sensitivity analysis that "finds the
weights relevant for all encountered datasets". The paper has no public code; this module implements our
reading of it, stated exactly so that a number can be traced to it:

    For every domain d seen so far, the Wanda importance   I_d[r, c] = |W[r, c]| * ||X_d[:, c]||_2
    (W: the DENSE weight, (out, in); ||X_d[:, c]||_2 from domain d's dense calibration statistics, up to the
    constant sqrt(n_d) that Wanda's per-row ranking ignores) is normalised by its mean over the output row,
        N_d[r, c] = I_d[r, c] / mean_c' I_d[r, c'],
    and the importance the mask is cut from is the element-wise maximum over domains,
        S[r, c] = max_{d <= t} N_d[r, c].
    The cut is Wanda's: per output row the lowest-S weights are pruned (N:M: per group of M inputs).

Why these choices:
- The maximum, not a mean: a weight essential to one earlier domain keeps a high score even when the newer
  domains do not use it; a mean (the `accumulated` strategy) dilutes it by the other domains' token counts.
  This is the "relevant for any encountered dataset" reading of COPAL's sensitivity.
- Per-row normalisation: Wanda compares weights within an output row, and domains differ in activation scale
  (code vs prose); without it the max would be decided by whichever domain has the largest activations, not by
  relevance. Dividing each row by a positive constant leaves one domain's own ranking unchanged, so with one
  domain S gives exactly Wanda's mask.
- Running statistics: what is kept per domain is its input-norm vector (in,) per linear (the statistics the
  walk already produces), never text or token ids; S is recomputed from the dense weights at prune time,
  so memory grows by one (in,) vector per linear per domain, not by a model-sized score tensor.

How it may differ from the paper: COPAL's sensitivity is defined from the response of the layer output to
perturbations of the new data and accumulated across the sequence; we use Wanda's first-order proxy for that
sensitivity and accumulate it by an element-wise maximum of per-domain normalised scores. With SparseGPT the
mask is chosen inside the OBS loop from the updated weights, which has no entry for an external score, so
`copal` with SparseGPT prunes with the token-weighted running mean of the Hessians (the `accumulated` rule)
and says so in its result (`rule_note`).

Numerics: computed as S = max_d I_d * (m_1 / m_d), m_d the row means, i.e. every domain rescaled to domain 1's
row scale (the same per-row order as the normalised maximum, since every row is multiplied by its positive m_1);
the first domain's term is used as computed, so with a single domain S is Wanda's fp32 score bit for bit and
the mask's ties break as Wanda's do.
"""

from __future__ import annotations

from typing import Sequence

import torch

from pruning_core.methods.wanda import wanda_scores

RULE = ("COPAL-style max rule: per domain the Wanda importance |W|*||X_d|| normalised by its output-row mean; "
        "a weight's score is the maximum over the domains seen so far; pruned per row as Wanda does")
SPARSEGPT_NOTE = ("with SparseGPT the max rule is not applied (SparseGPT picks its mask inside the OBS loop); "
                  "copal prunes with the token-weighted running mean of the Hessians, as 'accumulated' does")


def copal_scores(weight: torch.Tensor, act_sq_per_domain: Sequence[torch.Tensor]) -> torch.Tensor:
    """S = max over domains of the row-normalised Wanda importance, rescaled to the first domain's row means.

    weight: the dense (out, in) matrix (fp32); act_sq_per_domain: each domain's mean x_j^2, shape (in,), in
    arrival order (at least one). Returns (out, in) fp32 scores; low scores are pruned first.
    """
    if not act_sq_per_domain:
        raise ValueError("copal_scores needs the statistics of at least one domain")
    first = wanda_scores(weight, act_sq_per_domain[0])  # (out, in)
    row_scale = first.mean(dim=1)                         # (out,) m_1
    scores = first
    for act_sq in act_sq_per_domain[1:]:
        importance = wanda_scores(weight, act_sq)          # (out, in)
        mean = importance.mean(dim=1)                      # (out,) m_d
        # A row with zero importance everywhere in domain d (all-zero weights or inputs) adds nothing.
        factor = torch.where(mean > 0, row_scale / mean.clamp_min(torch.finfo(mean.dtype).tiny),
                             torch.zeros_like(mean))
        scores = torch.maximum(scores, importance * factor.reshape(-1, 1))
    return scores
