import pytest

from pruning_core.sizes.files import FORMATS, format_label, saved_size


def test_saved_size_counts_the_bytes_on_disk(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "extra.gguf").write_bytes(b"y" * 77)
    (tmp_path / ".prunescope-output").write_text("marker")
    size = saved_size(tmp_path)
    assert size["weight_bytes"] == 1077
    assert size["total_bytes"] == 1079
    assert {f["name"] for f in size["files"]} == {"model.safetensors", "config.json", "sub/extra.gguf"}


def test_saved_size_of_one_file_and_of_nothing(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"z" * 5)
    assert saved_size(f)["weight_bytes"] == 5
    with pytest.raises(FileNotFoundError):
        saved_size(tmp_path / "missing")


def test_every_format_names_a_runtime():
    for fmt in FORMATS:
        assert "loaded by" in format_label(fmt)
