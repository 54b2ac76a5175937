"""The choices every form offers, in the library's registries' order: methods, structures, allocations,
evaluation dtypes, and the default prompt of the text comparisons."""

from __future__ import annotations

from pruning_core import claims
from pruning_core.allocation import allocators as _allocators
from pruning_core.methods import METHODS as _METHOD_REGISTRY
from pruning_core.methods import STRUCTURES as _STRUCTURES
from pruning_core.precision import EVAL_DTYPES as _EVAL_DTYPES

METHODS = tuple(_METHOD_REGISTRY)  # the registry's names, in its order
STRUCTURES = _STRUCTURES
EVAL_DTYPES = _EVAL_DTYPES
#: The allocator registry's names, in its order ("uniform" first); see `pruning_core.allocation.allocators`.
ALLOCATIONS = tuple(_allocators.ALLOCATORS)
#: What each allocator does, in the registry's words (the pages' help texts).
ALLOCATION_DESCRIPTIONS = {name: a.description for name, a in _allocators.ALLOCATORS.items()}
#: The prompt of every text comparison: the one the library's what-if defaults to.
DEFAULT_PROMPT = claims.DEFAULT_PROMPT


def allocation_help() -> str:
    """"name: what it does; ..." of every allocator, for a widget's help text."""
    return "; ".join(f"{name}: {text}" for name, text in ALLOCATION_DESCRIPTIONS.items())
