"""`prunescope sensitivity` and `prunescope jobs`: the analysis engine, headless.

`sensitivity` runs as a recorded job in this process (`JobRunner.run_inline`), so a map computed from the
CLI shows up in the dashboard's job list and its maps are reused from the store. `--executor ray
[--ray-address ADDR] [--workers N]` computes the exact rows on Ray workers (same numbers, same store keys);
the job carries them in its spec (its "executor"), as a job worker reads them, and this process still owns
the store.
"""

from __future__ import annotations

import time

from pruning_core.cli.common import (
    ConsoleProgress,
    _csv,
    _floats,
    add_executor_args,
    check_runs_fit_then_free,
    add_protocol_args,
    executor_config_from_args,
    prepare_out_dir,
    protocol_from_args,
    write_json,
)
from pruning_core.errors import ConfigError

# Spelled out, not imported from analysis.sensitivity: building the parser must not load torch
# (`prunescope --help` stays instant); a test checks the two lists agree.
METRIC_CHOICES = ("exact", "fisher", "reconstruction", "taylor")
#: How often (seconds) the CLI looks for a newer refinement to write to sensitivity.json.
VIEW_POLL_S = 1.0


def _metrics(text: str) -> tuple[str, ...]:
    parts = _csv(text.lower())
    if parts == ("all",):
        return METRIC_CHOICES
    if parts == ("auto",):
        return parts
    unknown = [p for p in parts if p not in METRIC_CHOICES]
    if unknown or not parts:
        raise ConfigError(f"--metric '{text}' is not understood; use auto, all, or a comma list of "
                          f"{', '.join(METRIC_CHOICES)}.")
    return parts


class _ViewWriter:
    """Progress callback that also writes the newest refinement of a running map to sensitivity.json.

    The refinement job stores each view as soon as it exists (`analysis.refinement.live_views`); reading it
    from the store (rather than from a callback inside the job) works the same when the CLI is attached to a
    job that a dashboard worker runs.
    """

    def __init__(self, spec: dict, store, path, console):
        self.spec, self.store, self.path, self.console = spec, store, path, console
        self.written: list | None = None
        self.last_poll = 0.0

    def __call__(self, fraction: float, message: str) -> None:
        self.console(fraction, message)
        if time.perf_counter() - self.last_poll >= VIEW_POLL_S:
            self.flush()

    def flush(self) -> None:
        from pruning_core.analysis.refinement import live_views

        self.last_poll = time.perf_counter()
        views = live_views(self.spec, self.store)
        stamp = [(v["metric"], (v["refinement"]["agreement"] or {}).get("cells")) for v in views]
        if views and stamp != self.written:
            write_json(self.path, views[0])
            self.written = stamp
            r = views[0]["refinement"]
            measured = r["agreement"]
            agreement = (f"; agreement with exact {measured['spearman']:.2f} over {measured['scope']}"
                         if measured else "")
            print(f"wrote {self.path}: refinement {r['step']}/{r['of']} ({r['name']}){agreement}", flush=True)


# ------------------------------------------------------------------------------------------ sensitivity

def add_sensitivity(sub) -> None:
    p = sub.add_parser("sensitivity", help="per-layer x per-module sensitivity map (heatmap numbers)")
    add_protocol_args(p)
    p.add_argument("--method", default="wanda", help="magnitude, wanda or sparsegpt")
    p.add_argument("--sparsity", type=float, default=None, help="one sparsity fraction (default 0.5)")
    p.add_argument("--sparsities", default=None, help="comma-separated fractions, e.g. 0.3,0.5,0.7")
    p.add_argument("--metric", default="auto",
                   help="auto (default: a second-order estimate first, its masks from the first 32 calibration "
                        "windows and its passes in bf16 where the CPU computes bf16 natively, refined to the exact "
                        "map on all windows in --probe-dtype; sensitivity.json is rewritten after each refinement), "
                        "all, or a comma list of "
                        + ", ".join(METRIC_CHOICES))
    p.add_argument("--probe-windows", type=int, default=8, help="evaluation windows of the exact probe")
    p.add_argument("--probe-dtype", default=None, choices=["float32", "bfloat16"],
                   help="compute dtype of the exact probes (default: --dtype)")
    p.add_argument("--layers", default=None, help="comma-separated decoder layer indices (default all)")
    add_executor_args(p, "exact rows")
    p.add_argument("--out", required=True, help="output folder (sensitivity.json, sensitivity_all.json)")
    p.set_defaults(handler=cmd_sensitivity)


def sensitivity_spec_from_args(args):
    """The `SensitivitySpec` of `prunescope sensitivity`'s arguments, validated (also what
    benchmarks/first_map.py measures, so the benchmark runs exactly the command's defaults)."""
    from pruning_core.analysis.sensitivity import SensitivitySpec
    from pruning_core.executors.base import make_executor

    protocol = protocol_from_args(args)
    executor = executor_config_from_args(args)
    make_executor(executor)  # a missing Ray fails here, before any work
    sparsities = list(_floats(args.sparsities)) if args.sparsities else []
    if args.sparsity is not None:
        sparsities = [args.sparsity] + [s for s in sparsities if s != args.sparsity]
    layers = None
    if args.layers:
        try:
            layers = tuple(int(x) for x in _csv(args.layers))
        except ValueError:
            raise ConfigError(f"--layers '{args.layers}' must be comma-separated integers such as 0,1,2.") from None
    job = SensitivitySpec(model=args.model, protocol=protocol, method=args.method.strip().lower(),
                          sparsities=tuple(sparsities or [0.5]), metrics=_metrics(args.metric),
                          probe_windows=args.probe_windows, dtype=args.probe_dtype or None, layers=layers,
                          executor=executor)
    if args.probe_windows < 1:
        raise ConfigError(f"--probe-windows must be a positive integer, got {args.probe_windows}.")
    return job.validate()


