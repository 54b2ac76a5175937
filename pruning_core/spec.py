"""What every job spec shares: the model, the protocol, where the work runs, and its dict forms.

A job spec is a dataclass naming everything one job computes (`SweepSpec`, `WhatIfSpec`, `RecoverySpec`...).
`JobSpec` gives them one way to be read and written:

- `to_dict()`: the flat JSON dict a job row stores and the dashboard builds, the executor included when it is
  not the local default;
- `identity()`: the same dict without where the work runs: what run and result keys hash, so a sweep run on
  Ray finds the points a local run stored (and a key computed before executors were stored is unchanged);
- `from_dict(d)`: the inverse, which also reads dicts stored before the change (flat setting keys under their
  old names, no executor) and refuses unknown keys naming the known ones.

A spec with one pruning setting embeds it as `setting: Setting` and lists in `SETTING_KEYS` which of its fields
its flat dict stores under which key (a frozen layout: those dicts key stored jobs and results). The `job_spec`
decorator lets the spec be built from the flat names as well (`RecoverySpec(method="wanda", sparsity=0.6)`),
which is how the dashboard and older callers build them; such fields given beside `setting` change it.
"""

from __future__ import annotations

import functools
from dataclasses import MISSING, fields
from typing import Any, ClassVar, Mapping

from pruning_core.errors import ConfigError
from pruning_core.executors.base import ExecutorConfig
from pruning_core.protocol import Protocol
from pruning_core.setting import LEGACY_KEYS, SETTING_FIELDS, Setting

#: Spec fields that say where a job runs, never what it computes: out of `identity()` and every key.
WHERE_FIELDS = ("executor",)


class JobSpec:
    """Mixin of job spec dataclasses, which declare `model`, `protocol` and, where they apply, `setting`
    (`Setting`) and `executor` (`ExecutorConfig`).

    Subclasses set WHAT (whose settings, for messages: "recovery") and implement `_flat()`: their identity dict
    (the flat layout their stored dicts have always had); `_from_flat(d)` converts a flat dict's values
    (lists to tuples...) before the constructor sees them.
    """

    WHAT: ClassVar[str] = "job"
    #: {Setting field: key in this spec's flat dict}; empty for specs without one pruning setting.
    SETTING_KEYS: ClassVar[Mapping[str, str]] = {}

    # ------------------------------------------------------------------------------------------ writing

    def _flat(self) -> dict:
        raise NotImplementedError

    def setting_dict(self) -> dict:
        """The setting's fields this spec stores, under its flat key names."""
        return self.setting.to_flat(self.SETTING_KEYS) if self.SETTING_KEYS else {}

    def identity(self) -> dict:
        """The JSON dict of what this job computes (no executor): what its run and result keys hash."""
        return self._flat()

    def to_dict(self) -> dict:
        """The JSON dict a job row stores: `identity()`, plus the executor when it is not the local default."""
        d = self.identity()
        executor = getattr(self, "executor", None)
        if executor is not None and executor != ExecutorConfig():
            d["executor"] = executor.to_dict()
        return d

    # ------------------------------------------------------------------------------------------ reading

    @classmethod
    def _from_flat(cls, d: dict) -> dict:
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Any:
        """The spec of a dict: `to_dict()`'s form, a flat dict stored before (legacy setting names such as
        "allocator"), or a nested {"setting": {...}}; unknown keys raise ConfigError naming the known ones."""
        d = dict(d)
        names = [f.name for f in fields(cls)]
        if "executor" in d and "executor" in names:
            d["executor"] = ExecutorConfig.from_dict(d["executor"] or {})
        if "setting" in names:
            setting, d = _split_setting(cls, d)
            d["setting"] = setting
        unknown = sorted(set(d) - set(names))
        if unknown:
            known = [n for n in names if n != "setting"] + list(cls.SETTING_KEYS.values())
            raise ConfigError(f"Unknown {cls.WHAT} settings {unknown}; known: {', '.join(known)}.")
        if "protocol" in names:
            d["protocol"] = d["protocol"] if isinstance(d.get("protocol"), Protocol) \
                else Protocol(**(d.get("protocol") or {}))
        return cls(**cls._from_flat(d))


def default_setting(cls) -> Setting:
    """The `setting` a spec class gets when none is given."""
    spec_field = cls.__dataclass_fields__["setting"]
    if spec_field.default_factory is not MISSING:
        return spec_field.default_factory()
    return spec_field.default if spec_field.default is not MISSING else Setting()


def _split_setting(cls, d: dict) -> tuple[Setting, dict]:
    """(the setting, the other fields) of a spec dict: a nested "setting" and/or the spec's flat keys."""
    by_key = {key: name for name, key in cls.SETTING_KEYS.items()}
    given = d.pop("setting", None)
    setting = given if isinstance(given, Setting) else Setting.from_dict(given or {}, default_setting(cls))
    flat = {}
    for key in list(d):
        if key in by_key:
            flat[by_key[key]] = d.pop(key)
        elif key in SETTING_FIELDS or key in LEGACY_KEYS:  # a setting field this spec does not store
            name = LEGACY_KEYS.get(key, key)
            if name in cls.SETTING_KEYS:  # stored under another name here (recovery's "allocator")
                flat[name] = d.pop(key)
            else:
                raise ConfigError(f"The {cls.WHAT} setting takes no '{key}'; it uses "
                                  f"{', '.join(cls.SETTING_KEYS.values())}.")
    return (Setting.from_dict(flat, setting) if flat else setting), d


def _check_unstored(cls, setting: Setting) -> None:
    """Refuse a setting whose fields this spec does not store differ from the spec's default (they would be
    lost in its dict and change nothing), e.g. a plan given to a budget search."""
    default = default_setting(cls)
    for name in SETTING_FIELDS:
        if name not in cls.SETTING_KEYS and getattr(setting, name) != getattr(default, name):
            raise ConfigError(f"The {cls.WHAT} setting has no '{name}' of its own (it is always "
                              f"{getattr(default, name)!r}); leave it out.")


def job_spec(cls):
    """Class decorator (above `@dataclass`): the spec can also be built from its setting's flat names
    (`WhatIfSpec(method="sparsegpt", sparsity=0.6)`), folded into `setting` over the class default."""
    if "setting" not in cls.__dataclass_fields__:
        return cls
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        flat = {k: kwargs.pop(k) for k in list(kwargs) if k in SETTING_FIELDS or k in LEGACY_KEYS}
        if flat:
            names = {LEGACY_KEYS.get(k, k) for k in flat}
            refused = sorted(n for n in names if n not in cls.SETTING_KEYS)
            if refused:
                raise ConfigError(f"The {cls.WHAT} setting takes no {refused}; it uses "
                                  f"{', '.join(cls.SETTING_KEYS)}.")
            # Fields given beside a setting change it: `dataclasses.replace(spec, sparsity=0.6)` works.
            kwargs["setting"] = Setting.from_dict(flat, kwargs.get("setting") or default_setting(cls))
        init(self, *args, **kwargs)
        _check_unstored(cls, self.setting)

    cls.__init__ = __init__
    return cls


__all__ = ["JobSpec", "WHERE_FIELDS", "default_setting", "job_spec"]
