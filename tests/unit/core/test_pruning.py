"""Pruning behaviour on tiny random models: targets hit, N:M holds, formulas match, weights restored."""

from __future__ import annotations

import pytest
import torch

from pruning_core.errors import ConfigError
from pruning_core.masks import (applied_masks, keep_mask_from_scores, lowest_k, parse_structure)
from pruning_core.methods import METHODS, MethodOptions, get_method
from pruning_core.models import weight_matrix
from pruning_core.prune import PruneConfig, collect_statistics, prune_model, prune_with_statistics
from pruning_core.stats import InputStatistics
from pruning_core.models.tiny import tiny_model

FAMILIES = ["llama", "opt", "gpt2"]


def windows(n=8, seqlen=32, vocab=300, seed=0):
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_weights(before, model):
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"{key} changed"


# ------------------------------------------------------------------------------------------ mask builders

def test_lowest_k_is_exact_with_ties():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.5, 2.0]] * 3)
    mask = lowest_k(scores, 3)
    assert mask.sum(dim=1).tolist() == [3, 3, 3]
    # 0.5 first, then the two lowest-index ties
    assert mask[0].tolist() == [True, True, False, False, True, False]


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.7, 0.9])
def test_unstructured_masks_hit_target_even_with_tied_scores(sparsity):
    scores = torch.randint(0, 4, (37, 53)).float()  # heavy ties, like dequantised Q4 weights
    per_matrix = keep_mask_from_scores(scores, sparsity)
    assert (~per_matrix).sum() == round(scores.numel() * sparsity)
    per_row = keep_mask_from_scores(scores, sparsity, per_row=True)
    assert ((~per_row).sum(dim=1) == round(53 * sparsity)).all()


@pytest.mark.parametrize("text", ["2:4", "4:8", "1:4"])
def test_nm_masks_hold_in_every_group(text):
    structure = parse_structure(text)
    scores = torch.randint(0, 3, (16, 64)).float()
    keep = keep_mask_from_scores(scores, 0.0, structure)
    groups = keep.reshape(16, -1, structure.m).sum(dim=-1)
    assert (groups == structure.n).all()


@pytest.mark.parametrize("bad", ["2-4", "4:2", "0:4", "x:y", ""])
def test_malformed_structures_are_refused(bad):
    with pytest.raises(ConfigError, match="N:M|N < M"):
        parse_structure(bad)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_sparsity_outside_range_is_refused(bad):
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        PruneConfig("magnitude", "unstructured", bad).validate()


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ConfigError, match="magnitude, wanda, sparsegpt"):
        get_method("obs")


# --------------------------------------------------------------------------------------- method formulas

def test_wanda_mask_equals_the_formula_by_hand():
    torch.manual_seed(1)
    W = torch.randn(12, 40)
    X = torch.randn(500, 40) * torch.linspace(0.1, 3.0, 40)  # (tokens, in), uneven feature scales
    stats = InputStatistics(40, hessian=False)
    stats.add_batch(X[:200])
    stats.add_batch(X[200:])
    keep, new_weight = get_method("wanda").prune(W, stats, 0.5, parse_structure("unstructured"), MethodOptions())
    assert new_weight is None
    score = W.abs() * X.norm(dim=0).reshape(1, -1)  # |W_ij| * ||X_j||_2
    expected = torch.ones_like(W, dtype=torch.bool)
    for row in range(W.shape[0]):
        expected[row, score[row].argsort()[:20]] = False
    assert torch.equal(keep, expected)


def _layer_error(W, X, keep, new_weight):
    pruned = (new_weight if new_weight is not None else W) * keep
    return float(((X @ W.t() - X @ pruned.t()) ** 2).sum())


@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_sparsegpt_layer_error_is_below_magnitude_and_wanda(structure):
    torch.manual_seed(0)
    W = torch.randn(64, 256)
    mixing = torch.randn(256, 256) / 16
    X = torch.randn(2048, 256) @ mixing + 0.3 * torch.randn(2048, 256)  # correlated inputs
    stats = InputStatistics(256, hessian=True)
    stats.add_batch(X)
    errors = {}
    for name in ("magnitude", "wanda", "sparsegpt"):
        keep, new_weight = METHODS[name].prune(W.clone(), stats, 0.5, parse_structure(structure), MethodOptions())
        assert abs((~keep).float().mean().item() - 0.5) < 1e-6
        errors[name] = _layer_error(W, X, keep, new_weight)
    assert errors["sparsegpt"] < errors["wanda"]
    assert errors["sparsegpt"] < errors["magnitude"]


