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

Memory: a layer's statistics exist from its walk on; above `SPILL_ABOVE_BYTES` for the whole model, each layer's
are written to a private temporary folder as soon as it is walked (`SpilledLayers`) and read back one layer at a
time by the pruning, so the walk and the pruning hold one layer's statistics, not the model's (17 GB at
Llama-3.2-3B's widths, more than the model's bf16 weights).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

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


# Statistics of a whole model above this many bytes are kept on disk, one layer in memory at a time: the embedded
# model's 0.64 GB and anything larger (SmolLM2-360M 1.9 GB, TinyLlama-1.1B 6.3 GB), so the default path is the
# one that scales; smaller ones (the tests' tiny models) stay in memory.
SPILL_ABOVE_BYTES = 512 * 2 ** 20


def statistics_bytes(columns: dict[str, int]) -> int:
    """Bytes of one layer's `ConsumerStatistics`: per consumer of `columns` input features, FOLDS fp32 Gram
    matrices and fp64 sums."""
    return sum(FOLDS * (4 * c * c + 8 * c) for c in columns.values())


SPILL_PREFIX = "unit-statistics-"


def scratch_dir() -> Path:
    """Where spilled statistics go: `scratch/` in PruneScope's data folder (`home.home_dir`), on disk where the
    system's /tmp may be memory (tmpfs), with the folders of processes that no longer run (a worker killed for
    memory cannot remove its own) removed first."""
    from pruning_core.home import home_dir
    from pruning_core.processes import process_exists

    folder = home_dir() / "scratch"
    folder.mkdir(exist_ok=True)
    mine = _owner_prefix("")
    for stale in folder.glob(f"{mine}*"):  # this host's only: a shared home's other machines have their own PIDs
        pid = stale.name[len(mine):].split("-", 1)[0]
        if pid.isdigit() and not process_exists(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return folder


def _owner_prefix(pid) -> str:
    """Folder name prefix naming this host and `pid` (a host name's own dashes become underscores)."""
    return f"{SPILL_PREFIX}{socket.gethostname().replace('-', '_')}-{pid}"


class SpilledLayers(Sequence):
    """Per-layer consumer statistics ({kind: ConsumerStatistics}) in a private folder (`scratch_dir`, or `where`),
    one safetensors file per layer, read back on each access (the caller holds one layer at a time). The folder is
    removed when this object is collected (or at exit)."""

    def __init__(self, where: Optional[Union[str, Path]] = None):
        where = Path(where) if where is not None else scratch_dir()
        self.folder = Path(tempfile.mkdtemp(prefix=f"{_owner_prefix(os.getpid())}-", dir=where))
        self.columns: list[dict[str, int]] = []  # per layer, consumer kind -> input features (no file read)
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.folder), True)

    def append(self, layer: dict[str, "ConsumerStatistics"]) -> None:
        """Write one layer's statistics (the next index) to disk; the caller then drops its copy."""
        from safetensors.torch import save_file

        tensors, metadata = {}, {}
        columns = {kind: stats.columns for kind, stats in layer.items()}
        for kind, stats in layer.items():
            for fold in range(FOLDS):
                tensors[f"{kind}.gram.{fold}"] = stats.gram[fold]
                tensors[f"{kind}.total.{fold}"] = stats.total[fold]
            metadata[kind] = json.dumps({"columns": stats.columns, "tokens": list(stats.tokens)})
        path = self.folder / f"layer-{len(self.columns)}.safetensors"
        part = path.with_suffix(".part")
        try:
            save_file(tensors, str(part), metadata=metadata)
            os.replace(part, path)  # a file under its final name is whole
        except OSError as exc:
            part.unlink(missing_ok=True)
            need = statistics_bytes(columns) / 1e9
            raise ConfigError(f"Structured pruning could not write a layer's statistics ({need:.2f} GB) to "
                              f"{self.folder.parent} ({exc.strerror or exc}); free disk space there or set "
                              "PRUNESCOPE_HOME to a folder on a disk with room for every layer's.") from exc
        self.columns.append(columns)

    def __len__(self) -> int:
        return len(self.columns)

    def __getitem__(self, index: int) -> dict[str, "ConsumerStatistics"]:
        from safetensors import safe_open

        if not isinstance(index, int):
            raise TypeError("SpilledLayers is indexed by one layer index at a time.")
        index = range(len(self))[index]  # negative indices, and IndexError past the end
        out = {}
        with safe_open(str(self.folder / f"layer-{index}.safetensors"), framework="pt") as handle:
            metadata = handle.metadata()
            for kind in self.columns[index]:
                facts = json.loads(metadata[kind])
                # clone: the tensors own their memory, not a mapping of the file that outlives this call
                out[kind] = ConsumerStatistics(
                    facts["columns"],
                    gram=[handle.get_tensor(f"{kind}.gram.{f}").clone() for f in range(FOLDS)],
                    total=[handle.get_tensor(f"{kind}.total.{f}").clone() for f in range(FOLDS)],
                    tokens=list(facts["tokens"]))
        return out


