"""Weight quantization on the embedded model against llm-compressor 0.14, both sides measured one after the other.

Protocol: wiki calibration, 64 windows of 512 tokens (seed 0, handed to the peer as token ids so both sides see
the same data), perplexity on the first 16 evaluation windows of wiki and news with OUR evaluation for both sides
(`evaluate.evaluate_setting`, fp32), so the numbers are comparable; the peer's dequantized weights come back
through a safetensors file (`benchmarks/_peer_quantize.py`, run with the peer virtualenv's python).

Cases:
- fidelity: GPTQ 4-bit, groups of 64, symmetric (ours `quantization.model.quantize_model` with its default static
  activation ordering; the peer's `GPTQModifier` with its defaults: blocks of 128, 1 % damping, static activation
  ordering; benchmarks/quantization_actorder.py compares our orders) -- target: ours
  within 2 % of the peer's wiki perplexity; RTN 4-bit groups of 64 symmetric against the peer's
  `QuantizationModifier` -- target: within 1 %.
- speed: GPTQ seconds per point, ours (capture of layer-0 inputs included) then the peer's `oneshot` wall time
  (its model load apart) -- target: ours at least 1.5x faster. Also each side's process CPU seconds, and the
  machine's busy share over each phase (from /proc/stat: the share of all cores busy, and the share left after
  the measured process's own CPU time, i.e. what other jobs took), because the machine is shared.
- the Q4_1 note: the embedded model's weights come from a Q4_1 GGUF (4 bits, groups of 32, fp16 scale and
  minimum); RTN 4-bit groups of 32 asymmetric is measured for how many weights it reproduces exactly.
- export: the GPTQ point written as a compressed-tensors pack-quantized folder and as 16-bit safetensors, bytes
  measured on the files; the folder reloaded with plain `AutoModelForCausalLM.from_pretrained` on the CPU and
  evaluated (target: within 0.5 % of the in-memory quantized model's perplexity).

    python benchmarks/quantization.py [--save] [--peer-python PATH] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.peer_speed import find_peer, load_average, log, machine  # noqa: E402
from pruning_core import evaluate  # noqa: E402
from pruning_core.models import load_model, weight_matrix  # noqa: E402
from pruning_core.models.loading import _embedded_folder, model_cache_dir  # noqa: E402
from pruning_core.progress import no_progress  # noqa: E402
from pruning_core.protocol import Protocol, calibration_ids  # noqa: E402
from pruning_core.quantization import export  # noqa: E402
from pruning_core.quantization.model import quantize_model  # noqa: E402
from pruning_core.quantization.scheme import QuantScheme  # noqa: E402

PEER_SCRIPT = Path(__file__).resolve().with_name("_peer_quantize.py")
CORPORA = ("wiki", "news")


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


class Phase:
    """Wall seconds, this process's CPU seconds, and the machine's busy share over a `with` block."""

    def __enter__(self) -> "Phase":
        self.wall0, self.cpu0, self.stat0 = time.perf_counter(), time.process_time(), cpu_times()
        self.child0 = os.times().children_user + os.times().children_system
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.wall0
        self.cpu_seconds = time.process_time() - self.cpu0
        self.child_cpu_seconds = os.times().children_user + os.times().children_system - self.child0
        busy1, total1 = cpu_times()
        self.busy_share = (busy1 - self.stat0[0]) / max(total1 - self.stat0[1], 1e-9)

    def record(self, own_cpu: float) -> dict:
        """own_cpu: CPU seconds of the process measured (this one, or the peer child)."""
        cores = os.cpu_count() or 1
        own_share = own_cpu / max(self.seconds * cores, 1e-9)
        return {"seconds": round(self.seconds, 2), "process_cpu_seconds": round(own_cpu, 2),
                "machine_busy_share": round(self.busy_share, 3),
                "others_busy_share": round(max(self.busy_share - own_share, 0.0), 3)}


def ppl(loaded, protocol, eval_ids, pruned) -> dict:
    result = evaluate.evaluate_setting(loaded, protocol, list(eval_ids), pruned, dense=False, eval_ids=eval_ids)
    return {c: round(v, 4) for c, v in result.pruned_ppl.items()}


def ours(loaded, calib, protocol, eval_ids, scheme: QuantScheme, calib_dtype: str = "float32") -> tuple[dict, object]:
    log(f"ours: {scheme.label()} (calibration forwards in {calib_dtype})")
    with Phase() as phase:
        result = quantize_model(loaded, calib, scheme, batch_size=protocol.batch_size, calib_dtype=calib_dtype)
    record = {**phase.record(phase.cpu_seconds), "calib_dtype": calib_dtype,
              "ppl": ppl(loaded, protocol, eval_ids, result)}
    log(f"ours: {scheme.label()}: {record}")
    return record, result


def peer(python: str, folder: Path, ids_path: Path, work: Path, method: str, scheme: QuantScheme, loaded, protocol,
         eval_ids, actorder: str = "static") -> dict:
    """Run the peer (`_peer_quantize.py`) in a subprocess, then evaluate its weights with ours."""
    log(f"peer: {method} {scheme.label()} (actorder {actorder})")
    cmd = [python, str(PEER_SCRIPT), "--model", str(folder), "--ids", str(ids_path), "--method", method,
           "--bits", str(scheme.bits), "--group-size", str(scheme.group_size or 0), "--out", str(work / method),
           "--actorder", actorder] + ([] if scheme.symmetric else ["--asymmetric"])
    with Phase() as phase:
        run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"peer failed:\n{run.stderr[-3000:]}")
    line = json.loads(run.stdout.strip().splitlines()[-1])
    record = evaluate_peer(line, loaded, protocol, eval_ids)
    record["subprocess"] = phase.record(phase.child_cpu_seconds)
    log(f"peer: {method}: {record}")
    return record


def evaluate_peer(line: dict, loaded, protocol, eval_ids) -> dict:
    """Our evaluation of the peer's dequantized weights (`line`: the JSON line `_peer_quantize.py` printed)."""
    from safetensors.torch import load_file

    weights = load_file(line["weights"])
    names = [n[:-len(".weight")] for n in weights]
    assert set(names) == set(loaded.adapter.prunable_modules(loaded.model)), "the peer quantized other modules"
    masks = {n: torch.ones_like(weights[n + ".weight"], dtype=torch.bool) for n in names}
    values = {n: weights[n + ".weight"] for n in names}
    return {"oneshot_seconds": line["oneshot_seconds"], "oneshot_cpu_seconds": line["oneshot_cpu_seconds"],
            "load_seconds": line["load_seconds"], "actorder": line.get("actorder"),
            "ppl": ppl(loaded, protocol, eval_ids, type("Peer", (), {"masks": masks, "weights": values})())}


