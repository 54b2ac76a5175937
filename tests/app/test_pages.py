"""Every dashboard page driven by AppTest on a tiny random model: widgets set by key, runs started and
finished (jobs run inline: PRUNESCOPE_INLINE_JOBS=1), no exception, the expected charts present."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from tests.app.apptest_helpers import SMALL, fake_map, insert_job, ok, page, text_of  # noqa: E402

pytestmark = pytest.mark.usefixtures("app_env")


def fake_sensitivity_job(sparsities=(0.5, 0.7), metrics=("exact", "reconstruction")) -> str:
    """A finished sensitivity job in the store, shaped like pruning_core.analysis.sensitivity's result."""
    maps = [fake_map(metric, s, 1.0 if metric == "exact" else 0.1) for metric in metrics for s in sparsities]
    result = {"maps": maps, "correlations": [{"sparsity": s, "proxy": "reconstruction", "spearman": 1.0}
                                             for s in sparsities]}
    return insert_job("sensitivity", {"model": "tiny-llama"}, "done", result)


def test_setup_page_shows_model_facts_and_writes_shared_settings():
    at = ok(page("setup", {**SMALL, "eval_corpora": ["news"]}))
    facts = {m.label: m.value for m in at.metric}
    assert list(facts)[:5] == ["Architecture", "Decoder layers", "Parameters", "Memory", "On disk"]
    assert (facts["Architecture"], facts["Decoder layers"]) == ("Llama", "2")
    at.number_input(key="setup_nsamples").set_value(8).run()
    at.multiselect(key="setup_eval").set_value(["news", "pydocs"]).run()
    ok(at)
    assert at.session_state["settings"]["nsamples"] == 8
    assert at.session_state["settings"]["eval_corpora"] == ["news", "pydocs"]
    at.button(key="setup_paper").click().run()
    settings = at.session_state["settings"]
    assert (settings["nsamples"], settings["seqlen"]) == (128, 2048)
    # news holds fewer tokens than 128 x 2048: Setup says so before any run, in its own words
    assert not at.exception and len(at.error) == 1 and "calibration text of 'news'" in at.error[0].value
    at.button(key="setup_quick").click().run()
    assert ok(at).session_state["settings"]["nsamples"] == 16
    assert "documents" in text_of(at)


def test_setup_page_reports_a_missing_model_folder_without_traceback(tmp_path):
    at = page("setup")
    at.radio(key="setup_model_kind").set_value("folder").run()
    at.text_input(key="setup_model_path").input(str(tmp_path / "no-such-model")).run()
    assert not at.exception
    assert any("is not a model PruneScope can read" in e.value for e in at.error)  # as for any non-model path


def test_uploaded_corpus_is_saved_under_home_and_usable_for_calibration(app_env):
    from app.services import corpora
    from pruning_core.errors import PruneScopeError

    text = "\n\n".join(f"Paragraph {i} about pruning language models and their weights." for i in range(20))
    path = corpora.save_upload("my notes.txt", text.encode())
    assert Path(path).parent == app_env / "uploads" and Path(path).read_text() == text
    with pytest.raises(PruneScopeError):
        corpora.save_upload("model.bin", b"\0")
    at = ok(page("setup", {**SMALL, "calib": path}, setup_uploaded_path=path))
    assert at.selectbox(key="setup_calib").value == path
    assert "**16** documents" in text_of(at)  # 80 % of the 20 paragraphs calibrate


def test_curves_page_runs_a_sweep_and_draws_the_curve_and_table():
    at = ok(page("curves", {**SMALL, "eval_corpora": ["news", "pydocs"]}))
    assert not at.get("plotly_chart")
    at.multiselect(key="curves_methods").set_value(["magnitude", "wanda"])
    at.multiselect(key="curves_sparsities").set_value([0.3, 0.5])
    at.button(key="curves_run").click().run()
    ok(at)
    assert len(at.get("plotly_chart")) == 1
    assert len(at.dataframe) == 1
    assert len(at.dataframe[0].value) == 1 + 4  # dense + 2 methods x 2 sparsities
    at.radio(key="curves_corpus").set_value("pydocs").run()
    at.toggle(key="curves_log").set_value(True).run()
    assert len(ok(at).get("plotly_chart")) == 1
    # A reload (new session) re-attaches to the finished job and shows the same curve.
    again = ok(page("curves"))
    assert len(again.get("plotly_chart")) == 1


def test_sensitivity_page_draws_heatmap_bars_curves_and_proxy_scatter():
    at = ok(page("sensitivity", jobs={"sensitivity": fake_sensitivity_job()}))
    # heatmap + layer bars + sensitivity-vs-sparsity + one proxy scatter
    assert len(at.get("plotly_chart")) == 4
    reading = [m.value for m in at.markdown if m.value.startswith("**Reading:**")]
    assert reading and "layer 1" in reading[0] and "down projections" in reading[0]
    at.selectbox(key="sens_show_metric").set_value("reconstruction").run()
    at.radio(key="sens_module").set_value("q").run()
    assert len(ok(at).get("plotly_chart")) == 4


