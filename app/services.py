"""The dashboard's only door into `pruning_core`: cached models and corpora, job submission and results.

Pages call these functions and never import the core themselves, so every expensive or failing call goes
through one place:
  * models are loaded once per (source, identity) with `st.cache_resource` and never mutated (pruning for
    display goes through jobs; generation applies masks in a restoring context manager);
  * corpus previews and token counts are `st.cache_data`;
  * long work (sweeps, sensitivity maps, what-ifs) is a job of `pruning_core.jobs.runner.JobRunner`, run in a worker
    process that survives page reloads. With ``PRUNESCOPE_INLINE_JOBS=1`` (AppTest only) jobs run inline in
    the script run, so tests are deterministic; the real app always uses workers.
Each job spec records the model's identity (for a folder or a .gguf file: path, size and modification time),
so a changed model file is never served a result computed for its old weights.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import streamlit as st

from app.charts import MISSING, point_allocation  # the one rule: a point without one is uniform
from pruning_core import claims
from pruning_core import data as core_data
from pruning_core.allocation import allocators as _allocators
from pruning_core.analysis.sensitivity import METRICS as _SENSITIVITY_METRICS
from pruning_core.analysis.sensitivity import REFINE as SENSITIVITY_AUTO
from pruning_core.analysis.sensitivity import TRUSTED_AGREEMENT
from pruning_core.continual.strategies import STRATEGIES as _CONTINUAL_STRATEGIES
from pruning_core.errors import ConfigError, CorpusError, PruneScopeError
from pruning_core.jobs.runner import ACTIVE_STATES, JobRunner, job_key
from pruning_core.methods import METHODS as _METHOD_REGISTRY
from pruning_core.methods import STRUCTURES as _STRUCTURES
from pruning_core.models import classify_source, load_model
from pruning_core.precision import EVAL_DTYPES as _EVAL_DTYPES
from pruning_core.protocol import PAPER_PROTOCOL, QUICK_PROTOCOL, Protocol
from pruning_core.store import Store, content_hash, home_dir
from pruning_core.outputs.files import write_json

try:  # written by another part of the project; pages degrade with a message while it is missing
    from pruning_core.analysis import estimates as _estimates
except ImportError:  # pragma: no cover - depends on the checkout
    _estimates = None

INLINE_ENV = "PRUNESCOPE_INLINE_JOBS"
EMBEDDED_CORPORA = tuple(core_data.EMBEDDED_CORPORA)
HUB_CORPORA = tuple(core_data.HUB_CORPORA)
METHODS = tuple(_METHOD_REGISTRY)  # the registry's names, in its order
STRUCTURES = _STRUCTURES
#: The Sensitivity page's metric choices; "auto" (`pruning_core.analysis.sensitivity.REFINE`, the default) is
#: the refinement from the second-order estimate to the exact map, with the agreement of each step measured.
SENSITIVITY_METRICS = (SENSITIVITY_AUTO, *_SENSITIVITY_METRICS)
EVAL_DTYPES = _EVAL_DTYPES

#: Protocol settings for a quick first look on 2 CPU cores (the paper protocol is one click away).
QUICK = {"nsamples": QUICK_PROTOCOL.nsamples, "seqlen": QUICK_PROTOCOL.seqlen,
         "eval_windows": QUICK_PROTOCOL.eval_windows, "seed": 0, "dtype": "float32"}
PAPER = {"nsamples": PAPER_PROTOCOL.nsamples, "seqlen": PAPER_PROTOCOL.seqlen,
         "eval_windows": PAPER_PROTOCOL.eval_windows, "seed": 0, "dtype": "float32"}


class ServiceError(PruneScopeError):
    """A problem the dashboard reports as a short message (a job that failed, a missing engine part)."""


def inline_jobs() -> bool:
    """Whether jobs run inside the script run (tests) instead of worker processes (the real app)."""
    return os.environ.get(INLINE_ENV, "") == "1"


# ------------------------------------------------------------------------------------------------ models


def model_identity(source: str) -> dict:
    """What identifies a model source's weights without loading it: for files and folders, path + size + mtime.

    Raises ModelLoadError (a PruneScopeError) for a path that does not exist.
    """
    kind = classify_source(source)
    identity: dict[str, Any] = {"source": source, "kind": kind}
    if kind in ("folder", "gguf"):
        path = Path(source).expanduser().resolve()
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        identity.update(path=str(path), mtime_ns=max((p.stat().st_mtime_ns for p in files), default=0),
                        size=sum(p.stat().st_size for p in files))
    return identity


def _disk_path(source: str) -> Optional[Path]:
    """The file or folder a model source is read from (the embedded GGUF for 'embedded'); None for hub ids."""
    kind = classify_source(source)
    if kind == "embedded":
        from pruning_core.models import embedded_gguf_path

        return embedded_gguf_path()
    if kind in ("folder", "gguf"):
        return Path(source).expanduser().resolve()
    return None


def disk_bytes(source: str) -> Optional[int]:
    """Bytes on disk of a model source (a folder's files, a .gguf file, the embedded GGUF); None if unknown."""
    try:
        kind = classify_source(source)
        if kind == "embedded":
            return _disk_path(source).stat().st_size
        if kind in ("folder", "gguf"):
            return int(model_identity(source)["size"])
    except (PruneScopeError, OSError):
        return None
    return None


def disk_form(source: str) -> Optional[str]:
    """What the model is stored as on disk ('GGUF Q4_1', 'safetensors, bfloat16'); None if unknown."""
    try:
        path = _disk_path(source)
    except PruneScopeError:
        return None
    return claims.disk_form(path) if path is not None else None


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def _cached_model(source: str, identity_key: str):
    """One shared LoadedModel per (source, identity). Shared across sessions: never mutate it."""
    return load_model(source)


def get_model(source: str):
    """The loaded model for `source` (cached; reloaded when a file or folder model changes on disk)."""
    return _cached_model(source, content_hash(model_identity(source)))


#: How the Setup page names a model family (its `config.model_type`); others: see `family_label`.
FAMILY_NAMES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma": "Gemma",
                "gemma2": "Gemma 2", "gemma3_text": "Gemma 3", "phi": "Phi", "phi3": "Phi-3",
                "gpt_neox": "GPT-NeoX", "gpt2": "GPT-2", "gptj": "GPT-J", "gpt_bigcode": "GPT-BigCode",
                "opt": "OPT", "falcon": "Falcon", "stablelm": "StableLM", "olmo": "OLMo", "olmo2": "OLMo 2",
                "bloom": "BLOOM", "mpt": "MPT", "granite": "Granite", "smollm3": "SmolLM3"}


def family_label(family: str) -> str:
    """A readable family name ("gpt_neox" -> "GPT-NeoX"); an unlisted one with its underscores as hyphens and
    a capital first letter ("some_model" -> "Some-model")."""
    family = str(family or "")
    if family.lower() in FAMILY_NAMES:
        return FAMILY_NAMES[family.lower()]
    readable = family.replace("_", "-")
    return readable[:1].upper() + readable[1:]


def model_facts(source: str) -> dict:
    """`LoadedModel.describe()` plus `disk_bytes`, `disk_form` (what the file is stored as) and the load time (s)."""
    loaded = get_model(source)
    facts = dict(loaded.describe())
    facts["disk_bytes"] = disk_bytes(source)
    facts["disk_form"] = disk_form(source)
    facts["load_seconds"] = loaded.load_seconds
    return facts


# ------------------------------------------------------------------------------------------------ corpora


def _file_stamp(name: str) -> tuple:
    path = Path(name).expanduser()
    if path.is_file():
        stat = path.stat()
        return (stat.st_mtime_ns, stat.st_size)
    return ()


@st.cache_data(show_spinner=False, max_entries=64)
def _preview(name: str, split: str, column: Optional[str], stamp: tuple) -> dict:
    return core_data.preview(name, split, column)


def corpus_preview(name: str, split: str = "calibration", column: Optional[str] = None) -> dict:
    """{"text" (first 600 characters), "chars", "documents"} of a corpus split (cached; files by mtime)."""
    return _preview(name, split, column, _file_stamp(name))


@st.cache_data(show_spinner="Counting tokens…", max_entries=64)
def _token_count(source: str, identity_key: str, name: str, split: str, column: Optional[str], stamp: tuple) -> int:
    loaded = get_model(source)
    text = core_data.load_corpus_text(name, split, column)
    return int(core_data.tokenize_text(loaded.tokenizer, text).numel())


def token_count(source: str, name: str, split: str = "calibration", column: Optional[str] = None) -> int:
    """Number of tokens of a corpus split under the model's tokenizer (cached)."""
    return _token_count(source, content_hash(model_identity(source)), name, split, column, _file_stamp(name))


def uploads_dir() -> Path:
    """Where uploaded corpus files are saved: `$PRUNESCOPE_HOME/uploads`."""
    folder = home_dir() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


#: A stored upload is named "<12 hex digits of its content's sha256>-<original file name>".
_UPLOAD_NAME = re.compile(r"^[0-9a-f]{12}-(?P<original>.+)$")


def uploaded_corpora() -> list[str]:
    """The paths of the files saved by `save_upload`, newest first (every one passed its checks on entry)."""
    files = [p for p in uploads_dir().iterdir() if p.is_file() and _UPLOAD_NAME.match(p.name)]
    return [str(p) for p in sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)]


def corpus_label(name: str) -> str:
    """How a corpus is named on a page: embedded and hub corpora by name, an upload by its original file
    name (the content-hash prefix stays in the stored path only), any other file by its file name."""
    if name in EMBEDDED_CORPORA or name in HUB_CORPORA:
        return name
    file_name = Path(name).name
    match = _UPLOAD_NAME.match(file_name)
    return match.group("original") if match else file_name


