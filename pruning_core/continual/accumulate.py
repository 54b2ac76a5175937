"""Token-weighted running mean of dense input statistics over the domains seen so far.

After domains D1..Dt with n_d calibration tokens each, the running mean holds, per prunable linear,
    act_sq = sum_d n_d act_sq_d / sum_d n_d        (Wanda's mean squared input norm, (in,))
    H      = sum_d n_d H_d / sum_d n_d             (SparseGPT's 2 X X^T / n, (in, in), only when collected)
which is exactly what one dense walk over the union of the calibration windows would give (both are sums over
tokens divided by the token count), so "accumulated" statistics equal "joint" statistics of D1..Dt. Only these
sums are kept: no token ids, no text, no per-domain copy of earlier domains.

Linears that read the same input (q/k/v, gate/up) share one statistics object in a walk's result; the running
mean keeps that sharing (one sum per distinct input), so SparseGPT still prunes them as one group.
"""

from __future__ import annotations

from typing import Optional

import torch

from pruning_core.errors import ConfigError
from pruning_core.prune import Statistics
from pruning_core.stats import InputStatistics


class _Sum:
    """Sums over tokens of one input: token count, sum of x_j^2 (float64), sum of X X^T (float32 or None)."""

    def __init__(self, stats: InputStatistics, hessian: bool):
        self.tokens = 0
        self.sum_sq = torch.zeros(stats.columns, dtype=torch.float64)  # (in,)
        self.xxt: Optional[torch.Tensor] = (torch.zeros(stats.columns, stats.columns, dtype=torch.float32)
                                            if hessian else None)   # (in, in)

    def add(self, stats: InputStatistics) -> None:
        self.tokens += stats.tokens
        self.sum_sq += stats.sum_sq
        if self.xxt is not None:
            self.xxt += stats.hessian * (stats.tokens / 2.0)  # H = 2 X X^T / n  ->  X X^T = H n / 2

    def mean(self) -> InputStatistics:
        tokens = max(self.tokens, 1)
        state = {"act_sq": (self.sum_sq / tokens).to(torch.float32), "tokens": torch.tensor([self.tokens])}
        if self.xxt is not None:
            state["hessian"] = self.xxt * (2.0 / tokens)
        return InputStatistics.from_state(state)


class RunningStatistics:
    """The running mean of `Statistics` of one kind ("act_sq" or "hessian") over the domains added so far.

    need: the statistics the method prunes with; Hessians are summed only for "hessian" (they are large).
    While a single domain has been added, `mean()` is that domain's own `Statistics` (the mean of one value is
    the value), so one step gives bit for bit the plain prune's masks; from the second domain on it holds sums.
    """

    def __init__(self, need: str):
        if need not in ("act_sq", "hessian"):
            raise ConfigError(f"Running statistics are of kind 'act_sq' or 'hessian', not '{need}'.")
        self.need = need
        self.domains = 0       # how many domains were added
        self.tokens = 0        # calibration tokens over all of them (per input; every input sees every token)
        self._single: Optional[Statistics] = None  # the only domain so far (dropped when the second arrives)
        self._sums: dict[str, _Sum] = {}           # owner module name -> sums
        self._owner: dict[str, str] = {}           # module name -> owner module name (shared inputs)

    def add(self, statistics: Statistics) -> None:
        """Fold one domain's dense statistics into the mean."""
        if not statistics.covers(self.need):
            raise ConfigError(f"The running mean needs '{self.need}' statistics but got '{statistics.need}'.")
        if self.domains == 1:
            first, self._single = self._single, None
            self._fold(first)
        if self.domains == 0:
            self._single = statistics
        else:
            self._fold(statistics)
        self.domains += 1
        self.tokens += _tokens(statistics)

    def _fold(self, statistics: Statistics) -> None:
        if not self._owner:
            owners: dict[int, str] = {}
            for name, stats in statistics.by_module.items():
                self._owner[name] = owners.setdefault(id(stats), name)
                if self._owner[name] == name:
                    self._sums[name] = _Sum(stats, self.need == "hessian")
        missing = sorted(set(self._owner) - set(statistics.by_module))
        if missing:
            raise ConfigError(f"Statistics of this domain miss modules {missing[:3]}; they were collected for "
                              "another model. Recompute them for this model.")
        for name, total in self._sums.items():
            total.add(statistics.by_module[name])

    def mean(self) -> Statistics:
        """The token-weighted mean over the domains added so far, as `Statistics` for `prune_with_statistics`."""
        if self.domains == 0:
            raise ConfigError("No domain has been added to the running statistics yet.")
        if self._single is not None:
            return self._single
        means = {owner: total.mean() for owner, total in self._sums.items()}
        return Statistics(self.need, {name: means[owner] for name, owner in self._owner.items()})


def _tokens(statistics: Statistics) -> int:
    return max((s.tokens for s in statistics.by_module.values()), default=0)
