"""The Recovery page and the Summary's way to it, driven by AppTest on the tiny model: the settings and Run with
no result (the Summary's recommendation preselected, a training-time estimate); a finished real `run_recovery`
shows the before/after table, the loss and perplexity charts, the exact merged sparsity, the adapter's size and
ranks, text side by side and the downloads; a click on Recover runs the job (inline) and a reload re-attaches;
the Summary offers "Recover quality with an adapter" and, once a recovery of its setting is done, its result."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("streamlit")
from tests.app.apptest_helpers import (  # noqa: E402
    SMALL, insert_job, multipage_app, ok, page, stored_sweep, tables_show_no_none, text_of)

pytestmark = pytest.mark.usefixtures("app_env")  # tiny model, a temporary PRUNESCOPE_HOME, inline jobs

TINY_TRAIN = {"steps": 4, "batch_size": 2, "seqlen": 32, "eval_every": 2}
TINY_FORM = {"recovery_steps": 4, "recovery_batch": 2, "recovery_seqlen": 32, "recovery_rank": 2}


def _recovery(corpus: str = "news", sparsity: float = 0.5) -> dict:
    """A finished recovery job of the tiny model in the store: a real `run_recovery` (Wanda, 4 steps of 2 x 32
    tokens), with its adapter saved in the store, stored as the dashboard's job stores it. Returns its result."""
    from pruning_core.store import Store
    from pruning_core.protocol import Protocol
    from pruning_core.recovery.run import RecoverySpec, run_recovery

    protocol = Protocol(calib=corpus, nsamples=4, seqlen=32, eval_windows=4)
    spec = RecoverySpec(model="tiny-llama", protocol=protocol, method="wanda", sparsity=sparsity,
                        train_corpus=corpus, train=TINY_TRAIN, rank=2, eval_corpora=(corpus,), curve_windows=2,
                        max_new_tokens=6)
    result = run_recovery(spec, store=Store())
    insert_job("recovery", result["spec"], "done", result)
    return result


def _figures(at) -> dict[str, dict]:
    return {f["layout"]["title"]["text"]: f for f in (json.loads(c.proto.spec) for c in at.get("plotly_chart"))}


def test_without_a_result_the_page_shows_the_setting_training_an_estimate_and_run():
    at = ok(page("recovery", **TINY_FORM))
    assert "press **Recover**" in text_of(at)
    assert at.selectbox(key="recovery_method").value == "wanda" and at.slider(key="recovery_sparsity").value == 0.5
    assert at.radio(key="recovery_rank_allocation").options == ["uniform", "gradient"]
    assert not at.button(key="recovery_run").disabled
    # The whole run's estimate (pruning, evaluations, samples beside training), with the training named in it.
    estimate = next(c.value for c in at.caption if "Estimated time" in c.value)
    assert "of it training" in estimate and "4 steps ×" in estimate and "s per step" in estimate
    assert not at.get("plotly_chart") and not any("gap won back" in d.value.columns for d in at.dataframe)

    at.multiselect(key="recovery_eval").set_value([]).run()  # bad input: one message, no run
    assert any("at least one corpus" in str(e.value) for e in at.error)
    assert at.button(key="recovery_run").disabled


