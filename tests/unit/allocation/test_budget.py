"""The quality-budget search: finds a known edge with few evaluations, reuses stored steps, runs as a job and a CLI."""

from __future__ import annotations

import json
import math

import pytest

from pruning_core import cli, evaluate
from pruning_core.allocation.allocators import AllocationInputs, make_plan
from pruning_core.allocation.budget import BudgetSpec, load_sensitivity, parse_fraction, search_budget
from pruning_core.errors import ConfigError, JobCancelled
from pruning_core.jobs.runner import JOB_KINDS, resolve_job_function
from pruning_core.store import Store, content_hash
from pruning_core.models.tiny import tiny_model
from pruning_core.protocol import Protocol, calibration_ids
from pruning_core.prune import PruneConfig, prune_model

TINY = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=3, batch_size=4)
DENSE = 20.0


def smooth(sparsity: float) -> float:
    """A monotone synthetic quality function: ppl = 20 * exp(3 s^2)."""
    return DENSE * math.exp(3.0 * sparsity ** 2)


def edge(increase: float) -> float:
    """The sparsity where `smooth` reaches dense * (1 + increase)."""
    return math.sqrt(math.log1p(increase) / 3.0)


def counting(fn):
    calls = []

    def measure(sparsity: float) -> float:
        calls.append(sparsity)
        return fn(sparsity)

    return measure, calls


def grid_frontier(fn, limit: float, step: float = 0.02, high: float = 0.95) -> float:
    """What a dense grid finds: the highest grid sparsity within the limit below the first failing one."""
    best = 0.0
    for i in range(1, int(high / step + 1e-9) + 1):
        if fn(i * step) > limit:
            break
        best = i * step
    return best


@pytest.mark.parametrize("increase", [0.05, 0.10, 0.25, 0.50, 1.0])
def test_search_finds_the_known_edge_within_resolution_with_a_third_of_a_grids_evaluations(increase):
    measure, calls = counting(smooth)
    spec = BudgetSpec(model="tiny-llama", protocol=TINY, max_increase=increase)
    result = search_budget(tiny_model("llama", layers=2), spec, measure=measure)
    truth = edge(increase)
    frontier = result["frontier"]["sparsity"]
    assert frontier <= truth < frontier + spec.resolution + 1e-9
    assert result["certainty"]["gap_pp"] == pytest.approx(1.0)
    assert abs(frontier - grid_frontier(smooth, DENSE * (1 + increase))) <= 0.02 + 1e-9
    # Every point measured once (the dense value is measure(0.0)); far fewer than the 2 % grid's 48.
    assert len(calls) == result["certainty"]["evaluations"] + 1 == len(set(calls))
    assert result["certainty"]["grid_evaluations"] == 48
    assert result["certainty"]["evaluations"] * 3 <= result["certainty"]["grid_evaluations"]
    assert result["dense_ppl"] == DENSE
    assert result["frontier"]["increase"] == pytest.approx(smooth(frontier) / DENSE - 1)
    assert result["certainty"]["ppl_monotone"]
    passed = [r for r in result["trajectory"] if r["passed"]]
    failed = [r for r in result["trajectory"] if not r["passed"]]
    assert max(r["sparsity"] for r in passed) == frontier < min(r["sparsity"] for r in failed)
    assert [r["step"] for r in result["trajectory"]] == list(range(1, len(result["trajectory"]) + 1))


def test_absolute_budget_and_both_ends_of_the_range():
    tiny = tiny_model("llama", layers=2)
    result = search_budget(tiny, BudgetSpec(max_ppl=30.0), measure=smooth)
    assert result["frontier"]["sparsity"] <= edge(0.5) < result["frontier"]["sparsity"] + 0.01
    # A budget the dense model already breaks has no frontier.
    none = search_budget(tiny, BudgetSpec(max_ppl=DENSE / 2), measure=smooth)
    assert none["frontier"] is None and none["certainty"]["bounded_by"] == "the lower bound already fails"
    # A budget nothing breaks stops at the upper bound, with no gap to report.
    top = search_budget(tiny, BudgetSpec(max_increase=1e6, high=0.9), measure=smooth)
    assert top["frontier"]["sparsity"] == 0.9 and top["certainty"]["gap_pp"] is None
    assert top["certainty"]["bounded_by"] == "the upper bound"


