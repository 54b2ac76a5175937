"""The registry of pruning methods: an explicit dict a reader can grep. Add a method here, nowhere else."""

from __future__ import annotations

from pruning_core.errors import ConfigError
from pruning_core.methods.base import Method, MethodOptions
from pruning_core.methods.magnitude import MAGNITUDE
from pruning_core.methods.sparsegpt import SPARSEGPT
from pruning_core.methods.wanda import WANDA

METHODS: dict[str, Method] = {m.name: m for m in (MAGNITUDE, WANDA, SPARSEGPT)}

#: The structures a page offers (any "N:M" with 0 < N < M is accepted by `masks.parse_structure`).
STRUCTURES: tuple[str, ...] = ("unstructured", "2:4", "4:8")

#: Statistics a method may need, weakest first: a later entry holds everything an earlier one gives
#: (the Hessian's diagonal is the activations' squared norms), so one walk for the strongest serves them all.
NEEDS: tuple[str, ...] = ("none", "act_sq", "hessian")


def get_method(name: str) -> Method:
    """The registered method called `name`; an unknown name lists the known ones."""
    try:
        return METHODS[name.strip().lower()]
    except KeyError:
        raise ConfigError(f"Unknown method '{name}'; choose one of {', '.join(METHODS)}.") from None


def need_rank(need: str) -> int:
    """Position of a statistics need in `NEEDS` (higher = more statistics)."""
    try:
        return NEEDS.index(need)
    except ValueError:
        raise ConfigError(f"Unknown statistics need '{need}'; known: {', '.join(NEEDS)}.") from None


def strongest_need(needs) -> str:
    """The need that covers all of `needs` ("none" for none)."""
    return max(needs, key=need_rank, default="none")


def covers(have: str, need: str) -> bool:
    """Whether statistics collected for `have` serve a method that needs `need`."""
    return need_rank(have) >= need_rank(need)


__all__ = ["METHODS", "NEEDS", "STRUCTURES", "Method", "MethodOptions", "covers", "get_method", "need_rank",
           "strongest_need"]
