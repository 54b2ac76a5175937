"""THE evaluation of a pruning setting: dense and pruned perplexity per corpus, with the protocol and timings.

Every feature that shows a quality figure (sweep points, what-if, export and its curve points, apply-mask, and
later allocation, recovery and continual pruning) calls `evaluate_setting`; `metrics.perplexity` stays the
low-level primitive and is called from here only (a test checks it).

The dense model's perplexity on a corpus is measured once per (model weights, corpus text, seqlen, evaluation
windows, dtype) and kept in the store, so a sweep, a what-if and an export of the same model reuse it instead
of re-measuring the dense model each time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union

import torch

from pruning_core import metrics
from pruning_core.data import corpus_display_name
from pruning_core.devices.placement import LayerOffload, device_key
from pruning_core.errors import ConfigError
from pruning_core.masks import masks_applied_per_forward
from pruning_core.models import LoadedModel
from pruning_core.progress import ProgressFn, no_progress, sub_progress
from pruning_core.protocol import Protocol, corpus_key, evaluation_ids

#: Pass as `pruned` when the model itself is already pruned (masks applied permanently, as apply-mask does).
IN_PLACE = "in_place"

#: What `pruned` may be: a `PruneResult` (or anything with `.masks` and `.weights`), a {name: keep mask} dict,
#: `IN_PLACE`, or None (dense only).
Pruned = Union[Any, Mapping[str, torch.Tensor], str, None]


@dataclass
class Evaluation:
    """Perplexities of one setting. Dicts are keyed by corpus name, in the order asked.

    dense_ppl / pruned_ppl: exp(mean token NLL) (perplexity has no unit); {} when not measured.
    windows: evaluation windows actually used per corpus (a short split has fewer than `eval_windows`).
    dense_seconds / pruned_seconds: wall seconds of each measurement (0.0 for a dense value reused from the store).
    dense_cached: corpora whose dense value came from the store.
    protocol: `Protocol.to_dict()` plus "eval_corpora" and "eval_windows_used".
    """

    dense_ppl: dict[str, float] = field(default_factory=dict)
    pruned_ppl: dict[str, float] = field(default_factory=dict)
    windows: dict[str, int] = field(default_factory=dict)
    dense_seconds: dict[str, float] = field(default_factory=dict)
    pruned_seconds: dict[str, float] = field(default_factory=dict)
    dense_cached: list[str] = field(default_factory=list)
    protocol: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """Wall seconds spent measuring (dense and pruned, all corpora)."""
        return sum(self.dense_seconds.values()) + sum(self.pruned_seconds.values())

    def change(self, corpus: str) -> Optional[float]:
        """Relative perplexity change pruned / dense - 1 on `corpus` (0.09 = 9 % worse), or None."""
        if corpus in self.dense_ppl and corpus in self.pruned_ppl and self.dense_ppl[corpus] > 0:
            return self.pruned_ppl[corpus] / self.dense_ppl[corpus] - 1.0
        return None

    def to_dict(self) -> dict:
        return asdict(self)


def evaluation_windows(loaded: LoadedModel, protocol: Protocol, eval_corpora: Sequence[str]) -> dict[str, torch.Tensor]:
    """Evaluation windows (n, seqlen) of every corpus; read them all before expensive work so a bad corpus
    fails first. A corpus with no full window raises a ConfigError naming it."""
    if not eval_corpora:
        raise ConfigError("No evaluation corpus given; choose at least one, e.g. wiki.")
    return {corpus: evaluation_ids(loaded, corpus, protocol) for corpus in eval_corpora}


def protocol_record(protocol: Protocol, eval_ids: Mapping[str, torch.Tensor], **extra: Any) -> dict:
    """The protocol as every result records it: its fields, the corpora and the windows actually used."""
    return {**protocol.to_dict(), "eval_corpora": list(eval_ids),
            "eval_windows_used": {c: int(ids.shape[0]) for c, ids in eval_ids.items()}, **extra}


def dense_key(loaded: LoadedModel, protocol: Protocol, corpus: str,
              offload: Optional[LayerOffload] = None) -> dict:
    """Everything that determines the dense perplexity on `corpus` (hash it with `store.content_hash`).

    Calibration settings do not enter: the dense model needs no calibration data. The device does when it is
    not the CPU (`devices.placement.device_key`).
    """
    from pruning_core.provenance import library_versions

    versions = library_versions()
    key = {"kind": "dense_ppl", "model": loaded.fingerprint, "corpus": corpus_key(corpus, "evaluation")["sha256"],
           "seqlen": protocol.seqlen, "eval_windows": protocol.eval_windows, "dtype": protocol.dtype,
           "versions": {k: versions[k] for k in ("prunescope", "torch", "transformers")}}
    device = device_key(offload)
    if device is not None:
        key["device"] = device
    return key


def _masks_context(loaded: LoadedModel, pruned: Pruned):
    """The model with `pruned` applied to every forward, restored on exit (a no-op for IN_PLACE); perplexity only
    runs forwards, so each module is pruned during its own forward and one matrix's copy is alive at a time."""
    if isinstance(pruned, str):
        if pruned != IN_PLACE:
            raise ConfigError(f"Unknown pruned setting '{pruned}'; pass masks, a PruneResult or IN_PLACE.")
        return contextlib.nullcontext()
    if hasattr(pruned, "masks"):
        return masks_applied_per_forward(loaded.model, pruned.masks, getattr(pruned, "weights", None))
    masks = pruned if isinstance(pruned, Mapping) else dict(pruned)  # a `PackedMasks` stays packed
    return masks_applied_per_forward(loaded.model, masks, None)