def q4_1_reproduction(loaded, result) -> dict:
    """How many weights RTN 4-bit groups of 32 asymmetric gives back exactly (the file's own Q4_1 values)."""
    same = total = 0
    worst = 0.0
    for name, module in loaded.adapter.prunable_modules(loaded.model).items():
        original = weight_matrix(module).detach()
        quantized = result.matrices[name].dequantize()
        same += int((quantized == original).sum())
        total += original.numel()
        worst = max(worst, float(((quantized - original).abs() / original.abs().amax(dim=1, keepdim=True)).max()))
    return {"exact_share": round(same / total, 4), "max_error_relative_to_row_max": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", action="store_true", help="write docs/runs/quantization.json")
    parser.add_argument("--peer-python", default=None)
    parser.add_argument("--quick", action="store_true", help="8 x 128 calibration, 4 windows (a smoke run)")
    parser.add_argument("--sections", default="gptq,export,rtn,q4_1",
                        help="comma-separated parts to run: gptq (ours, then the peer's), peer_gptq (only the peer's, "
                             "into a file that holds ours: with --peer-gptq-result), export (our GPTQ point's files; "
                             "without gptq, an RTN point of the same scheme: same shapes, same bytes), rtn, q4_1")
    parser.add_argument("--output", default=str(ROOT / "docs" / "runs" / "quantization.json"),
                        help="where --save writes the JSON")
    parser.add_argument("--peer-gptq-result", default=None, metavar="JSON",
                        help="the JSON line of a GPTQ run of _peer_quantize.py made apart (on a machine too busy to "
                             "run both sides one after the other in time): evaluate its weights instead of running it")
    parser.add_argument("--merge", action="store_true",
                        help="add this run's sections to the --output file instead of starting it afresh")
    parser.add_argument("--calib-dtype", default="float32", choices=["float32", "bfloat16"],
                        help="compute dtype of our GPTQ's calibration forwards (the peer's are fp32)")
    parser.add_argument("--peer-actorder-none", action="store_true",
                        help="also run the peer's GPTQ without activation ordering (the paper's column order)")
    parser.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                        help="only merge the sections of these part files (runs made apart) into --output")
    args = parser.parse_args()
    if args.combine:
        combine(Path(args.output), [Path(p) for p in args.combine])
        return

    protocol = (Protocol(calib="wiki", nsamples=8, seqlen=128, eval_windows=4) if args.quick
                else Protocol(calib="wiki", nsamples=64, seqlen=512, eval_windows=16))
    target_file = Path(args.output)
    sections = set(args.sections.split(","))
    out = {"machine": machine(), "load_average_start": load_average(), "protocol": protocol.to_dict(),
           "corpora": list(CORPORA), "targets": {"gptq_wiki_within": 0.02, "rtn_wiki_within": 0.01,
                                                 "gptq_speedup_at_least": 1.5, "reload_within": 0.005}}
    if args.merge and target_file.is_file():  # parts run apart add to one file; each part records its machine
        out = {**json.loads(target_file.read_text()), **{k: v for k, v in out.items() if k in ("targets",)}}
    out.setdefault("parts", []).append({"sections": sorted(sections), "machine": machine(),
                                        "load_average_start": load_average(), "started": time.time()})

    def checkpoint(complete: bool = False) -> None:
        """Write what is measured so far (a busy machine may stop a long run): "complete" says whether all is."""
        if args.save:
            target_file.write_text(json.dumps({**out, "complete": complete}, indent=2) + "\n")

    python, versions = find_peer(args.peer_python)
    out["peer"] = {"python": python, "versions": versions}
    loaded = load_model("embedded")
    folder = _embedded_folder(model_cache_dir(), no_progress)
    calib = calibration_ids(loaded, protocol)
    eval_ids = evaluate.evaluation_windows(loaded, protocol, CORPORA)
    if "dense_ppl" not in out and sections & {"gptq", "rtn", "q4_1"}:
        dense = evaluate.evaluate_setting(loaded, protocol, CORPORA, None, eval_ids=eval_ids)
        out["dense_ppl"] = {c: round(v, 4) for c, v in dense.dense_ppl.items()}
    gptq_scheme = QuantScheme(4, 64, True, "gptq")
    rtn_scheme = QuantScheme(4, 64, True, "rtn")
    with tempfile.TemporaryDirectory(prefix="quant-bench-") as tmp:
        work = Path(tmp)
        ids_path = work / "calib_ids.pt"
        torch.save(calib, ids_path)
        # GPTQ, ours then the peer's, one after the other.
        if "gptq" in sections:
            gptq_section(out, loaded, calib, protocol, eval_ids, gptq_scheme, python, folder, ids_path, work, args,
                         checkpoint, "export" in sections)
        elif "export" in sections:  # the same scheme rounded to nearest: the files have the same shapes and bytes
            rtn_point, result = ours(loaded, None, protocol, eval_ids, rtn_scheme)
            export_section(out, loaded, protocol, eval_ids, result, rtn_point["ppl"], work, "rtn")
            checkpoint()
        if "peer_gptq" in sections:
            peer_gptq_section(out, loaded, protocol, eval_ids, args)
            checkpoint()
        if "rtn" in sections:
            rtn_section(out, loaded, protocol, eval_ids, rtn_scheme, python, folder, ids_path, work)
            checkpoint()
        if "q4_1" in sections:
            q4_1_section(out, loaded, protocol, eval_ids)
    out["parts"][-1]["load_average_end"] = load_average()
    print(json.dumps(out, indent=2))
    checkpoint(complete=all(k in out for k in ("gptq", "export", "rtn", "q4_1")))


