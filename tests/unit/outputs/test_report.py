"""The evaluation report: files written, charts embedded, user strings escaped, summary in plain words."""

from __future__ import annotations

import json
import re

import pytest

from pruning_core import claims
from pruning_core.errors import ConfigError
from pruning_core.export.report import export_report
from pruning_core.outputs.plan_section import allocation_summary, plan_figure
from pruning_core.outputs.render_html import script_json
from pruning_core.outputs.report import build_report, summary_sentences
from pruning_core.sizes.records import sizes_from_masks, weight_counts

EVIL = "<script>alert(1)</script>"


def sample_data(model_name: str = "tiny-llama", prompt: str = "Once upon a time") -> dict:
    results = {
        "dense": {"ppl": {"wiki": 20.0}},
        "protocol": {"nsamples": 8, "seqlen": 64},
        "points": [
            {"method": "wanda", "structure": "unstructured", "target_sparsity": 0.3, "sparsity": 0.3,
             "ppl": {"wiki": 21.0}},
            {"method": "wanda", "structure": "unstructured", "target_sparsity": 0.5, "sparsity": 0.5,
             "ppl": {"wiki": 23.0}},
        ],
    }
    sens = {"layers": [0, 1], "modules": ["q", "k"], "values": [[0.1, 0.2], [0.3, None]],
            "metric": "reconstruction", "method": "wanda", "sparsity": 0.5}
    return {
        "setting": {"model": model_name, "method": "wanda", "structure": "unstructured", "sparsity": 0.5,
                    "measured_sparsity": 0.5},
        "ppl": {"dense": {"wiki": 20.0}, "pruned": {"wiki": 23.0}},
        "sizes": {**weight_counts(1000, 800, 400, "unstructured"),
                  "measured": [{"format": "safetensors-16bit", "what": what, "weight_bytes": 2100, "total_bytes": 3000,
                                "files": []} for what in ("dense", "pruned")]},
        "speed_note": claims.speed_sentence("unstructured"),
        "results": results,
        "sensitivity": sens,
        "per_layer": {"modules": ["q", "k"], "rows": [{"layer": 0, "values": [0.5, 0.5]}], "unit": "fraction"},
        "generations": [{"prompt": prompt, "dense": "dense text", "pruned": "pruned </script> text"}],
        "lm_eval": {"note": "limit 2", "rows": [{"task": "prunescope_news_ending", "metric": "acc",
                                                  "unit": "fraction", "dense": 0.5, "pruned": 0.25, "limit": 2}]},
        "files": [{"name": "masks.safetensors", "bytes": 123}],
        "protocol": {"nsamples": 8, "seqlen": 64, "calib": "wiki"},
        "env": {"torch": "2.x"},
    }


def test_report_writes_three_formats_with_charts(tmp_path):
    paths = build_report(export_report(sample_data()), tmp_path)
    assert set(paths) == {"html", "md", "json"}
    page = paths["html"].read_text()
    assert "Plotly.newPlot" in page and 'id="curves-0"' in page and 'id="heatmap-1"' in page
    assert "https://" not in page.split("<script>")[0]  # no external stylesheet/script before plotly.js
    assert not re.search(r'<script[^>]+src=', page)  # self-contained
    doc = json.loads(paths["json"].read_text())
    assert doc["summary"][0].startswith("tiny-llama was pruned with wanda to 50.0 % sparsity")
    assert "15.0 % worse" in " ".join(doc["summary"])
    md = paths["md"].read_text()
    assert "## Summary" in md and "| wiki | 20.000 | 23.000 | +15.0 % |" in md


def test_user_strings_are_escaped(tmp_path):
    paths = build_report(export_report(sample_data(model_name=EVIL, prompt=f'{EVIL} "quoted" & more')), tmp_path)
    page = paths["html"].read_text()
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "pruned </script> text" not in page
    md = paths["md"].read_text()
    assert EVIL not in md
    # the JSON file keeps the raw strings (it is data, not markup)
    assert json.loads(paths["json"].read_text())["setting"]["model"] == EVIL


def test_script_json_cannot_close_the_script():
    text = script_json({"a": "</script><script>alert(1)</script>", "b": "<!-- x"})
    assert "</" not in text and "<!--" not in text
    assert json.loads(text)["a"] == "</script><script>alert(1)</script>"


