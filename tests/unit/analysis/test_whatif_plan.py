"""A what-if with a sparsity plan: the spec carries the plan (dict form), the masks follow it module by module,
and the result reports the plan's global sparsity by parameters beside the measured one."""

from __future__ import annotations

import pytest

from pruning_core.plan import SparsityPlan, module_sizes
from pruning_core.analysis.whatif import WhatIfSpec, run_whatif
from pruning_core.errors import ConfigError
from pruning_core.models import load_model
from pruning_core.protocol import Protocol

PROTOCOL = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2, batch_size=4)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def _plan(tiny) -> SparsityPlan:
    """Layer 0 dense, layer 1 at 80 % except its down projection at 40 %."""
    kinds = tuple(tiny.adapter.module_kinds)
    rows = [[0.0] * len(kinds), [0.4 if k == "down" else 0.8 for k in kinds]]
    return SparsityPlan(kinds, rows, "edited", 0.5)


def test_whatif_prunes_each_module_at_its_planned_sparsity(tiny):
    plan = _plan(tiny)
    spec = WhatIfSpec(model="tiny-llama", protocol=PROTOCOL, method="magnitude", plan=plan.to_dict(),
                      eval_corpora=("news",), max_new_tokens=1)
    result = run_whatif(spec, loaded=tiny)
    assert result["per_layer_sparsity"][0] == 0.0
    sizes = module_sizes(tiny)
    assert result["per_layer_sparsity"][1] == pytest.approx(plan.layer_mean(1, sizes[1]), abs=0.01)
    expected = plan.global_sparsity(sizes)
    assert result["plan_sparsity"] == pytest.approx(expected, abs=1e-6)
    assert result["sparsity"] == pytest.approx(expected, abs=0.01)
    assert result["config"]["plan"]["values"] == [list(row) for row in plan.values]


def test_plan_spec_round_trips_and_a_plain_spec_keeps_its_old_form(tiny):
    spec = WhatIfSpec(model="tiny-llama", protocol=PROTOCOL, plan=_plan(tiny).to_dict())
    assert WhatIfSpec.from_dict(spec.to_dict()) == spec
    assert "plan" not in WhatIfSpec(model="tiny-llama", protocol=PROTOCOL).to_dict()  # same job keys as before


def test_plan_and_layer_overrides_together_are_refused(tiny):
    with pytest.raises(ConfigError, match="either a sparsity plan or per-layer"):
        WhatIfSpec(plan=_plan(tiny).to_dict(), layer_sparsity={0: 0.3}).validate()
    with pytest.raises(ConfigError, match="outside"):
        WhatIfSpec(plan={"kinds": ["q"], "values": [[1.5]]}).validate()


def test_a_plan_for_another_model_is_refused_before_pruning(tiny):
    kinds = tuple(tiny.adapter.module_kinds)
    spec = WhatIfSpec(model="tiny-llama", protocol=PROTOCOL, plan=SparsityPlan.uniform(5, kinds, 0.5).to_dict())
    with pytest.raises(ConfigError, match="make a plan for this model"):
        run_whatif(spec, loaded=tiny)


def test_exporting_a_whatif_plan_records_the_plan_in_the_manifest(tiny, tmp_path):
    import json

    from app.services.export import whatif_export_spec
    from pruning_core.store import Store
    from pruning_core.export.pipeline import ExportOptions, run_export

    store = Store(tmp_path / "store.sqlite")
    plan = _plan(tiny)
    spec = WhatIfSpec(model="tiny-llama", protocol=PROTOCOL, method="magnitude", plan=plan.to_dict(),
                      eval_corpora=("news",), max_new_tokens=1)
    result = run_whatif(spec, loaded=tiny, store=store)
    job = whatif_export_spec({"spec": spec.to_dict(), "result": result}, {"heatmap": False})
    assert job["options"]["plan"]["values"] == [list(row) for row in plan.values]
    outcome = run_export(tiny, PROTOCOL, ExportOptions(**job["options"]), tmp_path / "out", store=store)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["plan_digest"] == plan.digest() and manifest["allocator"] == "edited"
    assert outcome["report"]["setting"]["plan"]["values"] == [list(row) for row in plan.values]
