"""The registry of pruning methods: an explicit dict a reader can grep. Add a method here, nowhere else."""

from __future__ import annotations

from pruning_core.errors import ConfigError
from pruning_core.methods.base import Method, MethodOptions
from pruning_core.methods.magnitude import MAGNITUDE
from pruning_core.methods.sparsegpt import SPARSEGPT
from pruning_core.methods.wanda import WANDA

METHODS: dict[str, Method] = {m.name: m for m in (MAGNITUDE, WANDA, SPARSEGPT)}


def get_method(name: str) -> Method:
    """The registered method called `name`; an unknown name lists the known ones."""
    try:
        return METHODS[name.strip().lower()]
    except KeyError:
        raise ConfigError(f"Unknown method '{name}'; choose one of {', '.join(METHODS)}.") from None


__all__ = ["METHODS", "Method", "MethodOptions", "get_method"]
