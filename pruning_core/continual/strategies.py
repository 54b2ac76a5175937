"""Continual-pruning strategies: at step t, which model and which statistics the method prunes with.

Each strategy is a small object with one lifecycle: `observe(statistics)` when a domain's dense calibration
statistics arrive (one cached walk per domain, shared by every strategy), then `prune(loaded, config,
previous)` returning the step's `PruneResult` (masks on the dense model; SparseGPT's updated weights).

- `latest`: the dense model, statistics of D_t only (what a naive user does; it forgets).
- `sequential`: the previous step's pruned model pruned again with D_t statistics; masks can only grow
  (asserted). At a constant sparsity a scoring method re-picks the zeros it already has (their score is 0), so
  the mask is D_1's for good: the baseline of a model that can never win a weight back.
- `accumulated`: the dense model, the token-weighted running mean of the statistics over D_1..D_t
  (`accumulate.RunningStatistics`: sums only, no text).
- `copal`: the dense model, per-domain input norms kept as running statistics and combined by the max rule of
  `copal.copal_scores` (Wanda); with SparseGPT the running-mean Hessian (see `copal.SPARSEGPT_NOTE`).
- `joint`: all domains' calibration windows at once, at every step (needs the future: not continual; the
  reference line). Its statistics are the running mean over every domain, which is what one dense walk over
  the union of the windows gives; it prunes once and its R rows repeat.

Statistics are dense-propagation statistics (`prune.collect_statistics` / `statistics_cache.cached_statistics`):
one walk per domain serves every strategy, step and resumed run. Add a strategy to `STRATEGIES`, nowhere else.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import torch

from pruning_core.continual.accumulate import RunningStatistics
from pruning_core.continual.copal import RULE, SPARSEGPT_NOTE, copal_scores
from pruning_core.errors import ConfigError
from pruning_core.masks import keep_mask_from_scores
from pruning_core.methods import Method, get_method
from pruning_core.models import LoadedModel, to_native, weight_matrix
from pruning_core.prune import PruneConfig, PruneResult, Statistics, prune_with_statistics, result_from_masks


class Strategy:
    """Base: holds nothing but what its subclass documents. method: the registered method it prunes with."""

    name = ""
    description = ""
    #: True for a strategy that is given every domain before step 1 (joint): not continual.
    sees_all_domains = False
    #: True when every step gives the same mask (joint): the runner prunes and evaluates it once.
    static = False
    #: True when a statistics-based allocation plan is made at step 1 and kept (sequential: a plan that moved
    #: sparsity between modules later would have to regrow weights somewhere to keep the global target).
    plan_from_first_step = False
    #: True when step t prunes the result of step t-1 (sequential): a resumed run needs that result's updated
    #: weights, so they are stored with its masks (other strategies store masks only).
    uses_previous = False

    def __init__(self, method: Method):
        self.method = method

    def observe(self, statistics: Statistics) -> None:
        """Domain D_t's dense statistics arrive (a walk's result; the strategy keeps only what it documents)."""
        raise NotImplementedError

    def statistics(self) -> Statistics:
        """The statistics the method prunes with now (also what a statistics-based allocator, OWL, reads)."""
        raise NotImplementedError

    def prune(self, loaded: LoadedModel, config: PruneConfig, previous: Optional[PruneResult]) -> PruneResult:
        """This step's result; previous: the result of the step before (None at step 1)."""
        return prune_with_statistics(loaded, self.statistics(), config)

    @property
    def rule(self) -> str:
        """One sentence: how this strategy turns the domains into a mask (recorded in results)."""
        return self.description


class Latest(Strategy):
    """Holds the last observed domain's statistics only."""

    name = "latest"
    description = "the dense model pruned with the newest domain's statistics only"

    def __init__(self, method: Method):
        super().__init__(method)
        self.current: Optional[Statistics] = None

    def observe(self, statistics: Statistics) -> None:
        self.current = statistics

    def statistics(self) -> Statistics:
        if self.current is None:
            raise ConfigError("No domain observed yet.")
        return self.current


class Sequential(Latest):
    """Holds the last observed domain's statistics; prunes the previous step's pruned model."""

    name = "sequential"
    description = "the previous step's pruned model pruned again with the newest domain's statistics (masks grow)"
    plan_from_first_step = True
    uses_previous = True

    def prune(self, loaded: LoadedModel, config: PruneConfig, previous: Optional[PruneResult]) -> PruneResult:
        if previous is None:
            return super().prune(loaded, config, None)
        start = time.perf_counter()
        with previous.applied(loaded):  # the method reads the pruned (and, for SparseGPT, updated) weights
            again = prune_with_statistics(loaded, self.statistics(), config)
        # A weight pruned before is 0 in the model pruned again, so its score is the lowest: the method keeps it
        # only on a tie of zero scores (an input that never fires). Folding keeps it pruned: no weight regrows.
        masks = {name: keep & previous.masks[name] for name, keep in again.masks.items()}
        weights = ({name: w * masks[name].to(w.dtype) for name, w in again.weights.items()}
                   if again.weights is not None else None)
        for name, keep in masks.items():
            assert not (keep & ~previous.masks[name]).any(), f"sequential mask of {name} regrew a pruned weight"
        return result_from_masks(loaded, config, masks, weights, seconds=time.perf_counter() - start)