def corpus_labels(names: list[str]) -> dict[str, str]:
    """`corpus_label` of each name, made unique: uploads that share an original name get their upload time."""
    labels = {name: corpus_label(name) for name in names}
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    for name, label in labels.items():
        if counts[label] > 1 and is_file(name):
            stamp = time.strftime("%d %b %H:%M:%S", time.localtime(Path(name).stat().st_mtime))
            labels[name] = f"{label} (uploaded {stamp})"
    return labels


def is_file(name: str) -> bool:
    """Whether a corpus name is an existing file (an upload or a path), not an embedded or hub corpus."""
    return name not in EMBEDDED_CORPORA and name not in HUB_CORPORA and Path(name).expanduser().is_file()


def _safe_file_name(filename: str) -> str:
    """The original name as the browser sent it, minus anything that could leave the uploads folder."""
    name = Path(filename.replace("\\", "/")).name
    name = "".join(c if c.isprintable() and c != "/" else "_" for c in name).lstrip(". ")
    stem, suffix = (name[: -len(Path(name).suffix)], Path(name).suffix) if Path(name).suffix else (name, "")
    suffix = suffix[:16]
    while len((stem + suffix).encode()) > 180:  # with the hash prefix, under the 255-byte limit of file names
        stem = stem[:-1]
    name = stem + suffix
    return name or "upload.txt"


#: Tokens a calibration text needs for the chosen windows: the core's own rule (`pruning_core.data`).
calibration_tokens_needed = core_data.calibration_tokens_needed


def _require_calibration_tokens(tokens: int, settings: dict, label: str, user_file: bool) -> None:
    """Raise CorpusError, worded for the Setup page (its labels, no internal names), when `tokens` of
    calibration text are too few for the chosen calibration windows."""
    nsamples, seqlen = int(settings["nsamples"]), int(settings["seqlen"])
    needed = calibration_tokens_needed(nsamples, seqlen)
    if tokens < needed:
        share = f" (its first {core_data.CALIBRATION_FRACTION:.0%})" if user_file else ""
        raise CorpusError(
            f"The calibration text of '{label}'{share} has {tokens:,} tokens, too few for {nsamples} calibration "
            f"windows of {seqlen} tokens ({needed:,} tokens): use a longer text, or lower 'Calibration windows' "
            f"or 'Tokens per window' under Protocol.")


def check_calibration_fits(settings: dict) -> int:
    """The chosen calibration text's token count (the model's tokenizer, cached); raises CorpusError, worded
    for the Setup page, when it is too short for the chosen calibration windows."""
    name = settings["calib"]
    tokens = token_count(settings["model"], name, "calibration", settings.get("calib_column") or None)
    _require_calibration_tokens(tokens, settings, corpus_label(name),
                                name not in EMBEDDED_CORPORA and name not in HUB_CORPORA)
    return tokens


def check_evaluation_fits(settings: dict) -> dict[str, int]:
    """Token counts of the chosen evaluation files; raises CorpusError, worded for the Setup page, when one
    holds less than one window of the chosen length (embedded corpora hold hundreds; hub corpora are checked
    when they load)."""
    seqlen = int(settings["seqlen"])
    counts = {}
    for name in settings["eval_corpora"]:
        if not is_file(name):
            continue
        tokens = counts[name] = token_count(settings["model"], name, "evaluation")
        if tokens < seqlen:  # perplexity needs one whole window (`pruning_core.data.consecutive_token_windows`)
            raise CorpusError(
                f"The evaluation text of '{corpus_label(name)}' (its last "
                f"{1 - core_data.CALIBRATION_FRACTION:.0%}) has {tokens:,} tokens, fewer than one window of "
                f"{seqlen} tokens: use a longer text, or lower 'Tokens per window' under Protocol.")
    return counts


def save_upload(filename: str, content: bytes, settings: Optional[dict] = None, column: Optional[str] = None) -> str:
    """Check an uploaded corpus file and save it under `uploads_dir()`; return its stored path.

    The stored name is "<content hash>-<original name>" (`corpus_label` shows the original name). The file is
    read with `pruning_core.data` first (binary, empty, unreadable or malformed content is refused with its
    one-sentence reason), and with `settings` (the Setup choices: model and protocol) its calibration text must
    hold enough tokens for the chosen calibration windows. A refused file is never stored, so it cannot be
    chosen. Raises PruneScopeError (CorpusError, ConfigError) with the reason.
    """
    import hashlib
    import shutil

    digest = hashlib.sha256(content).hexdigest()[:12]
    original = _safe_file_name(filename)
    path = uploads_dir() / f"{digest}-{original}"
    # Checked under its original name (so messages name it as the user knows it) in a private folder, then
    # moved in when accepted.
    folder = uploads_dir() / ".incoming" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    incoming = folder / original
    incoming.write_bytes(content)
    try:
        for split in core_data.SPLITS:  # readable text with documents in both splits
            core_data.preview(str(incoming), split, column or None)
        if settings is not None and settings.get("model"):
            text = core_data.load_corpus_text(str(incoming), "calibration", column or None)
            tokens = int(core_data.tokenize_text(get_model(settings["model"]).tokenizer, text).numel())
            _require_calibration_tokens(tokens, settings, original, user_file=True)
        os.replace(incoming, path)  # the same content again: same name, refreshed time (listed first)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return str(path)


# ------------------------------------------------------------------------------------ settings on disk

#: The Setup settings, saved so that a reload or a second tab opens with them (see `saved_settings`).
SETTINGS_FILE = "dashboard-settings.json"
_SETTING_FIELDS = ("model", "calib", "calib_column", "eval_corpora", "nsamples", "seqlen", "eval_windows", "seed",
                   "dtype")


def _usable_corpus(name: Any) -> bool:
    return isinstance(name, str) and (name in EMBEDDED_CORPORA or name in HUB_CORPORA or Path(name).is_file())


def saved_settings(launch_model: str) -> dict:
    """The Setup settings last saved for dashboards launched on `launch_model` (empty if none), minus what no
    longer exists (a deleted upload) or is malformed, so a reload never opens on a broken choice."""
    try:
        document = json.loads((home_dir() / SETTINGS_FILE).read_text())
        saved = dict(document[launch_model])
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    kept = {k: saved[k] for k in _SETTING_FIELDS if k in saved}
    if not _usable_corpus(kept.get("calib")):
        kept.pop("calib", None)
        kept.pop("calib_column", None)
    evals = [c for c in kept.get("eval_corpora") or [] if _usable_corpus(c)] \
        if isinstance(kept.get("eval_corpora"), list) else []
    if evals:
        kept["eval_corpora"] = evals
    else:
        kept.pop("eval_corpora", None)
    for field in ("nsamples", "seqlen", "eval_windows", "seed"):
        if field in kept and not (isinstance(kept[field], int) and kept[field] >= (0 if field == "seed" else 1)):
            kept.pop(field)
    if kept.get("dtype") not in EVAL_DTYPES:
        kept.pop("dtype", None)
    if not isinstance(kept.get("model"), str) or not kept["model"]:
        kept.pop("model", None)
    return kept