def test_hessian_diagonal_is_twice_wandas_squared_norm():
    X = torch.randn(300, 16)
    stats = InputStatistics(16, hessian=True)
    stats.add_batch(X)
    assert torch.allclose(torch.diag(stats.hessian), 2 * stats.act_sq, rtol=1e-5)


# ----------------------------------------------------------------------------------- models, end to end

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("structure,sparsity", [("unstructured", 0.6), ("2:4", 0.5), ("4:8", 0.5)])
def test_prune_model_hits_target_and_restores_weights(family, method, structure, sparsity):
    lm = tiny_model(family)
    before = snapshot(lm.model)
    result = prune_model(lm, windows(), PruneConfig(method, structure, sparsity))
    assert_same_weights(before, lm.model)
    modules = lm.adapter.prunable_modules(lm.model)
    assert set(result.masks) == set(modules)
    for name, mask in result.masks.items():
        assert mask.shape == modules[name].weight.shape
        removed = int((~mask).sum())
        if structure == "unstructured":
            rows = weight_matrix(modules[name]).shape[0]
            per = round(mask.numel() * sparsity) if method == "magnitude" else None
            if per is not None:
                assert removed == per
            else:  # per row (wanda) or per block (sparsegpt): within one element per row
                assert abs(removed - mask.numel() * sparsity) <= rows
        else:
            m = parse_structure(structure).m
            matrix_mask = mask.t() if lm.adapter.family == "gpt2" else mask
            assert (matrix_mask.reshape(matrix_mask.shape[0], -1, m).sum(-1) == m // 2).all()
    assert abs(result.sparsity - sparsity) < 0.01
    with result.applied(lm):
        assert all(((modules[n].weight == 0) | ~result.masks[n].logical_not()).all() for n in modules)
    assert_same_weights(before, lm.model)


def test_applied_masks_restores_bit_identical_weights_even_on_error():
    lm = tiny_model("llama")
    before = snapshot(lm.model)
    result = prune_model(lm, windows(), PruneConfig("sparsegpt", "unstructured", 0.5))
    with pytest.raises(RuntimeError):
        with applied_masks(lm.model, result.masks, result.weights):
            changed = lm.model.get_submodule(next(iter(result.masks))).weight
            assert (changed == 0).float().mean() >= 0.49
            raise RuntimeError("boom")
    assert_same_weights(before, lm.model)


def test_same_seed_gives_identical_masks():
    lm = tiny_model("llama")
    a = prune_model(lm, windows(seed=3), PruneConfig("wanda", "unstructured", 0.5))
    b = prune_model(lm, windows(seed=3), PruneConfig("wanda", "unstructured", 0.5))
    c = prune_model(lm, windows(seed=4), PruneConfig("wanda", "unstructured", 0.5))
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert any(not torch.equal(a.masks[n], c.masks[n]) for n in a.masks)


def test_dense_statistics_are_reusable_across_methods_and_sparsities():
    lm = tiny_model("llama")
    stats = collect_statistics(lm, windows(), "hessian")
    for method in ("wanda", "sparsegpt"):
        for sparsity in (0.3, 0.7):
            direct = prune_model(lm, windows(), PruneConfig(method, "unstructured", sparsity, "dense"))
            reused = prune_with_statistics(lm, stats, PruneConfig(method, "unstructured", sparsity, "dense"))
            assert all(torch.equal(direct.masks[n], reused.masks[n]) for n in direct.masks)


def test_pruned_propagation_differs_from_dense_after_the_first_layer():
    lm = tiny_model("llama", layers=3)
    # Same compute dtype on both sides, so only the propagation differs.
    pruned = prune_model(lm, windows(), PruneConfig("wanda", "unstructured", 0.5, "pruned", calib_dtype="float32"))
    dense = prune_model(lm, windows(), PruneConfig("wanda", "unstructured", 0.5, "dense", calib_dtype="float32"))
    first = [n for n in pruned.masks if ".0." in n]
    later = [n for n in pruned.masks if ".2." in n]
    assert all(torch.equal(pruned.masks[n], dense.masks[n]) for n in first)
    assert any(not torch.equal(pruned.masks[n], dense.masks[n]) for n in later)


def test_per_layer_sparsity_overrides_and_targets():
    lm = tiny_model("llama", layers=2)
    result = prune_model(lm, None, PruneConfig("magnitude", "unstructured", 0.5, layer_sparsity={1: 0.2},
                                               targets=("q", "down")))
    assert len(result.masks) == 4
    for name, mask in result.masks.items():
        expected = 0.2 if ".1." in name else 0.5
        assert abs(1 - mask.float().mean().item() - expected) < 0.01
    with pytest.raises(ConfigError, match="not in this model"):
        prune_model(lm, None, PruneConfig("magnitude", targets=("fc1",)))


def test_dense_statistics_are_cached_on_disk_by_content_hash():
    from pruning_core.protocol import Protocol
    from pruning_core.statistics_cache import cached_statistics
    from pruning_core.store import Store

    lm = tiny_model("llama")
    store = Store()
    protocol = Protocol(calib="news", nsamples=4, seqlen=32)
    first = cached_statistics(lm, protocol, "hessian", store)
    assert first.seconds > 0
    again = cached_statistics(lm, protocol, "act_sq", store)  # served by the stored Hessian statistics
    assert again.seconds == 0.0
    q, k = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"
    assert again.by_module[q] is again.by_module[k]  # shared input stored once
    for name, stats in first.by_module.items():
        assert torch.allclose(stats.hessian, again.by_module[name].hessian)
        assert torch.allclose(stats.act_sq, again.by_module[name].act_sq)
    other_seed = cached_statistics(lm, Protocol(calib="news", nsamples=4, seqlen=32, seed=1), "act_sq", store)
    assert other_seed.seconds > 0
    config = PruneConfig("sparsegpt", "unstructured", 0.5, "dense")
    a, b = prune_with_statistics(lm, first, config), prune_with_statistics(lm, again, config)
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)


