"""The Structured page, driven by AppTest on the tiny model: a real structured job (inline) with measured speed,
the trade-off charts with a sweep's unstructured points on the same axes (at 1.0x, marked not measured), the
widths per layer, the claims from the measurement, text side by side, a reload re-attaching, and bad input."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("streamlit")
from tests.app.apptest_helpers import SMALL, insert_job, ok, page, tables_show_no_none, text_of  # noqa: E402

pytestmark = pytest.mark.usefixtures("app_env")  # tiny model, a temporary PRUNESCOPE_HOME, inline jobs


def _figures(at) -> dict[str, dict]:
    return {chart.proto.id or str(i): json.loads(chart.proto.spec) for i, chart in enumerate(at.get("plotly_chart"))}


def _by_title(at, start: str) -> dict:
    return next(f for f in _figures(at).values() if f["layout"]["title"]["text"].startswith(start))


def _sweep_of_tiny() -> None:
    """A finished sweep of the same tiny model and evaluation: Wanda at 30 and 50 % (unstructured)."""
    from pruning_core.models import load_model

    fingerprint = load_model("tiny-llama").fingerprint
    points = [{"method": "wanda", "structure": "unstructured", "target_sparsity": s, "sparsity": s,
               "ppl": {"news": p}} for s, p in ((0.3, 300.0), (0.5, 320.0))]
    insert_job("sweep", {"model": "tiny-llama"}, "done",
               {"model": {"name": "tiny", "fingerprint": fingerprint}, "dense": {"ppl": {"news": 290.0}},
                "protocol": {**{k: SMALL[k] for k in ("calib", "nsamples", "seqlen", "seed", "eval_windows",
                                                       "dtype")}, "propagation": "pruned"},
                "points": points})


def test_a_structured_run_shows_measured_tradeoffs_widths_and_text_and_survives_a_reload():
    _sweep_of_tiny()
    at = ok(page("structured", structured_ratios=[0.2, 0.3], structured_prompt="The history of"))
    assert "press **Prune structurally**" in text_of(at)
    at.button(key="structured_run").click().run()
    ok(at)
    removed = _by_title(at, "Perplexity against parameters removed<br><sup>news")
    structured = next(t for t in removed["data"] if t["meta"]["role"] == "structured")
    assert len(structured["x"]) == 2 and structured["x"][0] == pytest.approx(20.0, abs=5)
    unstructured = next(t for t in removed["data"] if t["meta"]["role"] == "unstructured")
    assert unstructured["x"] == [30.0, 50.0] and unstructured["marker"]["symbol"] == "circle-open"
    assert "zeroed" in unstructured["text"][0] and "not removed" in unstructured["text"][0]

    speed = _by_title(at, "Perplexity against measured speed-up<br><sup>news")
    measured = next(t for t in speed["data"] if t["meta"]["role"] == "structured")
    assert len(measured["x"]) == 2 and all(x > 0 for x in measured["x"])
    honest = next(t for t in speed["data"] if t["meta"]["role"] == "unstructured")
    assert honest["x"] == [1.0, 1.0] and honest["meta"]["speed"] == "not measured"
    assert "not measured" in honest["text"][0]

    widths = _by_title(at, "Widths per layer")
    assert [t["name"] for t in widths["data"]] == ["query heads kept", "MLP channels kept"]
    assert all(0 < v <= 100 for t in widths["data"] for v in t["y"])

    infos = "\n".join(str(e.value) for e in at.info)
    assert "Measured on" in infos and "dense -> pruned in one run" in infos and "decode at batch 8" in infos
    prose = text_of(at)
    assert "**Structurally pruned**" in prose
    assert "16-bit safetensors (loaded by" in prose and "the structurally pruned model (" in prose  # measured files
    assert "Open circles: unstructured points" in prose and "No speed-up to expect" in prose
    assert len(at.dataframe) == 2  # the table of ratios and the measured tokens/s of the setting in detail
    tables_show_no_none(at)  # the dense row has no speed-up: a dash, not "None" (journey, issue 26 point 8)
    assert at.dataframe[0].value.iloc[0]["prefill at 512 tokens (fp32)"] == "–"
    phases = set(at.dataframe[1].value["phase"])
    assert phases == {"prefill at 512 tokens", "decode at batch 1", "decode at batch 8"}

    command = at.code[0].value
    assert command.startswith("prunescope structured --model tiny-llama") and "--save-model" in command
    assert "--ratios 0.2 " in command
    from pruning_core.cli.main import build_parser

    args = build_parser().parse_args(command.split()[1:])  # the command the page shows is one the CLI takes
    assert args.ratios == "0.2" and args.save_model and args.compensate and args.calib == "news"

    # Another setting in detail: its widths chart follows.
    at.radio(key="structured_point").set_value(1).run()
    ok(at)
    assert _by_title(at, "Widths per layer")["layout"]["title"]["text"] != widths["layout"]["title"]["text"]

    # A reload is a new session: the page re-attaches to the finished job and shows the same form and result.
    again = ok(page("structured"))
    assert again.multiselect(key="structured_ratios").value == [0.2, 0.3]
    assert _by_title(again, "Perplexity against parameters removed<br><sup>news")

    # A speed timed while other work shared the cores says so beside the figure (journey, issue 26 point 9: a
    # busy machine printed bf16 prefill 2.46x and decode 0.96x without a word).
    from app.services.structured import latest_structured_result

    busy = latest_structured_result("tiny-llama")
    for point in busy["points"]:
        point["speed"]["others_busy_share"] = 0.6
    insert_job("structured", busy["spec"], "done", busy)
    said = "\n".join(str(e.value) for e in ok(page("structured")).info)
    assert "Other processes kept 60% of the cores busy during the timing" in said and "approximate" in said


def test_bad_choices_are_one_message_and_no_run():
    at = ok(page("structured"))
    at.multiselect(key="structured_units").set_value([]).run()
    assert any("units" in str(e.value).lower() for e in at.error)
    assert at.button(key="structured_run").disabled
    at.multiselect(key="structured_units").set_value(["layers", "heads"]).run()  # a mix: its share is asked
    assert not at.error and not at.button(key="structured_run").disabled
    assert not at.slider(key="structured_layer_share").disabled
    at.selectbox(key="structured_allocation").set_value("owl").run()  # layers are chosen by block influence
    assert any("block influence" in str(e.value) for e in at.error)
    assert at.button(key="structured_run").disabled
    at.multiselect(key="structured_units").set_value(["heads"]).run()
    assert at.slider(key="structured_layer_share").disabled  # no layers: the share means nothing


def test_an_owl_allocation_spreads_the_ratio_over_layers_and_a_missing_map_is_one_message():
    at = ok(page("structured", structured_ratios=[0.3], structured_speed=False))
    assert at.selectbox(key="structured_allocation").value == "uniform"
    assert at.selectbox(key="structured_allocation").options == ["uniform", "owl", "sensitivity"]
    at.selectbox(key="structured_allocation").set_value("sensitivity").run()
    assert any("Sensitivity page" in str(e.value) for e in at.error)
    assert at.button(key="structured_run").disabled
    at.selectbox(key="structured_allocation").set_value("owl").run()
    ok(at)
    at.button(key="structured_run").click().run()
    ok(at)
    caption = next(str(c.value) for c in at.caption if "Allocation **owl**" in str(c.value))
    low, high = (float(x) for x in re.findall(r"([\d.]+)%", caption))
    assert high - low > 5  # the layers lose different shares (measured)
    assert "--allocation owl" in at.code[0].value
    from pruning_core.cli.main import build_parser

    assert build_parser().parse_args(at.code[0].value.split()[1:]).allocation == "owl"
    # A reload re-attaches to the job and shows the allocation that made it.
    assert ok(page("structured")).selectbox(key="structured_allocation").value == "owl"
