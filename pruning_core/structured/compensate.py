"""Few-shot compensation: refit the consumer linear's remaining columns after structured units are removed.

Removing units drops some input features R of a consumer linear y = W x + b (o_proj, down_proj, fc2, GPT-2's
c_proj); the kept features K and their weights can absorb part of the loss. Everything is computed from the
input moments Sigma = E[x x^T] and mu = E[x] of the dense calibration pass (`statistics`); no raw activations.

Where the consumer has a bias (OPT, GPT-2), x is augmented with a constant 1 so the bias is refit with the
weights (Sigma~ = [[Sigma, mu], [mu^T, 1]], W~ = [W | b]); the removal-only starting point then carries
FLAP's bias correction b' = b + W_R mu_R (the removed features replaced by their calibration mean). Llama-like
consumers have no bias in the architecture, so they get the weight refit alone (adding one would need
``mlp_bias``/``attention_bias``, which also give gate/up and q/k/v biases).

The refit (per output row, a ridge regression pulled toward the removal-only weights W0 = [W_K | b']):

    W' = (W~ Sigma~[:, K] + lam W0) (Sigma~[K, K] + lam I)^-1,    lam = alpha * mean diag Sigma[K, K]

lam -> 0 is the plain least-squares refit; lam -> infinity is removal (plus FLAP's bias) alone.

Why shrink toward W0 and choose alpha by cross-validation: a plain refit with 1 % damping toward zero
reconstructs the calibration tokens better but, from 8 windows, *hurt* held-out perplexity on the embedded
model (issue 14: 37.3 against 33.7 without compensation, 29.6 from 32 windows): the moments of 8 windows are
noisy and the least-squares solution fits that noise. Shrinking toward zero would also shrink the useful
signal; shrinking toward the removal-only weights makes a large lam tend to removal alone, not to a zero output.
How much to shrink depends on how much data there is, so alpha is chosen by 2-fold cross-validation over the
calibration windows (even/odd windows; fit on one, measure the output error on the other, both ways): with
few windows it picks a large alpha, with many a small one, and "no refit" is one of the choices. The chosen
alpha, halved because the final refit sees twice the tokens of a fold (a ridge's best strength falls as
1 / tokens; on the tiny models, 8 to 32 windows, halving lowered the held-out error in 28 of 48 layer/consumer
cases and raised it in 8), is then used for a refit on all windows. A fixed `damping` skips the cross-validation.

Measured on the embedded model (20 % of decoder parameters as MLP channels, Wanda-sp scores, 8 x 512 wiki
calibration windows, 8 evaluation windows, dense 14.55): removal alone 28.07, plain 1 % refit 28.66 (worse:
it overfits), cross-validated shrinkage 24.39; from 32 windows: removal 28.02, plain 1 % refit 23.12,
cross-validated shrinkage 22.72 (these with the alpha not yet halved).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from pruning_core.structured.statistics import FOLDS, ConsumerStatistics

#: Shrinkage strengths tried by the cross-validation, as fractions of mean diag(Sigma[K, K]); infinity = no refit.
#: Steps of about half a decade: the held-out error varies little within a factor of ~3 around its best alpha.
ALPHA_GRID = (0.001, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0, float("inf"))


@dataclass
class Refit:
    """A consumer's new weights after removal. weight: (out, |K|) fp64 on the kept columns, in K's order;
    bias: (out,) fp64 or None; alpha: the shrinkage used (inf = no refit); cv_error / cv_error_removal: the
    cross-validated relative output error with this alpha and with removal alone (None for a fixed damping)."""

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    alpha: float
    cv_error: Optional[float] = None
    cv_error_removal: Optional[float] = None


def augmented(gram: torch.Tensor, mean: torch.Tensor, with_bias: bool) -> torch.Tensor:
    """Sigma~ = [[Sigma, mu], [mu^T, 1]] when the consumer has a bias, else Sigma (fp64)."""
    if not with_bias:
        return gram
    n = gram.shape[0]
    out = torch.empty(n + 1, n + 1, dtype=torch.float64)
    out[:n, :n] = gram
    out[:n, n] = mean
    out[n, :n] = mean
    out[n, n] = 1.0
    return out


def _dense(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return weight if bias is None else torch.cat([weight, bias[:, None]], dim=1)


def _split(full: torch.Tensor, with_bias: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    return (full[:, :-1], full[:, -1]) if with_bias else (full, None)


def _kept_index(keep: list[int], columns: int, with_bias: bool) -> torch.Tensor:
    return torch.tensor(list(keep) + ([columns] if with_bias else []), dtype=torch.long)


def removal_weights(weight: torch.Tensor, bias: Optional[torch.Tensor], keep: list[int],
                    mean: torch.Tensor) -> torch.Tensor:
    """W0 = [W_K | b + W_R mu_R] (FLAP's bias correction) or W_K without a bias, (out, |K~|) fp64."""
    kept = _dense(weight, None)[:, keep]
    if bias is None:
        return kept
    removed = sorted(set(range(weight.shape[1])) - set(keep))
    corrected = bias + weight[:, removed] @ mean[removed] if removed else bias.clone()
    return torch.cat([kept, corrected[:, None]], dim=1)


def solve(dense: torch.Tensor, sigma: torch.Tensor, index: torch.Tensor, prior: torch.Tensor,
          alpha: float, columns: int) -> torch.Tensor:
    """W' = (W~ Sigma~[:, K] + lam W0)(Sigma~[K, K] + lam I)^-1 with lam = alpha * mean diag Sigma[K, K]."""
    if alpha == float("inf"):
        return prior.clone()
    kept_features = index[index < columns]
    lam = alpha * float(torch.diagonal(sigma)[kept_features].mean()) + 1e-12
    system = sigma[index][:, index] + lam * torch.eye(len(index), dtype=torch.float64)
    rhs = dense @ sigma[:, index] + lam * prior  # (out, |K~|)
    chol = torch.linalg.cholesky(system)
    return torch.cholesky_solve(rhs.t(), chol).t()


def output_error(dense: torch.Tensor, sigma: torch.Tensor, index: torch.Tensor, new: torch.Tensor) -> float:
    """Relative squared output error E||W~ x~ - W' x~_K||^2 / E||W~ x~||^2 under moments `sigma` (augmented
    when there is a bias)."""
    padded = torch.zeros_like(dense)
    padded[:, index] = new
    diff = dense - padded
    denominator = float(((dense @ sigma) * dense).sum())
    return float(((diff @ sigma) * diff).sum()) / max(denominator, 1e-30)


def reconstruction_error(weight: torch.Tensor, bias: Optional[torch.Tensor], keep: list[int],
                         new_weight: torch.Tensor, new_bias: Optional[torch.Tensor],
                         gram: torch.Tensor, mean: torch.Tensor) -> float:
    """Relative output error of a consumer whose kept columns `keep` carry `new_weight` (out, |K|) and
    `new_bias`, against the dense W (out, in), b, under the input moments (gram = E[x x^T], mean = E[x])."""
    with_bias = bias is not None
    weight, sigma = weight.to(torch.float64), augmented(gram.to(torch.float64), mean.to(torch.float64), with_bias)
    dense = _dense(weight, None if bias is None else bias.to(torch.float64))
    new = _dense(new_weight.to(torch.float64), None if new_bias is None else new_bias.to(torch.float64))
    return output_error(dense, sigma, _kept_index(keep, weight.shape[1], with_bias), new)


def refit(weight: torch.Tensor, bias: Optional[torch.Tensor], keep: list[int], stats: ConsumerStatistics,
          damping: Optional[float] = None) -> Refit:
    """Refit a consumer (weight (out, in), bias (out,) or None) to its kept input columns `keep`.

    damping: None = choose the shrinkage alpha by 2-fold cross-validation over calibration windows (see the
    module docstring); a float = use that alpha (fraction of mean diag) without cross-validation.
    """
    weight = weight.to(torch.float64)
    bias = None if bias is None else bias.to(torch.float64)
    with_bias = bias is not None
    columns = weight.shape[1]
    index = _kept_index(keep, columns, with_bias)
    dense = _dense(weight, bias)
    cv_error = cv_removal = None
    if damping is None:
        alpha, cv_error, cv_removal = cross_validated_alpha(weight, bias, keep, stats)
        # Chosen for fits on one fold; the final fit sees all folds, and a ridge's best strength (relative to
        # the per-token moments) falls as 1 / tokens: scale it down by the fold's share of the tokens.
        alpha *= (sum(stats.tokens) / FOLDS) / max(sum(stats.tokens), 1)
    else:
        alpha = float(damping)
    gram, mean, _ = stats.moments()
    sigma = augmented(gram, mean, with_bias)
    new = solve(dense, sigma, index, removal_weights(weight, bias, keep, mean), alpha, columns)
    new_weight, new_bias = _split(new, with_bias)
    return Refit(new_weight, new_bias, alpha, cv_error, cv_removal)


def cross_validated_alpha(weight: torch.Tensor, bias: Optional[torch.Tensor], keep: list[int],
                          stats: ConsumerStatistics) -> tuple[float, float, float]:
    """(alpha, its cross-validated relative error, the error of removal alone) over `ALPHA_GRID`.

    2-fold: fit on the even windows, measure on the odd ones and the other way round, mean of the two relative
    output errors. Computed in fp32 (it only ranks alphas; the final refit is fp64), with the alpha-independent
    products formed once per fold, and the held-out error expanded as
    E = c - 2 <W', W~ Sigma_c[:, K]> + <W' Sigma_c[K, K], W'> (c = tr(W~ Sigma_c W~^T)), so each alpha costs one
    Cholesky solve and one product of the kept size: the down projection of the embedded model (1,126 kept of
    1,536) takes well under a second per alpha on one core.
    """
    with_bias = bias is not None
    columns = weight.shape[1]
    index = _kept_index(keep, columns, with_bias)
    dense = _dense(weight, bias).to(torch.float32)
    folds = []
    for fold in range(FOLDS):
        gram, mean, _ = stats.moments((fold,))
        sigma = augmented(gram, mean, with_bias).to(torch.float32)
        product = dense @ sigma  # (out, in~): one product gives both the cross term and the total
        cross = product.index_select(1, index)  # (out, |K~|) W~ Sigma[:, K]
        kept = sigma.index_select(0, index).index_select(1, index)
        total = float((product * dense).sum())
        del product
        prior = removal_weights(weight, bias, keep, mean).to(torch.float32)
        lam_unit = float(torch.diagonal(sigma)[index[index < columns]].mean())
        folds.append((cross, kept, total, prior, lam_unit))
    errors = []
    eye = torch.eye(len(index), dtype=torch.float32)
    for alpha in ALPHA_GRID:
        total_error = 0.0
        for fit, check in ((0, 1), (1, 0)):
            cross, kept, _, prior, lam_unit = folds[fit]
            if alpha == float("inf"):
                new = prior
            else:
                lam = alpha * lam_unit + 1e-12
                chol, info = torch.linalg.cholesky_ex(kept + lam * eye)
                if int(info):  # not positive definite in fp32 at this alpha: not a candidate
                    total_error = float("inf")
                    break
                new = torch.cholesky_solve((cross + lam * prior).t(), chol).t()
            c_cross, c_kept, c_total, _, _ = folds[check]
            error = c_total - 2 * float((new * c_cross).sum()) + float(((new @ c_kept) * new).sum())
            total_error += max(error, 0.0) / max(c_total, 1e-30)
        errors.append(total_error / 2)
    best = min(range(len(ALPHA_GRID)), key=lambda i: (errors[i], -i))  # ties: the stronger shrinkage
    return ALPHA_GRID[best], errors[best], errors[-1]
