"""The quantizer math: scales and zero points, round-to-nearest, and GPTQ through THE OBS sweep.

Everything works on one (out, in) fp32 matrix, or on several that read the same input (q/k/v, gate/up) stacked
by rows: scales are per row, so stacking changes nothing but the number of Cholesky factors and column loops.

- `group_params`: the scale and zero point of every (row, group) from the weights (see `scheme` for the integer
  convention; scales are rounded to the scheme's 16-bit dtype, so the in-memory result is exactly what an
  exported file holds).
- `round_to_nearest`: RTN, vectorized over the whole matrix.
- `gptq_group`: GPTQ (Frantar et al., 2023): `methods.sparsegpt.obs_sweep_group` (one damped inverse Hessian
  factor `_inverse_hessian_factor`, blocks of 128 columns with lazy batch updates) with a column target. With
  static activation ordering (`QuantScheme.actorder` "static", the default, as llm-compressor's GPTQModifier):
  every natural group's scale is taken up front from the original weights, and the columns and the Hessian are
  permuted by decreasing Hessian diagonal before the sweep and put back after (`StaticColumnRounder`). With
  "none" (`ColumnRounder`): natural order, a group's scale taken when the sweep reaches the group, from its
  weights as updated by every earlier column; per channel, from the whole matrix before the sweep (as the
  reference code does). The same call quantizes only the kept weights of a pruned matrix (`keep`: its zeros stay
  zero; the mask is permuted with the columns) or prunes and quantizes in one pass (`sparsities`: SparseGPT's
  mask choice per block, each kept column rounded as the sweep reaches it; always in natural order).
All math in fp32; integers are int8 (the b-bit values, signed), the form compressed-tensors packs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from pruning_core.masks import UNSTRUCTURED, Structure
from pruning_core.methods.base import MethodOptions
from pruning_core.methods.sparsegpt import obs_sweep_group
from pruning_core.quantization.scheme import QuantScheme
from pruning_core.stats import InputStatistics


@dataclass
class QuantizedMatrix:
    """One quantized (out, in) matrix: ints (out, in) int8 in [qmin, qmax]; scale (out, groups) fp32 holding
    16-bit values; zero (out, groups) int8 (all 0 when symmetric); groups = in / group_size, or 1 per channel."""

    ints: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    scheme: QuantScheme

    def dequantize(self) -> torch.Tensor:
        """The weights (out, in) fp32 that the integers stand for: (q - z) * s."""
        return dequantize(self.ints, self.scale, self.zero)


def _row_params(W: torch.Tensor, scheme: QuantScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point over the last dim of W (..., n): shapes (...,), fp32 and int8."""
    wmin = W.amin(dim=-1).clamp(max=0.0)
    wmax = W.amax(dim=-1).clamp(min=0.0)
    levels = float((1 << scheme.bits) - 1)
    if scheme.symmetric:
        scale = torch.maximum(-wmin, wmax) / (levels / 2.0)
    else:
        scale = (wmax - wmin) / levels
    dtype = scheme.torch_scale_dtype
    # Round the scale toward zero in the 16-bit dtype, never up: the group's largest magnitude w is 7.5 s (4-bit
    # symmetric), and a scale rounded up makes a negative extreme -7.49... round to -7 instead of -8 (half a step of
    # error on the group's most important weight, in about half the groups). Rounded down, |w| / s >= 7.5 keeps the
    # fp32 grid's integers at the extremes. Round to nearest cost RTN 4-bit g64 7 % wiki perplexity on the embedded
    # model (28.34 vs 26.38 with fp32 scales; docs/runs/quantization-gptq-check.json).
    rounded = scale.to(dtype)
    above = rounded.to(torch.float32) > scale
    rounded = torch.where(above, torch.nextafter(rounded, torch.zeros_like(rounded)), rounded)
    scale = rounded.to(torch.float32)
    # An all-zero group (pruned away) needs any positive scale: its weights round to the zero point exactly.
    scale = torch.where(scale > 0, scale, torch.full_like(scale, torch.finfo(dtype).tiny))
    if scheme.symmetric:
        zero = torch.zeros_like(scale, dtype=torch.int8)
    else:
        zero = torch.round(scheme.qmin - wmin / scale).clamp(scheme.qmin, scheme.qmax).to(torch.int8)
    return scale, zero