def save_settings(launch_model: str, settings: dict) -> None:
    """Save the Setup settings for dashboards launched on `launch_model` (atomic write; a failure to write is
    not an error a user can act on, so it only costs the restore after a reload)."""
    path = home_dir() / SETTINGS_FILE
    try:
        document = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(document, dict):
            document = {}
    except (OSError, ValueError):
        document = {}
    document[launch_model] = {k: settings.get(k) for k in _SETTING_FIELDS}
    try:
        write_json(path, document)
    except OSError as error:
        print(f"prunescope: could not save the dashboard settings to {path}: {error}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- protocol


def protocol_of(settings: dict) -> Protocol:
    """THE Protocol of the dashboard's shared settings (see `app.state`), validated; every job spec of every
    page (sweep, sensitivity, what-if, export) gets its protocol here."""
    proto = Protocol(calib=settings["calib"], nsamples=int(settings["nsamples"]), seqlen=int(settings["seqlen"]),
                     seed=int(settings["seed"]), eval_windows=int(settings["eval_windows"]),
                     dtype=settings["dtype"], calib_column=settings.get("calib_column") or None)
    return proto.validate()


def protocol_dict(settings: dict) -> dict:
    """`protocol_of(settings)` as a dict."""
    return protocol_of(settings).to_dict()


def sweep_spec(settings: dict, methods, structures, sparsities, propagation: str = "pruned",
               allocations=("uniform",)) -> dict:
    """A sweep job spec (`SweepSpec.to_dict()`), validated before anything runs.

    allocations: allocator names (`ALLOCATIONS`), one more axis of the grid: each unstructured point is pruned
    with that allocator's plan for its target sparsity."""
    from dataclasses import fields

    from pruning_core.analysis.sweep import SweepSpec

    allocations = tuple(allocations or ("uniform",))
    extra = {}
    if "allocations" in {f.name for f in fields(SweepSpec)}:
        extra["allocations"] = allocations
    elif allocations != ("uniform",):
        raise ConfigError("This version of the engine sweeps the uniform allocation only; choose 'uniform'.")
    spec = SweepSpec(model=settings["model"], methods=tuple(methods), structures=tuple(structures),
                     sparsities=tuple(float(s) for s in sparsities),
                     eval_corpora=tuple(settings["eval_corpora"]), propagation=propagation,
                     protocol=protocol_of(settings), **extra)
    return spec.validate().to_dict()


def sensitivity_spec(settings: dict, method: str, sparsities, metrics, probe_windows: int = 8) -> dict:
    """A sensitivity job spec (`SensitivitySpec.to_dict()`), validated before anything runs."""
    from pruning_core.analysis.sensitivity import SensitivitySpec

    if not metrics:
        raise ConfigError("Choose at least one sensitivity metric: 'Automatic' (the default) gives a trustworthy "
                          "first map quickly and refines it to the exact one.")
    if SENSITIVITY_AUTO in metrics and len(metrics) > 1:
        raise ConfigError("'Automatic' already computes the second-order estimate and the exact map: keep it "
                          "alone, or remove it to choose metrics by hand.")
    if int(probe_windows) < 1:  # checked here too: the core's check of an automatic spec stops before it
        raise ConfigError(f"Probe windows must be a positive whole number, got {probe_windows}.")
    spec = SensitivitySpec(model=settings["model"], protocol=protocol_of(settings), method=method,
                           sparsities=tuple(sorted(float(s) for s in sparsities)), metrics=tuple(metrics),
                           probe_windows=int(probe_windows))
    return spec.validate().to_dict()


def whatif_spec(settings: dict, method: str, structure: str, sparsity: float,
                layer_sparsity: Optional[dict] = None, prompt: str = "", max_new_tokens: int = 40,
                plan: Optional[dict] = None) -> dict:
    """A what-if job spec (`WhatIfSpec.to_dict()`, see `pruning_core.analysis.whatif.run_whatif`), validated.

    plan: a sparsity plan dict (an allocator's, as edited on the page) that decides every module's sparsity;
    `sparsity` is then the target it was made for."""
    from pruning_core.analysis.whatif import WhatIfSpec

    layers = {int(k): float(v) for k, v in (layer_sparsity or {}).items() if v is not None} or None
    spec = WhatIfSpec(model=settings["model"], protocol=protocol_of(settings), method=method, structure=structure,
                      sparsity=float(sparsity), layer_sparsity=layers,
                      eval_corpora=tuple(settings["eval_corpora"]), prompt=prompt,
                      max_new_tokens=int(max_new_tokens), model_identity=model_identity(settings["model"]),
                      plan=plan)
    return spec.validate().to_dict()


# --------------------------------------------------------------------------------------------- estimates


def estimates_available() -> bool:
    return _estimates is not None


@st.cache_data(show_spinner=False, max_entries=128)
def _estimate(kind: str, spec_json: str, identity_json: str, home: str) -> Optional[dict]:  # noqa: ARG001
    # identity_json (the model file's identity) and home (the store) are part of the cache key only.
    import json

    spec = json.loads(spec_json)
    return _estimates.estimate_job(kind, spec, get_model(spec["model"]), Store())


def estimate(kind: str, settings: dict, spec: dict) -> Optional[dict]:
    """The engine's {"seconds", "peak_memory_bytes", "breakdown", "assumptions"} for a job, or None when the
    estimator is not available in this checkout.

    One function (`pruning_core.analysis.estimates.estimate_job`) for every page that shows an estimate, with
    this machine's measured throughput and the windows the corpora really hold, so the Setup page and the
    task pages give the same job the same duration."""
    import json

    if _estimates is None:
        return None
    spec = {**spec, "model": spec.get("model") or settings["model"]}
    return _estimate(kind, json.dumps(spec, sort_keys=True, default=str),
                     json.dumps(model_identity(spec["model"]), sort_keys=True, default=str), str(home_dir()))


# -------------------------------------------------------------------------------------------------- jobs


def _runner() -> JobRunner:
    # The store is cheap to open (one SQLite file under $PRUNESCOPE_HOME); not cached, so a test that changes
    # PRUNESCOPE_HOME gets its own store.
    return JobRunner(Store())


def _retire_if_stale(runner: JobRunner, kind: str, spec: dict) -> None:
    """A finished job computed before the model file changed must not be reused: mark it failed (stale)."""
    try:
        identity = model_identity(spec["model"])
    except PruneScopeError:
        return
    mtime_ns = identity.get("mtime_ns")
    if not mtime_ns:
        return
    for job in runner.store.jobs_with_key(job_key(kind, spec)):
        if job["state"] == "done" and (job.get("created") or 0) * 1e9 < mtime_ns:
            runner.store.update_job(job["id"], only_if_state=("done",), state="failed",
                                    error="The model changed on disk after this result was computed.")


def submit_job(kind: str, spec: dict) -> str:
    """Start (or attach to, or reuse the finished) job of `kind` with `spec`; return its id.

    Inline mode (tests) runs it to the end before returning; a failure is then recorded in the job row and
    shown by the job panel like a worker's failure.
    """
    runner = _runner()
    _retire_if_stale(runner, kind, spec)
    if not inline_jobs():
        return runner.submit(kind, spec)
    try:
        runner.run_inline(kind, spec)
    except PruneScopeError:
        pass  # recorded as failed/cancelled in the job row; the panel shows it
    except Exception:  # noqa: BLE001 - recorded in the row and its log; never a traceback on the page
        pass
    jobs = runner.store.jobs_with_key(job_key(kind, spec))
    if not jobs:
        raise ServiceError(f"The {kind} job did not start; try again.")
    return max(jobs, key=lambda j: j.get("created") or 0)["id"]


def job_status(job_id: str) -> dict:
    """The job's status dict (state, fraction, message, eta_seconds, error, result, spec, kind...)."""
    return _runner().status(job_id)


def cancel_job(job_id: str) -> dict:
    """Ask a job to stop at its next progress call; finished points stay stored."""
    return _runner().cancel(job_id)


def latest_job(kind: str, spec: Optional[dict] = None, model: Optional[str] = None) -> Optional[str]:
    """The newest job of `kind` worth showing after a reload: the same spec's if one exists, else the newest
    running or done job of that kind (of the model source `model`, if given); None when there is none."""
    runner = _runner()
    if spec is not None:
        try:
            same = runner.store.jobs_with_key(job_key(kind, spec))
        except PruneScopeError:
            same = []
        if same:
            return max(same, key=lambda j: j.get("created") or 0)["id"]
    for job in runner.list_jobs(limit=50):
        if model is not None and (job.get("spec") or {}).get("model") != model:
            continue
        if job["kind"] == kind and job["state"] in (*ACTIVE_STATES, "done"):
            return job["id"]
    return None


def same_job(status: dict, spec: Optional[dict]) -> bool:
    """Whether the job `status` describes is the one `spec` (a page's current choices) would run."""
    if spec is None or not status.get("key"):
        return False
    try:
        return status["key"] == job_key(status["kind"], spec)
    except PruneScopeError:
        return False


def is_active(status: dict) -> bool:
    return status.get("state") in ACTIVE_STATES


def partial_sweep_results(spec: dict) -> Optional[dict]:
    """The sweep points stored so far for a running sweep job, as a results dict (None if none yet).

    Uses the run key the sweep itself writes: content_hash({"sweep": spec, "model": weight fingerprint}).
    """
    from pruning_core.analysis.sweep import SweepSpec

    loaded = get_model(spec["model"])
    run_key = content_hash({"sweep": SweepSpec.from_dict(spec).to_dict(), "model": loaded.fingerprint})
    payloads = Store().results_for_run(run_key)
    if not payloads:
        return None
    dense = next((p for p in payloads if "method" not in p), {"ppl": {}})
    points = [p for p in payloads if "method" in p]
    return {"model": loaded.describe(), "dense": dense, "points": points,
            "protocol": {**spec.get("protocol", {}), "propagation": spec.get("propagation")}}


def recent_results(kind: str, model: Optional[str] = None, limit: int = 20) -> list[dict]:
    """Finished job results of `kind` (for the model source `model` if given), newest first:
    [{"id", "spec", "result", "finished"}]."""
    out = []
    for job in _runner().list_jobs(limit=100):
        if model is not None and (job.get("spec") or {}).get("model") != model:
            continue
        if job["kind"] == kind and job["state"] == "done" and job.get("result"):
            out.append({"id": job["id"], "spec": job["spec"], "result": job["result"], "finished": job.get("finished")})
        if len(out) >= limit:
            break
    return out


def merge_sweeps(results: list[dict]) -> Optional[dict]:
    """All points of several sweep results of the same model and protocol in one results dict (newest wins)."""
    if not results:
        return None
    base = results[0]
    same = [r for r in results if r.get("model", {}).get("fingerprint") == base.get("model", {}).get("fingerprint")
            and _protocol_core(r) == _protocol_core(base)]
    seen, points = set(), []
    for r in same:
        for p in r.get("points", []):
            key = (p["method"], p["structure"], point_allocation(p), round(float(p.get("target_sparsity") or 0), 4))
            if key not in seen:
                seen.add(key)
                points.append(p)
    dense = {"ppl": {}}
    for r in reversed(same):
        dense["ppl"].update((r.get("dense") or {}).get("ppl") or {})
    return {**base, "dense": dense, "points": points}


def _protocol_core(results: dict) -> tuple:
    p = results.get("protocol") or {}
    return tuple(p.get(k) for k in ("calib", "nsamples", "seqlen", "seed", "eval_windows", "dtype", "propagation"))


# ------------------------------------------------------------------------------------------------ what-if

DEFAULT_PROMPT = claims.DEFAULT_PROMPT  # the What-if page's prompt: the one the library's what-if defaults to


def generate(source: str, prompt: str, max_new_tokens: int = 40, mask_artifact: Optional[str] = None,
             weights_artifact: Optional[str] = None) -> str:
    """Greedy text from the cached model, with a stored mask (and SparseGPT's stored weights) applied and
    restored afterwards if given (`claims.generate_text`)."""
    store = Store()
    masks = store.load_tensors(mask_artifact) if mask_artifact else None
    weights = store.load_tensors(weights_artifact) if mask_artifact and weights_artifact else None
    return claims.generate_text(get_model(source), prompt, max_new_tokens, masks=masks, weights=weights)


def compare_generations(source: str, prompt: str, mask_artifact: str, max_new_tokens: int = 40,
                        weights_artifact: Optional[str] = None) -> dict:
    """{"prompt", "dense", "pruned"}: greedy text of the dense model and of the model with a stored mask
    (`claims.compare_generations`, as the what-if job and the report generate)."""
    store = Store()
    masks = store.load_tensors(mask_artifact)
    weights = store.load_tensors(weights_artifact) if weights_artifact else None
    return claims.compare_generations(get_model(source), [prompt], masks, weights, max_new_tokens)[0]


def setting_claims(sizes: Optional[dict], structure: str) -> dict:
    """{"size": sentence or None, "speed": sentence, "forms": [{"label", "bytes", "note"}]}: what the pages say
    about a setting's gains, worded by `pruning_core.claims` exactly as the report words it.

    sizes: any stored sizes dict with its counts (`claims.sizes_from_record`: results stored before the claims
    module are recomputed from their counts, so they read the same).
    """
    fresh = claims.sizes_from_record(sizes, structure)
    out = claims.setting_claims(fresh, structure)
    out["forms"] = claims.size_forms(fresh) if fresh else []
    return out


def point_claims(results: dict, point: dict) -> dict:
    """`setting_claims` for a measured sweep point (sizes from the sweep's model counts and the point's measured
    sparsity): the Summary page's wording of the recommended setting."""
    structure = str(point.get("structure", "unstructured"))
    return setting_claims(claims.sizes_for_point(results.get("model") or {}, point), structure)


def model_size_labels(facts: dict) -> dict:
    """{"disk", "memory", "value_16bit"}: each size of a model with what it is, e.g. "98.4 MB on disk (GGUF
    Q4_1)" and "269.0 MB as 16-bit weights" (`claims.size_labels`)."""
    return claims.size_labels(facts["parameters"], facts.get("memory_bytes"), facts.get("dtype"),
                              facts.get("disk_bytes"), facts.get("disk_form"))


def time_left(status: dict) -> Optional[float]:
    """Seconds left of a running job as the job panel shows them: the same estimate the page showed before
    the run (`estimate`) at the start, the job's own measured rate as it progresses
    (`pruning_core.analysis.estimates.time_left`)."""
    rate_eta = status.get("eta_seconds")
    if _estimates is None or not status.get("started"):
        return rate_eta
    spec = status.get("spec") or {}
    try:
        planned = (estimate(status.get("kind", ""), {"model": spec.get("model")}, spec) or {}).get("seconds") \
            if spec.get("model") else None
    except Exception:  # noqa: BLE001 - the job's own rate is a fine answer when no estimate can be made
        planned = None
    return _estimates.time_left(planned, time.time() - float(status["started"]),
                                float(status.get("fraction") or 0.0), rate_eta)


def format_seconds(seconds: Optional[float]) -> str:
    """'about 40 s', 'about 3 min', or 'unknown'."""
    if seconds is None:
        return "unknown"
    seconds = float(seconds)
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def format_bytes(n: Optional[float]) -> str:
    """'98.4 MB' (powers of 1000) or 'unknown': the one byte format of pages and reports."""
    return claims.format_bytes(n)


def now() -> float:
    return time.time()


# -------------------------------------------------------------------------------------------- sensitivity

MODULE_WORDS = {"q": "query projections", "k": "key projections", "v": "value projections",
                "o": "attention output projections", "gate": "gate projections", "up": "up projections",
                "down": "down projections", "fc1": "first MLP layers", "fc2": "second MLP layers",
                "qkv": "fused attention projections", "fc": "MLP input layers", "proj": "MLP output layers"}


def sensitivity_available() -> bool:
    """Whether the engine's sensitivity module is present in this checkout."""
    import importlib.util

    return importlib.util.find_spec("pruning_core.analysis.sensitivity") is not None


def _finite_mean(values) -> Optional[float]:
    import math

    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(kept) / len(kept) if kept else None


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def sensitivity_reading(sens: dict) -> str:
    """One plain-language sentence from a sensitivity map's numbers: the most and least sensitive layers
    (by `layer_values`, else the mean over a layer's modules) and module kinds (mean over layers)."""
    layers = [int(x) for x in sens["layers"]]
    values = sens["values"]
    layer_scores = sens.get("layer_values") or [_finite_mean(row) for row in values]
    ranked_layers = sorted((s, l) for s, l in zip(layer_scores, layers) if s is not None)
    module_scores = [(_finite_mean(row[j] for row in values), m) for j, m in enumerate(sens["modules"])]
    ranked_modules = sorted((s, m) for s, m in module_scores if s is not None)
    if not ranked_layers or not ranked_modules:
        return "No values were computed for this map."
    top = sorted(l for _, l in ranked_layers[-2:]) if len(ranked_layers) > 2 else [ranked_layers[-1][1]]
    safest = sorted(l for _, l in ranked_layers[:3]) if len(ranked_layers) > 4 else [ranked_layers[0][1]]
    word = lambda m: MODULE_WORDS.get(m, f"'{m}' modules")  # noqa: E731
    most_module, least_module = ranked_modules[-1][1], ranked_modules[0][1]
    layer_text = ("layer " if len(top) == 1 else "layers ") + _join([str(l) for l in top])
    safe_text = ("layer " if len(safest) == 1 else "layers ") + _join([str(l) for l in safest])
    sparsity = sens.get("sparsity")
    at = f" at {float(sparsity):.0%} sparsity" if sparsity is not None else ""
    return (f"Pruned with {sens.get('method', '?')}{at}, {layer_text} and the {word(most_module)} are the most "
            f"sensitive; {safe_text} and the {word(least_module)} are the safest places to remove weights.")


#: How a sentence names each metric's map (the refinements name themselves, see `analysis.refinement`).
SENSITIVITY_METRIC_NAMES = {"exact": "exact loss increase", "fisher": "second-order estimate",
                            "reconstruction": "reconstruction error", "taylor": "Taylor score"}


def sensitivity_live_views(spec: dict) -> list[dict]:
    """The newest view of each sparsity of an automatic sensitivity job (`SENSITIVITY_AUTO`), while it runs or
    after it stopped: map documents with their `refinement` (see `pruning_core.analysis.refinement`), in the
    order the sparsities started (the last is the one being refined now); empty for other jobs or before the
    first map."""
    from pruning_core.analysis.refinement import live_views

    if list((spec or {}).get("metrics") or []) != [SENSITIVITY_AUTO]:
        return []
    return live_views(spec, Store())


def map_agreement(sens: dict, correlations=()) -> Optional[dict]:
    """The measured rank agreement of a map with the exact metric: {"spearman", "cells", "scope", "against"}.

    A refinement view carries its own (for the final exact view: the agreement between the two refinements);
    a proxy map takes its entry in the job result's `correlations` (same metric and sparsity). None for a plain
    exact map and for a proxy whose agreement was not measured (results stored before it was)."""
    refinement = sens.get("refinement")
    if refinement is not None:
        return refinement.get("agreement")
    if sens.get("metric") == "exact":
        return None
    for entry in correlations or ():
        if entry.get("proxy") == sens.get("metric") and sens.get("sparsity") is not None \
                and abs(float(entry.get("sparsity", -1)) - float(sens["sparsity"])) < 1e-9:
            return {"spearman": entry.get("spearman"), "cells": entry.get("cells"),
                    "scope": entry.get("scope") or "", "against": "exact"}
    return None


def _agreement_words(measured: dict) -> str:
    """"0.91 over a sample of 21 cells (layers 0, 15, 29)" / "0.90 over all cells"; NaN: not measurable."""
    import math

    rho = measured.get("spearman")
    if rho is None or not math.isfinite(float(rho)):
        return "could not be measured (too few distinct values)"
    scope = str(measured.get("scope") or "")
    scope = scope if not scope or scope == "all cells" else f"a {scope}"
    return f"{float(rho):.2f}" + (f" over {scope}" if scope else "")


def map_to_show(model: str, near: float = 0.5) -> Optional[tuple[dict, dict]]:
    """The stored sensitivity map a page shows beside its own figures, with its trust verdict, or None.

    Every finished map of `model` (a refinement's final view where there is one) with its result's measured
    agreements; the rule is the Sensitivity page's: a trusted map first (exact, or a proxy whose measured
    agreement with exact is high enough), an exact map before a proxy, then the sparsity nearest `near`,
    then the newest. Returns (map, `sensitivity_trust` of it).
    """
    candidates = []
    for age, r in enumerate(recent_results("sensitivity", model) or []):
        views = r["result"].get("views") or []
        for m in r["result"].get("maps") or []:
            shown = next((v for v in views if v["metric"] == m["metric"] and v["sparsity"] == m["sparsity"]), m)
            candidates.append((shown, sensitivity_trust(shown, r["result"].get("correlations") or []), age))
    if not candidates:
        return None
    chosen, trust, _ = max(candidates, key=lambda t: (t[1]["trusted"], t[0]["metric"] == "exact",
                                                      -abs(float(t[0]["sparsity"]) - near), -t[2]))
    return chosen, trust


def sensitivity_trust(sens: dict, correlations=()) -> dict:
    """Which map this is, how far its ranking agrees with the exact metric, and whether its plain-language
    reading (`sensitivity_reading`) may be shown.

    Returns {"trusted": bool, "agreement": dict | None (see `map_agreement`), "label": one line naming the
    metric (and refinement) with its measured agreement, "withheld": None, or the sentence saying why the
    reading is not shown}. An exact map is its own truth; any other map is trusted only with a measured
    agreement of at least `TRUSTED_AGREEMENT` (`pruning_core.analysis.refinement.is_trusted`)."""
    from pruning_core.analysis.refinement import is_trusted

    measured = map_agreement(sens, correlations)
    trusted = is_trusted(sens, measured)
    refinement = sens.get("refinement")
    metric = str(sens.get("metric"))
    name = (refinement or {}).get("name") or SENSITIVITY_METRIC_NAMES.get(metric, metric)
    label = (f"Refinement {refinement['step']} of {refinement['of']}: {name}" if refinement is not None
             else name[:1].upper() + name[1:])
    if refinement is not None and metric == "exact" and measured is not None:
        label += f" — agreement between the refinements: {_agreement_words(measured)}"
    elif metric == "exact":
        label += " — the reference every estimate is measured against"
    elif measured is not None:
        label += f" — agreement with the exact metric {_agreement_words(measured)}"
    elif refinement is not None:
        label += " — agreement with the exact metric not measured yet (its first rows are being computed)"
    else:
        label += " — agreement with the exact metric not measured"
    withheld = None
    if not trusted:
        rho = (measured or {}).get("spearman")
        if measured is None:
            why = "its agreement with the exact metric is not measured yet"
        elif rho is None or rho != rho:
            why = "its agreement with the exact metric could not be measured"
        else:
            why = f"agreement {float(rho):.2f} with the exact metric is too low to read this map as advice"
        then = ("the exact map this run is computing replaces it when it is done." if refinement is not None
                else "choose 'Automatic' or the exact metric for a map you can act on.")
        withheld = f"No plain-language reading: {why} (at least {TRUSTED_AGREEMENT:.1f} is needed); {then}"
    return {"trusted": trusted, "agreement": measured, "label": label, "withheld": withheld}


# ---------------------------------------------------------------------------------------------- summary


def recommend(results: dict, corpus: str, budget: float) -> dict:
    """The highest measured sparsity whose perplexity on `corpus` is at most (1 + budget) x dense.

    Returns {"dense_ppl", "best" (point or None), "best_change" (fraction), "per_method": [(method, change,
    point)] for each method's highest-sparsity point, "per_method_within": {method: (change, point)} for each
    method's highest-sparsity point within the budget (methods with none are absent)}. Ties at equal sparsity
    go to the lower perplexity.
    """
    dense = ((results.get("dense") or {}).get("ppl") or {}).get(corpus)
    if dense is None:
        raise ServiceError(f"The dense perplexity on '{corpus}' was not measured; run the sweep again.")
    scored = []
    for p in results.get("points", []):
        ppl = (p.get("ppl") or {}).get(corpus)
        if ppl is None:
            continue
        scored.append((float(p["sparsity"]), -ppl, p, ppl / dense - 1.0))
    within = [s for s in scored if s[3] <= budget]
    best = max(within, key=lambda s: (s[0], s[1])) if within else None
    per_method, per_method_within = {}, {}
    for sparsity, neg, p, change in sorted(scored, key=lambda s: (s[0], s[1])):
        per_method[p["method"]] = (p["method"], change, p)
        if change <= budget:
            per_method_within[p["method"]] = (change, p)
    return {"dense_ppl": dense, "best": best[2] if best else None, "best_change": best[3] if best else None,
            "per_method": list(per_method.values()), "per_method_within": per_method_within}


def top_cells(sens: dict, n: int = 8) -> list[dict]:
    """The `n` highest cells of a sensitivity map: [{"layer", "module", "value", "weights"}], highest first."""
    import math

    cells = []
    sizes = sens.get("module_sizes")
    for i, layer in enumerate(sens["layers"]):
        for j, module in enumerate(sens["modules"]):
            value = sens["values"][i][j]
            if value is None or not math.isfinite(float(value)):
                continue
            size = sizes[i][j] if sizes is not None else None
            if isinstance(size, (list, tuple)):
                size = math.prod(int(d) for d in size)
            cells.append({"layer": int(layer), "module": str(module), "value": float(value),
                          "weights": None if size is None else int(size)})
    cells.sort(key=lambda c: c["value"], reverse=True)
    return cells[:n]


# -------------------------------------------------------------------------------------------- allocation

#: The allocator registry's names, in its order ("uniform" first); see `pruning_core.allocation.allocators`.
ALLOCATIONS = tuple(_allocators.ALLOCATORS)
#: What each allocator does, in the registry's words (the pages' help texts).
ALLOCATION_DESCRIPTIONS = {name: a.description for name, a in _allocators.ALLOCATORS.items()}


def allocation_needs(name: str) -> str:
    """What allocator `name` reads: "none", a statistics kind such as "act_sq" (one calibration pass, cached),
    or "sensitivity" (a stored sensitivity map at two or more sparsities)."""
    return _allocators.get_allocator(name).needs


def _map_sparsities(result: dict) -> dict[str, set]:
    """metric -> the sparsities a sensitivity result has maps at."""
    found: dict[str, set] = {}
    for m in result.get("maps") or []:
        found.setdefault(str(m.get("metric")), set()).add(round(float(m["sparsity"]), 6))
    return found


def sensitivity_for_allocation(model: str) -> Optional[dict]:
    """The newest finished sensitivity result of `model` with maps at two or more sparsities of one metric
    (what the `sensitivity` allocator needs to know each module's marginal cost): {"id", "result", "label"},
    or None when there is none."""
    for r in recent_results("sensitivity", model):
        found = _map_sparsities(r["result"])
        usable = {metric: s for metric, s in found.items() if len(s) >= 2}
        if usable:
            metric = "exact" if "exact" in usable else sorted(usable)[0]
            spec = r.get("spec") or {}
            label = (f"{SENSITIVITY_METRIC_NAMES.get(metric, metric)} map of {spec.get('method', '?')} at "
                     + ", ".join(f"{s:.0%}" for s in sorted(usable[metric])))
            return {"id": r["id"], "result": r["result"], "label": label}
    return None


@st.cache_data(show_spinner=False, max_entries=64)
def _allocation_plan(model: str, identity_key: str, protocol_json: str, allocator: str, target: float,
                     sensitivity_id: Optional[str], home: str) -> dict:  # noqa: ARG001 - identity/home: cache key
    from pruning_core.plan import module_sizes
    from pruning_core.statistics_cache import cached_statistics

    loaded = get_model(model)
    protocol = Protocol(**json.loads(protocol_json))
    needs = allocation_needs(allocator)
    statistics = sensitivity = None
    if needs == "sensitivity":
        found = sensitivity_for_allocation(model)
        sensitivity = found["result"] if found and found["id"] == sensitivity_id else None
    elif needs != "none":  # dense input statistics: from the store when a sweep or an earlier plan made them
        statistics = cached_statistics(loaded, protocol, needs, Store())
    plan = _allocators.make_plan(allocator, _allocators.AllocationInputs(loaded, statistics=statistics,
                                                                         sensitivity=sensitivity), target)
    sizes = module_sizes(loaded)
    return {"plan": plan.to_dict(), "global_sparsity": plan.global_sparsity(sizes),
            "layer_sparsity": [plan.layer_mean(i, s) for i, s in enumerate(sizes)],
            "sensitivity_id": sensitivity_id}


def allocation_plan(settings: dict, allocator: str, target: float) -> dict:
    """The plan allocator `allocator` makes for global target sparsity `target` (by parameters) on the Setup
    model, with the Setup calibration (`pruning_core.allocation.allocators.make_plan`).

    Returns {"plan" (`SparsityPlan.to_dict()`), "global_sparsity" (the plan's, by parameters, from the core),
    "layer_sparsity" (each layer's, by parameters), "sensitivity_id" (the sensitivity job read, or None)}.
    Cached per (model file, protocol, allocator, target, sensitivity job). An allocator that reads statistics
    costs one calibration pass the first time (cached on disk for every later plan and sweep); one that reads
    a sensitivity map uses `sensitivity_for_allocation`'s. Raises ConfigError saying what is missing.
    """
    model = settings["model"]
    found = sensitivity_for_allocation(model) if allocation_needs(allocator) == "sensitivity" else None
    return _allocation_plan(model, content_hash(model_identity(model)),
                            json.dumps(protocol_dict(settings), sort_keys=True), allocator, round(float(target), 6),
                            found["id"] if found else None, str(home_dir()))


def plan_facts(settings: dict, plan: dict) -> dict:
    """{"global_sparsity", "layer_sparsity"}: a plan's (an edited one's) global sparsity and each layer's,
    counted over parameters on the Setup model (`SparsityPlan.global_sparsity(module_sizes(loaded))`).
    Raises ConfigError when the plan does not fit the model or holds a value outside [0, 0.99]."""
    from pruning_core.plan import SparsityPlan, module_sizes, plan_for

    loaded = get_model(settings["model"])
    checked = plan_for(loaded, SparsityPlan.from_dict(plan))
    sizes = module_sizes(loaded)
    return {"global_sparsity": checked.global_sparsity(sizes),
            "layer_sparsity": [checked.layer_mean(i, s) for i, s in enumerate(sizes)]}


def edited_plan(base: dict, rows: list[dict]) -> dict:
    """The plan dict of an edited table: `rows` = [{"layer", <kind>: sparsity, ...}] (the What-if editor's),
    over `base` (the plan it started from). Unchanged: `base` itself; changed: allocator "edited", with
    "edited_from" naming the allocator it started from (as `SparsityPlan.edited` records it)."""
    kinds = list(base["kinds"])
    values = [list(row) for row in base["values"]]
    for row in rows:
        layer = int(row["layer"])
        for j, kind in enumerate(kinds):
            if row.get(kind) is not None and 0 <= layer < len(values):
                values[layer][j] = float(row[kind])
    if values == [[float(v) for v in row] for row in base["values"]]:
        return base
    settings = dict(base.get("settings") or {})
    if base.get("allocator") != "edited":
        settings["edited_from"] = base.get("allocator")
    return {**base, "values": values, "allocator": "edited", "settings": settings}


def plan_origin(plan: dict) -> str:
    """The allocator a plan came from: its own, or for an edited plan the one it was edited from."""
    return str((plan.get("settings") or {}).get("edited_from") or plan.get("allocator") or "uniform")


# ------------------------------------------------------------------------------------------------ budget


def budget_spec(settings: dict, method: str, allocation: str, max_increase: float, corpus: Optional[str] = None,
                propagation: str = "pruned") -> dict:
    """A budget-search job spec (`pruning_core.allocation.budget.BudgetSpec.to_dict()`), validated: the most
    global sparsity of `method` with `allocation`'s plans whose perplexity on `corpus` (default: the first
    evaluation corpus of the settings) stays within +`max_increase` (a fraction: 0.10 = +10 %) of dense."""
    from pruning_core.allocation.budget import BudgetSpec

    corpus = corpus or (settings.get("eval_corpora") or [None])[0]
    spec = BudgetSpec(model=settings["model"], protocol=protocol_of(settings), method=method, allocation=allocation,
                      propagation=propagation, corpus=corpus, max_increase=round(float(max_increase), 6))
    return spec.validate().to_dict()


def budget_status(spec: dict) -> Optional[dict]:
    """The newest job of exactly this budget spec (`job_status`), or None when it was never asked for. A finished
    one holds the search result ("frontier", "trajectory", "certainty", ...): asked again, it is reused."""
    runner = _runner()
    jobs = runner.store.jobs_with_key(job_key("budget", spec))
    if not jobs:
        return None
    return runner.status(max(jobs, key=lambda j: j.get("created") or 0)["id"])


def budget_answer_words(result: dict) -> dict:
    """How a budget search's answer is said: {"found": bool, "sparsity", "ppl", "increase" (fractions; None
    when nothing passed), "how": one sentence on how it was found (steps visited, evaluation windows, the gap
    between the last passing and the first failing step, reused measurements), "caveat": None or a sentence
    (perplexity not monotone in sparsity, or the edge lies above the searched range)}."""
    frontier = result.get("frontier")
    certainty = result.get("certainty") or {}
    steps = [float(r["sparsity"]) for r in result.get("trajectory") or [] if r.get("sparsity") is not None]
    path = " → ".join(f"{s:.0%}" for s in steps[:12]) + (" …" if len(steps) > 12 else "")
    evaluations, reused = certainty.get("evaluations"), certainty.get("reused") or 0
    how = f"Found by a step-wise search of {len(steps)} step{'s' if len(steps) != 1 else ''} ({path})"
    if evaluations is not None:
        how += f", {evaluations} evaluation{'s' if evaluations != 1 else ''}"
        how += f" ({reused} reused from earlier searches)" if reused else ""
        grid = certainty.get("grid_evaluations")
        how += f" where a grid of 2-point steps needs {grid}" if grid else ""
    windows = certainty.get("eval_windows")
    how += f"; each perplexity on {windows} evaluation windows" if windows is not None else ""
    gap = certainty.get("gap_pp")
    if gap is not None:
        unit = "percentage point" if float(gap) == 1 else "percentage points"
        how += f"; the last passing and the first failing step are {float(gap):g} {unit} apart"
    how += "."
    caveat = None
    if certainty.get("ppl_monotone") is False:
        caveat = ("Perplexity did not grow steadily with sparsity along the search, so a setting above this edge "
                  "might also pass: read the edge as approximate.")
    elif gap is None and frontier is not None:
        caveat = f"Even the top of the searched range passed: the edge is at or above {frontier['sparsity']:.0%}."
    if not frontier:
        return {"found": False, "sparsity": None, "ppl": None, "increase": None, "how": how, "caveat": caveat}
    return {"found": True, "sparsity": float(frontier["sparsity"]), "ppl": float(frontier["ppl"]),
            "increase": float(frontier["increase"]) if frontier.get("increase") is not None else None,
            "how": how, "caveat": caveat}


# -------------------------------------------------------------------------------------------- structured

STRUCTURED_UNITS = ("heads", "channels", "layers")
STRUCTURED_SCORES = ("obs", "wanda_sp", "flap", "magnitude")
STRUCTURED_SCORE_DESCRIPTIONS = {
    "obs": "each unit's numerical effect on the layer output (calibration second moments)",
    "wanda_sp": "weight magnitude x input activation norm (Wanda-sp)",
    "flap": "fluctuation of the unit's input over the calibration windows (FLAP)",
    "magnitude": "weight magnitude only (needs no calibration data)",
}


def structured_spec(settings: dict, units, ratios, score: str = "obs", compensate: bool = True,
                    speed: bool = True, prompt: str = "", max_new_tokens: int = 40,
                    speed_settings: Optional[dict] = None, allocation: str = "uniform",
                    layer_share: float = 0.5) -> dict:
    """A structured job spec (`StructuredSpec.to_dict()`, see `pruning_core.structured.run.run_structured`),
    validated before anything runs. ratios: fractions of decoder parameters to remove. allocation: how each
    ratio is spread over the layers (`ALLOCATIONS`); "sensitivity" reads the maps of the method of this model's
    newest usable sensitivity result (`sensitivity_for_allocation`). layer_share: with layers mixed with
    heads/channels, the share of each ratio removed as whole layers."""
    from pruning_core.structured.run import StructuredSpec

    extra = {}
    if allocation_needs(allocation) == "sensitivity":
        found = sensitivity_for_allocation(settings["model"])
        if found is None:
            raise ConfigError("Allocation 'sensitivity' reads a sensitivity map of this model at two or more "
                              "sparsities; compute one on the Sensitivity page first, or choose 'owl' or 'uniform'.")
        extra["sensitivity_method"] = (found["result"].get("spec") or {}).get("method") or "wanda"
    spec = StructuredSpec(model=settings["model"], protocol=protocol_of(settings), units=tuple(units),
                          ratios=tuple(sorted(float(r) for r in ratios)), score=score, compensate=bool(compensate),
                          eval_corpora=tuple(settings["eval_corpora"]), speed=bool(speed),
                          speed_settings=dict(speed_settings or {}), prompt=prompt,
                          max_new_tokens=int(max_new_tokens), model_identity=model_identity(settings["model"]),
                          allocation=allocation, layer_share=float(layer_share), **extra)
    return spec.validate().to_dict()


def latest_structured_result(model: str) -> Optional[dict]:
    """The newest finished structured job's result for the model source `model` (`run_structured`'s dict, as
    the Structured page shows it), or None when this model has none."""
    found = recent_results("structured", model, limit=1)
    return found[0]["result"] if found else None


def structured_speedups(point: dict, dtype: str = "float32") -> Optional[dict[str, float]]:
    """{phase label: pruned/dense tokens/s} measured for a structured point in `dtype` (`measure_speed`'s
    "ratios"), or None when its speed was not measured in that dtype (never estimated)."""
    ratios = ((point.get("speed") or {}).get("ratios") or {}).get(dtype)
    return dict(ratios) if ratios else None


def unstructured_for(result: dict) -> Optional[dict]:
    """The finished sweeps of the structured result's model with the same evaluation (corpus windows, seqlen,
    dtype), merged: their unstructured points go on the Structured page's axes. None when there is none."""
    fingerprint = (result.get("model") or {}).get("fingerprint")
    protocol = result.get("protocol") or {}
    same = []
    for job in recent_results("sweep", limit=50):
        sweep = job["result"]
        p = sweep.get("protocol") or {}
        if (sweep.get("model") or {}).get("fingerprint") == fingerprint and all(
                p.get(k) == protocol.get(k) for k in ("seqlen", "eval_windows", "dtype")):
            same.append(sweep)
    return merge_sweeps(same)


def structured_tradeoff_figure(result: dict, corpus: str, axis: str, dtype: str = "float32") -> dict:
    """The Structured page's trade-off chart spec (`outputs.structured_figures.tradeoff_figure`), with the
    matching sweep's unstructured points; {"figure", "unstructured_points": how many were drawn}."""
    from pruning_core.structured.figures import tradeoff_figure

    sweep = unstructured_for(result)
    figure = tradeoff_figure(result, sweep, corpus, axis, dtype)
    count = sum(len(t["x"]) for t in figure["data"] if (t.get("meta") or {}).get("role") == "unstructured")
    return {"figure": figure, "unstructured_points": count}


def structured_widths_figure(result: dict, index: int) -> dict:
    """The per-layer widths chart spec of the result's `index`-th point."""
    from pruning_core.structured.figures import widths_figure

    return widths_figure(result["points"][index], result["dense_widths"])


def structured_claims(point: dict, dtype: str = "float32") -> dict:
    """{"size", "speed"}: a structured point's sentences, from its real parameter count and its measured speed
    (`claims.structured_claims`), as the report words them."""
    return claims.structured_claims(point.get("sizes"), point.get("speed"), dtype)


def structured_speed_rows(point: dict) -> list[dict]:
    """The measured speed of a point as table rows: dtype, phase, dense and pruned tokens/s, speed-up."""
    rows = []
    for dtype, table in ((point.get("speed") or {}).get("phases") or {}).items():
        for phase, numbers in table.items():
            rows.append({"weights": dtype, "phase": phase, "dense tokens/s": numbers["dense_tokens_per_s"],
                         "pruned tokens/s": numbers["pruned_tokens_per_s"], "speed-up": numbers["speedup"]})
    return rows


def structured_report_html(result: dict, index: int) -> str:
    """The report (HTML, self-contained) of the result's `index`-th point, from the job's measurements
    (`outputs.structured_export.structured_report_data`), as the CLI's --report and the export write it."""
    from pruning_core.outputs.report import render_html
    from pruning_core.structured.export import structured_report_data

    data = structured_report_data(result, result["points"][index])
    data.setdefault("generated", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    return render_html(data)


def structured_save_command(result: dict, index: int) -> str:
    """The `prunescope structured` command that writes this point's smaller model folder and report."""
    spec, point = result["spec"], result["points"][index]
    protocol = spec["protocol"]
    parts = ["prunescope structured", f"--model {spec['model']}", f"--calib {protocol['calib']}",
             f"--nsamples {protocol['nsamples']}", f"--seqlen {protocol['seqlen']}",
             f"--eval-windows {protocol['eval_windows']}", f"--seed {protocol['seed']}",
             f"--eval {','.join(spec['eval_corpora'] or [protocol['calib']])}",
             f"--units {','.join(spec['units'])}", f"--ratios {point['ratio']:g}", f"--score {spec['score']}",
             "--compensate" if spec["compensate"] else "--no-compensate"]
    if "layers" in spec["units"] and len(spec["units"]) > 1:
        parts.append(f"--layer-share {spec.get('layer_share', 0.5):g}")
    if spec.get("allocation", "uniform") != "uniform":
        parts.append(f"--allocation {spec['allocation']}")
        if spec["allocation"] == "sensitivity":
            parts.append(f"--sensitivity-method {spec.get('sensitivity_method') or 'wanda'}")
    if spec.get("speed"):
        parts.append("--speed")
    return " ".join(parts + ["--save-model", "--report", "--out structured-export"])


# ---------------------------------------------------------------------------------------------- recovery

#: The Recovery page's rank allocations; "sensitivity" is offered only when the model has a usable stored map
#: (`recovery_rank_allocations`).
RECOVERY_RANK_ALLOCATIONS = ("uniform", "gradient", "sensitivity")
#: Session key the Summary sets to hand its recommended setting to the Recovery page (`send_to_recovery`).
RECOVERY_PREFILL_KEY = "recovery_prefill"
#: The setting the Recovery page starts from when the Summary recommends none.
DEFAULT_RECOVERY_SOURCE = {"method": "wanda", "structure": "unstructured", "sparsity": 0.5, "propagation": "pruned",
                           "allocator": "uniform"}
RECOVERY_PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "recovery.py")


def recovery_rank_descriptions() -> dict[str, str]:
    from pruning_core.recovery.ranks import RANK_DESCRIPTIONS

    return {k: RANK_DESCRIPTIONS[k] for k in RECOVERY_RANK_ALLOCATIONS}


def recovery_rank_allocations(model: str) -> list[str]:
    """The rank allocations the Recovery page offers for `model`: uniform and gradient, and sensitivity when a
    stored sensitivity map of it is usable (`sensitivity_for_allocation`)."""
    usable = sensitivity_for_allocation(model) is not None
    return [k for k in RECOVERY_RANK_ALLOCATIONS if k != "sensitivity" or usable]


def parse_schedule(text: str) -> tuple[float, ...]:
    """Step-wise sparsities typed as "0.3, 0.4" (or "30%, 40%"); empty text = one-shot (). Raises ConfigError
    on anything that is not a number; the order and range are checked by `RecoverySpec.validate`."""
    values = []
    for part in (p.strip() for p in re.split(r"[,;\s]+", text or "")):
        if not part:
            continue
        try:
            values.append(float(part[:-1]) / 100 if part.endswith("%") else float(part))
        except ValueError:
            raise ConfigError(f"Could not read '{part}' as a sparsity; type the step-wise sparsities as "
                              "fractions separated by commas, e.g. 0.3,0.4 (or leave the field empty for "
                              "one-shot pruning).") from None
    return tuple(values)


def recovery_sensitivity_costs(model: str, sparsity: float) -> dict:
    """{"costs": {module name: cost}, "label"}: each module's cost at `sparsity` from the newest usable
    sensitivity map of `model` (`recovery.sensitivity_costs.module_costs`). Raises ConfigError when none."""
    from pruning_core.recovery.sensitivity_costs import module_costs

    found = sensitivity_for_allocation(model)
    if found is None:
        raise ConfigError("Sensitivity-allocated ranks read a sensitivity map of this model at two or more "
                          "sparsities; compute one on the Sensitivity page first, or choose uniform or gradient.")
    method = (found["result"].get("spec") or {}).get("method")
    return {"costs": module_costs(get_model(model), found["result"], sparsity, method), "label": found["label"]}


def recovery_adapters(model: str) -> list[dict]:
    """The adapters in the store of the model `model` (`recovery.catalog.list_adapters`), newest first, as the
    Recovery page's table: when, the setting recovered, training, ranks, perplexity pruned -> recovered per
    corpus, size and folder."""
    from pruning_core.recovery.catalog import list_adapters, perplexity_words

    rows = list_adapters(Store(), model_fingerprint=get_model(model).fingerprint)
    return [{"created (UTC)": time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["created"])),
             "setting": ("step-wise " + " → ".join(f"{s:.0%}" for s in r["schedule"]) + " → " if r["schedule"]
                         else "") + r["setting"],
             "trained on": corpus_label(r["train_corpus"]) if r["train_corpus"] else MISSING,
             "steps": r["steps"], "ranks": r["rank_allocation"],
             "perplexity pruned → recovered": perplexity_words(r).replace(" -> ", " → "),
             "size": format_bytes(r["bytes"]), "folder": r["folder"]} for r in rows]


