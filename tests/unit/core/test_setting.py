"""One `Setting` in every single-setting job spec: its checks, its dict forms, and keys that did not move.

The digests below were computed by the code before `Setting` existed (commit e83d021), from the same specs built
the way the dashboard builds them (flat keyword arguments, `validate().to_dict()`); the literal dicts are what
that code stored. A stored job, run or result from before must still be found, so these must never change.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from pruning_core.allocation.budget import BudgetSpec
from pruning_core.allocation.setting_plan import check_setting, setting_config
from pruning_core.analysis.refinement import live_views_key
from pruning_core.analysis.sensitivity import SensitivitySpec
from pruning_core.analysis.sweep import SweepSpec
from pruning_core.analysis.whatif import WhatIfSpec
from pruning_core.continual.adapters import ContinualAdaptersSpec
from pruning_core.continual.run import ContinualSpec
from pruning_core.errors import ConfigError
from pruning_core.executors.base import ExecutorConfig
from pruning_core.export.pipeline import ExportOptions
from pruning_core.jobs.runner import job_key
from pruning_core.protocol import Protocol
from pruning_core.provenance import library_versions
from pruning_core.recovery import run as recovery
from pruning_core.setting import Setting
from pruning_core.store import content_hash
from pruning_core.structured.run import StructuredSpec

P = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2, batch_size=2)
P_DICT = {"calib": "news", "nsamples": 4, "seqlen": 32, "seed": 0, "eval_windows": 2, "dtype": "float32",
          "batch_size": 2, "calib_column": None}
PLAN = {"kinds": ["q", "k"], "values": [[0.5, 0.4], [0.6, 0.7]], "allocator": "owl", "target": 0.55,
        "settings": {"M": 5.0}}
RAY = ExecutorConfig(kind="ray", workers=3)


# ---------------------------------------------------------------------------------------------- checks

@pytest.mark.parametrize("setting,message", [
    (Setting(method="obs"), r"Unknown method 'obs'"),
    (Setting(structure="3-4"), r"Structure '3-4' is not understood; use 'unstructured' or N:M"),
    (Setting(sparsity=1.2), r"Sparsity 1.2 is outside \[0, 1\); give a fraction such as 0.5"),
    (Setting(propagation="forward"), r"Propagation 'forward' is unknown; use 'pruned' or 'dense'\."),
    (Setting(layer_sparsity={0: 1.5}), r"Sparsity 1.5 is outside \[0, 1\)"),
    (Setting(structure="2:4", layer_sparsity={0: 0.3}), r"Per-layer sparsities apply to unstructured pruning only"),
    (Setting(plan=PLAN, layer_sparsity={0: 0.3}), r"Give either a sparsity plan or per-layer sparsities, not both"),
    (Setting(allocation="owl", layer_sparsity={0: 0.3}), r"Give either an allocation \('owl'\) or per-layer"),
    (Setting(plan={"values": [[0.5]]}), r"A sparsity plan needs 'kinds' and 'values'"),
    (Setting(plan=PLAN, allocation="uniform"), r"The plan was made by 'owl' but the setting names allocation "
                                               r"'uniform'"),
])
def test_each_problem_is_one_sentence(setting, message):
    with pytest.raises(ConfigError, match=message) as caught:
        check_setting(setting)
    text = str(caught.value)
    assert text.endswith(".") and "\n" not in text


def test_the_allocation_is_checked_where_the_allocators_live():
    Setting(allocation="evenly").validate()  # the floor does not know the allocators
    with pytest.raises(ConfigError, match=r"Unknown allocation 'evenly'; choose one of uniform, owl, sensitivity"):
        check_setting(Setting(allocation="evenly"))
    assert check_setting(Setting(allocation="OWL", sparsity=0.6)).allocator_name == "owl"


def test_a_setting_gives_its_prune_config():
    config = setting_config(Setting(method="SparseGPT", sparsity=0.6, propagation="dense",
                                    layer_sparsity={"2": 0.4}))
    assert (config.method, config.sparsity, config.propagation, config.layer_sparsity) == \
        ("sparsegpt", 0.6, "dense", {2: 0.4})
    assert Setting(structure="2:4").prune_config().effective_sparsity == 0.5


# ---------------------------------------------------------------------------------------------- dict forms

def test_setting_dict_round_trip_and_legacy_names():
    setting = Setting(method="wanda", sparsity=0.6, allocation="owl", layer_sparsity=None)
    assert Setting.from_dict(setting.to_dict()) == setting
    assert Setting.from_dict({"allocator": "owl", "sparsity": 0.6}) == setting
    assert Setting.from_dict({"layer_sparsity": {"3": 0.2, "4": None}}).layer_sparsity == {3: 0.2}
    with pytest.raises(ConfigError, match=r"both 'allocator' and 'allocation'"):
        Setting.from_dict({"allocator": "owl", "allocation": "uniform"})
    with pytest.raises(ConfigError, match=r"Unknown setting fields \['ratio'\]; known: method, structure"):
        Setting.from_dict({"ratio": 0.2})


RECOVERY_DICT = {
    "model": "tiny-llama", "protocol": P_DICT, "method": "wanda", "structure": "unstructured", "sparsity": 0.6,
    "propagation": "pruned", "allocator": "owl", "plan": None, "mask_dir": None, "structured_dir": None,
    "schedule": [0.3, 0.5], "train_corpus": "wiki", "train": {"steps": 3}, "rank": 4, "alpha": None, "kinds": [],
    "rank_allocation": "uniform", "sensitivity_costs": None, "eval_corpora": ["news"], "curve_windows": 8,
    "prompt": "", "max_new_tokens": 32, "model_identity": {"path": "m"}}
WHATIF_DICT = {
    "model": "tiny-llama", "protocol": P_DICT, "method": "sparsegpt", "structure": "unstructured", "sparsity": 0.6,
    "layer_sparsity": {"1": 0.3}, "eval_corpora": ["news"], "propagation": "pruned", "prompt": "Hi",
    "max_new_tokens": 5, "model_identity": {"path": "x", "size": 3}}
CONTINUAL_DICT = {
    "model": "tiny-llama", "protocol": P_DICT, "domains": ["news", "pydocs"], "method": "sparsegpt", "sparsity": 0.6,
    "structure": "unstructured", "allocation": "owl", "sensitivity": None, "strategies": ["latest", "joint"],
    "eval_windows": 3, "model_identity": None}
BUDGET_DICT = {
    "model": "tiny-llama", "protocol": P_DICT, "method": "sparsegpt", "allocation": "owl", "structure": "unstructured",
    "propagation": "dense", "corpus": None, "max_increase": 0.1, "max_ppl": None, "coarse_step": 0.1,
    "resolution": 0.01, "low": 0.0, "high": 0.95, "sensitivity": None, "options": {"M": 5.0}}
ADAPTERS_DICT = {
    "model": "tiny-llama", "protocol": P_DICT, "domains": ["news", "pydocs"], "method": "sparsegpt", "sparsity": 0.4,
    "structure": "2:4", "propagation": "dense", "mask_dir": None, "modes": ["per_domain", "shared"],
    "train": {"steps": 2}, "rank": 2, "alpha": None, "kinds": [], "replay": 1, "selector": "logistic",
    "router": "selector", "prefix_tokens": 64, "eval_windows": None, "model_identity": None}


def _dashboard_specs():
    """(kind, spec built with flat keyword arguments as the dashboard (app/services/) builds it, the dict the code before
    `Setting` stored for it, the job key that code computed)."""
    return [
        ("recovery", recovery.RecoverySpec(
            model="tiny-llama", protocol=P, method="wanda", structure="unstructured", sparsity=0.6,
            propagation="pruned", allocator="owl", train={"steps": 3}, rank=4, eval_corpora=("news",),
            schedule=(0.3, 0.5), model_identity={"path": "m"}).validate(),
         RECOVERY_DICT, "9ab056ac3170fde7"),
        ("whatif", WhatIfSpec(
            model="tiny-llama", protocol=P, method="sparsegpt", structure="unstructured", sparsity=0.6,
            layer_sparsity={1: 0.3}, eval_corpora=("news",), prompt="Hi", max_new_tokens=5,
            model_identity={"path": "x", "size": 3}).validate(),
         WHATIF_DICT, "64de614ab0b940e6"),
        ("continual", ContinualSpec(
            model="tiny-llama", protocol=P, domains=("news", "pydocs"), method="sparsegpt", sparsity=0.6,
            structure="unstructured", allocation="OWL", strategies=("latest", "joint"), eval_windows=3).validate(),
         CONTINUAL_DICT, "faeff473f9780d53"),
        ("budget", BudgetSpec(
            model="tiny-llama", protocol=P, method="sparsegpt", allocation="owl", propagation="dense",
            max_increase=0.1, options=(("M", 5.0),)).validate(),
         BUDGET_DICT, "ade0b5d4a0441f55"),
        ("continual_adapters", ContinualAdaptersSpec(
            model="tiny-llama", protocol=P, domains=("news", "pydocs"), method="sparsegpt", sparsity=0.4,
            structure="2:4", propagation="dense", train={"steps": 2}, rank=2, replay=1),
         ADAPTERS_DICT, "fd14ce212c8190d5"),
    ]


@pytest.mark.parametrize("kind,spec,stored,key", _dashboard_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_specs_write_and_read_the_dicts_stored_before(kind, spec, stored, key):
    assert spec.to_dict() == stored  # the dashboard's dict, byte for byte
    assert job_key(kind, spec.to_dict()).startswith(key)
    again = type(spec).from_dict(stored)  # a dict stored before the change reads back
    assert again.to_dict() == stored and again.setting == spec.setting
    nested = {k: v for k, v in stored.items() if k not in spec.SETTING_KEYS.values()}
    assert type(spec).from_dict({**nested, "setting": spec.setting.to_dict()}).to_dict() == stored


def test_every_spec_uses_one_word_for_the_allocation():
    """`allocation` is the attribute everywhere; recovery's flat dict still says "allocator" (its keys hash it)
    and reads either name."""
    renamed = {k: v for k, v in RECOVERY_DICT.items() if k != "allocator"} | {"allocation": "owl"}
    spec = recovery.RecoverySpec.from_dict(renamed)
    assert spec.setting.allocation == "owl" and spec.to_dict() == RECOVERY_DICT
    assert BudgetSpec.from_dict(BUDGET_DICT).setting.allocation == "owl"
    assert ContinualSpec.from_dict(CONTINUAL_DICT).setting.allocation == "owl"
    options = ExportOptions.from_dict({"allocation": "owl", "sparsity": 0.6, "eval_corpora": ["news"]})
    assert options.allocator == "owl" and options.setting == Setting(sparsity=0.6, allocation="owl")


def test_a_spec_refuses_setting_fields_it_does_not_take():
    with pytest.raises(ConfigError, match=r"The what-if setting takes no 'allocator'; it uses method, structure"):
        WhatIfSpec.from_dict({**WHATIF_DICT, "allocator": "owl"})
    with pytest.raises(ConfigError, match=r"The budget setting takes no \['plan'\]"):
        BudgetSpec(plan=PLAN)
    with pytest.raises(ConfigError, match=r"Unknown recovery settings \['steps'\]; known: model, protocol"):
        recovery.RecoverySpec.from_dict({**RECOVERY_DICT, "steps": 3})
    with pytest.raises(ConfigError, match=r"The continual setting has no 'propagation' of its own \(it is always "
                                          r"'dense'\); leave it out\."):
        ContinualSpec(setting=Setting(propagation="pruned", allocation="uniform"))
    with pytest.raises(ConfigError, match=r"The budget setting has no 'plan' of its own"):
        BudgetSpec.from_dict({**BUDGET_DICT, "setting": {"plan": PLAN}})



def test_setting_fields_beside_a_setting_change_it():
    spec = recovery.RecoverySpec(setting=Setting(method="sparsegpt", allocation="owl"), sparsity=0.7)
    assert spec.setting == Setting(method="sparsegpt", allocation="owl", sparsity=0.7)
    assert replace(spec, sparsity=0.6).setting == Setting(method="sparsegpt", allocation="owl", sparsity=0.6)
    assert replace(WhatIfSpec(), method="magnitude").setting.method == "magnitude"


# ---------------------------------------------------------------------------------------------- keys

def test_run_and_result_keys_are_those_computed_before():
    fp = SimpleNamespace(fingerprint="fp")
    # Recovery: run_key hashes the flat dict (with "allocator") beside the library versions.
    spec = _dashboard_specs()[0][1]
    versions = library_versions()
    expected = content_hash({"kind": recovery.RUN_KIND, "model": "fp", "spec": RECOVERY_DICT, "sources": {},
                             "versions": {k: versions[k] for k in ("prunescope", "torch", "transformers", "peft")}})
    assert recovery.run_key(fp, spec) == expected == recovery.run_key(fp, recovery.RecoverySpec.from_dict(
        RECOVERY_DICT))
    # Continual adapters key their steps by the recovery key of their pruned model.
    adapters = ContinualAdaptersSpec.from_dict(ADAPTERS_DICT)
    rspec = {**{k: v for k, v in RECOVERY_DICT.items() if k not in ("model_identity",)},
             "protocol": {**P_DICT, "calib": "news", "calib_column": None}, "method": "sparsegpt", "sparsity": 0.4,
             "structure": "2:4", "propagation": "dense", "allocator": None, "schedule": [], "train": {"steps": 2},
             "rank": 2, "eval_corpora": ["news", "pydocs"], "max_new_tokens": 0, "model_identity": None,
             "train_corpus": "news"}
    assert recovery.run_key(fp, adapters.recovery_spec()) == content_hash(
        {"kind": recovery.RUN_KIND, "model": "fp", "spec": rspec, "sources": {},
         "versions": {k: versions[k] for k in ("prunescope", "torch", "transformers", "peft")}})
    # Sweep and budget runs, sensitivity views: digests of the code before.
    sweep = SweepSpec(model="tiny-llama", methods=("wanda", "magnitude"), structures=("unstructured", "2:4"),
                      sparsities=(0.5, 0.6), eval_corpora=("news",), propagation="dense", protocol=P,
                      allocations=("uniform", "owl"), sensitivity_sparsities=(0.4, 0.6))
    assert content_hash({"sweep": sweep.identity(), "model": "fp"}).startswith("3d3831924a3e09a7")
    assert job_key("sweep", sweep.to_dict()).startswith("bf0deade1edea18a")
    assert content_hash({"sweep": SweepSpec().identity(), "model": "fp"}).startswith("9970c4a8125639b6")
    budget = BudgetSpec.from_dict(BUDGET_DICT)
    assert content_hash({"budget": budget.identity(), "model": "fp"}).startswith("712687b38601a585")
    sensitivity = SensitivitySpec(model="tiny-llama", protocol=P, method="sparsegpt", sparsities=(0.4, 0.6),
                                  metrics=("exact", "fisher"), probe_windows=3, layers=(0, 1)).to_dict()
    assert job_key("sensitivity", sensitivity).startswith("0caf4e520f9a5e33")
    assert live_views_key(sensitivity).startswith("10ed1be6a0ea67d4")
    structured = StructuredSpec(model="tiny-llama", protocol=P, units=("heads",), ratios=(0.1, 0.2), allocation="owl")
    assert job_key("structured", structured.to_dict()).startswith("2be351477cb24175")
    plan = WhatIfSpec(model="tiny-llama", protocol=P, method="wanda", structure="2:4", sparsity=0.5, plan=PLAN,
                      eval_corpora=("news", "wiki")).validate()
    assert job_key("whatif", plan.to_dict()).startswith("c50ed7486cf6909f")


def test_the_executor_travels_with_the_job_but_in_no_key():
    local = SweepSpec(model="tiny-llama", protocol=P, eval_corpora=("news",))
    on_ray = SweepSpec(model="tiny-llama", protocol=P, eval_corpora=("news",), executor=RAY)
    assert "executor" not in local.to_dict()  # a local job's dict is the one stored before executors were
    assert on_ray.to_dict()["executor"] == RAY.to_dict()
    assert on_ray.identity() == local.identity()
    assert job_key("sweep", on_ray.to_dict()) == job_key("sweep", local.to_dict())
    assert SweepSpec.from_dict(on_ray.to_dict()) == on_ray
    for spec in (SensitivitySpec(executor=RAY), BudgetSpec(max_increase=0.1, executor=RAY),
                 ContinualSpec(executor=RAY)):
        back = type(spec).from_dict(spec.to_dict())
        assert back.executor == RAY and back.identity() == type(spec)().identity() | (
            {"max_increase": 0.1} if isinstance(spec, BudgetSpec) else {})
    with pytest.raises(ConfigError, match="Executor 'dask' is unknown"):
        SweepSpec.from_dict({**local.to_dict(), "executor": {"kind": "dask"}})


def test_the_environment_is_only_the_command_lines_default(monkeypatch):
    from argparse import Namespace

    from pruning_core.cli.common import executor_config_from_args

    flags = Namespace(executor=None, ray_address=None, workers=None, device="cpu", trust_remote_code=False)
    assert executor_config_from_args(flags) == ExecutorConfig()
    monkeypatch.setenv("PRUNESCOPE_EXECUTOR", "ray")
    monkeypatch.setenv("PRUNESCOPE_WORKERS", "3")
    monkeypatch.setenv("PRUNESCOPE_RAY_ADDRESS", "ray://head:10001")
    assert executor_config_from_args(flags) == ExecutorConfig(kind="ray", workers=3, address="ray://head:10001")
    local = Namespace(**{**vars(flags), "executor": "local"})  # a flag beats the environment
    assert executor_config_from_args(local) == ExecutorConfig(workers=3)
    spec = SweepSpec.from_dict(SweepSpec().to_dict())  # a job's spec without an executor runs here, whatever
    assert spec.executor == ExecutorConfig()  # the environment says
