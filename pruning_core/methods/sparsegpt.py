"""SparseGPT (Frantar & Alistarh, 2023): OBS pruning with lazy block updates of the remaining weights.

H = 2 X X^T / n, damped by `percdamp` x mean(diag H); its inverse's upper Cholesky factor drives the
column-by-column error compensation. Masks are chosen adaptively per block of `blocksize` columns by
w^2 / [H^-1]_jj^2. Unlike the reference code (which thresholds with `<=` and overshoots on tied scores),
each block removes an exact count, distributed so the whole matrix hits round(numel x sparsity).
All math in fp32; the caller casts back to the model's dtype.
"""

from __future__ import annotations

from typing import Sequence

import torch

from pruning_core.masks import Structure, lowest_k, prune_count
from pruning_core.stats import InputStatistics
from pruning_core.methods.base import Method, MethodOptions


def _inverse_hessian_factor(hessian: torch.Tensor, weight: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of the damped inverse Hessian; zeroes `weight` columns of dead inputs."""
    H = hessian.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    weight[:, dead] = 0.0
    damp = percdamp * torch.mean(torch.diag(H))
    H.diagonal().add_(damp)
    try:
        L = torch.linalg.cholesky(H)
    except RuntimeError:
        # Rare near-singular Hessians (few calibration tokens): add more damping rather than fail.
        H.diagonal().add_(10 * damp)
        L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True)


def prune_sparsegpt_group(weights: Sequence[torch.Tensor], stats: InputStatistics, sparsities: Sequence[float],
                          structure: Structure, options: MethodOptions) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Prune several matrices that read the same input (q/k/v, gate/up) in one OBS pass.

    weights: (out_i, in) fp32 copies (zeroed in place on dead input columns); sparsities: one per matrix.
    Returns [(keep mask, updated weights)] per matrix. The OBS update of a row depends only on that row and the
    shared inverse Hessian, so stacking the rows gives each matrix the numbers it would get alone (up to fp32
    summation order), with one Cholesky factor instead of one per matrix and one column loop instead of
    several: the loop runs ~5,000 times per decoder layer alone and ~3,300 times grouped. Each matrix keeps
    its own mask choice and exact zero count (`prune_count` of its own size and sparsity).
    """
    W = torch.cat([w.to(torch.float32) for w in weights], dim=0)
    rows, cols = W.shape
    Hinv = _inverse_hessian_factor(stats.hessian.to(torch.float32), W, options.percdamp)
    bounds = [0]
    for w in weights:
        bounds.append(bounds[-1] + w.shape[0])
    spans = list(zip(bounds[:-1], bounds[1:]))
    totals = [prune_count((stop - start) * cols, s) for (start, stop), s in zip(spans, sparsities)]
    pruned = torch.zeros_like(W, dtype=torch.bool)
    bs = options.blocksize
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()          # (rows, count)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]        # (count, count)
        d = torch.diag(Hinv1)             # (count,)
        mask1 = torch.zeros_like(W1, dtype=torch.bool)  # True = pruned
        if not structure.is_nm:
            # Exact count per matrix for this block: the share of its total that falls on columns [i1, i2).
            scores = W1.square() / d.reshape(1, -1).square()
            for (start, stop), total_k in zip(spans, totals):
                k = round(total_k * i2 / cols) - round(total_k * i1 / cols)
                mask1[start:stop] = lowest_k(scores[start:stop].reshape(-1), k).reshape(stop - start, count)
        # The column loop does the fewest tensor ops that give the reference's numbers: err = (w - q) / d_i
        # with q = w where kept, 0 where pruned, is w * pruned / d_i (w * 1 and w - 0 are both exactly w; kept
        # entries give a zero either way, at most of the other sign); and the quantised column q is the updated
        # column with its pruned entries zeroed, since the kept entries of column i no longer change once
        # err_i is zero there.
        prunedf = mask1.to(W1.dtype)
        for i in range(count):
            if structure.is_nm and i % structure.m == 0:
                group = W1[:, i:i + structure.m].square() / d[i:i + structure.m].reshape(1, -1).square()
                mask1[:, i:i + structure.m] = lowest_k(group, structure.m - structure.n)
                prunedf[:, i:i + structure.m] = mask1[:, i:i + structure.m].to(W1.dtype)
            err = W1[:, i] * prunedf[:, i] / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i1:i2] = W1 * (1.0 - prunedf)
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    keep = ~pruned
    W = W * keep
    return [(keep[start:stop], W[start:stop]) for start, stop in spans]


def prune_sparsegpt(weight: torch.Tensor, stats: InputStatistics, sparsity: float, structure: Structure,
                    options: MethodOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (keep mask, updated weights), both (out, in): one matrix, the group of one."""
    return prune_sparsegpt_group([weight], stats, [sparsity], structure, options)[0]


SPARSEGPT = Method("sparsegpt", needs="hessian", updates_weights=True, prune=prune_sparsegpt,
                   prune_group=prune_sparsegpt_group,
                   description="OBS with Hessian 2XX^T/n, 1 % damping, blocks of 128, weight updates")
