"""GGUF export checked inside llama.cpp (issue 28, groundwork): the embedded model's files load in llama.cpp, give
the torch model's greedy tokens, and llama.cpp's perplexity matches PruneScope's on the same weights.

On the embedded SmolLM2-135M (the same windows for both runtimes: the first `eval_windows` wiki evaluation windows
of `seqlen` tokens, no token added in front), for each exported type:
- bytes of the file on disk (`sizes.files.saved_size`) and the tensor types written;
- PruneScope's perplexity of exactly the file's weights (`gguf.read.gguf_weights_applied`: dequantized back into
  the torch model) and llama.cpp's perplexity of the file (`gguf.runtime.llama_cpp_perplexity`), and their gap
  (target: within 1 %);
- greedy continuations of a short prompt, torch (arg-max by whole forward passes on the file's weights) against
  llama.cpp (arg-max of its logits), and whether llama.cpp tokenizes the prompt as the Hugging Face tokenizer does;
  one near-tie flips the rest of a continuation, so also the top-1 token at every position of the evaluation
  windows (teacher-forced): the share where both runtimes agree, over all positions and over those whose top two
  torch logits are at least 0.5 apart (not near-ties);
- for Q4_1, how many tensors are byte-identical to the embedded model's own Q4_1 file (the embedded weights are
  that file dequantized, so a faithful export reproduces it);
- structured 25 % (heads and MLP channels, OWL allocation: per-layer widths, written as llama.cpp's `deci` block)
  and 25 % of whole layers removed: F16 files, the same two perplexities.
Records the CPU (model, flags), torch threads, llama.cpp's own feature line and the load average.
Usage: `python benchmarks/gguf_check.py [--out docs/runs/gguf-check.json] [--quick]` (--quick: tiny random model,
seconds, numbers mean nothing). Needs llama-cpp-python (`pip install '.[llama]'`). Resumable per entry.
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

import torch  # noqa: E402

from pruning_core.gguf.read import gguf_weights_applied  # noqa: E402
from pruning_core.gguf.runtime import (  # noqa: E402
    greedy_tokens, llama_cpp_perplexity, opened_gguf, require_llama_cpp, runtime_info)
from pruning_core.gguf.write import export_gguf, gguf_file_name  # noqa: E402
from pruning_core.metrics import perplexity  # noqa: E402
from pruning_core.models import embedded_gguf_path, load_model  # noqa: E402
from pruning_core.protocol import Protocol, evaluation_ids  # noqa: E402
from pruning_core.sizes.files import saved_size  # noqa: E402
from pruning_core.structured.speed import machine_facts  # noqa: E402

FULL = {"model": "embedded", "seqlen": 512, "eval_windows": 4, "types": ["F16", "Q8_0", "Q4_1", "Q4_0"],
        "new_tokens": 24, "structured": {"nsamples": 16, "ratio": 0.25}}
QUICK = {"model": "tiny-llama", "seqlen": 64, "eval_windows": 2, "types": ["F16", "Q8_0"], "new_tokens": 8,
         "structured": {"nsamples": 4, "ratio": 0.25}}
PROMPT = "The history of the city begins"


def _save(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out)


def torch_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(new_tokens):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def identical_tensors(ours: Path, theirs: Path) -> dict:
    import gguf
    import numpy as np

    a = {t.name: t for t in gguf.GGUFReader(str(ours)).tensors}
    b = {t.name: t for t in gguf.GGUFReader(str(theirs)).tensors}
    same = sum(1 for name in a if name in b and a[name].tensor_type == b[name].tensor_type
               and np.array_equal(np.asarray(a[name].data), np.asarray(b[name].data)))
    return {"identical": same, "ours": len(a), "theirs": len(b)}


#: Top-two logit gap (nats) above which a position is not a near-tie.
CLEAR_MARGIN = 0.5


def torch_top1(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1 token, gap between the top two logits) at every predicted position, (n, seqlen - 1) each."""
    tops, gaps = [], []
    with torch.inference_mode():
        for window in ids:
            logits = model(input_ids=window[None]).logits[0, :-1].float()  # (seqlen - 1, vocab)
            top2 = logits.topk(2, dim=-1).values
            tops.append(logits.argmax(-1))
            gaps.append(top2[:, 0] - top2[:, 1])
    return torch.stack(tops), torch.stack(gaps)


