"""One evaluation path: `evaluate.evaluate_setting` measures dense and pruned perplexity for every feature.

Checks what it returns (per corpus, windows, protocol, timings), that the dense measurement is stored and
reused across sweep, what-if and export, and that sweep, what-if, export, its curve points and apply-mask all
go through it (a copy of the perplexity loop coming back fails `test_only_evaluate_calls_perplexity`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from pruning_core import evaluate, metrics
from pruning_core.analysis.sensitivity import SensitivitySpec
from pruning_core.analysis.sweep import SweepSpec, run_sweep
from pruning_core.analysis.whatif import WhatIfSpec, run_whatif
from pruning_core.errors import ConfigError
from pruning_core.store import Store
from pruning_core.methods import METHODS, covers, strongest_need
from pruning_core.models import load_model
from pruning_core.export.pipeline import ExportOptions, run_apply_mask, run_export
from pruning_core.protocol import Protocol
from pruning_core.prune import PruneConfig, prune_model

PACKAGE = Path(__file__).resolve().parents[3] / "pruning_core"
PROTOCOL = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=3, batch_size=4)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


@pytest.fixture
def counted(monkeypatch):
    """Count calls of `evaluate.evaluate_setting` (the callers must reach it through the module)."""
    calls = []
    real = evaluate.evaluate_setting

    def wrapper(*args, **kwargs):
        calls.append(kwargs.get("label", "pruned"))
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_setting", wrapper)
    return calls


def _perplexity_calls(path: Path) -> list[int]:
    """Line numbers of calls `perplexity(...)` / `x.perplexity(...)` in a source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name == "perplexity":
                lines.append(node.lineno)
    return lines


def test_only_evaluate_calls_perplexity():
    offenders = {str(p.relative_to(PACKAGE)): _perplexity_calls(p) for p in PACKAGE.rglob("*.py")
                 if p.name != "evaluate.py"}
    offenders = {name: lines for name, lines in offenders.items() if lines}
    assert not offenders, f"perplexity() is called outside pruning_core/evaluate.py: {offenders}"
    assert _perplexity_calls(PACKAGE / "evaluate.py"), "evaluate.py no longer measures perplexity"


def test_evaluate_setting_dense_and_pruned_per_corpus(tiny):
    before = {n: p.detach().clone() for n, p in tiny.model.named_parameters()}
    pruned = prune_model(tiny, None, PruneConfig("magnitude", "unstructured", 0.5))
    messages = []
    result = evaluate.evaluate_setting(tiny, PROTOCOL, ["news", "wiki"], pruned,
                                       progress=lambda f, m: messages.append((f, m)))
    assert list(result.dense_ppl) == ["news", "wiki"] and list(result.pruned_ppl) == ["news", "wiki"]
    for corpus in ("news", "wiki"):
        assert result.windows[corpus] == 3
        assert result.pruned_ppl[corpus] > result.dense_ppl[corpus] > 1.0
        assert result.change(corpus) == pytest.approx(result.pruned_ppl[corpus] / result.dense_ppl[corpus] - 1)
        assert result.dense_seconds[corpus] > 0 and result.pruned_seconds[corpus] > 0
    assert result.protocol["eval_windows_used"] == {"news": 3, "wiki": 3}
    assert result.protocol["seqlen"] == 32 and result.protocol["eval_corpora"] == ["news", "wiki"]
    # Progress says what is evaluated, and only moves forward.
    assert any(m == "dense perplexity on wiki, window 3/3" for _, m in messages), messages
    assert messages[0] == (0.0, "dense perplexity on news: 3 windows of 32 tokens")  # named before the 1st batch
    assert any(m.startswith("pruned perplexity on news, window") for _, m in messages)
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    # The model is left as it was, and the numbers are those of the primitive.
    for name, p in tiny.model.named_parameters():
        assert torch.equal(p, before[name]), name
    ids = evaluate.evaluation_windows(tiny, PROTOCOL, ["news"])["news"]
    assert result.dense_ppl["news"] == metrics.perplexity(tiny, ids).ppl
    with pruned.applied(tiny):
        assert result.pruned_ppl["news"] == metrics.perplexity(tiny, ids).ppl


def test_dense_is_stored_once_and_reused(tiny, tmp_path, monkeypatch):
    store = Store(tmp_path / "store.sqlite")
    first = evaluate.evaluate_setting(tiny, PROTOCOL, ["news"], store=store)
    assert first.dense_cached == [] and not first.pruned_ppl
    measured = []
    real = metrics.perplexity
    monkeypatch.setattr(metrics, "perplexity", lambda *a, **k: measured.append(1) or real(*a, **k))
    again = evaluate.evaluate_setting(tiny, PROTOCOL, ["news"], store=store)
    assert again.dense_cached == ["news"] and again.dense_ppl == first.dense_ppl and not measured
    # Another evaluation setting is another measurement.
    evaluate.evaluate_setting(tiny, Protocol(**{**PROTOCOL.to_dict(), "eval_windows": 2}), ["news"], store=store)
    assert measured == [1]


