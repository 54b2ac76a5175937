"""The report's section model and its two renderers: any list of sections is drawn, every text escaped, charts
numbered in page order; the report package imports no capability (each capability builds its own sections)."""

from __future__ import annotations

import json
import re

from tests.unit.architecture.test_import_graph import CORE, _graph

from pruning_core.outputs.render_html import html_page
from pruning_core.outputs.render_markdown import markdown_page
from pruning_core.outputs.report import build_report, report_document
from pruning_core.outputs.sections import (Callout, Code, Figure, KeyFacts, Paragraph, SampleTexts, Section,
                                           Table)

EVIL = "<script>alert(1)</script>"


def every_block(text: str) -> list[Section]:
    """One section of each block type, `text` in every place a user's words can reach."""
    figure = {"data": [{"type": "scatter", "x": [1, 2], "y": [float("nan"), 3.0], "name": text}],
              "layout": {"title": {"text": text}}}
    return [Section(text, [Callout([text, "second"]), Paragraph(text), Paragraph(text, note=True),
                           Table(["name", "value"], [[text, 1.5]]), KeyFacts([["model", text]]),
                           SampleTexts(["prompt", "pruned"], [[text, f"{text}\nnext line | pipe"]]),
                           Code(f"prunescope export --model '{text}' ```"),
                           Figure("first", figure, title=text),
                           Section(f"sub {text}", [Figure("second", figure)])], anchor="part")]


def test_html_escapes_every_text_and_numbers_charts_in_page_order():
    page = html_page(EVIL, EVIL, every_block(EVIL), plotly_js="/* plotly */")
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '<h2 id="part">' in page and "<h3>sub &lt;script&gt;" in page  # a sub-section is one level down
    assert '<div class="chart" id="first-0">' in page and '<div class="chart" id="second-1">' in page
    assert 'Plotly.newPlot("first-0"' in page and 'Plotly.newPlot("second-1"' in page
    assert '<table class="gen">' in page and "<pre><code>prunescope export" in page
    figures = json.loads(page.split("const F = ")[1].split(";Plotly")[0].replace("<\\/", "</"))
    assert figures[0]["data"][0]["y"] == [None, 3.0]  # NaN is not JSON: a gap in the chart
    assert "data-charts" in page


def test_markdown_escapes_every_text_and_leaves_charts_out():
    md = markdown_page(EVIL, EVIL, every_block(EVIL))
    before, code, after = md.split("````")
    # A command stays verbatim inside its fence (where Markdown shows HTML as text); nowhere else is HTML raw.
    assert EVIL not in before + after and EVIL in code and md.startswith("# &lt;script&gt;")
    assert "## &lt;script&gt;" in md and "### sub &lt;script&gt;" in md
    assert "next line \\| pipe" in md and "<br>next line" in md  # one table row, the pipe kept as text
    assert "\n````\nprunescope export" in md  # the fence is longer than any backtick run inside
    assert "first" not in md and "scatter" not in md


def test_a_bare_record_gets_the_sections_every_setting_has(tmp_path):
    record = {"setting": {"model": "m", "method": "wanda", "structure": "unstructured", "sparsity": 0.5},
              "ppl": {"dense": {"wiki": 10.0}, "pruned": {"wiki": float("inf")}}}
    paths = build_report(record, tmp_path)
    md = paths["md"].read_text()
    titles = re.findall(r"^## (.+)$", md, flags=re.M)
    assert titles == ["Summary", "Setting", "Quality", "Where the zeros are", "Protocol", "Environment"]
    assert "| wiki | 10.000 | – | – |" in md  # an infinite perplexity is not a number to print
    document = json.loads(paths["json"].read_text())
    assert "sections" not in document and document["ppl"]["pruned"]["wiki"] is None
    assert document["summary"] == report_document(record)["summary"]


def test_the_report_package_imports_no_capability():
    capabilities = ("structured", "recovery", "continual", "analysis", "allocation", "export", "quantization")
    graph = _graph([CORE])
    offenders = {module: sorted(t for t in targets if t.split(".")[1] in capabilities)
                 for module, targets in graph.items() if module.startswith("pruning_core.outputs")}
    assert not {k: v for k, v in offenders.items() if v}, offenders
