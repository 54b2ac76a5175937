"""The default sensitivity map: a second-order first map, refined to exact with agreement shown at every step."""

from __future__ import annotations

import pytest

from pruning_core.analysis.refinement import is_trusted, refine_sensitivity
from pruning_core.analysis.sensitivity import TRUSTED_AGREEMENT, compute_sensitivity
from pruning_core.store import Store
from pruning_core.models.tiny import tiny_model
from pruning_core.protocol import Protocol

PROTOCOL = Protocol(calib="news", nsamples=8, seqlen=64, eval_windows=4, batch_size=4)


@pytest.fixture(scope="module")
def deep():
    return tiny_model("llama", layers=5)


def test_views_go_from_the_estimate_through_sampled_agreement_to_the_exact_map(deep, tmp_path, monkeypatch):
    import pruning_core.analysis.refinement as refinement

    monkeypatch.setattr(refinement, "cpu_has_native_bf16", lambda: False)  # one call, on any machine
    seen = []
    result = refine_sensitivity(deep, PROTOCOL, "wanda", 0.5, probe_windows=3, store=Store(tmp_path / "s.sqlite"),
                                on_view=seen.append)
    steps = [(v["metric"], v["refinement"]["step"], (v["refinement"]["agreement"] or {}).get("cells")) for v in seen]
    kinds = len(deep.adapter.module_kinds)
    # First the complete estimate with no agreement yet; then the estimate with agreement on 2, 3, 4 exact rows;
    # then the exact map with the agreement between the two refinements over every cell.
    assert steps == [("fisher", 1, None), ("fisher", 1, 2 * kinds), ("fisher", 1, 3 * kinds),
                     ("fisher", 1, 4 * kinds), ("exact", 2, 5 * kinds)]
    assert seen[0]["refinement"]["trusted"] is False  # no measured agreement yet: no reading
    final = result["view"]
    assert final["refinement"]["final"] and final["refinement"]["trusted"]
    assert final["refinement"]["agreement"]["scope"] == "all cells"
    # The sampled rows are rows of the same exact map (spread order: layers 0, 4, 2, 1 first).
    assert "layers 0, 2, 4" in seen[1]["refinement"]["agreement"]["scope"] or \
        "layers 0, 4" in seen[1]["refinement"]["agreement"]["scope"]
    exact = compute_sensitivity(deep, PROTOCOL, "wanda", [0.5], ["exact"], 3)["maps"][0]
    flat = lambda m: [v for row in m["values"] for v in row]  # noqa: E731
    assert flat(final) == pytest.approx(flat(exact), abs=1e-6)


def test_a_proxy_below_the_threshold_is_not_trusted_and_exact_always_is():
    assert is_trusted({"metric": "exact"}, None)
    assert not is_trusted({"metric": "reconstruction"}, {"spearman": TRUSTED_AGREEMENT - 0.01})
    assert is_trusted({"metric": "fisher"}, {"spearman": TRUSTED_AGREEMENT})
    assert not is_trusted({"metric": "taylor"}, {"spearman": float("nan")})


def test_the_default_spec_still_checks_its_probe_settings():
    from pruning_core.analysis.sensitivity import REFINE, SensitivitySpec
    from pruning_core.errors import ConfigError

    assert SensitivitySpec().metrics == (REFINE,)
    for bad in ({"probe_windows": 0}, {"dtype": "float8"}, {"metrics": (REFINE, "exact")}):
        with pytest.raises(ConfigError):
            SensitivitySpec(**bad).validate()


def test_the_first_view_uses_the_first_calibration_windows_and_the_exact_map_all_of_them(deep, tmp_path, monkeypatch):
    from dataclasses import replace

    import pruning_core.analysis.refinement as refinement
    import pruning_core.statistics_cache as statistics_cache
    from pruning_core.protocol import calibration_ids

    monkeypatch.setattr(refinement, "FIRST_VIEW_NSAMPLES", 4)  # PROTOCOL has 8
    monkeypatch.setattr(refinement, "cpu_has_native_bf16", lambda: True)  # bf16 passes for the first view
    walked = []
    collect = statistics_cache.collect_statistics

    def counting(loaded, ids, *args, **kwargs):
        walked.append(int(ids.shape[0]))
        return collect(loaded, ids, *args, **kwargs)

    monkeypatch.setattr(statistics_cache, "collect_statistics", counting)
    seen = []
    result = refine_sensitivity(deep, PROTOCOL, "wanda", 0.5, probe_windows=3, store=Store(tmp_path / "s.sqlite"),
                                on_view=seen.append)
    assert walked == [4, 8]  # the first view's walk over 4 windows, then the exact map's over all 8
    assert calibration_ids(deep, replace(PROTOCOL, nsamples=4)).equal(calibration_ids(deep, PROTOCOL)[:4])
    first, final = seen[0], result["view"]
    assert first["metric"] == "fisher" and first["protocol"]["nsamples"] == 4
    assert first["protocol"]["probe_dtype"] == "bfloat16"
    assert final["metric"] == "exact" and final["protocol"]["nsamples"] == 8
    assert final["protocol"]["probe_dtype"] == PROTOCOL.dtype == "float32"
    kinds = len(deep.adapter.module_kinds)
    assert [(v["metric"], (v["refinement"]["agreement"] or {}).get("cells")) for v in seen] == \
        [("fisher", None), ("fisher", 2 * kinds), ("fisher", 3 * kinds), ("fisher", 4 * kinds), ("exact", 5 * kinds)]
    (correlation,) = result["correlations"]
    assert correlation["proxy"] == "fisher" and correlation["scope"] == "all cells"
    assert correlation["spearman"] == pytest.approx(final["refinement"]["agreement"]["spearman"])
    # The same numbers as each map computed on its own protocol.
    flat = lambda m: [v for row in m["values"] for v in row]  # noqa: E731
    alone = compute_sensitivity(deep, replace(PROTOCOL, nsamples=4), "wanda", [0.5], ["fisher"], 3,
                                agreement_layers=0, dtype="bfloat16")
    assert flat(first) == pytest.approx(flat(alone["maps"][0]), rel=1e-5, abs=1e-9) and alone["correlations"] == []
    exact = compute_sensitivity(deep, PROTOCOL, "wanda", [0.5], ["exact"], 3)["maps"][0]
    assert flat(final) == pytest.approx(flat(exact), abs=1e-6)
    # A second run finds both maps in the store: nothing is walked again.
    walked.clear()
    again = refine_sensitivity(deep, PROTOCOL, "wanda", 0.5, probe_windows=3, store=Store(tmp_path / "s.sqlite"))
    assert walked == [] and flat(again["view"]) == pytest.approx(flat(final))


def test_the_command_help_and_the_readme_name_the_first_views_windows():
    from pathlib import Path

    from pruning_core.analysis.refinement import FIRST_VIEW_NSAMPLES
    from pruning_core.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["sensitivity"]
    (metric,) = [a for a in sub._actions if a.dest == "metric"]
    # Spelled out there (building the parser must not load torch), so checked here.
    assert f"first {FIRST_VIEW_NSAMPLES} calibration windows" in metric.help
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    assert f"first {FIRST_VIEW_NSAMPLES} of the calibration windows" in readme
