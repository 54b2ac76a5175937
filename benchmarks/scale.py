"""Scale runs: time and peak memory of each task at model sizes users prune, beside the estimate shown before it.

For each model (default: the embedded model and random weights of published shapes, `random:smollm2-360m`,
`random:tinyllama-1.1b`, `random:llama-3.2-3b`; a source may end in "@bfloat16" for bf16 weights), each task runs
in its own child process, so one task's memory never inflates another's peak:
- load: `load_model` alone (seconds, peak resident memory, parameter counts, bytes of the weights);
- wanda / sparsegpt: one 50 % point in pruned propagation through the sweep's own path (`run_sweep`: dense and
  pruned perplexity included), default 64 x 512 wiki calibration (--nsamples / --seqlen);
- first_map: the default `prunescope sensitivity` spec until its first map (the second-order estimate);
- dense_sweep: five Wanda sparsities (0.3 ... 0.7) in dense propagation;
- structured: one structured point (heads and MLP channels, 20 % of decoder parameters);
- recovery: a short LoRA recovery of Wanda 50 % (--recovery-steps steps).
Each task records wall seconds and peak resident memory (the child's ru_maxrss, and /proc/self/statm sampled
every 20 ms while the task's own work runs, the model load included), and the estimate the tool gives before
it starts (`jobs.estimates.estimate_job`: seconds and peak_memory_bytes), computed in a separate child on a fresh
store, as a page or command sees it before the first run. Per Wanda point it adds seconds of pruning / (non-
embedding parameters x calibration tokens), the figure that should not grow with the model.

    nice -n 19 python benchmarks/scale.py --quick                       # tiny smoke test, seconds
    nice -n 19 python benchmarks/scale.py --models random:smollm2-360m --tasks load wanda
    python benchmarks/scale.py --save                                    # all models and tasks: hours on 2 cores
    python benchmarks/scale.py --save --estimates-only --models M ...   # the current estimates beside saved runs

Prints one JSON document; --save writes docs/runs/scale.json (merging models already there).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pruning_core.devices.allocator import SETTINGS, with_allocator_settings  # noqa: E402 - after the path insert

DEFAULT_MODELS = ("embedded", "random:smollm2-360m", "random:tinyllama-1.1b", "random:llama-3.2-3b")
TASKS = ("load", "wanda", "sparsegpt", "first_map", "dense_sweep", "structured", "recovery")
#: Job kind of each task, for its estimate.
TASK_KINDS = {"wanda": "sweep", "sparsegpt": "sweep", "first_map": "sensitivity", "dense_sweep": "sweep",
              "structured": "structured", "recovery": "recovery"}
RESULT_MARK = "SCALE-RESULT "


# ------------------------------------------------------------------------------------------------ the specs

def task_spec(task: str, model: str, options: dict) -> dict:
    """The job spec dict of `task` on `model` (what the job runner would receive)."""
    from pruning_core.protocol import Protocol

    protocol = Protocol(nsamples=options["nsamples"], seqlen=options["seqlen"],
                        eval_windows=options["eval_windows"], batch_size=options["batch_size"])
    if task in ("wanda", "sparsegpt", "dense_sweep"):
        from pruning_core.analysis.sweep import SweepSpec

        sparsities = (0.5,) if task != "dense_sweep" else (0.3, 0.4, 0.5, 0.6, 0.7)
        method = "sparsegpt" if task == "sparsegpt" else "wanda"
        return SweepSpec(model=model, methods=(method,), sparsities=sparsities, eval_corpora=("wiki",),
                         propagation="dense" if task == "dense_sweep" else "pruned", protocol=protocol).to_dict()
    if task == "first_map":
        from pruning_core.cli.analysis import sensitivity_spec_from_args
        from pruning_core.cli.main import build_parser

        home = os.environ.get("PRUNESCOPE_HOME")  # the child's home, removed after the task (`in_child`)
        out = os.path.join(home, "map") if home else tempfile.mkdtemp(prefix="scale-map-")
        argv = ["sensitivity", "--out", out, "--model", model]
        if options["quick"]:
            argv += ["--nsamples", str(options["nsamples"]), "--seqlen", str(options["seqlen"])]
        return sensitivity_spec_from_args(build_parser().parse_args(argv)).to_dict()
    if task == "structured":
        from pruning_core.structured.run import StructuredSpec

        return StructuredSpec(model=model, protocol=protocol, ratios=(0.2,), max_new_tokens=0).to_dict()
    if task == "recovery":
        from pruning_core.recovery.run import RecoverySpec
        from pruning_core.setting import Setting

        steps = options["recovery_steps"]
        train = {"steps": steps, "eval_every": steps, "checkpoint_every": steps, "seqlen": min(256, options["seqlen"])}
        return RecoverySpec(model=model, protocol=protocol, setting=Setting("wanda", "unstructured", 0.5),
                            train=train, curve_windows=2, max_new_tokens=0).to_dict()
    raise ValueError(f"unknown task {task}")


# ------------------------------------------------------------------------------------------- in the child

class PeakSampler:
    """Peak resident memory (bytes) of this process, sampled from /proc/self/statm every `interval` seconds."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakSampler":
        self.baseline = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def model_facts(loaded) -> dict:
    """Parameters (all, non-embedding: what the decoder layers hold), bytes of the weights, dtype."""
    model = loaded.model
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    embedding_params = embedding.numel()
    if head is not None and head.weight.data_ptr() != embedding.data_ptr():
        embedding_params += head.weight.numel()
    info = loaded.describe()
    return {"parameters": params, "non_embedding_parameters": params - embedding_params,
            "prunable_parameters": info["prunable_parameters"], "memory_bytes": info["memory_bytes"],
            "dtype": info["dtype"], "layers": info["layers"], "hidden_size": info["hidden_size"]}


