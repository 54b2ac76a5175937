"""Sensitivity maps on tiny random models: shapes, agreement with direct computations, store, job, CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from pruning_core.cli import main as cli_main
from pruning_core.errors import ConfigError, JobCancelled
from pruning_core.masks import UNSTRUCTURED, applied_masks
from pruning_core.methods import MethodOptions, get_method
from pruning_core.metrics import perplexity
from pruning_core.models import load_model, to_native, weight_matrix
from pruning_core.protocol import Protocol, calibration_ids, evaluation_ids
from pruning_core.prune import collect_statistics
from pruning_core.analysis.refinement import run_sensitivity_job
from pruning_core.analysis.sensitivity import (
    TAYLOR_WINDOWS,
    compute_sensitivity,
)
from pruning_core.store import Store

PROTOCOL = Protocol(calib="news", nsamples=8, seqlen=64, eval_windows=4, batch_size=4)
PROBE = 3


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def wanda_maps(tiny):
    return compute_sensitivity(tiny, PROTOCOL, "wanda", [0.5], probe_windows=PROBE)


def _mask(loaded, name, method, sparsity, need):
    """The method's keep-mask (and new weight) for one module from dense statistics, computed independently."""
    stats = collect_statistics(loaded, calibration_ids(loaded, PROTOCOL), need, PROTOCOL.batch_size) \
        if need != "none" else None
    module = loaded.model.get_submodule(name)
    keep, new = get_method(method).prune(weight_matrix(module).float().contiguous(),
                                         stats.by_module[name] if stats else None, sparsity, UNSTRUCTURED,
                                         MethodOptions())
    return module, keep, new


