"""One pruning setting: method, structure, sparsity, propagation, and how the sparsity is spread (allocation or plan).

Every job spec that prunes with one setting embeds a `Setting` (what-if, budget, recovery, continual, continual
adapters, and the export's options), so the same word names the same thing everywhere: `allocation` is the
allocator's name (`allocation.allocators.ALLOCATORS`; None means uniform), `plan` a `SparsityPlan.to_dict()`.

Stored job specs and the dashboard's dicts are flat (`{"method": ..., "sparsity": ..., "allocator": ...}`) and
their content hashes key stored jobs and results, so each spec keeps its own flat key names in its dict form
(`to_flat` / `from_flat`); `from_dict` reads every name a stored dict ever used (`LEGACY_KEYS`).

This module is on the ground floor: it checks what the floor knows (methods, structures, sparsities,
propagations, plans). The allocator's name is checked one floor up, where the allocators live
(`allocation.setting_plan.check_setting`), which also turns a setting into its plan for a loaded model.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Mapping, Optional

from pruning_core.errors import ConfigError
from pruning_core.masks import check_sparsity, parse_structure
from pruning_core.methods import METHODS, get_method
from pruning_core.plan import SparsityPlan
from pruning_core.walk import PROPAGATIONS

#: Names older specs and dicts used for a setting's fields: {old name: field}. `from_dict` reads both.
LEGACY_KEYS = {"allocator": "allocation"}


@dataclass(frozen=True)
class Setting:
    """How to prune: one method at one target, spread uniformly, by an allocator, or by an explicit plan.

    method: a registered method (`methods.METHODS`). structure: "unstructured" or N:M ("2:4").
    sparsity: target fraction of zeros in [0, 1) (unstructured; N:M fixes its own); with a plan, the target the
        plan was made for. propagation: "pruned" (each layer calibrates on the pruned layers before it, as the
        papers do) or "dense" (every layer's statistics from the dense model, shareable across settings).
    allocation: the allocator that spreads `sparsity` over the modules, by name; None = uniform (kept as given,
        None or "uniform", because stored dicts hash it as they were written).
    plan: an explicit plan (`SparsityPlan.to_dict()`) deciding every module's sparsity, or None.
    layer_sparsity: per-decoder-layer overrides {layer: sparsity} of a uniform setting (the What-if table);
        exclusive with a plan or an allocator.
    """

    method: str = "wanda"
    structure: str = "unstructured"
    sparsity: float = 0.5
    propagation: str = "pruned"
    allocation: Optional[str] = None
    plan: Optional[dict] = None
    layer_sparsity: Optional[dict] = None

    def __post_init__(self) -> None:
        # JSON gives layer keys as strings; a cleared table arrives as {} or with None cells.
        layers = {int(k): float(v) for k, v in (self.layer_sparsity or {}).items() if v is not None} or None
        object.__setattr__(self, "layer_sparsity", layers)
        if isinstance(self.sparsity, (int, float)) and not isinstance(self.sparsity, bool):
            object.__setattr__(self, "sparsity", float(self.sparsity))

    # ---------------------------------------------------------------------------------------- reading

    @property
    def allocator_name(self) -> str:
        """The allocation by name, "uniform" when none is given."""
        return str(self.allocation).strip().lower() if self.allocation else "uniform"

    @property
    def is_uniform(self) -> bool:
        """No plan, no allocator other than uniform and no per-layer overrides: one sparsity everywhere."""
        return self.plan is None and self.allocator_name == "uniform" and not self.layer_sparsity

    def sparsity_plan(self) -> Optional[SparsityPlan]:
        """The explicit plan read back (ConfigError when malformed), or None."""
        return SparsityPlan.from_dict(self.plan) if self.plan is not None else None

    # ---------------------------------------------------------------------------------------- checking

    def validate(self) -> "Setting":
        """Check every field the floor knows; raises ConfigError with one sentence per problem (the first found).

        The allocation's name is checked by `allocation.setting_plan.check_setting`, which calls this first."""
        if self.method not in METHODS:
            get_method(str(self.method))  # the registry's own sentence, with the known names
        structure = parse_structure(str(self.structure))
        if not structure.is_nm:
            check_sparsity(self.sparsity)
        if self.propagation not in PROPAGATIONS:
            raise ConfigError(f"Propagation '{self.propagation}' is unknown; use 'pruned' or 'dense'.")
        for value in (self.layer_sparsity or {}).values():
            check_sparsity(value)
        if self.layer_sparsity and structure.is_nm:
            raise ConfigError("Per-layer sparsities apply to unstructured pruning only; N:M fixes the sparsity. "
                              "Clear the per-layer table or choose 'unstructured'.")
        if self.layer_sparsity and self.plan is not None:
            raise ConfigError("Give either a sparsity plan or per-layer sparsities, not both; edit the plan instead.")
        if self.layer_sparsity and self.allocator_name != "uniform":
            raise ConfigError(f"Give either an allocation ('{self.allocation}') or per-layer sparsities, not both; "
                              "the allocation decides every layer's sparsity.")
        plan = self.sparsity_plan()
        if plan is not None and self.allocation is not None and self.allocator_name != plan.allocator:
            raise ConfigError(f"The plan was made by '{plan.allocator}' but the setting names allocation "
                              f"'{self.allocation}'; leave the allocation out or give that allocator's plan.")
        return self

    def prune_config(self, **extra):
        """The validated `PruneConfig` of this setting, without its plan (the plan needs the loaded model:
        `allocation.setting_plan.setting_config`). extra: further `PruneConfig` fields (targets, blocksize...)."""
        from pruning_core.prune import PruneConfig  # same floor; imported here so reading a spec stays light

        return PruneConfig(method=self.method, structure=self.structure, sparsity=float(self.sparsity),
                           propagation=self.propagation, layer_sparsity=self.layer_sparsity, **extra).validate()

    # ---------------------------------------------------------------------------------------- dict forms

    def to_dict(self) -> dict:
        """Plain JSON with this class's names (layer keys as strings)."""
        return {"method": self.method, "structure": self.structure, "sparsity": self.sparsity,
                "propagation": self.propagation, "allocation": self.allocation, "plan": self.plan,
                "layer_sparsity": ({str(k): float(v) for k, v in self.layer_sparsity.items()}
                                   if self.layer_sparsity else None)}

    @classmethod
    def from_dict(cls, d: Mapping, default: Optional["Setting"] = None) -> "Setting":
        """A setting from a dict with these names or the legacy ones (`LEGACY_KEYS`, e.g. "allocator"); fields
        not given keep `default`'s values. Unknown keys are refused, naming the known ones."""
        d = dict(d)
        for old, new in LEGACY_KEYS.items():
            if old in d:
                if new in d and d[new] != d[old]:
                    raise ConfigError(f"The setting gives both '{old}' and '{new}' with different values; give "
                                      f"'{new}' only.")
                d[new] = d.pop(old)
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(f"Unknown setting fields {unknown}; known: {', '.join(names)}.")
        return replace(default or cls(), **d)

    def to_flat(self, names: Mapping[str, str]) -> dict:
        """The fields a spec stores, under that spec's flat key names: names = {field: key in the spec's dict}."""
        full = {"method": self.method, "structure": self.structure, "sparsity": self.sparsity,
                "propagation": self.propagation, "allocation": self.allocation, "plan": self.plan,
                "layer_sparsity": self.layer_sparsity}
        return {key: full[name] for name, key in names.items()}


SETTING_FIELDS = tuple(f.name for f in fields(Setting))

__all__ = ["LEGACY_KEYS", "SETTING_FIELDS", "Setting"]
