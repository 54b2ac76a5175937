"""A quantized model as GGUF, from its integers: Q4_0 and Q8_0 read back bit for bit, Q4_1 up to its fp16 minimum
(and the record says how many weights that rounding moves, by how much); `prunescope quantize --export gguf`
measures the file it wrote, refuses a scheme GGUF cannot hold in one sentence (or re-rounds it, labelled, when
asked); `--bits 16` writes the baseline in every 16-bit format; llama.cpp runs the file as torch runs the quantized
model; the point_export job writes a point's files whole."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pruning_core.cli import EXIT_BAD_INPUT, main
from pruning_core.errors import ConfigError
from pruning_core.gguf.read import gguf_state_dict
from pruning_core.masks import applied_masks
from pruning_core.models.tiny import tiny_model
from pruning_core.quantization.gguf_file import exact_type, gguf_plan, write_quantized_gguf
from pruning_core.quantization.model import quantize_model
from pruning_core.quantization.scheme import QuantScheme

CLI_ARGS = ["--model", "tiny-llama", "--calib", "news", "--eval", "news", "--nsamples", "4", "--seqlen", "32",
            "--eval-windows", "2", "--batch-size", "4", "--no-store", "--method", "rtn"]


@pytest.fixture(scope="module")
def llama():
    # Weights drawn wider than the default 0.02 so that logits are peaked (see tests/unit/gguf/test_gguf_llama_cpp).
    return tiny_model("llama", layers=3, initializer_range=0.2)


def quantized(lm, bits, symmetric, group=32):
    return quantize_model(lm, None, QuantScheme(bits, group, symmetric, "rtn"))


def file_weights(lm, path, result):
    state = gguf_state_dict(lm, path)
    return {name: state[f"{name}.weight"] for name in result.matrices}


def test_exact_types_are_exactly_the_schemes_a_gguf_block_holds():
    assert exact_type(QuantScheme(4, 32, True)) == "Q4_0"
    assert exact_type(QuantScheme(4, 32, False)) == "Q4_1"
    assert exact_type(QuantScheme(8, 32, True)) == "Q8_0"
    for scheme in (QuantScheme(4, 64, True), QuantScheme(4, None, True), QuantScheme(3, 32, True),
                   QuantScheme(8, 32, False), QuantScheme(4, 32, True, scale_dtype="bfloat16")):
        assert exact_type(scheme) is None
        with pytest.raises(ConfigError) as info:
            gguf_plan(scheme)
        message = str(info.value)
        assert "--group-size 32" in message and "--gguf-type" in message and message.count(". ") == 0
    assert gguf_plan(QuantScheme(4, 64, True), "Q4_0") == gguf_plan(QuantScheme(4, 64, True), "q4_0")
    assert not gguf_plan(QuantScheme(4, 64, True), "Q4_0").exact and gguf_plan(QuantScheme(4, 32, True), "Q4_0").exact


@pytest.mark.parametrize("bits,symmetric,kind", [(4, True, "Q4_0"), (8, True, "Q8_0")])
def test_symmetric_files_read_back_to_exactly_the_quantized_weights(llama, bits, symmetric, kind, tmp_path):
    result = quantized(llama, bits, symmetric)
    path = tmp_path / f"m-{kind}.gguf"
    written = write_quantized_gguf(llama, result, path, gguf_plan(result.scheme))
    assert written["exact"] and written["type"] == kind and written["tensor_types"][kind] == len(result.matrices)
    for name, values in file_weights(llama, path, result).items():
        assert torch.equal(values, result.weights[name].to(torch.float32)), name
    assert written["readback"]["identical"] and written["readback"]["changed_weights"] == 0


def test_gptq_in_static_activation_order_keeps_natural_groups_so_q4_0_reads_back_exactly(tmp_path):
    from pruning_core.models import load_model
    from pruning_core.protocol import Protocol, calibration_ids

    lm = load_model("tiny-llama")
    calib = calibration_ids(lm, Protocol(calib="news", nsamples=4, seqlen=32, batch_size=4))
    result = quantize_model(lm, calib, QuantScheme(4, 32, True, "gptq", actorder="static"))
    written = write_quantized_gguf(lm, result, tmp_path / "g.gguf", gguf_plan(result.scheme))
    assert written["type"] == "Q4_0" and written["readback"]["identical"]


def test_q4_1_reads_back_to_the_quantized_weights_up_to_its_fp16_minimum_and_says_by_how_much(llama, tmp_path):
    result = quantized(llama, 4, False)
    path = tmp_path / "m-Q4_1.gguf"
    written = write_quantized_gguf(llama, result, path, gguf_plan(result.scheme))
    moved, largest, largest_steps = 0, 0.0, 0.0
    for name, values in file_weights(llama, path, result).items():
        matrix = result.matrices[name]
        # What Q4_1 holds: x = d n + m with n = q + 8, d = s and m = -s (z + 8) rounded to fp16, in fp32.
        groups = matrix.scale.shape[1]
        d = matrix.scale.repeat_interleave(matrix.ints.shape[1] // groups, dim=1)
        m = (-(matrix.scale * (matrix.zero.float() + 8))).half().float().repeat_interleave(
            matrix.ints.shape[1] // groups, dim=1)
        expected = d * (matrix.ints.float() + 8) + m
        assert torch.equal(values, expected), name
        diff = (values - matrix.dequantize()).abs()
        moved += int((diff > 0).sum())
        largest = max(largest, float(diff.max()))
        largest_steps = max(largest_steps, float((diff / d).max()))
    check = written["readback"]
    assert check["changed_weights"] == moved and check["max_abs_change"] == pytest.approx(largest)
    assert check["max_change_in_steps"] == pytest.approx(largest_steps)
    assert 0 < largest_steps < 15 / 2 ** 11  # half an fp16 step of a minimum of at most 15 scales
    assert "Q4_1 stores each group's minimum" in written["readback_words"]


def test_a_re_rounded_file_is_labelled_and_its_distance_measured(llama, tmp_path):
    result = quantized(llama, 4, True, group=64)
    written = write_quantized_gguf(llama, result, tmp_path / "r.gguf", gguf_plan(result.scheme, "Q4_0"))
    assert not written["exact"] and "re-rounded" in written["re_rounded"]
    assert written["readback"]["changed_weights"] > 0  # the gguf package's Q4_0 grid is not ours


def test_cli_export_gguf_writes_the_file_and_records_its_bytes_on_disk(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["quantize", *CLI_ARGS, "--bits", "4", "--group-size", "32", "--out", str(out),
                 "--export", "compressed-tensors,gguf"]) == 0
    document = json.loads((out / "quantize.json").read_text())
    path = out / document["files"]["gguf"]
    assert path.name == "tiny-llama-Q4_0.gguf" and (out / document["files"]["compressed-tensors"]).is_dir()
    size = document["bytes"]["gguf"]
    assert size["weight_bytes"] == path.stat().st_size and size["type"] == "Q4_0" and size["exact"]
    assert "llama.cpp" in size["label"] and not size["re_rounded"]
    assert document["checks"]["gguf"]["readback"]["identical"]
    assert "tiny-llama-Q4_0.gguf" in capsys.readouterr().out
    assert not list(tmp_path.glob(".out.partial-*"))


def test_cli_re_rounds_only_when_asked_and_says_so(tmp_path):
    out = tmp_path / "out"
    assert main(["quantize", *CLI_ARGS, "--bits", "4", "--group-size", "64", "--out", str(out), "--export", "gguf",
                 "--gguf-type", "Q8_0"]) == 0
    document = json.loads((out / "quantize.json").read_text())
    assert document["bytes"]["gguf"]["type"] == "Q8_0" and "re-rounded" in document["bytes"]["gguf"]["re_rounded"]
    assert set(document["files"]) == {"gguf"} and not (out / "model").exists()


@pytest.mark.parametrize("args,words", [
    (["--bits", "4", "--group-size", "64", "--export", "gguf"], "--group-size 32"),
    (["--bits", "3", "--group-size", "32", "--export", "gguf"], "cannot be stored exactly in GGUF"),
    (["--bits", "4", "--group-size", "channel", "--export", "gguf"], "per channel"),
    (["--bits", "4", "--export", "parquet"], "not a format"),
    (["--bits", "4", "--group-size", "32", "--gguf-type", "Q4_0"], "--export gguf"),
    (["--bits", "16", "--export", "compressed-tensors"], "not quantized"),
    (["--bits", "4", "--group-size", "32", "--export", "safetensors-16bit"], "--bits 16"),
    (["--bits", "17"], "Bits 17"),
])
def test_bad_exports_are_refused_in_one_sentence_and_write_nothing(args, words, tmp_path, capsys):
    assert main(["quantize", *CLI_ARGS, *args, "--out", str(tmp_path / "bad")]) == EXIT_BAD_INPUT
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0] and errors[0].endswith(".")
    assert not (tmp_path / "bad").exists()


def test_bits_16_writes_the_baseline_in_every_16_bit_format(tmp_path):
    out = tmp_path / "base"
    assert main(["quantize", *CLI_ARGS, "--bits", "16", "--out", str(out)]) == 0
    document = json.loads((out / "quantize.json").read_text())
    assert document["setting"]["bits"] == 16 and set(document["bytes"]) == {"safetensors-16bit", "gguf"}
    gguf_file = out / document["files"]["gguf"]
    assert gguf_file.name == "tiny-llama-F16.gguf"
    assert document["bytes"]["gguf"]["weight_bytes"] == gguf_file.stat().st_size
    folder = out / document["files"]["safetensors-16bit"]
    assert document["bytes"]["safetensors-16bit"]["weight_bytes"] == sum(
        p.stat().st_size for p in folder.glob("*.safetensors"))
    assert document["checks"]["gguf"]["readback"]["identical"]
    assert document["change"] == {"news": 0.0}


def test_point_export_job_writes_the_points_files_whole(tmp_path, monkeypatch):
    from pruning_core.jobs.runner import JOB_KINDS, JobRunner
    from pruning_core.protocol import Protocol
    from pruning_core.quantization.run import QuantizeSpec

    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path / "home"))
    assert "point_export" in JOB_KINDS
    point = QuantizeSpec(model="tiny-llama", protocol=Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2,
                                                               batch_size=4),
                         method="rtn", bits=8, group_size=32, eval_corpora=("news",), verify=False).to_dict()
    out = tmp_path / "exports" / "p"
    result = JobRunner().run_inline("point_export", {"point": point, "out_dir": str(out)}, lambda f, m: None)
    assert result["files"] == {"gguf": "tiny-llama-Q8_0.gguf", "compressed-tensors": "model"}
    assert (out / "tiny-llama-Q8_0.gguf").is_file() and (out / "model" / "config.json").is_file()
    assert (out / "quantize.json").is_file() and not list(out.parent.glob(".p.partial-*"))


def torch_greedy(model, prompt, new_tokens):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(new_tokens):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True)])
def test_llama_cpp_runs_the_exact_file_as_torch_runs_the_quantized_model(llama, bits, symmetric, tmp_path):
    from pruning_core.gguf.runtime import llama_cpp_available, llama_cpp_perplexity, opened_gguf
    from pruning_core.metrics import perplexity

    if not llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed (pip install '.[llama]' compiles llama.cpp), so the file "
                    "cannot be run in llama.cpp here.")
    result = quantized(llama, bits, symmetric)
    path = tmp_path / "q.gguf"
    write_quantized_gguf(llama, result, path, gguf_plan(result.scheme))
    prompt = torch.randint(3, 300, (8,), generator=torch.Generator().manual_seed(0)).tolist()
    new = 48
    ids = torch.randint(3, 300, (3, 48), generator=torch.Generator().manual_seed(1))
    with applied_masks(llama.model, result.masks, result.weights):
        expected = torch_greedy(llama.model, prompt, new)
        with torch.no_grad():
            reference = llama.model(input_ids=torch.tensor([prompt + expected])).logits[0].numpy()
        torch_ppl = perplexity(llama, ids).ppl
    assert len(set(expected)) > 5  # a varied continuation, so agreement means something
    with opened_gguf(path, n_ctx=64) as llm:
        llm.reset()
        llm.eval(prompt + expected)  # teacher-forced on torch's greedy tokens: each step's pick is compared
        logits = np.array(llm.scores[: len(prompt) + new])  # a copy: the next evaluation reuses the buffer
        ours = llama_cpp_perplexity(path, ids, llm=llm)
    picks = logits[len(prompt) - 1: -1].argmax(-1)
    steps = reference[len(prompt) - 1: -1]
    # llama.cpp rounds activations to 8 bits before each Q4/Q8 product and keeps its cache in F16, so a step whose
    # two best tokens are near-tied may flip (measured: flips only below 0.13 of the logits' spread); every step
    # clearer than 0.3 of the spread must pick torch's token.
    top_two = np.sort(steps, axis=-1)[:, -2:]
    clear = (top_two[:, 1] - top_two[:, 0]) > 0.3 * float(reference.std())
    assert clear.sum() >= 10
    assert (picks == np.array(expected))[clear].all()
    assert (picks == np.array(expected)).mean() >= 0.8
    assert abs(ours["ppl"] / torch_ppl - 1) < 0.01
