"""SparseGPT (Frantar & Alistarh, 2023): OBS pruning with lazy block updates of the remaining weights.

H = 2 X X^T / n, damped by `percdamp` x mean(diag H); its inverse's upper Cholesky factor drives the
column-by-column error compensation. Masks are chosen adaptively per block of `blocksize` columns by
w^2 / [H^-1]_jj^2. Unlike the reference code (which thresholds with `<=` and overshoots on tied scores),
each block removes an exact count, distributed so the whole matrix hits round(numel x sparsity).
All math in fp32; the caller casts back to the model's dtype.
"""

from __future__ import annotations

import contextlib

import math
from typing import Optional, Protocol, Sequence

import torch

from pruning_core.masks import UNSTRUCTURED, Structure, lowest_k, prune_count
from pruning_core.stats import InputStatistics
from pruning_core.methods.base import Method, MethodOptions


def _inverse_hessian_factor(hessian: torch.Tensor, weight: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor U of the damped inverse Hessian (H^-1 = U^T U); zeroes `weight` columns of dead inputs."""
    H = hessian.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    weight[:, dead] = 0.0
    damp = percdamp * torch.mean(torch.diag(H))
    H.diagonal().add_(damp)
    # The upper factor U of H^-1 = U^T U without forming H^-1: with P the reversal permutation, P H P = L L^T
    # (lower Cholesky) gives H = (P L P)(P L P)^T with P L P upper, so U = (P L P)^-1 = P L^-1 P. One Cholesky and
    # one triangular inverse instead of Cholesky, inverse and a second Cholesky: ~2x faster, and closer to the
    # fp64 inverse (max |U^T U - H^-1| 3.5e-5 against 6.0e-5 on a 1536-wide calibration Hessian).
    flipped = H.flip(0, 1)
    try:
        L = torch.linalg.cholesky(flipped)
    except RuntimeError:
        # Rare near-singular Hessians (few calibration tokens): add more damping rather than fail.
        flipped.diagonal().add_(10 * damp)
        L = torch.linalg.cholesky(flipped)
    identity = torch.eye(L.shape[0], dtype=L.dtype, device=L.device)
    return torch.linalg.solve_triangular(L, identity, upper=False).flip(0, 1)


class ColumnTarget(Protocol):
    """What the OBS sweep sets each column to, besides pruning: a quantizer (GPTQ, and SparseGPT's joint pruning +
    quantization). Called once per input column in order; `align` > 1 asks the sweep to start a sub-block (and a
    block) at every multiple of it, so a group of `align` columns is seen whole and fully updated when it starts."""

    align: int

    def __call__(self, column: int, block_t: torch.Tensor, pruned_t: torch.Tensor, local: int) -> torch.Tensor:
        """The value (rows,) of input column `column`, row `local` of the block's transposed weights `block_t`
        (count, rows), whose rows from `local` on carry every update of earlier columns; `pruned_t` (count, rows)
        is True where a weight is pruned (the value must be zero there)."""
        ...


def obs_sweep_group(weights: Sequence[torch.Tensor], stats: InputStatistics, options: MethodOptions, *,
                    sparsities: Optional[Sequence[float]] = None, structure: Structure = UNSTRUCTURED,
                    keep: Optional[Sequence[torch.Tensor]] = None,
                    target: Optional[ColumnTarget] = None,
                    hessian: Optional[torch.Tensor] = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """THE OBS sweep (SparseGPT's, GPTQ's): several matrices that read the same input, one inverse Hessian.

    weights: (out_i, in) fp32 copies (zeroed in place on dead input columns). What is removed per matrix:
    `sparsities` (an exact count per matrix, the mask chosen adaptively per block; or N:M by `structure`), or a
    fixed `keep` mask per matrix (a pruned model's; zeros stay zero), or nothing. target: optional quantizer
    each kept column is rounded by (`ColumnTarget`): the error of pruning and rounding column i together is
    spread over the later columns, as the SparseGPT paper does for joint pruning and quantization and GPTQ for
    quantization alone. hessian: (in, in) used instead of `stats.hessian` (GPTQ's activation ordering passes it
    with rows and columns permuted as it permuted the weights' columns: the sweep itself always runs in column
    order 0..in-1). Returns [(keep mask, updated weights)] per matrix.

    The OBS update of a row depends only on that row and the shared inverse Hessian, so stacking the rows gives
    each matrix the numbers it would get alone (up to fp32 summation order), with one Cholesky factor instead of
    one per matrix and one column loop instead of several: the loop runs ~5,000 times per decoder layer alone
    and ~3,300 times grouped. Each matrix keeps its own mask choice and exact zero count (`prune_count` of its
    own size and sparsity).
    """
    W = torch.cat([w.to(torch.float32) for w in weights], dim=0)
    rows, cols = W.shape
    H = stats.hessian if hessian is None else hessian
    Hinv = _inverse_hessian_factor(H.to(torch.float32), W, options.percdamp)
    bounds = [0]
    for w in weights:
        bounds.append(bounds[-1] + w.shape[0])
    spans = list(zip(bounds[:-1], bounds[1:]))
    sparsities = list(sparsities) if sparsities is not None else [0.0] * len(weights)
    totals = [prune_count((stop - start) * cols, s) for (start, stop), s in zip(spans, sparsities)]
    # Work on the transpose: input column j of W is then the contiguous row WT[j], so the column loop reads and
    # updates whole contiguous rows (fewer and cheaper tensor ops than strided columns).
    WT = W.t().contiguous()              # (cols, rows)
    if keep is not None:
        prunedT = ~torch.cat([k.to(torch.bool) for k in keep], dim=0).t().contiguous()
        WT.mul_(~prunedT)                # a pruned model's zeros are zeros from the start
    else:
        prunedT = torch.zeros_like(WT, dtype=torch.bool)
    align = int(getattr(target, "align", 1) or 1)
    bs = options.blocksize if align <= 1 else max(align, options.blocksize // align * align)
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        count = i2 - i1
        W1T = WT[i1:i2]                   # (count, rows), a view: updated in place
        Hinv1 = Hinv[i1:i2, i1:i2]        # (count, count)
        d = torch.diag(Hinv1)             # (count,)
        mask1T = prunedT[i1:i2]           # (count, rows), True = pruned
        if keep is None and not structure.is_nm and any(totals):
            # Exact count per matrix for this block: the share of its total that falls on columns [i1, i2).
            # Scored in the (rows, count) layout so ties at the cut break by the same element order as ever.
            scores = W1T.t().square() / d.reshape(1, -1).square()
            for (start, stop), total_k in zip(spans, totals):
                k = round(total_k * i2 / cols) - round(total_k * i1 / cols)
                mask1T[:, start:stop] = lowest_k(scores[start:stop].reshape(-1), k).reshape(stop - start, count).t()
        with _one_thread():
            Err1T = _obs_columns(W1T, mask1T, Hinv1, d, structure if keep is None else UNSTRUCTURED, target, i1,
                                 align)
        W1T.mul_(~mask1T)
        WT[i2:].addmm_(Hinv[i1:i2, i2:].t(), Err1T, alpha=-1.0)
    keep_out = ~prunedT.t()
    W = WT.t()  # pruned entries are already zero: each block zeroed its own, and later blocks never touch them
    return [(keep_out[start:stop].contiguous(), W[start:stop].contiguous()) for start, stop in spans]


def prune_sparsegpt_group(weights: Sequence[torch.Tensor], stats: InputStatistics, sparsities: Sequence[float],
                          structure: Structure, options: MethodOptions) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Prune several matrices that read the same input (q/k/v, gate/up) in one OBS pass (`obs_sweep_group`).

    weights: (out_i, in) fp32 copies (zeroed in place on dead input columns); sparsities: one per matrix.
    Returns [(keep mask, updated weights)] per matrix.
    """
    return obs_sweep_group(weights, stats, options, sparsities=sparsities, structure=structure)


@contextlib.contextmanager
def _one_thread():
    """Run the OBS column loop on one CPU thread, then give the threads back for the block update.

    The loop does ~3,000 tiny operations per layer on vectors of one row per output (~1,000-3,000 floats); above
    torch's parallel grain each of them wakes the thread pool, which costs more than the arithmetic (measured on
    2 cores: `round_` of 3,072 floats 1.8 us on one thread, 250 us on two under load; the GPTQ sweep of gate/up
    took 0.34 CPU seconds on one thread against 0.83 on two). The block-wide matmuls outside stay parallel."""
    threads = torch.get_num_threads()
    if threads <= 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


#: Columns per inner sub-block of the OBS column loop. Each column's rank-1 update then touches at most this many
#: columns and the rest of the block is updated once per sub-block by a matmul (the lazy-batch idea of SparseGPT
#: applied a second time, inside a block): the same arithmetic up to fp32 summation order, with ~8x less memory
#: traffic in the loop than updating all remaining columns of a 128-wide block after every column.
OBS_SUBBLOCK = 16


def _obs_columns(W1T: torch.Tensor, mask1T: torch.Tensor, Hinv1: torch.Tensor, d: torch.Tensor,
                 structure: Structure, target: Optional[ColumnTarget] = None, first: int = 0,
                 align: int = 1) -> torch.Tensor:
    """The OBS column loop of one block, in place on W1T (count, rows); returns the scaled errors (count, rows).

    Column i's error is err_i = w_i * pruned_i / [H^-1]_ii (w_i the column after the updates of columns < i: w - q
    with q = w where kept and 0 where pruned); every later column j gets w_j -= err_i [H^-1]_ij. For N:M
    structures the mask of each group of m columns is chosen (in mask1T) when the loop reaches the group, from
    the updated weights, as in the reference code. With a `target` (a quantizer; `first` is the block's first
    input column, `align` its group width) column i is set to target's value q_i instead (zero where pruned) and
    err_i = (w_i - q_i) / [H^-1]_ii, as GPTQ does; every group of `align` columns starts a sub-block.
    """
    count = W1T.shape[0]
    Err1T = torch.zeros_like(W1T)
    sub = OBS_SUBBLOCK
    if structure.is_nm:
        sub = structure.m * max(1, round(OBS_SUBBLOCK / structure.m))  # groups never straddle two sub-blocks
    if align > 1:
        sub = math.gcd(sub, align)  # a group of `align` columns starts a sub-block: its rows are then up to date
    scale = mask1T / d.reshape(-1, 1)    # pruned_i / [H^-1]_ii per entry (all zero until an N:M group is chosen)
    values = torch.empty_like(W1T) if target is not None else None  # (count, rows) the targets' exact values
    for a in range(0, count, sub):
        b = min(a + sub, count)
        for i in range(a, b):
            if structure.is_nm and i % structure.m == 0:
                group = W1T[i:i + structure.m].t().square() / d[i:i + structure.m].reshape(1, -1).square()
                mask1T[i:i + structure.m] = lowest_k(group, structure.m - structure.n).t()
                scale[i:i + structure.m] = mask1T[i:i + structure.m] / d[i:i + structure.m].reshape(-1, 1)
            if values is None:
                torch.mul(W1T[i], scale[i], out=Err1T[i])
            else:
                values[i] = target(first + i, W1T, mask1T, i)
                torch.sub(W1T[i], values[i], out=Err1T[i]).div_(d[i])
            W1T[i:b].addr_(Hinv1[i, i:b], Err1T[i], alpha=-1.0)
        if b < count:
            W1T[b:].addmm_(Hinv1[a:b, b:].t(), Err1T[a:b], alpha=-1.0)
    if values is not None:
        W1T.copy_(values)  # the exact rounded values, not w - err * [H^-1]_ii (equal up to fp32 rounding)
    return Err1T


def prune_sparsegpt(weight: torch.Tensor, stats: InputStatistics, sparsity: float, structure: Structure,
                    options: MethodOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (keep mask, updated weights), both (out, in): one matrix, the group of one."""
    return prune_sparsegpt_group([weight], stats, [sparsity], structure, options)[0]


SPARSEGPT = Method("sparsegpt", needs="hessian", updates_weights=True, prune=prune_sparsegpt,
                   prune_group=prune_sparsegpt_group,
                   description="OBS with Hessian 2XX^T/n, 1 % damping, blocks of 128, weight updates")
