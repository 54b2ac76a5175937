"""Each module's cost at one sparsity, read off a stored sensitivity map: what `sensitivity` ranks spend by.

A sensitivity result holds maps of one metric at two or more sparsities, one cell per (decoder layer, module
kind). The recovery's rank allocation (`ranks.sensitivity_plan`) wants {module name: cost} at the sparsity being
recovered; between and beyond the measured sparsities the cost follows the sensitivity allocator's own curve
(`allocation.sensitivity_guided.cost_curve`), so both read a map the same way.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from pruning_core.allocation.sensitivity_guided import cost_curve, measured_costs, select_maps
from pruning_core.models import LoadedModel


def module_costs(loaded: LoadedModel, sensitivity: Any, sparsity: float,
                 method: Optional[str] = None) -> dict[str, float]:
    """{qualified module name: predicted cost of pruning it alone to `sparsity`} from a sensitivity result of
    `loaded`'s model (units of the map's metric; for "exact" the increase of mean token NLL, nats/token).

    method: the pruning method's maps to read (None: the only one). Raises ConfigError when the maps do not
    cover every layer and module kind or hold fewer than two sparsities of one metric."""
    _, _, maps = select_maps(sensitivity, method=method)
    adapter = loaded.adapter
    layers, kinds = len(adapter.decoder_layers(loaded.model)), list(adapter.module_kinds)
    points, costs = measured_costs(maps, layers, kinds)
    at = np.array([float(sparsity)])
    return {adapter.qualified_name(i, kind): float(cost_curve(points, costs[i, j], at)[0])
            for i in range(layers) for j, kind in enumerate(kinds)}