def test_a_non_monotone_curve_is_reported_not_hidden():
    def bumpy(s: float) -> float:
        return smooth(s) * (0.8 if 0.2 <= s < 0.3 else 1.0)  # a dip: ppl at 0.2 below ppl at 0.1

    result = search_budget(tiny_model("llama", layers=2), BudgetSpec(max_increase=0.10), measure=bumpy)
    assert not result["certainty"]["ppl_monotone"]


@pytest.mark.parametrize("text,value", [("10%", 0.10), ("0.1", 0.1), ("+25 %", 0.25), ("1.5", 1.5)])
def test_parse_fraction(text, value):
    assert parse_fraction(text) == pytest.approx(value)


@pytest.mark.parametrize("change,message", [
    (dict(max_increase=None), "exactly one budget"),
    (dict(max_ppl=30.0), "exactly one budget"),
    (dict(structure="2:4"), "nothing|no sparsity to search"),
    (dict(allocation="nope"), "Unknown allocation 'nope'"),
    (dict(coarse_step=0.005), "finer than the resolution"),
    (dict(low=0.9, high=0.5), "low < high"),
])
def test_bad_specs_are_refused_with_a_clear_message(change, message):
    spec = BudgetSpec.from_dict({**BudgetSpec(max_increase=0.1).to_dict(), **change})
    with pytest.raises(ConfigError, match=message):
        spec.validate()


def test_a_bare_ten_is_refused_as_ambiguous():
    with pytest.raises(ConfigError, match="reads as 1000 %"):
        parse_fraction("10")


def test_spec_round_trips_through_a_dict():
    spec = BudgetSpec(model="tiny-llama", protocol=TINY, method="magnitude", allocation="uniform", corpus="pydocs",
                      max_ppl=12.5, options=(("M", 5.0),))
    assert BudgetSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.eval_corpus == "pydocs" and BudgetSpec(protocol=TINY, max_ppl=1).eval_corpus == "news"


# ------------------------------------------------------------------------------------------ the real path

REAL = dict(model="tiny-llama", protocol=TINY, method="wanda", coarse_step=0.3, resolution=0.1, high=0.9)


def test_real_search_reuses_every_stored_step_and_measures_with_the_evaluation_path():
    loaded = tiny_model("llama", layers=2)
    store = Store()
    spec = BudgetSpec(max_increase=0.0, **REAL)  # any increase fails: the search bisects down from 30 %
    first = search_budget(loaded, spec, store=store)
    measured = [r for r in first["trajectory"] if r["sparsity"] > 0]
    assert measured and not any(r["reused"] for r in first["trajectory"])  # the dense value too: measured now
    assert first["trajectory"][0]["dense"] and first["trajectory"][0]["sparsity"] == 0.0
    assert first["certainty"]["measured"] == len(measured) and first["certainty"]["eval_windows"] == 3
    # One step re-measured by hand, through the same prune and evaluation: the same perplexity.
    row = measured[0]
    plan = make_plan("uniform", AllocationInputs(loaded), row["sparsity"])
    config = PruneConfig("wanda", "unstructured", row["sparsity"], "pruned").with_plan(loaded, plan)
    pruned = prune_model(loaded, calibration_ids(loaded, TINY), config, TINY.batch_size)
    by_hand = evaluate.evaluate_setting(loaded, TINY, ["news"], pruned, dense=True, store=store)
    assert by_hand.pruned_ppl["news"] == pytest.approx(row["ppl"], rel=1e-6)
    assert by_hand.dense_ppl["news"] == first["dense_ppl"] and by_hand.dense_cached == ["news"]

    # The same search again re-measures nothing; a looser budget re-measures only the steps it has not seen.
    again = search_budget(loaded, spec, store=store)
    assert again["certainty"]["measured"] == 0 and again["dense_reused"] and again["trajectory"][0]["reused"]
    assert [r["ppl"] for r in again["trajectory"]] == [r["ppl"] for r in first["trajectory"]]
    looser = search_budget(loaded, BudgetSpec(max_increase=1e6, **REAL), store=store)
    seen = {r["sparsity"] for r in measured}
    for r in looser["trajectory"]:
        if r["sparsity"] > 0:
            assert r["reused"] == (r["sparsity"] in seen)
    assert looser["frontier"]["sparsity"] == 0.9


