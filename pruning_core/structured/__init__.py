"""Structured pruning: remove whole attention heads, MLP channels or decoder layers, compensate the remaining
weights from a few calibration windows, and save a physically smaller Hugging Face model.

Modules, one concern each: `units` (what a head / channel / layer is in each family), `statistics` (the
consumers' input moments from one dense walk), `scores` (magnitude, Wanda-sp, FLAP, OBS output effect),
`compensate` (the cross-validated shrinkage refit), `slicing` (tensors, config, save / load), and
`prune_structured` (the one call: `prune_structured(loaded, calib_ids, StructuredConfig(...))`).
"""

from pruning_core.structured.prune_structured import (
    ParameterCounts,
    StructuredConfig,
    StructuredResult,
    prune_structured,
)
from pruning_core.structured.slicing import load_structured, save_structured
from pruning_core.structured.statistics import UnitStatistics, collect_unit_statistics

__all__ = ["ParameterCounts", "StructuredConfig", "StructuredResult", "UnitStatistics", "collect_unit_statistics",
           "load_structured", "prune_structured", "save_structured"]
