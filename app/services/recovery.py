"""Recovery: the recovery job spec and its form, the setting to recover, the adapters in the store, and the
result's figures, tables, words, report and adapter download.

A recovery trains a small masked LoRA adapter on a pruned setting; merging it keeps every pruned weight at zero.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

from app.formats import MISSING, table_number
from app.services.allocation import sensitivity_for_allocation
from app.services.choices import DEFAULT_PROMPT
from app.services.corpora import corpus_label
from app.services.export import report_html, zip_folder
from app.services.forms import PageForm
from app.services.jobs import recent_results
from app.services.models import get_model, model_identity
from app.services.settings import protocol_of
from app.services.sweep import merged_sweeps
from pruning_core.analysis.recommend import recommend
from pruning_core.analysis.sweep_results import point_allocation
from pruning_core.errors import ConfigError
from pruning_core.recovery import figures
from pruning_core.recovery.catalog import list_adapters, perplexity_words
from pruning_core.recovery.export import recovery_report_data
from pruning_core.recovery.ranks import RANK_DESCRIPTIONS
from pruning_core.recovery.run import RecoverySpec
from pruning_core.recovery.sensitivity_costs import module_costs
from pruning_core.recovery.train import TrainConfig
from pruning_core.store import Store
from pruning_core.units import format_bytes

#: The Recovery page's rank allocations; "sensitivity" is offered only when the model has a usable stored map
#: (`recovery_rank_allocations`).
RECOVERY_RANK_ALLOCATIONS = ("uniform", "gradient", "sensitivity")
RANK_CHOICES = (1, 2, 4, 8, 16, 32)
SEQLEN_CHOICES = (32, 64, 128, 256, 512)
#: The fields of the pruned setting to recover (`recovery_source`), in the form and in a hand-off.
SOURCE_FIELDS = ("method", "structure", "sparsity", "propagation", "allocator")


def recovery_rank_descriptions() -> dict[str, str]:
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
    (the target, to the page's 1 % steps: a searched edge such as 27 % is handed over as measured), propagation
    and allocation ("uniform" when none)."""
    sparsity = float(point.get("target_sparsity") or point.get("sparsity") or 0.5)
    return {"method": point["method"], "structure": point.get("structure", "unstructured"),
            "sparsity": min(0.9, max(0.1, round(sparsity, 2))),
            "propagation": point.get("propagation") or "pruned", "allocator": point_allocation(point)}


def recommended_source(settings: dict, budget: float = 0.10, corpus: Optional[str] = None) -> Optional[dict]:
    """The Summary's recommended setting (highest measured sparsity within +`budget` perplexity on `corpus`,
    default the worst of every corpus the sweeps measured, as the Summary judges by default) as a Recovery
    source, or None when no sweep recommends one."""
    results = merged_sweeps(settings["model"])
    if not results or not results.get("points"):
        return None
    corpora = list((results.get("dense") or {}).get("ppl") or {})
    wanted = [corpus] if corpus else corpora
    if not wanted:
        return None
    best = recommend(results, wanted, budget)["best"]
    return recovery_source(best) if best else None


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