def test_a_finished_recovery_shows_table_charts_merged_sparsity_adapter_and_text():
    result = _recovery()
    at = ok(page("recovery", **TINY_FORM))
    table = _result_table(at)
    assert list(table["corpus"]) == ["news"]
    assert list(table["dense"]) == [f"{result['dense_ppl']['news']:,.2f}"]
    assert list(table["pruned"]) == [f"{result['pruned_ppl']['news']:,.2f}"]
    assert list(table["after recovery"]) == [f"{result['recovered_ppl']['news']:,.2f}"]
    share = result["recovered_share"]["news"]
    assert list(table["gap won back"]) == [f"{100 * share:.0f} %" if share is not None else "–"]

    figures = _figures(at)
    loss = figures["Training loss against step"]
    assert loss["data"][0]["x"] == [1, 2, 3, 4]
    assert loss["data"][0]["y"] == pytest.approx([l for _, l in result["history"]["loss"]])
    ppl = figures["Perplexity against step"]
    roles = {t["meta"]["role"]: t for t in ppl["data"]}
    assert roles["curve"]["x"] == [0, 2, 4]
    assert roles["dense"]["y"] == pytest.approx([result["dense_ppl"]["news"]] * 2)
    assert roles["pruned"]["y"] == pytest.approx([result["pruned_ppl"]["news"]] * 2)
    assert roles["recovered"]["y"] == pytest.approx([result["recovered_ppl"]["news"]])

    assert result["sparsity"]["merged"] == result["sparsity"]["before"] == 0.5
    assert any("exactly 50.0 % before and after merging" in str(s.value) for s in at.success)
    prose = text_of(at)
    adapter = result["adapter"]
    assert f"{adapter['parameters']:,} parameters" in prose and "files take" in prose
    assert f"{100 * adapter['fraction_of_model']:.2f} % of the model" in prose
    assert "uniform rank allocation" in prose and "rank 2" in prose
    assert "**Recovered model** (pruned + merged adapter)" in prose
    assert {d.key for d in at.download_button} == {"recovery_report", "recovery_adapter"}
    tables_show_no_none(at)

    # A training whose loss rose says so (journey, issue 26 point 8: "a recovery run whose loss rises says nothing").
    rising = {**result, "history": {**result["history"], "loss": [[1, 2.0], [2, 2.1], [3, 2.3], [4, 2.4]]}}
    insert_job("recovery", rising["spec"], "done", rising)
    warned = [str(w.value) for w in ok(page("recovery", **TINY_FORM)).warning]
    assert any("training loss rose" in w and "learned nothing useful" in w for w in warned), warned


def test_recover_runs_the_job_and_a_reload_reattaches():
    at = ok(page("recovery", **TINY_FORM))
    at.button(key="recovery_run").click().run()
    ok(at)
    assert _result_table(at)["corpus"].tolist() == ["news"]
    assert any("exactly 50.0 %" in str(s.value) for s in at.success)
    again = ok(page("recovery"))  # a new session: the finished job and the form that made it come back
    assert again.number_input(key="recovery_steps").value == 4 and again.selectbox(key="recovery_seqlen").value == 32
    assert _figures(again)["Training loss against step"]["data"][0]["x"] == [1, 2, 3, 4]
    # The page's estimate now comes from that run's measured training speed.
    assert any("Estimated time" in c.value and "of it training" in c.value for c in again.caption)


def test_summary_offers_recovery_of_its_recommendation_and_shows_a_finished_one():
    settings = {**SMALL, "eval_corpora": ["wiki"], "calib": "wiki"}
    stored_sweep()  # recommends Wanda at 50 %, unstructured, on wiki
    at = ok(page("summary", settings))
    assert not at.button(key="summary_recover").disabled
    assert "After recovery with an adapter" not in text_of(at)
    at.button(key="summary_recover").click().run()  # a page run alone: no menu to switch, the hand-off waits
    assert at.session_state["recovery_prefill"]["method"] == "wanda"
    assert at.session_state["recovery_prefill"]["sparsity"] == 0.5

    handed = ok(page("recovery", settings, recovery_prefill={"method": "sparsegpt", "structure": "2:4",
                                                              "sparsity": 0.5, "propagation": "pruned",
                                                              "allocator": "uniform"}))
    assert handed.selectbox(key="recovery_method").value == "sparsegpt"
    assert handed.selectbox(key="recovery_structure").value == "2:4"
    # Without a hand-off, the page starts from the Summary's recommendation too.
    fresh = ok(page("recovery", settings))
    assert fresh.selectbox(key="recovery_method").value == "wanda" and fresh.slider(key="recovery_sparsity").value == 0.5

    result = _recovery("wiki")
    line = next(str(m.value) for m in ok(page("summary", settings)).markdown
                if "After recovery with an adapter" in str(m.value))
    assert f"**{result['recovered_ppl']['wiki']:,.2f}**" in line and "50.0%" in line
    share = result["recovered_share"]["wiki"]
    assert ("of the gap won back" in line) == (share is not None)
    assert share is None or f"{share:.0%} of the gap won back" in line