def test_summary_and_sizes_come_from_the_claims_module(tmp_path):
    from pruning_core.masks import Structure, keep_mask_from_scores
    from pruning_core.models import load_model
    from pruning_core.sizes.measure import save_sixteen_bit

    tiny = load_model("tiny-llama")
    masks = {name: keep_mask_from_scores(m.weight.detach().abs(), 0.0, Structure(2, 4))
             for name, m in tiny.adapter.prunable_modules(tiny.model).items()}
    sizes = sizes_from_masks(tiny, masks, "2:4")
    data = {"setting": {"model": "m", "method": "wanda", "structure": "2:4", "measured_sparsity": 0.5},
            "sizes": sizes, "speed_note": claims.speed_sentence("2:4")}
    sentences = summary_sentences(data)
    assert sentences[-2:] == [claims.size_sentence(sizes), claims.speed_sentence("2:4")]
    paths = build_report(data, tmp_path / "report", formats=("md",))
    md = paths["md"].read_text()
    # The size table lists the files each model is saved as, with the bytes of those files on disk.
    save_sixteen_bit(tiny.model, tmp_path / "dense")
    on_disk = claims.format_bytes((tmp_path / "dense" / "model.safetensors").stat().st_size)
    label = "16-bit safetensors (loaded by transformers, vLLM)"
    assert f"| Dense model | {label} | {on_disk} |" in md
    assert f"| Pruned model (zeros stored) | {label} | {on_disk} |" in md
    assert "bitmap" not in md.split("No serving runtime")[0] and "2:4 compressed" not in md


def test_report_without_optional_parts(tmp_path):
    paths = build_report(export_report({"setting": {"model": "m", "method": "magnitude", "structure": "unstructured",
                                                    "sparsity": 0.5}}), tmp_path, formats=("html", "json"))
    assert "No charts" in paths["html"].read_text()
    with pytest.raises(ConfigError, match="setting"):
        build_report({}, tmp_path)


def plan_data(plan: dict, structure: str = "unstructured", sizes: bool = True, sparsity: float = 0.6) -> dict:
    data = {"setting": {"model": "m", "method": "wanda", "structure": structure, "sparsity": sparsity,
                        "measured_sparsity": sparsity, "allocator": plan.get("allocator"), "plan": plan},
            "per_layer": {"modules": ["q", "k"], "rows": [{"layer": 0, "values": [0.2, 0.6]},
                                                          {"layer": 1, "values": [0.7, 0.7]}], "unit": "fraction"}}
    if sizes:
        data["module_sizes"] = [{"q": 100, "k": 300}, {"q": 100, "k": 300}]  # k weighs three times q
    return data


PLAN = {"kinds": ["q", "k"], "values": [[0.2, 0.6], [0.7, 0.7]], "allocator": "sensitivity", "target": 0.6,
        "settings": {"bounds": [0.0, 0.95]}}


def test_where_the_zeros_are_counts_the_plan_over_parameters(tmp_path):
    summary = allocation_summary(plan_data(PLAN))
    # Layer 0: (0.2 x 100 + 0.6 x 300) / 400 = 0.5 (its unweighted mean would be 0.4); global (200 + 280) / 800.
    assert [r["mean"] for r in summary["rows"]] == pytest.approx([0.5, 0.7])
    assert summary["global_sparsity"] == pytest.approx(0.6) and summary["by_parameters"]
    paths = build_report(export_report(plan_data(PLAN)), tmp_path)
    md = paths["md"].read_text()
    assert "## Where the zeros are" in md and "Allocator: sensitivity, with bounds = [0.0, 0.95]." in md
    assert "Global sparsity 60.00 %, counted over parameters" in md
    assert "from 50.0 % (layer 0) to 70.0 % (layer 1)" in md
    assert "| 0 | 50.0 % | 20.0 % | 60.0 % |" in md and "| 1 | 70.0 % | 70.0 % | 70.0 % |" in md
    assert "no module sizes" not in md
    page = paths["html"].read_text()
    section = page.split('id="allocation"')[1].split("<h2>Charts</h2>")[0]
    assert 'class="chart" id="plan-0"' in section  # the plan chart sits in its section, not among the charts
    assert 'Plotly.newPlot("plan-0"' in page
    plan_fig = plan_figure(summary)
    trace = plan_fig["data"][0]
    assert trace["z"] == [[20.0, 60.0], [70.0, 70.0]] and trace["meta"]["global_sparsity"] == pytest.approx(0.6)
    assert "60.0 % of the pruned weights" in plan_fig["layout"]["title"]["text"]
    assert json.loads(paths["json"].read_text())["setting"]["plan"] == PLAN


