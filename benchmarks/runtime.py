"""Speed and quality measured inside llama.cpp (issue 28, points 2 and 3): what each GGUF form of the embedded model
weighs, how well it predicts, and how fast llama.cpp runs it on this machine.

On the embedded SmolLM2-135M, exported one after the other in one run:
- dense F16, Q8_0, Q4_0 and Q4_1 (4-bit in groups of 32, without and with a minimum per group);
- structured 25 % (heads and MLP channels, the structured capability's run `structured.run.run_structured` with a
  small calibration, its smaller folder written as GGUF by `cli.gguf_export.export_saved_folder` as
  `prunescope structured --export gguf` does) as F16, Q4_0 and Q4_1 (a matrix whose rows the 32-weight blocks do
  not divide stays F16, said in "fallbacks");
- 25 % of the decoder layers dropped (the same run with units "layers") as F16.
For each file: its bytes on disk, PruneScope's perplexity of exactly the file's weights (dequantized back into the
torch model) and llama.cpp's perplexity of the file on the same wiki windows (no token added in front), and the
speed in llama.cpp (`gguf.runtime_speed.measure_runtime_speed`: prefill of 512 tokens and batch-1 decode of 64,
one warm-up then the median of the repeats). The speeds are measured last, all files back to back, so they share
the machine's conditions; each records the load averages before and after and the share of the cores other
processes took. Speed-ups are against the dense F16 file, measured in the same loop.
Targets: 4-bit (groups of 32) decodes >= 1.5x the F16 file (2x stretch); the smallest file within +25 % wiki
perplexity (llama.cpp's, against the dense model's in torch) decodes at least as fast as the 4-bit one.

Usage: `nice -n 19 python benchmarks/runtime.py [--save] [--quick]` (prints JSON; --save writes
docs/runs/runtime.json; --quick: the tiny random model, short settings, seconds, numbers mean nothing).
Needs llama-cpp-python (`pip install '.[llama]'`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pruning_core.gguf.read import gguf_weights_applied  # noqa: E402
from pruning_core.gguf.runtime import llama_cpp_perplexity, require_llama_cpp, runtime_info  # noqa: E402
from pruning_core.gguf.runtime_speed import (  # noqa: E402
    RuntimeSpeedConfig, cpu_facts, machine_words, measure_runtime_speed)
from pruning_core.gguf.write import export_gguf, gguf_file_name  # noqa: E402
from pruning_core.metrics import perplexity  # noqa: E402
from pruning_core.models import load_model  # noqa: E402
from pruning_core.protocol import Protocol, evaluation_ids  # noqa: E402
from pruning_core.sizes.files import saved_size  # noqa: E402

OUT = Path("docs/runs/runtime.json")
FULL = {"model": "embedded", "seqlen": 256, "eval_windows": 8, "nsamples": 16, "ratio": 0.25,
        "dense_types": ["F16", "Q8_0", "Q4_0", "Q4_1"], "structured_types": ["F16", "Q4_0", "Q4_1"],
        "speed": {"prefill_tokens": 512, "decode_tokens": 64, "repeats": 5, "warmup": 1}}
QUICK = {"model": "tiny-llama", "seqlen": 64, "eval_windows": 2, "nsamples": 4, "ratio": 0.25,
         "dense_types": ["F16", "Q8_0", "Q4_0"], "structured_types": ["F16", "Q4_0"],
         "speed": {"prefill_tokens": 64, "decode_tokens": 16, "repeats": 2, "warmup": 1}}
#: The 4-bit form the speed target is about: 4-bit integers in groups of 32 with one scale each.
FOUR_BIT = "dense Q4_0"
#: The quality budget of the second target: +25 % wiki perplexity against the dense model.
BUDGET = 0.25


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def quality(loaded, path: Path, ids, record: dict) -> dict:
    """Bytes, tensor types and both perplexities of one written file."""
    with gguf_weights_applied(loaded, path):
        torch_ppl = perplexity(loaded, ids).ppl
    ours = llama_cpp_perplexity(path, ids)
    return {"file": path.name, "bytes": saved_size(path)["weight_bytes"], "type": record["type"],
            "architecture": record["architecture"]["name"], "tensor_types": record["tensor_types"],
            "fallbacks": [f["reason"] for f in record["fallbacks"]], "torch_ppl_same_weights": torch_ppl,
            "llama_cpp_ppl": ours["ppl"], "gap_percent": 100 * (ours["ppl"] / torch_ppl - 1),
            "within_1_percent": abs(ours["ppl"] / torch_ppl - 1) < 0.01}


def structured_files(loaded, settings: dict, folder: Path, ids, report: dict) -> None:
    """Structured 25 % (heads and channels) and 25 % of layers dropped, through the structured capability's run
    and its GGUF export, each file's quality added to report["files"]."""
    from pruning_core.cli.gguf_export import export_saved_folder
    from pruning_core.frontier.run import STRUCTURED_SETTINGS
    from pruning_core.structured.run import StructuredSpec, run_structured
    from pruning_core.structured.slicing import load_structured
    from transformers import AutoTokenizer

    from pruning_core.models import LoadedModel, adapter_for

    protocol = Protocol(nsamples=settings["nsamples"], seqlen=settings["seqlen"],
                        eval_windows=settings["eval_windows"])
    forms = (("structured 25 %", {**STRUCTURED_SETTINGS}, settings["structured_types"]),
             ("layers dropped 25 %", {"units": ("layers",)}, ["F16"]))
    for label, options, kinds in forms:
        began = time.perf_counter()
        run = run_structured(StructuredSpec(model=loaded.source, protocol=protocol, ratios=(settings["ratio"],),
                                            eval_corpora=("wiki",), speed=False, max_new_tokens=0, **options),
                             loaded=loaded, save_dir=folder / label.replace(" ", "-").replace("%", "pct"))
        point = run["points"][0]
        saved = point["saved"]["folder"]
        small_model = load_structured(saved)
        small = LoadedModel(small_model, AutoTokenizer.from_pretrained(saved), saved, f"{loaded.name}-{label}",
                            adapter_for(small_model))
        for kind in kinds:
            record = export_saved_folder(saved, folder / f"gguf-{label}-{kind}".replace(" ", "-").replace("%", "pct"),
                                         f"{loaded.name}-{label}".replace(" ", "-").replace("%", "pct"), kind, "F16")
            entry = quality(small, Path(record["path"]), ids, record)
            report["files"][f"{label} {kind}"] = {**entry, "path": record["path"],
                                                  "measured_ratio": point["measured_ratio"],
                                                  "torch_ppl_own_weights": point["ppl"]["wiki"],
                                                  "prune_seconds": time.perf_counter() - began}
            print(f"{label} {kind}", json.dumps({k: v for k, v in entry.items() if k != "tensor_types"}),
                  file=sys.stderr)
        del small, small_model


