"""`--export gguf` on `prunescope export` and `prunescope structured` (tiny llama): the file is written whole with
its measured bytes printed; masked zeros are in it; per-ratio files of a structured run parse with the expected
widths; bad --gguf options and families llama.cpp cannot run exit 2 with one sentence before any pruning."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

from pruning_core.cli import main
from pruning_core.sizes.files import saved_size


def test_export_writes_the_pruned_model_as_gguf_with_its_zeros(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", "--model", "tiny-llama", "--calib", "news", "--eval", "news", "--nsamples", "4",
                 "--seqlen", "32", "--eval-windows", "2", "--method", "magnitude", "--sparsity", "0.5",
                 "--no-heatmap", "--max-new-tokens", "2", "--export", "gguf", "--gguf-type", "F16",
                 "--out", str(out)]) == 0
    path = out / "gguf" / "tiny-llama-F16.gguf"
    printed = capsys.readouterr().out
    assert f"wrote {path} ({saved_size(path)['weight_bytes']:,} bytes, F16 GGUF, loaded by llama.cpp)" in printed
    assert (out / ".prunescope-output").is_file()  # inside the export folder written whole
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    q = np.asarray(tensors["blk.0.attn_q.weight"].data)
    assert 0.45 < float((q == 0).mean()) < 0.55  # the magnitude mask's zeros, stored as zeros
    report = json.loads((out / "report.json").read_text())
    assert {"name": "gguf/tiny-llama-F16.gguf", "bytes": path.stat().st_size} in report["files"]


def test_structured_writes_one_gguf_per_ratio_with_its_widths(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["structured", "--model", "tiny-llama", "--calib", "news", "--eval", "news", "--nsamples", "4",
                 "--seqlen", "32", "--eval-windows", "2", "--ratios", "0.25", "--units", "heads,channels",
                 "--score", "magnitude", "--no-compensate", "--no-store", "--export", "gguf", "--gguf-type", "Q8_0",
                 "--gguf-fallback", "F16", "--out", str(out)]) == 0
    result = json.loads((out / "structured.json").read_text())
    (point,) = result["points"]
    record = point["gguf"]
    path = out / "gguf-0.25" / "tiny-llama-structured-0.25-Q8_0.gguf"
    assert record["path"] == str(path) and record["bytes"] == path.stat().st_size
    assert f"wrote {path} ({path.stat().st_size:,} bytes, Q8_0 GGUF" in capsys.readouterr().out
    reader = gguf.GGUFReader(str(path))
    arch = record["architecture"]
    heads = reader.fields[f"{arch}.attention.head_count"].contents()
    channels = reader.fields[f"{arch}.feed_forward_length"].contents()
    widths = point["widths"]
    assert (heads if isinstance(heads, list) else [heads] * len(widths)) == [w["heads"] for w in widths]
    assert (channels if isinstance(channels, list) else [channels] * len(widths)) == [w["channels"] for w in widths]


@pytest.mark.parametrize("argv,words", [
    (["--export", "gguf", "--gguf-type", "Q4_K"], "can read Q4_K but not write it"),
    (["--gguf-type", "Q8_0"], "are read with --export gguf"),
    (["--export", "gguf", "--gguf-type", "Q9"], "is not one PruneScope writes"),
    (["--model", "tiny-opt", "--export", "gguf"], "not a model family llama.cpp runs"),
])
@pytest.mark.parametrize("command", ["export", "structured"])
def test_bad_gguf_options_exit_2_with_one_sentence_and_write_nothing(command, argv, words, tmp_path, capsys):
    out = tmp_path / "out"
    model = [] if "--model" in argv else ["--model", "tiny-llama"]
    assert main([command, *model, *argv, "--calib", "news", "--eval", "news", "--nsamples", "2", "--seqlen", "16",
                 "--eval-windows", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert words in err
    assert not out.exists() or not any(out.iterdir())
