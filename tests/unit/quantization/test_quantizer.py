"""The quantizer math: round trips, the integer convention, GPTQ against RTN and against the textbook loop, in
natural column order and in static activation order."""

from __future__ import annotations

import pytest
import torch

from pruning_core.errors import ConfigError
from pruning_core.masks import parse_structure
from pruning_core.methods import MethodOptions
from pruning_core.quantization.quantizer import (activation_order, dequantize, gptq, gptq_group, group_params,
                                                 quantize, round_to_nearest)
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
    from the weights as updated by every earlier column; with static activation order (llm-compressor's), every
    natural group's params from the original weights, then columns and Hessian permuted by decreasing diag(H)."""
    W, H = W.clone(), H.clone()
    scale = zero = None
    static = scheme.method == "gptq" and scheme.actorder == "static"
    if scheme.group_size is None or static:  # from the whole matrix before dead inputs are zeroed, as the codes do
        scale, zero = group_params(W, scheme)
    if static:
        order = torch.argsort(torch.diag(H), descending=True, stable=True)
        W, H = W[:, order], H[order][:, order]
        g = scheme.group_size or W.shape[1]
        groups = order // g  # the natural group of each swept column
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
            if not static and scheme.group_size and col % scheme.group_size == 0:
                scale, zero = group_params(W1[:, i:i + scheme.group_size], scheme)
            w = W1[:, i:i + 1]
            if static:
                s, z = scale[:, groups[col]:groups[col] + 1], zero[:, groups[col]:groups[col] + 1]
                q = dequantize(quantize(w, s, z, scheme), s, z)
            else:
                q = dequantize(quantize(w, scale, zero, scheme), scale, zero)
            err = (w - q)[:, 0] / H1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * H1[i, i:].unsqueeze(0)
            Q[:, col] = q[:, 0]
            errors[:, i] = err
        W[:, i2:] -= errors @ Hinv[i1:i2, i2:]
    if static:
        Q[:, order] = Q.clone()  # back to the natural column order
    return Q


@pytest.mark.parametrize("scheme", [QuantScheme(4, 16, actorder=order) for order in ("none", "static")]
                         + [QuantScheme(3, None, False, actorder=order) for order in ("none", "static")]
                         + [QuantScheme(4, 32, False, actorder="static")], ids=str)
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


# Static activation ordering (llm-compressor's default): natural groups' scales from the original weights, columns
# swept by decreasing Hessian diagonal, put back in natural order.


def unequal_inputs(n=2048, width=256, seed=8):
    """Correlated inputs whose columns differ in energy by ~100x (as a transformer's do), one input dead."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(width, width, generator=g) / width ** 0.5
    energy = torch.logspace(-1.5, 0.5, width)[torch.randperm(width, generator=g)]
    x = (torch.randn(n, width, generator=g) @ mixing + 0.3 * torch.randn(n, width, generator=g)) * energy
    x[:, 5] = 0.0
    return x


def _hessian_error(W, W_hat, H):
    """tr((W - Q) H (W - Q)^T): the layer's output error on the calibration inputs (H = 2 X X^T / n)."""
    D = W - W_hat
    return float(torch.trace(D @ H @ D.t()))


def _stats(x):
    stats = InputStatistics(x.shape[1], hessian=True)
    stats.add_batch(x)
    return stats


@pytest.mark.parametrize("scheme", [QuantScheme(4, 64), QuantScheme(3, None, False), QuantScheme(4, 32, False)],
                         ids=str)
def test_static_order_lowers_the_layer_error_below_rtn_and_below_natural_order(scheme):
    stats = _stats(unequal_inputs())
    W = torch.randn(64, 256, generator=torch.Generator().manual_seed(9))
    H = stats.hessian
    static = gptq(W, stats, scheme, MethodOptions(blocksize=64)).dequantize()
    natural = gptq(W, stats, QuantScheme(**{**scheme.to_dict(), "actorder": "none"}),
                   MethodOptions(blocksize=64)).dequantize()
    rtn = round_to_nearest(W, scheme).dequantize()
    assert _hessian_error(W, static, H) < 0.7 * _hessian_error(W, rtn, H)
    assert _hessian_error(W, static, H) < 0.9 * _hessian_error(W, natural, H)


def test_static_order_puts_columns_back_and_keeps_the_original_weights_scales():
    """A diagonal Hessian propagates no error between columns, so GPTQ in any order must give RTN's integers in
    RTN's places: columns not put back after the permuted sweep would land on other columns' scales."""
    g = torch.Generator().manual_seed(10)
    W = torch.randn(32, 128, generator=g)
    energy = torch.rand(128, generator=g) * 10
    stats = _stats(torch.diag(energy.sqrt()) * 16)  # H = 2 X^T X / n, diagonal, unequal
    order = activation_order(stats.hessian)
    assert not torch.equal(order, torch.arange(128))  # the sweep really is permuted
    for scheme in (QuantScheme(4, 32), QuantScheme(4, 16, False), QuantScheme(3, None)):
        static = gptq(W, stats, scheme)
        rtn = round_to_nearest(W, scheme)
        assert torch.equal(static.ints, rtn.ints) and torch.equal(static.scale, rtn.scale)
        assert torch.equal(static.zero, rtn.zero)
        assert torch.equal(quantize(static.dequantize(), static.scale, static.zero, scheme), static.ints)


def test_static_scales_are_the_original_weights_and_natural_order_scales_are_the_updated_ones():
    stats = _stats(unequal_inputs(width=128))
    W = torch.randn(16, 128, generator=torch.Generator().manual_seed(11))
    scheme = QuantScheme(4, 32)
    static = gptq(W, stats, scheme)
    natural = gptq(W, stats, QuantScheme(4, 32, actorder="none"))
    expected_scale, expected_zero = group_params(W, scheme)
    assert torch.equal(static.scale, expected_scale) and torch.equal(static.zero, expected_zero)
    # Natural order takes the first group's scale when the sweep starts (the dead input 5 already zeroed), later
    # ones from weights the earlier columns' errors updated.
    live = W.clone()
    live[:, 5] = 0.0
    assert torch.equal(natural.scale[:, 0], group_params(live, scheme)[0][:, 0])
    assert not torch.equal(natural.scale[:, 1:], expected_scale[:, 1:])
    for q in (static, natural):
        assert torch.equal(quantize(q.dequantize(), q.scale, q.zero, scheme), q.ints)


def test_per_channel_static_with_an_already_sorted_hessian_is_the_natural_order_sweep_bit_for_bit():
    """Per channel both orders take the scale from the whole matrix up front; with the diagonal already decreasing
    the permutation is the identity, so the permuted path (copies, index_select, put back) must change no bit."""
    x = unequal_inputs(width=128)
    x = x[:, torch.argsort(x.square().sum(0), descending=True)]
    stats = _stats(x)
    assert torch.equal(activation_order(stats.hessian), torch.arange(128))
    W = torch.randn(24, 128, generator=torch.Generator().manual_seed(12))
    for sym in (True, False):
        static = gptq(W, stats, QuantScheme(3, None, sym))
        natural = gptq(W, stats, QuantScheme(3, None, sym, actorder="none"))
        assert torch.equal(static.ints, natural.ints) and torch.equal(static.scale, natural.scale)


def test_a_keep_mask_permutes_with_the_columns_and_its_zeros_stay_exact():
    x = unequal_inputs(width=128)
    stats = _stats(x)
    g = torch.Generator().manual_seed(13)
    weights = [torch.randn(32, 128, generator=g), torch.randn(16, 128, generator=g)]
    keep = [torch.rand(32, 128, generator=g) > 0.5, torch.rand(16, 128, generator=g) > 0.3]
    for scheme in (QuantScheme(4, 32), QuantScheme(4, 32, False), QuantScheme(3, None)):
        outcomes = gptq_group(weights, stats, scheme, MethodOptions(blocksize=32), keep=keep)
        for w, k, (mask, q) in zip(weights, keep, outcomes):
            assert torch.equal(mask, k)
            W_hat = q.dequantize()
            assert bool((W_hat[~k] == 0).all())
            assert _hessian_error(w * k, W_hat, stats.hessian) < _hessian_error(
                w * k, round_to_nearest(w, scheme, k).dequantize(), stats.hessian)


def test_joint_pruning_keeps_the_natural_order_whatever_the_actorder():
    """N:M groups are runs of consecutive natural columns and SparseGPT's mask takes a share of zeros per block of
    natural columns: pruning in the sweep ignores the activation order, bit for bit."""
    stats = _stats(unequal_inputs(width=128))
    W = torch.randn(32, 128, generator=torch.Generator().manual_seed(14))
    for structure, sparsity in ((parse_structure("2:4"), 0.5), (parse_structure("unstructured"), 0.5)):
        (mask_s, q_s), = gptq_group([W], stats, QuantScheme(4, 32), sparsities=[sparsity], structure=structure)
        (mask_n, q_n), = gptq_group([W], stats, QuantScheme(4, 32, actorder="none"), sparsities=[sparsity],
                                    structure=structure)
        assert torch.equal(mask_s, mask_n) and torch.equal(q_s.ints, q_n.ints) and torch.equal(q_s.scale, q_n.scale)
        if structure.is_nm:
            assert bool((mask_s.reshape(32, -1, 4).sum(-1) == 2).all())


def test_the_activation_order_is_a_setting_rtn_has_none_and_a_bad_one_is_refused():
    assert QuantScheme().actorder == "static"
    assert QuantScheme(4, 64, method="rtn").actorder == "none"  # no column order: one setting, one stored result
    assert QuantScheme(4, 64).label() == "GPTQ 4-bit, groups of 64, symmetric, static activation order"
    assert QuantScheme(4, 64, actorder="none").label() == "GPTQ 4-bit, groups of 64, symmetric, natural column order"
    assert QuantScheme(4, 64, method="rtn").label() == "RTN 4-bit, groups of 64, symmetric"
    with pytest.raises(ConfigError, match=r"^Activation order 'group' is unknown; use one of static, none\.$"):
        QuantScheme(actorder="group").validate()
