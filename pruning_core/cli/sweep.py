"""`prunescope sweep`: prune at a grid of settings and measure perplexity, headless.

`--allocation uniform,owl,sensitivity` makes the allocation one more axis of the grid (unstructured points
only); `--sensitivity FILE` gives the "sensitivity" allocator a map made by `prunescope sensitivity`
(sensitivity_all.json), otherwise the sweep computes the exact map itself (reused from the store).
`--executor ray [--ray-address ADDR] [--workers N]` computes the points on Ray workers (same numbers, same
store keys); this process still owns the store. `--device cuda` walks and evaluates each layer on the GPU with
the model in host memory (each Ray worker then reserves one GPU).
"""

from __future__ import annotations

import json
from pathlib import Path

from pruning_core.cli.common import (
    store_from_args,
    ConsoleProgress,
    check_run_fits,
    _csv,
    _floats,
    add_executor_args,
    add_protocol_args,
    device_from_args,
    executor_config_from_args,
    load_model_from_args,
    prepare_out_dir,
    protocol_from_args,
    write_json,
)
from pruning_core.errors import ConfigError


def add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="prune at a grid of settings and measure perplexity")
    add_protocol_args(p)
    p.add_argument("--eval", default="wiki", help="comma-separated evaluation corpora")
    p.add_argument("--methods", default="magnitude,wanda,sparsegpt", help="comma-separated methods")
    p.add_argument("--structures", default="unstructured", help="comma-separated: unstructured, 2:4, 4:8")
    p.add_argument("--sparsities", default="0.5", help="comma-separated fractions (unstructured only)")
    p.add_argument("--propagation", default="pruned", choices=["pruned", "dense"],
                   help="pruned: papers' protocol (default); dense: reuse dense statistics (faster)")
    p.add_argument("--allocation", default="uniform",
                   help="comma-separated allocators giving each layer/module its sparsity for a global target: "
                        "uniform (default), owl, sensitivity")
    p.add_argument("--sensitivity", default=None, metavar="FILE",
                   help="sensitivity_all.json of `prunescope sensitivity` (maps at two or more sparsities) for "
                        "--allocation sensitivity; without it the exact map is computed")
    add_executor_args(p, "points")
    p.add_argument("--no-store", action="store_true", help="do not use or fill the results store")
    p.add_argument("--out", required=True, help="output folder (results.json)")
    p.set_defaults(handler=cmd_sweep)


def cmd_sweep(args) -> int:
    from pruning_core.analysis.sweep import SweepSpec, run_sweep
    from pruning_core.executors.base import make_executor

    spec = SweepSpec(model=args.model, methods=_csv(args.methods), structures=_csv(args.structures),
                     sparsities=_floats(args.sparsities), eval_corpora=_csv(args.eval),
                     propagation=args.propagation, protocol=protocol_from_args(args),
                     allocations=_csv(args.allocation), executor=executor_config_from_args(args)).validate()
    # Checked (and Ray imported) before the model loads, so a missing Ray costs nothing.
    executor = make_executor(spec.executor)
    sensitivity = _read_sensitivity(args.sensitivity) if args.sensitivity else None
    progress = ConsoleProgress()
    loaded = load_model_from_args(args, progress)
    store = store_from_args(args)
    device = device_from_args(args)
    # The estimate line (time and memory on this executor and device, as the dashboard shows it); a run that
    # cannot fit is refused here, before any work.
    check_run_fits(args, "sweep", spec.to_dict(), loaded, store, device=device,
                   workers=executor.config.workers if executor.config.kind == "ray" else 1)
    out = prepare_out_dir(args.out)
    results = run_sweep(spec, loaded=loaded, store=store, progress=progress, sensitivity=sensitivity,
                        executor=executor, device=device)
    write_json(out / "results.json", results)
    _print_sweep_table(results)
    print(f"wrote {out / 'results.json'}")
    return 0


def _read_sensitivity(path: str) -> dict:
    """A sensitivity result from a file of `prunescope sensitivity`: sensitivity_all.json ({"maps": [...]})
    or one map (sensitivity.json), wrapped as a result."""
    file = Path(path).expanduser()
    try:
        document = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"Cannot read the sensitivity file '{path}' ({exc}); give the sensitivity_all.json "
                          "written by `prunescope sensitivity`.") from None
    if isinstance(document, dict) and "maps" in document:
        return document
    if isinstance(document, dict) and "values" in document:
        return {"maps": [document]}
    raise ConfigError(f"'{path}' holds no sensitivity maps; give the sensitivity_all.json written by "
                      "`prunescope sensitivity`.")


def _print_sweep_table(results: dict) -> None:
    corpora = list(results["dense"]["ppl"])
    header = (f"{'method':<10} {'structure':<12} {'allocation':<11} {'target':>6} {'sparsity':>8} "
              + " ".join(f"{c:>10}" for c in corpora))
    print(header)
    print(f"{'dense':<10} {'-':<12} {'-':<11} {0:>6.2f} {0:>8.4f} "
          + " ".join(f"{results['dense']['ppl'][c]:>10.3f}" for c in corpora))
    for p in results["points"]:
        print(f"{p['method']:<10} {p['structure']:<12} {p.get('allocation', 'uniform'):<11} "
              f"{p['target_sparsity']:>6.2f} {p['sparsity']:>8.4f} " + " ".join(f"{p['ppl'][c]:>10.3f}" for c in corpora))
