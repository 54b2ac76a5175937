"""A sparsity plan: one sparsity per (decoder layer, module kind), and its global sparsity by parameter count.

A plan is a first-class setting like a method or a structure: `PruneConfig(plan=...)` prunes every targeted
linear at the plan's value for it, results are keyed by the plan's content (`digest`), and exports record it.
A uniform float is the plan with one value (`SparsityPlan.uniform`).

The global sparsity of a plan is counted over parameters (zeros / elements of all pruned linears), the one
figure pages and files report: a layer's MLP (3 x 576 x 1536 weights in the embedded model) weighs far more
than its k projection (576 x 192), so the mean of the table's cells is *not* the global sparsity.

For an N:M structure a plan entry is either 0 (that module stays dense: mixed 2:4 / dense deployments) or
anything else (the module is pruned N:M at the structure's sparsity); `for_structure` normalises it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from pruning_core.errors import ConfigError

#: Bounds a plan's cells must respect unless an allocator is given tighter ones (0 = dense, < 1 = not all zero).
MAX_SPARSITY = 0.99


@dataclass(frozen=True)
class SparsityPlan:
    """Sparsity per decoder layer x module kind.

    kinds: the module kinds (columns), in the adapter's order (e.g. ("q", "k", "v", "o", "gate", "up", "down")).
    values: values[layer][kinds.index(kind)] = fraction of that module's weights to prune, in [0, 1).
    allocator: the allocator that made the plan ("uniform", "owl", "sensitivity", "edited" ...).
    target: the global sparsity (by parameters) the allocator was asked for, or None.
    settings: the allocator's options as (name, value) pairs, recorded with the plan (e.g. (("M", 5.0),)).
    """

    kinds: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]
    allocator: str = "uniform"
    target: Optional[float] = None
    settings: tuple[tuple[str, object], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(self.kinds))
        object.__setattr__(self, "values", tuple(tuple(float(v) for v in row) for row in self.values))
        object.__setattr__(self, "settings", tuple((str(k), v) for k, v in self.settings))
        for index, row in enumerate(self.values):
            if len(row) != len(self.kinds):
                raise ConfigError(f"Sparsity plan row {index} has {len(row)} values for {len(self.kinds)} module "
                                  f"kinds ({', '.join(self.kinds)}); give one value per kind.")
            for kind, value in zip(self.kinds, row):
                if not 0.0 <= value <= MAX_SPARSITY:
                    raise ConfigError(f"Sparsity plan value {value:g} for layer {index} {kind} is outside "
                                      f"[0, {MAX_SPARSITY:g}]; use a fraction such as 0.5 for 50 %.")

    # ------------------------------------------------------------------------------------------ building

    @classmethod
    def uniform(cls, layers: int, kinds: Sequence[str], sparsity: float) -> "SparsityPlan":
        """The plan with one value everywhere (what a plain `sparsity` float means)."""
        return cls(tuple(kinds), tuple((float(sparsity),) * len(kinds) for _ in range(layers)), "uniform",
                   float(sparsity))

    @classmethod
    def from_layers(cls, kinds: Sequence[str], per_layer: Sequence[float], allocator: str,
                    target: Optional[float] = None, settings: tuple = ()) -> "SparsityPlan":
        """A plan whose every module of layer i gets per_layer[i] (layer-wise allocators such as OWL)."""
        return cls(tuple(kinds), tuple((float(s),) * len(kinds) for s in per_layer), allocator, target, settings)

    @classmethod
    def with_overrides(cls, layers: int, kinds: Sequence[str], sparsity: float,
                       layer_sparsity: Optional[Mapping[int, float]]) -> "SparsityPlan":
        """The plan of a uniform sparsity with per-layer overrides {layer: sparsity} (the What-if editor's form)."""
        overrides = {int(k): float(v) for k, v in (layer_sparsity or {}).items()}
        rows = tuple((overrides.get(i, float(sparsity)),) * len(kinds) for i in range(layers))
        return cls(tuple(kinds), rows, "edited" if overrides else "uniform", None)

    def edited(self, layer: int, kind: Optional[str], value: float) -> "SparsityPlan":
        """A copy with layer `layer`'s `kind` (every kind if None) set to `value`; the allocator becomes "edited"."""
        rows = [list(row) for row in self.values]
        columns = range(len(self.kinds)) if kind is None else [self._column(kind)]
        for column in columns:
            rows[layer][column] = float(value)
        return SparsityPlan(self.kinds, tuple(tuple(r) for r in rows), "edited", self.target,
                            self.settings + (("edited_from", self.allocator),) if self.allocator != "edited"
                            else self.settings)

    # ------------------------------------------------------------------------------------------ reading

    @property
    def layers(self) -> int:
        return len(self.values)

    @property
    def is_uniform(self) -> bool:
        return len({v for row in self.values for v in row}) <= 1

    def _column(self, kind: str) -> int:
        try:
            return self.kinds.index(kind)
        except ValueError:
            raise ConfigError(f"Module kind '{kind}' is not in this plan; its kinds are "
                              f"{', '.join(self.kinds)}.") from None

    def sparsity(self, layer: int, kind: str) -> float:
        """The planned sparsity of `kind` in decoder layer `layer`."""
        if not 0 <= layer < len(self.values):
            raise ConfigError(f"The sparsity plan has {len(self.values)} layers; layer {layer} is not in it. "
                              "It was made for another model.")
        return self.values[layer][self._column(kind)]

    def layer_mean(self, layer: int, sizes: Mapping[str, int]) -> float:
        """Sparsity of one layer counted over its parameters (sizes: kind -> weight count)."""
        total = sum(sizes[k] for k in self.kinds)
        return sum(v * sizes[k] for k, v in zip(self.kinds, self.values[layer])) / max(total, 1)

    def global_sparsity(self, sizes: Sequence[Mapping[str, int]]) -> float:
        """Zeros / elements over every planned linear, given sizes[layer][kind] = weight count (`module_sizes`)."""
        if len(sizes) != len(self.values):
            raise ConfigError(f"The sparsity plan has {len(self.values)} layers but the model has {len(sizes)}; "
                              "it was made for another model.")
        zeros = total = 0.0
        for row, layer_sizes in zip(self.values, sizes):
            for kind, value in zip(self.kinds, row):
                zeros += value * layer_sizes[kind]
                total += layer_sizes[kind]
        return zeros / max(total, 1.0)

    def for_structure(self, nm_sparsity: float) -> "SparsityPlan":
        """The plan an N:M structure actually applies: 0 stays dense, anything else becomes `nm_sparsity`."""
        rows = tuple(tuple(0.0 if v == 0 else nm_sparsity for v in row) for row in self.values)
        return SparsityPlan(self.kinds, rows, self.allocator, self.target, self.settings)

    # ------------------------------------------------------------------------------------------ storing

    def to_dict(self) -> dict:
        """Plain JSON: {"kinds", "values" (layers x kinds), "allocator", "target", "settings" (a dict)}."""
        return {"kinds": list(self.kinds), "values": [list(row) for row in self.values],
                "allocator": self.allocator, "target": self.target, "settings": dict(self.settings)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "SparsityPlan":
        """Inverse of `to_dict`; raises ConfigError naming what is missing."""
        try:
            return cls(tuple(d["kinds"]), tuple(tuple(r) for r in d["values"]), d.get("allocator", "edited"),
                       d.get("target"), tuple((d.get("settings") or {}).items()))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"A sparsity plan needs 'kinds' and 'values' (layers x kinds); this one has "
                              f"{sorted(map(str, d)) if isinstance(d, Mapping) else type(d).__name__} "
                              f"({type(exc).__name__}: {exc}).") from None
        except ValueError as exc:  # float("half"): a value that is not a number
            raise ConfigError(f"A sparsity plan's values must be numbers such as 0.5 ({exc}).") from None

    def digest(self) -> str:
        """Content hash of the values and kinds (not of who made them): equal tables key the same results."""
        from pruning_core.store import content_hash

        return content_hash({"kinds": list(self.kinds), "values": [list(row) for row in self.values]})


def module_sizes(loaded) -> list[dict[str, int]]:
    """sizes[layer][kind] = number of weights of that prunable linear (what a plan's global sparsity counts)."""
    adapter = loaded.adapter
    return [{kind: int(module.weight.numel()) for kind, module in adapter.layer_linears(layer).items()}
            for layer in adapter.decoder_layers(loaded.model)]


def plan_for(loaded, plan: SparsityPlan) -> SparsityPlan:
    """Check `plan` fits `loaded` (layers and module kinds); returns it, or raises ConfigError saying why not."""
    layers = len(loaded.adapter.decoder_layers(loaded.model))
    kinds = tuple(loaded.adapter.module_kinds)
    if plan.layers != layers or set(plan.kinds) != set(kinds):
        raise ConfigError(f"The sparsity plan is for {plan.layers} layers of {', '.join(plan.kinds)}, but this "
                          f"model has {layers} layers of {', '.join(kinds)}; make a plan for this model.")
    return plan