def cmd_sensitivity(args) -> int:
    from pruning_core.jobs.runner import JobRunner

    from pruning_core.analysis.sensitivity import REFINE

    job = sensitivity_spec_from_args(args)
    spec = job.to_dict()
    start = time.perf_counter()
    runner = JobRunner()
    check_runs_fit_then_free(args, "sensitivity", [spec], runner.store)
    out = prepare_out_dir(args.out)
    progress = ConsoleProgress()
    if job.metrics == (REFINE,):
        progress = _ViewWriter(spec, runner.store, out / "sensitivity.json", progress)
    result = runner.run_inline("sensitivity", spec, progress)  # the spec says where the exact rows run
    # The refinement's final view (the exact map with its agreement), else the first map asked for.
    first = result["views"][0] if result.get("views") else result["maps"][0]
    write_json(out / "sensitivity.json", first)
    write_json(out / "sensitivity_all.json", result)
    _print_extremes(first)
    for c in result["correlations"]:
        print(f"spearman({c['proxy']} vs exact) at {c['sparsity']:g}: {c['spearman']:.3f} "
              f"over {c.get('scope', 'all cells')}")
    execution = result.get("execution")
    if execution:
        where = "this process" if execution["executor"] == "local" else f"Ray, {execution['workers']} workers"
        print(f"exact rows computed: {execution['rows_computed']} ({where}; rows already stored are not counted)")
    print(f"wrote {out / 'sensitivity.json'} and {out / 'sensitivity_all.json'} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


def ranked_cells(document: dict) -> list[tuple[float, int, str]]:
    """(value, layer, module kind) of every cell of a map, most sensitive first."""
    cells = [(v, layer, kind) for layer, row in zip(document["layers"], document["values"])
             for kind, v in zip(document["modules"], row)]
    return sorted(cells, key=lambda c: -c[0])


def _print_extremes(document: dict, n: int = 5) -> None:
    cells = ranked_cells(document)
    print(f"{document['metric']} sensitivity, {document['method']} at {document['sparsity']:g} "
          f"(baseline loss {document['baseline_loss']:.4f} nats/token; {document['units']})")
    print("most sensitive:")
    for v, layer, kind in cells[:n]:
        print(f"  layer {layer:>3} {kind:<6} {v: .6g}")
    print("least sensitive:")
    for v, layer, kind in cells[-n:]:
        print(f"  layer {layer:>3} {kind:<6} {v: .6g}")


# ------------------------------------------------------------------------------------------------ jobs

def add_jobs(sub) -> None:
    p = sub.add_parser("jobs", help="list jobs and their state; cancel one")
    p.add_argument("--cancel", default=None, metavar="ID", help="cancel the job with this id (or unique prefix)")
    p.add_argument("--limit", type=int, default=50, help="how many recent jobs to list")
    p.set_defaults(handler=cmd_jobs)


def _resolve_job_id(runner, prefix: str) -> str:
    matches = [job["id"] for job in runner.store.recent_jobs(10_000) if job["id"].startswith(prefix)]
    if not matches:
        raise ConfigError(f"No job with id starting '{prefix}'; run `prunescope jobs` to list them.")
    if len(matches) > 1:
        raise ConfigError(f"Id prefix '{prefix}' matches {len(matches)} jobs; give more characters.")
    return matches[0]


def _status_text(job: dict) -> str:
    """What a job's row says about it: why it ended for a failed or interrupted job (e.g. "killed (out of
    memory?)"), else its last progress message."""
    if job["state"] in ("failed", "interrupted") and job.get("error"):
        return job["error"]
    return job.get("message") or ""


def cmd_jobs(args) -> int:
    from pruning_core.jobs.runner import JobRunner

    runner = JobRunner()
    if args.cancel:
        status = runner.cancel(_resolve_job_id(runner, args.cancel.strip()))
        print(f"{status['id'][:8]} {status['kind']} {status['state']} ({status['message']})")
        return 0
    jobs = runner.list_jobs(args.limit)
    if not jobs:
        print(f"no jobs in {runner.store.path}")
        return 0
    print(f"{'id':<8} {'kind':<12} {'state':<11} {'%':>5} {'eta':>7}  message")
    for job in jobs:
        eta = job.get("eta_seconds")
        eta_text = f"{eta:.0f}s" if isinstance(eta, (int, float)) and job["state"] == "running" else "-"
        fraction = job.get("fraction") or 0.0
        print(f"{job['id'][:8]:<8} {job['kind']:<12} {job['state']:<11} {fraction * 100:>5.1f} {eta_text:>7}  "
              f"{_status_text(job)[:80]}")
    return 0
