"""The quantizer math: round trips, the integer convention, GPTQ against RTN and against the textbook loop."""

from __future__ import annotations

import pytest
import torch

from pruning_core.errors import ConfigError
from pruning_core.methods import MethodOptions
from pruning_core.quantization.quantizer import (dequantize, gptq, gptq_group, group_params, quantize,
                                                 round_to_nearest)
from pruning_core.quantization.scheme import QuantScheme, parse_group_size
from pruning_core.stats import InputStatistics

SCHEMES = [QuantScheme(bits, group, sym) for bits in (8, 4, 3) for group in (None, 32) for sym in (True, False)]


def correlated_inputs(n=1024, width=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(width, width, generator=g) / width ** 0.5
    return torch.randn(n, width, generator=g) @ mixing + 0.3 * torch.randn(n, width, generator=g)


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_quantize_dequantize_round_trip(scheme):
    g = torch.Generator().manual_seed(1)
    W = torch.randn(16, 128, generator=g)
    q = round_to_nearest(W, scheme)
    assert q.ints.dtype == torch.int8
    assert int(q.ints.min()) >= scheme.qmin and int(q.ints.max()) <= scheme.qmax
    groups = 128 // (scheme.group_size or 128)
    assert q.scale.shape == (16, groups) and q.zero.shape == (16, groups)
    # Scales are 16-bit values, and the dequantized weights quantize back to the same integers.
    assert torch.equal(q.scale, q.scale.to(torch.float16).to(torch.float32))
    W_hat = q.dequantize()
    assert torch.equal(quantize(W_hat, q.scale, q.zero, scheme), q.ints)
    # Rounding moves a weight by at most half a step, except at a group's ends: the symmetric grid's clamped
    # maximum, or the asymmetric one's extremes shifted by the integer zero point, are at most one step away.
    step = q.scale.repeat_interleave(128 // groups, dim=1)
    assert ((W_hat - W).abs() <= step * 0.5 * (1 + 1e-3)).float().mean() > 0.95
    assert bool(((W_hat - W).abs() <= step * (1 + 1e-3)).all())


def test_error_grows_as_bits_shrink():
    W = torch.randn(32, 256, generator=torch.Generator().manual_seed(2))
    errors = [float((round_to_nearest(W, QuantScheme(b, 64)).dequantize() - W).square().sum()) for b in (8, 4, 3, 2)]
    assert errors == sorted(errors) and errors[0] < errors[-1] / 100


def test_symmetric_convention_is_compressed_tensors():
    # s = max|w| / 7.5 at 4 bits; max|w| rounds to 7.5 -> clamped to 7; -max to -7.5 -> -8 (half to even).
    W = torch.tensor([[1.5, -1.5, 0.0, 0.2]])
    q = round_to_nearest(W, QuantScheme(4, None, True))
    assert float(q.scale[0, 0]) == pytest.approx(1.5 / 7.5, rel=1e-3)
    assert q.ints.tolist() == [[7, -8, 0, 1]]


def test_zero_stays_exactly_zero_with_a_mask():
    g = torch.Generator().manual_seed(3)
    W = torch.randn(8, 64, generator=g)
    keep = torch.rand(8, 64, generator=g) > 0.5
    for scheme in (QuantScheme(4, 32, False), QuantScheme(3, None, True)):
        W_hat = round_to_nearest(W, scheme, keep).dequantize()
        assert bool((W_hat[~keep] == 0).all())


def _layer_error(W, X, W_hat):
    return float(((X @ W.t() - X @ W_hat.t()) ** 2).sum())


@pytest.mark.parametrize("scheme", [QuantScheme(4, 32), QuantScheme(3, None, False), QuantScheme(4, None)], ids=str)
def test_gptq_lowers_layer_error_against_rtn(scheme):
    X = correlated_inputs()
    W = torch.randn(64, 128, generator=torch.Generator().manual_seed(4))
    stats = InputStatistics(128, hessian=True)
    stats.add_batch(X)
    rtn = round_to_nearest(W, scheme)
    quantized = gptq(W, stats, scheme, MethodOptions(blocksize=64))
    assert torch.equal(quantized.dequantize(), dequantize(quantized.ints, quantized.scale, quantized.zero))
    assert _layer_error(W, X, quantized.dequantize()) < 0.8 * _layer_error(W, X, rtn.dequantize())


def _textbook_gptq(W, H, scheme, blocksize, percdamp=0.01):
    """GPTQ as the paper's code writes it (columns of W, lazy block updates), group params when a group starts,
    from the weights as updated by every earlier column."""
    W, H = W.clone(), H.clone()
    scale = zero = None
    if scheme.group_size is None:  # from the whole matrix before dead inputs are zeroed, as the paper's code does
        scale, zero = group_params(W, scheme)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    rows, cols = W.shape
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, H1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        errors = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if scheme.group_size and col % scheme.group_size == 0:
                scale, zero = group_params(W1[:, i:i + scheme.group_size], scheme)
            w = W1[:, i:i + 1]
            q = dequantize(quantize(w, scale, zero, scheme), scale, zero)
            err = (w - q)[:, 0] / H1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * H1[i, i:].unsqueeze(0)
            Q[:, col] = q[:, 0]
            errors[:, i] = err
        W[:, i2:] -= errors @ Hinv[i1:i2, i2:]
    return Q


@pytest.mark.parametrize("scheme", [QuantScheme(4, 16), QuantScheme(3, None, False)], ids=str)
def test_gptq_equals_the_textbook_column_loop(scheme):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(600, 96, generator=g) * torch.rand(96, generator=g)
    x[:, 7] = 0.0  # a dead input
    stats = InputStatistics(96, hessian=True)
    stats.add_batch(x)
    W = torch.randn(24, 96, generator=g)
    ours = gptq(W, stats, scheme, MethodOptions(blocksize=32)).dequantize()
    reference = _textbook_gptq(W, stats.hessian, scheme, blocksize=32)
    # The same arithmetic in another order: a few weights may round to the neighbouring level.
    assert (ours == reference).float().mean() > 0.99


def test_gptq_group_equals_each_matrix_alone():
    X = correlated_inputs(width=64)
    stats = InputStatistics(64, hessian=True)
    stats.add_batch(X)
    g = torch.Generator().manual_seed(6)
    weights = [torch.randn(16, 64, generator=g), torch.randn(8, 64, generator=g)]
    scheme = QuantScheme(4, 32)
    together = gptq_group(weights, stats, scheme, MethodOptions(blocksize=32))
    for w, (_, q) in zip(weights, together):
        alone = gptq(w, stats, scheme, MethodOptions(blocksize=32))
        assert (q.ints == alone.ints).float().mean() > 0.99


def test_gptq_on_a_mask_keeps_zeros_and_joint_pruning_hits_sparsity():
    X = correlated_inputs(width=64)
    stats = InputStatistics(64, hessian=True)
    stats.add_batch(X)
    g = torch.Generator().manual_seed(7)
    W = torch.randn(32, 64, generator=g)
    keep = torch.rand(32, 64, generator=g) > 0.5
    scheme = QuantScheme(4, 32, False)
    (mask, q), = gptq_group([W], stats, scheme, MethodOptions(blocksize=32), keep=[keep])
    assert torch.equal(mask, keep)
    W_hat = q.dequantize()
    assert bool((W_hat[~keep] == 0).all())
    # Compensating on the kept weights beats rounding them alone.
    assert _layer_error(W * keep, X, W_hat) < _layer_error(W * keep, X, round_to_nearest(W, scheme, keep).dequantize())
    (mask, q), = gptq_group([W], stats, scheme, MethodOptions(blocksize=32), sparsities=[0.5])
    assert int((~mask).sum()) == 32 * 64 // 2
    assert bool((q.dequantize()[~mask] == 0).all())


@pytest.mark.parametrize("bits", [0, 1, 9, 17, 4.5, True])
def test_bad_bits_are_refused_in_one_sentence(bits):
    with pytest.raises(ConfigError, match=r"^Bits .* from 2 to 8 .*\.$"):
        QuantScheme(bits=bits).validate()


def test_a_group_size_that_does_not_divide_the_width_is_refused():
    with pytest.raises(ConfigError, match="Group size 128 does not divide the input width 576 of q_proj; choose a "
                                          "divisor such as 64, or 'channel'"):
        QuantScheme(4, 128).check_width(576, "q_proj")
    assert parse_group_size("channel") is None and parse_group_size("64") == 64
    with pytest.raises(ConfigError, match="^Group size 'sixty'"):
        parse_group_size("sixty")


@pytest.mark.parametrize("scale_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_a_groups_negative_extreme_gets_the_lowest_integer_despite_16_bit_scales(scale_dtype, method):
    """Symmetric 4-bit: the largest magnitude is 7.5 scales, so a negative extreme must map to -8 as with fp32
    scales. A scale rounded *up* to 16 bits made it -7.49... -> -7 in about half the groups (half a step of error on
    each group's largest weight; 7 % RTN wiki perplexity on the embedded model)."""
    torch.manual_seed(0)
    W = torch.randn(64, 256)
    scheme = QuantScheme(4, 64, True, method, scale_dtype)
    if method == "rtn":
        matrix = round_to_nearest(W, scheme)
    else:  # an identity Hessian: no column updates another, so GPTQ rounds every weight as RTN does
        stats = InputStatistics(256, hessian=True)
        stats.add_batch(torch.eye(256))
        matrix = gptq(W, stats, scheme)
    groups = W.reshape(64, 4, 64)
    ints = matrix.ints.reshape(64, 4, 64)
    extreme = groups.abs().argmax(dim=-1, keepdim=True)
    negative = groups.gather(-1, extreme).squeeze(-1) < 0
    assert negative.any()
    assert (ints.gather(-1, extreme).squeeze(-1)[negative] == scheme.qmin).all()