def recovery_source(point: dict) -> dict:
    """The setting a sweep point was measured with, as the Recovery page's source: method, structure, sparsity
    (the target, rounded to the page's 5 % steps), propagation and allocation ("uniform" when none)."""
    sparsity = float(point.get("target_sparsity") or point.get("sparsity") or 0.5)
    return {"method": point["method"], "structure": point.get("structure", "unstructured"),
            "sparsity": min(0.9, max(0.1, round(sparsity * 20) / 20)),
            "propagation": point.get("propagation") or "pruned", "allocator": point_allocation(point)}


def recommended_source(settings: dict, budget: float = 0.10, corpus: Optional[str] = None) -> Optional[dict]:
    """The Summary's recommended setting (highest measured sparsity within +`budget` perplexity on `corpus`,
    default the first evaluation corpus) as a Recovery source, or None when no sweep recommends one."""
    results = merge_sweeps([r["result"] for r in recent_results("sweep", settings["model"])])
    if not results or not results.get("points"):
        return None
    corpora = list((results.get("dense") or {}).get("ppl") or {})
    wanted = corpus or next((c for c in settings["eval_corpora"] if c in corpora), corpora[0] if corpora else None)
    if wanted is None:
        return None
    best = recommend(results, wanted, budget)["best"]
    return recovery_source(best) if best else None