def test_in_place_model_is_not_measured_as_dense(tiny):
    with pytest.raises(ConfigError, match="Unknown pruned setting"):
        evaluate.evaluate_setting(tiny, PROTOCOL, ["news"], "nonsense")
    result = evaluate.evaluate_setting(tiny, PROTOCOL, ["news"], evaluate.IN_PLACE)
    assert result.dense_ppl == {} and set(result.pruned_ppl) == {"news"}


def test_every_feature_evaluates_through_evaluate_setting(tiny, tmp_path, counted):
    store = Store(tmp_path / "store.sqlite")
    sweep = run_sweep(SweepSpec(model="tiny-llama", methods=("magnitude",), sparsities=(0.3, 0.5),
                                eval_corpora=("news",), protocol=PROTOCOL), loaded=tiny, store=store)
    assert len(counted) == 3 and len(sweep["points"]) == 2  # dense + one per point
    assert set(sweep["dense"]["ppl"]) == {"news"}

    counted.clear()
    whatif = run_whatif(WhatIfSpec(model="tiny-llama", protocol=PROTOCOL, method="magnitude", sparsity=0.5,
                                   eval_corpora=("news",), max_new_tokens=2), loaded=tiny, store=store)
    assert len(counted) == 1
    assert whatif["evaluation"]["dense_cached"] == ["news"]  # measured by the sweep, reused here
    assert whatif["dense_ppl"] == sweep["dense"]["ppl"]
    assert whatif["ppl"]["news"] == pytest.approx(sweep["points"][1]["ppl"]["news"], rel=1e-9)

    counted.clear()
    out = run_export(tiny, PROTOCOL, ExportOptions(method="magnitude", sparsity=0.5, eval_corpora=("news",),
                                                   curve_sparsities=(0.3,), heatmap=False, prompts=(),
                                                   formats=("json",)), tmp_path / "export", store=store)
    assert counted == ["pruned", "curve point 30%"]
    report = out["report"]
    assert report["evaluation"]["dense_cached"] == ["news"]
    assert report["ppl"]["pruned"] == whatif["ppl"]
    assert report["setting"]["propagation"] == "pruned" and "already-pruned" in report["setting"]["propagation_note"]

    counted.clear()
    summary = run_apply_mask(load_model("tiny-llama"), tmp_path / "export", eval_corpora=("news",))
    assert len(counted) == 1
    assert summary["ppl"]["news"] == pytest.approx(whatif["ppl"]["news"], rel=1e-6)


def test_export_takes_a_stored_whatif_mask(tiny, tmp_path):
    """A What-if mask with per-layer settings and SparseGPT's weights exports as it was made, unpruned again."""
    store = Store(tmp_path / "store.sqlite")
    whatif = run_whatif(WhatIfSpec(model="tiny-llama", protocol=PROTOCOL, method="sparsegpt", sparsity=0.5,
                                   layer_sparsity={0: 0.3}, eval_corpora=("news",), max_new_tokens=1),
                        loaded=tiny, store=store)
    assert whatif["mask_artifact"] and whatif["weights_artifact"]
    config = whatif["config"]
    options = ExportOptions(method=config["method"], structure=config["structure"], sparsity=config["sparsity"],
                            layer_sparsity={str(k): v for k, v in config["layer_sparsity"].items()},
                            mask_artifact=whatif["mask_artifact"], weights_artifact=whatif["weights_artifact"],
                            eval_corpora=("news",), heatmap=False, prompts=(), formats=("json",))
    out = run_export(tiny, PROTOCOL, options, tmp_path / "export", store=store)
    report = out["report"]
    assert report["ppl"]["pruned"] == whatif["ppl"]  # the same masks and weights, the same evaluation
    assert report["setting"]["measured_sparsity"] == pytest.approx(whatif["sparsity"])
    assert report["setting"]["mask_source"].startswith("stored What-if mask")
    assert report["setting"]["layer_sparsity"] == {0: 0.3}
    stored = store.load_tensors(whatif["mask_artifact"])
    from pruning_core.mask_files import load_masks

    masks, _ = load_masks(tmp_path / "export")
    assert all(torch.equal(masks[name], stored[name]) for name in stored)
    with pytest.raises(ConfigError, match="store"):
        run_export(tiny, PROTOCOL, options, tmp_path / "again")
    with pytest.raises(ConfigError, match="updated weights"):
        run_export(tiny, PROTOCOL, ExportOptions(method="sparsegpt", mask_artifact=whatif["mask_artifact"],
                                                 eval_corpora=("news",), heatmap=False, prompts=()),
                   tmp_path / "third", store=store)


def test_prune_config_resolves_method_and_structure_once():
    config = PruneConfig(" Wanda ", "2:4")
    assert config.method == "wanda" and config.method_spec is METHODS["wanda"]
    assert config.structure_spec.is_nm and config.effective_sparsity == 0.5
    assert "method_spec" not in config.to_dict()
    with pytest.raises(ConfigError, match="Unknown method 'obs'"):
        PruneConfig("obs")
    assert strongest_need([]) == "none"
    assert strongest_need(m.needs for m in METHODS.values()) == "hessian"
    assert covers("hessian", "act_sq") and not covers("act_sq", "hessian")