def test_reported_sparsity_equals_zeros_counted_in_the_applied_model():
    from pruning_core.masks import measured_sparsity

    lm = tiny_model("llama")
    for method in ("magnitude", "sparsegpt"):
        result = prune_model(lm, windows(), PruneConfig(method, "unstructured", 0.55))
        modules = lm.adapter.prunable_modules(lm.model)
        with result.applied(lm):
            live = measured_sparsity(lm.model, modules)
        assert live["overall"] == pytest.approx(result.sparsity, abs=1e-12)
        assert live["per_module"] == pytest.approx(result.per_module_sparsity, abs=1e-12)


def test_score_ranks_give_the_same_masks_as_ranking_afresh():
    """Ranks computed once and cut at any sparsity equal keep_mask_from_scores, ties included."""
    from pruning_core.masks import UNSTRUCTURED, keep_mask_from_ranks, keep_mask_from_scores, score_ranks

    torch.manual_seed(0)
    scores = torch.randint(0, 7, (16, 40)).float()  # many ties, as dequantised weights have
    for per_row in (True, False):
        ranks = score_ranks(scores, per_row)
        assert ranks.dtype == torch.int16
        for sparsity in (0.0, 0.1, 0.33, 0.5, 0.77, 0.95):
            expected = keep_mask_from_scores(scores, sparsity, UNSTRUCTURED, per_row=per_row)
            assert torch.equal(keep_mask_from_ranks(ranks, sparsity, per_row), expected)


def test_dense_sweep_ranks_reuse_matches_direct_pruning():
    """prune_with_statistics with a shared ranks dict gives bit-identical masks to pruning without it."""
    loaded = tiny_model("llama")
    stats = collect_statistics(loaded, windows(), "act_sq")
    ranks: dict = {}
    for method in ("wanda", "magnitude"):
        for sparsity in (0.3, 0.6):
            config = PruneConfig(method, "unstructured", sparsity, "dense")
            with_ranks = prune_with_statistics(loaded, stats, config, ranks=ranks)
            direct = prune_with_statistics(loaded, stats, config)
            assert with_ranks.sparsity == direct.sparsity
            assert with_ranks.masks.keys() == direct.masks.keys()
            assert all(torch.equal(with_ranks.masks[n], direct.masks[n]) for n in direct.masks)
    assert ranks  # they were filled and reused


# ------------------------------------------------------------------------- calibration compute dtype

