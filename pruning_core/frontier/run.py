"""Measure the frontier's missing points and answer: what `prunescope frontier` and the "frontier" job run.

`run_frontier(spec)` loads the model once and measures every technique of `spec.techniques` through the
capability that owns it, each of which stores its results and resumes from them (so a point measured before,
by this job or by the page or command of that capability, is read back, not recomputed):
- the dense model: THE evaluation (`evaluate.evaluate_setting`) and its 16-bit safetensors files, written and
  measured (`sizes.measure.sixteen_bit_size`, cached in the store by the weights' fingerprint);
- pruning: one sweep per method (`analysis.sweep.run_sweep`): its points' files are the dense model's size;
- structured: one structured run of every ratio (`structured.run.run_structured`), each smaller model written to
  a work folder, reloaded, and its 16-bit files measured; a structured + quantized technique quantizes that folder;
- quantization, alone, on the structured folder, or with SparseGPT in the same sweep:
  `quantization.run.run_quantize` (the compressed-tensors folder written and measured on disk).
A smaller dense model of the same family (`smaller_model`) is evaluated and measured the same way as a baseline.
Points that finished jobs of the same model and protocol measured (`collect.stored_points`: a quantized mask, other
structured ratios...) join them. With `runtime_speed`, each point GGUF can hold is written and timed in llama.cpp
(`frontier.speeds`): a quantized point's own exact GGUF file while it is computed (`_quantized`), a structured or
smaller model as F16, the dense model as F16, and only for the quantized points whose own file this run could not
make, the dense model in their GGUF type (`speeds.measure_point_speeds`); every point gets the speed the store links
to it (`speeds.attach_speeds`). Then
`build.build_frontier` judges every point on the worst chosen corpus, marks the front and answers.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

from pruning_core import evaluate
from pruning_core.errors import ConfigError
from pruning_core.frontier.build import build_frontier
from pruning_core.frontier.points import (FrontierPoint, dense_point, quantized_point, structured_point, sweep_point)
from pruning_core.frontier.techniques import STANDARD, Technique, parse_techniques
from pruning_core.models import LoadedModel, load_model
from pruning_core.progress import ProgressFn, no_progress, sub_progress
from pruning_core.protocol import Protocol
from pruning_core.spec import JobSpec

#: Structured pruning as the frontier runs it: heads and MLP channels, the OBS score, compensated (the
#: Structured page's defaults), evenly over the layers.
STRUCTURED_SETTINGS = {"units": ("heads", "channels"), "score": "obs", "compensate": True, "allocation": "uniform"}


@dataclass
class FrontierSpec(JobSpec):
    """A frontier (the job spec of `run_frontier_job`).

    model: the dense model. techniques: what to measure (`techniques.parse_technique`'s words; "dense" is always
    measured). eval_corpora: corpora to evaluate and judge on (default: the calibration corpus). max_increase
    (a fraction, 0.10 = +10 %) or max_bytes (bytes): the budget the answer is for (+10 % when neither).
    smaller_model: a smaller dense model of the same family (same tokenizer), drawn as a baseline. verify: also
    unpack and reload every quantized folder (`run_quantize`'s check; doubles each point's evaluation).
    runtime_speed: also write each point GGUF can hold as a GGUF file and time it in llama.cpp (a quantized point's
    own exact file where its scheme is a GGUF block, `_quantized`; needs llama-cpp-python; about 15 s a file on two
    cores). Off by default.
    """

    WHAT = "frontier"

    model: str = "embedded"
    protocol: Protocol = field(default_factory=Protocol)
    techniques: tuple[str, ...] = STANDARD
    eval_corpora: tuple[str, ...] = ()
    max_increase: Optional[float] = None
    max_bytes: Optional[int] = None
    smaller_model: Optional[str] = None
    verify: bool = False
    runtime_speed: bool = False

    def __post_init__(self) -> None:
        self.techniques = tuple(t.text for t in parse_techniques(self.techniques))
        self.eval_corpora = (self.eval_corpora,) if isinstance(self.eval_corpora, str) else tuple(self.eval_corpora)

    @property
    def corpora(self) -> tuple[str, ...]:
        return tuple(self.eval_corpora) or (self.protocol.calib,)

    def parsed(self) -> list[Technique]:
        return parse_techniques(self.techniques)

    def validate(self) -> "FrontierSpec":
        """Check every setting before any work starts; raises ConfigError naming the problem."""
        self.protocol.validate()
        self.parsed()
        if self.max_increase is not None and self.max_bytes is not None:
            raise ConfigError("Give one budget: --max-increase or --max-bytes, not both.")
        if self.max_increase is not None and not 0.0 <= float(self.max_increase):
            raise ConfigError(f"max_increase {self.max_increase} must be a fraction of 0 or more (0.10 = +10 %).")
        if self.max_bytes is not None and int(self.max_bytes) <= 0:
            raise ConfigError(f"max_bytes {self.max_bytes} must be a positive number of bytes.")
        return self

    def _flat(self) -> dict:
        d = asdict(self)
        d["techniques"], d["eval_corpora"] = list(self.techniques), list(self.eval_corpora)
        if not self.runtime_speed:
            del d["runtime_speed"]  # specs stored before the option keep their keys
        return d


def sixteen_bit_files(loaded: LoadedModel, store=None, dense: Optional[LoadedModel] = None) -> dict:
    """`loaded` saved as 16-bit safetensors and measured on disk (`sizes.measure.sixteen_bit_size`, cached in the
    store): the dense model, or with `dense` a structurally pruned copy of it (keyed by both fingerprints)."""
    from pruning_core.sizes.measure import sixteen_bit_size

    if dense is None:
        return sixteen_bit_size(loaded, "dense", store=store)
    return sixteen_bit_size(loaded, "structured", store=store, fingerprint=dense.fingerprint,
                            content=loaded.fingerprint)


def _check_same_family(dense: LoadedModel, smaller: LoadedModel) -> None:
    """Perplexities compare only over the same tokens: a baseline with another vocabulary is refused."""
    if len(dense.tokenizer) != len(smaller.tokenizer) or dense.tokenizer.get_vocab() != smaller.tokenizer.get_vocab():
        raise ConfigError(f"The smaller model {smaller.name} has another tokenizer than {dense.name}, so their "
                          "perplexities are not comparable; give a smaller model of the same family.")


def _sweeps(techniques: list[Technique]) -> dict[str, tuple[set, set]]:
    """{method: (structures, sparsities)} of the pruning-only techniques (one sweep per method)."""
    out: dict[str, tuple[set, set]] = {}
    for t in techniques:
        if t.prune is not None and t.quantize is None:
            method, sparsity, structure = t.prune
            structures, sparsities = out.setdefault(method, (set(), set()))
            structures.add(structure)
            if structure == "unstructured":
                sparsities.add(sparsity)
    return out


def _quantize_spec(spec: FrontierSpec, technique: Technique, structured: Optional[str] = None):
    from pruning_core.quantization.run import QuantizeSpec

    scheme = technique.quantize
    return QuantizeSpec(model=spec.model, protocol=spec.protocol, method=scheme.method, bits=scheme.bits,
                        group_size=scheme.group_size, symmetric=scheme.symmetric, scale_dtype=scheme.scale_dtype,
                        actorder=scheme.actorder, structured=structured, prune=technique.joint, eval_corpora=spec.corpora,
                        verify=bool(spec.verify)).validate()


def _structured_spec(spec: FrontierSpec, ratios):
    from pruning_core.structured.run import StructuredSpec

    return StructuredSpec(model=spec.model, protocol=spec.protocol, ratios=tuple(ratios), eval_corpora=spec.corpora,
                          speed=False, max_new_tokens=0, **STRUCTURED_SETTINGS)


def _structured_points(spec: FrontierSpec, techniques: list[Technique], ratios: list[float], loaded: LoadedModel,
                       store, progress: ProgressFn, points: list, measured: list, speeds: dict) -> None:
    """Structured points (and structured + quantized ones) appended to `points`.

    A ratio nothing is quantized on is read back from the store when its stored point carries its smaller model's
    16-bit files measured (`collect.measured_structured`); the others are pruned again with their folders written
    to a work folder (`run_structured(save_dir=...)`), each folder measured as 16-bit safetensors and, for a
    structured + quantized technique, quantized (`run_quantize` on the folder's model, stored and resumable).
    With `spec.runtime_speed` every ratio writes its folder, and its model is timed in llama.cpp as F16 (`speeds`
    gets the measurement)."""
    from pruning_core.frontier.collect import measured_structured
    from pruning_core.structured.run import run_structured

    combos = [t for t in techniques if t.structured is not None and t.quantize is not None]
    folders = sorted({t.structured for t in combos})
    clock = time.perf_counter()
    if spec.runtime_speed:  # timing a structured model in llama.cpp needs its folder: every ratio writes one
        folders = sorted(set(folders) | set(ratios))
    plain = [r for r in ratios if r not in folders]
    if plain:
        result = run_structured(_structured_spec(spec, plain), loaded=loaded, store=store,
                                progress=sub_progress(progress, 0.0, 0.3))
        for ratio, point in zip(plain, result["points"]):
            files = measured_structured(point)
            if files is None:
                folders.append(ratio)  # stored before sizes were measured on files: write and measure its folder
            else:
                points.append(structured_point(point, files, {"kind": "structured", "ratio": ratio}))
    folders = sorted(folders)
    if not folders:
        measured.append({"technique": f"structured {', '.join(f'{r:g}' for r in ratios)}", "from_store": True,
                         "seconds": time.perf_counter() - clock})
        return
    with tempfile.TemporaryDirectory(prefix="prunescope-frontier-structured-") as work:
        structured = run_structured(_structured_spec(spec, folders), loaded=loaded, store=store,
                                    progress=sub_progress(progress, 0.3, 0.6), save_dir=work)
        measured.append({"technique": f"structured {', '.join(f'{r:g}' for r in ratios)}",
                         "seconds": time.perf_counter() - clock})
        for index, (ratio, point) in enumerate(zip(folders, structured["points"])):
            folder = point["saved"]["folder"]
            small = load_model(folder)
            label = f"structured {float(point['measured_ratio']):.0%}"
            sub = sub_progress(progress, 0.6 + 0.4 * index / len(folders), 0.6 + 0.4 * (index + 1) / len(folders))
            files = measured_structured(point) or sixteen_bit_files(small, store, dense=loaded)
            points.append(structured_point(point, files,
                                           {"kind": "structured", "ratio": ratio}))
            if spec.runtime_speed:
                _time_own_model(small, points[-1], loaded, store, sub, measured, speeds)
            for technique in [t for t in combos if t.structured == ratio]:
                points.append(_quantized(spec, technique, small, loaded, store, sub, measured, speeds, folder,
                                         label))
            del small


def _time_own_model(model: LoadedModel, point: FrontierPoint, dense: LoadedModel, store, progress: ProgressFn,
                    measured: list, speeds: dict) -> None:
    """A structured or smaller dense model written as F16 GGUF and timed in llama.cpp, linked to its point; a model
    the GGUF export refuses (a family llama.cpp does not run) is noted in `measured` and stays not measured.
    speeds: {point key: `speed_fields`} of this run, filled here (what the frontier shows even without a store)."""
    from pruning_core.frontier.speeds import measure_and_link
    from pruning_core.gguf.runtime_speed import speed_fields

    clock = time.perf_counter()
    words = f"this model ({model.name}) written as F16"
    try:
        record = measure_and_link(model, "F16", [point.key], store, dense.fingerprint, words, progress=progress)
    except ConfigError as exc:
        measured.append({"technique": f"speed in llama.cpp of {point.technique}", "skipped": str(exc),
                         "seconds": time.perf_counter() - clock})
        return
    speeds[point.key] = speed_fields(record, words, own_file=True)
    measured.append({"technique": f"speed in llama.cpp of {point.technique}", "from_store": record["from_store"],
                     "seconds": time.perf_counter() - clock})


def _quantized(spec: FrontierSpec, technique: Technique, model: LoadedModel, dense: LoadedModel, store,
               progress: ProgressFn, measured: list, speeds: dict, folder: Optional[str] = None,
               start_words: Optional[str] = None) -> FrontierPoint:
    """One quantized point of `model` (the dense model, or with `folder` a structured one), measured by
    `run_quantize` (stored and resumable), appended to `measured`.

    With `spec.runtime_speed` and a scheme GGUF holds exactly (`speeds.own_gguf_type`), the point's own GGUF file is
    written from the `QuantizeResult` in hand while `run_quantize` computes it (its `gguf_file`: the point is
    computed once, and its record gains bytes["gguf"]), timed in llama.cpp and linked (`speeds` gets it). A point
    stored before without that file is computed again to write it, as `quantization.point_files` re-creates a
    point; one whose own file was timed on this machine before is read back from the store."""
    from pruning_core.frontier.speeds import has_own_file_here, own_file_words, own_gguf_type, time_and_link
    from pruning_core.quantization.run import point_key, run_quantize

    clock = time.perf_counter()
    quantize_spec = _quantize_spec(spec, technique, folder)
    source = {"kind": "quantized", "technique": technique.text}
    kind = own_gguf_type(quantize_spec.scheme().to_dict()) if spec.runtime_speed else None
    skipped = None
    if kind is not None:
        from pruning_core.gguf.architecture import architecture_for

        try:
            architecture_for(model)
        except ConfigError as exc:  # a family or layout llama.cpp does not run: the point is measured as usual
            kind, skipped = None, str(exc)
    if kind is not None and store is not None:
        stored = store.get_result(point_key(model, quantize_spec))
        if stored is not None and (stored.get("bytes") or {}).get("gguf") and has_own_file_here(
                store, dense.fingerprint, quantized_point(stored, source, start_words).key):
            kind = None  # its own file was timed on this machine before: the stored point and link are read back
    if kind is None:
        record = run_quantize(quantize_spec, loaded=model, store=store, progress=progress)
        point = quantized_point(record, source, start_words)
        measured.append({"technique": technique.text, "from_store": record["from_store"],
                         "seconds": time.perf_counter() - clock})
        if skipped:
            measured.append({"technique": f"speed in llama.cpp of {point.technique}", "skipped": skipped,
                             "seconds": 0.0})
        return point
    from pruning_core.gguf.runtime_speed import speed_fields
    from pruning_core.gguf.write import gguf_file_name

    with tempfile.TemporaryDirectory(prefix="prunescope-frontier-gguf-") as work:
        path = Path(work) / gguf_file_name(model.name, kind)
        record = run_quantize(quantize_spec, loaded=model, store=store, progress=sub_progress(progress, 0.0, 0.85),
                              gguf_file=path)
        point = quantized_point(record, source, start_words)
        words = own_file_words(kind, record["bytes"].get("gguf"))
        measured.append({"technique": technique.text, "from_store": False, "seconds": time.perf_counter() - clock})
        clock = time.perf_counter()
        try:
            timing = time_and_link(path, [point.key], store, dense.fingerprint, words, True,
                                   progress=sub_progress(progress, 0.85, 1.0))
        except ConfigError as exc:
            measured.append({"technique": f"speed in llama.cpp of {point.technique}", "skipped": str(exc),
                             "seconds": time.perf_counter() - clock})
            return point
    speeds[point.key] = speed_fields(timing, words, own_file=True)
    measured.append({"technique": f"speed in llama.cpp of {point.technique}", "from_store": timing["from_store"],
                     "seconds": time.perf_counter() - clock})
    return point


def run_frontier(spec: Union[FrontierSpec, dict], loaded: Optional[LoadedModel] = None, store=None,
                 progress: Optional[ProgressFn] = None, labels: Optional[dict] = None) -> dict:
    """Measure every technique of `spec` (reading stored results back) and build the frontier.

    Returns {"spec", "model" (dense `describe()`), "protocol", "frontier" (`build.build_frontier`'s dict),
    "measured" [{"technique", "from_store", "seconds"}], "created"}."""
    progress = progress or no_progress
    spec = (spec if isinstance(spec, FrontierSpec) else FrontierSpec.from_dict(spec)).validate()
    techniques = spec.parsed()
    corpora, protocol = spec.corpora, spec.protocol
    if loaded is None:
        loaded = load_model(spec.model, progress=sub_progress(progress, 0.0, 0.03))
    eval_ids = evaluate.evaluation_windows(loaded, protocol, corpora)
    dense_eval = evaluate.evaluate_setting(loaded, protocol, corpora, None, eval_ids=eval_ids, store=store,
                                           progress=sub_progress(progress, 0.03, 0.06))
    dense_files = sixteen_bit_files(loaded, store)
    points: list[FrontierPoint] = [dense_point(dense_eval.dense_ppl, dense_files, {"kind": "dense"}, loaded.name)]
    measured: list[dict] = []
    speeds: dict[str, dict] = {}  # {point key: speed measured in llama.cpp by this run} (with runtime_speed)
    sweeps = _sweeps(techniques)
    ratios = sorted({t.structured for t in techniques if t.structured is not None})
    alone = [t for t in techniques if t.quantize is not None and t.structured is None]
    # Progress in equal parts: the smaller model, each sweep, the structured run (with its quantized folders),
    # each quantized point.
    steps = max(1, bool(spec.smaller_model) + len(sweeps) + bool(ratios) + len(alone))
    done = [0]

    def step() -> ProgressFn:
        lo = 0.08 + 0.9 * done[0] / steps
        done[0] += 1
        return sub_progress(progress, lo, 0.08 + 0.9 * done[0] / steps)

    if spec.smaller_model:
        clock = time.perf_counter()
        part = step()
        smaller = load_model(spec.smaller_model, progress=sub_progress(part, 0.0, 0.2))
        _check_same_family(loaded, smaller)
        small_eval = evaluate.evaluate_setting(smaller, protocol, corpora, None, store=store,
                                               progress=sub_progress(part, 0.2, 0.9))
        points.append(dense_point(small_eval.dense_ppl, sixteen_bit_files(smaller, store),
                                  {"kind": "dense", "model": spec.smaller_model}, smaller.name, "smaller dense"))
        measured.append({"technique": f"smaller dense model {smaller.name}", "seconds": time.perf_counter() - clock})
        if spec.runtime_speed:
            _time_own_model(smaller, points[-1], loaded, store, sub_progress(part, 0.9, 1.0), measured, speeds)

    for method, (structures, sparsities) in sweeps.items():
        from pruning_core.analysis.sweep import SweepSpec, run_sweep

        clock = time.perf_counter()
        wanted = [t for t in techniques if t.prune and t.prune[0] == method and t.quantize is None]
        part = step()  # one sweep measures all of this method's techniques
        sweep = run_sweep(SweepSpec(model=spec.model, methods=(method,), protocol=protocol,
                                    structures=tuple(sorted(structures, key=lambda s: s != "unstructured")),
                                    sparsities=tuple(sorted(sparsities)), eval_corpora=corpora),
                          loaded=loaded, store=store, progress=part)
        for p in sweep["points"]:
            points.append(sweep_point(p, dense_files, {"kind": "sweep", "method": method}))
        measured.append({"technique": f"{method} sweep ({', '.join(t.text for t in wanted)})",
                         "from_store": all(p.get("cached") for p in sweep["points"]),
                         "seconds": time.perf_counter() - clock})

    if ratios:
        part = step()
        _structured_points(spec, techniques, ratios, loaded, store, part, points, measured, speeds)

    for technique in alone:
        points.append(_quantized(spec, technique, loaded, loaded, store, step(), measured, speeds))

    if store is not None:
        # What other jobs of this model measured under the same protocol (a quantized mask from the dashboard,
        # another structured run...) joins the frontier; what was measured here comes first and wins a tie.
        from pruning_core.frontier.collect import stored_points

        points += [p for p in stored_points(store, spec.model, dense_eval.protocol, dense_files)
                   if p.family != "dense"]
    from pruning_core.frontier.speeds import attach_speeds, stored_speeds

    if spec.runtime_speed:
        from pruning_core.frontier.speeds import measure_point_speeds
        from pruning_core.gguf.runtime_speed import cpu_facts

        clock = time.perf_counter()
        # The dense model's F16 file, and the stand-in file of the quantized points whose own file was not timed
        # (points another job stored, which this run did not compute).
        here = cpu_facts()["cpu"]
        own = set(speeds) | {k for k, v in stored_speeds(store, loaded.fingerprint).items()
                             if v.get("own_file") and v.get("machine") == here}
        timed = measure_point_speeds(loaded, [p for p in points if p.key not in own], store,
                                     progress=sub_progress(progress, 0.98, 0.995))
        speeds.update({t["point"]: t["speed"] for t in timed if "speed" in t})
        skipped = list(dict.fromkeys(t["skipped"] for t in timed if "skipped" in t))
        measured.append({"technique": f"speed in llama.cpp ({sum('speed' in t for t in timed)} points)",
                         "from_store": all(t.get("from_store", True) for t in timed),
                         "seconds": time.perf_counter() - clock,
                         **({"skipped": " ".join(skipped)} if skipped else {})})
    # What the store links to these points (measured by an earlier run too), this run's own measurements first.
    points = attach_speeds(points, {**stored_speeds(store, loaded.fingerprint), **speeds})
    frontier = build_frontier(points, corpora, spec.max_increase, spec.max_bytes, labels)
    progress(1.0, "frontier measured")
    return {"spec": spec.to_dict(), "model": loaded.describe(), "protocol": dense_eval.protocol,
            "frontier": frontier, "measured": measured, "created": time.time()}


def run_frontier_job(spec: dict, store, progress: ProgressFn) -> dict:
    """Job entry (`jobs.JOB_KINDS["frontier"]`): `run_frontier` with every point kept in `store`."""
    return run_frontier(spec, store=store, progress=progress)