def group_params(W: torch.Tensor, scheme: QuantScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (out, groups) fp32 and zero point (out, groups) int8 of W (out, in) under `scheme`."""
    rows, cols = W.shape
    g = scheme.group_size or cols
    return _row_params(W.reshape(rows, cols // g, g), scheme)


def _expand(params: torch.Tensor, cols: int) -> torch.Tensor:
    """(out, groups) -> (out, in): each group's value repeated over its columns."""
    return params.repeat_interleave(cols // params.shape[1], dim=1)


def quantize(W: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """The integers (out, in) int8 of W (out, in): clamp(round(w / s + z), qmin, qmax)."""
    cols = W.shape[1]
    q = torch.round(W / _expand(scale, cols) + _expand(zero, cols).to(torch.float32))
    return q.clamp(scheme.qmin, scheme.qmax).to(torch.int8)


def dequantize(ints: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """(q - z) * s as fp32 (out, in), for ints (out, in) and per-group scale and zero (out, groups)."""
    cols = ints.shape[1]
    return (ints.to(torch.float32) - _expand(zero, cols).to(torch.float32)) * _expand(scale, cols)


def round_to_nearest(W: torch.Tensor, scheme: QuantScheme, keep: Optional[torch.Tensor] = None) -> QuantizedMatrix:
    """RTN of W (out, in) fp32; with `keep` (out, in) bool only kept weights count, pruned ones become exact 0."""
    W = W.to(torch.float32)
    if keep is not None:
        W = W * keep
    scale, zero = group_params(W, scheme)
    return QuantizedMatrix(quantize(W, scale, zero, scheme), scale, zero, scheme)


class ColumnRounder:
    """GPTQ's column target for `obs_sweep_group` (see `methods.sparsegpt.ColumnTarget`): rounds each column
    with its group's scale, taking a group's scale when the sweep reaches its first column.

    rows, cols: the (stacked) matrix's shape. channel_params: (scale, zero) per row (rows,) for per-channel
    schemes, taken by the caller from the whole matrix before the sweep. masked: some weights may be pruned (a
    keep mask or pruning in the sweep); without, the per-column mask product is skipped. The loop runs once per
    input column, so it does as few tensor operations as it can: the integers are not kept per column but
    recovered from the final values, (q - z) * s, in `matrices`.
    """

    def __init__(self, scheme: QuantScheme, rows: int, cols: int,
                 channel_params: Optional[tuple[torch.Tensor, torch.Tensor]] = None, masked: bool = True):
        self.scheme = scheme
        self.align = scheme.group_size or 1
        self.masked = masked
        groups = cols // scheme.group_size if scheme.group_size else 1
        self.scale = torch.zeros(rows, groups, dtype=torch.float32)
        self.zero = torch.zeros(rows, groups, dtype=torch.int8)
        if channel_params is not None:
            self.scale[:, 0], self.zero[:, 0] = channel_params
            self._use(self.scale[:, 0], self.zero[:, 0])

    def _use(self, scale: torch.Tensor, zero: torch.Tensor) -> None:
        self._scale, self._inverse = scale.clone(), 1.0 / scale
        self._zero = None if self.scheme.symmetric else zero.to(torch.float32)

    def __call__(self, column: int, block_t: torch.Tensor, pruned_t: torch.Tensor, local: int) -> torch.Tensor:
        g = self.scheme.group_size
        if g and column % g == 0:
            group = block_t[local:local + g]                                       # (g, rows)
            if self.masked:
                group = group * ~pruned_t[local:local + g]
            scale, zero = _row_params(group.t(), self.scheme)                      # (rows,)
            self.scale[:, column // g], self.zero[:, column // g] = scale, zero
            self._use(scale, zero)
        w = block_t[local] * ~pruned_t[local] if self.masked else block_t[local]  # (rows,)
        q = w * self._inverse
        if self._zero is not None:
            q.add_(self._zero)
        q.round_().clamp_(self.scheme.qmin, self.scheme.qmax)
        if self._zero is not None:
            q.sub_(self._zero)
        return q.mul_(self._scale)

    def matrices(self, values: Sequence[torch.Tensor]) -> list[QuantizedMatrix]:
        """The QuantizedMatrix of each stacked matrix, from its final values (out_i, in) = (q - z) * s."""
        out, start = [], 0
        for v in values:
            stop = start + v.shape[0]
            scale, zero = self.scale[start:stop].clone(), self.zero[start:stop].clone()
            out.append(QuantizedMatrix(quantize(v, scale, zero, self.scheme), scale, zero, self.scheme))
            start = stop
        return out


class StaticColumnRounder(ColumnRounder):
    """GPTQ's column target with static activation ordering: every scale and zero point fixed before the sweep.

    scale, zero: (rows, groups) of the natural groups (columns g*G..(g+1)*G of the unpermuted matrix), from the
    original weights. order: (cols,) the sweep's column order, order[j] = the original column the sweep meets j-th;
    the sweep's column j is rounded with the parameters of the group of column order[j]. The parameters are spread
    per swept column once, (cols, rows) each, so the column loop only indexes rows. align is 1: no group needs to be
    seen whole, its scale is already known.
    """

    def __init__(self, scheme: QuantScheme, scale: torch.Tensor, zero: torch.Tensor, order: torch.Tensor,
                 masked: bool = True):
        self.scheme, self.align, self.masked = scheme, 1, masked
        self.scale, self.zero = scale, zero
        cols = order.numel()
        self._scale_t = _expand(scale, cols).index_select(1, order).t().contiguous()        # (cols, rows)
        self._inverse_t = 1.0 / self._scale_t
        self._zero_t = None if scheme.symmetric else \
            _expand(zero, cols).index_select(1, order).t().to(torch.float32).contiguous()

    def __call__(self, column: int, block_t: torch.Tensor, pruned_t: torch.Tensor, local: int) -> torch.Tensor:
        w = block_t[local] * ~pruned_t[local] if self.masked else block_t[local]  # (rows,)
        q = w * self._inverse_t[column]
        if self._zero_t is not None:
            q.add_(self._zero_t[column])
        q.round_().clamp_(self.scheme.qmin, self.scheme.qmax)
        if self._zero_t is not None:
            q.sub_(self._zero_t[column])
        return q.mul_(self._scale_t[column])


def activation_order(hessian: torch.Tensor) -> torch.Tensor:
    """The static activation order: input columns by decreasing Hessian diagonal (sum of x_j^2 over the
    calibration tokens), ties (dead inputs last, all 0) in natural order; (in,) int64."""
    return torch.argsort(torch.diagonal(hessian), descending=True, stable=True)


def gptq_group(weights: Sequence[torch.Tensor], stats: InputStatistics, scheme: QuantScheme,
               options: MethodOptions = MethodOptions(), *, keep: Optional[Sequence[torch.Tensor]] = None,
               sparsities: Optional[Sequence[float]] = None,
               structure: Structure = UNSTRUCTURED) -> list[tuple[torch.Tensor, QuantizedMatrix]]:
    """GPTQ of matrices (out_i, in) that read one input, in one OBS sweep; [(keep mask, QuantizedMatrix)] each.

    keep: fixed keep masks (a pruned model's): only kept weights are quantized, pruned ones stay exact zeros.
    sparsities / structure: prune in the same sweep (SparseGPT's joint pruning and quantization).
    stats: the shared input statistics with the Hessian 2 X X^T / n. scheme.actorder: the column order ("static":
    see `StaticColumnRounder`; "none": natural order, `ColumnRounder`).
    """
    sources = [w.to(torch.float32).clone() for w in weights]
    if keep is not None:
        sources = [w * k for w, k in zip(sources, keep)]
    stacked = torch.cat(sources, dim=0)
    rows, cols = stacked.shape
    masked = keep is not None or sparsities is not None
    # Joint pruning keeps the natural order: N:M groups are runs of m consecutive natural columns, and SparseGPT's
    # unstructured mask takes an exact share of the zeros per block of natural columns (the rule checked against
    # the reference implementation); permuted blocks would change both. So only quantization alone is reordered.
    if scheme.actorder == "static" and sparsities is None:
        scale, zero = group_params(stacked, scheme)  # natural groups, original (kept) weights, before any update
        order = activation_order(stats.hessian)
        hessian = stats.hessian.index_select(0, order).index_select(1, order)
        rounder = StaticColumnRounder(scheme, scale, zero, order, masked=masked)
        outcomes = obs_sweep_group([w.index_select(1, order) for w in sources], stats, options,
                                   keep=None if keep is None else [k.index_select(1, order) for k in keep],
                                   target=rounder, hessian=hessian)
        back = torch.argsort(order)  # the sweep's column j is original column order[j]: put each where it was
        outcomes = [(mask.index_select(1, back), values.index_select(1, back)) for mask, values in outcomes]
    else:
        channel = None if scheme.group_size else tuple(p[:, 0] for p in group_params(stacked, scheme))
        rounder = ColumnRounder(scheme, rows, cols, channel, masked=masked)
        outcomes = obs_sweep_group(sources, stats, options, sparsities=sparsities, structure=structure, keep=keep,
                                   target=rounder)
    quantized = rounder.matrices([values for _, values in outcomes])
    return [(mask, matrix) for (mask, _), matrix in zip(outcomes, quantized)]


def gptq(weight: torch.Tensor, stats: InputStatistics, scheme: QuantScheme,
         options: MethodOptions = MethodOptions(), keep: Optional[torch.Tensor] = None) -> QuantizedMatrix:
    """GPTQ of one matrix (out, in) (the group of one); see `gptq_group`."""
    return gptq_group([weight], stats, scheme, options, keep=None if keep is None else [keep])[0][1]