def run_task(task: str, model: str, options: dict) -> dict:
    """Run one task in this (child) process; returns its record."""
    from pruning_core.store import Store

    home = Path(os.environ["PRUNESCOPE_HOME"])
    store = Store(home / "store.sqlite")
    out: dict = {}
    if task == "estimates":
        from pruning_core.jobs.estimates import estimate_job
        from pruning_core.models import load_model

        loaded = load_model(model)
        for name in options["tasks"]:
            if name == "load":
                continue
            made = estimate_job(TASK_KINDS[name], task_spec(name, model, options), loaded, store)
            out[name] = None if made is None else {
                "seconds": made.get("first_view_seconds" if name == "first_map" else "seconds", made["seconds"]),
                "peak_memory_bytes": made.get("peak_memory_bytes")}
        return out
    spec = task_spec(task, model, options) if task != "load" else None
    start = time.perf_counter()
    with PeakSampler() as sampler:
        if task == "load":
            from pruning_core.models import load_model

            out["model"] = model_facts(load_model(model))
        elif task in ("wanda", "sparsegpt", "dense_sweep"):
            from pruning_core.analysis.sweep import run_sweep_job

            result = run_sweep_job(spec, store, lambda f, m: None)
            seconds = result["execution"]["seconds"]
            out["load_seconds"] = seconds["load"]
            out["points"] = [{"sparsity": p["target_sparsity"], "ppl": p["ppl"], "prune_seconds": p["prune_seconds"],
                              "eval_seconds": p["eval_seconds"]} for p in result["points"]]
            out["dense_ppl"] = result["dense"]["ppl"]
        elif task == "first_map":
            from pruning_core.analysis.refinement import refine_sensitivity
            from pruning_core.analysis.sensitivity import SensitivitySpec
            from pruning_core.models import load_model

            job = SensitivitySpec.from_dict(spec)
            loaded = load_model(job.model)

            class FirstMapDone(Exception):
                pass

            def on_view(view: dict) -> None:
                out["metric"] = view["metric"]
                raise FirstMapDone

            try:
                refine_sensitivity(loaded, job.protocol, job.method, job.sparsities[0], int(job.probe_windows),
                                   store, None, on_view, dtype=job.dtype,
                                   layers=None if job.layers is None else list(job.layers))
            except FirstMapDone:
                pass
        elif task == "structured":
            from pruning_core.structured.run import run_structured_job

            result = run_structured_job(spec, store, lambda f, m: None)
            out["points"] = len(result.get("points", []))
            # The phases of each point (statistics walk, scoring, compensation, slicing, evaluation), to set the
            # estimate's constants against (the 3B run took 1.6x its estimate; which phase, these say).
            out["point_seconds"] = [p.get("seconds") for p in result.get("points", [])]
        elif task == "recovery":
            from pruning_core.recovery.run import run_recovery_job

            result = run_recovery_job(spec, store, lambda f, m: None)
            out["keys"] = sorted(result)[:12]
    out["seconds"] = time.perf_counter() - start
    out["peak_rss_bytes"] = sampler.peak
    out["maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    out["baseline_rss_bytes"] = sampler.baseline
    return out


# ------------------------------------------------------------------------------------------- in the parent

def in_child(task: str, model: str, options: dict, timeout: float) -> dict:
    """Run `task` in a fresh Python process with a fresh PRUNESCOPE_HOME; its record, or {"error": ...}."""
    # As the CLI and job workers run: glibc's malloc settings of devices/allocator.py (its heap keeps freed blocks).
    home = tempfile.mkdtemp(prefix=f"scale-{task}-")
    env = with_allocator_settings(dict(os.environ, PRUNESCOPE_HOME=home))
    command = [sys.executable, __file__, "--child", task, "--child-model", model, "--child-options", json.dumps(options)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        # A task's home holds its store and the folders it wrote (a 1.1B recovery's merged model, a structured
        # run's dense and pruned copies): tens of GB over a session's runs filled the disk once.
        shutil.rmtree(home, ignore_errors=True)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = (done.stderr or "").strip().splitlines()[-3:]
    return {"error": f"exit {done.returncode}: " + " | ".join(tail)}


def machine() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), None)
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    meminfo = dict(ln.split(":", 1) for ln in Path("/proc/meminfo").read_text().splitlines()) \
        if Path("/proc/meminfo").exists() else {}
    return {"cpu_model": name, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags, "mem_total_kib": meminfo.get("MemTotal", "").strip(),
            "load_average_start": os.getloadavg(),
            "allocator": {k: v for k, v in with_allocator_settings(os.environ).items() if k in SETTINGS}}


