"""Sensitivity: the map job spec and its form, the live refinement views, and how a map is read and trusted.

Which stored map a page shows and its top cells are the library's rules (`pruning_core.analysis.stored_maps`);
the words a page says about a map (its reading, its trust label) are here, since only the dashboard shows them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

from app.services.choices import METHODS
from app.services.forms import PageForm, choices_in
from app.services.settings import protocol_of, with_executor
from pruning_core.analysis import stored_maps
from pruning_core.analysis.refinement import is_trusted, live_views
from pruning_core.analysis.sensitivity import METRICS as _METRICS
from pruning_core.analysis.sensitivity import REFINE as SENSITIVITY_AUTO
from pruning_core.analysis.sensitivity import TRUSTED_AGREEMENT, SensitivitySpec
from pruning_core.analysis.stored_maps import map_agreement, top_cells  # noqa: F401 - the page's table reads it
from pruning_core.errors import ConfigError
from pruning_core.store import Store

#: The Sensitivity page's metric choices; "auto" (`pruning_core.analysis.sensitivity.REFINE`, the default) is
#: the refinement from the second-order estimate to the exact map, with the agreement of each step measured.
SENSITIVITY_METRICS = (SENSITIVITY_AUTO, *_METRICS)
#: The sparsities the Sensitivity form offers.
SPARSITY_CHOICES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: How a sentence names each metric's map (the refinements name themselves, see `analysis.refinement`).
SENSITIVITY_METRIC_NAMES = stored_maps.METRIC_NAMES


def sensitivity_spec(settings: dict, method: str, sparsities, metrics, probe_windows: int = 8) -> dict:
    """A sensitivity job spec (`SensitivitySpec.to_dict()`), validated before anything runs."""
    if not metrics:
        raise ConfigError("Choose at least one sensitivity metric: 'Automatic' (the default) gives a trustworthy "
                          "first map quickly and refines it to the exact one.")
    if SENSITIVITY_AUTO in metrics and len(metrics) > 1:
        raise ConfigError("'Automatic' already computes the second-order estimate and the exact map: keep it "
                          "alone, or remove it to choose metrics by hand.")
    if int(probe_windows) < 1:  # checked here too: the core's check of an automatic spec stops before it
        raise ConfigError(f"Probe windows must be a positive whole number, got {probe_windows}.")
    spec = SensitivitySpec(model=settings["model"], protocol=protocol_of(settings), method=method,
                           sparsities=tuple(sorted(float(s) for s in sparsities)), metrics=tuple(metrics),
                           probe_windows=int(probe_windows))
    return with_executor(spec.validate().to_dict())


@dataclass
class SensitivityForm(PageForm):
    """The Sensitivity form: widgets "sens_<field>"."""

    PREFIX: ClassVar[str] = "sens_"
    method: str = "wanda"
    sparsities: tuple = (0.5,)
    metrics: tuple = (SENSITIVITY_AUTO,)
    probe: int = 8

    def to_spec(self, settings: dict) -> dict:
        """The sensitivity job spec of these choices (`sensitivity_spec`)."""
        return sensitivity_spec(settings, self.method, self.sparsities, self.metrics, int(self.probe))

    @classmethod
    def from_spec(cls, spec: Optional[dict]) -> dict:
        """The widget values that make a sensitivity job's spec (a page re-attaching to it shows how it was
        made)."""
        if not spec:
            return {}
        values = {"sparsities": choices_in(SPARSITY_CHOICES, spec.get("sparsities")),
                  "metrics": [m for m in spec.get("metrics", ()) if m in SENSITIVITY_METRICS]}
        values = {name: value for name, value in values.items() if value}
        if spec.get("method") in METHODS:
            values["method"] = spec["method"]
        if isinstance(spec.get("probe_windows"), int) and 1 <= spec["probe_windows"] <= 256:
            values["probe"] = spec["probe_windows"]
        return cls.widgets(**values)


MODULE_WORDS = {"q": "query projections", "k": "key projections", "v": "value projections",
                "o": "attention output projections", "gate": "gate projections", "up": "up projections",
                "down": "down projections", "fc1": "first MLP layers", "fc2": "second MLP layers",
                "qkv": "fused attention projections", "fc": "MLP input layers", "proj": "MLP output layers"}


def _finite_mean(values) -> Optional[float]:
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(kept) / len(kept) if kept else None


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def sensitivity_reading(sens: dict) -> str:
    """One plain-language sentence from a sensitivity map's numbers, naming only values whose agreement was
    measured: an exact map names the most and least sensitive layers (its whole-layer values are exact too) and
    module kinds (mean over layers); an estimate names the most and least sensitive cells (layer x module: the
    values its measured agreement is about), never its per-layer aggregate (not measured against the exact one)."""
    layers = [int(x) for x in sens["layers"]]
    values = sens["values"]
    sparsity = sens.get("sparsity")
    at = f" at {float(sparsity):.0%} sparsity" if sparsity is not None else ""
    word = lambda m: MODULE_WORDS.get(m, f"'{m}' modules")  # noqa: E731
    if sens.get("metric") != "exact":
        cells = sorted((float(v), layer, m) for layer, row in zip(layers, values)
                       for v, m in zip(row, sens["modules"]) if v is not None and v == v)
        if len(cells) < 2:
            return "No values were computed for this map."
        name = lambda c: f"layer {c[1]} {c[2]}"  # noqa: E731
        count = min(3, len(cells) // 2)
        return (f"Pruned with {sens.get('method', '?')}{at}, the most sensitive modules are "
                f"{_join([name(c) for c in reversed(cells[-count:])])}; the safest are "
                f"{_join([name(c) for c in cells[:count]])} (cells of this estimate, whose ranking was measured "
                "against the exact metric).")
    layer_scores = sens.get("layer_values") or [_finite_mean(row) for row in values]
    ranked_layers = sorted((s, l) for s, l in zip(layer_scores, layers) if s is not None)
    module_scores = [(_finite_mean(row[j] for row in values), m) for j, m in enumerate(sens["modules"])]
    ranked_modules = sorted((s, m) for s, m in module_scores if s is not None)
    if not ranked_layers or not ranked_modules:
        return "No values were computed for this map."
    top = sorted(l for _, l in ranked_layers[-2:]) if len(ranked_layers) > 2 else [ranked_layers[-1][1]]
    safest = sorted(l for _, l in ranked_layers[:3]) if len(ranked_layers) > 4 else [ranked_layers[0][1]]
    most_module, least_module = ranked_modules[-1][1], ranked_modules[0][1]
    layer_text = ("layer " if len(top) == 1 else "layers ") + _join([str(l) for l in top])
    safe_text = ("layer " if len(safest) == 1 else "layers ") + _join([str(l) for l in safest])
    return (f"Pruned with {sens.get('method', '?')}{at}, {layer_text} and the {word(most_module)} are the most "
            f"sensitive; {safe_text} and the {word(least_module)} are the safest places to remove weights.")


def sensitivity_live_views(spec: dict) -> list[dict]:
    """The newest view of each sparsity of an automatic sensitivity job (`SENSITIVITY_AUTO`), while it runs or
    after it stopped: map documents with their `refinement` (see `pruning_core.analysis.refinement`), in the
    order the sparsities started (the last is the one being refined now); empty for other jobs or before the
    first map."""
    if list((spec or {}).get("metrics") or []) != [SENSITIVITY_AUTO]:
        return []
    return live_views(spec, Store())


def _agreement_words(measured: dict) -> str:
    """"0.91 over a sample of 21 cells (layers 0, 15, 29)" / "0.90 over all cells"; NaN: not measurable."""
    rho = measured.get("spearman")
    if rho is None or not math.isfinite(float(rho)):
        return "could not be measured (too few distinct values)"
    scope = str(measured.get("scope") or "")
    scope = scope if not scope or scope == "all cells" else f"a {scope}"
    return f"{float(rho):.2f}" + (f" over {scope}" if scope else "")


def sensitivity_trust(sens: dict, correlations=()) -> dict:
    """Which map this is, how far its ranking agrees with the exact metric, and whether its plain-language
    reading (`sensitivity_reading`) may be shown.

    Returns {"trusted": bool, "agreement": dict | None (see `map_agreement`), "label": one line naming the
    metric (and refinement) with its measured agreement, "withheld": None, or the sentence saying why the
    reading is not shown}. An exact map is its own truth; any other map is trusted only with a measured
    agreement of at least `TRUSTED_AGREEMENT` (`pruning_core.analysis.refinement.is_trusted`)."""
    measured = map_agreement(sens, correlations)
    trusted = is_trusted(sens, measured)
    refinement = sens.get("refinement")
    metric = str(sens.get("metric"))
    name = (refinement or {}).get("name") or SENSITIVITY_METRIC_NAMES.get(metric, metric)
    label = (f"Refinement {refinement['step']} of {refinement['of']}: {name}" if refinement is not None
             else name[:1].upper() + name[1:])
    if refinement is not None and metric == "exact" and measured is not None:
        label += f" — agreement between the refinements: {_agreement_words(measured)}"
    elif metric == "exact":
        label += " — the reference every estimate is measured against"
    elif measured is not None:
        label += f" — agreement with the exact metric {_agreement_words(measured)}"
    elif refinement is not None:
        label += " — agreement with the exact metric not measured yet (its first rows are being computed)"
    else:
        label += " — agreement with the exact metric not measured"
    withheld = None
    if not trusted:
        rho = (measured or {}).get("spearman")
        if measured is None:
            why = "its agreement with the exact metric is not measured yet"
        elif rho is None or rho != rho:
            why = "its agreement with the exact metric could not be measured"
        else:
            why = f"agreement {float(rho):.2f} with the exact metric is too low to read this map as advice"
        then = ("the exact map this run is computing replaces it when it is done." if refinement is not None
                else "choose 'Automatic' or the exact metric for a map you can act on.")
        withheld = f"No plain-language reading: {why} (at least {TRUSTED_AGREEMENT:.1f} is needed); {then}"
    return {"trusted": trusted, "agreement": measured, "label": label, "withheld": withheld}


def map_to_show(model: str, near: float = 0.5) -> Optional[tuple[dict, dict]]:
    """The stored sensitivity map a page shows beside its own figures, with its trust verdict, or None.

    The library's rule (`stored_maps.map_to_show`: a trusted map first, exact before a proxy, then the sparsity
    nearest `near`, then the newest). Returns (map, `sensitivity_trust` of it)."""
    found = stored_maps.map_to_show(Store(), model, near)
    if found is None:
        return None
    chosen, correlations = found
    return chosen, sensitivity_trust(chosen, correlations)
