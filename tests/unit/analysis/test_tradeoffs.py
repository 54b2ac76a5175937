"""Quality, size and speed of each kind of pruning side by side (`analysis.tradeoffs.tradeoff_rows`): one row per
kind, the highest setting within the budget judged on the worst of the chosen corpora (or the closest one, marked
over), sizes from the measured files, speed in the claims module's words, speed measured where a structured run timed it."""

from __future__ import annotations

import pytest

from pruning_core import claims
from pruning_core.analysis.tradeoffs import size_short, tradeoff_rows
from pruning_core.sizes.records import STRUCTURED, weight_counts

#: Measurement records as `sizes.measure` writes them (bytes of the weight files written).
DENSE_FILE = {"format": "safetensors-16bit", "what": "dense", "weight_bytes": 2_000_000, "total_bytes": 2_000_100}

MODEL = {"parameters": 1_000_000, "prunable_parameters": 800_000}


def point(method, sparsity, wiki, news, structure="unstructured", **extra):
    return {"method": method, "structure": structure, "sparsity": sparsity, "target_sparsity": sparsity,
            "ppl": {"wiki": wiki, "news": news}, **extra}


RESULTS = {"model": MODEL, "dense": {"ppl": {"wiki": 10.0, "news": 20.0}}, "points": [
    point("wanda", 0.3, 10.2, 20.6), point("wanda", 0.5, 10.9, 24.8),  # 50 %: +9 % on wiki, +24 % on news
    point("magnitude", 0.3, 11.5, 20.4), point("sparsegpt", 0.5, 11.0, 23.0, "2:4"),
    point("wanda", 0.5, 12.0, 26.0, "2:4")]}


def structured_run(speed=True):
    sizes = {**weight_counts(1_000_000, 800_000, 800_000, STRUCTURED, 850_000),
             "measured": [DENSE_FILE, {"format": "safetensors-16bit", "what": STRUCTURED, "weight_bytes": 1_700_000,
                                       "total_bytes": 1_700_100}]}
    timing = {"phases": {"float32": {"decode at batch 1": {"dense_tokens_per_s": 10.0, "pruned_tokens_per_s": 12.0,
                                                          "speedup": 1.2}}},
              "machine_text": "test cpu"} if speed else None
    return {"dense_ppl": {"news": 20.0}, "points": [
        {"measured_ratio": 0.1, "ratio": 0.1, "ppl": {"news": 21.0}, "sizes": sizes, "speed": timing},
        {"measured_ratio": 0.2, "ratio": 0.2, "ppl": {"news": 41.6}, "sizes": sizes, "speed": timing}]}


def test_one_row_per_kind_judged_on_the_worst_corpus():
    rows = tradeoff_rows(RESULTS, ["wiki", "news"], 0.10, dense_measured=DENSE_FILE)
    assert [(r["kind"], r["structure"], r["method"]) for r in rows] == [
        ("unstructured", "unstructured", "wanda"), ("unstructured", "unstructured", "magnitude"),
        ("N:M", "2:4", "sparsegpt")]
    wanda, magnitude, nm = rows
    assert wanda["amount"] == 0.3 and wanda["within"] and wanda["corpus"] == "news"  # 50 % is +24 % on news
    assert wanda["change"] == pytest.approx(0.03) and (wanda["ppl"], wanda["dense_ppl"]) == (20.6, 20.0)
    assert not magnitude["within"] and magnitude["corpus"] == "wiki" and magnitude["change"] == pytest.approx(0.15)
    assert nm["method"] == "sparsegpt" and nm["change"] == pytest.approx(0.15) and not nm["within"]  # the closest
    assert wanda["speed"] == claims.speed_short("unstructured") and not wanda["speed_measured"]
    assert nm["speed"] == claims.speed_short("2:4")
    # Sizes are the measured files: a pruned model saved the ordinary way stores its zeros, so it weighs the dense
    # model's file; without a measurement no size is claimed.
    assert nm["size_bytes"] == 2_000_000 and nm["size"].startswith(claims.format_bytes(2_000_000))
    assert "zeros are stored" in nm["size"]
    assert tradeoff_rows(RESULTS, ["wiki"], 0.10)[0]["size"] is None
    # Judged on wiki alone, Wanda's 50 % is within the budget.
    assert tradeoff_rows(RESULTS, "wiki", 0.10)[0]["amount"] == 0.5


def test_a_searched_edge_counts_and_the_structured_row_carries_its_measured_speed_and_its_cost():
    from pruning_core.analysis.recommend import searched_point

    edge = searched_point({"frontier": {"sparsity": 0.4, "ppl": 21.8, "ppls": {"wiki": 10.5, "news": 21.8}},
                           "spec": {"method": "wanda"}, "budget": {"corpus": "wiki"}})
    rows = tradeoff_rows(RESULTS, ["wiki", "news"], 0.10, [edge], structured_run())
    wanda = rows[0]
    assert wanda["amount"] == 0.4 and wanda["source"] == "search" and wanda["point"] is edge
    structured = rows[-1]
    assert structured["kind"] == "structured" and structured["amount"] == 0.1 and structured["within"]
    assert structured["corpora"] == ["news"] and structured["corpus"] == "news"  # the corpus it measured
    assert structured["change"] == pytest.approx(0.05) and structured["index"] == 0
    assert structured["speed_measured"] and structured["speed"] == "decode at batch 1 1.20x (measured)"
    assert structured["size_bytes"] == 1_700_000 and "(1.18x smaller)" in structured["size"]
    unmeasured = tradeoff_rows(None, ["wiki"], 0.01, (), structured_run(speed=False))
    assert len(unmeasured) == 1 and not unmeasured[0]["within"] and unmeasured[0]["amount"] == 0.1  # the closest
    assert unmeasured[0]["speed"] == claims.speed_short(claims.STRUCTURED) and not unmeasured[0]["speed_measured"]


def test_size_short_names_the_measured_file_or_says_no_smaller():
    assert size_short(None) == (None, None)
    dense_only = {**weight_counts(1000, 800, 400, "unstructured"), "measured": [DENSE_FILE]}
    words, size = size_short(dense_only)
    assert size == DENSE_FILE["weight_bytes"] and words.endswith("as dense: zeros are stored")
