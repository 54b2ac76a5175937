"""Estimates of time and memory: well-formed, monotone in the work asked for, close to a measured tiny run."""

from __future__ import annotations

import pytest

from pruning_core.analysis.estimates import (
    estimate_sensitivity,
    estimate_sweep,
    measure_throughput,
)
from pruning_core.models import load_model
from pruning_core.protocol import Protocol
from pruning_core.store import Store
from pruning_core.analysis.sweep import SweepSpec

PROTOCOL = Protocol(calib="news", nsamples=8, seqlen=64, eval_windows=4, batch_size=4)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def _check(estimate: dict) -> None:
    assert {"seconds", "peak_memory_bytes", "breakdown", "assumptions"} <= set(estimate) <= {
        "seconds", "peak_memory_bytes", "breakdown", "assumptions", "first_view_seconds"}
    assert estimate["seconds"] > 0 and estimate["peak_memory_bytes"] > 0
    assert estimate["seconds"] == pytest.approx(sum(estimate["breakdown"].values()))
    assert isinstance(estimate["assumptions"], str) and estimate["assumptions"]


def test_sweep_estimate_grows_with_points_and_pruned_propagation(tiny):
    info = tiny.describe()
    small = estimate_sweep(info, SweepSpec(model="tiny-llama", methods=("wanda",), sparsities=(0.5,),
                                           eval_corpora=("news",), protocol=PROTOCOL), 5000.0)
    big = estimate_sweep(info, SweepSpec(model="tiny-llama", methods=("wanda", "sparsegpt"), sparsities=(0.3, 0.5, 0.7),
                                         eval_corpora=("news",), protocol=PROTOCOL), 5000.0)
    dense = estimate_sweep(info, SweepSpec(model="tiny-llama", methods=("wanda", "sparsegpt"), sparsities=(0.3, 0.5, 0.7),
                                           eval_corpora=("news",), propagation="dense", protocol=PROTOCOL), 5000.0)
    for e in (small, big, dense):
        _check(e)
    assert big["seconds"] > small["seconds"] and big["seconds"] > dense["seconds"]
    assert big["peak_memory_bytes"] >= info["memory_bytes"]
    assert "5000 tokens/s" in big["assumptions"]
    assert "assumed" in estimate_sweep(info, SweepSpec(protocol=PROTOCOL, eval_corpora=("news",)))["assumptions"]


def test_sensitivity_estimate_scales_with_sparsities_and_metrics(tiny):
    info = tiny.describe()
    one = estimate_sensitivity(info, PROTOCOL, "wanda", [0.5], ["exact"], 4, 5000.0)
    three = estimate_sensitivity(info, PROTOCOL, "wanda", [0.3, 0.5, 0.7], ["exact"], 4, 5000.0)
    proxies = estimate_sensitivity(info, PROTOCOL, "wanda", [0.5], ["reconstruction", "taylor"], 4, 5000.0)
    for e in (one, three, proxies):
        _check(e)
    assert three["breakdown"]["exact_probes"] == pytest.approx(3 * one["breakdown"]["exact_probes"])
    assert proxies["breakdown"]["taylor"] > 0
    # Proxies alone still measure the exact metric on a few sampled rows (their agreement): a fraction of a map.
    assert 0 < proxies["breakdown"]["exact_probes"] <= one["breakdown"]["exact_probes"]  # 2 layers: all sampled
    fisher = estimate_sensitivity(info, PROTOCOL, "wanda", [0.5], ["fisher"], 4, 5000.0)
    _check(fisher)
    assert fisher["breakdown"]["fisher"] > 0 and fisher["breakdown"]["exact_probes"] > 0  # + agreement sample
    # The default "auto" refinement is the second-order estimate followed by the full exact map.
    auto = estimate_sensitivity(info, PROTOCOL, "wanda", [0.5], ["auto"], 4, 5000.0)
    _check(auto)
    both = estimate_sensitivity(info, PROTOCOL, "wanda", [0.5], ["fisher", "exact"], 4, 5000.0)
    assert auto["seconds"] == pytest.approx(both["seconds"])
    assert auto["breakdown"]["exact_probes"] == pytest.approx(one["breakdown"]["exact_probes"])
    assert auto["breakdown"]["fisher"] == pytest.approx(fisher["breakdown"]["fisher"])


