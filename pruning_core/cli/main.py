"""The `prunescope` command: everything the dashboard does, headless.

Each sub-command lives in its own module of this package and is registered in `COMMANDS`. Bad input prints
one sentence naming the problem and the fix, exits with status 2, and leaves whatever is already in --out
untouched. Nothing in the library imports this package: it is the top of the import graph.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional

from pruning_core.errors import PruneScopeError
from pruning_core.devices.allocator import reexec_with_allocator_settings

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1

# ------------------------------------------------------------------------------------------------ main

# Explicit registry of sub-commands: name -> "module:function" adding its parser (imported when parsing).
COMMANDS: dict[str, str] = {
    "sweep": "pruning_core.cli.sweep:add_sweep",
    "sensitivity": "pruning_core.cli.analysis:add_sensitivity",
    "budget": "pruning_core.cli.budget:add_budget",
    "jobs": "pruning_core.cli.analysis:add_jobs",
    "export": "pruning_core.cli.export:add_export",
    "apply-mask": "pruning_core.cli.export:add_apply_mask",
    "structured": "pruning_core.cli.structured:add_structured",
    "quantize": "pruning_core.cli.quantize:add_quantize",
    "frontier": "pruning_core.cli.frontier:add_frontier",
    "recover": "pruning_core.cli.recover:add_recover",
    "continual": "pruning_core.cli.continual:add_continual",
    "ui": "pruning_core.cli.ui:add_ui",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunescope", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS.values():
        module_name, function_name = add.split(":")
        getattr(importlib.import_module(module_name), function_name)(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the `prunescope` console script; returns the exit status."""
    if argv is None:  # the console script, not a call from Python: restart under the engine's malloc settings
        reexec_with_allocator_settings()
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        return int(args.handler(args) or 0)
    except PruneScopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; finished points are kept in the store", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the user reads one sentence, never a traceback
        return _report_failure(exc)


def _report_failure(exc: BaseException) -> int:
    """One sentence for a failure from below (store, disk, file system); an unexpected one is a bug: say so and
    keep its traceback in a log file."""
    import traceback

    from pruning_core.failures import explain, failure_log

    sentence = explain(exc)
    if sentence is not None:
        print(f"error: {sentence}", file=sys.stderr)
        return EXIT_BAD_INPUT
    log = failure_log(exc, traceback.format_exc())
    print(f"error: PruneScope failed unexpectedly ({type(exc).__name__}: {str(exc)[:200]}); this is a bug, "
          f"please report it" + (f" with {log}" if log else "") + ".", file=sys.stderr)
    return EXIT_FAILURE


def _quiet_libraries() -> None:
    """Library progress bars would interleave with ours; our own progress lines say the same."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
