"""The report's "Where the zeros are" section: a setting's sparsity plan, its allocator, its global and per-layer
sparsity counted over parameters, and the plan as a heatmap.

The plan is a setting's (`pruning_core.plan`, on the floor every capability shares), so every report of a pruned
setting shows it: an export's, a recovery's, a continual run's. `allocation_summary` reads it from a report's
record; `allocation_sentences` words it; `plan_figure` draws it as the dashboard's Allocation view does.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from pruning_core import claims
from pruning_core.outputs import figures
from pruning_core.outputs.sections import Figure, Paragraph, Section, Table
from pruning_core.outputs.setting_sections import percent
from pruning_core.plan import SparsityPlan


def allocation_summary(data: Mapping[str, Any]) -> dict | None:
    """Where the zeros are: the setting's sparsity plan as the report shows it, or None without any sparsity.

    Returns {"allocator", "edited_from", "settings" (allocator options), "structure", "uniform" (one value
    everywhere), "value" (that value, a fraction; None for a varied plan), "global_sparsity" (zeros / weights of
    every planned linear, a fraction; None when it cannot be counted), "kinds", "rows": [{"layer", "mean" (the
    layer's sparsity by parameters; None when unknown), "values" (per kind)}], "by_parameters" (whether every
    mean is known), "module_sizes" (layers x kinds weight counts, or None)}.

    The plan is the setting's "plan" (`SparsityPlan.to_dict()`), else its per-layer overrides ("layer_sparsity"
    over "sparsity"; kinds and layer count from "per_layer"), else the uniform "sparsity". An N:M plan is shown
    as it is applied (0 = dense, anything else the structure's sparsity). Figures by parameters come from
    `SparsityPlan.global_sparsity` / `layer_mean` with ``data["module_sizes"]`` (sizes[layer][kind] = weight
    count, `plan.module_sizes`), else with the shapes the sensitivity map records for every layer.
    Without sizes, the global figure of an unstructured plan is the
    setting's target (`PruneConfig.with_plan` sets it to the plan's global sparsity by parameters) and a layer's
    mean is known only where all its modules share one value.
    """
    from pruning_core.masks import parse_structure  # imported here: the masks module loads torch

    s = data.get("setting") or {}
    structure = str(s.get("structure") or "unstructured")
    if structure == claims.STRUCTURED:  # removed units, not zeros: the widths table says where
        return None
    nm = parse_structure(structure)
    target = nm.sparsity if nm.is_nm else s.get("sparsity")
    per_layer = data.get("per_layer") or {}
    if s.get("plan"):
        plan = SparsityPlan.from_dict(s["plan"])
    elif s.get("layer_sparsity") and target is not None:
        kinds = tuple(per_layer.get("modules") or ("all modules",))
        overrides = {int(k): float(v) for k, v in s["layer_sparsity"].items()}
        layers = max(len(per_layer.get("rows") or ()), max(overrides) + 1)
        plan = SparsityPlan.with_overrides(layers, kinds, float(target), overrides)
    elif target is not None:
        return {"allocator": str(s.get("allocator") or "uniform"), "edited_from": None, "settings": {},
                "structure": structure, "uniform": True, "value": float(target), "global_sparsity": float(target),
                "kinds": [], "rows": [], "by_parameters": True, "module_sizes": None}
    else:
        return None
    settings = dict(plan.settings)
    edited_from = settings.pop("edited_from", None)
    applied = plan.for_structure(nm.sparsity) if nm.is_nm else plan
    sizes = _module_sizes(data, applied.kinds, applied.layers)
    if sizes is not None:
        global_sparsity = applied.global_sparsity(sizes)
        means = [applied.layer_mean(i, sizes[i]) for i in range(applied.layers)]
    else:
        global_sparsity = float(s["sparsity"]) if not nm.is_nm and s.get("sparsity") is not None else None
        if applied.is_uniform:
            global_sparsity = applied.values[0][0] if applied.layers else global_sparsity
        means = [row[0] if len(set(row)) == 1 else None for row in applied.values]
    return {"allocator": plan.allocator, "edited_from": edited_from, "settings": settings, "structure": structure,
            "uniform": applied.is_uniform, "value": applied.values[0][0] if applied.is_uniform and applied.layers
            else None, "global_sparsity": global_sparsity, "kinds": list(applied.kinds),
            "rows": [{"layer": i, "mean": means[i], "values": list(row)} for i, row in enumerate(applied.values)],
            "by_parameters": all(m is not None for m in means),
            "module_sizes": [[int(row[k]) for k in applied.kinds] for row in sizes] if sizes is not None else None}


def _module_sizes(data: Mapping[str, Any], kinds: Sequence[str], layers: int) -> list[dict] | None:
    """sizes[layer][kind] = weight count: ``data["module_sizes"]``, else the shapes [out, in] the sensitivity map
    records for every layer and kind (the export's heatmap), else None. Sizes that do not fit the plan (another
    model) are not used."""
    sizes = data.get("module_sizes")
    if sizes is None:
        sens = data.get("sensitivity") or {}
        shapes, modules = sens.get("module_sizes"), list(sens.get("modules") or ())
        if shapes is None or [int(x) for x in sens.get("layers") or ()] != list(range(layers)):
            return None
        try:
            sizes = [{kind: math.prod(int(d) for d in size) if isinstance(size, (list, tuple)) else int(size)
                      for kind, size in zip(modules, row)} for row in shapes]
        except (TypeError, ValueError):
            return None
    if len(sizes) != layers or any(set(kinds) - set(row) for row in sizes):
        return None
    return sizes


def allocation_sentences(summary: Mapping[str, Any]) -> list[str]:
    """The "Where the zeros are" section in plain words (`allocation_summary`'s dict)."""
    who = summary["allocator"] + (f" (edited from {summary['edited_from']})" if summary.get("edited_from") else "")
    nm = f" ({summary['structure']})" if summary["structure"] != "unstructured" else ""
    if summary["uniform"]:
        return [f"{who}: every module at {percent(summary['value'])}{nm}."]
    options = ", ".join(f"{k} = {v}" for k, v in (summary.get("settings") or {}).items())
    sentences = [f"Allocator: {who}" + (f", with {options}" if options else "") + ".",
                 f"Global sparsity {percent(summary['global_sparsity'], 2)}{nm}, counted over parameters "
                 "(zeros / weights of all pruned linears, so a large MLP projection weighs more than a small "
                 "attention one)."]
    known = [r for r in summary["rows"] if r["mean"] is not None]
    if known:
        low = min(known, key=lambda r: r["mean"])
        high = max(known, key=lambda r: r["mean"])
        sentences.append(f"Per layer, by parameters: from {percent(low['mean'])} (layer {low['layer']}) to "
                         f"{percent(high['mean'])} (layer {high['layer']}).")
    if not summary["by_parameters"]:
        sentences.append("This report holds no module sizes, so a layer whose modules differ has no mean by "
                         "parameters (–); the per-module values are exact.")
    return sentences


def plan_figure(summary: Mapping[str, Any]) -> dict:
    """A plan (`allocation_summary`) as a layers x module-kinds heatmap of sparsities in %, drawn with the
    sensitivity heatmap's specification (`figures.heatmap_figure`) as the dashboard's Allocation view draws it,
    titled with the allocator and the global sparsity by parameters."""
    who = summary["allocator"] + (f" (from {summary['edited_from']})" if summary.get("edited_from") else "")
    as_map = {"layers": [r["layer"] for r in summary["rows"]], "modules": list(summary["kinds"]),
              "values": [[100.0 * v for v in r["values"]] for r in summary["rows"]], "metric": "sparsity (%)",
              "method": who, "sparsity": None}
    if summary.get("module_sizes") is not None:
        as_map["module_sizes"] = summary["module_sizes"]
    figure = figures.heatmap_figure(as_map)
    total = summary.get("global_sparsity")
    figure["layout"]["title"]["text"] = "Sparsity plan<br><sup>" + html.escape(who) + (
        f" · {100.0 * total:.1f} % of the pruned weights, counted over parameters" if total is not None else "") \
        + "</sup>"
    figure["data"][0]["meta"] = {"role": "plan", "allocator": summary["allocator"], "global_sparsity": total}
    return figure


def plan_section(data: Mapping[str, Any]) -> Optional[Section]:
    """The "Where the zeros are" section of a report's record (`allocation_summary`): the plan in words, a varied plan's
    heatmap and its per-module table (%); None for a setting without sparsity or a structured one."""
    summary = allocation_summary(data)
    if summary is None:
        return None
    blocks = [Paragraph(sentence) for sentence in allocation_sentences(summary)]
    if not summary["uniform"]:
        blocks.append(Figure("plan", plan_figure(summary)))
    if summary["rows"]:
        rows = [[r["layer"], percent(r["mean"]), *[percent(v) for v in r["values"]]] for r in summary["rows"]]
        blocks += [Paragraph('Planned sparsity per module (%); "layer" is the layer\'s sparsity counted over its '
                             "parameters.", note=True),
                   Table(["layer", "layer (by parameters)", *summary["kinds"]], rows)]
    return Section("Where the zeros are", blocks, anchor="allocation")
