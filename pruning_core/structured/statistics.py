"""Calibration statistics for structured pruning, from one dense pass of THE layer walk.

For every decoder layer, the inputs of the two consumer linears (attention output o, MLP down/fc2/proj) are
the features structured units remove (concatenated heads, MLP channels). `collect_unit_statistics` walks the
layers once (`walk.walk_layers`, dense propagation) with hooks that accumulate, per consumer:
- the second moments X^T X in two folds (windows of even / odd index), so a compensation can choose its
  damping on windows it was not fitted on (`compensate`), and their sum is the layer's Hessian up to scale;
- the sum of x (its mean: FLAP's fluctuation and the bias correction need it);
and per layer the block influence 1 - cos(layer input, layer output) averaged over tokens (ShortGPT's
layer score). Dense statistics are reused for every ratio, score and compensation setting of one model and
calibration set; no raw activations are kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from pruning_core.errors import ConfigError
from pruning_core.models import LoadedModel
from pruning_core.progress import ProgressFn, no_progress
from pruning_core.stats import add_upper_gram, symmetric_from_upper
from pruning_core.structured.units import layout_for
from pruning_core.walk import capture_layer_inputs, walk_layers

FOLDS = 2


@dataclass
class ConsumerStatistics:
    """Input moments of one consumer linear (in = its input features), accumulated over calibration tokens.

    gram[f]: upper block triangle of sum over fold-f tokens of x x^T, (in, in) fp32; total[f]: sum of x
    (in,) fp64; tokens[f]: token count of fold f (fold = calibration window index mod 2).
    """

    columns: int
    gram: list = field(default_factory=list)
    total: list = field(default_factory=list)
    tokens: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.gram:
            self.gram = [torch.zeros(self.columns, self.columns) for _ in range(FOLDS)]
            self.total = [torch.zeros(self.columns, dtype=torch.float64) for _ in range(FOLDS)]
            self.tokens = [0] * FOLDS

    def add(self, x: torch.Tensor, fold: int) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
        add_upper_gram(self.gram[fold], x)
        self.total[fold] += x.sum(dim=0, dtype=torch.float64)
        self.tokens[fold] += x.shape[0]

    def moments(self, folds: Optional[tuple[int, ...]] = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(second moment E[x x^T] (in, in) fp64, mean E[x] (in,) fp64, tokens) over `folds` (None = all)."""
        folds = tuple(range(FOLDS)) if folds is None else folds
        n = sum(self.tokens[f] for f in folds)
        if n == 0:
            raise ConfigError("A statistics fold holds no calibration tokens; use at least 2 calibration windows.")
        gram = sum(symmetric_from_upper(self.gram[f]).to(torch.float64) for f in folds) / n
        mean = sum(self.total[f] for f in folds) / n
        return gram, mean, n

    @property
    def act_sq(self) -> torch.Tensor:
        """Mean over tokens of x_j^2, (in,) fp64."""
        gram, _, _ = self.moments()
        return torch.diagonal(gram).clone()


@dataclass
class UnitStatistics:
    """Per decoder layer: consumer kind -> ConsumerStatistics, and the layer's block influence.

    windows: calibration windows seen; tokens: calibration tokens; seconds: time of the walk.
    """

    consumers: list[dict[str, ConsumerStatistics]]
    block_influence: list[float]
    windows: int
    tokens: int
    seconds: float = 0.0


@torch.inference_mode()
def collect_unit_statistics(loaded: LoadedModel, calibration_ids: torch.Tensor, batch_size: int = 8,
                            progress: Optional[ProgressFn] = None, dtype: str = "float32") -> UnitStatistics:
    """One dense walk over `calibration_ids` (windows, seqlen) collecting `UnitStatistics` (see module doc)."""
    if calibration_ids is None or calibration_ids.ndim != 2 or calibration_ids.shape[0] < FOLDS:
        raise ConfigError(f"Structured pruning needs at least {FOLDS} calibration windows (a tensor of shape "
                          "(windows, seqlen)); choose more calibration samples.")
    progress = progress or no_progress
    start = time.perf_counter()
    layout = layout_for(loaded)
    layers = loaded.adapter.decoder_layers(loaded.model)
    consumers: list[dict[str, ConsumerStatistics]] = []
    influence_sum = [0.0] * len(layers)
    influence_count = [0] * len(layers)
    batch_index = [0]  # which batch of windows the layer is running (windows of the batch -> folds)
    handles = []

    def folds_of(rows: int) -> torch.Tensor:
        first = batch_index[0] * batch_size
        return torch.arange(first, first + rows) % FOLDS

    def consumer_hook(stats: ConsumerStatistics):
        def hook(module, args):  # noqa: ARG001 - torch hook signature
            x = args[0]
            folds = folds_of(x.shape[0])
            for fold in range(FOLDS):
                chosen = x[folds == fold]
                if chosen.numel():
                    stats.add(chosen, fold)
        return hook

    def layer_hook(index: int):
        def hook(module, args, kwargs, output):  # noqa: ARG001 - torch hook signature
            states = args[0] if args else kwargs["hidden_states"]
            out = output[0] if isinstance(output, (tuple, list)) else output
            cos = torch.nn.functional.cosine_similarity(states.float(), out.float(), dim=-1)
            influence_sum[index] += float((1.0 - cos).sum())
            influence_count[index] += cos.numel()
            batch_index[0] += 1
        return hook

    try:
        for index, layer in enumerate(layers):
            linears = loaded.adapter.layer_linears(layer)
            stats = {kind: ConsumerStatistics(int(_in_features(linears[kind]))) for kind in
                     (layout.o, layout.mlp_consumer)}
            consumers.append(stats)
            for kind, value in stats.items():
                handles.append(linears[kind].register_forward_pre_hook(consumer_hook(value)))
            handles.append(layer.register_forward_hook(layer_hook(index), with_kwargs=True))
        progress(0.0, "capturing layer-0 inputs")
        inputs = capture_layer_inputs(loaded, calibration_ids, batch_size)

        def on_layer(index, layer, stats) -> bool:  # noqa: ARG001 - LayerHandler signature
            batch_index[0] = 0  # the next layer starts from the first batch again
            return False

        batch_index[0] = 0
        walk_layers(loaded, inputs, on_layer, need="none", propagation="dense", progress=progress, dtype=dtype)
    finally:
        for handle in handles:
            handle.remove()
    influence = [s / max(c, 1) for s, c in zip(influence_sum, influence_count)]
    return UnitStatistics(consumers, influence, int(calibration_ids.shape[0]), int(calibration_ids.numel()),
                          time.perf_counter() - start)


def _in_features(module) -> int:
    from pruning_core.models import weight_matrix

    return weight_matrix(module).shape[1]
