"""Quantized points on tiny models: THE walk and THE evaluation, the compressed-tensors folder (bytes equal the
files on disk, packed integers equal ours, plain transformers reloads it to the same logits), the store, the
starting points (a mask, a structured folder, SparseGPT in the sweep), the CLI, the job kind, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from pruning_core.cli import EXIT_BAD_INPUT, main
from pruning_core.errors import ConfigError
from pruning_core.jobs.runner import JOB_KINDS, JobRunner
from pruning_core.masks import applied_masks
from pruning_core.models import load_model
from pruning_core.models.tiny import tiny_model
from pruning_core.protocol import Protocol, calibration_ids
from pruning_core.quantization import export
from pruning_core.quantization.model import parse_joint_pruning, quantize_model
from pruning_core.quantization.run import QuantizeSpec, point_summary, run_quantize, stored_quantized_points
from pruning_core.quantization.scheme import QuantScheme
from pruning_core.store import Store

PROTOCOL = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2, batch_size=4)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def state(model):
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


def test_quantize_model_leaves_the_model_as_it_was_and_gptq_beats_rtn_on_calibration_loss(tiny):
    before = state(tiny.model)
    calib = calibration_ids(tiny, PROTOCOL)
    results = {m: quantize_model(tiny, calib, QuantScheme(3, 32, method=m)) for m in ("rtn", "gptq")}
    assert all(torch.equal(before[k], v) for k, v in state(tiny.model).items())
    from pruning_core import metrics

    losses = {}
    for method, result in results.items():
        assert set(result.matrices) == set(tiny.adapter.prunable_modules(tiny.model))
        with applied_masks(tiny.model, result.masks, result.weights):
            losses[method] = metrics.perplexity(tiny, calib).ppl
    assert losses["gptq"] < losses["rtn"]


def test_point_writes_a_folder_whose_bytes_and_integers_are_measured_and_reloads_to_the_same_logits(tiny, tmp_path):
    store = Store(tmp_path / "s.sqlite")
    spec = QuantizeSpec(model="tiny-llama", protocol=PROTOCOL, bits=4, group_size=32, eval_corpora=("news",))
    record = run_quantize(spec, loaded=tiny, store=store, out_dir=tmp_path / "model")
    folder = tmp_path / "model"
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized" and config["quant_method"] == "compressed-tensors"
    assert "sparsity_config" not in config  # vLLM rejects one
    assert config["config_groups"]["group_0"]["weights"]["group_size"] == 32
    assert config["ignore"] == ["lm_head"]
    # Every byte count is the size of a file on disk.
    ct = record["bytes"]["compressed-tensors"]
    for entry in ct["files"]:
        assert (folder / entry["name"]).stat().st_size == entry["bytes"]
    assert ct["weight_bytes"] == sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert 0 < ct["weight_bytes"] < record["bytes"]["safetensors-16bit"]["weight_bytes"]
    assert record["checks"]["packed_weights"]["identical"]
    reload = record["checks"]["reload"]
    assert reload["loadable_with_transformers"] and reload["max_relative_gap"] < 0.005
    # Plain from_pretrained gives the in-memory quantized model's logits (other tensors are 16-bit in the file).
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    ids = calibration_ids(tiny, PROTOCOL)[:2]
    result = quantize_model(tiny, calibration_ids(tiny, PROTOCOL), spec.scheme())
    with torch.no_grad(), applied_masks(tiny.model, result.masks, result.weights):
        expected = tiny.model(input_ids=ids).logits
    got = reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-2 * float(expected.abs().max()))
    assert float((got.argmax(-1) == expected.argmax(-1)).float().mean()) > 0.98
    # Stored and resumable: the same point without a folder to write comes from the store.
    again = run_quantize(spec, loaded=tiny, store=store)
    assert again["from_store"] and again["ppl"] == record["ppl"]
    assert [p["ppl"] for p in stored_quantized_points(store)] == [record["ppl"]]
    summary = point_summary(record)
    assert summary["bytes"]["compressed-tensors"] == ct["weight_bytes"] and summary["bits"] == 4
    assert summary["ppl"] == record["ppl"] and summary["start"] == "dense"
    json.dumps(record)


def test_asymmetric_folder_is_checked_and_reloaded_with_load_time_dequantization(tiny, tmp_path):
    spec = QuantizeSpec(model="tiny-llama", protocol=PROTOCOL, method="rtn", bits=4, group_size=32, symmetric=False,
                        eval_corpora=("news",))
    record = run_quantize(spec, loaded=tiny, out_dir=tmp_path / "model")
    assert record["checks"]["packed_weights"]["identical"]
    reload = record["checks"]["reload"]
    assert reload["loadable_with_transformers"] is False and "#1618" in reload["note"]
    assert "dequantize=True" in reload["loaded_with"] and reload["max_relative_gap"] < 0.005


def test_a_mask_keeps_its_zeros_and_a_mask_of_another_model_is_refused(tiny, tmp_path):
    from pruning_core.mask_files import manifest_info_for, save_masks
    from pruning_core.prune import PruneConfig, prune_model

    pruned = prune_model(tiny, None, PruneConfig("magnitude", sparsity=0.5))
    save_masks(pruned.masks, tmp_path / "mask", manifest_info_for(tiny, pruned))
    spec = QuantizeSpec(model="tiny-llama", protocol=PROTOCOL, method="rtn", bits=4, group_size=32,
                        mask=str(tmp_path / "mask"), eval_corpora=("news",), verify=False)
    record = run_quantize(spec, loaded=tiny, out_dir=tmp_path / "model")
    assert record["sparsity"] == pytest.approx(0.5, abs=1e-3) and record["setting"]["start"] == "mask"
    result = quantize_model(tiny, None, spec.scheme(), keep=pruned.masks)
    for name, mask in pruned.masks.items():
        assert bool((result.weights[name][~mask] == 0).all())
    other = tiny_model("llama", seed=5)
    with pytest.raises(ConfigError, match=r"^This mask was made for model .*\.$"):
        run_quantize(spec, loaded=other)


def test_sparsegpt_in_the_sweep_prunes_and_quantizes_in_one_pass(tiny):
    joint = parse_joint_pruning("sparsegpt:0.5")
    result = quantize_model(tiny, calibration_ids(tiny, PROTOCOL), QuantScheme(4, 32), joint=joint)
    assert result.sparsity == pytest.approx(0.5, abs=1e-3)
    for name, mask in result.masks.items():
        assert bool((result.weights[name][~mask] == 0).all())
    nm = quantize_model(tiny, calibration_ids(tiny, PROTOCOL), QuantScheme(4, 32),
                        joint=parse_joint_pruning("sparsegpt:2:4"))
    keep = next(iter(nm.masks.values()))
    assert bool((keep.reshape(keep.shape[0], -1, 4).sum(-1) == 2).all())
    with pytest.raises(ConfigError, match="sparsegpt"):
        parse_joint_pruning("wanda:0.5")


CLI_ARGS = ["--model", "tiny-llama", "--calib", "news", "--eval", "news", "--nsamples", "4", "--seqlen", "32",
            "--eval-windows", "2", "--batch-size", "4", "--no-store"]


def test_cli_writes_quantize_json_and_the_folder_whole(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["quantize", *CLI_ARGS, "--method", "gptq", "--bits", "4", "--group-size", "32", "--out", str(out),
                 "--export", "compressed-tensors"]) == 0
    document = json.loads((out / "quantize.json").read_text())
    assert document["setting"]["bits"] == 4 and document["setting"]["group_size"] == 32
    assert document["setting"]["actorder"] == "static" and "static activation order" in document["setting"]["label"]
    assert set(document["bytes"]) == {"compressed-tensors", "safetensors-16bit"}
    assert document["protocol"]["nsamples"] == 4 and "news" in document["ppl"]
    assert (out / "model" / "config.json").is_file() and not list(tmp_path.glob(".out.partial-*"))
    assert "perplexity on news" in capsys.readouterr().out


def test_the_activation_order_is_part_of_the_stored_points_key_and_its_setting(tiny):
    from pruning_core.quantization.run import QUANTIZER_VERSION, point_key

    def spec(**kw):
        return QuantizeSpec(model="tiny-llama", protocol=PROTOCOL, bits=4, group_size=32, **kw).validate()

    assert QUANTIZER_VERSION >= 3  # points stored before static ordering became the default are measured again
    assert spec().scheme().actorder == "static" and spec(actorder="none").scheme().actorder == "none"
    assert point_key(tiny, spec()) != point_key(tiny, spec(actorder="none"))
    # Round to nearest has no column order, and pruning in the sweep keeps the natural one: one setting each.
    assert point_key(tiny, spec(method="rtn")) == point_key(tiny, spec(method="rtn", actorder="none"))
    assert spec(prune="sparsegpt:2:4").scheme().actorder == "none"
    assert point_key(tiny, spec(prune="sparsegpt:0.5")) == point_key(tiny, spec(prune="sparsegpt:0.5",
                                                                                actorder="none"))
    with pytest.raises(ConfigError, match="Activation order 'weight' is unknown"):
        spec(actorder="weight")


@pytest.mark.parametrize("units", ["channels", "layers"])
def test_cli_quantizes_a_structured_or_layer_dropped_folder(tmp_path, units):
    from pruning_core.structured import StructuredConfig, prune_structured
    from pruning_core.structured.units import layout_for
    from pruning_core.structured.slicing import save_structured

    dense = tiny_model("llama", layers=4)  # 4 layers: a quarter of them can be dropped
    result = prune_structured(dense, calibration_ids(dense, PROTOCOL),
                              StructuredConfig(units=(units,), score="magnitude", compensate=False, ratio=0.25))
    save_structured(result.loaded, layout_for(dense), tmp_path / "small")
    out = tmp_path / "out"
    assert main(["quantize", *CLI_ARGS, "--method", "gptq", "--bits", "8", "--group-size", "channel",
                 "--structured", str(tmp_path / "small"), "--out", str(out)]) == 0
    document = json.loads((out / "quantize.json").read_text())
    assert document["setting"]["start"] == "structured" and document["checks"]["reload"]["max_relative_gap"] < 0.005
    assert document["checks"]["packed_weights"]["identical"]
    config = json.loads((out / "model" / "config.json").read_text())
    if units == "layers":
        assert config["num_hidden_layers"] < 4
    else:
        assert config["intermediate_size"] < 128


@pytest.mark.parametrize("args, words", [
    (["--bits", "0"], "Bits 0 cannot be stored"),
    (["--bits", "17"], "Bits 17 cannot be stored"),
    (["--group-size", "48"], "Group size 48 does not divide the input width 64"),
    (["--group-size", "big"], "Group size 'big' is not understood"),
    (["--method", "rtn", "--prune", "sparsegpt:0.5"], "--prune prunes in GPTQ's sweep"),
    (["--prune", "wanda:0.5"], "names method 'wanda'"),
])
def test_bad_input_gets_one_sentence(tmp_path, capsys, args, words):
    assert main(["quantize", *CLI_ARGS, *args, "--out", str(tmp_path / "bad")]) == EXIT_BAD_INPUT
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0] and errors[0].endswith(".")
    assert not (tmp_path / "bad").exists()


def test_quantize_job_kind_runs_inline_and_is_stored(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path / "home"))
    assert "quantize" in JOB_KINDS
    runner = JobRunner()
    seen = []
    spec = QuantizeSpec(model="tiny-llama", protocol=PROTOCOL, method="rtn", bits=8, group_size=None,
                        eval_corpora=("news",), verify=False).to_dict()
    result = runner.run_inline("quantize", spec, lambda f, m: seen.append(f))
    assert seen[-1] == 1.0 and result["bytes"]["compressed-tensors"]["weight_bytes"] > 0
    assert runner.list_jobs()[0]["state"] == "done"
    assert len(stored_quantized_points(runner.store)) == 1


def test_export_names_every_unquantized_linear_in_ignore():
    config = export.quantization_config(QuantScheme(3, None, False), ["lm_head"])
    weights = config.config_groups["group_0"].weights
    assert weights.strategy == "channel" and weights.num_bits == 3 and not weights.symmetric
    assert config.ignore == ["lm_head"] and config.format == "pack-quantized"


def test_the_walk_quantizes_each_layer_with_gptq_on_its_own_propagated_inputs_and_the_evaluation_uses_them(tiny):
    """quantize_model's weights of layers 0 and 1 equal `gptq_group` run by hand on what enters those layers (layer
    1's inputs from the quantized layer 0, in fp32), and the evaluation's model holds those weights: the layer-walk
    plumbing (Hessian, stacking of q/k/v and gate/up, propagation, applied weights) adds nothing to GPTQ's math."""
    from pruning_core.methods import MethodOptions
    from pruning_core.models import weight_matrix
    from pruning_core.quantization.quantizer import gptq_group
    from pruning_core.stats import LayerStatistics
    from pruning_core.walk import LayerInputs, capture_layer_inputs, run_layer

    scheme = QuantScheme(4, 32, method="gptq")
    calib = calibration_ids(tiny, PROTOCOL)
    result = quantize_model(tiny, calib, scheme, batch_size=PROTOCOL.batch_size)
    layers = tiny.adapter.decoder_layers(tiny.model)
    inputs = capture_layer_inputs(tiny, calib, PROTOCOL.batch_size)
    names = list(result.weights)
    with applied_masks(tiny.model, result.masks, result.weights):
        applied = {n: tiny.model.get_submodule(n).weight.detach().clone() for n in names}
    for index in range(2):
        linears = tiny.adapter.layer_linears(layers[index])
        stats = LayerStatistics(linears, "hessian")
        with stats.hooks():
            run_layer(layers[index], inputs, after_batch=stats.flush)
        by_input: dict[int, list[str]] = {}
        for kind in linears:
            by_input.setdefault(id(stats.by_kind[kind]), []).append(kind)
        assert any(len(kinds) > 1 for kinds in by_input.values())  # q/k/v (and gate/up) share one sweep
        for kinds in by_input.values():
            sources = [weight_matrix(linears[k]).detach().to(torch.float32).clone() for k in kinds]
            by_hand = gptq_group(sources, stats.by_kind[kinds[0]], scheme, MethodOptions())
            for kind, (_, matrix) in zip(kinds, by_hand):
                name = tiny.adapter.qualified_name(index, kind)
                assert torch.equal(result.matrices[name].ints, matrix.ints), name
                assert torch.equal(applied[name], result.weights[name]), name
        own = [tiny.adapter.qualified_name(index, kind) for kind in linears]
        with applied_masks(tiny.model, {n: result.masks[n] for n in own}, result.weights):  # layer 1 reads these
            inputs = LayerInputs(run_layer(layers[index], inputs), inputs.kwargs)