def test_throughput_is_measured_and_cached(tiny, tmp_path):
    store = Store(tmp_path / "s.sqlite")
    rate = measure_throughput(tiny, 64, "float32", store)
    assert rate > 0
    assert measure_throughput(tiny, 64, "float32", store) == rate  # from the store (a new timing would differ)
    assert measure_throughput(tiny, 64, "float32", Store(tmp_path / "other.sqlite")) > 0


def test_paper_protocol_counts_the_windows_the_split_really_holds(tiny, tmp_path):
    # The paper protocol asks for 10,000 evaluation windows of 2048 tokens; the wiki evaluation split holds
    # far fewer. The estimate must count those, as perplexity will evaluate them, not 10,000.
    from pruning_core.analysis.estimates import estimate_job, evaluation_windows_used
    from dataclasses import replace

    from pruning_core.protocol import PAPER_PROTOCOL, evaluation_ids

    # The paper's 10,000 windows, at the tiny model's context (512 positions; 2048 is refused for it).
    PAPER_PROTOCOL = replace(PAPER_PROTOCOL, seqlen=512)  # noqa: N806

    store = Store(tmp_path / "s.sqlite")
    windows = evaluation_windows_used(tiny, ["wiki"], PAPER_PROTOCOL, store)
    real = int(evaluation_ids(tiny, "wiki", PAPER_PROTOCOL).shape[0])
    assert windows == {"wiki": real} and 0 < real < PAPER_PROTOCOL.eval_windows
    assert evaluation_windows_used(tiny, ["wiki"], PAPER_PROTOCOL, store) == windows  # cached in the store

    spec = SweepSpec(model="tiny-llama", methods=("wanda",), sparsities=(0.5,), eval_corpora=("wiki",),
                     protocol=PAPER_PROTOCOL)
    info = tiny.describe()
    counted = estimate_sweep(info, spec, 5000.0, eval_windows_used=windows)
    naive = estimate_sweep(info, spec, 5000.0)  # every one of the 10,000 windows assumed to exist
    tokens = real * PAPER_PROTOCOL.seqlen
    per_token = counted["breakdown"]["dense_eval"] / tokens
    assert naive["breakdown"]["dense_eval"] == pytest.approx(per_token * 10_000 * PAPER_PROTOCOL.seqlen)
    assert naive["breakdown"]["dense_eval"] / counted["breakdown"]["dense_eval"] == pytest.approx(10_000 / real)
    assert counted["seconds"] < naive["seconds"]
    assert f"wiki {real:,}" in counted["assumptions"] and "holds no more" in counted["assumptions"]

    # The one function the pages call: the same count, with this machine's measured throughput.
    job = estimate_job("sweep", spec.to_dict(), tiny, store)
    _check(job)
    assert "measured throughput" in job["assumptions"] and f"wiki {real:,}" in job["assumptions"]
    assert estimate_job("sweep", spec.to_dict(), tiny, store) == job  # same job, same figure
    sens = estimate_job("sensitivity", {"protocol": PAPER_PROTOCOL.to_dict(), "method": "wanda",
                                        "sparsities": [0.5], "metrics": ["exact"], "probe_windows": 10_000},
                        tiny, store)
    assert f"{real} probe windows" in sens["assumptions"]
    assert estimate_job("export", {}, tiny, store) is None


