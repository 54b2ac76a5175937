"""What-if: the what-if job spec and its form, text from a stored mask, and what a setting gains in words.

Sizes and speed are worded by `pruning_core.claims`, exactly as the Summary page and the report word them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from app.services.allocation import plan_origin
from app.services.choices import ALLOCATIONS, DEFAULT_PROMPT, METHODS, STRUCTURES
from app.services.forms import PageForm
from app.services.models import dense_file_size, model_identity
from app.services.settings import protocol_of
from pruning_core import claims
from pruning_core.analysis.whatif import WhatIfSpec
from pruning_core.sizes.records import SIZES_VERSION, sizes_from_record


def whatif_spec(settings: dict, method: str, structure: str, sparsity: float,
                layer_sparsity: Optional[dict] = None, prompt: str = "", max_new_tokens: int = 40,
                plan: Optional[dict] = None) -> dict:
    """A what-if job spec (`WhatIfSpec.to_dict()`, see `pruning_core.analysis.whatif.run_whatif`), validated.

    plan: a sparsity plan dict (an allocator's, as edited on the page) that decides every module's sparsity;
    `sparsity` is then the target it was made for."""
    layers = {int(k): float(v) for k, v in (layer_sparsity or {}).items() if v is not None} or None
    spec = WhatIfSpec(model=settings["model"], protocol=protocol_of(settings), method=method, structure=structure,
                      sparsity=float(sparsity), layer_sparsity=layers,
                      eval_corpora=tuple(settings["eval_corpora"]), prompt=prompt,
                      max_new_tokens=int(max_new_tokens), model_identity=model_identity(settings["model"]),
                      plan=plan)
    return spec.validate().to_dict()


def _slider_step(value) -> Optional[float]:
    """A stored sparsity as the form's slider holds it (5 % steps), or None outside the slider's range."""
    if isinstance(value, (int, float)) and 0.05 <= float(value) <= 0.95:
        return round(round(float(value) / 0.05) * 0.05, 2)
    return None


@dataclass
class WhatIfForm(PageForm):
    """The What-if form: widgets "whatif_<field>". `plan_seed` and `layer_seed` are not widgets: the plan the
    table starts from (the followed job's, dict form) and the per-layer sparsities of a job made before plans
    ({layer: sparsity})."""

    PREFIX: ClassVar[str] = "whatif_"
    method: str = "wanda"
    structure: str = "unstructured"
    sparsity: float = 0.5
    per_layer: bool = False
    start: str = "uniform"
    prompt: str = DEFAULT_PROMPT
    plan_seed: Optional[dict] = None
    layer_seed: dict = field(default_factory=dict)

    def to_spec(self, settings: dict, plan: Optional[dict] = None) -> dict:
        """The what-if job spec of these choices with the plan table's `plan` (an unedited uniform plan is a
        plain run at the slider's sparsity)."""
        plan = plan if plan and plan.get("allocator") != "uniform" else None
        return whatif_spec(settings, self.method, self.structure, self.sparsity, None, self.prompt.strip(), plan=plan)

    @classmethod
    def from_spec(cls, spec: Optional[dict]) -> dict:
        """The widget values that make a what-if job's spec (a page re-attaching to it shows how it was made)."""
        if not spec:
            return {}
        values = {}
        if spec.get("method") in METHODS:
            values["method"] = spec["method"]
        if spec.get("structure") in STRUCTURES:
            values["structure"] = spec["structure"]
        if _slider_step(spec.get("sparsity")) is not None:
            values["sparsity"] = _slider_step(spec["sparsity"])
        if isinstance(spec.get("prompt"), str) and spec["prompt"]:
            values["prompt"] = spec["prompt"]
        plan = spec.get("plan")
        if isinstance(plan, dict) and plan.get("values"):
            values["per_layer"] = True
            values["plan_seed"] = plan
            if plan_origin(plan) in ALLOCATIONS:
                values["start"] = plan_origin(plan)
            if _slider_step(plan.get("target")) is not None:
                values["sparsity"] = _slider_step(plan["target"])
        layers = spec.get("layer_sparsity") or {}
        if layers:
            values["per_layer"] = True
            values["layer_seed"] = {int(k): float(v) for k, v in layers.items()}
        return cls.widgets(**values)


def generation_spec(source: str, prompt: str, mask_artifact: str, weights_artifact: Optional[str] = None,
                    max_new_tokens: int = 40) -> dict:
    """The spec of the short job that generates greedy text from the dense model and from the model with a
    stored mask (and SparseGPT's stored weights) for `prompt` (`analysis.whatif.run_generation_job`, as the
    what-if job and the report generate): its result is {"prompt", "dense", "pruned"}."""
    return {"model": source, "prompt": prompt, "mask_artifact": mask_artifact, "weights_artifact": weights_artifact,
            "max_new_tokens": int(max_new_tokens)}


def setting_claims(sizes: Optional[dict], structure: str, fingerprint: Optional[str] = None) -> dict:
    """{"size": sentence or None, "speed": sentence, "rows": [{"label", "format", "bytes", "total_bytes", "files"}],
    "counts": the sizes record read today (weights kept and prunable) or None}: what the pages say about a
    setting's gains, worded by `pruning_core.claims` exactly as the report words it.

    sizes: any stored sizes record: one measured on its files, or an older one with counts and formula sizes,
    which reads with the dense model's measurement stored for `fingerprint` (its weights) when there is one."""
    dense = None
    if sizes and sizes.get("sizes_version") != SIZES_VERSION:
        dense = dense_file_size(fingerprint)
    fresh = sizes_from_record(sizes, structure, dense)
    out = claims.setting_claims(fresh, structure)
    out["rows"] = claims.size_rows(fresh)
    out["counts"] = fresh
    return out