def test_a_cancelled_search_resumes_from_its_stored_steps():
    loaded = tiny_model("llama", layers=2)
    store = Store()
    spec = BudgetSpec(max_increase=1e6, **REAL)
    steps = []

    def cancel_at_second_step(fraction: float, message: str) -> None:
        if message.startswith("step "):
            steps.append(message)
            if len(steps) == 3:  # start (dense), 30 %, then stop before 60 %
                raise JobCancelled("stop")

    with pytest.raises(JobCancelled):
        search_budget(loaded, spec, store=store, progress=cancel_at_second_step)
    resumed = search_budget(loaded, spec, store=store)
    reused = {r["sparsity"]: r["reused"] for r in resumed["trajectory"] if r["sparsity"] > 0}
    assert reused == {0.3: True, 0.6: False, 0.9: False}


def test_sensitivity_maps_are_found_in_the_store_for_this_model_and_method():
    loaded = tiny_model("llama", layers=2)
    store = Store()
    assert load_sensitivity(None, store, loaded, "wanda") is None
    mine = {"method": "wanda", "layers": [0, 1], "model": {"fingerprint": loaded.fingerprint}}
    for index, (metric, sparsity) in enumerate([("fisher", 0.5), ("exact", 0.5), ("fisher", 0.7), ("fisher", 0.5)]):
        store.put_result(content_hash([metric, sparsity, index]), "sensitivity_map",
                         {**mine, "metric": metric, "sparsity": sparsity, "version": index})
    store.put_result("other method", "sensitivity_map", {**mine, "metric": "exact", "method": "magnitude",
                                                         "sparsity": 0.3})
    store.put_result("some layers", "sensitivity_map", {**mine, "metric": "exact", "layers": [1], "sparsity": 0.7})
    found = load_sensitivity(None, store, loaded, "wanda")
    assert [(m["metric"], m["sparsity"], m["version"]) for m in found["maps"]] == [
        ("exact", 0.5, 1), ("fisher", 0.5, 3), ("fisher", 0.7, 2)]  # the newest of each metric and sparsity


def test_budget_job_kind_is_registered():
    assert resolve_job_function("budget").__name__ == "run_budget_job" and "budget" in JOB_KINDS


def test_cli_budget_writes_budget_json(tmp_path, capsys):
    argv = ["budget", "--model", "tiny-llama", "--method", "wanda", "--allocation", "uniform", "--max-increase",
            "10%", "--calib", "news", "--nsamples", "4", "--seqlen", "32", "--eval-windows", "2",
            "--coarse-step", "30%", "--resolution", "0.1", "--high", "0.9", "--out", tmp_path / "out"]
    assert cli.main([str(a) for a in argv]) == 0
    result = json.loads((tmp_path / "out" / "budget.json").read_text())
    for key in ("frontier", "trajectory", "certainty", "dense_ppl", "spec", "protocol", "machine", "seconds"):
        assert key in result
    assert result["spec"]["max_increase"] == pytest.approx(0.10) and result["spec"]["corpus"] is None
    assert result["budget"]["corpus"] == "news" and result["certainty"]["eval_windows"] == 2
    assert result["budget"]["max_ppl"] == pytest.approx(result["dense_ppl"] * 1.1)
    assert "wrote" in capsys.readouterr().out
    # A bare 10 is ambiguous: one sentence, exit 2, nothing written.
    bad = [{"10%": "10", str(tmp_path / "out"): str(tmp_path / "bad")}.get(str(a), str(a)) for a in argv]
    assert cli.main(bad) == 2
    assert "write 10%" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_cli_budget_searches_each_method_and_allocation_asked(tmp_path):
    argv = ["budget", "--model", "tiny-llama", "--method", "magnitude,wanda", "--allocation", "uniform,owl",
            "--max-increase", "10%", "--calib", "news", "--nsamples", "4", "--seqlen", "32", "--eval-windows", "2",
            "--coarse-step", "30%", "--resolution", "0.1", "--high", "0.9", "--out", tmp_path / "out"]
    assert cli.main([str(a) for a in argv]) == 0
    searches = json.loads((tmp_path / "out" / "budget.json").read_text())["searches"]
    assert [(s["spec"]["method"], s["spec"]["allocation"]) for s in searches] == [
        ("magnitude", "uniform"), ("magnitude", "owl"), ("wanda", "uniform"), ("wanda", "owl")]
    assert all("frontier" in s for s in searches)