def test_calibration_dtype_is_resolved_and_recorded():
    """None resolves per propagation and method (verified bf16 only for Wanda in pruned propagation), and
    `to_dict` names the dtype actually used."""
    assert PruneConfig("wanda", propagation="pruned").to_dict()["calib_dtype"] == "bfloat16"
    assert PruneConfig("sparsegpt", propagation="pruned").to_dict()["calib_dtype"] == "float32"
    assert PruneConfig("wanda", propagation="dense").to_dict()["calib_dtype"] == "float32"
    explicit = PruneConfig("sparsegpt", calib_dtype="float32")
    assert explicit.to_dict()["calib_dtype"] == "float32"
    assert explicit != PruneConfig("sparsegpt", calib_dtype="bfloat16")  # a different setting, a different key
    with pytest.raises(ConfigError, match="float32, bfloat16"):
        PruneConfig("wanda", calib_dtype="float16").validate()
    lm = tiny_model("llama", layers=2)
    result = prune_model(lm, windows(), PruneConfig("wanda", "unstructured", 0.5, calib_dtype="bfloat16"))
    assert result.config.to_dict()["calib_dtype"] == "bfloat16"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_bf16_calibration_forwards_stay_close_to_fp32(family, method):
    """bf16 autocast in the walk: masks nearly the same as fp32 and the pruned model's loss within 1 %."""
    from pruning_core.metrics import perplexity

    lm = tiny_model(family, layers=3)
    before = snapshot(lm.model)
    calib, evals = windows(n=16, seed=1), windows(n=4, seed=2)
    results = {dtype: prune_model(lm, calib, PruneConfig(method, "unstructured", 0.5, calib_dtype=dtype))
               for dtype in ("float32", "bfloat16")}
    assert_same_weights(before, lm.model)
    fp32, bf16 = results["float32"], results["bfloat16"]
    same = sum(int((fp32.masks[n] == bf16.masks[n]).sum()) for n in fp32.masks)
    total = sum(m.numel() for m in fp32.masks.values())
    assert same / total > 0.95, f"only {same / total:.3f} of mask entries agree"
    assert any(not torch.equal(fp32.masks[n], bf16.masks[n]) for n in fp32.masks)  # bf16 really ran
    assert abs(bf16.sparsity - fp32.sparsity) < 0.005
    nll = {}
    for dtype, result in results.items():
        with result.applied(lm):
            nll[dtype] = perplexity(lm, evals).nll
    assert abs(nll["bfloat16"] / nll["float32"] - 1) < 0.01, nll


def test_fp32_calibration_is_the_reference_walk():
    """calib_dtype float32 runs no autocast: the same masks as pruning from fp32 dense statistics by hand."""
    lm = tiny_model("llama", layers=2)
    stats = collect_statistics(lm, windows(), "act_sq", dtype="float32")
    by_hand = prune_with_statistics(lm, stats, PruneConfig("wanda", "unstructured", 0.5, "dense"))
    walked = prune_model(lm, windows(), PruneConfig("wanda", "unstructured", 0.5, "dense", calib_dtype="float32"))
    assert all(torch.equal(by_hand.masks[n], walked.masks[n]) for n in by_hand.masks)