def combine(output: Path, parts: list[Path]) -> None:
    """Merge part files written by runs made apart (--sections ... --output PART) into `output`: their measured
    sections are copied as they are, and each part's machine and load averages are kept under "parts"."""
    out = json.loads(output.read_text()) if output.is_file() else {}
    out.setdefault("parts", [])
    for path in parts:
        part = json.loads(path.read_text())
        for key in ("gptq", "export", "rtn", "q4_1", "dense_ppl", "protocol", "corpora", "peer", "targets"):
            if key in part and key not in out:
                out[key] = part[key]
        out["parts"].append({"file": path.name, "sections": [k for k in ("gptq", "export", "rtn", "q4_1") if k in part],
                             "machine": part.get("machine"), "load_average_start": part.get("load_average_start"),
                             "load_average_end": part.get("load_average_end"), "complete": part.get("complete")})
    out["complete"] = all(k in out for k in ("gptq", "export", "rtn", "q4_1"))
    output.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


def gptq_section(out, loaded, calib, protocol, eval_ids, scheme, python, folder, ids_path, work, args,
                 checkpoint, with_export: bool) -> None:
    """GPTQ, ours then the peer's, one after the other; then (with_export) our point's files and reload."""
    out["gptq"] = {"scheme": scheme.to_dict()}
    out["gptq"]["ours"], result = ours(loaded, calib, protocol, eval_ids, scheme, args.calib_dtype)
    checkpoint()
    if args.peer_gptq_result:
        peer_gptq_section(out, loaded, protocol, eval_ids, args)
    elif python:
        out["gptq"]["peer"] = peer(python, folder, ids_path, work, "gptq", scheme, loaded, protocol, eval_ids)
        compare_gptq(out)
    checkpoint()
    if args.peer_actorder_none and python:
        out["gptq"]["peer_actorder_none"] = peer(python, folder, ids_path, work, "gptq", scheme, loaded,
                                                 protocol, eval_ids, actorder="none")
        checkpoint()
    if with_export:
        export_section(out, loaded, protocol, eval_ids, result, out["gptq"]["ours"]["ppl"], work, "gptq")
        checkpoint()


