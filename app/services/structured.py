"""Structured: the structured job spec and its form, the newest result, its figures, words, report and the
command that saves a point's smaller model.

The trade-off charts put the structured points beside the unstructured points of the sweeps of the same model
and evaluation (`unstructured_for`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from app.formats import MISSING, format_bytes, table_rows
from app.services.allocation import allocation_needs, sensitivity_for_allocation
from app.services.choices import ALLOCATIONS, DEFAULT_PROMPT
from app.services.corpora import corpus_label
from app.services.export import report_html
from app.services.forms import PageForm
from app.services.jobs import latest_result, recent_results
from app.services.models import model_identity
from app.services.settings import protocol_of
from pruning_core import claims
from pruning_core.analysis.sweep_results import merge_sweeps
from pruning_core.command_lines import structured_command
from pruning_core.errors import ConfigError
from pruning_core.sizes.records import STRUCTURED, measured
from pruning_core.outputs.figures import perplexity_change
from pruning_core.structured.export import structured_report_data
from pruning_core.structured.figures import tradeoff_figure, widths_figure
from pruning_core.structured.run import StructuredSpec

STRUCTURED_UNITS = ("heads", "channels", "layers")

STRUCTURED_SCORES = ("obs", "wanda_sp", "flap", "magnitude")

STRUCTURED_SCORE_DESCRIPTIONS = {
    "obs": "each unit's numerical effect on the layer output (calibration second moments)",
    "wanda_sp": "weight magnitude x input activation norm (Wanda-sp)",
    "flap": "fluctuation of the unit's input over the calibration windows (FLAP)",
    "magnitude": "weight magnitude only (needs no calibration data)",
}
#: The fractions of decoder parameters the Structured form offers.
RATIO_CHOICES = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)


def structured_spec(settings: dict, units, ratios, score: str = "obs", compensate: bool = True,
                    speed: bool = True, prompt: str = "", max_new_tokens: int = 40,
                    speed_settings: Optional[dict] = None, allocation: str = "uniform",
                    layer_share: float = 0.5) -> dict:
    """A structured job spec (`StructuredSpec.to_dict()`, see `pruning_core.structured.run.run_structured`),
    validated before anything runs. ratios: fractions of decoder parameters to remove. allocation: how each
    ratio is spread over the layers (`ALLOCATIONS`); "sensitivity" reads the maps of the method of this model's
    newest usable sensitivity result (`sensitivity_for_allocation`). layer_share: with layers mixed with
    heads/channels, the share of each ratio removed as whole layers."""
    extra = {}
    if allocation_needs(allocation) == "sensitivity":
        found = sensitivity_for_allocation(settings["model"])
        if found is None:
            raise ConfigError("Allocation 'sensitivity' reads a sensitivity map of this model at two or more "
                              "sparsities; compute one on the Sensitivity page first, or choose 'owl' or 'uniform'.")
        extra["sensitivity_method"] = (found["result"].get("spec") or {}).get("method") or "wanda"
    spec = StructuredSpec(model=settings["model"], protocol=protocol_of(settings), units=tuple(units),
                          ratios=tuple(sorted(float(r) for r in ratios)), score=score, compensate=bool(compensate),
                          eval_corpora=tuple(settings["eval_corpora"]), speed=bool(speed),
                          speed_settings=dict(speed_settings or {}), prompt=prompt,
                          max_new_tokens=int(max_new_tokens), model_identity=model_identity(settings["model"]),
                          allocation=allocation, layer_share=float(layer_share), **extra)
    return spec.validate().to_dict()


@dataclass
class StructuredForm(PageForm):
    """The Structured form: widgets "structured_<field>"."""

    PREFIX: ClassVar[str] = "structured_"
    units: tuple = ("heads", "channels")
    ratios: tuple = (0.1, 0.2, 0.3)
    score: str = "obs"
    compensate: bool = True
    speed: bool = True
    prompt: str = DEFAULT_PROMPT
    allocation: str = "uniform"
    layer_share: float = 0.5

    def to_spec(self, settings: dict) -> dict:
        """The structured job spec of these choices (`structured_spec`)."""
        return structured_spec(settings, self.units, self.ratios, self.score, self.compensate, self.speed,
                               self.prompt.strip(), allocation=self.allocation, layer_share=self.layer_share)

    @classmethod
    def from_spec(cls, spec: Optional[dict]) -> dict:
        """The widget values that make a structured job's spec (a page re-attaching to it shows how it was
        made)."""
        if not spec:
            return {}
        values = {}
        if spec.get("units") and set(spec["units"]) <= set(STRUCTURED_UNITS):
            values["units"] = list(spec["units"])
        ratios = [float(r) for r in spec.get("ratios") or [] if float(r) in RATIO_CHOICES]
        if ratios:
            values["ratios"] = ratios
        if spec.get("score") in STRUCTURED_SCORES:
            values["score"] = spec["score"]
        if spec.get("allocation") in ALLOCATIONS:
            values["allocation"] = spec["allocation"]
        if isinstance(spec.get("layer_share"), (int, float)) and 0.1 <= spec["layer_share"] <= 0.9:
            values["layer_share"] = round(float(spec["layer_share"]), 1)
        for name in ("compensate", "speed"):
            if isinstance(spec.get(name), bool):
                values[name] = spec[name]
        if isinstance(spec.get("prompt"), str) and spec["prompt"]:
            values["prompt"] = spec["prompt"]
        return cls.widgets(**values)


def latest_structured_result(model: str) -> Optional[dict]:
    """The newest finished structured job's result for the model source `model` (`run_structured`'s dict, as
    the Structured page shows it), or None when this model has none."""
    return latest_result("structured", model)


def structured_speedups(point: dict, dtype: str = "float32") -> Optional[dict[str, float]]:
    """{phase label: pruned/dense tokens/s} measured for a structured point in `dtype` (`measure_speed`'s
    "ratios"), or None when its speed was not measured in that dtype (never estimated)."""
    ratios = ((point.get("speed") or {}).get("ratios") or {}).get(dtype)
    return dict(ratios) if ratios else None


def unstructured_for(result: dict) -> Optional[dict]:
    """The finished sweeps of the structured result's model with the same evaluation (corpus windows, seqlen,
    dtype), merged: their unstructured points go on the Structured page's axes. None when there is none."""
    fingerprint = (result.get("model") or {}).get("fingerprint")
    protocol = result.get("protocol") or {}
    same = []
    for job in recent_results("sweep", limit=50):
        sweep = job["result"]
        p = sweep.get("protocol") or {}
        if (sweep.get("model") or {}).get("fingerprint") == fingerprint and all(
                p.get(k) == protocol.get(k) for k in ("seqlen", "eval_windows", "dtype")):
            same.append(sweep)
    return merge_sweeps(same)