def _measure(loaded: LoadedModel, ids: torch.Tensor, dtype: str, what: str, corpus: str,
             progress: ProgressFn, offload: Optional[LayerOffload] = None) -> metrics.PerplexityResult:
    n = int(ids.shape[0])

    def report(fraction: float, message: str) -> None:  # noqa: ARG001 - say what is evaluated, not "i/n"
        progress(fraction, f"{what} perplexity on {corpus_display_name(corpus)}, window {max(1, min(n, round(fraction * n)))}/{n}")

    progress(0.0, f"{what} perplexity on {corpus_display_name(corpus)}: {n} windows of {ids.shape[1]} tokens")  # before the 1st batch
    return metrics.perplexity(loaded, ids, dtype=dtype, progress=report, offload=offload)


def bf16_agreement(loaded: LoadedModel, ids: torch.Tensor, offload: Optional[LayerOffload] = None,
                   batch_size: int = 4) -> dict:
    """How far bf16 autocast moves perplexity from fp32 on the windows `ids` (n, seqlen; a few suffice).

    Returns {"fp32": ppl, "bf16": ppl, "relative_gap": bf16 / fp32 - 1, "windows": n}. This is what "bf16 by
    default on GPUs with verified agreement" (`devices.placement.default_dtype`) checks; the decision (e.g.
    accept bf16 when |gap| <= 0.5 %, the fidelity tolerance used for the calibration dtype) is the caller's,
    who should record the figure beside the results it justifies.
    """
    fp32 = metrics.perplexity(loaded, ids, batch_size=batch_size, dtype="float32", offload=offload)
    bf16 = metrics.perplexity(loaded, ids, batch_size=batch_size, dtype="bfloat16", offload=offload)
    return {"fp32": fp32.ppl, "bf16": bf16.ppl, "relative_gap": bf16.ppl / fp32.ppl - 1.0,
            "windows": int(ids.shape[0])}


def timed_perplexity(loaded: LoadedModel, ids: torch.Tensor, dtype: str = "float32", batch_size: int = 8,
                     offload: Optional[LayerOffload] = None) -> metrics.PerplexityResult:
    """One perplexity measurement of the model as it is on `ids` (n, seqlen), for its timing: the throughput
    an estimate is built on (`analysis.estimates.measure_throughput`) on a device reached through `offload`."""
    return metrics.perplexity(loaded, ids, batch_size=batch_size, dtype=dtype, offload=offload)