def check_file(loaded, path: Path, ids: torch.Tensor, prompt: list[int], new_tokens: int, record: dict) -> dict:
    """Perplexities, greedy tokens and top-1 agreement of one exported file (module docstring)."""
    with gguf_weights_applied(loaded, path):
        torch_ppl = perplexity(loaded, ids).to_dict()
        expected = torch_greedy(loaded.model, prompt, new_tokens)
        top1, gap = torch_top1(loaded.model, ids)
    with opened_gguf(path, n_ctx=ids.shape[1]) as llm:
        got = greedy_tokens(path, prompt, new_tokens, llm=llm)
        same_tokenization = llm.tokenize(PROMPT.encode(), add_bos=False, special=False) == prompt
        ours = llama_cpp_perplexity(path, ids, llm=llm, keep_top1=True)
    agree = torch.from_numpy(ours["top1"]) == top1
    clear = gap >= CLEAR_MARGIN
    return {"bytes": saved_size(path)["weight_bytes"], "type": record["type"], "architecture":
            record["architecture"]["name"], "tensor_types": record["tensor_types"],
            "fallbacks": len(record["fallbacks"]), "tokenizer": record["tokenizer"].get("source"),
            "torch_ppl_same_weights": torch_ppl["ppl"], "llama_cpp_ppl": ours["ppl"],
            "gap_percent": 100 * (ours["ppl"] / torch_ppl["ppl"] - 1),
            "within_1_percent": abs(ours["ppl"] / torch_ppl["ppl"] - 1) < 0.01,
            "greedy_torch": expected, "greedy_llama_cpp": got, "greedy_equal": expected == got,
            "greedy_equal_prefix": next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), len(got)),
            "prompt_tokenized_alike": same_tokenization,
            "top1_agreement": float(agree.float().mean()), "top1_agreement_clear": float(agree[clear].float().mean()),
            "clear_positions": int(clear.sum()), "positions": int(agree.numel()), "torch_seconds": torch_ppl["seconds"],
            "llama_cpp_seconds": ours["seconds"], "export_seconds": record["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/runs/gguf-check.json")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    require_llama_cpp()
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {}
    if report.get("settings") != settings:
        report = {"settings": settings}
    report["machine"] = {**machine_facts(), "llama_cpp": runtime_info(), "load_average": os.getloadavg()}
    loaded = load_model(settings["model"])
    protocol = Protocol(seqlen=settings["seqlen"], eval_windows=settings["eval_windows"])
    ids = evaluation_ids(loaded, "wiki", protocol)
    prompt = loaded.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    if "dense_fp32_ppl" not in report:
        report["dense_fp32_ppl"] = perplexity(loaded, ids).ppl
        report["windows"] = list(ids.shape)
        _save(out, report)
    with tempfile.TemporaryDirectory(prefix="gguf-check-") as folder:
        # 16- and 8-bit first, then the structured files (llama.cpp's deci block), then the 4-bit types.
        for kind in settings["types"][:2]:
            _type_entry(report, out, loaded, kind, settings, ids, prompt, Path(folder))
        _structured_entries(report, out, loaded, settings, ids, prompt, Path(folder))
        for kind in settings["types"][2:]:
            _type_entry(report, out, loaded, kind, settings, ids, prompt, Path(folder))
    print(json.dumps({k: v for k, v in report.items() if k != "files"}, indent=1))


def _type_entry(report, out, loaded, kind, settings, ids, prompt, folder: Path) -> None:
    """One dense file of type `kind` checked (skipped when the report has it)."""
    entries = report.setdefault("files", {})
    if kind in entries:
        return
    path = folder / gguf_file_name(loaded.name, kind)
    record = export_gguf(loaded, path, kind)
    entries[kind] = check_file(loaded, path, ids, prompt, settings["new_tokens"], record)
    if kind == "Q4_1" and settings["model"] == "embedded":
        entries[kind]["same_as_embedded_q4_1_file"] = identical_tensors(path, embedded_gguf_path())
    entries[kind]["machine_load"] = os.getloadavg()
    _save(out, report)
    print(kind, json.dumps({k: v for k, v in entries[kind].items() if not k.startswith("greedy_")}))


def _structured_entries(report, out, loaded, settings, ids, prompt, folder: Path) -> None:
    """Structured (per-layer widths, deci) and layer-dropped models as F16 files."""
    from pruning_core.protocol import calibration_ids
    from pruning_core.structured import StructuredConfig, prune_structured

    entries = report.setdefault("structured", {})
    protocol = Protocol(nsamples=settings["structured"]["nsamples"], seqlen=settings["seqlen"])
    calib = calibration_ids(loaded, protocol)
    ratio = settings["structured"]["ratio"]
    for name, config in (("widths_owl", StructuredConfig(units=("heads", "channels"), ratio=ratio)),
                         ("layers", StructuredConfig(units=("layers",), ratio=ratio))):
        if name in entries:
            continue
        if name == "widths_owl":
            config = _owl_config(loaded, protocol, calib, ratio)
        start = time.perf_counter()
        pruned = prune_structured(loaded, calib, config).loaded
        prune_seconds = time.perf_counter() - start
        path = folder / gguf_file_name(f"{loaded.name}-{name}", "F16")
        record = export_gguf(pruned, path, "F16")
        entries[name] = {**check_file(pruned, path, ids, prompt, settings["new_tokens"], record),
                         "prune_seconds": prune_seconds, "layers": record["architecture"]["layers"],
                         "torch_ppl_own_weights": perplexity(pruned, ids).ppl, "machine_load": os.getloadavg()}
        _save(out, report)
        print(name, json.dumps({k: v for k, v in entries[name].items() if k not in ("layers",)
                                and not k.startswith("greedy_")}))


def _owl_config(loaded, protocol, calib, ratio):
    """Heads and channels at `ratio` spread over the layers by OWL, as `prunescope structured --allocation owl`
    spreads them (`structured.run.allocation_plans`): layers end with different widths."""
    from pruning_core.structured.run import StructuredSpec, allocation_plans

    spec = StructuredSpec(model=loaded.source, protocol=protocol, units=("heads", "channels"), ratios=(ratio,),
                          allocation="owl")
    return spec.config(ratio, allocation_plans(loaded, spec, calib_ids=calib)[ratio])


if __name__ == "__main__":
    main()