class Accumulated(Strategy):
    """Holds a `RunningStatistics` (token-weighted sums over the domains seen; no text, no token ids)."""

    name = "accumulated"
    description = "the dense model pruned with the token-weighted running mean of the statistics of D1..Dt"

    def __init__(self, method: Method):
        super().__init__(method)
        self.running = RunningStatistics(method.needs)

    def observe(self, statistics: Statistics) -> None:
        self.running.add(statistics)

    def statistics(self) -> Statistics:
        return self.running.mean()


class Joint(Accumulated):
    """Holds the running mean over EVERY domain of the sequence (it is given them all before step 1)."""

    name = "joint"
    description = "all domains' calibration windows at once (not continual: the reference line)"
    sees_all_domains = True
    static = True


class Copal(Accumulated):
    """Holds the running mean (for SparseGPT's Hessian and for allocation plans) and, per prunable linear,
    each observed domain's input norm vector act_sq_d (in,): the running statistics of the max rule."""

    name = "copal"
    description = RULE

    def __init__(self, method: Method):
        super().__init__(method)
        self.act_sq: dict[str, list[torch.Tensor]] = {}  # module name -> [act_sq_d (in,) for d <= t]

    def observe(self, statistics: Statistics) -> None:
        super().observe(statistics)
        if self.method.scores is not None:
            for name, stats in statistics.by_module.items():
                self.act_sq.setdefault(name, []).append(stats.act_sq.clone())

    @property
    def rule(self) -> str:
        return RULE if self.method.scores is not None else SPARSEGPT_NOTE

    def prune(self, loaded: LoadedModel, config: PruneConfig, previous: Optional[PruneResult]) -> PruneResult:
        if self.method.scores is None:  # SparseGPT: running-mean Hessian (see copal.SPARSEGPT_NOTE)
            return super().prune(loaded, config, previous)
        if self.method.name != "wanda":
            raise ConfigError(f"copal's max rule is defined on Wanda's importance; method '{self.method.name}' "
                              "is not supported. Use wanda or sparsegpt.")
        start = time.perf_counter()
        structure = config.structure_spec
        kinds = list(config.targets) if config.targets is not None else loaded.adapter.module_kinds
        masks: dict[str, torch.Tensor] = {}
        for index, layer in enumerate(loaded.adapter.decoder_layers(loaded.model)):
            linears = loaded.adapter.layer_linears(layer)
            for kind in kinds:
                name = loaded.adapter.qualified_name(index, kind)
                if name not in self.act_sq:
                    raise ConfigError(f"copal has no statistics for '{name}'; they were collected for another "
                                      "model.")
                module = linears[kind]
                matrix = weight_matrix(module).to(torch.float32)  # (out, in) dense weights
                sparsity = config.module_sparsity(index, kind)
                if structure.is_nm and sparsity == 0:  # a plan may leave modules dense beside N:M ones
                    keep = torch.ones_like(matrix, dtype=torch.bool)
                else:
                    keep = keep_mask_from_scores(copal_scores(matrix, self.act_sq[name]), sparsity, structure,
                                                 per_row=True)
                masks[name] = to_native(module, keep)
        return result_from_masks(loaded, config, masks, None, seconds=time.perf_counter() - start)


#: The registry: name -> strategy class. Order = the order pages and tables show them.
STRATEGIES: dict[str, Callable[[Method], Strategy]] = {
    cls.name: cls for cls in (Latest, Sequential, Accumulated, Copal, Joint)
}


def get_strategy(name: str, method: str | Method) -> Strategy:
    """A fresh strategy object called `name` pruning with `method`; unknown names list the known ones."""
    key = str(name).strip().lower()
    if key not in STRATEGIES:
        raise ConfigError(f"Unknown continual strategy '{name}'; choose from {', '.join(STRATEGIES)}.")
    method = get_method(method) if isinstance(method, str) else method
    if method.needs == "none":
        raise ConfigError(f"Method '{method.name}' uses no calibration data, so every continual strategy gives "
                          "the same mask; choose wanda or sparsegpt.")
    return STRATEGIES[key](method)


def strategy_descriptions() -> dict[str, dict[str, Any]]:
    """{name: {"description", "continual"}} for pages and help texts."""
    return {name: {"description": cls.description, "continual": not cls.sees_all_domains}
            for name, cls in STRATEGIES.items()}
