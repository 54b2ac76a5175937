"""`prunescope export --allocation NAME` and `--plan FILE` on tiny-llama: the plan reaches the masks, the manifest
and the report; bad plan input is one clear sentence and exit status 2."""

from __future__ import annotations

import json

import pytest
import torch

from pruning_core.allocation.allocators import AllocationInputs, make_plan
from pruning_core.plan import SparsityPlan, module_sizes
from pruning_core.cli import EXIT_BAD_INPUT, main
from pruning_core.models import load_model
from pruning_core.mask_files import load_masks
from pruning_core.protocol import Protocol

PROTOCOL_ARGS = ["--model", "tiny-llama", "--calib", "news", "--eval", "news", "--nsamples", "4", "--seqlen", "32",
                 "--eval-windows", "2", "--batch-size", "4", "--no-heatmap", "--max-new-tokens", "2"]
PROTOCOL = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2, batch_size=4)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def export(out, *argv) -> int:
    return main(["export", *PROTOCOL_ARGS, *[str(a) for a in argv], "--out", str(out)])


def same_masks(a, b) -> bool:
    (masks_a, _), (masks_b, _) = load_masks(a), load_masks(b)
    return masks_a.keys() == masks_b.keys() and all(torch.equal(masks_a[k], masks_b[k]) for k in masks_a)


def _mixed_plan(tiny) -> SparsityPlan:
    kinds = tiny.adapter.module_kinds
    return SparsityPlan.from_layers(kinds, [0.3, 0.6], "owl", 0.45).edited(1, kinds[-1], 0.8)


def test_plan_file_is_exported_and_a_manifest_gives_back_the_same_masks(tiny, tmp_path, capsys):
    plan = _mixed_plan(tiny)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan.to_dict()))
    assert export(tmp_path / "a", "--method", "wanda", "--plan", path) == 0
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["plan"] == plan.to_dict() and manifest["plan_digest"] == plan.digest()
    assert manifest["allocator"] == "edited"
    assert manifest["target_sparsity"] == pytest.approx(plan.global_sparsity(module_sizes(tiny)), abs=1e-6)
    printed = capsys.readouterr().out
    assert f"plan by edited (digest {plan.digest()[:12]}): global sparsity {manifest['target_sparsity']:.4f} by " \
           "parameters" in printed
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["setting"]["plan_digest"] == plan.digest()
    assert "Allocator: edited (edited from owl)." in (tmp_path / "a" / "report.md").read_text()

    # The export's own manifest (and its report.json) is a plan file: the same masks, bit for bit.
    for source in ("manifest.json", "report.json"):
        out = tmp_path / f"from-{source}"
        assert export(out, "--method", "wanda", "--plan", tmp_path / "a" / source) == 0
        assert same_masks(out, tmp_path / "a")

    # A budget.json whose frontier carries its plan.
    budget = tmp_path / "budget.json"
    budget.write_text(json.dumps({"frontier": {"sparsity": 0.45, "plan": plan.to_dict()},
                                  "spec": {"method": "wanda", "allocation": "owl"}}))
    assert export(tmp_path / "b", "--method", "wanda", "--plan", budget) == 0
    assert same_masks(tmp_path / "b", tmp_path / "a")


def test_allocation_owl_makes_the_plan_from_the_dense_statistics(tiny, tmp_path):
    from pruning_core.statistics_cache import cached_statistics

    assert export(tmp_path / "o", "--method", "magnitude", "--allocation", "owl", "--sparsity", "0.6") == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    expected = make_plan("owl", AllocationInputs(tiny, statistics=cached_statistics(tiny, PROTOCOL, "act_sq")), 0.6)
    assert manifest["allocator"] == "owl" and manifest["plan"] == expected.to_dict()
    assert manifest["target_sparsity"] == pytest.approx(0.6, abs=1e-3)  # the global target, by parameters
    assert manifest["measured_sparsity"]["overall"] == pytest.approx(0.6, abs=0.01)
    report = (tmp_path / "o" / "report.md").read_text()
    assert "## Where the zeros are" in report and "Allocator: owl, with M = 5.0, lambda = 0.08." in report
    assert f"Global sparsity {100 * manifest['target_sparsity']:.2f} %" in report


def test_allocation_sensitivity_computes_the_map_like_the_sweep(tiny, tmp_path):
    from pruning_core.analysis.sensitivity import compute_sensitivity

    assert export(tmp_path / "s", "--method", "wanda", "--allocation", "sensitivity", "--sparsity", "0.6") == 0
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    # The sweep's map for a 60 % target: exact, at 50 % and 60 % (two sparsities give each module a marginal cost).
    sens = compute_sensitivity(tiny, PROTOCOL, "wanda", (0.5, 0.6), metrics=("exact",))
    expected = make_plan("sensitivity", AllocationInputs(tiny, sensitivity=sens), 0.6)
    assert manifest["allocator"] == "sensitivity" and manifest["plan"] == expected.to_dict()
    assert manifest["target_sparsity"] == pytest.approx(0.6, abs=1e-3)

    # The same map from a file (what `prunescope sensitivity` writes) gives the same plan.
    path = tmp_path / "sensitivity_all.json"
    path.write_text(json.dumps(sens))
    assert export(tmp_path / "f", "--method", "wanda", "--allocation", "sensitivity", "--sparsity", "0.6",
                  "--sensitivity", path) == 0
    assert json.loads((tmp_path / "f" / "manifest.json").read_text())["plan"] == expected.to_dict()


@pytest.mark.parametrize("argv,message", [
    (["--allocation", "owl", "--plan", "{plan}"], "not both"),
    (["--plan", "{plan}", "--sparsity", "0.5"], "leave out --sparsity"),
    (["--plan", "{missing}"], "Cannot read the plan file"),
    (["--plan", "{budget}"], "--allocation owl --sparsity 0.43 --method wanda"),
    (["--plan", "{uniform}"], "no plan table (its setting: uniform)"),
    (["--plan", "{bad}"], "'kinds' and 'values'"),
    (["--allocation", "evenly"], "Unknown allocation 'evenly'"),
    (["--allocation", "owl", "--structure", "2:4"], "2:4 fixes them"),
    (["--sensitivity", "{plan}"], "--sensitivity is read by --allocation sensitivity"),
    (["--plan", "{other}"], "this model has 2 layers"),
])
def test_bad_plan_input_is_one_clear_sentence(tiny, tmp_path, capsys, argv, message):
    files = {"plan": _mixed_plan(tiny).to_dict(), "budget": {"frontier": {"sparsity": 0.43, "ppl": 30.0},
                                                             "spec": {"method": "wanda", "allocation": "owl"}},
             "uniform": {"allocator": "uniform", "plan": None}, "bad": {"values": [[0.5]]},
             "other": SparsityPlan.uniform(3, tiny.adapter.module_kinds, 0.5).to_dict()}
    names = {"missing": str(tmp_path / "missing.json")}
    for name, document in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(document))
        names[name] = str(tmp_path / f"{name}.json")
    assert export(tmp_path / "out", *[a.format(**names) for a in argv]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "manifest.json").exists()