def memory_refusal(task: str, estimate: Optional[dict]) -> Optional[str]:
    """The product's refusal sentence when `task`'s estimated peak exceeds this machine's free memory (the
    check a dashboard job passes before its worker starts: `memory_check.check_fits`), else None."""
    from pruning_core.jobs.memory_check import MemoryRefused, check_fits

    if task == "load" or not estimate:
        return None
    try:
        check_fits(TASK_KINDS[task], estimate, in_process=False, where="dashboard")
    except MemoryRefused as refused:
        return str(refused)
    return None


def measure_model(model: str, options: dict, timeout: float) -> dict:
    record: dict = {"tasks": {}, "options": options, "machine": machine()}
    estimates = in_child("estimates", model, options, timeout)
    record["estimates_error"] = estimates.pop("error", None)
    for task in options["tasks"]:
        refusal = memory_refusal(task, estimates.get(task))
        if refusal:  # as the dashboard and the CLI would: refused before it starts, in the product's sentence
            record["tasks"][task] = {"refused": refusal, "estimate": estimates.get(task),
                                     "load_average_end": os.getloadavg()}
            print(json.dumps({"model": model, "task": task, **record["tasks"][task]}), file=sys.stderr, flush=True)
            continue
        result = in_child(task, model, options, timeout)
        if task == "load" and "model" in result:
            record["model"] = result.pop("model")
        result["estimate"] = estimates.get(task)
        estimate = result["estimate"] or {}
        if "error" not in result and estimate.get("seconds"):
            result["estimate_seconds_ratio"] = estimate["seconds"] / result["seconds"]
        if "error" not in result and estimate.get("peak_memory_bytes"):
            result["estimate_memory_ratio"] = estimate["peak_memory_bytes"] / result["maxrss_bytes"]
        result["load_average_end"] = os.getloadavg()
        result["allocator"] = record["machine"]["allocator"]  # the glibc settings this task's child ran under
        record["tasks"][task] = result
        print(json.dumps({"model": model, "task": task, **result}), file=sys.stderr, flush=True)
    return with_target_figures(record)


