"""Frontier: what compression buys across techniques, from the store; the frontier and quantize job specs; the
chart and the report.

`stored_frontier` reads what the model's finished jobs measured (frontier, quantize, sweep and structured jobs
of the dashboard's protocol, `pruning_core.frontier.collect`), with each point's speed measured in a runtime where
the store links one to it (`pruning_core.frontier.speeds`), and judges it on the worst of the chosen corpora
for one budget (`pruning_core.frontier.build.build_frontier`): the Summary's lead sentence and the Frontier
page come from this one call, so they give the same answer.
"""

from __future__ import annotations

from typing import Optional, Sequence

from app import charts
from app.services.corpora import corpus_labels
from app.services.jobs import recent_results
from app.services.models import dense_file_size
from app.services.settings import protocol_of
from pruning_core.errors import ConfigError
from pruning_core.frontier.answer import parse_bytes, parse_increase  # noqa: F401 - the page's budget words
from pruning_core.frontier.build import build_frontier
from pruning_core.frontier.collect import collect_points
from pruning_core.frontier.figures import frontier_figure
from pruning_core.frontier.report import SPEED_HEADER, frontier_rows, frontier_section  # noqa: F401 - the page's table
from pruning_core.frontier.run import FrontierSpec
from pruning_core.frontier.speeds import attach_speeds, speed_note, speed_sentence, stored_speeds  # noqa: F401
from pruning_core.frontier.techniques import STANDARD, parse_technique, technique_words
from pruning_core.quantization.run import QuantizeSpec
from pruning_core.quantization.scheme import MAX_BITS, MIN_BITS  # noqa: F401 - the form's limits
from pruning_core.store import Store

#: Group sizes the quantize form offers ("channel" = one scale per output channel).
GROUP_CHOICES = ("channel", "128", "64", "32")
#: Starting points the quantize form offers: the dense model, or SparseGPT pruning in the same sweep.
STARTS = {"dense": "the dense model", "sparsegpt:0.5": "SparseGPT 50 % in the same sweep",
          "sparsegpt:2:4": "SparseGPT 2:4 in the same sweep"}


def stored_frontier(settings: dict, corpora: Sequence[str], max_increase: Optional[float] = None,
                    max_bytes: Optional[int] = None) -> Optional[dict]:
    """The frontier of what the model's finished jobs measured under the dashboard's protocol, judged on the
    worst of `corpora`, answered for one budget (`build_frontier`'s dict); None while nothing gives the dense
    model's file size and perplexity (a frontier or a quantize job measures them)."""
    model = settings["model"]
    protocol = protocol_of(settings).to_dict()
    found = {kind: recent_results(kind, model) for kind in ("frontier", "quantize", "sweep", "structured")}
    fingerprint = model_fingerprint(found)
    points = collect_points(protocol, found["frontier"], found["quantize"], found["sweep"], found["structured"],
                            dense_file_size(fingerprint))
    # Speeds measured in a runtime (llama.cpp) and linked to these points in the store; the rest say "not measured".
    points = attach_speeds(points, stored_speeds(Store(), fingerprint))
    if not any(p.family == "dense" for p in points):
        return None
    chosen = [c for c in corpora if all(c in p.ppl for p in points if p.family == "dense")]
    if not chosen:
        return None
    try:
        return build_frontier(points, chosen, max_increase, max_bytes, corpus_labels(list(chosen)))
    except ConfigError:
        return None


def model_fingerprint(found: dict) -> Optional[str]:
    """The dense model's weight fingerprint as its finished results recorded it (a sweep's or a frontier's model,
    a quantized point started from the dense model), or None: what the sizes cache keys its 16-bit files by."""
    for kind in ("frontier", "sweep"):
        for job in found.get(kind) or []:
            fingerprint = (job["result"].get("model") or {}).get("fingerprint")
            if fingerprint:
                return fingerprint
    for job in found.get("quantize") or []:
        if (job["result"].get("setting") or {}).get("start") in ("dense", "joint"):
            return (job["result"].get("model") or {}).get("fingerprint")
    return None


def frontier_spec(settings: dict, techniques: Sequence[str], corpora: Sequence[str],
                  max_increase: Optional[float] = None, max_bytes: Optional[int] = None,
                  smaller_model: Optional[str] = None) -> dict:
    """The frontier job spec (`FrontierSpec.to_dict()`), validated before anything runs."""
    return FrontierSpec(model=settings["model"], protocol=protocol_of(settings), techniques=tuple(techniques),
                        eval_corpora=tuple(corpora), max_increase=max_increase, max_bytes=max_bytes,
                        smaller_model=smaller_model or None).validate().to_dict()


def quantize_spec(settings: dict, method: str, bits: int, group_size: str, symmetric: bool,
                  start: str = "dense") -> dict:
    """A quantize job spec (`QuantizeSpec.to_dict()`) on the dense model or with SparseGPT in the same sweep,
    evaluated on the dashboard's corpora, its folder measured (and checked) then removed. group_size: one of
    `GROUP_CHOICES` (a group size that does not divide the model's widths is refused when the job starts)."""
    prune = None if start == "dense" else start
    return QuantizeSpec(model=settings["model"], protocol=protocol_of(settings), method=method, bits=int(bits),
                        group_size=group_size, symmetric=bool(symmetric), prune=prune,
                        eval_corpora=tuple(settings["eval_corpora"])).validate().to_dict()


def standard_techniques() -> list[str]:
    """The techniques the Frontier page measures by default (`frontier.techniques.STANDARD`)."""
    return list(STANDARD)


def check_technique(text: str) -> str:
    """`text` if it names a technique (raises ConfigError in one sentence otherwise)."""
    return parse_technique(text).text


def missing_techniques(frontier: Optional[dict], techniques: Sequence[str]) -> list[str]:
    """Which of `techniques` no point of `frontier` was measured for (`techniques.technique_words`); the dense
    model is always measured, so never missing."""
    measured = {technique_words(row) for row in (frontier or {}).get("points") or []}
    return [t for t in techniques if check_technique(t) not in measured and t != "dense"]


def frontier_chart(frontier: dict, corpus: Optional[str] = None):
    """The frontier chart (`frontier.figures.frontier_figure`) as a themed Plotly figure."""
    return charts.to_plotly(frontier_figure(frontier, corpus))


def frontier_report_html(frontier: dict, model: str) -> str:
    """A self-contained HTML report of the frontier shown (its section, protocol and environment)."""
    from pruning_core.frontier.report import frontier_report
    from pruning_core.outputs.report import render_html

    return render_html(frontier_report({"model": {"name": model}, "frontier": frontier, "protocol": {}}))
