"""Allocation as an axis of a sweep: plans per (method, allocation, sparsity), uniform points unchanged.

A test allocator ("front": layer 0 keeps more weights, the others make up the global target by parameters)
is registered in `ALLOCATORS` for these tests, so the sweep's plumbing is checked without depending on how
OWL or the sensitivity allocator decide; it is a real allocator, read through `make_plan` like any other.
"""

from __future__ import annotations

import json

import pytest

from pruning_core import statistics_cache
from pruning_core.allocation.allocators import ALLOCATORS, Allocator
from pruning_core.plan import SparsityPlan, module_sizes
from pruning_core.analysis.sweep import SweepSpec, point_key, run_sweep
from pruning_core import cli
from pruning_core.errors import ConfigError
from pruning_core.store import Store, content_hash
from pruning_core.models import load_model
from pruning_core.protocol import Protocol
from pruning_core.prune import PruneConfig

PROTOCOL = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2, batch_size=4)
FRONT_SHIFT = 0.2  # layer 0 is pruned this much less than the target


def _front(inputs, target: float) -> SparsityPlan:
    """Layer 0 at target - FRONT_SHIFT, every other layer higher so the global sparsity by parameters is target."""
    assert inputs.statistics is not None and inputs.statistics.covers("act_sq")  # the sweep passes its statistics
    sizes = module_sizes(inputs.loaded)
    totals = [sum(layer.values()) for layer in sizes]
    first = target - FRONT_SHIFT
    rest = (target * sum(totals) - first * totals[0]) / sum(totals[1:])
    return SparsityPlan.from_layers(inputs.loaded.adapter.module_kinds, [first] + [rest] * (len(sizes) - 1),
                                    "front", target)


def _by_map(inputs, target: float) -> SparsityPlan:
    """Needs a sensitivity map; records how many maps it was given, so the test sees what reached it."""
    sizes = module_sizes(inputs.loaded)
    return SparsityPlan(tuple(inputs.loaded.adapter.module_kinds),
                        tuple((target,) * len(inputs.loaded.adapter.module_kinds) for _ in sizes), "by_map", target,
                        (("maps", len(inputs.sensitivity["maps"])),))


@pytest.fixture
def allocators(monkeypatch):
    monkeypatch.setitem(ALLOCATORS, "front", Allocator("front", "act_sq", _front, "layer 0 kept denser (test)"))
    monkeypatch.setitem(ALLOCATORS, "by_map", Allocator("by_map", "sensitivity", _by_map, "reads a map (test)"))


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


@pytest.fixture
def walks(monkeypatch):
    """Count the dense statistics walks (calibration passes) the sweep's statistics cache runs."""
    calls = []
    real = statistics_cache.collect_statistics

    def counting(*args, **kwargs):
        calls.append(args[2] if len(args) > 2 else kwargs.get("need"))
        return real(*args, **kwargs)

    monkeypatch.setattr(statistics_cache, "collect_statistics", counting)
    return calls


def _layer_sparsity(tiny, masks: dict, layer: int) -> float:
    names = [tiny.adapter.qualified_name(layer, kind) for kind in tiny.adapter.module_kinds]
    return sum(int((~masks[n]).sum()) for n in names) / sum(masks[n].numel() for n in names)


@pytest.mark.parametrize("propagation", ["dense", "pruned"])
def test_plan_points_reach_their_sparsity_and_uniform_points_are_unchanged(tiny, allocators, walks, propagation):
    spec = SweepSpec(model="tiny-llama", methods=("wanda",), sparsities=(0.4, 0.6), eval_corpora=("news",),
                     propagation=propagation, protocol=PROTOCOL, allocations=("uniform", "front"))
    results = run_sweep(spec, loaded=tiny)
    # One dense calibration walk in all, shared by both plans (and by dense-propagation pruning).
    assert walks == ["act_sq"]
    plain = run_sweep(SweepSpec(model="tiny-llama", methods=("wanda",), sparsities=(0.4, 0.6),
                                eval_corpora=("news",), propagation=propagation, protocol=PROTOCOL), loaded=tiny)
    assert results["allocations"] == ["uniform", "front"] and plain["allocations"] == ["uniform"]
    assert [(p["allocation"], p["target_sparsity"]) for p in results["points"]] == [
        ("uniform", 0.4), ("front", 0.4), ("uniform", 0.6), ("front", 0.6)]
    uniform = [p for p in results["points"] if p["allocation"] == "uniform"]
    assert [p["ppl"] for p in uniform] == [p["ppl"] for p in plain["points"]]  # bit-identical numbers
    assert all(p["plan"] is None and p["plan_digest"] is None for p in uniform)
    sizes = module_sizes(tiny)
    for point in (p for p in results["points"] if p["allocation"] == "front"):
        plan = SparsityPlan.from_dict(point["plan"])
        assert plan.allocator == "front" and point["plan_digest"] == plan.digest()
        assert plan.global_sparsity(sizes) == pytest.approx(point["target_sparsity"], abs=1e-9)
        assert point["sparsity"] == pytest.approx(point["target_sparsity"], abs=0.01)  # measured on the masks
        assert plan.values[0][0] == pytest.approx(point["target_sparsity"] - FRONT_SHIFT)
        assert point["ppl"] != next(p["ppl"] for p in uniform if p["target_sparsity"] == point["target_sparsity"])