def send_to_recovery(point: dict) -> None:
    """Hand a sweep point to the Recovery page (preselected there) and open it; a page run on its own has no
    menu to switch in, so a note says where to go."""
    from streamlit.errors import StreamlitAPIException

    st.session_state[RECOVERY_PREFILL_KEY] = recovery_source(point)
    try:
        st.switch_page(RECOVERY_PAGE)
    except StreamlitAPIException:
        st.info("The setting is preselected on the Recovery page; open it from the menu.",
                icon=":material/healing:")


def recovery_spec(settings: dict, source: dict, steps: int = 200, rank: int = 8, rank_allocation: str = "uniform",
                  eval_corpora=None, minutes: Optional[float] = 15, train_corpus: Optional[str] = None,
                  batch_size: Optional[int] = None, seqlen: Optional[int] = None, prompt: str = "",
                  max_new_tokens: int = 40, schedule: str = "") -> dict:
    """A recovery job spec (`RecoverySpec.to_dict()`, see `pruning_core.recovery.run.run_recovery`), validated.

    source: {"method", "structure", "sparsity", "propagation", "allocator"} (the pruned setting to recover);
    steps / batch_size / seqlen: optimizer steps, windows per step, tokens per window (`TrainConfig`; None keeps
    its default); minutes: training time budget (the run stops there; None = all steps); train_corpus: whose
    calibration split it trains on (default the dashboard's calibration corpus); schedule: step-wise sparsities
    before the final one as typed ("0.3,0.4"; empty = one-shot, `parse_schedule`); rank_allocation
    "sensitivity" reads the costs at the setting's sparsity from the model's stored map."""
    from pruning_core.recovery.run import RecoverySpec

    if rank_allocation not in RECOVERY_RANK_ALLOCATIONS:
        raise ConfigError(f"Unknown rank allocation '{rank_allocation}'; choose "
                          f"{' or '.join(RECOVERY_RANK_ALLOCATIONS)}.")
    corpora = tuple(eval_corpora if eval_corpora is not None else settings["eval_corpora"])
    if not corpora:
        raise ConfigError("Choose at least one corpus to measure the recovery on.")
    train = {"steps": int(steps)}
    if batch_size is not None:
        train["batch_size"] = int(batch_size)
    if seqlen is not None:
        train["seqlen"] = int(seqlen)
    if minutes:
        train["max_seconds"] = float(minutes) * 60.0
    allocator = source.get("allocator")
    costs = (recovery_sensitivity_costs(settings["model"], float(source["sparsity"]))["costs"]
             if rank_allocation == "sensitivity" else None)
    spec = RecoverySpec(model=settings["model"], protocol=protocol_of(settings), method=source["method"],
                        structure=source.get("structure", "unstructured"), sparsity=float(source["sparsity"]),
                        propagation=source.get("propagation") or "pruned",
                        allocator=None if allocator in (None, "uniform") else allocator,
                        train_corpus=train_corpus or settings["calib"], train=train, rank=int(rank),
                        rank_allocation=rank_allocation, sensitivity_costs=costs, eval_corpora=corpora,
                        prompt=prompt, max_new_tokens=int(max_new_tokens), schedule=parse_schedule(schedule),
                        model_identity=model_identity(settings["model"]))
    return spec.validate().to_dict()


