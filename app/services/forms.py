"""The binding between a page's form and its job spec: one dataclass per page, both directions in one place.

A page form is a dataclass whose fields are the form's values (their defaults are the form's first values);
widget keys are the page's prefix plus the field name (`SweepForm.key("methods") == "curves_methods"`).
`to_spec(settings)` builds the job spec the page runs; `from_spec(spec)` gives the widget values that make a
stored job's spec, so a page re-attaching to a job after a reload shows the form that made it.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar


@dataclass
class PageForm:
    """Base of the page forms: widget keys and first values from the dataclass fields."""

    #: Widget keys are PREFIX + field name.
    PREFIX: ClassVar[str] = ""

    @classmethod
    def key(cls, name: str) -> str:
        """The widget key of field `name`."""
        return cls.PREFIX + name

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The form's field names, in order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def widget_defaults(cls) -> dict[str, Any]:
        """{widget key: first value} of every field (tuples as lists, as multiselects hold them)."""
        out = {}
        for f in fields(cls):
            value = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            out[cls.key(f.name)] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def widgets(cls, **values: Any) -> dict[str, Any]:
        """{widget key: value} of field values given by name."""
        return {cls.key(name): value for name, value in values.items()}


def choices_in(choices, values) -> list[float]:
    """The `choices` (numbers a widget offers) equal to some value of `values` (a stored spec's numbers)."""
    return [c for c in choices if any(abs(c - float(v)) < 1e-9 for v in values or ())]