def test_sensitivity_page_runs_a_map_when_the_engine_is_present():
    pytest.importorskip("pruning_core.analysis.sensitivity")
    at = ok(page("sensitivity"))
    at.multiselect(key="sens_metrics").set_value(["reconstruction"])
    at.number_input(key="sens_probe").set_value(1)
    at.button(key="sens_run").click().run()
    ok(at)
    assert len(at.get("plotly_chart")) >= 2


def test_what_if_page_compares_dense_and_pruned():
    at = ok(page("what_if"))
    at.selectbox(key="whatif_method").set_value("magnitude")
    at.selectbox(key="whatif_structure").set_value("2:4")
    at.text_area(key="whatif_prompt").input("Hello world")
    at.button(key="whatif_run").click().run()
    ok(at)
    labels = [m.label for m in at.metric]
    assert "Perplexity on news" in labels and "2:4 compressed" not in labels  # no size of a format nothing loads
    sizes = {m.label: m.value for m in at.metric}
    assert sizes["Pruned model (zeros stored)"] == sizes["Dense model"]  # measured files: zeros are stored
    assert "Dense model" in text_of(at) and "Pruned model" in text_of(at)
    assert "sparse tensor cores" in " ".join(i.value for i in at.info)  # the 2:4 speed claim


def test_what_if_shows_prompt_and_generated_text_as_text_not_markdown():
    at = ok(page("what_if"))
    at.selectbox(key="whatif_method").set_value("magnitude")
    at.text_area(key="whatif_prompt").input("# Test the function\n    return x")
    at.button(key="whatif_run").click().run()
    ok(at)
    texts = [str(e.value) for e in at.text]
    assert any(t.startswith("Prompt: “# Test the function\n    return x") for t in texts)  # layout kept
    assert len(texts) >= 3  # prompt, dense and pruned text
    assert not any("Test the function" in str(m.value) for m in at.markdown)  # never a heading


def test_what_if_page_tries_another_prompt_without_re_pruning():
    at = ok(page("what_if"))
    at.selectbox(key="whatif_method").set_value("wanda")
    at.button(key="whatif_run").click().run()
    ok(at)
    from app.services import jobs
    job_before = jobs.latest_job("whatif")
    assert job_before is not None
    at.text_input(key="whatif_prompt_again").input("Once upon a time")
    at.button[-1].click().run()  # the form's Generate button
    ok(at)
    assert any("Once upon a time" in str(t.value) for t in at.text)  # the prompt, shown as text
    again = at.session_state["whatif_again"]
    assert again["prompt"] == "Once upon a time" and isinstance(again["pruned"], str)
    assert jobs.latest_job("whatif") == job_before  # no new what-if job was started


def test_export_page_runs_an_export_job_and_offers_the_files():
    at = ok(page("export"))
    at.checkbox(key="export_heatmap").set_value(False)
    at.checkbox(key="export_recipe").set_value(True)
    at.button[0].click().run()  # the form's Export button
    ok(at)
    from app.services import jobs
    job_id = jobs.latest_job("export")
    status = jobs.job_status(job_id)
    assert status["state"] == "done", status
    assert Path(status["result"]["folder"], "masks.safetensors").is_file()
    downloads = [e.proto.label for e in at.get("download_button")]
    assert any(label.startswith("masks.safetensors") for label in downloads), downloads
    assert any(label.startswith("recipe.yaml") for label in downloads), downloads
    assert "Summary" in text_of(at)
    # A reload (a new session) finds the finished export again.
    again = ok(page("export"))
    assert [e.proto.label for e in again.get("download_button")] == downloads


def test_what_if_page_per_layer_table():
    at = ok(page("what_if"))
    at.toggle(key="whatif_per_layer").set_value(True).run()
    ok(at)
    at.button(key="whatif_run").click().run()
    sizes = {m.label: m.value for m in ok(at).metric}
    assert sizes["Pruned model (zeros stored)"] == sizes["Dense model"] and "2:4 compressed" not in sizes


def test_summary_page_recommends_within_budget():
    empty = ok(page("summary"))
    assert "Nothing measured yet" in text_of(empty)
    curves = page("curves")
    curves.multiselect(key="curves_sparsities").set_value([0.1, 0.5, 0.9])
    curves.button(key="curves_run").click().run()
    ok(curves)
    fake_sensitivity_job(sparsities=(0.5,), metrics=("reconstruction",))
    at = ok(page("summary"))
    assert len(at.get("plotly_chart")) == 2
    assert "Recommended" in text_of(at) or "No measured setting" in text_of(at)
    at.slider(key="summary_budget").set_value(100).run()
    ok(at)


def test_recommend_picks_the_highest_sparsity_within_budget():
    from pruning_core.analysis.recommend import recommend

    results = {"dense": {"ppl": {"wiki": 10.0}}, "points": [
        {"method": "wanda", "structure": "unstructured", "sparsity": 0.5, "ppl": {"wiki": 10.8}},
        {"method": "wanda", "structure": "unstructured", "sparsity": 0.6, "ppl": {"wiki": 12.0}},
        {"method": "magnitude", "structure": "unstructured", "sparsity": 0.5, "ppl": {"wiki": 10.95}},
    ]}
    rec = recommend(results, "wiki", 0.10)
    assert rec["best"]["method"] == "wanda" and rec["best"]["sparsity"] == 0.5
    assert rec["best_change"] == pytest.approx(0.08)
    assert recommend(results, "wiki", 0.01)["best"] is None
