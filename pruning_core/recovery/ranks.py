"""Where to spend the adapter budget: LoRA ranks per module at a fixed number of trainable parameters.

A rank-r adapter on a linear of shape (out, in) trains r·(in + out) parameters. The budget is what uniform
rank r0 on every target would train; an allocator spends the same number of parameters differently:

- `uniform`: rank r0 everywhere (the plain baseline).
- `gradient`: gradient-based importance (adaptive sparse fine-tuning). On calibration batches the loss gradient
  G of each pruned weight is accumulated and masked with the keep pattern (the adapter can only move kept
  weights). A rank-r update of W that follows the gradient lowers the loss, to first order, by the energy of G
  captured by the update's row/column spaces; the best rank-r subspace captures Σ_{k<=r} σ_k(G ⊙ keep)² (Eckart-
  Young). So each extra rank k of module m is worth σ_k² per r-cost (in + out) parameters, and a greedy fill on
  that ratio (marginal gains decrease with k, so greedy is optimal for this separable concave objective) spends
  the budget where recovery buys the most. Modules that receive rank 0 get no adapter at all.
- `sensitivity`: ranks proportional to the measured sensitivity map (perplexity cost of pruning each module
  kind of each layer), for users who have a map and no gradient pass to spare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from pruning_core.errors import ConfigError
from pruning_core.progress import ProgressFn, no_progress

RANK_ALLOCATIONS = ("uniform", "gradient", "sensitivity")
RANK_DESCRIPTIONS = {
    "uniform": "the same rank on every adapted linear",
    "gradient": "ranks where the loss gradient of the kept weights has most energy (same parameter count)",
    "sensitivity": "ranks proportional to the sensitivity map's cost of each module (same parameter count)",
}


@dataclass
class RankPlan:
    """ranks: {module name: rank >= 1} (modules left out get no adapter); budget: trainable parameters of the
    uniform plan it matches; parameters: what these ranks train; allocation: how they were chosen;
    importance: {module: the score that decided} (σ² energy or map cost), for display."""

    ranks: dict[str, int]
    budget: int
    parameters: int
    allocation: str
    importance: dict[str, float]

    def to_dict(self) -> dict:
        return {"ranks": dict(self.ranks), "budget": self.budget, "parameters": self.parameters,
                "allocation": self.allocation, "importance": dict(self.importance)}


def rank_cost(shape: Sequence[int]) -> int:
    """Trainable parameters of one rank of a LoRA adapter on a weight of `shape` (out, in): in + out."""
    return int(shape[0]) + int(shape[1])


def uniform_plan(shapes: Mapping[str, Sequence[int]], rank: int) -> RankPlan:
    """Rank `rank` on every module of `shapes` ({name: (out, in)})."""
    if int(rank) < 1:
        raise ConfigError(f"The LoRA rank must be at least 1, got {rank}.")
    ranks = {n: int(rank) for n in shapes}
    cost = sum(int(rank) * rank_cost(s) for s in shapes.values())
    return RankPlan(ranks, cost, cost, "uniform", {n: 1.0 for n in shapes})


def greedy_ranks(gains: Mapping[str, Sequence[float]], shapes: Mapping[str, Sequence[int]], budget: int,
                 max_rank: int) -> dict[str, int]:
    """Ranks that maximise Σ gains[m][k] for k < rank_m under Σ rank_m·(in+out) <= budget.

    gains[m]: non-increasing marginal value of each extra rank of module m. Greedy on value per parameter.
    """
    heap = []
    for name, values in gains.items():
        cost = rank_cost(shapes[name])
        for k, value in enumerate(list(values)[:max_rank]):
            heap.append((float(value) / cost, name, k))
    heap.sort(key=lambda t: (-t[0], t[1], t[2]))
    ranks = {n: 0 for n in gains}
    spent = 0
    for value, name, k in heap:
        cost = rank_cost(shapes[name])
        if ranks[name] != k or spent + cost > budget:  # ranks fill in order: rank k+1 only after rank k
            continue
        ranks[name] = k + 1
        spent += cost
    return {n: r for n, r in ranks.items() if r > 0}


def masked_gradients(model: nn.Module, names: Sequence[str], batches: Sequence[torch.Tensor],
                     loss_fn: Callable[[torch.Tensor], torch.Tensor],
                     progress: Optional[ProgressFn] = None) -> dict[str, torch.Tensor]:
    """Σ over `batches` of d loss / d W for the modules `names`, multiplied by their keep pattern (W != 0).

    loss_fn(batch) -> scalar loss (mean token NLL). Every parameter's requires_grad is restored afterwards.
    """
    progress = progress or no_progress
    modules = {n: model.get_submodule(n) for n in names}
    before = {p: p.requires_grad for p in model.parameters()}
    grads = {n: torch.zeros_like(m.weight, dtype=torch.float32) for n, m in modules.items()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for m in modules.values():
            m.weight.requires_grad_(True)
        for i, batch in enumerate(batches):
            for m in modules.values():
                m.weight.grad = None
            loss_fn(batch).backward()
            for n, m in modules.items():
                grads[n] += m.weight.grad.float()
            progress((i + 1) / len(batches), f"gradient of the pruned model, batch {i + 1}/{len(batches)}")
    finally:
        for m in modules.values():
            m.weight.grad = None
        for p, requires_grad in before.items():
            p.requires_grad_(requires_grad)
    for n, m in modules.items():
        grads[n].mul_(m.weight.detach() != 0)
    return grads


def gradient_plan(grads: Mapping[str, torch.Tensor], rank: int, max_rank: Optional[int] = None) -> RankPlan:
    """The `gradient` allocation (module doc) at the budget of uniform rank `rank`; max_rank default 4·rank."""
    shapes = {n: tuple(g.shape) for n, g in grads.items()}
    budget = uniform_plan(shapes, rank).budget
    max_rank = int(max_rank or 4 * int(rank))
    gains = {}
    for name, g in grads.items():
        sigma = torch.linalg.svdvals(g.double())[:max_rank]
        gains[name] = (sigma ** 2).tolist()
    ranks = greedy_ranks(gains, shapes, budget, max_rank)
    spent = sum(r * rank_cost(shapes[n]) for n, r in ranks.items())
    return RankPlan(ranks, budget, spent, "gradient", {n: float(sum(v)) for n, v in gains.items()})


def sensitivity_plan(costs: Mapping[str, float], shapes: Mapping[str, Sequence[int]], rank: int,
                     max_rank: Optional[int] = None) -> RankPlan:
    """The `sensitivity` allocation: ranks ∝ each module's map cost (clamped at 0) at the budget of uniform
    rank `rank`, rounded down then topped up greedily by largest remainder; max_rank default 4·rank."""
    budget = uniform_plan(shapes, rank).budget
    max_rank = int(max_rank or 4 * int(rank))
    weights = {n: max(float(costs.get(n, 0.0)), 0.0) for n in shapes}
    if not any(w > 0 for w in weights.values()):
        raise ConfigError("The sensitivity map gives no module a positive cost; use uniform or gradient ranks.")
    # Scale c so that Σ min(max_rank, c·w_m)·cost_m = budget (bisection on c: the left side grows with c).
    lo, hi = 0.0, 1.0
    spend = lambda c: sum(min(max_rank, c * w) * rank_cost(shapes[n]) for n, w in weights.items())  # noqa: E731
    while spend(hi) < budget and hi < 1e12:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spend(mid) < budget else (lo, mid)
    real = {n: min(max_rank, lo * w) for n, w in weights.items()}
    ranks = {n: int(math.floor(r)) for n, r in real.items()}
    spent = sum(r * rank_cost(shapes[n]) for n, r in ranks.items())
    for name in sorted(real, key=lambda n: real[n] - ranks[n], reverse=True):
        cost = rank_cost(shapes[name])
        if ranks[name] < max_rank and spent + cost <= budget:
            ranks[name] += 1
            spent += cost
    ranks = {n: r for n, r in ranks.items() if r > 0}
    return RankPlan(ranks, budget, spent, "sensitivity", weights)