def test_owl_search_adds_one_statistics_pass_and_reuses_it():
    loaded = tiny_model("llama", layers=2)
    store = Store()

    def statistics_rows() -> int:
        return store.execute("SELECT COUNT(*) AS n FROM results WHERE kind = 'dense_statistics'")[0]["n"]

    first = search_budget(loaded, BudgetSpec(allocation="owl", max_increase=0.0, **REAL), store=store)
    assert statistics_rows() == 1  # one dense walk for the whole search, kept in the statistics cache
    for row in first["trajectory"][1:]:
        assert row["allocator"] == "owl" and abs(row["plan_sparsity"] - row["sparsity"]) <= 0.001
    again = search_budget(loaded, BudgetSpec(allocation="owl", max_increase=1e6, **REAL), store=store)
    assert statistics_rows() == 1
    assert any(r["reused"] for r in again["trajectory"][1:])


def _synthetic_map(metric: str, sparsity: float, kinds: list[str]) -> dict:
    """A sensitivity map of a 2-layer model: layer 0's MLP costs the most (values grow with sparsity)."""
    values = [[sparsity ** 2 * (10.0 if layer == 0 and kind in ("gate", "up", "down") else 1.0) for kind in kinds]
              for layer in (0, 1)]
    return {"metric": metric, "method": "wanda", "sparsity": sparsity, "layers": [0, 1], "modules": kinds,
            "values": values}


def test_sensitivity_allocation_reads_a_file_or_refuses_without_maps(tmp_path):
    loaded = tiny_model("llama", layers=2)
    spec = BudgetSpec(allocation="sensitivity", max_increase=1e6, **REAL)
    with pytest.raises(ConfigError, match="needs a sensitivity map"):
        search_budget(loaded, spec, store=Store())
    kinds = list(loaded.adapter.module_kinds)
    path = tmp_path / "sensitivity_all.json"
    path.write_text(json.dumps({"maps": [_synthetic_map("exact", s, kinds) for s in (0.3, 0.6)]}))
    with_file = BudgetSpec.from_dict({**spec.to_dict(), "sensitivity": str(path)})
    result = search_budget(loaded, with_file, store=Store())
    assert result["sensitivity"]["source"] == str(path) and len(result["sensitivity"]["maps"]) == 2
    step = result["trajectory"][1]
    assert step["allocator"] == "sensitivity" and abs(step["plan_sparsity"] - step["sparsity"]) <= 0.001
    with pytest.raises(ConfigError, match="does not exist"):
        search_budget(loaded, BudgetSpec.from_dict({**spec.to_dict(), "sensitivity": str(tmp_path / "no.json")}))


# ------------------------------------------------------------------------------------------ several corpora

