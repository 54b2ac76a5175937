"""`prunescope` command lines shown to users, built from option names so that they parse as the CLI parses them.

Pages show the command that re-runs (or saves) what they show. Writing those by hand let them drift from the
parsers in `pruning_core.cli`; here a line is built from the options' names as the parser spells them
(`layer_share` -> `--layer-share`), and `tests/unit/cli/test_command_lines.py` parses every line with the real
parser and checks that each option reads back as given. Nothing here imports the CLI (nothing outside it may).
"""

from __future__ import annotations

import shlex
from typing import Any

PROGRAM = "prunescope"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_value(v) for v in value)
    return str(value)


def command_line(command: str, **options: Any) -> str:
    """`prunescope <command> --option value ...`, the options in the order given.

    A value of True is a bare flag (`--speed`), False its negation (`--no-compensate`, for a
    `BooleanOptionalAction` option), None leaves the option out; a list or tuple is comma-separated, a float
    written with `:g` (0.2, not 0.20000000000000001); values are shell-quoted where they need it."""
    parts = [PROGRAM, command]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if value is True:
            parts.append(flag)
        elif value is False:
            parts.append("--no-" + name.replace("_", "-"))
        else:
            parts += [flag, shlex.quote(_value(value))]
    return " ".join(parts)


def structured_command(spec: dict, ratio: float, out: str = "structured-export") -> str:
    """The `prunescope structured` command that writes one ratio of a structured job (`StructuredSpec` dict) as
    a smaller model folder with its report, under `out`."""
    protocol = spec["protocol"]
    units = list(spec["units"])
    allocation = spec.get("allocation", "uniform")
    return command_line(
        "structured", model=spec["model"], calib=protocol["calib"], nsamples=protocol["nsamples"],
        seqlen=protocol["seqlen"], eval_windows=protocol["eval_windows"], seed=protocol["seed"],
        eval=list(spec["eval_corpora"] or [protocol["calib"]]), units=units, ratios=float(ratio),
        score=spec["score"], compensate=bool(spec["compensate"]),
        layer_share=float(spec.get("layer_share", 0.5)) if "layers" in units and len(units) > 1 else None,
        allocation=allocation if allocation != "uniform" else None,
        sensitivity_method=(spec.get("sensitivity_method") or "wanda") if allocation == "sensitivity" else None,
        speed=True if spec.get("speed") else None, save_model=True, report=True, out=out)


def continual_command(spec: dict, adapters: bool = False) -> str:
    """The `prunescope continual` command that re-runs a continual job (`ContinualSpec` dict) and writes every
    step's masks and the report to continual-export/; with `adapters`, the per-domain adapters of the same
    sequence to continual-adapters/."""
    protocol = spec["protocol"]
    structure, allocation = spec.get("structure", "unstructured"), spec.get("allocation", "uniform")
    return command_line(
        "continual", model=spec["model"], domains=list(spec["domains"]), method=spec["method"],
        sparsity=float(spec["sparsity"]), strategies=list(spec["strategies"]), nsamples=protocol["nsamples"],
        seqlen=protocol["seqlen"], eval_windows=protocol["eval_windows"], seed=protocol["seed"],
        structure=structure if structure != "unstructured" else None,
        allocation=allocation if allocation != "uniform" else None,
        adapters=True if adapters else None, report=None if adapters else True,
        out="continual-adapters" if adapters else "continual-export")
