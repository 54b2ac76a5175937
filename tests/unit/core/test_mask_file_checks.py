"""A mask folder is checked before it touches a model: every damaged or edited part is refused in one sentence
(or, for a stated sparsity that differs from the masks, warned about), and apply-mask never reports a file it
did not write."""

from __future__ import annotations

import json

import pytest
import torch

from pruning_core.errors import ConfigError
from pruning_core.export.pipeline import run_apply_mask
from pruning_core.mask_files import MANIFEST_FILE, MASK_FILE, apply_mask_dir, load_masks, manifest_info_for, save_masks
from pruning_core.models import load_model
from pruning_core.outputs.files import MARKER
from pruning_core.prune import PruneConfig, prune_model


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


@pytest.fixture
def mask_dir(tmp_path, tiny):
    ids = torch.randint(3, 300, (4, 32), generator=torch.Generator().manual_seed(0))
    result = prune_model(tiny, ids, PruneConfig("magnitude", "unstructured", 0.5))
    folder = tmp_path / "mask"
    save_masks(result.masks, folder, manifest_info_for(tiny, result))
    return folder


def _edit_manifest(folder, change):
    path = folder / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(change(manifest)))


def _one_sentence(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_a_missing_fingerprint_is_refused_not_skipped(mask_dir, tiny):
    _edit_manifest(mask_dir, lambda m: {**m, "model": {k: v for k, v in m["model"].items() if k != "fingerprint"}})
    with pytest.raises(ConfigError, match="names no model fingerprint") as exc:
        apply_mask_dir(tiny, mask_dir, permanent=True)
    _one_sentence(exc)


@pytest.mark.parametrize("change, words", [
    (lambda m: [m], "not a PruneScope mask manifest"),
    (lambda m: {**m, "format_version": 99}, "format version 99"),
    (lambda m: {**m, "model": {**m["model"], "module_shapes": None}}, "no module shapes"),
])
def test_a_damaged_manifest_is_refused_in_one_sentence(mask_dir, change, words):
    _edit_manifest(mask_dir, change)
    with pytest.raises(ConfigError, match=words) as exc:
        load_masks(mask_dir)
    _one_sentence(exc)


def _rewrite_masks(folder, tensors_or_bytes):
    from safetensors.torch import save_file

    from pruning_core.mask_files import file_sha256

    path = folder / MASK_FILE
    if isinstance(tensors_or_bytes, bytes):
        path.write_bytes(tensors_or_bytes)
    else:
        save_file(tensors_or_bytes, str(path))
    _edit_manifest(folder, lambda m: {**m, "mask_sha256": file_sha256(path)})  # as an editor would


def test_a_tensor_of_the_wrong_dtype_is_refused(mask_dir):
    masks, manifest = load_masks(mask_dir)
    _rewrite_masks(mask_dir, {name: mask.to(torch.float32).reshape(-1) for name, mask in masks.items()})
    with pytest.raises(ConfigError, match="not the packed uint8 bits") as exc:
        load_masks(mask_dir)
    _one_sentence(exc)


def test_a_broken_safetensors_header_is_refused(mask_dir):
    _rewrite_masks(mask_dir, b"\xff" * 8 + b"{not json")
    with pytest.raises(ConfigError, match="not a readable safetensors file") as exc:
        load_masks(mask_dir)
    _one_sentence(exc)


def test_a_stated_sparsity_that_differs_from_the_masks_is_warned_about(mask_dir, tiny):
    _edit_manifest(mask_dir, lambda m: {**m, "measured_sparsity": {**m["measured_sparsity"], "overall": 0.9}})
    with apply_mask_dir(tiny, mask_dir) as applied:
        assert "manifest states 90.00%" in applied["warning"]
    _edit_manifest(mask_dir, lambda m: {**m, "measured_sparsity": {**m["measured_sparsity"], "overall": 0.5}})
    with apply_mask_dir(tiny, mask_dir) as applied:
        assert applied["warning"] is None


def test_apply_mask_refuses_to_save_onto_a_file_before_any_work(mask_dir, tmp_path):
    target = tmp_path / "model.bin"
    target.write_text("keep me")
    with pytest.raises(ConfigError, match="is an existing file") as exc:
        run_apply_mask(load_model("tiny-llama"), mask_dir, save_model=str(target))
    _one_sentence(exc)
    assert target.read_text() == "keep me"


def test_apply_mask_saves_whole_and_replaces_only_its_own_folder(mask_dir, tmp_path):
    out = tmp_path / "pruned"
    summary = run_apply_mask(load_model("tiny-llama"), mask_dir, save_model=str(out))
    assert summary["saved_model"] == str(out) and (out / "config.json").exists() and (out / MARKER).exists()
    run_apply_mask(load_model("tiny-llama"), mask_dir, save_model=str(out))  # its own folder: replaced whole
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pruned.")]  # no partial or old folder left
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("a user's file")
    with pytest.raises(ConfigError, match="PruneScope did not write"):
        run_apply_mask(load_model("tiny-llama"), mask_dir, save_model=str(foreign))
    assert (foreign / "notes.txt").read_text() == "a user's file"