def _same_source(spec: dict, source: dict) -> bool:
    allocator = source.get("allocator")
    return (spec.get("method") == source.get("method")
            and spec.get("structure", "unstructured") == source.get("structure", "unstructured")
            and abs(float(spec.get("sparsity") or 0) - float(source.get("sparsity") or 0)) < 1e-6
            and (spec.get("allocator") or None) == (None if allocator in (None, "uniform") else allocator))


def latest_recovery_result(model: str, source: Optional[dict] = None) -> Optional[dict]:
    """The newest finished recovery job's result for the model source `model` (of the pruned setting `source`,
    when given: method, structure, sparsity, allocator), or None when there is none."""
    for found in recent_results("recovery", model):
        if source is None or _same_source(found["result"].get("spec") or found["spec"], source):
            return found["result"]
    return None


def recovery_figures(result: dict) -> dict:
    """{"loss", "perplexity"}: the Recovery page's chart specs (`outputs.recovery_figures`)."""
    from pruning_core.recovery import figures

    return {"loss": figures.loss_figure(result), "perplexity": figures.perplexity_figure(result)}


def recovery_rows(result: dict) -> list[dict]:
    """The before/after table per corpus: dense, pruned, recovered (merged model) perplexity, the recovered
    model's change against dense and the share of the pruning gap won back."""
    from pruning_core.recovery.figures import before_after

    def fmt(value: Optional[float]) -> str:
        return MISSING if value is None else f"{value:,.2f}"

    rows = []
    for r in before_after(result):
        rows.append({"corpus": r["corpus"], "dense": fmt(r["dense"]), "pruned": fmt(r["pruned"]),
                     "after recovery": fmt(r["recovered"]),
                     "change vs dense": (MISSING if None in (r["recovered"], r["dense"]) else
                                         f"{100 * (r['recovered'] / r['dense'] - 1):+.1f} %"),
                     "gap won back": MISSING if r["share"] is None else f"{100 * r['share']:.0f} %"})
    return rows


