"""Speed against the production peer (llm-compressor `oneshot`), both sides measured in one run on one machine.

Cases (embedded model, wiki calibration windows of `protocol.calibration_ids`, seed 0, handed to the peer as token
ids so both sides see the same data):
- Wanda 50 % and SparseGPT 50 % with pruned propagation (the papers' protocol), one point each;
- the dashboard's default analysis: Wanda at 30/40/50/60/70 %, ours one dense-propagation `run_sweep`
  (statistics once, re-threshold per sparsity, each point evaluated), the peer point by point (+ our evaluation).
Both sides' perplexities come from our evaluation (`evaluate.evaluate_setting`, fp32, the first evaluation windows
of wiki), so the numbers are comparable; the peer's pruned weights come back through a safetensors file.

Times: our prune seconds include the layer-0 capture; the peer's are `oneshot`'s wall time (its model load is
recorded apart). Compare ratios measured in one run, never absolute times across machines: the JSON records the
CPU model and flags, torch threads and the load average before and after (other jobs on the machine slow both).

The peer half runs in a subprocess with the peer virtualenv's python (`benchmarks/_peer_oneshot.py`); the
project never imports llmcompressor. Without a peer (no --peer-python, no $PEER_PYTHON, no
~/.cache/peer-venv with llmcompressor) the script says so and measures our side only.

    python benchmarks/peer_speed.py [--quick] [--save] [--peer-python PATH] [--no-fp32-check]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pruning_core import evaluate  # noqa: E402
from pruning_core.analysis.sweep import SweepSpec, run_sweep  # noqa: E402
from pruning_core.models import load_model  # noqa: E402
from pruning_core.models.loading import _embedded_folder, model_cache_dir  # noqa: E402
from pruning_core.progress import no_progress  # noqa: E402
from pruning_core.protocol import Protocol, calibration_ids, evaluation_ids  # noqa: E402
from pruning_core.prune import PruneConfig, prune_model  # noqa: E402

GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
PEER_SCRIPT = Path(__file__).resolve().with_name("_peer_oneshot.py")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (runnable processes; 2.0 on 2 cores = fully busy)."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine() -> dict:
    """CPU model, the bf16 matmul flags that decide our bf16 speed, cores and torch threads."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu_model": model, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "flags": {f: f in flags for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")},
            "torch": torch.__version__, "python": platform.python_version()}


def find_peer(explicit: str | None) -> tuple[str | None, str]:
    """The peer python, or None with the reason. Never builds the virtualenv (that takes minutes)."""
    candidates = [explicit, os.environ.get("PEER_PYTHON"),
                  str(Path(os.environ.get("PEER_VENV", Path.home() / ".cache" / "peer-venv")) / "bin" / "python")]
    for candidate in (c for c in candidates if c):
        if not Path(candidate).is_file():
            continue
        probe = subprocess.run([candidate, "-c", "import llmcompressor, torch, transformers; "
                                "print(llmcompressor.__version__, torch.__version__, transformers.__version__)"],
                               capture_output=True, text=True)
        if probe.returncode == 0:
            return candidate, probe.stdout.strip().splitlines()[-1]  # llmcompressor may log a line first
    return None, ("llm-compressor is not installed (build it with ../shared/tools/peer_venv.sh, then pass its "
                  "python with --peer-python or $PEER_PYTHON); measuring our side only")


def ppl_of(loaded, protocol: Protocol, evals: torch.Tensor, pruned) -> tuple[float, float]:
    """(perplexity, seconds) on the wiki evaluation windows with `pruned` applied (our evaluation, both sides)."""
    result = evaluate.evaluate_setting(loaded, protocol, ["wiki"], pruned, dense=False, eval_ids={"wiki": evals})
    return result.pruned_ppl["wiki"], result.seconds


def ours_point(loaded, protocol, calib, evals, method: str, calib_dtype: str) -> dict:
    """One pruned-propagation point on our side: prune seconds (capture included), perplexity, eval seconds."""
    log(f"ours: {method} 50 % pruned propagation, {calib_dtype} calibration forwards")
    config = PruneConfig(method, "unstructured", 0.5, "pruned", calib_dtype=calib_dtype)
    start = time.perf_counter()
    result = prune_model(loaded, calib, config, protocol.batch_size)
    seconds = time.perf_counter() - start
    ppl, eval_seconds = ppl_of(loaded, protocol, evals, result)
    log(f"ours: {method} {calib_dtype}: {seconds:.1f} s, ppl {ppl:.4f}")
    return {"prune_seconds": round(seconds, 2), "ppl": round(ppl, 4), "eval_seconds": round(eval_seconds, 2),
            "sparsity": round(result.sparsity, 4), "config": config.to_dict()}