def test_time_left_starts_from_the_estimate_and_follows_the_rate():
    from pruning_core.analysis.estimates import RATE_TRUSTED_FRACTION, time_left

    # Just started: the figure the page showed before Run (120 s), not a noisy rate (28 s) from 1 % done.
    assert time_left(120.0, 1.0, 0.0, None) == pytest.approx(120.0)  # no progress yet: all of it is left
    assert time_left(120.0, 1.0, 0.01, 28.0) == pytest.approx(0.01 / RATE_TRUSTED_FRACTION * 28.0
                                                             + (1 - 0.01 / RATE_TRUSTED_FRACTION) * 119.0)
    # Past the trusted fraction the job's own rate alone counts; without an estimate, the rate is used as is.
    assert time_left(120.0, 30.0, 0.5, 30.0) == pytest.approx(30.0)
    assert time_left(None, 5.0, 0.1, 45.0) == pytest.approx(45.0)
    assert time_left(None, 5.0, 0.0, None) is None
    assert time_left(10.0, 50.0, 0.2, None) == pytest.approx(8.0)  # over its estimate: the share left, not 0


def test_sweep_estimate_counts_every_allocation_of_the_grid(tiny):
    info = tiny.describe()
    base = dict(model="tiny-llama", methods=("wanda",), structures=("unstructured", "2:4"), sparsities=(0.5, 0.7),
                eval_corpora=("news",), protocol=PROTOCOL)
    uniform = estimate_sweep(info, SweepSpec(**base), 5000.0)
    both = estimate_sweep(info, SweepSpec(**base, allocations=("uniform", "owl")), 5000.0)
    _check(both)
    # 2 unstructured settings x 2 allocations + the 2:4 setting once (N:M sweeps uniform only) = 5 points, not 3.
    assert len(SweepSpec(**base, allocations=("uniform", "owl")).grid()) == 5
    assert both["breakdown"]["evaluation"] == pytest.approx(uniform["breakdown"]["evaluation"] * 5 / 3)
    assert both["breakdown"]["pruning"] == pytest.approx(uniform["breakdown"]["pruning"] * 5 / 3)
    assert "5 points (allocations uniform, owl; 2 plans)" in both["assumptions"]
    assert uniform["breakdown"]["plans"] == 0 and uniform["breakdown"]["statistics"] == 0  # pruned propagation


def test_owl_plans_cost_one_statistics_walk_and_nothing_once_it_is_stored(tiny):
    info = tiny.describe()
    base = dict(model="tiny-llama", methods=("wanda",), eval_corpora=("news",), protocol=PROTOCOL,
                allocations=("owl",))
    one = estimate_sweep(info, SweepSpec(**base, sparsities=(0.5,)), 5000.0)
    three = estimate_sweep(info, SweepSpec(**base, sparsities=(0.3, 0.5, 0.7)), 5000.0)
    # The dense walk is shared by every plan; the allocator's scoring is per plan.
    assert one["breakdown"]["statistics"] > 0
    assert three["breakdown"]["statistics"] == pytest.approx(one["breakdown"]["statistics"])
    assert three["breakdown"]["plans"] == pytest.approx(3 * one["breakdown"]["plans"]) and one["breakdown"]["plans"] > 0
    cached = estimate_sweep(info, SweepSpec(**base, sparsities=(0.5,)), 5000.0, stored_statistics="act_sq")
    assert cached["breakdown"]["statistics"] == 0
    assert cached["seconds"] == pytest.approx(one["seconds"] - one["breakdown"]["statistics"])
    # In dense propagation the methods' own walk already covers OWL's statistics: no second walk.
    dense = dict(base, propagation="dense", sparsities=(0.5,))
    with_owl = estimate_sweep(info, SweepSpec(**dense), 5000.0)
    plain = estimate_sweep(info, SweepSpec(**{**dense, "allocations": ("uniform",)}), 5000.0)
    assert with_owl["breakdown"]["statistics"] == pytest.approx(plain["breakdown"]["statistics"])
    # Magnitude reads no statistics, but its OWL plans do.
    magnitude = estimate_sweep(info, SweepSpec(**{**dense, "methods": ("magnitude",)}), 5000.0)
    assert magnitude["breakdown"]["statistics"] > 0