def with_target_figures(record: dict) -> dict:
    """Add the targets' figures to a model's Wanda record (in place; returns the record): pruning seconds per
    non-embedding parameter and calibration token, and the peak over the weights plus 3 GiB. Needs the model's
    facts (its load task), from this run or a saved one."""
    facts, wanda = record.get("model"), record.get("tasks", {}).get("wanda")
    options = record.get("options") or {}
    if facts and wanda and wanda.get("points") and "nsamples" in options:
        tokens = options["nsamples"] * options["seqlen"]
        prune = wanda["points"][0]["prune_seconds"]
        wanda["prune_seconds_per_param_token"] = prune / (facts["non_embedding_parameters"] * tokens)
        wanda["peak_over_weights_plus_3gb"] = wanda["maxrss_bytes"] / (facts["memory_bytes"] + 3 * 2**30)
    return record


def reestimate(models: list[str], options: dict, timeout: float) -> None:
    """Estimate each saved task of `models` with the current code and record it beside the measurement
    ("estimate_now", "estimate_now_seconds_ratio", "estimate_now_memory_ratio"): the estimate the tool shows now
    for a run measured earlier on this machine (the "estimate" field stays what was shown before that run)."""
    path = ROOT / "docs" / "runs" / "scale.json"
    saved = json.loads(path.read_text())
    for model in models:
        record = saved["models"][model]
        tasks = [task for task, result in record["tasks"].items() if task != "load" and "error" not in result]
        made = in_child("estimates", model, {**record.get("options", options), "tasks": tasks}, timeout)
        for task in tasks:
            result, estimate = record["tasks"][task], made.get(task) or {}
            result["estimate_now"] = estimate
            if estimate.get("seconds"):
                result["estimate_now_seconds_ratio"] = estimate["seconds"] / result["seconds"]
            if estimate.get("peak_memory_bytes"):
                result["estimate_now_memory_ratio"] = estimate["peak_memory_bytes"] / result["maxrss_bytes"]
            print(json.dumps({"model": model, "task": task, "estimate_now": estimate}), file=sys.stderr, flush=True)
        record["estimate_now_machine"] = machine()
    path.write_text(json.dumps(saved, indent=2) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--nsamples", type=int, default=64, help="calibration windows (default 64)")
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per window (default 512)")
    parser.add_argument("--eval-windows", type=int, default=8, help="evaluation windows per point (default 8)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--recovery-steps", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per task before it is stopped")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny-llama, 4 x 64 calibration")
    parser.add_argument("--save", action="store_true", help="write docs/runs/scale.json (merged by model)")
    parser.add_argument("--estimates-only", action="store_true",
                        help="with --save: estimate the saved tasks again with the current code (no run) and record "
                             "each as estimate_now beside the measurement, with its ratios")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-model", help=argparse.SUPPRESS)
    parser.add_argument("--child-options", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(RESULT_MARK + json.dumps(run_task(args.child, args.child_model, json.loads(args.child_options))))
        return
    if args.quick:
        args.models = ["tiny-llama"] if args.models == list(DEFAULT_MODELS) else args.models
        args.nsamples, args.seqlen, args.eval_windows, args.batch_size, args.recovery_steps = 4, 64, 2, 4, 2
    options = {"nsamples": args.nsamples, "seqlen": args.seqlen, "eval_windows": args.eval_windows,
               "batch_size": args.batch_size, "recovery_steps": args.recovery_steps, "tasks": args.tasks,
               "quick": args.quick}
    if args.estimates_only:
        reestimate(args.models, options, args.timeout)
        return
    doc = {"what": "time and peak resident memory per task and model, beside the estimate shown before it",
           "options": options, "machine": machine(), "models": {}}
    for model in args.models:
        doc["models"][model] = measure_model(model, options, args.timeout)
    doc["machine"]["load_average_end"] = os.getloadavg()
    text = json.dumps(doc, indent=2)
    print(text)
    if args.save:
        path = ROOT / "docs" / "runs" / "scale.json"
        saved = json.loads(path.read_text()) if path.exists() else {"models": {}}
        for model, record in doc["models"].items():  # a later run of some tasks keeps the model's other tasks
            kept = saved["models"].get(model, {})
            if kept.get("options", {}).get("nsamples") == options["nsamples"]:
                record = {**kept, **record, "tasks": {**kept.get("tasks", {}), **record["tasks"]}}
            saved["models"][model] = with_target_figures(record)
        saved.update({k: v for k, v in doc.items() if k != "models"})
        path.write_text(json.dumps(saved, indent=2) + "\n")


if __name__ == "__main__":
    main()