def targets(report: dict) -> dict:
    """The two targets of the module docstring, from the measured figures."""
    files, dense_ppl = report["files"], report["dense_torch_ppl"]
    four = files.get(FOUR_BIT) or {}
    out = {"four_bit": FOUR_BIT, "four_bit_decode_speedup": four.get("decode_speedup"),
           "four_bit_prefill_speedup": four.get("prefill_speedup")}
    speedup = four.get("decode_speedup")
    out["four_bit_decode_at_least_1_5x"] = speedup is not None and speedup >= 1.5
    out["four_bit_decode_at_least_2x"] = speedup is not None and speedup >= 2.0
    within = [(f["bytes"], name) for name, f in files.items() if f["llama_cpp_ppl"] <= (1 + BUDGET) * dense_ppl]
    if within:
        name = min(within)[1]
        best = files[name]
        out.update({"smallest_within_25_percent": name, "its_bytes": best["bytes"],
                    "its_llama_cpp_ppl": best["llama_cpp_ppl"], "its_decode_tokens_per_s": best.get("decode_tokens_per_s"),
                    "four_bit_decode_tokens_per_s": four.get("decode_tokens_per_s")})
        if best.get("decode_tokens_per_s") and four.get("decode_tokens_per_s"):
            out["smallest_within_budget_at_least_as_fast_as_four_bit"] = (
                best["decode_tokens_per_s"] >= four["decode_tokens_per_s"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", action="store_true", help=f"write {OUT}")
    parser.add_argument("--quick", action="store_true", help="tiny random model, seconds; numbers mean nothing")
    args = parser.parse_args()
    if args.quick and args.save:
        parser.error(f"--quick numbers mean nothing; {OUT} keeps only full runs, so drop --save or --quick.")
    settings = QUICK if args.quick else FULL
    require_llama_cpp()
    began = time.perf_counter()
    report = {"settings": settings, "machine": {**cpu_facts(), "llama_cpp": runtime_info()},
              "load_before": load_average(), "files": {}}
    loaded = load_model(settings["model"])
    protocol = Protocol(seqlen=settings["seqlen"], eval_windows=settings["eval_windows"])
    ids = evaluation_ids(loaded, "wiki", protocol)
    report["windows"] = list(ids.shape)
    report["dense_torch_ppl"] = perplexity(loaded, ids).ppl
    with tempfile.TemporaryDirectory(prefix="prunescope-runtime-") as work:
        folder = Path(work)
        for kind in settings["dense_types"]:
            path = folder / gguf_file_name(loaded.name, kind)
            record = export_gguf(loaded, path, kind, fallback="F16")
            report["files"][f"dense {kind}"] = {**quality(loaded, path, ids, record), "path": str(path)}
            print(f"dense {kind}", json.dumps(report["files"][f"dense {kind}"]["llama_cpp_ppl"]), file=sys.stderr)
        structured_files(loaded, settings, folder, ids, report)
        del loaded
        # Speeds last, back to back, so every file is timed under the same conditions.
        config = RuntimeSpeedConfig(**settings["speed"])
        report["load_before_speeds"] = load_average()
        for name, entry in report["files"].items():
            speed = measure_runtime_speed(entry.pop("path"), config)
            entry.update({"prefill_tokens_per_s": speed["prefill_tokens_per_s"],
                          "decode_tokens_per_s": speed["decode_tokens_per_s"], "rounds": speed["rounds"],
                          "speed_load": speed["load"]})
            print(name, f"prefill {speed['prefill_tokens_per_s']:.1f} tok/s, decode "
                        f"{speed['decode_tokens_per_s']:.1f} tok/s", file=sys.stderr)
        report["speed_settings"] = speed["settings"]
        report["runtime"] = f"llama.cpp (llama-cpp-python {speed['runtime_version']})"
        report["machine_words"] = machine_words(speed["machine"])
    base = report["files"]["dense F16"]
    for entry in report["files"].values():
        entry["prefill_speedup"] = entry["prefill_tokens_per_s"] / base["prefill_tokens_per_s"]
        entry["decode_speedup"] = entry["decode_tokens_per_s"] / base["decode_tokens_per_s"]
    report["targets"] = targets(report)
    report["load_after"] = load_average()
    report["seconds"] = time.perf_counter() - began
    report["table"] = [{"form": name, "bytes": f["bytes"], "torch_ppl": round(f["torch_ppl_same_weights"], 3),
                        "llama_cpp_ppl": round(f["llama_cpp_ppl"], 3), "prefill_tok_s": round(f["prefill_tokens_per_s"], 1),
                        "decode_tok_s": round(f["decode_tokens_per_s"], 1),
                        "decode_speedup": round(f["decode_speedup"], 2), "prefill_speedup": round(f["prefill_speedup"], 2)}
                       for name, f in report["files"].items()]
    text = json.dumps(report, indent=1)
    print(text)
    if args.save:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text + "\n")


if __name__ == "__main__":
    main()
