"""Sweeps read together (`analysis.sweep_results`) and the recommendation for a budget (`analysis.recommend`)."""

from __future__ import annotations

import pytest

from pruning_core.analysis.recommend import recommend
from pruning_core.analysis.sweep_results import merge_sweeps, point_allocation
from pruning_core.errors import ConfigError

PROTOCOL = {"calib": "wiki", "nsamples": 16, "seqlen": 64, "seed": 0, "eval_windows": 4, "dtype": "float32",
            "propagation": "pruned"}


def sweep(points, fingerprint="f1", protocol=PROTOCOL, dense=None):
    return {"model": {"fingerprint": fingerprint}, "protocol": dict(protocol), "dense": {"ppl": dense or {}},
            "points": points}


def point(method, sparsity, ppl, allocation=None):
    return {"method": method, "structure": "unstructured", "target_sparsity": sparsity, "sparsity": sparsity,
            "ppl": {"wiki": ppl}, **({"allocation": allocation} if allocation else {})}


def test_point_allocation_is_uniform_for_old_points():
    assert point_allocation(point("wanda", 0.5, 10.0)) == "uniform"
    assert point_allocation(point("wanda", 0.5, 10.0, "owl")) == "owl"


def test_merge_keeps_the_newest_point_and_leaves_other_models_and_protocols_out():
    newest = sweep([point("wanda", 0.5, 11.0)], dense={"wiki": 10.0})
    older = sweep([point("wanda", 0.5, 99.0), point("wanda", 0.5, 12.0, "owl")], dense={"wiki": 9.0, "news": 20.0})
    other_model = sweep([point("magnitude", 0.5, 13.0)], fingerprint="f2")
    other_protocol = sweep([point("magnitude", 0.6, 14.0)], protocol={**PROTOCOL, "seed": 1})
    merged = merge_sweeps([newest, older, other_model, other_protocol])
    assert [(p["method"], point_allocation(p), p["ppl"]["wiki"]) for p in merged["points"]] == \
        [("wanda", "uniform", 11.0), ("wanda", "owl", 12.0)]
    assert merged["dense"]["ppl"] == {"wiki": 10.0, "news": 20.0}  # the newest dense wins
    assert merge_sweeps([]) is None


def test_recommend_picks_the_highest_sparsity_within_budget():
    results = {"dense": {"ppl": {"wiki": 10.0}}, "points": [
        point("wanda", 0.5, 10.8), point("wanda", 0.6, 12.0), point("magnitude", 0.5, 10.95)]}
    rec = recommend(results, "wiki", 0.10)
    assert rec["best"]["method"] == "wanda" and rec["best"]["sparsity"] == 0.5
    assert rec["best_change"] == pytest.approx(0.08)
    assert rec["per_method_within"]["magnitude"][0] == pytest.approx(0.095)
    assert [m for m, _c, p in rec["per_method"]] == ["magnitude", "wanda"]
    none = recommend(results, "wiki", 0.01)
    assert none["best"] is None  # nothing within +1 %: the mildest point says how close it came
    assert none["mildest"]["sparsity"] == 0.5 and none["mildest_change"] == pytest.approx(0.08)
    with pytest.raises(ConfigError, match="news"):
        recommend(results, "news", 0.1)


def test_a_searched_edge_is_weighed_with_the_sweep_points():
    from pruning_core.analysis.recommend import searched_point

    results = {"dense": {"ppl": {"wiki": 10.0}}, "points": [point("wanda", 0.5, 10.8), point("wanda", 0.6, 12.0)]}
    search = {"frontier": {"sparsity": 0.55, "ppl": 10.95, "increase": 0.095},
              "spec": {"method": "wanda", "allocation": "owl"}, "budget": {"corpus": "wiki"}}
    found = searched_point(search)
    assert found["source"] == "search" and found["allocation"] == "owl" and found["ppl"] == {"wiki": 10.95}
    rec = recommend(results, "wiki", 0.10, [found])
    assert rec["best"] is found  # the edge between two sweep points is the answer
    assert searched_point({"frontier": None}) is None


def two(method, sparsity, wiki, news, structure="unstructured"):
    return {"method": method, "structure": structure, "target_sparsity": sparsity, "sparsity": sparsity,
            "ppl": {"wiki": wiki, "news": news}}


def test_recommend_judges_on_the_worst_of_the_chosen_corpora():
    """Wanda 60 % is within +10 % on wiki but +24 % on news: judged on both, 50 % is the answer, and every
    answer (headline, per method, mildest) says which corpus decided."""
    from pruning_core.analysis.recommend import worst_change

    results = {"dense": {"ppl": {"wiki": 10.0, "news": 20.0}}, "points": [
        two("wanda", 0.5, 10.5, 21.0), two("wanda", 0.6, 10.9, 24.8), two("magnitude", 0.5, 11.5, 20.2)]}
    on_wiki = recommend(results, "wiki", 0.10)
    assert on_wiki["best"]["sparsity"] == 0.6 and on_wiki["best_corpus"] == "wiki"
    both = recommend(results, ["wiki", "news"], 0.10)
    assert both["corpora"] == ["wiki", "news"] and both["dense"] == {"wiki": 10.0, "news": 20.0}
    assert both["best"]["sparsity"] == 0.5 and both["best"]["method"] == "wanda"
    assert both["best_change"] == pytest.approx(0.05) and both["best_corpus"] == "wiki"  # 10.5/10 ties 21/20
    assert "wanda" in both["per_method_within"] and both["per_method_within"]["wanda"][1]["sparsity"] == 0.5
    assert "magnitude" not in both["per_method_within"]  # +15 % on wiki, although +1 % on news
    wanda_top = next(c for m, c, _p in both["per_method"] if m == "wanda")
    assert wanda_top == pytest.approx(0.24)  # its highest point, said with its worst change (news)
    assert worst_change(results["points"][1], both["dense"], both["corpora"]) == (pytest.approx(0.24), "news")
    tight = recommend(results, ["news", "wiki"], 0.01)
    assert tight["best"] is None and tight["mildest"]["sparsity"] == 0.5
    assert tight["mildest_change"] == pytest.approx(0.05) and tight["mildest_corpus"] == "news"  # first on a tie


def test_a_point_without_a_chosen_corpus_is_not_judged_and_a_missing_dense_is_named():
    results = {"dense": {"ppl": {"wiki": 10.0, "news": 20.0}}, "points": [
        two("wanda", 0.5, 10.5, 21.0), point("wanda", 0.7, 10.6)]}  # 70 % was measured on wiki only
    rec = recommend(results, ["wiki", "news"], 0.10)
    assert rec["best"]["sparsity"] == 0.5 and rec["unjudged"] == 1
    with pytest.raises(ConfigError, match="'pydocs' was not measured"):
        recommend(results, ["wiki", "pydocs"], 0.10)


def test_a_search_on_several_corpora_is_a_point_on_each():
    from pruning_core.analysis.recommend import searched_point

    search = {"frontier": {"sparsity": 0.55, "ppl": 21.9, "increase": 0.095, "corpus": "news",
                           "ppls": {"wiki": 10.3, "news": 21.9}},
              "spec": {"method": "wanda"}, "budget": {"corpus": "wiki", "corpora": ["wiki", "news"]}}
    found = searched_point(search)
    assert found["ppl"] == {"wiki": 10.3, "news": 21.9}
    results = {"dense": {"ppl": {"wiki": 10.0, "news": 20.0}}, "points": [two("wanda", 0.5, 10.5, 21.0)]}
    assert recommend(results, ["wiki", "news"], 0.10, [found])["best"] is found