def test_each_step_is_judged_on_the_worst_of_the_chosen_corpora():
    """wiki alone allows more than news: the search on both stops where news breaks the budget, and says so."""
    def both(sparsity: float) -> dict:
        return {"wiki": smooth(sparsity), "news": 30.0 * math.exp(6.0 * sparsity ** 2)}  # news degrades faster

    spec = BudgetSpec(model="tiny-llama", protocol=TINY, corpus="wiki", more_corpora=("news",), max_increase=0.10)
    result = search_budget(None, spec, measure=both)
    news_edge = math.sqrt(math.log1p(0.10) / 6.0)
    frontier = result["frontier"]
    assert frontier["sparsity"] <= news_edge < frontier["sparsity"] + spec.resolution + 1e-9
    assert frontier["sparsity"] < edge(0.10) - 0.05  # well below what wiki alone allows
    assert frontier["corpus"] == "news" and frontier["dense_ppl"] == 30.0
    assert frontier["increase"] == pytest.approx(frontier["ppls"]["news"] / 30.0 - 1)
    assert set(frontier["ppls"]) == {"wiki", "news"}
    # A step within budget on wiki but over it on news fails, and names news.
    only_news = [r for r in result["trajectory"] if not r["passed"] and r["ppls"]["wiki"] <= DENSE * 1.1]
    assert only_news and all(r["corpus"] == "news" for r in only_news)
    assert result["budget"]["corpora"] == ["wiki", "news"] and result["dense_ppls"] == {"wiki": DENSE, "news": 30.0}
    assert result["budget"]["text"] == "+10 % perplexity on the worst of wiki, news"
    # The same search on wiki alone finds wiki's edge: the worst corpus is what moved the answer.
    alone = search_budget(None, BudgetSpec(protocol=TINY, corpus="wiki", max_increase=0.10), measure=smooth)
    assert alone["frontier"]["sparsity"] > frontier["sparsity"] and alone["frontier"]["corpus"] == "wiki"


def test_a_search_on_several_corpora_needs_a_perplexity_on_each():
    spec = BudgetSpec(protocol=TINY, corpus="wiki", more_corpora=("news",), max_increase=0.10)
    with pytest.raises(ConfigError, match=r"needs \{corpus: perplexity\}"):
        search_budget(None, spec, measure=smooth)
    with pytest.raises(ConfigError, match="no perplexity on news"):
        search_budget(None, spec, measure=lambda s: {"wiki": smooth(s)})


def test_one_corpus_keeps_its_dict_and_more_corpora_round_trip():
    one = BudgetSpec(protocol=TINY, corpus="wiki", max_increase=0.1)
    assert "more_corpora" not in one.to_dict() and one.eval_corpora == ("wiki",)
    more = BudgetSpec(protocol=TINY, corpus="wiki", more_corpora=("news", "wiki"), max_increase=0.1)
    assert more.eval_corpora == ("wiki", "news")  # each once, the first corpus first
    assert more.to_dict()["more_corpora"] == ["news", "wiki"]
    assert BudgetSpec.from_dict(json.loads(json.dumps(more.to_dict()))) == more
    with pytest.raises(ConfigError, match="must be corpus names"):
        BudgetSpec(protocol=TINY, more_corpora=("",), max_increase=0.1).validate()


def test_real_search_on_two_corpora_reuses_one_corpus_steps_and_measures_only_the_other():
    loaded = tiny_model("llama", layers=2)
    store = Store()
    alone = search_budget(loaded, BudgetSpec(max_increase=1e6, **REAL), store=store)  # news (the calibration corpus)
    both_spec = BudgetSpec(max_increase=1e6, more_corpora=("pydocs",), **REAL)
    evaluated = []
    original = evaluate.evaluate_setting

    def spy(loaded_, protocol, corpora, pruned=None, **kwargs):
        if pruned is not None:
            evaluated.append(tuple(corpora))
        return original(loaded_, protocol, corpora, pruned, **kwargs)

    evaluate.evaluate_setting = spy
    try:
        both = search_budget(loaded, both_spec, store=store)
    finally:
        evaluate.evaluate_setting = original
    assert evaluated and set(evaluated) == {("pydocs",)}  # news was stored by the first search
    news = {r["sparsity"]: r["ppl"] for r in alone["trajectory"]}
    for row in both["trajectory"]:
        assert row["ppls"]["news"] == pytest.approx(news[row["sparsity"]])
        assert row["corpus"] == max(("news", "pydocs"),
                                    key=lambda c: row["ppls"][c] / both["dense_ppls"][c])
    # Asked again, nothing is measured; and the one-corpus search still finds all of its steps.
    again = search_budget(loaded, both_spec, store=store)
    assert again["certainty"]["measured"] == 0
    assert search_budget(loaded, BudgetSpec(max_increase=1e6, **REAL), store=store)["certainty"]["measured"] == 0
