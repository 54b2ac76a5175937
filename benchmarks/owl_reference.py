"""OWL check: the `owl` allocator's per-layer sparsities against an independent computation of the paper's recipe.

The reference here shares nothing with the library's statistics or allocators: it hooks every `nn.Linear` inside
each decoder layer of the embedded model (found by type, not through our adapter), runs the whole dense model
over the calibration windows in one ordinary forward pass per batch, sums x_j^2 per input feature, and then
follows OWL's reference code (github.com/luuyin/OWL, lib/prune_all.py, `prune_wanda_outlier`): per layer,
scores |W_ij| * ||X_j||_2 of all seven linears together, outlier ratio = % of scores above M x their mean,
ratios min-max scaled to [0, 2 lambda], density = scaled - mean(scaled) + (1 - target), sparsity = 1 - density.
The library's side is `collect_statistics` (its layer walk) + `make_plan("owl", ...)`.

Protocol: embedded model, 64 x 512 wiki calibration windows, seed 0; target 70 %, M = 5, lambda = 0.08.
Prints one JSON document and writes docs/runs/owl-reference.json (19 min on 2 shared cores: 11 for the
reference pass in float64, 7 for the layer walk).

    python benchmarks/owl_reference.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from pruning_core.allocation.allocators import AllocationInputs, make_plan  # noqa: E402
from pruning_core.plan import module_sizes  # noqa: E402
from pruning_core.models import load_model  # noqa: E402
from pruning_core.protocol import Protocol, calibration_ids  # noqa: E402
from pruning_core.prune import collect_statistics  # noqa: E402

OUT = ROOT / "docs" / "runs" / "owl-reference.json"
TARGET, M, LAMBDA = 0.70, 5.0, 0.08
PROTOCOL = Protocol(calib="wiki", nsamples=64, seqlen=512, seed=0)
BATCH = 4
AGREEMENT_PP = 1.5


def cpu_model() -> str | None:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)


def reference_ratios(model: nn.Module, ids: torch.Tensor) -> list[float]:
    """OWL outlier ratios (%) per decoder layer from hooks on the dense model's own forward pass."""
    layers = model.model.layers  # Llama layout of the embedded model
    linears = [[m for m in layer.modules() if isinstance(m, nn.Linear)] for layer in layers]
    sums = {id(m): torch.zeros(m.in_features, dtype=torch.float64) for group in linears for m in group}

    def hook(module, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
        sums[id(module)] += x.square().sum(dim=0)

    handles = [m.register_forward_pre_hook(hook) for group in linears for m in group]
    try:
        with torch.no_grad():
            for start in range(0, ids.shape[0], BATCH):
                model(input_ids=ids[start:start + BATCH], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    ratios = []
    for group in linears:
        assert len(group) == 7, f"expected the seven linears of a Llama layer, found {len(group)}"
        scores = torch.cat([(m.weight.detach().double().abs() * sums[id(m)].sqrt()[None, :]).flatten()
                            for m in group])
        ratios.append(100.0 * float((scores > M * scores.mean()).double().mean()))
    return ratios


def owl_layer_sparsities(ratios: list[float]) -> list[float]:
    """OWL's mapping from outlier ratios to per-layer sparsities, as the authors' code does it."""
    r = np.asarray(ratios, dtype=np.float64)
    r = (r - r.min()) * (1.0 / (r.max() - r.min()) * LAMBDA * 2)
    density = r - np.mean(r) + (1 - TARGET)
    return [float(1 - d) for d in density]


def main() -> dict:
    torch.set_num_threads(2)
    loaded = load_model("embedded")
    ids = calibration_ids(loaded, PROTOCOL)

    t0 = time.perf_counter()
    ratios = reference_ratios(loaded.model, ids)
    reference = owl_layer_sparsities(ratios)
    t_reference = time.perf_counter() - t0

    t0 = time.perf_counter()
    stats = collect_statistics(loaded, ids, "act_sq", batch_size=PROTOCOL.batch_size)
    plan = make_plan("owl", AllocationInputs(loaded, statistics=stats, options={"M": M, "lambda": LAMBDA}), TARGET)
    t_ours = time.perf_counter() - t0
    ours = [row[0] for row in plan.values]

    differences = [100.0 * abs(a - b) for a, b in zip(ours, reference)]
    result = {
        "model": loaded.name,
        "protocol": PROTOCOL.to_dict(),
        "target": TARGET, "M": M, "lambda": LAMBDA,
        "max_layer_difference_pp": max(differences),
        "agrees_within_pp": AGREEMENT_PP,
        "agrees": max(differences) <= AGREEMENT_PP,
        "ours_per_layer": ours,
        "reference_per_layer": reference,
        "reference_outlier_ratios_percent": ratios,
        "ours_global_sparsity_by_parameters": plan.global_sparsity(module_sizes(loaded)),
        "seconds": {"reference": t_reference, "ours": t_ours},
        "machine": {"cpu_model": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "torch": torch.__version__,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
