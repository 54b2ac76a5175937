"""GPTQ's column order on the embedded model: static activation ordering (the default, llm-compressor's) against
natural order and round to nearest, one after the other in one process.

Protocol (a quick check, not the fidelity protocol of benchmarks/quantization.py): 4-bit, groups of 64, symmetric;
wiki calibration, 16 windows of 256 tokens (seed 0); perplexity on the first 4 evaluation windows of wiki with
THE evaluation (`evaluate.evaluate_setting`, fp32). Each point through `quantization.model.quantize_model`, as the
benchmark and `prunescope quantize` do; GPTQ's seconds include the capture of layer-0 inputs and the walk.

    python benchmarks/quantization_actorder.py [--save] [--output PATH] [--nsamples N --seqlen L --windows W]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.peer_speed import load_average, log, machine  # noqa: E402
from pruning_core import evaluate  # noqa: E402
from pruning_core.models import load_model  # noqa: E402
from pruning_core.protocol import Protocol, calibration_ids  # noqa: E402
from pruning_core.quantization.model import quantize_model  # noqa: E402
from pruning_core.quantization.run import QUANTIZER_VERSION  # noqa: E402
from pruning_core.quantization.scheme import QuantScheme  # noqa: E402

CORPORA = ("wiki",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", action="store_true", help="write the JSON to --output")
    parser.add_argument("--output", default=str(ROOT / "docs" / "runs" / "quantization-actorder.json"))
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--windows", type=int, default=4)
    args = parser.parse_args()

    protocol = Protocol(calib="wiki", nsamples=args.nsamples, seqlen=args.seqlen, eval_windows=args.windows)
    out = {"machine": machine(), "load_average_start": load_average(), "protocol": protocol.to_dict(),
           "corpora": list(CORPORA), "quantizer_version": QUANTIZER_VERSION,
           "note": ("The embedded model's weights come from a Q4_1 GGUF (4 bits, groups of 32 with a minimum): "
                    "4-bit figures on it are measured on weights already on a 4-bit grid."),
           "points": {}}
    loaded = load_model("embedded")
    calib = calibration_ids(loaded, protocol)
    eval_ids = evaluate.evaluation_windows(loaded, protocol, CORPORA)
    dense = evaluate.evaluate_setting(loaded, protocol, CORPORA, None, eval_ids=eval_ids)
    out["dense_ppl"] = {c: round(v, 4) for c, v in dense.dense_ppl.items()}
    log(f"dense: {out['dense_ppl']}")
    schemes = {"rtn": QuantScheme(4, 64, True, "rtn"),
               "gptq_actorder_none": QuantScheme(4, 64, True, "gptq", actorder="none"),
               "gptq_actorder_static": QuantScheme(4, 64, True, "gptq", actorder="static")}
    for name, scheme in schemes.items():
        clock = time.perf_counter()
        result = quantize_model(loaded, calib if scheme.method == "gptq" else None, scheme,
                                batch_size=protocol.batch_size)
        seconds = time.perf_counter() - clock
        ppl = evaluate.evaluate_setting(loaded, protocol, CORPORA, result, dense=False, eval_ids=eval_ids,
                                        label=scheme.label()).pruned_ppl
        out["points"][name] = {"scheme": scheme.to_dict(), "label": scheme.label(), "quantize_seconds": round(seconds, 2),
                               "ppl": {c: round(v, 4) for c, v in ppl.items()},
                               "change": {c: round(ppl[c] / out["dense_ppl"][c] - 1.0, 4) for c in ppl}}
        log(f"{name}: {out['points'][name]}")
    points = out["points"]
    out["static_relative_to_none"] = round(points["gptq_actorder_static"]["ppl"]["wiki"]
                                           / points["gptq_actorder_none"]["ppl"]["wiki"] - 1.0, 4)
    out["static_relative_to_rtn"] = round(points["gptq_actorder_static"]["ppl"]["wiki"]
                                          / points["rtn"]["ppl"]["wiki"] - 1.0, 4)
    out["load_average_end"] = load_average()
    text = json.dumps(out, indent=2)
    print(text)
    if args.save:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
