"""Any list of report sections (`outputs.sections`) as one self-contained HTML page.

The page opens offline: plotly.js is read from the installed plotly package's file (never imported: the core
stays free of plotly) and inlined, and every `Figure` block becomes a chart drawn from its figure dict.

Safety: every text (model names, corpus and file names, prompts, generated text, plan and task names) is escaped
with `html.escape`; JSON placed inside ``<script>`` has every ``</`` written as ``<\\/`` (`script_json`), so no
string can close the script element.
"""

from __future__ import annotations

import html
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from pruning_core.errors import PruneScopeError
from pruning_core.outputs.files import json_default, json_safe
from pruning_core.outputs.sections import (Block, Callout, Code, Figure, KeyFacts, Paragraph, SampleTexts, Section,
                                           Table)

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1a1a1a;line-height:1.5}
h1{font-size:1.8em;margin-bottom:.2em}h2{border-bottom:2px solid #0072B2;padding-bottom:.2em;margin-top:2em}
.summary{background:#EEF6FB;border-left:6px solid #0072B2;padding:1em 1.4em;font-size:1.1em}
table{border-collapse:collapse;margin:1em 0;font-size:.95em}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:right}th{background:#f2f2f2}td.l,th.l{text-align:left}
.gen td{text-align:left;vertical-align:top;white-space:pre-wrap;max-width:30em}
.chart{width:100%;min-height:460px;margin:1em 0}.muted{color:#555;font-size:.9em}
code{background:#f4f4f4;padding:0 .2em}pre code{display:block;padding:.6em;white-space:pre-wrap}
@media print{.chart{page-break-inside:avoid}h2{page-break-after:avoid}}
"""


def plotly_js_path() -> Path:
    """Path of plotly.min.js inside the installed plotly package (located without importing plotly)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise PruneScopeError("The plotly package is not installed; the HTML report embeds its plotly.min.js. "
                              "Run `pip install plotly`.")
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise PruneScopeError(f"{path} is missing; reinstall plotly.")
    return path


def script_json(obj: Any) -> str:
    """JSON safe to place inside a <script> element (no '</' or '<!--' can end or confuse it; NaN becomes null)."""
    text = json.dumps(json_safe(obj), default=json_default, allow_nan=False)
    return text.replace("</", "<\\/").replace("<!--", "\\u003c!--")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: Sequence[Any], rows: Sequence[Sequence[Any]], text_columns: int = 1, cls: str = "") -> str:
    def cells(tag: str, values: Sequence[Any]) -> str:
        return "".join(f'<{tag} class="{"l" if i < text_columns else ""}">{_e(v)}</{tag}>'
                       for i, v in enumerate(values))

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{cells("th", headers)}</tr></thead><tbody>{body}</tbody></table>'


def _block(block: Block, level: int, charts: list[tuple[str, dict]]) -> str:
    """One block as HTML; a Figure is appended to `charts` (id, figure) and drawn by the page's script."""
    if isinstance(block, Section):
        return _section(block, level + 1, charts)
    if isinstance(block, Paragraph):
        return f'<p class="muted">{_e(block.text)}</p>' if block.note else f"<p>{_e(block.text)}</p>"
    if isinstance(block, Callout):
        return '<div class="summary">' + "".join(f"<p>{_e(s)}</p>" for s in block.sentences) + "</div>"
    if isinstance(block, Table):
        return _table(block.headers, block.rows, block.text_columns)
    if isinstance(block, KeyFacts):
        return _table(["", "value"], block.facts, text_columns=2)
    if isinstance(block, SampleTexts):
        return _table(block.headers, block.rows, text_columns=len(block.headers), cls="gen")
    if isinstance(block, Code):
        return f"<pre><code>{_e(block.text)}</code></pre>"
    if isinstance(block, Figure):
        chart_id = f"{block.name}-{len(charts)}"
        charts.append((chart_id, block.figure))
        title = f"<h{level + 1}>{_e(block.title)}</h{level + 1}>" if block.title else ""
        return f'{title}<div class="chart" id="{_e(chart_id)}"></div>'
    raise TypeError(f"Not a report block: {block!r}")


def _section(section: Section, level: int, charts: list[tuple[str, dict]]) -> str:
    anchor = f' id="{_e(section.anchor)}"' if section.anchor else ""
    return (f"<h{level}{anchor}>{_e(section.title)}</h{level}>"
            + "".join(_block(block, level, charts) for block in section.blocks))


def html_page(title: str, generated: str, sections: Sequence[Section], plotly_js: Optional[str] = None) -> str:
    """The sections as a self-contained HTML page, titled `title` (h1) and dated `generated`; plotly.js is
    inlined from the installed package unless `plotly_js` (its text) is given."""
    if plotly_js is None:
        plotly_js = plotly_js_path().read_text(encoding="utf-8")
    charts: list[tuple[str, dict]] = []
    body = "".join(_section(section, 2, charts) for section in sections)
    plots = "".join(f'Plotly.newPlot({script_json(chart_id)}, F[{i}].data, F[{i}].layout, '
                    '{responsive:true, displaylogo:false});' for i, (chart_id, _) in enumerate(charts))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style>"
        f"<script>{plotly_js}</script></head><body><h1>{_e(title)}</h1>"
        f'<p class="muted">Generated {_e(generated)} by PruneScope.</p>{body}'
        f"<script>const F = {script_json([figure for _, figure in charts])};{plots}"
        "document.body.setAttribute('data-charts', String(F.length));</script></body></html>\n"
    )