def ours_grid(loaded, protocol, grid) -> dict:
    """The default dashboard analysis: one dense-propagation Wanda sweep over `grid` (no store: nothing cached)."""
    log(f"ours: dense-propagation Wanda sweep over {list(grid)}")
    spec = SweepSpec(model="embedded", methods=("wanda",), structures=("unstructured",), sparsities=tuple(grid),
                     eval_corpora=("wiki",), propagation="dense", protocol=protocol)
    start = time.perf_counter()
    results = run_sweep(spec, loaded=loaded)
    seconds = time.perf_counter() - start
    dense_eval = sum(results["dense"]["eval_seconds"].values())
    points = {f"{p['target_sparsity']:g}": {"ppl": round(p["ppl"]["wiki"], 4),
                                             "prune_seconds": round(p["prune_seconds"], 2),
                                             "eval_seconds": round(p["eval_seconds"], 2)} for p in results["points"]}
    log(f"ours: grid {seconds:.1f} s (dense evaluation {dense_eval:.1f} s of it)")
    # The peer side evaluates only the pruned points, so our comparable time leaves the dense evaluation out.
    return {"seconds": round(seconds - dense_eval, 2), "seconds_with_dense_eval": round(seconds, 2),
            "dense_ppl": round(results["dense"]["ppl"]["wiki"], 4), "points": points}


def peer_points(peer: str, folder: Path, ids_path: Path, method: str, sparsities, work: Path,
                loaded, protocol, evals, batch_size: int) -> dict:
    """Run the peer on `sparsities` (one oneshot each) in a subprocess, then evaluate its weights with ours."""
    from safetensors.torch import load_file

    log(f"peer: {method} at {list(sparsities)} (oneshot, sequential pipeline)")
    cmd = [peer, str(PEER_SCRIPT), "--model", str(folder), "--ids", str(ids_path), "--method", method,
           "--sparsities", ",".join(f"{s:g}" for s in sparsities), "--out", str(work / "peer"),
           "--batch-size", str(batch_size)]
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"the peer failed ({method}):\n{run.stderr[-4000:]}")
    out = {}
    for line in run.stdout.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        weights = load_file(record["weights"])
        pruned = SimpleNamespace(masks={name[:-len(".weight")]: w != 0 for name, w in weights.items()},
                                 weights={name[:-len(".weight")]: w for name, w in weights.items()})
        ppl, eval_seconds = ppl_of(loaded, protocol, evals, pruned)
        zeros = sum(int((w == 0).sum()) for w in weights.values()) / sum(w.numel() for w in weights.values())
        log(f"peer: {method} {record['sparsity']:g}: {record['oneshot_seconds']:.1f} s, ppl {ppl:.4f}")
        out[f"{record['sparsity']:g}"] = {"oneshot_seconds": record["oneshot_seconds"],
                                          "load_seconds": record["load_seconds"], "ppl": round(ppl, 4),
                                          "eval_seconds": round(eval_seconds, 2), "sparsity": round(zeros, 4),
                                          "batch_size": record["batch_size"],
                                          "torch_threads": record["torch_threads"]}
        Path(record["weights"]).unlink()
    out["_subprocess_wall_seconds"] = round(wall, 2)
    return out


