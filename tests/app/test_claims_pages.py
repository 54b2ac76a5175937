"""One wording of gains: the What-if page, the Summary page and the report say the same size and speed sentences
for the same setting, and the page's "another prompt" generates the text the what-if job generated."""

from __future__ import annotations

import pytest

pytest.importorskip("streamlit")
from pruning_core.units import format_bytes  # noqa: E402
from tests.app.apptest_helpers import SMALL, insert_job, ok, page  # noqa: E402

pytestmark = pytest.mark.usefixtures("app_env")

SETTING = {"method": "magnitude", "structure": "2:4", "sparsity": 0.5}


def _store_sweep(whatif: dict) -> None:
    """A finished sweep holding the what-if's setting as its one point (what the Summary recommends)."""
    dense = whatif["dense_ppl"]["news"]
    point = {**{k: SETTING[k] for k in ("method", "structure")}, "target_sparsity": 0.5,
             "sparsity": whatif["sparsity"], "ppl": {"news": dense * 1.01}}
    result = {"model": whatif["model"], "dense": {"ppl": {"news": dense}}, "points": [point],
              "protocol": whatif["protocol"]}
    insert_job("sweep", {"model": "tiny-llama"}, "done", result)


def test_what_if_summary_and_report_say_the_same_about_one_setting(tmp_path):
    from app.services import jobs
    from pruning_core.models import load_model
    from pruning_core.export.pipeline import ExportOptions, run_export
    from pruning_core.outputs.report import summary_sentences
    from pruning_core.protocol import Protocol

    whatif_page = page("what_if")
    whatif_page.selectbox(key="whatif_method").set_value(SETTING["method"])
    whatif_page.selectbox(key="whatif_structure").set_value(SETTING["structure"])
    whatif_page.button(key="whatif_run").click().run()
    ok(whatif_page)
    whatif = jobs.job_status(jobs.latest_job("whatif"))["result"]

    _store_sweep(whatif)
    summary_page = ok(page("summary"))

    protocol = Protocol(**{k: SMALL[k] for k in ("calib", "nsamples", "seqlen", "eval_windows", "seed", "dtype")})
    report = run_export(load_model("tiny-llama"), protocol,
                        ExportOptions(**SETTING, eval_corpora=("news",), prompts=(), heatmap=False, formats=("json",)),
                        tmp_path / "export")["report"]
    report_says = summary_sentences(report)
    size, speed = report_says[-2], report_says[-1]
    assert "16-bit safetensors (loaded by transformers, vLLM)" in size and "sparse tensor cores" in speed
    assert "compressed form" not in size

    whatif_markdown = [m.value for m in whatif_page.markdown]
    assert size in whatif_markdown
    assert [i.value for i in whatif_page.info] == [speed]
    # The Summary has no mask of its point to save: it names the same format and the same measured bytes (the
    # dense model's files, which the pruned model's equal) and the same speed sentence.
    pruned_bytes = next(r["weight_bytes"] for r in whatif["size"]["measured"] if r["what"] == "pruned")
    summary_line = next(m.value for m in summary_page.markdown if m.value.endswith(speed))
    assert "16-bit safetensors (loaded by transformers, vLLM)" in summary_line
    assert format_bytes(pruned_bytes) in summary_line and "the same as the dense model" in summary_line


def test_another_prompt_generates_what_the_whatif_job_generated():
    from app.services import jobs, what_if
    at = page("what_if")
    at.selectbox(key="whatif_method").set_value("wanda")
    at.text_area(key="whatif_prompt").input("Once upon a time")
    at.button(key="whatif_run").click().run()
    ok(at)
    result = jobs.job_status(jobs.latest_job("whatif"))["result"]
    at.text_input(key="whatif_prompt_again").input("Once upon a time")
    at.button[[b.label for b in at.button].index("Generate")].click().run()  # a short "generation" job
    ok(at)
    again = jobs.job_status(jobs.latest_job("generation"))
    assert again["spec"] == what_if.generation_spec("tiny-llama", "Once upon a time", result["mask_artifact"],
                                                    result.get("weights_artifact"))
    assert again["result"] == result["generations"] == {k: at.session_state["whatif_again"][k]
                                                        for k in ("prompt", "dense", "pruned")}


def test_setup_names_what_each_model_size_is():
    from app.services import models
    at = ok(page("setup"))
    sizes = next(c.value for c in at.caption if c.value.startswith("Sizes: "))
    assert "in memory (float32, as loaded for pruning)" in sizes
    assert ("as 16-bit safetensors (loaded by transformers, vLLM), measured on the saved files (the dense size "
            "What-if and reports compare with)") in sizes
    # The embedded model's file is 4-bit quantised GGUF: its disk size says so (no model load needed).
    assert models.disk_form("embedded") == "GGUF Q4_1"


def test_a_what_if_stored_before_sizes_were_measured_still_renders():
    """An old what-if result (formula sizes: bitmap, 2:4 compressed) shows its counts and the dense model's measured
    files the store holds, never the old formula figures, and no traceback."""
    from app.services import jobs
    from pruning_core.store import Store

    at = page("what_if")
    at.selectbox(key="whatif_method").set_value(SETTING["method"])
    at.selectbox(key="whatif_structure").set_value(SETTING["structure"])
    at.button(key="whatif_run").click().run()
    ok(at)
    job = jobs.latest_job("whatif")
    result = jobs.job_status(job)["result"]
    counts = {k: result["size"][k] for k in ("prunable_weights", "kept_weights", "other_parameters")}
    old = {"value_bits": 16, "structure": "2:4", "parameters": counts["prunable_weights"] + counts["other_parameters"],
           **counts, "dense_bytes": 2000, "bitmap_bytes": 1300, "nm_bytes": 1111, "nm_index_bits": 2,
           "structured_parameters": None, "structured_bytes": None}
    Store().update_job(job, result={**result, "size": old})
    ok(at.run())
    dense_bytes = next(r["weight_bytes"] for r in result["size"]["measured"] if r["what"] == "dense")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Dense model"] == format_bytes(dense_bytes) and "Pruned model (zeros stored)" not in metrics
    prose = " ".join(m.value for m in at.markdown)
    assert "measured on the dense model's saved files" in prose and "1.1 KB" not in prose