def paired_comparison(first: LoadedModel, second: LoadedModel, ids: torch.Tensor, batch_size: int = 4,
                      dtype: str = "float32") -> dict:
    """Whether `second` predicts the windows `ids` (n, seqlen) better than `first`, beyond the noise of a finite
    evaluation set: both models score the same windows, so the per-window difference cancels what makes one
    window hard for both, and its spread over windows gives the uncertainty.

    first, second: `LoadedModel`s (or objects with a `.model` that `metrics.window_nll` accepts, e.g. a model
    with an adapter attached). Returns {"windows", "nll_difference" (mean over windows of second's minus first's
    mean token NLL, nats; negative = second is better), "standard_error" (nats), "z" (difference / error),
    "ppl_ratio" (second / first, exp of the difference), "ppl_ratio_95" ([low, high], +-1.96 errors)}.
    """
    import math

    per_window = []
    for loaded in (first, second):
        with torch.inference_mode(), metrics.autocast_for(dtype):
            sums = torch.cat([metrics.window_nll(loaded, batch).double()
                              for batch in metrics.batches_of(ids, batch_size)])
        per_window.append(sums / (ids.shape[1] - 1))
    difference = per_window[1] - per_window[0]
    n = int(difference.numel())
    mean = float(difference.mean())
    error = float(difference.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return {"windows": n, "nll_difference": mean, "standard_error": error,
            "z": mean / error if error and error > 0 else float("nan"), "ppl_ratio": math.exp(mean),
            "ppl_ratio_95": [math.exp(mean - 1.96 * error), math.exp(mean + 1.96 * error)]}


def evaluate_setting(loaded: LoadedModel, protocol: Protocol, eval_corpora: Sequence[str],
                     pruned: Pruned = None, *, dense: bool = True,
                     eval_ids: Optional[Mapping[str, torch.Tensor]] = None, store=None,
                     progress: Optional[ProgressFn] = None, label: str = "pruned",
                     offload: Optional[LayerOffload] = None) -> Evaluation:
    """Dense and pruned perplexity of `loaded` on each corpus, under `protocol`.

    pruned: the setting to measure (see `Pruned`); None measures the dense model only. Masks are applied in a
    context manager, so the model is left as it was.
    dense: also give the dense perplexity: reused from `store` when stored there, else measured (and stored).
    With `pruned=IN_PLACE` the dense model is no longer in memory, so a dense value comes only from the store.
    eval_ids: already-read windows per corpus (default: read them from `protocol`).
    label: how progress messages name the pruned model ("pruned", "wanda 50 %", ...).
    offload: an `devices.placement.LayerOffload`: evaluate layer by layer on its compute device (a GPU).
    """
    progress = progress or no_progress
    protocol = protocol.validate()
    eval_ids = dict(eval_ids) if eval_ids is not None else evaluation_windows(loaded, protocol, eval_corpora)
    missing = [c for c in eval_corpora if c not in eval_ids]
    if missing:
        raise ConfigError(f"No evaluation windows were read for {missing}.")
    eval_ids = {c: eval_ids[c] for c in eval_corpora}
    out = Evaluation(windows={c: int(ids.shape[0]) for c, ids in eval_ids.items()},
                     protocol=protocol_record(protocol, eval_ids))

    dense_todo: list[str] = []
    keys: dict[str, str] = {}
    if dense:
        for corpus in eval_ids:
            if store is not None:
                from pruning_core.store import content_hash

                keys[corpus] = content_hash(dense_key(loaded, protocol, corpus, offload))
                stored = store.get_result(keys[corpus])
                if stored is not None:
                    out.dense_ppl[corpus], out.dense_seconds[corpus] = float(stored["ppl"]), 0.0
                    out.dense_cached.append(corpus)
                    continue
            if pruned != IN_PLACE:  # a model pruned in place cannot give its dense perplexity
                dense_todo.append(corpus)
    pruned_todo = list(eval_ids) if pruned is not None else []

    # Progress: each measurement's share is its number of windows.
    steps = [("dense", c) for c in dense_todo] + [(label, c) for c in pruned_todo]
    total = sum(int(eval_ids[c].shape[0]) for _, c in steps) or 1
    done = 0

    def step(corpus: str) -> ProgressFn:
        nonlocal done
        lo, done = done, done + int(eval_ids[corpus].shape[0])
        return sub_progress(progress, lo / total, done / total)

    for corpus in dense_todo:
        result = _measure(loaded, eval_ids[corpus], protocol.dtype, "dense", corpus, step(corpus),
                          offload)
        out.dense_ppl[corpus], out.dense_seconds[corpus] = result.ppl, result.seconds
        if store is not None:
            store.put_result(keys[corpus], "dense_ppl", {"corpus": corpus, **result.to_dict()})
    if pruned_todo:
        with _masks_context(loaded, pruned):
            for corpus in pruned_todo:
                result = _measure(loaded, eval_ids[corpus], protocol.dtype, label, corpus, step(corpus),
                                  offload)
                out.pruned_ppl[corpus], out.pruned_seconds[corpus] = result.ppl, result.seconds
    # Keep the caller's corpus order in every dict (stored values were filled first).
    out.dense_ppl = {c: out.dense_ppl[c] for c in eval_ids if c in out.dense_ppl}
    out.dense_seconds = {c: out.dense_seconds[c] for c in eval_ids if c in out.dense_seconds}
    return out