def recovery_words(result: dict) -> dict:
    """{"sparsity", "adapter", "ranks", "steps" (optimizer steps run, every step-wise stage counted), "exact"
    (bool: the merged sparsity equals the pruned one and every pruned weight is still zero)}: the facts of a
    recovery in the report's words."""
    from pruning_core.recovery import figures

    sparsity = result.get("sparsity") or {}
    return {"sparsity": figures.sparsity_sentence(result), "adapter": figures.adapter_sentence(result),
            "ranks": figures.ranks_sentence(result.get("ranks") or {}), "steps": figures.total_steps(result),
            "exact": bool(sparsity.get("pruned_weights_zero")) and sparsity.get("before") == sparsity.get("merged")}


def recovery_estimate(spec: dict) -> dict:
    """The training time of a recovery spec, an estimate (`recovery.estimate.estimate_training`): from the last
    recovery of the model on this machine, else from the model's measured forward speed."""
    from pruning_core.recovery.estimate import estimate_training, measured_seconds_per_token
    from pruning_core.recovery.train import TrainConfig

    config = TrainConfig(**(spec.get("train") or {}))
    measured = next((r["result"] for r in recent_results("recovery", spec["model"], limit=10)
                     if (r["result"].get("spec") or {}).get("train", {}).get("dtype", "bfloat16") == config.dtype
                     and measured_seconds_per_token(r["result"])), None)
    throughput = None
    if measured is None:
        if _estimates is None:
            raise ServiceError("No recovery of this model was measured yet and the throughput probe is missing "
                               "from this version of the engine.")
        throughput = _estimates.measure_throughput(get_model(spec["model"]), config.seqlen, config.dtype, Store())
    return estimate_training(config.steps, config.batch_size, config.seqlen, measured=measured,
                             forward_tokens_per_s=throughput, max_seconds=config.max_seconds)


