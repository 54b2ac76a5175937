"""Evaluate an in-memory (dense or pruned) model with EleutherAI's lm-evaluation-harness.

`evaluate_lm_eval(loaded, tasks, limit)` wraps the model as ``HFLM(pretrained=model, tokenizer=tok)`` and
calls ``lm_eval.simple_evaluate``. Two local tasks work offline, built from the embedded corpora's evaluation
splits (written as jsonl + task YAML into a temporary folder, ``dataset_path: json`` with local
``data_files``, loaded through ``TaskManager(include_path=...)`` with the network switched off):

  * ``prunescope_wiki_rolling``: document-level rolling log-likelihood over the wiki evaluation articles;
    metrics word_perplexity (per whitespace word), byte_perplexity (per UTF-8 byte), bits_per_byte. These are
    NOT the token-level perplexity of `metrics.perplexity` (units differ; lower is better for all three).
  * ``prunescope_news_ending``: multiple choice: given a news article without its last sentence, pick the
    true final sentence among it and 3 distractors (final sentences of other articles, drawn with a fixed
    seed); metrics acc and acc_norm (fraction correct; chance = 0.25).

Any other task name is passed to lm-eval as is (standard tasks such as arc_easy need the network).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from pruning_core.errors import ConfigError, PruneScopeError
from pruning_core.masks import applied_masks

WIKI_ROLLING = "prunescope_wiki_rolling"
NEWS_ENDING = "prunescope_news_ending"
LOCAL_TASKS = (WIKI_ROLLING, NEWS_ENDING)
DISTRACTORS = 3
SEED = 1234

METRIC_UNITS = {
    "word_perplexity": "perplexity per word (lower is better)",
    "byte_perplexity": "perplexity per UTF-8 byte (lower is better)",
    "bits_per_byte": "bits per UTF-8 byte (lower is better)",
    "acc": "fraction correct (higher is better)",
    "acc_norm": "fraction correct, length-normalised (higher is better)",
}

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def parse_tasks(text: str) -> list[str]:
    """Comma list of task names; "local" expands to the two offline tasks."""
    tasks: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        tasks.extend(LOCAL_TASKS if part == "local" else [part])
    if not tasks:
        raise ConfigError("No lm-eval task given; use 'local' or task names such as arc_easy.")
    return list(dict.fromkeys(tasks))


def _documents(corpus: str) -> list[str]:
    from pruning_core import data

    try:
        return list(data._load_split(corpus, "evaluation", None).documents)
    except AttributeError:  # fall back to the joined text
        return [d for d in data.load_corpus_text(corpus, "evaluation").split("\n\n") if d.strip()]


def news_ending_docs(seed: int = SEED) -> list[dict]:
    """The multiple-choice documents: {"context", "choices" (4 sentences), "label" (index of the true one)}."""
    articles = [_SENTENCE_END.split(doc.strip()) for doc in _documents("news")]
    articles = [a for a in articles if len(a) >= 3]
    endings = [a[-1].strip() for a in articles]
    rng = random.Random(seed)
    docs = []
    for i, sentences in enumerate(articles):
        others = [j for j in range(len(articles)) if j != i and endings[j] != endings[i]]
        distractors = [endings[j] for j in rng.sample(others, DISTRACTORS)]
        choices = [endings[i], *distractors]
        order = list(range(len(choices)))
        rng.shuffle(order)
        docs.append({"context": " ".join(s.strip() for s in sentences[:-1]),
                     "choices": [choices[k] for k in order], "label": order.index(0)})
    return docs


def wiki_rolling_docs() -> list[dict]:
    """The rolling log-likelihood documents: {"text"} per wiki evaluation article."""
    return [{"text": doc} for doc in _documents("wiki")]


def _task_yaml(name: str, data_file: Path) -> str:
    common = (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data_file))}\n"
              "test_split: test\n")
    if name == WIKI_ROLLING:
        return common + ('output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
                         "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n"
                         "  - metric: bits_per_byte\nmetadata:\n  version: 1.0\n")
    return common + ('output_type: multiple_choice\ndoc_to_text: "{{context}}"\ndoc_to_choice: choices\n'
                     "doc_to_target: label\nmetric_list:\n  - metric: acc\n    aggregation: mean\n"
                     "    higher_is_better: true\n  - metric: acc_norm\n    aggregation: mean\n"
                     "    higher_is_better: true\nmetadata:\n  version: 1.0\n")


def write_local_tasks(folder: Path, tasks: Sequence[str]) -> None:
    """Write jsonl data and a task YAML for each requested local task into `folder`."""
    builders = {WIKI_ROLLING: wiki_rolling_docs, NEWS_ENDING: news_ending_docs}
    for name in tasks:
        if name not in builders:
            continue
        data_file = folder / f"{name}.jsonl"
        data_file.write_text("".join(json.dumps(doc) + "\n" for doc in builders[name]()))
        (folder / f"{name}.yaml").write_text(_task_yaml(name, data_file))


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    keys = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def evaluate_lm_eval(loaded, tasks: Sequence[str], limit: int | None = None, masks: Mapping | None = None,
                     weights: Mapping | None = None, batch_size: int = 4) -> dict:
    """Run lm-eval tasks on the model as it is (or with `masks`/`weights` applied, restored afterwards).

    tasks: names (see `LOCAL_TASKS`; others go to lm-eval as standard tasks, which need the network).
    limit: documents per task (None = all). Returns {"tasks", "limit", "rows": [{task, metric, value, stderr,
    unit}], "raw": lm-eval's results dict}. Local-only task lists run with the HF hub and datasets offline.
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise PruneScopeError("lm-eval is not installed; run `pip install lm-eval`.") from exc
    tasks = list(tasks)
    if not tasks:
        raise ConfigError("No lm-eval task given; use 'local' or task names such as arc_easy.")
    if limit is not None and limit < 1:
        raise ConfigError("The lm-eval limit must be a positive number of documents.")
    local = [t for t in tasks if t in LOCAL_TASKS]
    standard = [t for t in tasks if t not in LOCAL_TASKS]
    with tempfile.TemporaryDirectory(prefix="prunescope-lmeval-") as folder:
        write_local_tasks(Path(folder), local)
        offline = _offline() if not standard else contextlib.nullcontext()
        mask_context = applied_masks(loaded.model, masks, weights) if masks is not None else contextlib.nullcontext()
        with offline, mask_context:
            try:
                manager = TaskManager(include_path=folder, include_defaults=bool(standard))
                lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size)
                out = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=manager,
                                              log_samples=False, bootstrap_iters=0, verbosity="ERROR")
            except (KeyError, ValueError, FileNotFoundError, ConnectionError, OSError) as exc:
                raise PruneScopeError(f"lm-eval could not run tasks {', '.join(tasks)}: {str(exc).splitlines()[0]}. "
                                      "Offline, use the local tasks ('local').") from exc
    return {"tasks": tasks, "limit": limit, "rows": result_rows(out["results"]), "raw": _jsonable(out["results"])}


def result_rows(results: Mapping[str, Mapping]) -> list[dict]:
    """Flatten lm-eval's ``results[task]["metric,filter"]`` into rows with units."""
    rows = []
    for task, metrics in results.items():
        for key, value in metrics.items():
            if "," not in key or key.startswith(("alias",)) or "_stderr" in key:
                continue
            metric = key.split(",")[0]
            stderr = metrics.get(key.replace(metric, metric + "_stderr", 1))
            rows.append({"task": task, "metric": metric, "value": _float(value), "stderr": _float(stderr),
                         "unit": METRIC_UNITS.get(metric, "")})
    return rows


def compare_rows(dense: dict, pruned: dict) -> list[dict]:
    """Join dense and pruned results: [{task, metric, unit, dense, pruned, limit}] for the report."""
    pruned_by = {(r["task"], r["metric"]): r["value"] for r in pruned["rows"]}
    return [{"task": r["task"], "metric": r["metric"], "unit": r["unit"], "dense": r["value"],
             "pruned": pruned_by.get((r["task"], r["metric"])),
             "limit": dense.get("limit") if dense.get("limit") is not None else "all"} for r in dense["rows"]]


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str).replace("NaN", "null").replace("Infinity", "null"))