def test_maps_have_shape_and_finite_values(tiny, wanda_maps):
    layers = len(tiny.adapter.decoder_layers(tiny.model))
    kinds = tiny.adapter.module_kinds
    assert [(m["metric"], m["sparsity"]) for m in wanda_maps["maps"]] == \
        [("exact", 0.5), ("fisher", 0.5), ("reconstruction", 0.5), ("taylor", 0.5)]
    for m in wanda_maps["maps"]:
        assert m["layers"] == list(range(layers)) and m["modules"] == kinds
        assert len(m["values"]) == layers and all(len(row) == len(kinds) for row in m["values"])
        assert all(math.isfinite(v) for row in m["values"] for v in row)
        assert len(m["layer_values"]) == layers and all(math.isfinite(v) for v in m["layer_values"])
        assert m["method"] == "wanda" and m["protocol"]["probe_windows"] == PROBE
        assert m["baseline_loss"] == wanda_maps["maps"][0]["baseline_loss"] > 0
    recon = wanda_maps["maps"][2]["values"]
    assert all(0 < v < 1 for row in recon for v in row)  # pruning half the weights loses part of the output
    assert {c["proxy"] for c in wanda_maps["correlations"]} == {"fisher", "reconstruction", "taylor"}
    assert all(c["scope"] == "all cells" for c in wanda_maps["correlations"])
    assert all(-1 <= c["spearman"] <= 1 for c in wanda_maps["correlations"])


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])
def test_exact_matches_a_full_forward_with_the_module_masked(family):
    loaded = load_model(f"tiny-{family}")
    result = compute_sensitivity(loaded, PROTOCOL, "wanda", [0.5], metrics=["exact"], probe_windows=PROBE)
    exact = result["maps"][0]
    probe = evaluation_ids(loaded, "news", replace(PROTOCOL, eval_windows=PROBE))[:PROBE]
    dense = perplexity(loaded, probe).nll
    assert exact["baseline_loss"] == pytest.approx(dense, abs=1e-6)
    kinds = loaded.adapter.module_kinds
    for layer, kind in [(0, kinds[0]), (1, kinds[-1]), (0, kinds[len(kinds) // 2])]:
        name = loaded.adapter.qualified_name(layer, kind)
        module, keep, _ = _mask(loaded, name, "wanda", 0.5, "act_sq")
        with applied_masks(loaded.model, {name: to_native(module, keep)}):
            pruned = perplexity(loaded, probe).nll
        direct = pruned - dense
        assert exact["values"][layer][kinds.index(kind)] == pytest.approx(direct, abs=1e-5)
    # The whole-layer aggregate is the same thing with every linear of the layer pruned.
    names = [loaded.adapter.qualified_name(1, k) for k in kinds]
    masks = {}
    for name in names:
        module, keep, _ = _mask(loaded, name, "wanda", 0.5, "act_sq")
        masks[name] = to_native(module, keep)
    with applied_masks(loaded.model, masks):
        whole = perplexity(loaded, probe).nll - dense
    assert exact["layer_values"][1] == pytest.approx(whole, abs=1e-5)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_reconstruction_from_the_hessian_matches_the_direct_output_error(tiny, method):
    result = compute_sensitivity(tiny, PROTOCOL, method, [0.6], metrics=["reconstruction"], probe_windows=1)
    values = result["maps"][0]["values"]
    calib = calibration_ids(tiny, PROTOCOL)
    for layer, kind in [(0, "q"), (1, "down"), (1, "o")]:
        name = tiny.adapter.qualified_name(layer, kind)
        module, keep, new = _mask(tiny, name, method, 0.6, "hessian")
        seen = []
        handle = module.register_forward_hook(lambda m, i, o, seen=seen: seen.append(i[0].detach().reshape(-1, i[0].shape[-1])))
        try:
            with torch.inference_mode():
                tiny.model(input_ids=calib)
        finally:
            handle.remove()
        X = torch.cat(seen).double()                              # (tokens, in)
        W = weight_matrix(module).double()
        W_s = (new.double() if new is not None else W) * keep
        direct = ((X @ W.t() - X @ W_s.t()).square().sum() / (X @ W.t()).square().sum()).item()
        assert values[layer][tiny.adapter.module_kinds.index(kind)] == pytest.approx(direct, rel=1e-4)


def test_taylor_matches_autograd(tiny, wanda_maps):
    taylor = wanda_maps["maps"][3]["values"]
    ids = calibration_ids(tiny, PROTOCOL)[:TAYLOR_WINDOWS]
    name = tiny.adapter.qualified_name(1, "v")
    module, keep, _ = _mask(tiny, name, "wanda", 0.5, "act_sq")
    weight = module.weight
    with torch.enable_grad():
        logits = tiny.model(input_ids=ids).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        (grad,) = torch.autograd.grad(loss, weight)
    direct = (weight.detach() * grad).abs()[~to_native(module, keep)].sum().item()
    assert taylor[1][tiny.adapter.module_kinds.index("v")] == pytest.approx(direct, rel=1e-4)
    assert weight.grad is None


@pytest.mark.parametrize("metric", ["taylor", "reconstruction"])
def test_a_proxy_alone_needs_no_other_metric(tiny, wanda_maps, metric):
    """A proxy asked for on its own still gets the method's statistics for its masks (it once had none)."""
    alone = compute_sensitivity(tiny, PROTOCOL, "wanda", [0.5], metrics=[metric], probe_windows=PROBE)
    together = next(m for m in wanda_maps["maps"] if m["metric"] == metric)
    flat = [v for row in alone["maps"][0]["values"] for v in row]
    assert flat == pytest.approx([v for row in together["values"] for v in row], rel=1e-5, abs=1e-9)


def test_weights_and_grad_flags_are_left_as_they_were(tiny):
    before = {n: p.detach().clone() for n, p in tiny.model.named_parameters()}
    flags = {n: p.requires_grad for n, p in tiny.model.named_parameters()}
    compute_sensitivity(tiny, PROTOCOL, "sparsegpt", [0.5], probe_windows=1)
    for n, p in tiny.model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
        assert p.requires_grad == flags[n] and p.grad is None


def test_store_cache_returns_identical_numbers(tiny, tmp_path):
    store = Store(tmp_path / "s.sqlite")
    first = compute_sensitivity(tiny, PROTOCOL, "magnitude", [0.3, 0.6], probe_windows=2, store=store)
    assert not any(m["cached"] for m in first["maps"])
    second = compute_sensitivity(tiny, PROTOCOL, "magnitude", [0.3, 0.6], probe_windows=2, store=store,
                                 progress=lambda f, m: pytest.fail(f"recomputed: {m}") if "layer" in m else None)
    assert all(m["cached"] for m in second["maps"])
    for a, b in zip(first["maps"], second["maps"]):
        assert a["values"] == b["values"] and a["layer_values"] == b["layer_values"]
    assert first["correlations"] == second["correlations"]
    # A different sparsity is a different map.
    third = compute_sensitivity(tiny, PROTOCOL, "magnitude", [0.4], metrics=["taylor"], probe_windows=2, store=store)
    assert not third["maps"][0]["cached"]


def test_cancelled_exact_map_resumes_from_stored_rows(tiny, tmp_path):
    store = Store(tmp_path / "s.sqlite")

    def cancel_in_layer_two(fraction, message):
        if message.startswith("exact 0.5: layer 2/"):
            raise JobCancelled("test")

    with pytest.raises(JobCancelled):
        compute_sensitivity(tiny, PROTOCOL, "wanda", [0.5], metrics=["exact"], probe_windows=2, store=store,
                            progress=cancel_in_layer_two)
    messages = []
    resumed = compute_sensitivity(tiny, PROTOCOL, "wanda", [0.5], metrics=["exact"], probe_windows=2, store=store,
                                  progress=lambda f, m: messages.append(m))
    assert any("layer 1 from the store" in m for m in messages)
    fresh = compute_sensitivity(tiny, PROTOCOL, "wanda", [0.5], metrics=["exact"], probe_windows=2)
    flat = [v for row in resumed["maps"][0]["values"] for v in row]
    assert flat == pytest.approx([v for row in fresh["maps"][0]["values"] for v in row], abs=1e-12)


def test_bad_input_is_a_config_error(tiny):
    with pytest.raises(ConfigError):
        compute_sensitivity(tiny, PROTOCOL, "wanda", [1.5], probe_windows=1)
    with pytest.raises(ConfigError):
        compute_sensitivity(tiny, PROTOCOL, "wanda", [0.5], metrics=["obs-trace"], probe_windows=1)
    with pytest.raises(ConfigError):
        compute_sensitivity(tiny, PROTOCOL, "nope", [0.5], probe_windows=1)
    with pytest.raises(ConfigError):
        compute_sensitivity(tiny, PROTOCOL, "wanda", [0.5], probe_windows=1, layers=[7])


def test_sensitivity_job_runs_inline_and_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path / "home"))
    from pruning_core.jobs.runner import JobRunner

    spec = {"model": "tiny-llama", "protocol": PROTOCOL.to_dict(), "method": "wanda", "sparsities": [0.5],
            "metrics": ["exact", "taylor"], "probe_windows": 2}
    runner = JobRunner()
    result = runner.run_inline("sensitivity", spec)
    assert [m["metric"] for m in result["maps"]] == ["exact", "taylor"]
    jobs = runner.list_jobs()
    assert jobs[0]["kind"] == "sensitivity" and jobs[0]["state"] == "done"
    # The same spec again is the stored job result, and the function itself reuses stored maps.
    assert runner.run_inline("sensitivity", spec)["maps"][0]["values"] == result["maps"][0]["values"]
    again = run_sensitivity_job(spec, runner.store, lambda f, m: None)
    assert all(m["cached"] for m in again["maps"])


def test_cli_sensitivity_writes_the_documents(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path / "home"))
    calib = tmp_path / "calib.txt"
    calib.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog, "
                                 f"then sleeps {i} hours in the sun." for i in range(200)))
    out = tmp_path / "out"
    code = cli_main(["sensitivity", "--model", "tiny-llama", "--calib", str(calib), "--method", "wanda",
                     "--sparsity", "0.5", "--metric", "exact,taylor", "--nsamples", "4", "--seqlen", "32",
                     "--probe-windows", "2", "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "sensitivity.json").read_text())
    for key in ("layers", "modules", "values", "metric", "method", "sparsity", "baseline_loss", "protocol"):
        assert key in doc
    assert doc["metric"] == "exact" and doc["sparsity"] == 0.5 and doc["protocol"]["seqlen"] == 32
    everything = json.loads((out / "sensitivity_all.json").read_text())
    assert len(everything["maps"]) == 2 and everything["correlations"][0]["proxy"] == "taylor"
    printed = capsys.readouterr().out
    assert "most sensitive" in printed and "least sensitive" in printed
    assert cli_main(["jobs"]) == 0
    assert "sensitivity" in capsys.readouterr().out
    assert cli_main(["sensitivity", "--model", "tiny-llama", "--calib", str(calib), "--metric", "obs-trace",
                     "--out", str(out)]) == 2
    assert cli_main(["jobs", "--cancel", "zzzz"]) == 2


# ------------------------------------------------------------------ second-order estimate and agreement

def test_spread_order_samples_the_depth_evenly_and_covers_every_layer():
    from pruning_core.analysis.sensitivity import spread_order

    order = spread_order(list(range(30)))
    assert order[:4] == [0, 29, 14, 7] and sorted(order) == list(range(30))
    assert spread_order([3, 5]) == [3, 5] and sorted(spread_order([2, 4, 6, 8, 10])) == [2, 4, 6, 8, 10]


def test_second_order_estimate_is_the_taylor_expansion_with_per_window_gradients(tiny):
    """mean_w(g_w) . d + T/2 * sum(mean_w(g_w^2) d^2), checked against gradients taken one window at a time."""
    from pruning_core.analysis.second_order import gradient_moments, pruning_delta
    from pruning_core.analysis.sensitivity import probe_ids

    ids = probe_ids(tiny, PROTOCOL, PROBE)
    flags = [p.requires_grad for p in tiny.model.parameters()]
    moments = gradient_moments(tiny, ids)
    assert [p.requires_grad for p in tiny.model.parameters()] == flags  # restored
    assert all(p.grad is None for p in tiny.model.parameters())
    name = tiny.adapter.qualified_name(1, "down")
    module = tiny.model.get_submodule(name)
    grads = []
    for w in range(ids.shape[0]):
        weight = module.weight.detach().clone().requires_grad_(True)
        logits = torch.func.functional_call(tiny.model, {f"{name}.weight": weight}, (ids[w:w + 1],)).logits
        loss = F.cross_entropy(logits[0, :-1], ids[w, 1:])
        grads.append(torch.autograd.grad(loss, weight)[0])
    mean = torch.stack(grads).mean(0)
    mean_sq = torch.stack(grads).square().mean(0)
    weight = weight_matrix(module).float()
    keep = torch.rand_like(weight) > 0.5
    delta = pruning_delta(weight, keep, None)
    expected = float((mean * delta).sum()) + 0.5 * (ids.shape[1] - 1) * float((mean_sq * delta ** 2).sum())
    assert moments.estimate(name, delta) == pytest.approx(expected, rel=1e-3)


def test_folded_second_order_estimates_equal_the_per_weight_moments_and_hold_no_gradient(tiny):
    """Given the changes before the passes, each gradient is folded into two sums per estimate during backward and
    freed (no per-weight moments: 22 GB for a 3B model); the estimates are those of the kept moments."""
    from pruning_core.analysis.second_order import gradient_moments, pruning_delta
    from pruning_core.analysis.sensitivity import probe_ids

    ids = probe_ids(tiny, PROTOCOL, PROBE)
    modules = tiny.adapter.prunable_modules(tiny.model)
    generator = torch.Generator().manual_seed(0)
    keeps = {(name, s): torch.rand(weight_matrix(m).shape, generator=generator) > s
             for name, m in modules.items() for s in (0.3, 0.7)}
    alive = []  # gradients alive when each module's gradient is folded

    def deltas(name):
        alive.append(sum(p.grad is not None for p in tiny.model.parameters()))
        weight = weight_matrix(modules[name]).detach().float()
        return {s: pruning_delta(weight, keeps[(name, s)], None) for s in (0.3, 0.7)}

    folded = gradient_moments(tiny, ids, deltas=deltas)
    kept = gradient_moments(tiny, ids)
    assert not folded.mean and not folded.mean_sq and max(alive) <= 1
    assert folded.loss == pytest.approx(kept.loss, rel=1e-6)
    assert all(p.grad is None for p in tiny.model.parameters())
    for (name, s), keep in keeps.items():
        expected = kept.estimate(name, pruning_delta(weight_matrix(modules[name]).float(), keep, None))
        assert folded.estimate_at(name, s) == pytest.approx(expected, rel=1e-4, abs=1e-9)


def test_second_order_map_ranks_cells_like_the_exact_map(wanda_maps):
    fisher = next(c for c in wanda_maps["correlations"] if c["proxy"] == "fisher")
    assert fisher["spearman"] >= 0.7 and fisher["cells"] == sum(len(r) for r in wanda_maps["maps"][0]["values"])


def test_a_proxy_alone_comes_with_its_agreement_on_a_sample_of_exact_rows(tmp_path):
    loaded = load_model("tiny-llama", )
    store = Store(tmp_path / "store.sqlite")
    proxy_only = compute_sensitivity(loaded, PROTOCOL, "wanda", [0.5], metrics=["fisher"], probe_windows=PROBE,
                                     store=store, agreement_layers=1)
    (row,) = proxy_only["correlations"]
    assert row["proxy"] == "fisher" and row["cells"] == len(loaded.adapter.module_kinds)
    assert row["scope"].startswith("sample of") and -1 <= row["spearman"] <= 1
    # The sampled row is a stored row of the exact map: the full exact map reuses it and agrees with it.
    seen = []
    full = compute_sensitivity(loaded, PROTOCOL, "wanda", [0.5], metrics=["exact"], probe_windows=PROBE,
                               store=store, on_exact_row=lambda s, layer, values, lv: seen.append(layer))
    assert seen == [0, 1]
    assert full["maps"][0]["values"][0] == pytest.approx(
        compute_sensitivity(loaded, PROTOCOL, "wanda", [0.5], metrics=["exact"], probe_windows=PROBE,
                            layers=[0])["maps"][0]["values"][0], abs=1e-6)


def test_cli_default_writes_each_refinement_as_soon_as_it_exists(tmp_path, monkeypatch, capsys):
    """`prunescope sensitivity` with its defaults: sensitivity.json holds the estimate first, then the exact map."""
    import pruning_core.cli.analysis as cli_analysis

    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(cli_analysis, "VIEW_POLL_S", 0.0)  # look at the store at every progress call
    out = tmp_path / "out"
    written = []
    real_write = cli_analysis.write_json

    def spy(path, document):
        if path.name == "sensitivity.json":
            written.append((document["metric"], document["refinement"]["step"]))
        real_write(path, document)

    monkeypatch.setattr(cli_analysis, "write_json", spy)
    assert cli_main(["sensitivity", "--model", "tiny-llama", "--calib", "news", "--nsamples", "4", "--seqlen", "32",
                     "--probe-windows", "2", "--out", str(out)]) == 0
    assert written[0] == ("fisher", 1) and written[-1] == ("exact", 2)
    doc = json.loads((out / "sensitivity.json").read_text())
    assert doc["refinement"]["final"] and doc["refinement"]["agreement"]["scope"] == "all cells"
    assert "refinement 1/2 (second-order estimate)" in capsys.readouterr().out


def test_cli_metric_choices_are_the_core_metrics():
    from pruning_core.analysis.sensitivity import METRICS
    from pruning_core.cli.analysis import METRIC_CHOICES

    assert METRIC_CHOICES == METRICS