def test_in_the_app_the_summary_button_opens_recovery_with_its_setting():
    settings = {**SMALL, "eval_corpora": ["wiki"], "calib": "wiki"}
    stored_sweep()
    at = ok(multipage_app(settings))
    ok(at.switch_page("../pages/summary.py").run())
    at.button(key="summary_recover").click().run()
    ok(at)
    assert any(t.value == "Recovery" for t in at.title)
    assert "Preselected from the Summary" in text_of(at)
    assert at.selectbox(key="recovery_method").value == "wanda" and at.slider(key="recovery_sparsity").value == 0.5
    assert "recovery_prefill" not in at.session_state  # taken once: later edits are the user's



def _result_table(at):
    """The before/after table (the adapters expander holds a table too)."""
    return next(d.value for d in at.dataframe if "gap won back" in d.value.columns)


def _adapters_expander(at):
    return next(e for e in at.expander if e.label.startswith("Adapters in the store"))


def test_step_wise_sparsities_and_sensitivity_ranks_reach_the_job_spec():
    from pruning_core.store import Store
    from tests.app.apptest_helpers import fake_map

    at = ok(page("recovery", **TINY_FORM))
    assert at.radio(key="recovery_rank_allocation").options == ["uniform", "gradient"]  # no map yet
    at.text_input(key="recovery_schedule").set_value("0.3, abc").run()  # bad input: one message, no run
    assert any("Could not read 'abc'" in str(e.value) for e in at.error)
    assert at.button(key="recovery_run").disabled
    at.text_input(key="recovery_schedule").set_value("0.6").run()  # above the final 0.5: the spec's own check
    assert any("must rise and end below the final" in str(e.value) for e in at.error)

    # A stored sensitivity map at two sparsities offers sensitivity ranks; layer 1's down projection costs most.
    insert_job("sensitivity", {"model": "tiny-llama", "method": "wanda", "sparsities": [0.4, 0.6]}, "done",
               {"maps": [fake_map("exact", 0.4), fake_map("exact", 0.6)], "correlations": []})
    at = ok(page("recovery", **TINY_FORM, recovery_schedule="0.3", recovery_rank_allocation="sensitivity"))
    assert at.radio(key="recovery_rank_allocation").options == ["uniform", "gradient", "sensitivity"]
    at.button(key="recovery_run").click().run()
    ok(at)
    job = next(j for j in Store().recent_jobs() if j["kind"] == "recovery")
    spec = job["spec"]
    assert spec["schedule"] == [0.3] and spec["sparsity"] == 0.5 and spec["rank_allocation"] == "sensitivity"
    costs = spec["sensitivity_costs"]
    assert len(costs) == 14 and max(costs, key=costs.get) == "model.layers.1.mlp.down_proj"
    # The map's own cost curve at the setting's 50 % (between the cells at 40 and 60 %: 2 x 7 x s).
    assert costs["model.layers.1.mlp.down_proj"] == pytest.approx(2 * 7 * 0.5, rel=1e-6)
    result = job["result"]
    assert [round(s["sparsity"], 2) for s in result["stages"]] == [0.3, 0.5]
    assert result["ranks"]["allocation"] == "sensitivity"
    assert _result_table(at)["corpus"].tolist() == ["news"]
    again = ok(page("recovery"))  # the followed job's form comes back, step-wise sparsities included
    assert again.text_input(key="recovery_schedule").value == "0.3"


def test_adapters_in_the_store_are_listed_newest_first():
    at = ok(page("recovery", **TINY_FORM))
    assert _adapters_expander(at).label == "Adapters in the store (0)"
    assert "No adapters of this model in the store yet" in text_of(at)
    older = _recovery(sparsity=0.5)
    newer = _recovery(sparsity=0.4)
    at = ok(page("recovery", **TINY_FORM))
    expander = _adapters_expander(at)
    assert expander.label == "Adapters in the store (2)"
    table = expander.dataframe[0].value
    assert list(table["setting"]) == [newer["pruned"]["description"], older["pruned"]["description"]]
    assert list(table["folder"]) == [newer["adapter"]["folder"], older["adapter"]["folder"]]
    assert list(table["steps"]) == [4, 4]
    pruned_to_recovered = f"news {older['pruned_ppl']['news']:,.2f} → {older['recovered_ppl']['news']:,.2f}"
    assert pruned_to_recovered in table["perplexity pruned → recovered"].iloc[1]
