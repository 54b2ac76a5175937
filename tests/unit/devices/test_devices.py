"""`--device` and layer-by-layer offload, tested on the CPU: the offload moves each decoder layer to the compute
device and back even when both are the CPU, so its logic (what moves, when, and that the numbers do not change)
runs everywhere; the CUDA comparisons run where torch sees a GPU."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from pruning_core.cli.common import device_from_args, offload_from_args
from pruning_core.cli.main import main
from pruning_core.errors import ConfigError
from pruning_core.evaluate import bf16_agreement, dense_key, evaluate_setting
from pruning_core.devices.placement import (LayerOffload, default_dtype, move_tensors, offload_for, resolve_device,
                                             windows_that_fit)
from pruning_core.metrics import perplexity
from pruning_core.models.tiny import tiny_model
from pruning_core.protocol import Protocol
from pruning_core.prune import PruneConfig, prune_model
from pruning_core.walk import capture_layer_inputs, walk_layers

CPU = torch.device("cpu")
HAS_CUDA = torch.cuda.is_available()
NO_GPU_SENTENCE = ("--device cuda needs a CUDA GPU, and torch sees none on this machine "
                   "(torch.cuda.is_available() is False); use --device cpu or auto.")


def windows(n=8, seqlen=32, vocab=300, seed=0):
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", layers=2)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------ resolve_device

def test_auto_and_cpu_resolve():
    assert resolve_device("cpu") == CPU
    assert resolve_device(" CPU ") == CPU
    assert resolve_device("auto") == (torch.device("cuda", 0) if HAS_CUDA else CPU)


@pytest.mark.skipif(HAS_CUDA, reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_is_one_clear_sentence(name):
    with pytest.raises(ConfigError) as info:
        resolve_device(name)
    assert str(info.value) == NO_GPU_SENTENCE.replace("--device cuda", f"--device {name}")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda:-1", "cuda0", "", "mps:0"])
def test_unknown_device_names_are_refused(name):
    with pytest.raises(ConfigError, match="is unknown; use auto, cpu, cuda or cuda:N"):
        resolve_device(name)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_a_gpu_index_this_machine_lacks_is_refused():
    count = torch.cuda.device_count()
    with pytest.raises(ConfigError, match=f"names GPU {count}, but this machine has {count}"):
        resolve_device(f"cuda:{count}")
    assert resolve_device("cuda") == torch.device("cuda", 0)


def test_dtype_policy_and_offload_for():
    assert default_dtype(CPU) == "float32"
    assert default_dtype(torch.device("cuda", 0)) == "bfloat16"  # a device object needs no GPU to exist
    assert offload_for(CPU) is None
    offload = offload_for(torch.device("cuda", 1))
    assert (offload.compute, offload.home) == (torch.device("cuda", 1), CPU)


# ------------------------------------------------------------------------------------------ the CLI

@pytest.mark.skipif(HAS_CUDA, reason="checks the message of a machine without CUDA")
def test_cli_cuda_without_a_gpu_prints_the_sentence_and_exits_non_zero(tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["export", "--model", "tiny-llama", "--device", "cuda", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err == f"error: {NO_GPU_SENTENCE}"
    assert not out.exists()  # refused before anything was written or loaded


def test_cli_device_arguments():
    export = argparse.Namespace(command="export", device="cpu")
    assert device_from_args(export) == CPU and offload_from_args(export) is None
    assert device_from_args(argparse.Namespace(command="sweep", device="cpu")) == CPU
    # A command that computes on the CPU only: auto means the CPU there, an explicit GPU is refused.
    assert device_from_args(argparse.Namespace(command="sensitivity", device="auto")) == CPU
    with pytest.raises(ConfigError):
        device_from_args(argparse.Namespace(command="sensitivity", device="cuda"))


# ------------------------------------------------------------------------------------------ LayerOffload

def test_move_tensors_reaches_nested_kwargs():
    cos, sin = torch.ones(2), torch.zeros(2)
    kwargs = {"position_embeddings": (cos, sin), "attention_mask": None, "ids": [torch.arange(3)], "flag": True}
    moved = move_tensors(kwargs, CPU)
    assert moved["attention_mask"] is None and moved["flag"] is True
    assert isinstance(moved["position_embeddings"], tuple) and torch.equal(moved["position_embeddings"][1], sin)
    assert isinstance(moved["ids"], list) and torch.equal(moved["ids"][0], torch.arange(3))


def test_visiting_sends_a_module_home_even_on_error():
    offload = LayerOffload(CPU, CPU)
    layer = torch.nn.Linear(3, 3)
    weight = layer.weight
    with pytest.raises(RuntimeError):
        with offload.visiting("layer 7", layer):
            raise RuntimeError("boom")
    assert offload.moved("layer 7") == [("cpu", "cpu"), ("cpu", "cpu")]
    assert layer.weight is weight  # parameters keep their identity: masks and saved weights stay valid


def test_each_layer_visits_the_compute_device_only_while_it_is_walked(tiny):
    offload = LayerOffload(CPU, CPU)
    inputs = capture_layer_inputs(tiny, windows(4), batch_size=2, offload=offload)
    seen = []

    def on_layer(index, layer, stats):
        seen.append(offload.moves[-1])  # the layer's own move to the compute device comes right before its work
        return False

    walk_layers(tiny, inputs, on_layer, need="act_sq", propagation="dense", offload=offload)
    assert seen == [("layer 0", "cpu", "cpu"), ("layer 1", "cpu", "cpu")]
    layer_moves = [m for m in offload.moves if m[0].startswith("layer")]
    assert [m[0] for m in layer_moves] == ["layer 0", "layer 0", "layer 1", "layer 1"]  # to compute, home; in order


# ------------------------------------------------------------------------------------------ offload on the CPU

@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("propagation", ["pruned", "dense"])
def test_pruning_with_cpu_offload_is_bit_identical(tiny, method, propagation):
    ids = windows()
    config = PruneConfig(method, sparsity=0.5, propagation=propagation)
    before = snapshot(tiny.model)
    plain = prune_model(tiny, ids, config, batch_size=4)
    offload = LayerOffload(CPU, CPU)
    offloaded = prune_model(tiny, ids, config, batch_size=4, offload=offload)
    assert plain.masks.keys() == offloaded.masks.keys()
    for name, mask in plain.masks.items():
        assert torch.equal(mask, offloaded.masks[name]), name
    if method == "sparsegpt":
        for name, weight in plain.weights.items():
            assert torch.equal(weight, offloaded.weights[name]), name
    assert offloaded.sparsity == plain.sparsity
    layers = len(tiny.adapter.decoder_layers(tiny.model))
    for index in range(layers):
        assert offload.moved(f"layer {index}") == [("cpu", "cpu"), ("cpu", "cpu")]
    if propagation == "pruned":  # masks (and weights) are sent home layer by layer
        per_layer = len(tiny.adapter.module_kinds) * (2 if method == "sparsegpt" else 1)
        assert len(offload.moved("results")) == layers * per_layer
    after = tiny.model.state_dict()
    assert all(torch.equal(value, after[key]) for key, value in before.items())  # the model left as it was


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_perplexity_with_cpu_offload_equals_the_whole_model_forward(tiny, dtype):
    ids = windows(6, 32, seed=1)  # 6 windows in batches of 4: a last, shorter batch too
    plain = perplexity(tiny, ids, batch_size=4, dtype=dtype)
    offload = LayerOffload(CPU, CPU)
    offloaded = perplexity(tiny, ids, batch_size=4, dtype=dtype, offload=offload)
    assert offloaded.tokens == plain.tokens and offloaded.windows == plain.windows
    assert math.isclose(offloaded.ppl, plain.ppl, rel_tol=1e-6)
    assert offload.moved("layer 0") == [("cpu", "cpu"), ("cpu", "cpu")]
    assert offload.moved("head") == [("cpu", "cpu")] * 4  # final norm and LM head, there and back


def test_evaluation_in_several_walks_when_the_windows_do_not_fit_at_once(tiny):
    ids = windows(6, 32, seed=5)
    assert windows_that_fit(CPU, window_bytes=10 ** 12, windows=6, batch_size=2) == 6  # the CPU holds them all
    offload = LayerOffload(CPU, CPU, max_windows=3)  # rounded down to whole batches: walks of 2, 2 and 2 windows
    offloaded = perplexity(tiny, ids, batch_size=2, offload=offload)
    assert math.isclose(offloaded.ppl, perplexity(tiny, ids, batch_size=2).ppl, rel_tol=1e-6)
    assert len(offload.moved("layer 1")) == 3 * 2


def test_pruned_evaluation_with_offload(tiny):
    ids = windows(4, 32, seed=2)
    pruned = prune_model(tiny, windows(), PruneConfig("wanda", sparsity=0.5), batch_size=4)
    protocol = Protocol(seqlen=32, eval_windows=4, batch_size=4)
    plain = evaluate_setting(tiny, protocol, ["x"], pruned, eval_ids={"x": ids})
    offload = LayerOffload(CPU, CPU)
    offloaded = evaluate_setting(tiny, protocol, ["x"], pruned, eval_ids={"x": ids}, offload=offload)
    assert plain.pruned_ppl["x"] > plain.dense_ppl["x"] * 0.5  # a real measurement on both sides
    for key in ("dense_ppl", "pruned_ppl"):
        assert math.isclose(getattr(offloaded, key)["x"], getattr(plain, key)["x"], rel_tol=1e-6)
    assert len(offload.moved("layer 1")) == 4  # dense and pruned evaluation each walked it there and back


def test_dense_perplexity_key_names_a_gpu_but_not_the_cpu(tiny):
    """A GPU's dense perplexity is stored apart from the CPU's; CPU keys are those stored before devices."""
    protocol = Protocol(seqlen=32, eval_windows=4, batch_size=4)
    plain = dense_key(tiny, protocol, "wiki")
    assert "device" not in plain
    assert dense_key(tiny, protocol, "wiki", LayerOffload(CPU, CPU)) == plain
    # torch.device("cuda") is only a name: the key is made without a GPU.
    gpu = dense_key(tiny, protocol, "wiki", LayerOffload(torch.device("cuda", 1), CPU))
    assert gpu == {**plain, "device": "cuda"}


def test_export_pipeline_with_offload_gives_the_same_report_figures(tiny, tmp_path):
    from pruning_core.export.pipeline import ExportOptions, run_export

    protocol = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=3, batch_size=4)
    options = ExportOptions(method="sparsegpt", sparsity=0.5, eval_corpora=("news",), prompts=(), heatmap=False,
                            curve_sparsities=(0.3,))
    plain = run_export(tiny, protocol, options, tmp_path / "plain")["report"]
    offload = LayerOffload(CPU, CPU)
    offloaded = run_export(tiny, protocol, options, tmp_path / "offloaded", offload=offload)["report"]
    assert offloaded["ppl"] == plain["ppl"]
    assert offloaded["setting"]["measured_sparsity"] == plain["setting"]["measured_sparsity"]
    # pruning (setting and curve point) and evaluation (dense, pruned, curve point) each walked every layer
    assert len(offload.moved("layer 0")) == 2 * (2 + 3)


def test_sweep_points_with_cpu_offload_equal_the_plain_sweep(tiny):
    """A sweep worker given an offload walks and evaluates each layer on the compute device: same points."""
    from pruning_core.analysis.sweep import PointTask, SweepSpec, SweepWorker, run_sweep

    protocol = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=3, batch_size=4)
    spec = SweepSpec(model="tiny-llama", methods=("wanda", "sparsegpt"), sparsities=(0.5,), eval_corpora=("news",),
                     protocol=protocol)
    plain = run_sweep(spec, loaded=tiny)
    assert plain["execution"]["device"] == "cpu"
    from pruning_core.evaluate import evaluation_windows
    from pruning_core.protocol import calibration_ids

    offload = LayerOffload(CPU, CPU)
    worker = SweepWorker(tiny, spec, calibration_ids(tiny, protocol), evaluation_windows(tiny, protocol, ["news"]),
                         offload=offload)
    for point in plain["points"]:
        config = PruneConfig(point["method"], sparsity=0.5)
        found = worker.run(PointTask(base=config, config=config, allocation="uniform", label="x", use_ranks=False),
                           lambda *_: None)
        assert math.isclose(found["ppl"]["news"], point["ppl"]["news"], rel_tol=1e-6)
        assert found["sparsity"] == point["sparsity"]
    assert len(offload.moved("layer 1")) == 2 * 2 * 2  # 2 points x (pruning walk, evaluation walk) x there and back


def test_gpu_points_and_statistics_are_keyed_apart_from_cpu_ones(tiny):
    from pruning_core.analysis.sweep import point_key
    from pruning_core.statistics_cache import statistics_key

    protocol = Protocol(calib="news", nsamples=4, seqlen=32)
    config = PruneConfig("wanda", sparsity=0.5)
    cpu_point = point_key("f", {}, protocol, config, {})
    assert point_key("f", {}, protocol, config, {}, "cpu") == cpu_point and "device" not in cpu_point
    assert point_key("f", {}, protocol, config, {}, "cuda") == {**cpu_point, "device": "cuda"}
    cpu_stats = statistics_key(tiny, protocol, "act_sq")
    assert statistics_key(tiny, protocol, "act_sq", LayerOffload(CPU, CPU)) == cpu_stats
    gpu = LayerOffload(torch.device("cuda", 0), CPU)
    assert statistics_key(tiny, protocol, "act_sq", gpu) == {**cpu_stats, "device": "cuda"}


def test_cli_sweep_cuda_without_a_gpu_is_the_sentence(tmp_path, capsys):
    status = main(["sweep", "--model", "tiny-llama", "--device", "cuda", "--out", str(tmp_path / "s")])
    assert status == 2 and capsys.readouterr().err.strip() == f"error: {NO_GPU_SENTENCE}"


def test_ray_sweep_on_a_gpu_needs_a_gpu_per_worker(tiny):
    """Checked before any work (a Ray executor object that never starts stands in: nothing runs)."""
    from types import SimpleNamespace

    from pruning_core.analysis.sweep import SweepSpec, run_sweep
    from pruning_core.executors.base import ExecutorConfig

    if not HAS_CUDA:
        pytest.skip("resolving cuda needs a GPU; the CPU-only message is checked above")
    spec = SweepSpec(model="tiny-llama", methods=("magnitude",), eval_corpora=("news",))
    fake = SimpleNamespace(config=ExecutorConfig(kind="ray"))
    with pytest.raises(ConfigError, match="reserves a GPU"):
        run_sweep(spec, loaded=tiny, executor=fake, device="cuda")


def test_bf16_agreement_reports_the_relative_gap(tiny):
    ids = windows(2, 32, seed=3)
    found = bf16_agreement(tiny, ids, offload=LayerOffload(CPU, CPU))
    assert found["windows"] == 2
    assert found["relative_gap"] == pytest.approx(found["bf16"] / found["fp32"] - 1.0)
    assert found["fp32"] == pytest.approx(perplexity(tiny, ids).ppl, rel=1e-6)


# ------------------------------------------------------------------------------------------ offload on a GPU

@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_cuda_offload_agrees_with_the_cpu_and_leaves_the_model_home(method):
    loaded = tiny_model("llama", layers=2)
    ids = windows()
    config = PruneConfig(method, sparsity=0.5, calib_dtype="float32")
    plain = prune_model(loaded, ids, config, batch_size=4)
    offload = LayerOffload(torch.device("cuda", 0), CPU)
    offloaded = prune_model(loaded, ids, config, batch_size=4, offload=offload)
    assert all(p.device == CPU for p in loaded.model.parameters())
    agree = [float((plain.masks[n] == m).float().mean()) for n, m in offloaded.masks.items()]
    assert all(m.device == CPU for m in offloaded.masks.values())
    assert min(agree) > 0.95  # GPU kernels sum in another order: near-tied choices may flip
    assert offloaded.sparsity == pytest.approx(plain.sparsity, abs=1e-9)
    for index in range(2):
        assert offload.moved(f"layer {index}") == [("cpu", "cuda:0"), ("cuda:0", "cpu")]
    eval_ids = windows(4, 32, seed=4)
    on_gpu = perplexity(loaded, eval_ids, offload=offload)
    assert on_gpu.ppl == pytest.approx(perplexity(loaded, eval_ids).ppl, rel=1e-4)
    assert all(p.device == CPU and not p.is_inference() for p in loaded.model.parameters())
    assert bf16_agreement(loaded, eval_ids, offload)["relative_gap"] == pytest.approx(0.0, abs=0.05)


def test_bf16_autocast_covers_the_cpu_even_where_cuda_exists():
    """A CPU run asked for bf16 runs its matmuls in bf16 on any machine (autocast is per device type)."""
    from pruning_core.precision import autocast_for

    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with autocast_for("bfloat16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast_for("float32"):
        assert (a @ b).dtype == torch.float32