@dataclass
class UnitStatistics:
    """Per decoder layer: consumer kind -> ConsumerStatistics, and the layer's block influence.

    consumers: a list in memory, or `SpilledLayers` on disk (index one layer at a time and keep the result only
    while it is used); windows: calibration windows seen; tokens: calibration tokens; seconds: time of the walk.
    """

    consumers: Union[list[dict[str, ConsumerStatistics]], SpilledLayers]
    block_influence: list[float]
    windows: int
    tokens: int
    seconds: float = 0.0

    def columns(self, index: int, kind: str) -> int:
        """Input features of layer `index`'s consumer `kind` (without reading spilled statistics back)."""
        if isinstance(self.consumers, SpilledLayers):
            return self.consumers.columns[index][kind]
        return self.consumers[index][kind].columns


@torch.inference_mode()
def collect_unit_statistics(loaded: LoadedModel, calibration_ids: torch.Tensor, batch_size: int = 8,
                            progress: Optional[ProgressFn] = None, dtype: str = "float32",
                            spill_above_bytes: Optional[int] = SPILL_ABOVE_BYTES) -> UnitStatistics:
    """One dense walk over `calibration_ids` (windows, seqlen) collecting `UnitStatistics` (see module doc).

    spill_above_bytes: keep the statistics on disk (`SpilledLayers`) when the whole model's exceed this many
    bytes (0: always; None: never)."""
    if calibration_ids is None or calibration_ids.ndim != 2 or calibration_ids.shape[0] < FOLDS:
        raise ConfigError(f"Structured pruning needs at least {FOLDS} calibration windows (a tensor of shape "
                          "(windows, seqlen)); choose more calibration samples.")
    progress = progress or no_progress
    start = time.perf_counter()
    layout = layout_for(loaded)
    layers = loaded.adapter.decoder_layers(loaded.model)
    kinds = (layout.o, layout.mlp_consumer)
    widths = [{k: int(_in_features(loaded.adapter.layer_linears(layer)[k])) for k in kinds} for layer in layers]
    total_bytes = sum(statistics_bytes(w) for w in widths)
    spill = spill_above_bytes is not None and total_bytes > spill_above_bytes
    consumers: Union[list[dict[str, ConsumerStatistics]], SpilledLayers] = SpilledLayers() if spill else []
    walked: dict[str, ConsumerStatistics] = {}  # the layer being walked (its statistics exist from then on)
    layer_handles: list = []
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

    def attach(index: int) -> None:
        """Statistics and hooks of layer `index`, created when its walk begins."""
        linears = loaded.adapter.layer_linears(layers[index])
        walked.clear()
        walked.update({kind: ConsumerStatistics(widths[index][kind]) for kind in kinds})
        for kind, value in walked.items():
            layer_handles.append(linears[kind].register_forward_pre_hook(consumer_hook(value)))

    try:
        for index, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(layer_hook(index), with_kwargs=True))
        attach(0)
        progress(0.0, "capturing layer-0 inputs")
        inputs = capture_layer_inputs(loaded, calibration_ids, batch_size)

        def on_layer(index, layer, stats) -> bool:  # noqa: ARG001 - LayerHandler signature
            batch_index[0] = 0  # the next layer starts from the first batch again
            while layer_handles:
                layer_handles.pop().remove()
            consumers.append(dict(walked))  # on disk when spilling: the memory goes with `walked`'s next layer
            if index + 1 < len(layers):
                attach(index + 1)
            else:
                walked.clear()
            return False

        batch_index[0] = 0
        walk_layers(loaded, inputs, on_layer, need="none", propagation="dense", progress=progress, dtype=dtype)
    finally:
        for handle in handles + layer_handles:
            handle.remove()
    influence = [s / max(c, 1) for s, c in zip(influence_sum, influence_count)]
    return UnitStatistics(consumers, influence, int(calibration_ids.shape[0]), int(calibration_ids.numel()),
                          time.perf_counter() - start)


def _in_features(module) -> int:
    from pruning_core.models import weight_matrix

    return weight_matrix(module).shape[1]