def ratio(peer: float, ours: float) -> float:
    return round(peer / ours, 3) if ours > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 x 128 calibration, 4 evaluation windows, 2 grid "
                        "points: checks the script, not the speed")
    parser.add_argument("--save", action="store_true", help="write docs/runs/peer-speed.json (quick: "
                        "docs/runs/peer-speed-quick.json)")
    parser.add_argument("--peer-python", default=None, help="python of a virtualenv with llm-compressor")
    parser.add_argument("--peer-batch-size", type=int, default=1, help="oneshot batch size (its default: 1)")
    parser.add_argument("--no-fp32-check", action="store_true",
                        help="skip our fp32-calibration points (the fidelity reference of the bf16 default)")
    parser.add_argument("--cases", default="wanda,sparsegpt,grid")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cases = args.cases.split(",")
    protocol = (Protocol(calib="wiki", nsamples=8, seqlen=128, seed=0, eval_windows=4) if args.quick
                else Protocol(calib="wiki", nsamples=64, seqlen=512, seed=0, eval_windows=16))
    grid = (0.5, 0.7) if args.quick else GRID
    peer, peer_note = find_peer(args.peer_python)
    log(f"peer: {peer_note}" if peer is None else f"peer: {peer} (llmcompressor, torch, transformers: {peer_note})")
    report: dict = {"machine": machine(), "load_average_start": load_average(), "quick": args.quick,
                    "protocol": protocol.to_dict(), "grid": list(grid), "cases": cases,
                    "peer": {"python": peer, "versions": peer_note if peer else None,
                             "note": None if peer else peer_note, "batch_size": args.peer_batch_size},
                    "ours": {}, "peer_results": {}, "ratios": {}, "fidelity": {}}
    loaded = load_model("embedded")
    calib = calibration_ids(loaded, protocol)
    evals = evaluation_ids(loaded, "wiki", protocol)
    dense = evaluate.evaluate_setting(loaded, protocol, ["wiki"], None, eval_ids={"wiki": evals})
    report["dense_ppl"] = round(dense.dense_ppl["wiki"], 4)
    ours, theirs = report["ours"], report["peer_results"]
    for method in (m for m in ("wanda", "sparsegpt") if m in cases):
        # The default calibration dtype, and (unless skipped) fp32, the fidelity reference, and bf16, the fastest.
        # One run per dtype cannot tell a dtype's effect from the fp32 arithmetic's own spread (SparseGPT's
        # perplexity moves ~1 % with the summation order): benchmarks/calib_dtype_fidelity.py measures that.
        default = PruneConfig(method, sparsity=0.5).calib_dtype
        dtypes = [default] if args.no_fp32_check else list(dict.fromkeys([default, "bfloat16", "float32"]))
        ours[method] = {"default_calib_dtype": default,
                        **{dtype: ours_point(loaded, protocol, calib, evals, method, dtype) for dtype in dtypes}}
        if "float32" in dtypes and len(dtypes) > 1:
            fp32 = ours[method]["float32"]["ppl"]
            report["fidelity"][method] = {"ppl_float32": fp32, **{
                f"ppl_{d}": ours[method][d]["ppl"] for d in dtypes if d != "float32"}, **{
                f"relative_change_{d}": round(ours[method][d]["ppl"] / fp32 - 1, 5) for d in dtypes if d != "float32"}}
    if "grid" in cases:
        ours["grid"] = ours_grid(loaded, protocol, grid)

    if peer is not None:
        with tempfile.TemporaryDirectory(prefix="peer-speed-") as tmp:
            work = Path(tmp)
            ids_path = work / "ids.pt"
            torch.save(calib.clone(), ids_path)
            folder = _embedded_folder(model_cache_dir(), no_progress)
            for method in (m for m in ("wanda", "sparsegpt") if m in cases):
                theirs[method] = peer_points(peer, folder, ids_path, method, [0.5], work, loaded, protocol, evals,
                                             args.peer_batch_size)
                for dtype in (d for d in ("bfloat16", "float32") if d in ours[method]):
                    report["ratios"][f"{method}_per_point_{dtype}"] = ratio(
                        theirs[method]["0.5"]["oneshot_seconds"], ours[method][dtype]["prune_seconds"])
                report["ratios"][f"{method}_per_point_default"] = report["ratios"][
                    f"{method}_per_point_{ours[method]['default_calib_dtype']}"]
            if "grid" in cases:
                # The 50 % Wanda point is the same run as the per-point case; reuse it rather than run it twice.
                todo = [s for s in grid if not (s == 0.5 and "wanda" in theirs and "0.5" in theirs["wanda"])]
                points = peer_points(peer, folder, ids_path, "wanda", todo, work, loaded, protocol, evals,
                                     args.peer_batch_size) if todo else {}
                if len(todo) < len(grid):
                    points["0.5"] = dict(theirs["wanda"]["0.5"], reused_from="wanda_per_point")
                seconds = sum(points[f"{s:g}"]["oneshot_seconds"] + points[f"{s:g}"]["eval_seconds"] for s in grid)
                theirs["grid"] = {"seconds": round(seconds, 2), "points": {f"{s:g}": points[f"{s:g}"] for s in grid}}
                report["ratios"]["grid"] = ratio(seconds, ours["grid"]["seconds"])
    report["load_average_end"] = load_average()
    text = json.dumps(report, indent=2)
    print(text)
    if args.save:
        path = ROOT / "docs" / "runs" / ("peer-speed-quick.json" if args.quick else "peer-speed.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            # A run of some cases keeps the other cases of the saved file, each with the machine and load it was
            # measured under: every ratio still compares two sides measured in one run.
            earlier = json.loads(path.read_text())
            kept = [c for c in earlier.get("cases", []) if c not in cases]
            for case in kept:
                for part in ("ours", "peer_results", "fidelity"):
                    if case in earlier.get(part, {}):
                        report[part][case] = earlier[part][case]
                for key, value in earlier.get("ratios", {}).items():
                    if key == case or key.startswith(f"{case}_"):
                        report["ratios"][key] = value
                report.setdefault("earlier_runs", {})[case] = earlier.get("earlier_runs", {}).get(case) or {
                    "machine": earlier.get("machine"), "load_average_start": earlier.get("load_average_start"),
                    "load_average_end": earlier.get("load_average_end"), "note": earlier.get("note")}
            report["cases"] = cases + kept
            text = json.dumps(report, indent=2)
        path.write_text(text + "\n")
        log(f"saved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