def test_upper_gram_rebuilds_the_full_hessian():
    from pruning_core.stats import add_upper_gram, symmetric_from_upper

    x = torch.randn(300, 700, generator=torch.Generator().manual_seed(3))
    acc = torch.zeros(700, 700)
    add_upper_gram(acc, x, block=256)
    torch.testing.assert_close(symmetric_from_upper(acc), x.t() @ x, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_sparsegpt_group_gives_each_matrix_its_own_result(structure):
    from pruning_core.methods.sparsegpt import prune_sparsegpt, prune_sparsegpt_group

    g = torch.Generator().manual_seed(5)
    x = torch.randn(512, 64, generator=g)
    stats = InputStatistics(64, hessian=True)
    stats.add_batch(x)
    weights = [torch.randn(rows, 64, generator=g) for rows in (32, 16, 8)]
    sparsities = [0.5, 0.3, 0.7]
    options = MethodOptions(blocksize=16)
    grouped = prune_sparsegpt_group([w.clone() for w in weights], stats, sparsities, parse_structure(structure),
                                    options)
    for w, s, (keep, new) in zip(weights, sparsities, grouped):
        alone_keep, alone_new = prune_sparsegpt(w.clone(), stats, s, parse_structure(structure), options)
        assert torch.equal(keep, alone_keep)
        torch.testing.assert_close(new, alone_new, rtol=1e-4, atol=1e-5)


def test_statistics_pass_stops_before_the_last_linear_with_the_same_results():
    from pruning_core.walk import capture_layer_inputs, walk_layers

    lm = tiny_model("llama", layers=2)
    ids = windows(n=4, seqlen=16)
    calls = {"down": 0}
    downs = [layer.mlp.down_proj for layer in lm.adapter.decoder_layers(lm.model)]
    handles = [d.register_forward_hook(lambda *a: calls.__setitem__("down", calls["down"] + 1)) for d in downs]

    def run(always_changes):
        seen, calls["down"] = [], 0

        def on_layer(index, layer, stats):
            seen.append({k: v.hessian.clone() for k, v in stats.by_kind.items()})
            with torch.no_grad():
                layer.mlp.up_proj.weight.mul_(0.5)  # a change, so outputs must be recomputed
            return True

        before = snapshot(lm.model)
        out = walk_layers(lm, capture_layer_inputs(lm, ids, 2), on_layer, need="hessian",
                          always_changes=always_changes)
        lm.model.load_state_dict(before)
        return seen, out.hidden, calls["down"]

    full, full_out, full_calls = run(False)
    early, early_out, early_calls = run(True)
    for handle in handles:
        handle.remove()
    assert early_calls == full_calls // 2  # the statistics pass never ran down_proj; the recomputation did
    for a, b in zip(full, early):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(full_out, early_out))


def _textbook_sparsegpt(weight, hessian, sparsity, structure, blocksize, percdamp=0.01):
    """SparseGPT as the paper's pseudocode reads: H^-1 by Cholesky inverse, one column at a time, every later
    column of the block updated after each column; exact counts per block as the engine distributes them."""
    from pruning_core.masks import lowest_k, prune_count

    W = weight.clone()
    H = hessian.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    rows, cols = W.shape
    total = prune_count(rows * cols, sparsity)
    pruned = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, H1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        d = torch.diag(H1)
        mask = torch.zeros_like(W1, dtype=torch.bool)
        if not structure.is_nm:
            k = round(total * i2 / cols) - round(total * i1 / cols)
            mask = lowest_k((W1.square() / d.square()).reshape(-1), k).reshape(W1.shape)
        errors = torch.zeros_like(W1)
        for i in range(i2 - i1):
            if structure.is_nm and i % structure.m == 0:
                group = W1[:, i:i + structure.m].square() / d[i:i + structure.m].square()
                mask[:, i:i + structure.m] = lowest_k(group, structure.m - structure.n)
            q = torch.where(mask[:, i], torch.zeros_like(W1[:, i]), W1[:, i])
            err = (W1[:, i] - q) / d[i]
            W1[:, i:] -= err.unsqueeze(1) * H1[i, i:].unsqueeze(0)
            W1[:, i] = q
            errors[:, i] = err
        W[:, i1:i2] = W1
        pruned[:, i1:i2] = mask
        W[:, i2:] -= errors @ Hinv[i1:i2, i2:]
    return ~pruned, W * ~pruned


@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_sparsegpt_equals_the_textbook_column_loop(structure):
    # The engine's loop works on the transpose in sub-blocks, with a factor of H^-1 from one Cholesky of the
    # reversed Hessian: the same arithmetic in another order, so the same masks and weights up to fp32 rounding.
    from pruning_core.methods.sparsegpt import prune_sparsegpt

    g = torch.Generator().manual_seed(11)
    x = torch.randn(600, 100, generator=g) * torch.rand(100, generator=g)
    x[:, 7] = 0.0  # a dead input
    stats = InputStatistics(100, hessian=True)
    stats.add_batch(x)
    weight = torch.randn(48, 100, generator=g)
    spec = parse_structure(structure)
    keep, new = prune_sparsegpt(weight.clone(), stats, 0.5, spec, MethodOptions(blocksize=32))
    ref_keep, ref_new = _textbook_sparsegpt(weight, stats.hessian, 0.5, spec, blocksize=32)
    assert torch.equal(keep, ref_keep)
    torch.testing.assert_close(new, ref_new, rtol=1e-4, atol=1e-5)
    assert int((~keep).sum()) == 48 * 100 // 2