def test_plan_point_masks_follow_the_plan_per_layer(tiny, allocators):
    from pruning_core.prune import collect_statistics, prune_with_statistics
    from pruning_core.protocol import calibration_ids
    from pruning_core.allocation.allocators import AllocationInputs, make_plan

    stats = collect_statistics(tiny, calibration_ids(tiny, PROTOCOL), "act_sq", PROTOCOL.batch_size)
    plan = make_plan("front", AllocationInputs(tiny, statistics=stats), 0.5)
    config = PruneConfig("wanda", sparsity=0.5, propagation="dense").with_plan(tiny, plan)
    result = prune_with_statistics(tiny, stats, config)
    for layer in range(plan.layers):
        assert _layer_sparsity(tiny, result.masks, layer) == pytest.approx(plan.values[layer][0], abs=0.01)


def test_stored_points_resume_and_uniform_keys_are_those_of_before(tiny, allocators, tmp_path):
    store = Store(tmp_path / "store.sqlite")
    spec = SweepSpec(model="tiny-llama", methods=("magnitude",), sparsities=(0.5,), eval_corpora=("news",),
                     protocol=PROTOCOL, allocations=("uniform", "front"))
    first = run_sweep(spec, loaded=tiny, store=store)
    second = run_sweep(spec, loaded=tiny, store=store)
    assert not any(p["cached"] for p in first["points"]) and all(p["cached"] for p in second["points"])
    assert [(p["allocation"], p["plan"], p["ppl"]) for p in first["points"]] == [
        (p["allocation"], p["plan"], p["ppl"]) for p in second["points"]]
    # A sweep made before allocations existed finds its uniform point under the same key.
    from pruning_core.protocol import corpus_key

    key = content_hash(point_key(tiny.fingerprint, corpus_key("news", "calibration", None), PROTOCOL,
                                 PruneConfig("magnitude", "unstructured", 0.5, "pruned"),
                                 {"news": corpus_key("news", "evaluation")["sha256"]}))
    assert store.get_result(key)["ppl"] == first["points"][0]["ppl"]
    assert "allocations" not in SweepSpec().to_dict()  # the run key of a uniform sweep is unchanged too
    assert SweepSpec.from_dict(spec.to_dict()) == spec


def test_nm_structures_are_swept_uniform_only(allocators):
    spec = SweepSpec(model="tiny-llama", methods=("wanda",), structures=("unstructured", "2:4"), sparsities=(0.5,),
                     allocations=("front",))
    assert [(c.structure, a) for c, a in spec.grid()] == [("unstructured", "front"), ("2:4", "uniform")]


def test_sensitivity_allocation_reads_the_given_map_or_computes_one(tiny, allocators):
    given = {"maps": [{"values": [[0.0]]}, {"values": [[0.0]]}, {"values": [[0.0]]}]}
    spec = SweepSpec(model="tiny-llama", methods=("magnitude",), sparsities=(0.5,), eval_corpora=("news",),
                     protocol=PROTOCOL, allocations=("by_map",))
    (point,) = run_sweep(spec, loaded=tiny, sensitivity=given)["points"]
    assert point["plan"]["settings"] == {"maps": 3}
    (point,) = run_sweep(spec, loaded=tiny)["points"]  # none given: the exact map at 0.5 and 0.7
    assert spec.map_sparsities() == (0.5, 0.7) and point["plan"]["settings"] == {"maps": 2}


def test_unknown_or_repeated_allocation_is_refused_with_the_known_names():
    with pytest.raises(ConfigError, match="choose one of uniform"):
        SweepSpec(allocations=("uniform", "evenly")).validate()
    with pytest.raises(ConfigError, match="twice"):
        SweepSpec(allocations=("uniform", "Uniform")).validate()
    with pytest.raises(ConfigError, match="No allocation"):
        SweepSpec(allocations=()).validate()


def test_cli_allocation_axis(tmp_path, allocators, capsys):
    out = tmp_path / "sweep"
    code = cli.main(["sweep", "--model", "tiny-llama", "--calib", "news", "--nsamples", "4", "--seqlen", "32",
                     "--eval-windows", "2", "--eval", "news", "--methods", "wanda", "--sparsities", "0.5",
                     "--propagation", "dense", "--allocation", "uniform, front", "--no-store", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert [p["allocation"] for p in results["points"]] == ["uniform", "front"]
    assert "front" in capsys.readouterr().out
    code = cli.main(["sweep", "--model", "tiny-llama", "--allocation", "uniform,evenly", "--no-store",
                     "--out", str(tmp_path / "bad")])
    assert code == 2
    assert "Unknown allocation 'evenly'; choose one of uniform" in capsys.readouterr().err


@pytest.mark.parametrize("name", [n for n in ALLOCATORS if n != "uniform"])
def test_every_registered_allocator_sweeps_to_its_target(tiny, name):
    """The registry's own allocators through the sweep (the map of "sensitivity" computed by the sweep)."""
    spec = SweepSpec(model="tiny-llama", methods=("wanda",), sparsities=(0.6,), eval_corpora=("news",),
                     propagation="dense", protocol=PROTOCOL, allocations=(name,))
    (point,) = run_sweep(spec, loaded=tiny)["points"]
    plan = SparsityPlan.from_dict(point["plan"])
    assert point["allocation"] == name and plan.allocator == name
    assert plan.global_sparsity(module_sizes(tiny)) == pytest.approx(0.6, abs=0.001)
    assert point["sparsity"] == pytest.approx(0.6, abs=0.01)
