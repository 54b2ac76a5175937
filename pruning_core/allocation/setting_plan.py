"""A `Setting` resolved for a loaded model: its allocation checked, its plan made, its `PruneConfig` built.

The one place that turns "wanda at 60 % with OWL" (or an explicit plan table) into what pruning takes, shared
by every capability that prunes a single setting: the export (`export.pipeline`), recovery's pruned source
(`recovery.run.pruned_copy`) and anything else that names a setting rather than a plan. It lives with the
allocators because a setting's plan is what an allocator makes.
"""

from __future__ import annotations

from typing import Optional

from pruning_core.allocation.allocators import AllocationInputs, get_allocator, make_plan
from pruning_core.errors import ConfigError
from pruning_core.plan import SparsityPlan
from pruning_core.setting import Setting


def check_setting(setting: Setting) -> Setting:
    """`setting.validate()` plus its allocation's name (unknown names list the known ones); returns it."""
    setting.validate()
    if setting.allocation is not None:
        get_allocator(str(setting.allocation))
    return setting


def setting_plan(loaded, protocol, setting: Setting, store=None, calib_ids=None, progress=None
                 ) -> Optional[SparsityPlan]:
    """The `SparsityPlan` `setting` prunes `loaded` with: its explicit plan, or the plan its allocation makes for
    the global target `setting.sparsity` from the dense calibration statistics (cached in `store`; calib_ids:
    the calibration windows when already read); None for a uniform (or per-layer) setting.

    A "sensitivity" allocation reads a sensitivity map, which a single setting does not carry: give its plan."""
    check_setting(setting)
    plan = setting.sparsity_plan()
    if plan is not None:
        return plan
    if setting.allocator_name == "uniform":
        return None
    allocator = get_allocator(setting.allocator_name)
    if allocator.needs == "sensitivity":
        raise ConfigError(f"A '{allocator.name}' plan reads a sensitivity map; export the plan itself (the "
                          "Allocation view or the sweep's results.json holds it) instead of naming the allocator.")
    statistics = None
    if allocator.needs != "none":
        from pruning_core.statistics_cache import cached_statistics

        statistics = cached_statistics(loaded, protocol, allocator.needs, store, calib_ids, progress)
    return make_plan(allocator.name, AllocationInputs(loaded, statistics=statistics), float(setting.sparsity))


def setting_config(setting: Setting, loaded=None, plan: Optional[SparsityPlan] = None):
    """The validated `PruneConfig` of `setting`. With a plan (`plan` from `setting_plan`, or the setting's own)
    and `loaded`, the config carries the plan checked against the model (`sparsity` becomes the plan's global
    sparsity by parameters); without `loaded` the setting is only checked for form, so a command line fails
    before it loads a model."""
    check_setting(setting)
    config = setting.prune_config()
    if plan is None:
        plan = setting.sparsity_plan()
    if plan is not None and loaded is not None:
        config = config.with_plan(loaded, plan).validate()
    return config


__all__ = ["check_setting", "setting_config", "setting_plan"]
