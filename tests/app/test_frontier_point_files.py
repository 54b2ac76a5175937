"""The Frontier page hands over a measured point's files: a stored quantized point in the Q4_1 layout is written
again by the point_export job (its compressed-tensors folder and its GGUF file from the same integers), offered as
download buttons whose bytes are the files on disk; the dense point gives 16-bit safetensors and GGUF F16; a pruned
point says in one sentence where it is exported; the Quantize form's point gets the same button."""

from __future__ import annotations

import pytest

pytest.importorskip("streamlit")
from tests.app.apptest_helpers import SMALL, ok, page, stored_frontier, text_of  # noqa: E402

pytestmark = pytest.mark.usefixtures("app_env")  # tiny model, a temporary PRUNESCOPE_HOME, inline jobs

SETTINGS = {**SMALL, "eval_corpora": ["news"]}
Q4_1_KEY = "quantized:dense::None:None:rtn:4:32:False:float16"


def downloads(at) -> dict:
    return {e.proto.label: e for e in at.get("download_button")}


def test_a_stored_quantized_point_is_written_as_its_folder_and_gguf_file_for_download():
    from pruning_core.store import home_dir

    stored_frontier()
    at = ok(page("frontier", SETTINGS))
    at.selectbox(key="frontier_point").set_value(Q4_1_KEY).run()
    ok(at)
    write = at.button(key="frontier_point_files_write")
    assert "compressed-tensors folder (zip) and GGUF file" in write.label
    write.click().run()
    ok(at)
    labels = [label for label in downloads(at) if label != "Report (HTML)"]
    assert any(label.startswith("GGUF file") for label in labels), labels
    assert any(label.startswith("compressed-tensors folder (zip)") for label in labels), labels
    folders = list((home_dir() / "exports").glob("point-*"))
    assert len(folders) == 1 and not list((home_dir() / "exports").glob(".point-*"))  # written whole, one rename
    gguf = folders[0] / "tiny-llama-Q4_1.gguf"
    assert gguf.is_file() and (folders[0] / "model" / "config.json").is_file()
    label = next(label for label in labels if label.startswith("GGUF file"))
    from app.formats import format_bytes

    assert label.endswith(format_bytes(gguf.stat().st_size))  # the size shown is the file's on disk
    assert "Q4_1 stores each group's minimum" in text_of(at)  # the read-back sentence under the buttons
    # A reload finds the files again, without writing them anew.
    again = ok(page("frontier", SETTINGS, frontier_point=Q4_1_KEY))
    assert any(label.startswith("GGUF file") for label in downloads(again))


def test_the_dense_point_gives_16_bit_files_and_a_pruned_point_says_where_it_is_exported():
    stored_frontier()
    at = ok(page("frontier", SETTINGS))
    at.selectbox(key="frontier_point").set_value("dense:tiny").run()
    ok(at)
    assert "16-bit safetensors folder (zip) and GGUF file" in at.button(key="frontier_point_files_write").label
    at.selectbox(key="frontier_point").set_value("sweep:wanda:unstructured:uniform:0.5").run()
    ok(at)
    assert "write its mask and pruned model on the Export page" in text_of(at)
    assert not [b for b in at.button if b.key == "frontier_point_files_write"]


def test_the_quantize_form_offers_its_points_files_once_it_has_run():
    at = ok(page("frontier", SMALL))
    at.selectbox(key="frontier_q_method").set_value("rtn").run()
    at.selectbox(key="frontier_q_bits").set_value(8).run()
    at.selectbox(key="frontier_q_group").set_value("32").run()
    assert not [b for b in at.button if b.key == "frontier_q_files_write"]  # nothing measured yet
    at.button(key="frontier_q_run").click().run()
    ok(at)
    at.button(key="frontier_q_files_write").click().run()
    ok(at)
    gguf = [e for label, e in downloads(at).items() if label.startswith("GGUF file")]
    assert gguf and "tiny-llama-Q8_0.gguf" in str(gguf[0].proto)
    assert "dequantizes to exactly the quantized model's weights" in text_of(at)


def test_a_point_is_written_again_with_the_calibration_dtype_it_was_measured_with():
    from app.services.point_export import point_spec

    setting = {"method": "gptq", "bits": 4, "group_size": 32, "symmetric": True, "scale_dtype": "float16",
               "actorder": "static", "start": "dense", "prune": None}
    bf16 = point_spec(SETTINGS, {"family": "quantized", "setting": {**setting, "calib_dtype": "bfloat16"}})
    assert bf16["calib_dtype"] == "bfloat16"
    # A record stored before GPTQ's forwards ran in bf16 has none: it was measured in fp32.
    assert point_spec(SETTINGS, {"family": "quantized", "setting": setting})["calib_dtype"] == "float32"
