"""The `prunescope` command: everything the dashboard does, headless.

Sub-commands: sweep, ui (more are registered in `COMMANDS`). Bad input prints one sentence naming the
problem and the fix, exits with status 2, and leaves whatever is already in --out untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from .errors import ConfigError, PruneScopeError

EXIT_BAD_INPUT = 2


# ------------------------------------------------------------------------------------------------ helpers

def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in _csv(text))
    except ValueError:
        raise ConfigError(f"Sparsities '{text}' must be comma-separated numbers such as 0.5,0.7.") from None


class ConsoleProgress:
    """Progress callback printing one line per step to stderr (at most a few lines a second)."""

    def __init__(self, stream=sys.stderr, interval: float = 0.5):
        self.stream = stream
        self.interval = interval
        self._last = 0.0
        self._last_message = ""
        self.start = time.perf_counter()

    def __call__(self, fraction: float, message: str) -> None:
        now = time.perf_counter()
        if message == self._last_message and now - self._last < self.interval and fraction < 1.0:
            return
        if message != self._last_message or now - self._last >= self.interval:
            elapsed = now - self.start
            print(f"[{fraction * 100:5.1f}% {elapsed:7.1f}s] {message}", file=self.stream, flush=True)
            self._last, self._last_message = now, message


def prepare_out_dir(out: str) -> Path:
    """Create --out if needed; refuse a path that is an existing file (nothing is deleted)."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out '{out}' is an existing file; give a folder path.")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, document: dict) -> None:
    """Write JSON atomically (temporary file + rename), so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str))
    os.replace(tmp, path)


def add_protocol_args(parser: argparse.ArgumentParser) -> None:
    """Model, calibration and protocol options shared by sub-commands."""
    parser.add_argument("--model", default="embedded", help="'embedded', a model folder, a .gguf file or a hub id")
    parser.add_argument("--calib", default="wiki", help="calibration corpus: wiki, news, pydocs, a file, or a hub set")
    parser.add_argument("--calib-column", default=None, help="text column of a .csv/.parquet/.jsonl calibration file")
    parser.add_argument("--nsamples", type=int, default=64, help="calibration windows")
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per window")
    parser.add_argument("--eval-windows", type=int, default=64, help="evaluation windows per corpus")
    parser.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="evaluation compute dtype")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (memory only)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub")


def protocol_from_args(args):
    from .protocol import Protocol

    return Protocol(calib=args.calib, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
                    eval_windows=args.eval_windows, dtype=args.dtype, batch_size=args.batch_size,
                    calib_column=args.calib_column).validate()


def load_model_from_args(args, progress=None):
    from .models import load_model

    return load_model(args.model, trust_remote_code=args.trust_remote_code, progress=progress)


# ------------------------------------------------------------------------------------------------ sweep

def add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="prune at a grid of settings and measure perplexity")
    add_protocol_args(p)
    p.add_argument("--eval", default="wiki", help="comma-separated evaluation corpora")
    p.add_argument("--methods", default="magnitude,wanda,sparsegpt", help="comma-separated methods")
    p.add_argument("--structures", default="unstructured", help="comma-separated: unstructured, 2:4, 4:8")
    p.add_argument("--sparsities", default="0.5", help="comma-separated fractions (unstructured only)")
    p.add_argument("--propagation", default="pruned", choices=["pruned", "dense"],
                   help="pruned: papers' protocol (default); dense: reuse dense statistics (faster)")
    p.add_argument("--no-store", action="store_true", help="do not use or fill the results store")
    p.add_argument("--out", required=True, help="output folder (results.json)")
    p.set_defaults(handler=cmd_sweep)


def cmd_sweep(args) -> int:
    from .sweep import SweepSpec, run_sweep

    spec = SweepSpec(model=args.model, methods=_csv(args.methods), structures=_csv(args.structures),
                     sparsities=_floats(args.sparsities), eval_corpora=_csv(args.eval),
                     propagation=args.propagation, protocol=protocol_from_args(args)).validate()
    progress = ConsoleProgress()
    loaded = load_model_from_args(args, progress)
    store = None if args.no_store else _open_store()
    out = prepare_out_dir(args.out)
    results = run_sweep(spec, loaded=loaded, store=store, progress=progress)
    write_json(out / "results.json", results)
    _print_sweep_table(results)
    print(f"wrote {out / 'results.json'}")
    return 0


def _print_sweep_table(results: dict) -> None:
    corpora = list(results["dense"]["ppl"])
    header = f"{'method':<10} {'structure':<12} {'target':>6} {'sparsity':>8} " + " ".join(f"{c:>10}" for c in corpora)
    print(header)
    print(f"{'dense':<10} {'-':<12} {0:>6.2f} {0:>8.4f} " + " ".join(f"{results['dense']['ppl'][c]:>10.3f}" for c in corpora))
    for p in results["points"]:
        print(f"{p['method']:<10} {p['structure']:<12} {p['target_sparsity']:>6.2f} {p['sparsity']:>8.4f} "
              + " ".join(f"{p['ppl'][c]:>10.3f}" for c in corpora))


def _open_store():
    from .store import Store

    return Store()


# ------------------------------------------------------------------------------------------------ ui

def add_ui(sub) -> None:
    p = sub.add_parser("ui", help="start the dashboard on localhost")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1 unless you need remote access)")
    p.add_argument("--model", default="embedded", help="model preselected in the dashboard")
    p.set_defaults(handler=cmd_ui)


def cmd_ui(args) -> int:
    from app.launch import run_ui  # the CLI only launches the app; the core never imports streamlit

    return run_ui(port=args.port, host=args.host, model=args.model)


# ------------------------------------------------------------------------------------------------ main

# Explicit registry of sub-commands: name -> function adding its parser (or "module:function" in another file).
COMMANDS: dict[str, Callable | str] = {
    "sweep": add_sweep,
    "sensitivity": "pruning_core.cli_engine:add_sensitivity",
    "jobs": "pruning_core.cli_engine:add_jobs",
    "export": "pruning_core.cli_export:add_export",
    "apply-mask": "pruning_core.cli_export:add_apply_mask",
    "ui": add_ui,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunescope", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS.values():
        if isinstance(add, str):
            import importlib

            module_name, function_name = add.split(":")
            add = getattr(importlib.import_module(module_name), function_name)
        add(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the `prunescope` console script; returns the exit status."""
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
