"""The evaluation report: files written, charts embedded, user strings escaped, summary in plain words."""

from __future__ import annotations

import json
import re

import pytest

from pruning_core import claims
from pruning_core.errors import ConfigError
from pruning_core.outputs.report import build_report, script_json, summary_sentences

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
        "sizes": claims.sizes_from_counts(1000, 800, 400, "unstructured"),
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
    paths = build_report(sample_data(), tmp_path)
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
    paths = build_report(sample_data(model_name=EVIL, prompt=f'{EVIL} "quoted" & more'), tmp_path)
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
    sizes = claims.sizes_from_counts(1000, 800, 400, "2:4")
    data = {"setting": {"model": "m", "method": "wanda", "structure": "2:4", "measured_sparsity": 0.5},
            "sizes": sizes, "speed_note": claims.speed_sentence("2:4")}
    sentences = summary_sentences(data)
    assert sentences[-2:] == [claims.size_sentence(sizes), claims.speed_sentence("2:4")]
    paths = build_report(data, tmp_path, formats=("md",))
    md = paths["md"].read_text()
    # The size table lists the claims module's storage forms with their sizes (2:4: 200*16 + 400*18 bits).
    assert "| 2:4 compressed | 1.3 KB |" in md and "| Dense (zeros stored) | 2.0 KB |" in md


def test_report_without_optional_parts(tmp_path):
    paths = build_report({"setting": {"model": "m", "method": "magnitude", "structure": "unstructured",
                                      "sparsity": 0.5}}, tmp_path, formats=("html", "json"))
    assert "No charts" in paths["html"].read_text()
    with pytest.raises(ConfigError, match="setting"):
        build_report({}, tmp_path)
