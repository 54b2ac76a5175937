"""The frontier marks exactly the non-dominated points; both budget answers; judging on the worst corpus."""

from __future__ import annotations

import random

import pytest

from pruning_core.errors import ConfigError
from pruning_core.frontier.answer import parse_bytes, parse_increase
from pruning_core.frontier.build import build_frontier
from pruning_core.frontier.pareto import best_within_bytes, dominates, judge, pareto_front, smallest_within
from pruning_core.frontier.points import FrontierPoint, dense_point, quantized_point, sweep_point

DENSE_FILES = {"weight_bytes": 269_060_552, "total_bytes": 269_061_587}


def point(key: str, size: int, wiki: float, news: float | None = None, family: str = "quantized") -> FrontierPoint:
    ppl = {"wiki": wiki} if news is None else {"wiki": wiki, "news": news}
    return FrontierPoint(key=key, technique=key, family=family, setting={},
                         sizes={"compressed-tensors": {"weight_bytes": size, "label": "ct"}}, ppl=ppl, bits=4)


def brute_force_front(judged):
    return {j.point.key for j in judged if not any(dominates(o, j) for o in judged if o is not j)}


@pytest.mark.parametrize("seed", range(20))
def test_the_front_is_exactly_the_points_no_other_point_dominates(seed):
    rng = random.Random(seed)
    # Few distinct sizes and perplexities, so ties in one or both coordinates happen often.
    points = [point(f"p{i}", rng.choice([50, 80, 80, 120, 270]), rng.choice([17.0, 18.0, 18.0, 20.0, 30.0]))
              for i in range(12)]
    judged, left_out = judge(points, {"wiki": 17.0}, ["wiki"])
    assert left_out == 0
    front = pareto_front(judged)
    assert {j.point.key for j in front} == brute_force_front(judged)
    assert [j.bytes for j in front] == sorted(j.bytes for j in front)


def test_a_point_equal_to_another_in_both_is_on_the_front_with_it_and_a_dominated_one_is_not():
    judged, _ = judge([point("a", 80, 18.0), point("b", 80, 18.0), point("c", 80, 19.0), point("d", 120, 18.0),
                       point("e", 50, 25.0)], {"wiki": 17.0}, "wiki")
    assert {j.point.key for j in pareto_front(judged)} == {"a", "b", "e"}


def test_points_are_judged_on_the_worst_corpus_and_one_without_a_corpus_is_left_out():
    dense = {"wiki": 17.0, "news": 20.0}
    judged, left_out = judge([point("fine on wiki, bad on news", 80, 17.5, 26.0), point("even", 90, 18.0, 21.0),
                              point("wiki only", 60, 17.1)], dense, ["wiki", "news"])
    assert left_out == 1
    by_key = {j.point.key: j for j in judged}
    assert by_key["fine on wiki, bad on news"].corpus == "news"
    assert by_key["fine on wiki, bad on news"].change == pytest.approx(0.30)
    # Within +10 % on the worst corpus, the larger even point answers, not the smaller one that fails on news.
    assert smallest_within(judged, 0.10).point.key == "even"
    assert {j.point.key for j in pareto_front(judged)} == {"fine on wiki, bad on news", "even"}


def test_both_answers_across_techniques():
    judged, _ = judge([point("dense", 269, 17.0, family="dense"), point("8-bit", 140, 17.05), point("4-bit", 80, 18.2),
                       point("3-bit", 62, 24.0), point("wanda 50 %", 269, 19.8, family="unstructured")],
                      {"wiki": 17.0}, "wiki")
    assert smallest_within(judged, 0.10).point.key == "4-bit"
    assert smallest_within(judged, 0.01).point.key == "8-bit"
    assert smallest_within(judged, 0.0).point.key == "dense"
    assert best_within_bytes(judged, 100).point.key == "4-bit"
    assert best_within_bytes(judged, 150).point.key == "8-bit"
    assert best_within_bytes(judged, 70).point.key == "3-bit"
    assert best_within_bytes(judged, 61) is None
    front = {j.point.key for j in pareto_front(judged)}
    assert "wanda 50 %" not in front  # as large as dense, and worse
    for answer in (smallest_within(judged, 0.10), best_within_bytes(judged, 100)):
        assert answer.point.key in front


def test_the_frontier_answers_in_one_sentence_with_measured_bytes_and_the_q4_1_note():
    record = {"setting": {"method": "rtn", "bits": 4, "group_size": 32, "symmetric": False, "scale_dtype": "float16",
                          "start": "dense"},
              "bytes": {"compressed-tensors": {"weight_bytes": 83_000_000, "total_bytes": 83_100_000},
                        "safetensors-16bit": DENSE_FILES},
              "ppl": {"wiki": 17.3}, "sparsity": 0.0, "note": "The embedded model's weights were themselves 4-bit."}
    points = [dense_point({"wiki": 17.0}, DENSE_FILES, name="SmolLM2-135M-Instruct"), quantized_point(record),
              sweep_point({"method": "wanda", "structure": "unstructured", "sparsity": 0.5, "target_sparsity": 0.5,
                           "ppl": {"wiki": 18.0}}, DENSE_FILES)]
    frontier = build_frontier(points, ["wiki"], max_increase=0.10)
    said = frontier["answer"]
    assert said["found"] and said["sentence"] == (
        "Stored as compressed-tensors 4-bit (loaded by transformers, vLLM), this model weighs 83.0 MB instead of "
        "269.1 MB, at +1.8 % perplexity on wiki, with RTN 4-bit, groups of 32, asymmetric: the smallest file "
        "within +10 %.")
    assert "Q4_1" in said["note"] and "groups of 32" in said["note"]
    wanda = next(r for r in frontier["points"] if r["family"] == "unstructured")
    assert wanda["bytes"] == DENSE_FILES["weight_bytes"] and not wanda["on_front"]
    by_size = build_frontier(points, ["wiki"], max_bytes=50_000_000)["answer"]
    assert not by_size["found"] and by_size["sentence"].startswith("No measured file fits in 50.0 MB")
    nothing = build_frontier(points, ["wiki"], max_increase=0.01)["answer"]
    assert not nothing["found"] and nothing["sentence"].startswith("No smaller file stays within +1 %")


def test_the_frontier_needs_the_dense_model_on_the_judged_corpora():
    with pytest.raises(ConfigError, match="dense model"):
        build_frontier([point("a", 80, 18.0)], ["wiki"])
    with pytest.raises(ConfigError, match="news"):
        build_frontier([dense_point({"wiki": 17.0}, DENSE_FILES)], ["wiki", "news"])


@pytest.mark.parametrize("text, value", [("10%", 0.10), ("+25 %", 0.25), ("0.1", 0.1)])
def test_perplexity_budgets(text, value):
    assert parse_increase(text) == pytest.approx(value)


@pytest.mark.parametrize("text, value", [("100MB", 100_000_000), ("95.5 MiB", int(95.5 * 1024**2)),
                                         ("2GB", 2_000_000_000), ("1234", 1234)])
def test_size_budgets(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("bad", ["ten", "-5%", "100 parsecs", "0MB"])
def test_bad_budgets_get_one_sentence(bad):
    with pytest.raises(ConfigError):
        parse_increase(bad) if "%" in bad or bad == "ten" else parse_bytes(bad)
