"""Structured pruning benchmark (issue 14): quality, size and measured speed of heads + MLP channels removed.

On the embedded model (30 layers, 9 query heads in 3 key/value groups, 1,536 MLP channels), 32 x 512 wiki
calibration (seed 0), 64 wiki evaluation windows, OBS output-effect scores:
- the table, per ratio of decoder parameters removed: parameters left (decoder and whole model), file size of
  the saved folder (and its reloaded perplexity), prefill and decode speed-ups measured against the dense model
  in the same run (fp32 and bf16 copies; prefill 512 tokens, decode 64 tokens at batch 1 and 8, fastest of 3),
  perplexity with compensation, without compensation, and the Wanda-sp baseline (activation-aware scores, no
  compensation);
- compensation from 8, 32 and 128 calibration windows at 20 % (few-shot: 8 windows should keep >= 70 % of what
  128 recover);
- speed (entries "speed" and "speed_only_*", timed apart from the quality runs on the same units, so that
  `--speed-again` re-measures them alone on a quiet machine): the table's ratios, and at 25 % MLP channels alone,
  heads alone and whole layers (what each kind of unit buys); prefill times the logits generation needs (the
  last position's, `SpeedConfig.prefill_logits`);
- whole layers mixed with heads and channels at 25 % (entries "mixed_<share>", quality on the 64 windows and
  speed in one run): the share of the removal taken as whole layers trades quality for batch-1 decode speed;
- the targets of the issue checked on these numbers, and the machine.

Every figure comes from `structured.run.run_structured` (the CLI's and dashboard's path). Resumable: every
finished entry is written to the JSON at once and skipped on the next run. Usage:
`python benchmarks/structured.py [--out docs/runs/structured.json]`; `--quick` runs a tiny random model in
seconds to check that the script works (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pruning_core.store import Store  # noqa: E402
from pruning_core.models.loading import load_model  # noqa: E402
from pruning_core.protocol import Protocol  # noqa: E402
from pruning_core.structured.run import StructuredSpec, run_structured  # noqa: E402
from pruning_core.structured.speed import machine_facts  # noqa: E402

FULL = {"model": "embedded", "nsamples": 32, "seqlen": 512, "eval_windows": 64, "ratios": [0.1, 0.2, 0.25, 0.3],
        "windows": [8, 32, 128], "few_shot_ratio": 0.2, "speed_ratio": 0.25,
        "speed": {"prefill_tokens": 512, "decode_tokens": 64, "decode_batches": [1, 8], "repeats": 3}}
#: Shares of the 25 % removal taken as whole layers (the rest as heads and channels); kept apart from the
#: settings above so that adding one does not discard the finished entries.
LAYER_SHARES = {"full": [0.3, 0.5], "quick": [0.5]}
QUICK = {"model": "tiny-llama", "nsamples": 4, "seqlen": 64, "eval_windows": 4, "ratios": [0.2, 0.25],
         "windows": [2, 4, 8], "few_shot_ratio": 0.2, "speed_ratio": 0.25,
         "speed": {"prefill_tokens": 64, "decode_tokens": 4, "decode_batches": [1, 8], "repeats": 1}}


def _save(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out)


def _increase(ppl: float, dense: float) -> float:
    return ppl - dense


class _Progress:
    """One line to stderr every 5 % or every 30 s of an entry (a full run takes tens of minutes)."""

    def __init__(self, name: str):
        self.name, self.last, self.clock = name, -1.0, time.perf_counter()

    def __call__(self, fraction: float, message: str) -> None:
        now = time.perf_counter()
        if fraction - self.last >= 0.05 or now - self.clock >= 30 or fraction >= 1.0:
            print(f"  [{self.name} {fraction:5.1%}] {message}", file=sys.stderr, flush=True)
            self.last, self.clock = fraction, now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/runs/structured.json")
    parser.add_argument("--quick", action="store_true", help="tiny random model, seconds: checks the script only")
    parser.add_argument("--no-store", action="store_true", help="do not reuse stored dense perplexities / speeds")
    parser.add_argument("--no-unit-speeds", action="store_true",
                        help="skip timing MLP channels, heads and layers alone at 25 %% (the speed_only entries)")
    parser.add_argument("--speed-again", action="store_true",
                        help="measure the speed entries again (run it when nothing else uses the cores)")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    if report.get("settings") != settings:
        report = {"settings": settings}  # other settings: start again
    report.setdefault("entries", {})
    report["machine"] = machine_facts()
    store = None if args.no_store else Store()
    loaded = load_model(settings["model"])
    protocol = Protocol(calib="wiki", nsamples=settings["nsamples"], seqlen=settings["seqlen"],
                        eval_windows=settings["eval_windows"], seed=0)
    entries = report["entries"]
    if args.speed_again:
        for name in [n for n in entries if n.startswith(("speed", "mixed"))]:
            del entries[name]
    # Speed entries evaluate on 2 windows only: the same calibration gives the same units (so the same shapes,
    # hence the same speed) as the table's runs; their perplexities are not used.
    speed_protocol = Protocol(calib="wiki", nsamples=settings["nsamples"], seqlen=settings["seqlen"], eval_windows=2,
                              seed=0)

    def run(name: str, spec: StructuredSpec, save: bool = False) -> dict:
        if name in entries:
            print(f"{name}: from {out}")
            return entries[name]
        clock = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            result = run_structured(spec, loaded=loaded, store=store, save_dir=folder if save else None,
                                    progress=_Progress(name))
        for point in result["points"]:  # drop the per-run timings and sample texts from the file: the table
            if point.get("speed"):        # keeps medians and machine facts
                for table in point["speed"]["phases"].values():
                    for row in table.values():
                        row.pop("dense_seconds", None), row.pop("pruned_seconds", None)
        entries[name] = {"dense_ppl": result["dense_ppl"], "points": result["points"],
                         "seconds": time.perf_counter() - clock}
        _save(out, report)
        print(f"{name}: {[round(p['ppl']['wiki'], 3) for p in result['points']]} "
              f"({entries[name]['seconds']:.0f} s)")
        return entries[name]

    base = dict(model=settings["model"], protocol=protocol, units=("heads", "channels"), ratios=settings["ratios"],
                eval_corpora=("wiki",), max_new_tokens=0)
    main_run = run("compensated", StructuredSpec(**base, score="obs", compensate=True), save=True)
    # Timed apart from the quality runs, on the same units, so it can be re-measured on a quiet machine alone.
    speed_run = run("speed", StructuredSpec(**{**base, "protocol": speed_protocol}, score="obs", compensate=True,
                                            speed=True, speed_settings=settings["speed"]))
    plain = run("uncompensated", StructuredSpec(**base, score="obs", compensate=False))
    wanda_sp = run("wanda_sp", StructuredSpec(**base, score="wanda_sp", compensate=False))
    few = {}
    for n in settings["windows"]:
        same = [p for p in main_run["points"] if p["ratio"] == settings["few_shot_ratio"]]
        if n == settings["nsamples"] and same:  # the table's own calibration: its point, not a second run
            few[n] = {"points": same}
            continue
        few_protocol = Protocol(calib="wiki", nsamples=n, seqlen=settings["seqlen"],
                                eval_windows=settings["eval_windows"], seed=0)
        few[n] = run(f"compensated_{n}_windows", StructuredSpec(**{**base, "protocol": few_protocol,
                                                                   "ratios": [settings["few_shot_ratio"]]},
                                                                score="obs", compensate=True))
    same = [p for p in plain["points"] if p["ratio"] == settings["few_shot_ratio"]]
    few_plain = {"points": same} if same else run(
        "uncompensated_few_shot_ratio",
        StructuredSpec(**{**base, "ratios": [settings["few_shot_ratio"]]}, score="obs", compensate=False))
    speed_only = {}
    for units in () if args.no_unit_speeds else (("channels",), ("heads",), ("layers",)):
        speed_only[units[0]] = run(f"speed_only_{units[0]}", StructuredSpec(
            **{**base, "protocol": speed_protocol, "units": units, "ratios": [settings["speed_ratio"]]},
            score="magnitude" if units[0] != "layers"
            else "obs", compensate=False, speed=True, speed_settings=settings["speed"]))
    mixed = {}
    for share in LAYER_SHARES["quick" if args.quick else "full"]:
        mixed[share] = run(f"mixed_{share:g}", StructuredSpec(
            **{**base, "units": ("layers", "heads", "channels"), "ratios": [settings["speed_ratio"]]},
            layer_share=share, score="obs", compensate=True, speed=True, speed_settings=settings["speed"]))

    # The table and the targets, from the entries above.
    dense = main_run["dense_ppl"]["wiki"]
    rows = []
    for point, no_comp, baseline, timed in zip(main_run["points"], plain["points"], wanda_sp["points"],
                                               speed_run["points"]):
        assert timed["widths"] == point["widths"], "the speed run removed other units than the table's run"
        speed = timed["speed"]["ratios"]
        rows.append({"ratio": point["ratio"], "decoder_removed": point["measured_ratio"],
                     "model_removed": point["model_removed_fraction"],
                     "parameters": point["parameters"]["model_after"],
                     "file_bytes": point["saved"]["file_bytes"] if point.get("saved") else None,
                     "reload_relative_gap": point["saved"]["max_relative_gap"] if point.get("saved") else None,
                     "speedup": speed, "ppl_compensated": point["ppl"]["wiki"],
                     "ppl_uncompensated": no_comp["ppl"]["wiki"], "ppl_wanda_sp": baseline["ppl"]["wiki"]})
    windows = {n: few[n]["points"][0]["ppl"]["wiki"] for n in settings["windows"]}
    no_comp_few = few_plain["points"][0]["ppl"]["wiki"]
    recovered = {n: no_comp_few - ppl for n, ppl in windows.items()}
    at = {row["ratio"]: row for row in rows}
    checks = {}
    # The targets: each figure, and whether it meets the target (None when it cannot be computed).
    if settings["few_shot_ratio"] in at:
        row = at[settings["few_shot_ratio"]]
        comp, plain_increase = _increase(row["ppl_compensated"], dense), _increase(row["ppl_uncompensated"], dense)
        share = comp / plain_increase if plain_increase > 0 else None
        checks["compensated_increase_over_uncompensated_at_20"] = share
        checks["compensation_target_met (<= 0.6)"] = share is not None and share <= 0.6
        checks["compensated_below_wanda_sp_at_20"] = row["ppl_compensated"] < row["ppl_wanda_sp"]
    if settings["speed_ratio"] in at:
        ratios = at[settings["speed_ratio"]]["speedup"]["float32"]
        checks["fp32_speedups_at_25"] = ratios
        prefill = next((v for k, v in ratios.items() if k.startswith("prefill")), None)
        decode = ratios.get("decode at batch 1")
        checks["speed_target_met (prefill and decode b1 >= 1.2x)"] = bool(prefill and decode and prefill >= 1.2
                                                                          and decode >= 1.2)
    mixed_rows = []
    for share, entry in mixed.items():
        point = entry["points"][0]
        mixed_rows.append({"layer_share": share, "decoder_removed": point["measured_ratio"],
                           "layers_kept": len(point["widths"]), "widths": point["widths"][0],
                           "ppl_compensated": point["ppl"]["wiki"], "speedup": point["speed"]["ratios"],
                           "load_average": point["speed"].get("load_average")})
    meeting = []
    for name, ppl, ratios in ([("heads+channels", at[settings["speed_ratio"]]["ppl_compensated"],
                                at[settings["speed_ratio"]]["speedup"]["float32"])] if settings["speed_ratio"] in at
                              else []) + [(f"layers {r['layer_share']:g} + heads+channels", r["ppl_compensated"],
                                           r["speedup"]["float32"]) for r in mixed_rows]:
        prefill = next((v for k, v in ratios.items() if k.startswith("prefill")), 0.0)
        if prefill >= 1.2 and ratios.get("decode at batch 1", 0.0) >= 1.2:
            meeting.append({"setting": name, "ppl": ppl, "fp32_speedups": ratios})
    checks["settings_meeting_the_speed_target_at_25"] = meeting
    few_windows, largest = min(settings["windows"]), max(settings["windows"])
    share = recovered[few_windows] / recovered[largest] if recovered[largest] > 0 else None
    checks["recovery_few_over_most_windows"] = share
    checks["few_shot_target_met (>= 0.7)"] = share is not None and share >= 0.7
    checks["max_reload_relative_gap"] = max((r["reload_relative_gap"] or 0.0) for r in rows)
    checks["reload_target_met (<= 1e-4)"] = checks["max_reload_relative_gap"] <= 1e-4
    report["table"] = {"dense_ppl": dense, "dense_parameters": main_run["points"][0]["parameters"]["model_before"],
                       "rows": rows, "compensation_windows": {"ratio": settings["few_shot_ratio"],
                                                             "uncompensated": no_comp_few, "ppl": windows},
                       "speed_only": {k: v["points"][0]["speed"]["ratios"] for k, v in speed_only.items()},
                       "mixed": mixed_rows,
                       "speed_load_average": {"table": speed_run["points"][0]["speed"].get("load_average"),
                                              **{k: v["points"][0]["speed"].get("load_average")
                                                 for k, v in speed_only.items()}},
                       "checks": checks}
    _save(out, report)
    print(json.dumps(report["table"], indent=1))


if __name__ == "__main__":
    main()
