"""Export page hand-offs (AppTest, tiny model, inline jobs): a stored What-if mask is offered and exported as
it was made, and the Summary's recommendation arrives pre-filled; the page says which propagation produced
its perplexities."""

from __future__ import annotations

import pytest

pytest.importorskip("streamlit")
from tests.app.apptest_helpers import SMALL, multipage_app, ok, page, text_of  # noqa: E402

pytestmark = pytest.mark.usefixtures("app_env")


def test_export_page_offers_and_exports_the_stored_whatif_mask():
    from app.services import jobs, what_if
    job = jobs.submit_job("whatif", what_if.whatif_spec(SMALL, "wanda", "unstructured", 0.5, {0: 0.3},
                                                              max_new_tokens=2))
    whatif = jobs.job_status(job)["result"]
    at = ok(page("export"))
    options = at.selectbox(key="export_source").options
    labels = [o for o in options if o.startswith("What-if mask")]
    assert labels and "per-layer" in labels[0] and whatif["mask_artifact"][:8] in labels[0], options
    at.selectbox(key="export_source").set_value(labels[0]).run()
    ok(at)
    assert "per-layer overrides" in text_of(at)
    assert all(s.key != "export_method" for s in at.selectbox)  # the mask's own setting, not a new one
    at.checkbox(key="export_heatmap").set_value(False)
    at.button[0].click().run()  # the form's Export button
    ok(at)
    status = jobs.job_status(jobs.latest_job("export"))
    assert status["state"] == "done", status
    report = status["result"]["report"]
    assert report["setting"]["mask_source"] == f"stored What-if mask {whatif['mask_artifact'][:12]}"
    assert report["ppl"]["pruned"] == whatif["ppl"]  # the What-if's own mask and evaluation, not a re-pruning
    assert report["evaluation"]["dense_cached"] == ["news"]  # the What-if measured the dense model already
    text = text_of(at)
    assert "pruned propagation" in text and "reused from the store" in text


def test_summary_recommendation_arrives_prefilled_on_export():
    """In the multipage app the Summary's button opens Export with its recommended point filled in."""
    from app.services import jobs, sweep
    jobs.submit_job("sweep", sweep.sweep_spec(SMALL, ["magnitude", "sparsegpt"], ["unstructured"],
                                                     [0.1, 0.3], propagation="dense"))
    at = ok(multipage_app())
    ok(at.switch_page("../pages/summary.py").run())
    at.slider(key="summary_budget").set_value(100).run()
    ok(at).button(key="summary_export").click().run()
    ok(at)
    # Now on the Export page, the form carries the Summary's point.
    assert "Pre-filled with the Summary's recommendation" in text_of(at)
    method, sparsity = at.selectbox(key="export_method").value, at.slider(key="export_sparsity").value
    assert method in ("magnitude", "sparsegpt") and sparsity in (pytest.approx(0.1), pytest.approx(0.3))
    assert at.selectbox(key="export_propagation").value == "dense"  # the sweep's propagation, not the default
    assert at.selectbox(key="export_structure").value == "unstructured"
    assert "export_prefill" not in at.session_state  # taken once: later edits are the user's
    # Outside the multipage app (the page on its own) the hand-off waits in the session, with a note.
    alone = ok(page("summary"))
    alone.slider(key="summary_budget").set_value(100).run()
    ok(alone).button(key="summary_export").click().run()
    assert ok(alone).session_state["export_prefill"]["propagation"] == "dense"
    assert "pre-filled on the Export page" in text_of(alone)
