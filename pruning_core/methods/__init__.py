"""The registry of pruning methods: an explicit dict a reader can grep. Add a method here, nowhere else."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Method, MethodOptions
from .magnitude import MAGNITUDE
from .sparsegpt import SPARSEGPT
from .wanda import WANDA

METHODS: dict[str, Method] = {m.name: m for m in (MAGNITUDE, WANDA, SPARSEGPT)}


def get_method(name: str) -> Method:
    """The registered method called `name`; an unknown name lists the known ones."""
    try:
        return METHODS[name.strip().lower()]
    except KeyError:
        raise ConfigError(f"Unknown method '{name}'; choose one of {', '.join(METHODS)}.") from None


__all__ = ["METHODS", "Method", "MethodOptions", "get_method"]