def recovery_report_html(result: dict) -> str:
    """The report (HTML, self-contained) of a recovery result, with its Recovery section
    (`outputs.recovery_export.recovery_report_data`), as the export writes it."""
    from pruning_core.recovery.export import recovery_report_data
    from pruning_core.outputs.report import render_html

    data = recovery_report_data(result)
    data.setdefault("generated", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    return render_html(data)


def recovery_adapter_zip(result: dict) -> Optional[bytes]:
    """The adapter folder the job saved (PEFT files + ranks.json) as a zip, or None when it is not on disk."""
    import io
    import zipfile

    folder = (result.get("adapter") or {}).get("folder")
    if not folder or not Path(folder).is_dir():
        return None
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(Path(folder).iterdir()):
            if path.is_file():
                archive.write(path, f"adapter/{path.name}")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------- continual

#: The strategies of continual pruning, in the registry's order (the page offers them all by default).
CONTINUAL_STRATEGIES = tuple(_CONTINUAL_STRATEGIES)


def continual_strategy_descriptions() -> dict[str, dict]:
    """{name: {"description", "continual"}} of the registered strategies (`continual.strategies`)."""
    from pruning_core.continual.strategies import strategy_descriptions

    return strategy_descriptions()


def continual_bwt_note() -> str:
    """The BWT sign convention every continual figure states (`continual.run.BWT_NOTE`)."""
    from pruning_core.continual.run import BWT_NOTE

    return BWT_NOTE


def continual_corpora(settings: dict) -> list[str]:
    """The corpora a domain sequence can use: the embedded ones, the files uploaded on the Setup page (newest
    first) and the shared settings' own file corpora."""
    chosen = [c for c in [settings.get("calib"), *(settings.get("eval_corpora") or [])] if c and is_file(c)]
    return list(dict.fromkeys([*EMBEDDED_CORPORA, *uploaded_corpora(), *chosen]))


def continual_spec(settings: dict, domains, method: str, sparsity: float, strategies, structure: str = "unstructured",
                   allocation: str = "uniform") -> dict:
    """A continual job spec (`ContinualSpec.to_dict()`, see `pruning_core.continual.run.run_continual`),
    validated (every domain read) before anything runs. domains: corpora in arrival order; the protocol
    (windows, seqlen, seed, evaluation windows) is the dashboard's."""
    from pruning_core.continual.run import ContinualSpec

    domains, strategies = tuple(domains or ()), tuple(strategies or ())
    if not domains:
        raise ConfigError("Choose the domains in the order they arrive, e.g. wiki, then news, then pydocs.")
    if not strategies:
        raise ConfigError("Choose at least one strategy; 'joint' alone is only the reference line.")
    spec = ContinualSpec(model=settings["model"], protocol=protocol_of(settings), domains=domains, method=method,
                         sparsity=float(sparsity), structure=structure, allocation=allocation,
                         strategies=strategies, model_identity=model_identity(settings["model"]))
    return spec.validate().to_dict()


def latest_continual_result(model: str) -> Optional[dict]:
    """The newest finished continual job's result for the model source `model` (`run_continual`'s dict), or
    None when this model has none."""
    found = recent_results("continual", model, limit=1)
    return found[0]["result"] if found else None


def continual_figures(result: dict) -> dict:
    """{"R": {strategy: heatmap spec}, "transfer": BWT/average bars, "overlap": mask overlap lines}
    (`outputs.continual_figures`), domains named as the Setup page names them."""
    from pruning_core.continual import figures

    labels = corpus_labels(list(result["domains"]))
    return {"R": {name: figures.r_matrix_figure(result, name, labels) for name in result["strategies"]},
            "transfer": figures.transfer_figure(result), "overlap": figures.overlap_figure(result)}


def continual_rows(result: dict) -> list[dict]:
    """The strategies table, least forgetting first: BWT, average perplexity after the last step, FWT and the
    rule of each strategy in words (`outputs.continual_figures.strategy_rows`)."""
    from pruning_core.continual.figures import strategy_rows

    def fmt(value: Optional[float], signed: bool = False) -> str:
        return MISSING if value is None else (f"{value:+,.2f}" if signed else f"{value:,.2f}")

    return [{"strategy": r["strategy"] + ("" if r["continual"] else " (reference, not continual)"),
             "BWT (positive = forgetting)": fmt(r["bwt"], True), "average perplexity": fmt(r["average"]),
             "FWT": fmt(r["fwt"], True), "rule": r["rule"]} for r in strategy_rows(result)]


def continual_answer(result: dict) -> str:
    """The page's one-sentence answer, "X forgets least: BWT ... (positive = forgetting) ...", from the result."""
    from pruning_core.continual.figures import answer_sentence

    return answer_sentence(result)


def continual_report_html(result: dict) -> str:
    """The report (HTML, self-contained) of a continual result, with its "Continual pruning" section
    (`outputs.continual_export.continual_report_data`), as the export and `prunescope continual --report` write it."""
    from pruning_core.continual.export import continual_report_data
    from pruning_core.outputs.report import render_html

    data = continual_report_data(result)
    data.setdefault("generated", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    return render_html(data)


def latest_continual_adapters_result(model: str) -> Optional[dict]:
    """The newest finished per-domain adapters job's result for the model source `model`
    (`continual.adapters.run_continual_adapters`'s dict), or None."""
    found = recent_results("continual_adapters", model, limit=1)
    return found[0]["result"] if found else None


def continual_adapter_rows(result: dict) -> list[dict]:
    """One row per adapter mode of a per-domain adapters result: BWT (positive = forgetting), average perplexity
    after the last step and, for per-domain adapters, the router's measured accuracy on held-out windows."""
    selector = result.get("selector") or {}

    def fmt(value: Optional[float], signed: bool = False) -> str:
        return MISSING if value is None else (f"{value:+,.2f}" if signed else f"{value:,.2f}")

    def share(value: Optional[float]) -> str:
        return MISSING if value is None else f"{value:.0%}"

    rows = []
    for mode, figures in (result.get("modes") or {}).items():
        per_domain = mode == "per_domain"
        rows.append({"adapters": "one per domain, routed" if per_domain else "one shared adapter",
                     "BWT": fmt(figures.get("bwt"), signed=True), "average": fmt(figures.get("average")),
                     "router accuracy": share(selector.get("accuracy")) if per_domain else MISSING,
                     "prefix-loss accuracy": share(selector.get("prefix_accuracy")) if per_domain else MISSING})
    return rows


def continual_command(result: dict) -> str:
    """The `prunescope continual` command that re-runs this result and writes its masks and report."""
    spec = result["spec"]
    protocol = spec["protocol"]
    parts = ["prunescope continual", f"--model {spec['model']}", f"--domains {','.join(spec['domains'])}",
             f"--method {spec['method']}", f"--sparsity {float(spec['sparsity']):g}",
             f"--strategies {','.join(spec['strategies'])}", f"--nsamples {protocol['nsamples']}",
             f"--seqlen {protocol['seqlen']}", f"--eval-windows {protocol['eval_windows']}",
             f"--seed {protocol['seed']}"]
    if spec.get("structure", "unstructured") != "unstructured":
        parts.append(f"--structure {spec['structure']}")
    if spec.get("allocation", "uniform") != "uniform":
        parts.append(f"--allocation {spec['allocation']}")
    return " ".join(parts + ["--report", "--out continual-export"])
