"""The Frontier page and the Summary's lead, driven by AppTest on a frontier stored in the store: one sentence
with the bytes measured on the files (the same on both pages), the chart with a marker per family and the front,
the Q4_1 note beside the embedded-layout 4-bit answer, a size budget, the pruning recommendation named "pruning
alone" under the frontier's answer (one answer, not two); and a real frontier job run from the page."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("streamlit")
from tests.app.apptest_helpers import SMALL, ok, page, stored_frontier, stored_sweep, text_of  # noqa: E402

pytestmark = pytest.mark.usefixtures("app_env")  # tiny model, a temporary PRUNESCOPE_HOME, inline jobs

SETTINGS = {**SMALL, "eval_corpora": ["wiki", "news"]}
ANSWER_10 = ("Stored as compressed-tensors 4-bit (loaded by transformers, vLLM), this model weighs 79.0 MB instead "
             "of 269.1 MB, at +6.5 % perplexity on news (the worst of wiki, news), with GPTQ 4-bit, groups of 64, "
             "symmetric: the smallest file within +10 %.")


def _chart(at, key):
    return json.loads(next(c for c in at.get("plotly_chart") if c.proto.id.endswith(key) or key in c.proto.id
                           ).proto.spec)


def test_frontier_page_answers_in_one_sentence_with_the_chart_and_the_table():
    stored_frontier()
    at = ok(page("frontier", SETTINGS))
    texts = [str(m.value) for m in at.markdown]
    assert any(ANSWER_10 in t for t in texts)
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    roles = [t["meta"]["role"] for t in figure["data"]]
    assert "front" in roles and "answer" in roles
    families = {t["meta"]["family"] for t in figure["data"] if t["meta"]["role"] == "family"}
    assert families == {"dense", "quantized", "unstructured", "structured"}
    assert figure["layout"]["xaxis"]["type"] == "log" and figure["layout"]["yaxis"]["type"] == "log"
    front = next(t for t in figure["data"] if t["meta"]["role"] == "front")
    assert "sweep:wanda:unstructured:uniform:0.5" not in front["meta"]["keys"]  # as large as dense, and worse
    table = next(d.value for d in at.dataframe if "on the front" in d.value.columns)
    assert len(table) == 7 and "compressed-tensors 4-bit" in " ".join(table["format (runtimes)"])
    # A tighter budget: the Q4_1 layout answers, with the note on the GGUF it came from.
    at.slider(key="frontier_increase").set_value(2).run()
    ok(at)
    texts = [str(m.value) for m in at.markdown]
    assert any("with RTN 4-bit, groups of 32, asymmetric: the smallest file within +2 %" in t for t in texts)
    assert "Q4_1" in text_of(at) and "layout of the Q4_1 GGUF" in text_of(at)
    # A size budget: the best perplexity within 100 MB.
    at.radio(key="frontier_budget_kind").set_value("size").run()
    at.number_input(key="frontier_mb").set_value(100.0).run()
    ok(at)
    assert any("83.0 MB instead of 269.1 MB" in str(m.value) and "the best perplexity within 100.0 MB" in str(m.value)
               for m in at.markdown)
    # Judged on wiki only, the answer is said on wiki.
    at.radio(key="frontier_budget_kind").set_value("quality").run()
    at.slider(key="frontier_increase").set_value(10).run()
    at.multiselect(key="frontier_corpora").set_value(["wiki"]).run()
    ok(at)
    assert any("at +6.0 % perplexity on wiki, with GPTQ 4-bit, groups of 64" in str(m.value) for m in at.markdown)


def test_summary_leads_with_the_frontier_answer_and_names_pruning_alone_under_it():
    stored_sweep()  # Wanda 50 % is the pruning recommendation within +10 % on wiki
    stored_frontier()
    at = ok(page("summary", {**SMALL, "eval_corpora": ["wiki"]}))
    texts = [str(m.value) for m in at.markdown]
    headlines = [t for t in texts if t.startswith("### ")]
    assert headlines == ["### Recommended: **GPTQ 4-bit, groups of 64, symmetric**: **79.0 MB** instead of 269.1 MB"]
    assert any("this model weighs 79.0 MB instead of 269.1 MB, at +6.0 % perplexity on wiki" in t for t in texts)
    assert any(t.startswith("#### Pruning alone: **Wanda**") for t in texts)
    frontier_chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert any(t["meta"]["role"] == "front" for t in frontier_chart["data"])
    # The same budget moves both: at +1 % nothing smaller holds, and pruning alone has nothing either.
    at.slider(key="summary_budget").set_value(1).run()
    ok(at)
    texts = [str(m.value) for m in at.markdown]
    assert [t for t in texts if t.startswith("### ")] == ["### Keep the dense model"]
    assert any(t.startswith("No smaller file stays within +1 % perplexity") or
               "No smaller file stays within +1 % perplexity" in t for t in texts)
    assert any(t.startswith("#### Pruning alone: no measured setting") for t in texts)


def test_without_a_frontier_the_summary_keeps_its_headline():
    stored_sweep()
    at = ok(page("summary", {**SMALL, "eval_corpora": ["wiki"]}))
    assert [str(m.value) for m in at.markdown if str(m.value).startswith("### ")][0].startswith("### Recommended")


def test_measure_the_frontier_runs_a_job_from_the_page_and_shows_its_answer():
    at = ok(page("frontier", SMALL))
    assert "Nothing measured yet for the frontier" in text_of(at)
    at.multiselect(key="frontier_techniques").set_value(["rtn:4:32:asym", "wanda:0.5"]).run()
    at.button(key="frontier_run").click().run()
    ok(at)
    texts = [str(m.value) for m in at.markdown]
    assert any("instead of" in t and "perplexity on news" in t for t in texts)
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {t["meta"].get("family") for t in figure["data"] if t["meta"]["role"] == "family"} == \
           {"dense", "quantized", "unstructured"}


def test_quantize_one_setting_from_the_page_puts_its_measured_file_on_the_frontier():
    at = ok(page("frontier", SMALL))
    at.selectbox(key="frontier_q_method").set_value("rtn").run()
    at.selectbox(key="frontier_q_bits").set_value(8).run()
    at.selectbox(key="frontier_q_group").set_value("channel").run()
    at.button(key="frontier_q_run").click().run()
    ok(at)
    # The quantize job's record gives the dense model's 16-bit files and perplexity, and its own folder's bytes.
    table = next(d.value for d in at.dataframe if "on the front" in d.value.columns)
    assert list(table["technique"]) == ["RTN 8-bit, per channel, symmetric", "dense (16-bit)"]
    assert "compressed-tensors 8-bit (loaded by transformers, vLLM)" in list(table["format (runtimes)"])
    assert any("this model weighs" in str(m.value) for m in at.markdown)
    assert "RTN 8-bit, per channel, symmetric:" in text_of(at)  # the job's own line under the form
