"""A YAML recipe that reproduces a PruneScope setting in llm-compressor (vllm-project/llm-compressor).

Schema (llm-compressor 0.14, `llmcompressor/modifiers/pruning/sparsegpt/sgpt_base.py`): a stage holds a
modifier group holding one modifier, ``SparseGPTModifier`` or ``WandaPruningModifier`` (both still exist
under these names), with

  * ``sparsity``: a float, or a list with one value per *target layer* (per-layer sparsities);
  * ``mask_structure``: ``"0:0"`` for unstructured, or ``"N:M"``;
  * ``targets``: the layers to walk, here the decoder layers by regex (``re:model.layers.\\d+$``);
    llm-compressor prunes every Linear inside a target layer;
  * ``ignore``: modules not to prune (``re:.*lm_head`` plus any module kinds PruneScope left dense);
  * SparseGPT only: ``block_size`` and ``dampening_frac`` (our ``percdamp``).

Sparsity plans (a sparsity per decoder layer x module kind). llm-compressor gives the i-th entry of a
``sparsity`` list to the i-th module its ``targets`` match, in ``model.named_modules()`` order, and prunes
every Linear inside that module (`SparsityModifierBase.on_calibration_start`). So:

  * a layer-wise plan (one value per layer, none 0) keeps the per-layer form above;
  * any other plan lists every pruned linear by its exact name in ``targets`` (model order) with its own
    value in ``sparsity``: per-module sparsities, reproduced exactly, with modules the plan leaves dense
    simply not listed (a regex ``ignore`` cannot reach them there: llm-compressor matches ``ignore``
    against the name plus a trailing dot when the target is the Linear itself);
  * N:M plans use the same module list with ``mask_structure`` N:M (dense modules unlisted).

Checked with llm-compressor 0.14.0.1's ``oneshot`` (peer environment, `../shared/tools/peer_venv.sh`) on
PruneScope's 2-layer tiny Llama, with recipes written by `write_recipe`: a Wanda plan with per-module values
and one module dense, a layer-wise SparseGPT plan and a 2:4 plan with a dense layer each left every module
within 0.7 percentage points of its planned sparsity (Wanda keeps whole weights per row) and the unlisted
modules dense.

Magnitude pruning maps to ``MagnitudePruningModifier`` (a scheduled modifier in llm-compressor: we emit
``init_sparsity = final_sparsity`` with start = end = 0, i.e. one shot), whose ``targets`` are weight
parameters. How this was validated: llm-compressor 0.14.0.1 would downgrade transformers (it pins
transformers<=5.17), so it is not a dependency; the recipes were parsed with its own
``Recipe.create_instance`` in a throwaway environment during development (see `validate_recipe`, which uses
it when importable and otherwise checks the documented schema above).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from pruning_core.errors import ConfigError
from pruning_core.models import LoadedModel

SUPPORTED_METHODS = {"sparsegpt": "SparseGPTModifier", "wanda": "WandaPruningModifier",
                     "magnitude": "MagnitudePruningModifier"}


def _layer_regex(layers_path: str) -> str:
    return "re:" + re.escape(layers_path).replace("\\.", "\\.") + r"\.\d+$"


def build_recipe(loaded: LoadedModel, config, stage: str = "sparsity_stage") -> dict:
    """The recipe as a dict for a `PruneConfig` on `loaded` (raises ConfigError for settings it cannot express)."""
    if config.method not in SUPPORTED_METHODS:
        raise ConfigError(f"llm-compressor has no modifier for method '{config.method}'; recipes exist for "
                          f"{', '.join(SUPPORTED_METHODS)}.")
    structure = config.structure_spec
    mask_structure = f"{structure.n}:{structure.m}" if structure.is_nm else "0:0"
    adapter = loaded.adapter
    layers = len(adapter.decoder_layers(loaded.model))
    kinds = adapter.module_kinds
    pruned_kinds = list(config.targets) if config.targets else kinds
    left_dense = [adapter.linears[k] for k in kinds if k not in pruned_kinds]
    ignore = ["re:.*lm_head"] + [f"re:.*{re.escape(path)}$" for path in left_dense]
    targets = [_layer_regex(adapter.layers_path)]
    plan = config.plan
    if plan is not None and not plan.is_uniform:
        targets, sparsity = _plan_targets(loaded, plan, pruned_kinds,
                                          structure.sparsity if structure.is_nm else None)
        if targets is None:  # layer-wise: one value per decoder layer
            targets = [_layer_regex(adapter.layers_path)]
    elif config.layer_sparsity:
        sparsity = [float(config.layer_sparsity.get(i, config.sparsity)) for i in range(layers)]
    else:
        sparsity = float(config.effective_sparsity)
    modifier_name = SUPPORTED_METHODS[config.method]
    if config.method == "magnitude":
        if config.layer_sparsity or (plan is not None and not plan.is_uniform):
            raise ConfigError("llm-compressor's MagnitudePruningModifier has no per-layer sparsity; use wanda or "
                              "sparsegpt for a per-layer recipe.")
        weight_targets = [f"re:{re.escape(adapter.layers_path)}\\.\\d+\\.{re.escape(adapter.linears[k])}\\.weight$"
                          for k in pruned_kinds]
        modifier = {"targets": weight_targets, "init_sparsity": sparsity, "final_sparsity": sparsity,
                    "start": 0, "end": 0,
                    "mask_structure": "unstructured" if not structure.is_nm else mask_structure}
    else:
        modifier = {"sparsity": sparsity, "mask_structure": mask_structure, "targets": targets, "ignore": ignore}
        if config.method == "sparsegpt":
            modifier.update({"block_size": int(config.blocksize), "dampening_frac": float(config.percdamp)})
    return {stage: {"sparsity_modifiers": {modifier_name: modifier}}}


def _plan_targets(loaded: LoadedModel, plan, pruned_kinds, nm_sparsity: float | None):
    """(targets, sparsity) of a non-uniform plan: (None, per-layer list) for a layer-wise plan with no
    dense layer, else (module names in model order, their values). For N:M (nm_sparsity = the structure's
    sparsity) the listed modules are pruned N:M, dense ones are left out, and sparsity is that float."""
    is_nm = nm_sparsity is not None
    adapter = loaded.adapter
    rows = [[plan.sparsity(layer, kind) for kind in pruned_kinds] for layer in range(plan.layers)]
    if not is_nm and all(len(set(row)) == 1 and row[0] > 0 for row in rows):
        return None, [float(row[0]) for row in rows]
    wanted = {adapter.qualified_name(layer, kind): plan.sparsity(layer, kind)
              for layer in range(plan.layers) for kind in pruned_kinds if plan.sparsity(layer, kind) > 0}
    names = [name for name, _ in loaded.model.named_modules() if name in wanted]  # llm-compressor's order
    if not names:
        raise ConfigError("The sparsity plan leaves every module dense; there is nothing for a recipe to prune.")
    if is_nm:
        return names, float(nm_sparsity)
    return names, [float(wanted[name]) for name in names]


def recipe_yaml(recipe: dict, header: str | None = None) -> str:
    """YAML text of a recipe, with an optional comment header."""
    text = yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    return text


def validate_recipe(recipe: dict) -> str:
    """Check a recipe; returns how: "llmcompressor" (its own loader) or "schema" (the documented schema).

    Raises ConfigError naming the problem.
    """
    try:
        from llmcompressor.recipe import (
            Recipe,  # optional; not a dependency (see module docstring)
        )
    except Exception:  # noqa: BLE001 - absent or broken optional library: fall back to the schema
        Recipe = None
    if Recipe is not None:
        try:
            Recipe.create_instance(recipe_yaml(recipe))
        except Exception as exc:
            raise ConfigError(f"llm-compressor rejected the recipe: {exc}") from exc
        return "llmcompressor"
    _check_schema(recipe)
    return "schema"


def _check_schema(recipe: dict) -> None:
    if not isinstance(recipe, dict) or len(recipe) != 1:
        raise ConfigError("A recipe must have exactly one stage.")
    (stage,) = recipe.values()
    if not isinstance(stage, dict) or not stage:
        raise ConfigError("A recipe stage must hold a modifier group.")
    for group in stage.values():
        for name, args in group.items():
            if name not in SUPPORTED_METHODS.values():
                raise ConfigError(f"Unknown modifier '{name}'.")
            if name == "MagnitudePruningModifier":
                for key in ("targets", "init_sparsity", "final_sparsity"):
                    if key not in args:
                        raise ConfigError(f"{name} needs '{key}'.")
                continue
            sparsity = args.get("sparsity")
            values = sparsity if isinstance(sparsity, list) else [sparsity]
            if not values or not all(isinstance(v, float) and 0.0 <= v < 1.0 for v in values):
                raise ConfigError(f"{name}.sparsity must be a fraction in [0, 1) or a list of them.")
            if not re.fullmatch(r"\d+:\d+", str(args.get("mask_structure", ""))):
                raise ConfigError(f"{name}.mask_structure must look like '0:0' or '2:4'.")
            if not isinstance(args.get("targets"), list) or not isinstance(args.get("ignore", []), list):
                raise ConfigError(f"{name}.targets and ignore must be lists.")
            named = [t for t in args["targets"] if not str(t).startswith("re:")]
            if isinstance(sparsity, list) and named and len(named) != len(sparsity):
                raise ConfigError(f"{name} lists {len(named)} target modules but {len(sparsity)} sparsities; "
                                  "give one per module.")


def write_recipe(loaded: LoadedModel, config, out_dir) -> tuple[Path, str]:
    """Write ``recipe.yaml`` into `out_dir`; returns (path, how it was validated)."""
    recipe = build_recipe(loaded, config)
    how = validate_recipe(recipe)
    header = (f"llm-compressor recipe reproducing PruneScope's {config.method} {config.structure} setting on "
              f"{loaded.name}.\nValidated with: {how}. Use: oneshot(model=..., dataset=..., recipe='recipe.yaml').")
    plan = config.plan
    if plan is not None and not plan.is_uniform:
        header += (f"\nSparsity plan by '{plan.allocator}' (digest {plan.digest()[:12]}), global sparsity "
                   f"{config.effective_sparsity:.4f} by parameters: the i-th sparsity value belongs to the i-th "
                   "target (per decoder layer, or per module by exact name); modules not listed stay dense.")
    path = Path(out_dir) / "recipe.yaml"
    path.write_text(recipe_yaml(recipe, header))
    return path, how