def test_sensitivity_plans_add_the_map_unless_it_is_stored(tiny):
    from pruning_core.analysis.estimates import sweep_map_probe_windows

    info = tiny.describe()
    spec = SweepSpec(model="tiny-llama", methods=("wanda", "magnitude"), sparsities=(0.6,), eval_corpora=("news",),
                     protocol=PROTOCOL, allocations=("uniform", "sensitivity"))
    estimate = estimate_sweep(info, spec, 5000.0)
    _check(estimate)
    one_map = estimate_sensitivity(info, PROTOCOL, "wanda", spec.map_sparsities(), ["exact"],
                                   sweep_map_probe_windows(), 5000.0, include_load=False)  # the sweep loads it
    assert spec.map_sparsities() == (0.5, 0.6)  # two sparsities: the allocator needs marginal costs
    assert estimate["breakdown"]["sensitivity_maps"] == pytest.approx(
        one_map["seconds"] + estimate_sensitivity(info, PROTOCOL, "magnitude", spec.map_sparsities(), ["exact"],
                                                  sweep_map_probe_windows(), 5000.0,
                                                  include_load=False)["seconds"])
    assert "exact sensitivity map of magnitude, wanda at 50%, 60%" in estimate["assumptions"]
    assert estimate["peak_memory_bytes"] >= one_map["peak_memory_bytes"]
    stored = estimate_sweep(info, spec, 5000.0, stored_maps={"wanda"})
    assert stored["breakdown"]["sensitivity_maps"] == pytest.approx(estimate["breakdown"]["sensitivity_maps"]
                                                                    - one_map["seconds"])


def test_estimate_job_sees_what_a_finished_sweep_stored(tiny, tmp_path):
    # The keys estimate_job looks up are the ones the sweep fills: after one run, neither the map nor the dense
    # statistics of the plans are counted again.
    from pruning_core.analysis.estimates import estimate_job
    from pruning_core.analysis.sweep import run_sweep

    store = Store(tmp_path / "s.sqlite")
    protocol = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2, batch_size=4)
    spec = SweepSpec(model="tiny-llama", methods=("wanda",), sparsities=(0.6,), eval_corpora=("news",),
                     protocol=protocol, allocations=("owl", "sensitivity"))
    before = estimate_job("sweep", spec.to_dict(), tiny, store)
    assert before["breakdown"]["sensitivity_maps"] > 0 and before["breakdown"]["statistics"] > 0
    run_sweep(spec, loaded=tiny, store=store)
    after = estimate_job("sweep", spec.to_dict(), tiny, store)
    assert after["breakdown"]["sensitivity_maps"] == 0 and after["breakdown"]["statistics"] == 0
    assert after["breakdown"]["evaluation"] == pytest.approx(before["breakdown"]["evaluation"])


def test_parallel_workers_divide_the_points_share_and_multiply_the_memory(tiny, monkeypatch, tmp_path):
    from pruning_core.analysis.estimates import estimate_job

    info = tiny.describe()
    spec = SweepSpec(model="tiny-llama", methods=("wanda", "magnitude"), sparsities=(0.3, 0.5, 0.7),
                     eval_corpora=("news",), protocol=PROTOCOL)
    one = estimate_sweep(info, spec, 5000.0)
    two = estimate_sweep(info, spec, 5000.0, workers=2)
    many = estimate_sweep(info, spec, 5000.0, workers=64)  # no more workers than points count
    for e in (one, two, many):
        _check(e)
    for part in ("pruning", "evaluation"):
        assert two["breakdown"][part] == pytest.approx(one["breakdown"][part] / 2)
        assert many["breakdown"][part] == pytest.approx(one["breakdown"][part] / 6)
    assert two["breakdown"]["dense_eval"] == one["breakdown"]["dense_eval"]  # the driver's part stays serial
    assert two["peak_memory_bytes"] == pytest.approx(3 * one["peak_memory_bytes"], abs=3)  # driver + 2 workers
    assert "on 2 parallel workers" in two["assumptions"] and "parallel" not in one["assumptions"]
    # A sweep job estimates on the executor its spec names.
    on_ray = {**spec.to_dict(), "executor": {"kind": "ray", "workers": 2}}
    job = estimate_job("sweep", on_ray, tiny, Store(tmp_path / "store.sqlite"))
    assert "on 2 parallel workers" in job["assumptions"]