def compare_gptq(out) -> None:
    """Ours against the peer's: wiki perplexity ratio, wall-time speed-up and CPU-seconds ratio."""
    o, p = out["gptq"]["ours"], out["gptq"]["peer"]
    out["gptq"]["wiki_relative_to_peer"] = round(o["ppl"]["wiki"] / p["ppl"]["wiki"] - 1.0, 4)
    out["gptq"]["speedup"] = round(p["oneshot_seconds"] / o["seconds"], 2)
    out["gptq"]["cpu_seconds_ratio"] = round(p["oneshot_cpu_seconds"] / o["process_cpu_seconds"], 2)


def peer_gptq_section(out, loaded, protocol, eval_ids, args) -> None:
    """The peer's GPTQ run apart (`--peer-gptq-result`): evaluated here and compared with ours in `out`."""
    if not args.peer_gptq_result or "ours" not in out.get("gptq", {}):
        raise SystemExit("peer_gptq needs --peer-gptq-result and an --output file that holds our GPTQ point")
    line = json.loads(Path(args.peer_gptq_result).read_text().strip().splitlines()[-1])
    out["gptq"]["peer"] = {**evaluate_peer(line, loaded, protocol, eval_ids),
                           "run_apart": ("run in its own process from the same calibration ids, overlapping our "
                                         "GPTQ in time (the machine was too busy to run them one after the other "
                                         "in time): compare CPU seconds before wall seconds")}
    compare_gptq(out)


def export_section(out, loaded, protocol, eval_ids, result, in_memory_ppl, work, method: str) -> None:
    """A quantized point's files: bytes on disk per format, packed integers, plain transformers reload."""
    log(f"export: compressed-tensors and 16-bit folders of the {method} point")
    target = work / f"{method}-ct"
    export.write_compressed_tensors(loaded, result, target)
    sizes = export.measured_sizes(loaded, result, target)
    out["export"] = {"quantized_with": method, "scheme": result.scheme.to_dict(), "in_memory_ppl": in_memory_ppl,
                     "bytes": {f: {k: v for k, v in s.items() if k != "files"} for f, s in sizes.items()},
                     "packed_weights": export.packed_weights_check(target, result),
                     "reload": export.reload_check(target, loaded, protocol, CORPORA, eval_ids, in_memory_ppl)}
    log(f"export: {out['export']}")


def rtn_section(out, loaded, protocol, eval_ids, scheme, python, folder, ids_path, work) -> None:
    """Round to nearest, ours then the peer's QuantizationModifier."""
    out["rtn"] = {"scheme": scheme.to_dict()}
    out["rtn"]["ours"], _ = ours(loaded, None, protocol, eval_ids, scheme)
    if python:
        out["rtn"]["peer"] = peer(python, folder, ids_path, work, "rtn", scheme, loaded, protocol, eval_ids)
        out["rtn"]["wiki_relative_to_peer"] = round(out["rtn"]["ours"]["ppl"]["wiki"]
                                                    / out["rtn"]["peer"]["ppl"]["wiki"] - 1.0, 4)


def q4_1_section(out, loaded, protocol, eval_ids) -> None:
    """The Q4_1 origin: 4-bit groups of 32 asymmetric, and how many weights it gives back exactly."""
    scheme = QuantScheme(4, 32, False, "rtn")
    out["q4_1"] = {"scheme": scheme.to_dict()}
    out["q4_1"]["ours"], result = ours(loaded, None, protocol, eval_ids, scheme)
    out["q4_1"]["reproduction"] = q4_1_reproduction(loaded, result)
    out["q4_1"]["note"] = ("The embedded model's weights come from a Q4_1 GGUF (4 bits, groups of 32, a scale and "
                           "a minimum): 4-bit figures on it look better than on a model trained in 16 bits.")


if __name__ == "__main__":
    main()