def test_uniform_setting_says_every_module_at_its_sparsity(tmp_path):
    data = {"setting": {"model": "m", "method": "wanda", "structure": "unstructured", "sparsity": 0.5,
                        "allocator": "uniform", "plan": None}}
    paths = build_report(data, tmp_path, formats=("html", "md"))
    assert "uniform: every module at 50.0 %." in paths["md"].read_text()
    page = paths["html"].read_text()
    assert "uniform: every module at 50.0 %." in page and 'id="plan-' not in page
    nm = {"setting": {"model": "m", "method": "wanda", "structure": "2:4", "sparsity": 0.5}}
    assert "uniform: every module at 50.0 % (2:4)." in build_report(nm, tmp_path, formats=("md",))["md"].read_text()


def test_plan_without_module_sizes_shows_only_what_it_can_count(tmp_path):
    md = build_report(plan_data(PLAN, sizes=False), tmp_path, formats=("md",))["md"].read_text()
    # The global figure is the setting's target (the plan's by parameters); layer 0's modules differ: no mean.
    assert "Global sparsity 60.00 %" in md and "| 0 | – | 20.0 % | 60.0 % |" in md
    assert "| 1 | 70.0 % | 70.0 % | 70.0 % |" in md and "no module sizes" in md
    owl = {"kinds": ["q", "k"], "values": [[0.55, 0.55], [0.65, 0.65]], "allocator": "owl",
           "settings": {"M": 5.0, "lambda": 0.08}}
    md = build_report(plan_data(owl, sizes=False), tmp_path, formats=("md",))["md"].read_text()
    assert "Allocator: owl, with M = 5.0, lambda = 0.08." in md and "no module sizes" not in md
    assert "from 55.0 % (layer 0) to 65.0 % (layer 1)" in md


def test_nm_plan_is_shown_as_applied_and_edited_plans_name_their_origin(tmp_path):
    plan = {"kinds": ["q", "k"], "values": [[0.0, 0.0], [0.5, 0.5]], "allocator": "edited",
            "settings": {"edited_from": "uniform"}}
    md = build_report(plan_data(plan, "2:4", sparsity=0.5), tmp_path, formats=("md",))["md"].read_text()
    assert "Allocator: edited (edited from uniform)." in md
    assert "Global sparsity 25.00 % (2:4)" in md and "| 0 | 0.0 % | 0.0 % | 0.0 % |" in md
    # Per-layer overrides without a plan table (the What-if's older form) are a plan too.
    data = {"setting": {"model": "m", "method": "wanda", "structure": "unstructured", "sparsity": 0.5,
                        "layer_sparsity": {"1": 0.7}},
            "per_layer": {"modules": ["q", "k"], "rows": [{"layer": 0, "values": [0.5, 0.5]},
                                                          {"layer": 1, "values": [0.7, 0.7]}]},
            "module_sizes": [{"q": 100, "k": 300}, {"q": 100, "k": 300}]}
    md = build_report(data, tmp_path, formats=("md",))["md"].read_text()
    assert "Allocator: edited." in md and "Global sparsity 60.00 %" in md and "| 1 | 70.0 % | 70.0 % | 70.0 % |" in md


def test_plan_names_are_escaped(tmp_path):
    plan = {**PLAN, "allocator": EVIL}
    paths = build_report(plan_data(plan), tmp_path, formats=("html", "md"))
    page = paths["html"].read_text()
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert EVIL not in paths["md"].read_text()


def test_layer_means_use_the_shapes_of_the_sensitivity_map_when_no_sizes_are_given(tmp_path):
    data = plan_data(PLAN, sizes=False)
    data["sensitivity"] = {"layers": [0, 1], "modules": ["q", "k"], "values": [[0.1, 0.2], [0.3, 0.4]],
                           "metric": "fisher", "method": "wanda", "sparsity": 0.6,
                           "module_sizes": [[[10, 10], [30, 10]], [[10, 10], [30, 10]]]}  # [out, in]: 100 and 300
    summary = allocation_summary(data)
    assert summary["by_parameters"] and [r["mean"] for r in summary["rows"]] == pytest.approx([0.5, 0.7])
    assert summary["module_sizes"] == [[100, 300], [100, 300]]
    # A map of some layers only says nothing about the others: no sizes are taken from it.
    data["sensitivity"] = {**data["sensitivity"], "layers": [1], "values": [[0.3, 0.4]],
                           "module_sizes": [[[10, 10], [30, 10]]]}
    assert allocation_summary(data)["rows"][0]["mean"] is None