def structured_tradeoff_figure(result: dict, corpus: str, axis: str, dtype: str = "float32") -> dict:
    """The Structured page's trade-off chart spec (`outputs.structured_figures.tradeoff_figure`), with the
    matching sweep's unstructured points; {"figure", "unstructured_points": how many were drawn}."""
    sweep = unstructured_for(result)
    figure = tradeoff_figure(result, sweep, corpus, axis, dtype)
    count = sum(len(t["x"]) for t in figure["data"] if (t.get("meta") or {}).get("role") == "unstructured")
    return {"figure": figure, "unstructured_points": count}


def structured_widths_figure(result: dict, index: int) -> dict:
    """The per-layer widths chart spec of the result's `index`-th point."""
    return widths_figure(result["points"][index], result["dense_widths"])


def structured_claims(point: dict, dtype: str = "float32") -> dict:
    """{"size", "speed"}: a structured point's sentences, from its real parameter count and its measured speed
    (`claims.structured_claims`), as the report words them."""
    return claims.structured_claims(point.get("sizes"), point.get("speed"), dtype)


def structured_file_sizes(point: dict) -> dict:
    """{"dense", "structured"}: the weight files' bytes of the dense model and of this point's smaller model, each
    saved as 16-bit safetensors and measured (None where a point stored before sizes were measured has none)."""
    sizes = point.get("sizes")
    return {what: (record or {}).get("weight_bytes")
            for what, record in (("dense", measured(sizes, "dense")), ("structured", measured(sizes, STRUCTURED)))}


def _bytes_or_missing(size) -> str:
    return MISSING if size is None else format_bytes(size)

def structured_table_rows(result: dict, corpus: str) -> list[dict]:
    """The Structured page's table: the dense model, then every point: share of decoder parameters removed,
    parameters left, 16-bit safetensors files (measured), perplexity on `corpus` and its change, and the measured fp32 speed-up of each
    phase ("not measured" when its speed was not timed). A cell a row has no value for shows `MISSING`, never
    "None" (the dense row has no speed-up; a point measured without speed has no phases)."""
    points, dense_ppl = result["points"], result["dense_ppl"][corpus]
    name = f"perplexity ({corpus_label(corpus)})"
    rows = [{"decoder parameters removed": "0 % (dense)", "parameters left": f"{result['model']['parameters']:,}",
             "16-bit safetensors": _bytes_or_missing(structured_file_sizes(points[0])["dense"]) if points else MISSING,
             name: f"{dense_ppl:,.2f}", "change": MISSING}]
    for point in points:
        speedups = structured_speedups(point) or {}
        row = {"decoder parameters removed": f"{point['measured_ratio']:.1%}",
               "parameters left": f"{point['parameters']['model_after']:,}",
               "16-bit safetensors": _bytes_or_missing(structured_file_sizes(point)["structured"]),
               name: f"{point['ppl'][corpus]:,.2f}", "change": perplexity_change(point["ppl"][corpus], dense_ppl)}
        row.update({f"{phase} (fp32)": f"{value:.2f}x" for phase, value in speedups.items()})
        if not speedups:
            row["speed-up"] = "not measured"
        rows.append(row)
    return table_rows(rows)


def structured_speed_rows(point: dict) -> list[dict]:
    """The measured speed of a point as table rows: dtype, phase, dense and pruned tokens/s, speed-up."""
    rows = []
    for dtype, table in ((point.get("speed") or {}).get("phases") or {}).items():
        for phase, numbers in table.items():
            rows.append({"weights": dtype, "phase": phase, "dense tokens/s": numbers["dense_tokens_per_s"],
                         "pruned tokens/s": numbers["pruned_tokens_per_s"], "speed-up": numbers["speedup"]})
    return rows


def structured_report_html(result: dict, index: int) -> str:
    """The report (HTML, self-contained) of the result's `index`-th point, from the job's measurements
    (`outputs.structured_export.structured_report_data`), as the CLI's --report and the export write it."""
    return report_html(structured_report_data(result, result["points"][index]))


def structured_save_command(result: dict, index: int) -> str:
    """The `prunescope structured` command that writes this point's smaller model folder and report
    (`pruning_core.command_lines.structured_command`)."""
    return structured_command(result["spec"], result["points"][index]["ratio"])