@dataclass
class RecoveryForm(PageForm):
    """The Recovery form: widgets "recovery_<field>"; `eval` and `train_corpus` start from the Setup settings
    (`first_values`)."""

    PREFIX: ClassVar[str] = "recovery_"
    method: str = "wanda"
    structure: str = "unstructured"
    sparsity: float = 0.5
    propagation: str = "pruned"
    allocator: str = "uniform"
    steps: int = TrainConfig.steps
    rank: int = 8
    rank_allocation: str = "uniform"
    minutes: int = 15
    batch: int = TrainConfig.batch_size
    seqlen: int = TrainConfig.seqlen
    prompt: str = DEFAULT_PROMPT
    schedule: str = ""
    eval: Optional[list] = None
    train_corpus: Optional[str] = None

    @classmethod
    def first_values(cls, settings: dict) -> dict:
        """{widget key: first value}, the corpora from the Setup settings."""
        return {**cls.widget_defaults(), **cls.widgets(eval=list(settings["eval_corpora"]),
                                                         train_corpus=settings["calib"])}

    def source(self) -> dict:
        """The pruned setting to recover, as `recovery_spec` reads it."""
        return {"method": self.method, "structure": self.structure, "sparsity": float(self.sparsity),
                "allocator": self.allocator, "propagation": self.propagation or "pruned"}

    def to_spec(self, settings: dict) -> dict:
        """The recovery job spec of these choices (`recovery_spec`)."""
        return recovery_spec(settings, self.source(), int(self.steps), int(self.rank), self.rank_allocation,
                             self.eval, float(self.minutes), self.train_corpus, int(self.batch), int(self.seqlen),
                             self.prompt.strip(), schedule=self.schedule)

    @classmethod
    def from_spec(cls, spec: Optional[dict]) -> dict:
        """The widget values that make a recovery job's spec (a page re-attaching to it shows how it was made)."""
        if not spec:
            return {}
        values = {name: spec[name] for name in SOURCE_FIELDS if spec.get(name) is not None}
        values["allocator"] = spec.get("allocator") or "uniform"
        train = spec.get("train") or {}
        for name, field_name in (("steps", "steps"), ("batch_size", "batch"), ("seqlen", "seqlen")):
            if train.get(name):
                values[field_name] = int(train[name])
        if train.get("max_seconds"):
            values["minutes"] = max(1, round(float(train["max_seconds"]) / 60))
        if int(spec.get("rank") or 0) in RANK_CHOICES:
            values["rank"] = int(spec["rank"])
        if spec.get("rank_allocation") in RECOVERY_RANK_ALLOCATIONS:
            values["rank_allocation"] = spec["rank_allocation"]
        values["schedule"] = ",".join(f"{float(s):g}" for s in spec.get("schedule") or ())
        if spec.get("eval_corpora"):
            values["eval"] = list(spec["eval_corpora"])
        if spec.get("train_corpus"):
            values["train_corpus"] = spec["train_corpus"]
        if isinstance(spec.get("prompt"), str) and spec["prompt"]:
            values["prompt"] = spec["prompt"]
        return cls.widgets(**values)


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
    return {"loss": figures.loss_figure(result), "perplexity": figures.perplexity_figure(result)}


def recovery_rows(result: dict) -> list[dict]:
    """The before/after table per corpus: dense, pruned, recovered (merged model) perplexity, the recovered
    model's change against dense and the share of the pruning gap won back."""
    rows = []
    for r in figures.before_after(result):
        rows.append({"corpus": r["corpus"], "dense": table_number(r["dense"]),
                     "pruned": table_number(r["pruned"]),
                     "after recovery": table_number(r["recovered"]),
                     "change vs dense": (MISSING if None in (r["recovered"], r["dense"]) else
                                         f"{100 * (r['recovered'] / r['dense'] - 1):+.1f} %"),
                     "gap won back": MISSING if r["share"] is None else f"{100 * r['share']:.0f} %"})
    return rows


def recovery_words(result: dict) -> dict:
    """{"sparsity", "adapter", "ranks", "steps" (optimizer steps run, every step-wise stage counted), "exact"
    (bool: the merged sparsity equals the pruned one and every pruned weight is still zero), "loss_rose" (a
    warning sentence when the training loss rose, else None)}: the facts of a recovery in the report's words."""
    sparsity = result.get("sparsity") or {}
    return {"sparsity": figures.sparsity_sentence(result), "adapter": figures.adapter_sentence(result),
            "ranks": figures.ranks_sentence(result.get("ranks") or {}), "steps": figures.total_steps(result),
            "exact": bool(sparsity.get("pruned_weights_zero")) and sparsity.get("before") == sparsity.get("merged"),
            "loss_rose": figures.loss_trend_sentence(result)}


def recovery_report_html(result: dict) -> str:
    """The report (HTML, self-contained) of a recovery result, with its Recovery section
    (`outputs.recovery_export.recovery_report_data`), as the export writes it."""
    return report_html(recovery_report_data(result))


def recovery_adapter_zip(result: dict) -> Optional[bytes]:
    """The adapter folder the job saved (PEFT files + ranks.json) as a zip, or None when it is not on disk."""
    folder = (result.get("adapter") or {}).get("folder")
    if not folder or not Path(folder).is_dir():
        return None
    return zip_folder(Path(folder), "adapter", recursive=False)
