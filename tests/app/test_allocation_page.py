"""Allocation in the dashboard, driven by AppTest on the tiny model: the Allocation view (a plan's heatmap with its
global sparsity by parameters, beside the sensitivity map), the What-if editor starting from a plan, the Curves
overlay of allocations, and the Summary's budget control (stored answers per budget, and a real search run)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("streamlit")
from app import charts  # noqa: E402
from app.services import allocation, choices, jobs, sweep  # noqa: E402
from app.services import budget as budget_search  # noqa: E402
from tests.app.apptest_helpers import SMALL, fake_map, insert_job, multipage_app, ok, page  # noqa: E402

pytestmark = pytest.mark.usefixtures("app_env")  # tiny model, a temporary PRUNESCOPE_HOME, inline jobs


def _figures(at) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def _plan_figure(at) -> dict:
    return next(f for f in _figures(at) if (f["data"][0].get("meta") or {}).get("role") == "plan")


def _texts(at) -> str:
    return "\n".join(str(e.value) for group in ("markdown", "caption", "info") for e in getattr(at, group))


# ------------------------------------------------------------------------------------------------ Allocation


def test_allocation_view_shows_the_plan_beside_the_sensitivity_map():
    insert_job("sensitivity", {"model": "tiny-llama", "method": "wanda"}, "done",
               {"maps": [fake_map("exact", 0.5)], "correlations": []})
    at = ok(page("allocation"))
    plan = _plan_figure(at)
    assert plan["data"][0]["meta"] == {"role": "plan", "allocator": "uniform", "global_sparsity": 0.5}
    assert {v for row in plan["data"][0]["z"] for v in row} == {50.0}  # percent, every layer x kind
    assert len(plan["data"][0]["z"]) == 2 and plan["data"][0]["x"] == ["q", "k", "v", "o", "gate", "up", "down"]
    assert any(f["layout"]["title"]["text"].startswith("Sensitivity") for f in _figures(at))
    at.slider(key="alloc_target").set_value(0.7).run()
    ok(at)
    assert "**70.0%** of the pruned linears' weights removed" in _texts(at)
    assert _plan_figure(at)["data"][0]["meta"]["global_sparsity"] == pytest.approx(0.7)


@pytest.mark.skipif("owl" not in choices.ALLOCATIONS, reason="the owl allocator is not registered")
def test_allocation_view_makes_an_owl_plan_from_calibration_statistics():
    at = ok(page("allocation", alloc_allocator="owl", alloc_target=0.6))
    meta = _plan_figure(at)["data"][0]["meta"]
    assert meta["allocator"] == "owl"
    assert meta["global_sparsity"] == pytest.approx(0.6, abs=1e-3)  # the target, counted over parameters
    assert "No sensitivity map yet" in _texts(at)


@pytest.mark.skipif("sensitivity" not in choices.ALLOCATIONS, reason="the sensitivity allocator is not registered")
def test_sensitivity_allocation_asks_for_a_map_at_two_sparsities_then_uses_it():
    at = ok(page("allocation", alloc_allocator="sensitivity"))
    assert "compute one on the **Sensitivity** page" in _texts(at)
    assert not at.get("plotly_chart")
    insert_job("sensitivity", {"model": "tiny-llama", "method": "wanda", "sparsities": [0.4, 0.6]}, "done",
               {"maps": [fake_map("exact", 0.4), fake_map("exact", 0.6)], "correlations": []})
    at = ok(page("allocation", alloc_allocator="sensitivity", alloc_target=0.5))
    meta = _plan_figure(at)["data"][0]["meta"]
    assert meta["allocator"] == "sensitivity" and meta["global_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert "Made from the exact loss increase map of wanda at 40%, 60%." in _texts(at)


# -------------------------------------------------------------------------------------------------- What-if


def test_edited_plan_records_where_it_started():
    base = allocation.plan_now(SMALL, "uniform", 0.5)["plan"]
    assert allocation.edited_plan(base, [{"layer": 0, "q": 0.5}]) is base  # nothing changed: the allocator's plan
    edited = allocation.edited_plan(base, [{"layer": 1, "down": 0.2}])
    assert edited["allocator"] == "edited" and allocation.plan_origin(edited) == "uniform"
    assert edited["values"][1][-1] == 0.2 and edited["values"][0] == base["values"][0]
    facts = allocation.plan_facts(SMALL, edited)
    assert facts["global_sparsity"] < 0.5 and facts["layer_sparsity"][0] == pytest.approx(0.5)


def test_whatif_runs_the_edited_plan():
    base = allocation.plan_now(SMALL, "uniform", 0.5)["plan"]
    edited = allocation.edited_plan(base, [{"layer": 0, **{k: 0.0 for k in base["kinds"]}}])  # layer 0 dense
    at = ok(page("what_if", whatif_per_layer=True, whatif_plan_seed=edited, whatif_method="magnitude"))
    assert "This plan (edited) removes **25.0%**" in _texts(at)
    at.button(key="whatif_run").click().run()
    ok(at)
    assert any("uniform plan (edited)" in str(h.value) for h in at.subheader)
    status = jobs.job_status(at.session_state["jobs"]["whatif"])
    assert status["spec"]["plan"]["values"] == edited["values"]
    assert status["result"]["per_layer_sparsity"][0] == 0.0
    assert status["result"]["plan_sparsity"] == pytest.approx(0.25)


# --------------------------------------------------------------------------------------------------- Curves


def _point(allocation, sparsity, ppl):
    return {"method": "wanda", "structure": "unstructured", "allocation": allocation, "target_sparsity": sparsity,
            "sparsity": sparsity, "ppl": {"news": ppl}, "prune_seconds": 1.0, "eval_seconds": 1.0}


def _two_allocations() -> dict:
    """A finished sweep of wanda with uniform and owl plans at 50 % and 70 % (OWL better at 70 %)."""
    result = {"model": {"name": "tiny", "fingerprint": "f"}, "dense": {"ppl": {"news": 10.0}},
              "protocol": {"calib": "news", "propagation": "pruned"},
              "points": [_point("uniform", 0.5, 12.0), _point("uniform", 0.7, 30.0),
                         _point("owl", 0.5, 11.5), _point("owl", 0.7, 20.0)]}
    insert_job("sweep", {"model": "tiny-llama"}, "done", result)
    return result


def test_curves_overlay_allocations_per_method():
    result = _two_allocations()
    at = ok(page("curves"))
    curves = next(f for f in _figures(at) if f["layout"]["title"]["text"].startswith("Perplexity vs sparsity"))
    lines = {t["name"]: t for t in curves["data"] if (t.get("meta") or {}).get("role") != "dense"}
    assert set(lines) == {"wanda · uniform", "wanda · owl"}
    assert lines["wanda · owl"]["y"] == [11.5, 20.0] and lines["wanda · uniform"]["y"] == [12.0, 30.0]
    assert lines["wanda · owl"]["line"]["dash"] != lines["wanda · uniform"]["line"]["dash"]
    assert lines["wanda · owl"]["legendgroup"] == lines["wanda · uniform"]["legendgroup"] == "wanda"
    rows = charts.curve_table_rows(sweep.merge_sweeps([result]))
    assert [(r["allocation"], r["target sparsity (%)"]) for r in rows[1:]] == [
        ("uniform", 50.0), ("uniform", 70.0), ("owl", 50.0), ("owl", 70.0)]


# -------------------------------------------------------------------------------------------------- Summary


def test_summary_recommendation_names_the_allocation_of_a_plan_point():
    _two_allocations()
    at = ok(page("summary", summary_budget=100, summary_budget_methods=["wanda"]))
    headline = next(str(m.value) for m in at.markdown if str(m.value).startswith("### "))
    assert "**unstructured, owl plan**, **70%** sparsity" in headline  # owl's 70 % is within +100 %, uniform's not


def _stored_answer(budget: float, frontier: float, ppl: float) -> None:
    """A finished budget search for wanda/uniform on news at +`budget` (as the Summary would submit it)."""
    spec = budget_search.budget_spec(SMALL, "wanda", "uniform", budget, "news")
    trajectory = [{"step": i + 1, "phase": "coarse", "sparsity": s, "ppl": 10.0 * (1 + s), "passed": s <= frontier}
                  for i, s in enumerate((0.1, 0.2, 0.3, 0.4, 0.5, 0.6))]
    insert_job("budget", spec, "done", {
        "frontier": {"sparsity": frontier, "ppl": ppl, "increase": ppl / 10.0 - 1},
        "trajectory": trajectory, "dense_ppl": 10.0,
        "certainty": {"eval_windows": 4, "gap_pp": 1.0, "evaluations": 6, "reused": 0, "grid_evaluations": 48,
                      "ppl_monotone": True}})


def test_summary_budget_slider_reads_the_stored_answer_of_each_budget():
    _stored_answer(0.10, 0.41, 10.9)
    _stored_answer(0.25, 0.56, 12.4)
    at = ok(page("summary", summary_budget_methods=["wanda"]))
    assert "- **Wanda**: at most **41%** sparsity within +10 % on news: perplexity 10.90" in _texts(at)
    assert "6 evaluations" in _texts(at) and "4 evaluation windows" in _texts(at)
    assert "the last passing and the first failing step are 1 percentage point apart" in _texts(at)
    at.slider(key="summary_budget").set_value(25).run()
    ok(at)
    assert "at most **56%** sparsity within +25 %" in _texts(at) and "41%" not in _texts(at)
    at.slider(key="summary_budget").set_value(30).run()
    assert "not searched for +30 % yet" in _texts(at)
    assert at.button(key="summary_budget_run").label == "Find the most sparsity within +30 %"


@pytest.mark.parametrize("corpora", [["news"], ["news", "pydocs"]], ids=["one corpus", "worst of two"])
def test_summary_budget_search_runs_as_a_job_and_says_how_it_was_found(corpora):
    settings = {**SMALL, "eval_corpora": corpora}
    at = ok(page("summary", settings, summary_budget_methods=["magnitude"], summary_budget=5))
    at.button(key="summary_budget_run").click().run()
    ok(at)
    status = budget_search.budget_status(budget_search.budget_spec(settings, "magnitude", "uniform", 0.05, corpora))
    assert status["state"] == "done"
    frontier = status["result"]["frontier"]
    assert f"at most **{frontier['sparsity']:.0%}** sparsity within +5 %" in _texts(at)
    # Every step judged on the worst of the chosen corpora (all of them by default), and the page says so.
    assert status["result"]["budget"]["corpora"] == corpora
    for row in status["result"]["trajectory"]:
        assert set(row["ppls"]) == set(corpora)
    if len(corpora) > 1:
        assert "within +5 % on the worst of: news, pydocs: perplexity on " in _texts(at)
    steps = len(status["result"]["trajectory"])
    assert f"Found by a step-wise search of {steps} steps" in _texts(at)
    assert not any(b.key == "summary_budget_run" for b in at.button)  # answered: nothing left to run


def test_a_plan_goes_from_the_allocation_view_to_the_whatif_editor():
    at = multipage_app()
    at.switch_page("../pages/allocation.py").run()
    at.slider(key="alloc_target").set_value(0.6).run()
    ok(at).button(key="alloc_to_whatif").click().run()
    ok(at)
    assert any(t.value == "What-if" for t in at.title)  # the What-if page is shown, its table from the plan
    assert at.session_state["whatif_plan_seed"]["values"][0][0] == pytest.approx(0.6)
    assert at.toggle(key="whatif_per_layer").value and at.slider(key="whatif_sparsity").value == pytest.approx(0.6)
    assert "This plan removes **60.0%**" in _texts(at)
