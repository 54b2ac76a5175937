"""Recovery benchmark (issue 15): how much quality a masked LoRA adapter wins back after pruning, and at what cost.

On the embedded model pruned with Wanda to 50 % (pruned propagation, 64 x 512 wiki calibration, seed 0; 64
evaluation windows of 512 tokens on wiki, news and pydocs), the tool's recovery defaults (masked LoRA rank 8 on
the seven linears of every layer, AdamW, bf16 autocast, batches of 4 x 256 tokens of the wiki calibration split)
within a training-time budget:
- `uniform`: the defaults, 15 minutes of training (the issue's target: >= 60 % of the wiki gap won back, >= a
  third on news and pydocs, merged sparsity exactly the pruned one, adapter file < 3 % of the model);
- `gradient`: the same parameter count spent by gradient-energy ranks (`recovery.ranks.gradient_plan`), for the
  same number of steps as `uniform` trained in its budget;
- `stepwise`: prune 30 % -> recover -> 50 % -> recover, the same total number of steps as `uniform`.
The two comparisons run by steps, not by the clock, so they may share the cores with other work.

Every figure comes from `recovery.run.run_recovery` (the CLI's and dashboard's path). Resumable: each finished
entry is written to the JSON at once and skipped next time. Usage:
`python benchmarks/recovery.py [--minutes 15] [--only uniform,gradient,stepwise] [--out docs/runs/recovery.json]`
(`--compare-steps N --compare-eval-windows K --only compare_uniform,compare_gradient,compare_sensitivity,
compare_stepwise` runs the comparisons shorter, at N steps each, uniform, gradient and sensitivity ranks (from
Wanda's stored Fisher maps) on one mask folder; `--paired` adds the window-by-window difference of gradient
and uniform ranks with its standard error);
`--quick` runs a tiny random model in seconds (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pruning_core.store import Store  # noqa: E402
from pruning_core.models.loading import load_model  # noqa: E402
from pruning_core.protocol import Protocol  # noqa: E402
from pruning_core.recovery.run import RecoverySpec, run_recovery  # noqa: E402
from pruning_core.structured.speed import machine_facts  # noqa: E402

FULL = {"model": "embedded", "method": "wanda", "sparsity": 0.5, "nsamples": 64, "seqlen": 512, "eval_windows": 64,
        "corpora": ["wiki", "news", "pydocs"], "train_corpus": "wiki", "rank": 8, "schedule": [0.3],
        "train": {"steps": 600, "batch_size": 4, "seqlen": 256, "lr": 1e-3, "dtype": "bfloat16",
                  "eval_every": 50, "checkpoint_every": 20}}
QUICK = {"model": "tiny-llama", "method": "wanda", "sparsity": 0.5, "nsamples": 4, "seqlen": 64, "eval_windows": 4,
         "corpora": ["wiki", "news"], "train_corpus": "wiki", "rank": 2, "schedule": [0.3],
         "train": {"steps": 8, "batch_size": 2, "seqlen": 32, "lr": 5e-3, "dtype": "bfloat16",
                   "eval_every": 4, "checkpoint_every": 4}}
ENTRIES = ("uniform", "gradient", "stepwise")


def _save(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out)


class _Progress:
    """One line to stderr every 5 % or every 60 s (an entry takes about a quarter of an hour)."""

    def __init__(self, name: str):
        self.name, self.last, self.clock = name, -1.0, time.perf_counter()

    def __call__(self, fraction: float, message: str) -> None:
        now = time.perf_counter()
        if fraction - self.last >= 0.05 or now - self.clock >= 60 or fraction >= 1.0:
            print(f"  [{self.name} {fraction:5.1%}] {message}", file=sys.stderr, flush=True)
            self.last, self.clock = fraction, now


def _forget(names: list, entries: dict, specs: dict, loaded, store: Store) -> None:
    """Drop `names` from the entries and delete their stored results and checkpoints, so they run afresh."""
    import shutil

    from pruning_core.recovery.run import run_key

    for name in names:
        entries.pop(name, None)
        if name not in specs:
            continue
        key = run_key(loaded, specs[name].validate())
        store.delete_result(key)
        shutil.rmtree(store.path.parent / "recovery" / key, ignore_errors=True)
        print(f"{name}: measured again (stored result {key[:12]} and its checkpoint deleted)")


def _entry(result: dict) -> dict:
    """What the table keeps of a `run_recovery` result (not the adapter's path or the sample texts)."""
    history = result["history"]
    return {"dense_ppl": result["dense_ppl"], "pruned_ppl": result["pruned_ppl"],
            "recovered_ppl": result["recovered_ppl"], "recovered_share": result["recovered_share"],
            "sparsity": result["sparsity"], "pruned": result["pruned"],
            "adapter": {k: v for k, v in result["adapter"].items() if k != "folder"},
            "ranks": {k: result["ranks"][k] for k in ("allocation", "budget", "parameters")},
            "rank_histogram": _histogram(result["ranks"]["ranks"]),
            "train_seconds": result["train_seconds"], "seconds": result["seconds"],
            "steps": sum(s["history"]["steps_done"] for s in result["stages"]),
            "stages": [{"sparsity": s["sparsity"], "pruned_ppl": s["pruned_ppl"], "steps": s["history"]["steps_done"],
                        "seconds": s["history"]["seconds"], "evals": s["history"]["evals"]}
                       for s in result["stages"]],
            "loss": history["loss"][::10], "evals": history["evals"]}


def _mask_folder(loaded, spec: RecoverySpec, protocol: Protocol, store) -> str:
    """The spec's pruned setting saved once as a mask folder (under the store's folder), for entries that
    recover the same mask."""
    from pruning_core.mask_files import manifest_info_for, save_masks
    from pruning_core.protocol import calibration_ids
    from pruning_core.recovery.run import pruned_copy

    setting = spec.setting
    folder = store.path.parent / "benchmark-masks" / f"{setting.method}-{setting.sparsity:g}-{loaded.fingerprint}"
    if not (folder / "manifest.json").exists():
        _, record = pruned_copy(loaded, spec, protocol, calibration_ids(loaded, protocol), store)
        save_masks(record["result"].masks, folder, manifest_info_for(loaded, record["result"], protocol))
    return str(folder)


def _paired(loaded, store, specs: dict, prefix: str) -> dict:
    """Gradient against uniform ranks window by window (`evaluate.paired_comparison`): both stored adapters on
    the same pruned model and windows, so the figure says whether a small difference is more than the noise of
    the evaluation set. {corpus: {"windows", "nll_difference", "standard_error", "z", "ppl_ratio",
    "ppl_ratio_95"}}; negative differences and ratios below 1 favour gradient ranks."""
    from types import SimpleNamespace

    from pruning_core.evaluate import evaluation_windows, paired_comparison
    from pruning_core.recovery.masked_lora import load_adapter
    from pruning_core.recovery.run import pruned_copy

    uniform, gradient = specs[prefix + "uniform"].validate(), specs[prefix + "gradient"].validate()
    models = []
    for spec in (uniform, gradient):
        folder = run_recovery(spec, loaded=loaded, store=store)["adapter"]["folder"]  # stored: nothing trains
        pruned, _ = pruned_copy(loaded, spec, spec.protocol, None, store)
        peft = load_adapter(pruned.model, folder).eval()
        models.append(SimpleNamespace(model=peft.base_model.model))  # the decoder with its adapter layers
    windows = evaluation_windows(loaded, uniform.protocol, list(uniform.eval_corpora))
    return {corpus: paired_comparison(models[0], models[1], ids) for corpus, ids in windows.items()}


def _histogram(ranks: dict) -> dict:
    counts: dict = {}
    for r in ranks.values():
        counts[str(r)] = counts.get(str(r), 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: int(kv[0])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/runs/recovery.json")
    parser.add_argument("--minutes", type=float, default=15.0, help="training-time budget of every entry")
    parser.add_argument("--only", default=",".join(ENTRIES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compare-steps", type=int, default=None,
                        help="run the rank and schedule comparisons as compare_uniform / compare_gradient / "
                             "compare_stepwise at this many steps each (no clock), instead of uniform's steps")
    parser.add_argument("--paired", action="store_true",
                        help="also compare the stored gradient and uniform adapters window by window, with the "
                             "standard error of the difference (`evaluate.paired_comparison`)")
    parser.add_argument("--compare-eval-windows", type=int, default=None,
                        help="evaluation windows per corpus of the compare_* entries (default: the table's)")
    parser.add_argument("--quick", action="store_true", help="tiny random model, seconds: checks the script only")
    parser.add_argument("--again", default="",
                        help="comma-separated entries to measure again: dropped from the JSON, their stored result "
                             "and training checkpoint deleted (a timed entry must train, not resume)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = {**(QUICK if args.quick else FULL), "minutes": args.minutes}
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    if report.get("settings") != settings:
        report = {"settings": settings}  # other settings: start again
    report.setdefault("entries", {})
    report["machine"] = {**machine_facts(), "torch_threads": torch.get_num_threads()}
    store = Store()
    loaded = load_model(settings["model"])
    protocol = Protocol(calib="wiki", nsamples=settings["nsamples"], seqlen=settings["seqlen"],
                        eval_windows=settings["eval_windows"], seed=0)
    base = dict(model=settings["model"], protocol=protocol, method=settings["method"], sparsity=settings["sparsity"],
                train_corpus=settings["train_corpus"], eval_corpora=tuple(settings["corpora"]), rank=settings["rank"],
                train={**settings["train"], "max_seconds": 60.0 * args.minutes}, max_new_tokens=0)
    specs = {"uniform": RecoverySpec(**base),
             "gradient": RecoverySpec(**base, rank_allocation="gradient"),
             "stepwise": RecoverySpec(**base, schedule=tuple(settings["schedule"]))}
    entries = report["entries"]
    again = [n for n in args.again.split(",") if n]
    if again:
        _forget(again, entries, specs, loaded, store)
    if args.compare_steps:
        # Shorter comparisons at an equal number of steps: uniform and gradient ranks recover the same mask
        # (pruned once here and passed as a mask folder: Wanda's mask is the whole pruned model), step-wise
        # prunes at each step itself.
        report["compare"] = {"steps": args.compare_steps, "eval_windows": args.compare_eval_windows}
        compare_protocol = Protocol(calib="wiki", nsamples=settings["nsamples"], seqlen=settings["seqlen"],
                                    eval_windows=args.compare_eval_windows or settings["eval_windows"], seed=0)
        train = {**base["train"], "steps": args.compare_steps, "max_seconds": None}
        mask_dir = _mask_folder(loaded, RecoverySpec(**base), protocol, store)
        short = {**base, "protocol": compare_protocol, "train": train}
        specs["compare_uniform"] = RecoverySpec(**short, mask_dir=mask_dir)
        specs["compare_gradient"] = RecoverySpec(**short, mask_dir=mask_dir, rank_allocation="gradient")
        specs["compare_stepwise"] = RecoverySpec(**short, schedule=tuple(settings["schedule"]))
        if "compare_sensitivity" in args.only:
            # Ranks by the sensitivity map's cost of each module at the recovered sparsity: the Fisher maps of
            # Wanda that the allocation benchmark stores (computed here once when the store has none).
            from pruning_core.analysis.sensitivity import compute_sensitivity
            from pruning_core.recovery.sensitivity_costs import module_costs

            maps = compute_sensitivity(loaded, Protocol(calib="wiki", nsamples=32, seqlen=min(512, settings["seqlen"]),
                                                        seed=0, eval_windows=8),
                                       "wanda", [0.3, 0.5, 0.7, 0.9], metrics=("fisher",), store=store,
                                       dtype="bfloat16", agreement_layers=0)
            specs["compare_sensitivity"] = RecoverySpec(**short, mask_dir=mask_dir, rank_allocation="sensitivity",
                                                        sensitivity_costs=module_costs(loaded, maps,
                                                                                       settings["sparsity"]))
    for name in [n for n in args.only.split(",") if n]:
        if name in entries:
            print(f"{name}: from {out}")
            continue
        if name in ("gradient", "stepwise") and "uniform" in entries:
            # The same number of steps as uniform's timed run, no clock: the comparison is of ranks and of
            # schedules at an equal training budget, whatever else shares the cores meanwhile.
            same = {**base, "train": {**base["train"], "steps": entries["uniform"]["steps"], "max_seconds": None}}
            specs[name] = (RecoverySpec(**same, rank_allocation="gradient") if name == "gradient"
                           else RecoverySpec(**same, schedule=tuple(settings["schedule"])))
        result = run_recovery(specs[name], loaded=loaded, store=store, progress=_Progress(name))
        entries[name] = _entry(result)
        _save(out, report)
        print(f"{name}: pruned {result['pruned_ppl']} -> recovered {result['recovered_ppl']} "
              f"(share {result['recovered_share']}), {result['train_seconds']:.0f} s training")

    checks = {}
    if "uniform" in entries:
        e = entries["uniform"]
        share = e["recovered_share"]
        checks["wiki_share (>= 0.6)"] = share.get("wiki")
        checks["other_shares (>= 1/3)"] = {c: v for c, v in share.items() if c != "wiki"}
        checks["recovery_target_met"] = bool(share.get("wiki") is not None and share["wiki"] >= 0.6 and all(
            v is not None and v >= 1 / 3 for c, v in share.items() if c != "wiki"))
        checks["merged_sparsity_equal"] = e["sparsity"]["merged"] == e["sparsity"]["before"] and \
            e["sparsity"]["pruned_weights_zero"]
        checks["adapter_fraction (< 0.03)"] = e["adapter"]["fraction_of_model"]
        checks["train_minutes"] = e["train_seconds"] / 60
    prefix = "compare_" if "compare_uniform" in entries else ""
    if prefix + "uniform" in entries and prefix + "gradient" in entries:
        u, g = entries[prefix + "uniform"]["recovered_ppl"], entries[prefix + "gradient"]["recovered_ppl"]
        checks["gradient_vs_uniform_ppl"] = {c: [g[c], u[c]] for c in u}
        checks["gradient_at_least_as_good"] = all(g[c] <= u[c] for c in u)
        checks["same_parameter_budget"] = entries[prefix + "gradient"]["ranks"]["parameters"] <= \
            entries[prefix + "uniform"]["ranks"]["budget"]
    if prefix + "uniform" in entries and prefix + "sensitivity" in entries:
        u, g = entries[prefix + "uniform"]["recovered_ppl"], entries[prefix + "sensitivity"]["recovered_ppl"]
        checks["sensitivity_vs_uniform_ppl"] = {c: [g[c], u[c]] for c in u}
        checks["sensitivity_at_least_as_good"] = all(g[c] <= u[c] for c in u)
    if prefix + "uniform" in entries and prefix + "stepwise" in entries:
        checks["stepwise_vs_one_shot_ppl"] = {c: [entries[prefix + "stepwise"]["recovered_ppl"][c],
                                                  entries[prefix + "uniform"]["recovered_ppl"][c]]
                                              for c in entries[prefix + "uniform"]["recovered_ppl"]}
    if args.paired and prefix + "uniform" in entries and prefix + "gradient" in entries:
        paired = checks["gradient_vs_uniform_paired"] = _paired(loaded, store, specs, prefix)
        # "At least as much" within what the windows resolve: on no corpus is gradient worse beyond the 95 %
        # interval (the interval of its perplexity ratio to uniform's does not lie wholly above 1).
        checks["gradient_not_worse_beyond_noise"] = all(v["ppl_ratio_95"][0] <= 1.0 for v in paired.values())
    checks["comparisons_from"] = (f"compare_* entries ({report['compare']['steps']} steps each)" if prefix
                                  else "the full entries")
    report["checks"] = checks
    _save(out, report)
    print(json.dumps(checks, indent=1))


if __name__ == "__main__":
    main()
