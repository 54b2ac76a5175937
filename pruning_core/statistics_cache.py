"""Dense-model input statistics cached on disk, keyed by what determines them.

Key = content hash of (model weight fingerprint, calibration corpus identity, nsamples, seqlen, seed, the
statistics kind). The tensors live in one safetensors artifact of the store; the SQLite row records which
modules share one statistics object (q/k/v and gate/up read the same input), so each Hessian is stored once.
Computed once, the statistics serve every method, sparsity, page and process.
"""

from __future__ import annotations

from typing import Optional

import torch

from pruning_core.devices.placement import LayerOffload, device_key
from pruning_core.methods import NEEDS, covers
from pruning_core.models import LoadedModel
from pruning_core.progress import ProgressFn
from pruning_core.protocol import Protocol, calibration_ids, corpus_key
from pruning_core.prune import Statistics, collect_statistics
from pruning_core.stats import InputStatistics

def statistics_key(loaded: LoadedModel, protocol: Protocol, need: str,
                   offload: Optional[LayerOffload] = None) -> dict:
    """Everything that determines dense statistics (hash it with `store.content_hash`).

    A walk on a GPU (`offload` to a non-CPU device) is keyed apart (`devices.placement.device_key`).
    """
    key = {
        "kind": "dense_statistics",
        "need": need,
        "model": loaded.fingerprint,
        "calib": corpus_key(protocol.calib, "calibration", protocol.calib_column),
        "nsamples": protocol.nsamples,
        "seqlen": protocol.seqlen,
        "seed": protocol.seed,
    }
    device = device_key(offload)
    if device is not None:
        key["device"] = device
    return key


def cached_statistics(loaded: LoadedModel, protocol: Protocol, need: str, store=None,
                      calib_ids: Optional[torch.Tensor] = None,
                      progress: Optional[ProgressFn] = None,
                      offload: Optional[LayerOffload] = None) -> Statistics:
    """Dense statistics of kind `need` ("act_sq" or "hessian"): from the store if present, else computed
    (one dense layer walk, on the offload's compute device when one is given) and saved. Hessian statistics
    also serve an "act_sq" request."""
    key = None
    if store is not None:
        from pruning_core.store import content_hash

        for candidate in [n for n in NEEDS if n != "none" and covers(n, need)]:  # smallest first
            found = store.get_result(content_hash(statistics_key(loaded, protocol, candidate, offload)))
            if found is not None and store.artifact_info(found["artifact"]) is not None:
                return _from_artifact(store, found, candidate)
        key = content_hash(statistics_key(loaded, protocol, need, offload))
    ids = calib_ids if calib_ids is not None else calibration_ids(loaded, protocol)
    statistics = collect_statistics(loaded, ids, need, protocol.batch_size, progress, offload=offload)
    if key is not None:
        _save(store, statistics, key)
    return statistics


def _save(store, statistics: Statistics, key: str) -> None:
    tensors: dict[str, torch.Tensor] = {}
    owner_of: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, stats in statistics.by_module.items():
        owner = owner_of.setdefault(id(stats), name)
        aliases[name] = owner
        if owner == name:
            for field, tensor in stats.state().items():
                tensors[f"{name}/{field}"] = tensor.contiguous()
    artifact = store.save_tensors(tensors, "dense_statistics")
    store.put_result(key, "dense_statistics", {"artifact": artifact, "aliases": aliases, "need": statistics.need,
                                               "seconds": statistics.seconds})


def _from_artifact(store, found: dict, need: str) -> Statistics:
    tensors = store.load_tensors(found["artifact"])
    owners: dict[str, InputStatistics] = {}
    by_module = {}
    for name, owner in found["aliases"].items():
        if owner not in owners:
            prefix = owner + "/"
            owners[owner] = InputStatistics.from_state(
                {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        by_module[name] = owners[owner]
    return Statistics(need, by_module, 0.0)