def test_parallel_workers_divide_the_exact_rows_of_a_map(tiny, tmp_path):
    from pruning_core.analysis.estimates import estimate_job

    info = tiny.describe()
    one = estimate_sensitivity(info, PROTOCOL, "wanda", [0.5], ["exact"], 2, 5000.0)
    two = estimate_sensitivity(info, PROTOCOL, "wanda", [0.5], ["exact"], 2, 5000.0, workers=2)
    _check(two)
    assert two["breakdown"]["exact_probes"] == pytest.approx(one["breakdown"]["exact_probes"] / 2)
    assert two["breakdown"]["statistics"] == one["breakdown"]["statistics"]  # the driver's walk stays serial
    assert two["peak_memory_bytes"] > one["peak_memory_bytes"] and "2 parallel workers" in two["assumptions"]
    spec = {"protocol": PROTOCOL.__dict__, "method": "wanda", "sparsities": [0.5], "metrics": ["exact"],
            "probe_windows": 2}
    job = estimate_job("sensitivity", spec, tiny, Store(tmp_path / "s.sqlite"), workers=2)
    assert "exact rows on 2 parallel workers" in job["assumptions"]


def test_a_gpu_sweep_estimate_names_the_device_and_its_gpu_memory(tiny):
    """The estimate's arithmetic for a run on a GPU (the rate would be the GPU's, measured with the offload)."""
    info = tiny.describe()
    spec = SweepSpec(model="tiny-llama", methods=("wanda", "sparsegpt"), sparsities=(0.5,), eval_corpora=("news",),
                     protocol=PROTOCOL)
    cpu = estimate_sweep(info, spec, 5000.0)
    gpu = estimate_sweep(info, spec, 50000.0, device="cuda:0")
    assert gpu["seconds"] < cpu["seconds"] and "gpu_peak_memory_bytes" not in cpu
    assert "on cuda:0, one decoder layer at a time" in gpu["assumptions"]
    # One layer's weights, not the model's: below the whole model plus the carried windows.
    carried = 2 * PROTOCOL.nsamples * PROTOCOL.seqlen * info["hidden_size"] * 4
    assert gpu["gpu_peak_memory_bytes"] < info["memory_bytes"] + carried + gpu["peak_memory_bytes"]
    assert gpu["gpu_peak_memory_bytes"] > carried


def test_throughput_on_an_offload_is_measured_through_it_and_cached_apart(tiny, tmp_path):
    """With both offload devices the CPU the offload path runs everywhere; only a GPU adds the device to the key."""
    import torch

    from pruning_core.devices.placement import LayerOffload

    store = Store(tmp_path / "t.sqlite")
    cpu = torch.device("cpu")
    offload = LayerOffload(cpu, cpu)
    plain = measure_throughput(tiny, 32, store=store)
    assert measure_throughput(tiny, 32, store=store, offload=offload) == plain  # a CPU offload is the CPU
    assert offload.moves == []  # read from the store: nothing was walked


def test_the_estimate_counts_the_corpus_text_it_holds(tmp_path):
    from pruning_core import data
    from pruning_core.analysis.estimates import corpus_memory_bytes
    from pruning_core.models import load_model
    from pruning_core.protocol import Protocol

    tiny = load_model("tiny-llama")
    paragraphs = data.load_corpus_text("news", "calibration").split("\n\n")
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    small.write_text("\n\n".join(paragraphs[:100]))
    big.write_text("\n\n".join(f"{p} ({i})" for i in range(20) for p in paragraphs))
    sizes = {f: corpus_memory_bytes(tiny, Protocol(calib=str(f), nsamples=2, seqlen=32), []) for f in (small, big)}
    grown = sizes[big] - sizes[small]
    extra_chars = len(big.read_text()) - len(small.read_text())
    assert 2 * extra_chars < grown < 6 * extra_chars  # texts held twice plus 4 bytes a token, not the file x GBs