def test_typed_job_specs_round_trip_and_validate():
    whatif = WhatIfSpec(model="tiny-llama", protocol=PROTOCOL, layer_sparsity={1: 0.4}, eval_corpora=("news",))
    assert WhatIfSpec.from_dict(whatif.to_dict()) == whatif
    assert whatif.to_dict()["layer_sparsity"] == {"1": 0.4}
    with pytest.raises(ConfigError, match="Per-layer sparsities"):
        WhatIfSpec(structure="2:4", layer_sparsity={0: 0.3}).validate()
    with pytest.raises(ConfigError, match="Unknown what-if settings"):
        WhatIfSpec.from_dict({"model": "x", "sparsty": 0.5})
    sens = SensitivitySpec(model="tiny-llama", protocol=PROTOCOL, sparsities=(0.7, 0.3), metrics=("reconstruction",))
    assert SensitivitySpec.from_dict(sens.to_dict()) == sens
    assert sens.to_dict()["sparsities"] == [0.7, 0.3]  # order kept: the first map is the CLI's main file
    assert "layers" not in sens.to_dict() and "dtype" not in sens.to_dict()
    for bad in ({"sparsities": (1.5,)}, {"metrics": ("nope",)}, {"probe_windows": 0}, {"method": "obs"},
                {"dtype": "int8"}):
        with pytest.raises(ConfigError):
            SensitivitySpec(**{**sens.__dict__, **bad}).validate()
    with pytest.raises(ConfigError, match="lacks 'sparsities'"):
        SensitivitySpec.from_dict({"model": "x", "protocol": {}, "method": "wanda"})


def test_export_in_the_sweeps_propagation_reproduces_its_point(tiny, tmp_path):
    """'19.81 on Curves vs 19.76 on Export': the same method and sparsity differ only by propagation; export in
    the sweep's propagation and the number is the sweep's."""
    sweep = run_sweep(SweepSpec(model="tiny-llama", methods=("wanda",), sparsities=(0.5,), eval_corpora=("news",),
                                propagation="dense", protocol=PROTOCOL), loaded=tiny)
    curve = sweep["points"][0]["ppl"]["news"]
    common = dict(method="wanda", sparsity=0.5, eval_corpora=("news",), heatmap=False, prompts=(), formats=("json",))
    dense = run_export(tiny, PROTOCOL, ExportOptions(propagation="dense", **common), tmp_path / "d")["report"]
    pruned = run_export(tiny, PROTOCOL, ExportOptions(propagation="pruned", **common), tmp_path / "p")["report"]
    assert dense["ppl"]["pruned"]["news"] == pytest.approx(curve, rel=1e-9)
    assert pruned["ppl"]["pruned"]["news"] != pytest.approx(curve, rel=1e-9)
    assert "dense propagation" in dense["setting"]["propagation_note"]


def test_paired_comparison_is_the_perplexity_ratio_with_its_uncertainty(tiny):
    ids = torch.randint(0, 300, (6, 32), generator=torch.Generator().manual_seed(5))
    same = evaluate.paired_comparison(tiny, tiny, ids)
    assert same["windows"] == 6 and same["nll_difference"] == 0.0 and same["ppl_ratio"] == 1.0
    pruned = prune_model(tiny, ids, PruneConfig("magnitude", sparsity=0.9), batch_size=4)
    with pruned.applied(tiny):
        after = metrics.perplexity(tiny, ids).ppl
        found = evaluate.paired_comparison(tiny, tiny, ids)  # the same model twice, now pruned: still no difference
        assert found["nll_difference"] == 0.0
    before = metrics.perplexity(tiny, ids).ppl
    dense_copy = load_model("tiny-llama")
    with pruned.applied(dense_copy):
        found = evaluate.paired_comparison(tiny, dense_copy, ids)
    assert found["ppl_ratio"] == pytest.approx(after / before, rel=1e-6)  # equal windows: exp(mean diff) = ratio
    assert found["standard_error"] > 0 and found["ppl_ratio_95"][0] < found["ppl_ratio"] < found["ppl_ratio_95"][1]
    assert found["z"] == pytest.approx(found["nll_difference"] / found["standard_error"])


def test_head_loss_is_the_same_with_and_without_gradients():
    """The head's buffered no-grad path and the differentiable path (adapter training) give the same NLL."""
    from pruning_core.metrics import nll_from_hidden

    g = torch.Generator().manual_seed(4)
    head = torch.nn.Linear(16, 300, bias=True)
    hidden = torch.randn(3, 40, 16, generator=g)
    ids = torch.randint(0, 300, (3, 40), generator=g)
    with torch.no_grad():
        buffered = nll_from_hidden(hidden, ids, head)
    trained = nll_from_hidden(hidden.requires_grad_(), ids, head)
    trained.sum().backward()
    assert head.weight.grad is not None and hidden.grad is not None
    expected = torch.nn.functional.cross_entropy(head(hidden[:, :-1]).reshape(-1, 300), ids[:, 1:].reshape(-1),
                                                 reduction="none").reshape(3, 39).sum(dim=1)
    torch.testing.assert_close(buffered, expected)
    torch.testing.assert_close(trained.detach(), expected)
