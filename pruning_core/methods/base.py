"""What a pruning method is: a name, the statistics it needs, and a pure function on one weight matrix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from pruning_core.masks import Structure
from pruning_core.stats import InputStatistics


@dataclass(frozen=True)
class MethodOptions:
    """Numerical knobs shared by methods (defaults are the papers')."""

    blocksize: int = 128    # SparseGPT: columns per lazy-update block
    percdamp: float = 0.01  # SparseGPT: damping as a fraction of mean diag(H)


# prune(W (out, in) fp32 copy, stats or None, sparsity, structure, options) -> (keep mask (out, in), new W or None)
PruneFn = Callable[[torch.Tensor, Optional[InputStatistics], float, Structure, MethodOptions],
                   tuple[torch.Tensor, Optional[torch.Tensor]]]


# prune_group([W_i (out_i, in)], shared stats, [sparsity_i], structure, options) -> [(keep_i, new W_i or None)]
PruneGroupFn = Callable[[Sequence[torch.Tensor], Optional[InputStatistics], Sequence[float], Structure, MethodOptions],
                        list[tuple[torch.Tensor, Optional[torch.Tensor]]]]


@dataclass(frozen=True)
class Method:
    """A registered pruning method.

    needs: "none" | "act_sq" | "hessian" — the statistics the layer walk must collect for it.
    updates_weights: True if the method also changes the kept weights (SparseGPT's OBS update).
    scores: for a method whose unstructured mask is "prune the lowest scores", score(W (out, in), stats) ->
    (out, in); with `per_row`, the cut is per output row, else per matrix. Lets a dense-statistics sweep rank
    the scores once and only re-threshold per sparsity (`masks.score_ranks`). None for other methods.
    prune_group: optional; prunes several matrices that read the same input (q/k/v, gate/up) at once, with
    the same results as `prune` on each (SparseGPT shares one inverse Hessian and one column loop).
    """

    name: str
    needs: str
    updates_weights: bool
    prune: PruneFn
    description: str
    scores: Optional[Callable[[torch.Tensor, Optional[InputStatistics]], torch.Tensor]] = None
    per_row: bool = False
    prune_group: Optional[PruneGroupFn] = None
