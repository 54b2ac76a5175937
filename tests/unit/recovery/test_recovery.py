"""Recovery on tiny random models: the masked merge keeps every pruned zero, the unmerged adapter is the merged
model, cancel/resume, the loss goes down, adapters round-trip and swap, ranks stay within budget, and the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from pruning_core.errors import ConfigError, JobCancelled
from pruning_core.store import Store
from pruning_core.models.tiny import tiny_model
from pruning_core.protocol import Protocol, calibration_ids
from pruning_core.recovery import masked_lora, ranks
from pruning_core.recovery.run import RecoverySpec, gap_won_back, pruned_copy, run_recovery
from pruning_core.recovery.train import batch_loss

PROTOCOL = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2, batch_size=4)
TRAIN = {"steps": 6, "batch_size": 2, "seqlen": 32, "eval_every": 0, "checkpoint_every": 2, "lr": 5e-3,
         "warmup": 1, "dtype": "float32"}


def _spec(**changes) -> RecoverySpec:
    base = dict(model="tiny-llama", protocol=PROTOCOL, method="magnitude", sparsity=0.5, train_corpus="news",
                train=dict(TRAIN), rank=2, max_new_tokens=0, curve_windows=1)
    return RecoverySpec(**{**base, **changes})


def _randomly_pruned(family: str, seed: int = 0):
    """A tiny model with half of each prunable weight set to 0.0 by a random mask."""
    lm = tiny_model(family, layers=2)
    generator = torch.Generator().manual_seed(seed)
    modules = lm.adapter.prunable_modules(lm.model)
    with torch.no_grad():
        for module in modules.values():
            module.weight.mul_((torch.rand(module.weight.shape, generator=generator) > 0.5).to(module.weight.dtype))
    return lm, modules


def _randomise_lora_b(peft_model, seed: int = 1) -> None:
    """PEFT starts B at zero (a no-op delta); random B makes the delta non-trivial everywhere."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)


def _ids(lm, seed: int = 3):
    return torch.randint(3, len(lm.tokenizer), (2, 16), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _masked(lm, modules, targets=None, rank=2):
    config = masked_lora.lora_config(list(targets or modules), rank, fan_in_fan_out=lm.adapter.family == "gpt2")
    peft_model = masked_lora.attach(lm.model, config)
    _randomise_lora_b(peft_model)
    return peft_model


# ------------------------------------------------------------------------------------------------ masked merge

@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_masked_merge_keeps_every_zero_bit_exactly(family):
    lm, modules = _randomly_pruned(family)
    zeros_before = {n: (m.weight == 0).clone() for n, m in modules.items()}
    weights_before = {n: m.weight.detach().clone() for n, m in modules.items()}
    merged = _masked(lm, modules).merge_and_unload()
    for name, zeros in zeros_before.items():
        weight = merged.get_submodule(name).weight
        assert torch.equal(weight == 0, zeros), name  # the same zeros, no more, no fewer
        assert not torch.signbit(weight[zeros]).any(), name  # +0.0, not -0.0
        assert not torch.equal(weight, weights_before[name]), name  # the delta did change the kept weights


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_unmerged_masked_adapter_is_the_merged_model(family):
    lm, modules = _randomly_pruned(family)
    ids = _ids(lm)
    dense_logits = _logits(lm.model, ids)
    peft_model = _masked(lm, modules)
    unmerged = _logits(peft_model, ids)
    assert not torch.allclose(unmerged, dense_logits, atol=1e-3)  # the adapter does something
    merged = _logits(peft_model.merge_and_unload(), ids)
    torch.testing.assert_close(unmerged, merged, rtol=1e-5, atol=1e-5)


def _loss_and_grads(peft_model, hf_model, ids, autocast: bool, materialised: bool):
    """The training loss, its gradients (adapter matrices) and the bytes autograd saved for the backward pass:
    through `MaskedLoraLinear`'s own backward, or (materialised) through plain autograd on W + masked delta."""
    cls = masked_lora.masked_lora_class()

    def plain(self, x, *args, **kwargs):
        base = self.get_base_layer()
        weight = base.weight + self.get_delta_weight("default").to(base.weight.dtype)
        return torch.nn.functional.linear(x, weight.t() if self.fan_in_fan_out else weight, getattr(base, "bias", None))

    saved = {}
    held = {p.data_ptr() for p in peft_model.parameters()} | {b.data_ptr() for b in peft_model.buffers()}

    def pack(tensor):  # what the backward keeps beyond the model's own parameters and buffers, once per tensor
        if tensor.data_ptr() not in held:
            saved[tensor.data_ptr()] = (tuple(tensor.shape), tensor.numel() * tensor.element_size())
        return tensor

    own, cls.forward = cls.forward, (plain if materialised else cls.forward)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = batch_loss(hf_model, ids)
        loss.backward()
    finally:
        cls.forward = own
    grads = {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.grad is not None}
    peft_model.zero_grad(set_to_none=True)
    return loss.item(), grads, list(saved.values())


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("autocast", [False, True])
def test_training_gradients_are_the_masked_expression_s_without_saving_its_weights(family, autocast):
    lm, modules = _randomly_pruned(family)
    peft_model = _masked(lm, modules)
    ids = _ids(lm)
    loss, grads, saved = _loss_and_grads(peft_model, lm.model, ids, autocast, materialised=False)
    loss_ref, grads_ref, saved_ref = _loss_and_grads(peft_model, lm.model, ids, autocast, materialised=True)
    assert loss == pytest.approx(loss_ref, rel=1e-6)
    assert grads.keys() == grads_ref.keys() and len(grads) == 2 * len(modules)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads_ref[name], rtol=1e-4, atol=1e-6)
    # The plain expression saves effective weights (and their keep patterns) for the backward pass; the own
    # backward saves no weight-shaped tensor at all, only activations (it rebuilds each weight when it needs it).
    shapes = {tuple(m.weight.shape) for m in modules.values()} | {tuple(m.weight.shape[::-1]) for m in modules.values()}
    assert any(shape in shapes for shape, _ in saved_ref)
    assert not any(shape in shapes for shape, _ in saved), [shape for shape, _ in saved]
    assert sum(size for _, size in saved) < sum(size for _, size in saved_ref)


def test_plain_lora_merge_would_fill_the_zeros():
    from peft import LoraConfig, get_peft_model

    lm, modules = _randomly_pruned("llama")
    zeros = sum(int((m.weight == 0).sum()) for m in modules.values())
    plain = get_peft_model(lm.model, LoraConfig(r=2, lora_alpha=4, target_modules=list({n.split(".")[-1]
                                                                                        for n in modules})))
    _randomise_lora_b(plain)
    merged = plain.merge_and_unload()
    after = sum(int((merged.get_submodule(n).weight == 0).sum()) for n in modules)
    assert after < zeros / 100  # the dense delta filled (almost) every pruned weight in


def test_only_linear_targets_and_a_positive_rank():
    lm, modules = _randomly_pruned("llama")
    with pytest.raises(ConfigError, match="rank"):
        masked_lora.lora_config(list(modules), 0)
    with pytest.raises(ConfigError, match="target"):
        masked_lora.lora_config([], 2)
    peft_model = _masked(lm, modules)
    assert set(masked_lora.masked_modules(peft_model)) == {f"base_model.model.{n}" for n in modules}
    assert masked_lora.trainable_parameters(peft_model) == sum(2 * sum(m.weight.shape) for m in modules.values())


# ------------------------------------------------------------------------------------------------ adapters

def test_adapter_round_trips_onto_a_freshly_pruned_model(tmp_path):
    spec = _spec()
    result = run_recovery(spec, loaded=tiny_model("llama", layers=2), out_dir=tmp_path / "out",
                          merged_dir=tmp_path / "merged")
    folder = tmp_path / "out" / "adapter"
    assert result["adapter"]["folder"] == str(folder)
    assert {p.name for p in folder.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "ranks.json"}
    assert result["sparsity"]["merged"] == result["sparsity"]["before"] and result["sparsity"]["pruned_weights_zero"]
    assert result["adapter"]["bytes"] == sum((folder / f).stat().st_size for f in masked_lora_files())

    fresh = tiny_model("llama", layers=2)
    pruned, record = pruned_copy(fresh, spec, PROTOCOL, calibration_ids(fresh, PROTOCOL))
    assert record["sparsity"] == result["sparsity"]["before"]
    peft_model = masked_lora.load_adapter(pruned.model, folder)
    masked_lora.masked_modules(peft_model)
    ids = _ids(fresh)
    with peft_model.disable_adapter():
        bare = _logits(peft_model, ids)
    loaded = _logits(peft_model, ids)
    assert not torch.allclose(loaded, bare, atol=1e-4)  # the trained adapter is not a no-op

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    torch.testing.assert_close(loaded, _logits(merged, ids), rtol=1e-5, atol=1e-5)

    # The mask written next to the adapter re-creates the pruned model from the dense one (the delta's home).
    from pruning_core.mask_files import apply_mask_dir

    assert result["mask_dir"] == str(tmp_path / "out" / "mask")
    again = tiny_model("llama", layers=2)
    apply_mask_dir(again, result["mask_dir"], permanent=True)
    on_mask = masked_lora.load_adapter(again.model, folder)
    torch.testing.assert_close(_logits(on_mask, ids), _logits(merged, ids), rtol=1e-5, atol=1e-5)


def test_adapter_of_an_exported_mask_loads_onto_the_freshly_masked_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from pruning_core.mask_files import apply_mask_dir, save_masks

    dense = tiny_model("llama", layers=2)
    generator = torch.Generator().manual_seed(5)
    masks = {n: torch.rand(m.weight.shape, generator=generator) > 0.4
             for n, m in dense.adapter.prunable_modules(dense.model).items()}
    save_masks(masks, tmp_path / "mask", {"method": "random", "structure": "unstructured",
                                          "model": {"name": dense.name, "fingerprint": dense.fingerprint}})
    result = run_recovery(_spec(mask_dir=str(tmp_path / "mask")), loaded=dense, out_dir=tmp_path / "out",
                          merged_dir=tmp_path / "merged")
    assert result["pruned"]["source"] == "mask" and result["sparsity"]["pruned_weights_zero"]
    assert result["sparsity"]["merged"] == pytest.approx(0.4, abs=0.02)

    fresh = tiny_model("llama", layers=2)
    apply_mask_dir(fresh, tmp_path / "mask", permanent=True)
    peft_model = masked_lora.load_adapter(fresh.model, tmp_path / "out" / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    ids = _ids(fresh)
    torch.testing.assert_close(_logits(peft_model, ids), _logits(merged, ids), rtol=1e-5, atol=1e-5)


def masked_lora_files():
    from pruning_core.recovery.run import ADAPTER_FILES

    return ADAPTER_FILES


def test_swap_adapter_switches_without_reloading_and_stays_masked(tmp_path):
    lm, modules = _randomly_pruned("llama")
    first_targets = [n for n in modules if n.endswith("q_proj")]
    ids = _ids(lm)
    # Two adapters on different module sets: the second adapts modules the first left alone.
    for name, targets, seed in (("first", first_targets, 1), ("second", list(modules), 2)):
        other, _ = _randomly_pruned("llama")
        peft_model = masked_lora.attach(other.model, masked_lora.lora_config(targets, 2))
        _randomise_lora_b(peft_model, seed)
        peft_model.save_pretrained(str(tmp_path / name))
    peft_model = masked_lora.load_adapter(lm.model, tmp_path / "first")
    base_weight = lm.model.get_submodule("model.layers.0.mlp.down_proj").weight
    first = _logits(peft_model, ids)
    masked_lora.swap_adapter(peft_model, tmp_path / "second", "second")
    second = _logits(peft_model, ids)
    assert not torch.allclose(first, second, atol=1e-4)
    layers = masked_lora.masked_modules(peft_model)  # the newly adapted modules are masked too
    assert sum("second" in m.lora_A for m in layers.values()) == len(modules)
    down = layers["base_model.model.model.layers.0.mlp.down_proj"]
    assert down.get_base_layer().weight is base_weight  # the base model was not reloaded
    assert bool((down.get_delta_weight("second")[base_weight == 0] == 0).all())
    masked_lora.swap_adapter(peft_model, tmp_path / "first", "default")
    torch.testing.assert_close(_logits(peft_model, ids), first, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="adapter_config.json"):
        masked_lora.swap_adapter(peft_model, tmp_path / "nowhere", "third")


# ------------------------------------------------------------------------------------------------ training

def test_recovery_lowers_the_training_loss():
    spec = _spec(method="wanda", rank=4, train={**TRAIN, "steps": 20, "lr": 1e-2, "batch_size": 2, "warmup": 2})
    result = run_recovery(spec, loaded=tiny_model("llama", layers=2))
    losses = [loss for _, loss in result["history"]["loss"]]
    assert len(losses) == 20 and result["history"]["steps_done"] == 20
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.1, losses
    assert result["sparsity"]["pruned_weights_zero"] and result["sparsity"]["merged"] == result["sparsity"]["before"]


def test_a_time_budget_plans_the_steps_that_fit_and_is_not_overrun():
    from pruning_core.recovery.train import TrainConfig, train_adapter, training_windows
    from pruning_core.recovery import masked_lora

    class StepClock:
        """Each training step takes exactly `step_s` seconds, however busy the machine is."""

        def __init__(self, step_s: float):
            self.now, self.step_s = 0.0, step_s

        def __call__(self) -> float:  # called once before and once after each step: each reading is a step later
            self.now += self.step_s
            return self.now

    loaded = tiny_model("llama", layers=2)
    names = list(loaded.adapter.prunable_modules(loaded.model))
    peft_model = masked_lora.attach(loaded.model, masked_lora.lora_config(names, 2))
    windows = training_windows(torch.randint(0, 100, (4000,)), 32, 2 * 10_000, 0)
    config = TrainConfig(steps=10_000, batch_size=2, seqlen=32, dtype="float32", max_seconds=5.0)
    history = train_adapter(peft_model, loaded.model, windows, config, clock=StepClock(0.5))
    assert history.stopped == "time budget"
    assert history.steps_done == 10 and history.planned_steps == 10  # 10 steps of 0.5 s fit in 5 s, re-planned
    assert history.seconds == pytest.approx(5.0)  # stopped before a step that would end past the budget


def test_cancelled_recovery_resumes_from_its_checkpoint(tmp_path):
    spec = _spec()
    cancel_at = "recovery step 3/"

    def cancel(fraction, message):
        if message.startswith(cancel_at):
            raise JobCancelled("cancelled by the test")

    store = Store(tmp_path / "store.sqlite")
    with pytest.raises(JobCancelled):
        run_recovery(spec, loaded=tiny_model("llama", layers=2), store=store, progress=cancel)
    messages = []
    resumed = run_recovery(spec, loaded=tiny_model("llama", layers=2), store=store,
                           progress=lambda f, m: messages.append(m))
    history = resumed["history"]
    assert history["resumed_from"] == 3 and history["steps_done"] == TRAIN["steps"]
    assert not any(m.startswith(("recovery step 1/", "recovery step 3/")) for m in messages)  # not redone
    assert any(m.startswith("recovery step 4/") for m in messages)
    # The same training as an uninterrupted run: optimizer, schedule and adapter state all came back.
    straight = run_recovery(spec, loaded=tiny_model("llama", layers=2), store=Store(tmp_path / "other" / "store.sqlite"))
    assert straight["history"]["resumed_from"] == 0
    assert [s for s, _ in history["loss"]] == list(range(1, TRAIN["steps"] + 1))
    assert [loss for _, loss in history["loss"]] == pytest.approx([loss for _, loss in straight["history"]["loss"]],
                                                                  rel=1e-5)
    assert run_recovery(spec, loaded=tiny_model("llama", layers=2), store=store)["from_store"]


def test_step_wise_recovery_reaches_the_final_sparsity():
    spec = _spec(schedule=(0.3,), sparsity=0.5, train={**TRAIN, "steps": 4})
    result = run_recovery(spec, loaded=tiny_model("llama", layers=2))
    assert [round(s["sparsity"], 2) for s in result["stages"]] == [0.3, 0.5]
    assert [s["steps"] for s in result["stages"]] == [2, 2]
    assert result["sparsity"]["merged"] == result["sparsity"]["before"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("changes,message", [
    (dict(schedule=(0.5, 0.3), sparsity=0.6), "must rise"),
    (dict(schedule=(0.3, 0.3), sparsity=0.6), "must rise"),
    (dict(schedule=(0.3, 0.6), sparsity=0.6), "below the final"),
    (dict(schedule=(-0.1,), sparsity=0.6), "between 0 and"),
    (dict(schedule=(0.3,), structure="2:4"), "unstructured"),
    (dict(schedule=(0.3,), mask_dir="."), "method and a final sparsity"),
    (dict(rank_allocation="sensitivity"), "sensitivity map"),
    (dict(rank_allocation="random"), "Unknown rank allocation"),
    (dict(train={"epochs": 2}), "Unknown training settings"),
    (dict(mask_dir=".", structured_dir="."), "not both"),
])
def test_bad_specs_are_refused_before_any_work(changes, message):
    with pytest.raises(ConfigError, match=message):
        _spec(**changes).validate()


# ------------------------------------------------------------------------------------------------ ranks

def test_greedy_ranks_on_a_hand_example():
    # Costs per rank: a 8, b 4, c 16. Value per parameter: a0 2, b0 2, a1 1, b1 .25, a2 .125, c0 .006.
    shapes = {"a": (4, 4), "b": (2, 2), "c": (8, 8)}
    gains = {"a": [16, 8, 1], "b": [8, 1], "c": [0.1]}
    # Budget 16: {a: 2} gains 24, {a: 1, b: 2} gains 25 (the optimum); c never pays.
    assert ranks.greedy_ranks(gains, shapes, 16, max_rank=3) == {"a": 1, "b": 2}
    assert ranks.greedy_ranks(gains, shapes, 12, max_rank=3) == {"a": 1, "b": 1}
    assert ranks.greedy_ranks(gains, shapes, 100, max_rank=1) == {"a": 1, "b": 1, "c": 1}


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_gradient_and_sensitivity_plans_stay_within_the_uniform_budget(rank):
    lm, modules = _randomly_pruned("llama")
    lm.model.model.embed_tokens.weight.requires_grad_(False)
    before = {n: p.requires_grad for n, p in lm.model.named_parameters()}
    ids = _ids(lm)
    grads = ranks.masked_gradients(lm.model, list(modules), [ids[:1], ids[1:]], lambda b: batch_loss(lm.model, b))
    for name, module in modules.items():
        assert bool((grads[name][module.weight == 0] == 0).all())  # the adapter cannot move pruned weights
        assert module.weight.grad is None
    assert {n: p.requires_grad for n, p in lm.model.named_parameters()} == before
    shapes = {n: tuple(m.weight.shape) for n, m in modules.items()}
    uniform = ranks.uniform_plan(shapes, rank)
    costs = {n: float(i % 5) for i, n in enumerate(modules)}  # some modules cost nothing
    for plan in (ranks.gradient_plan(grads, rank), ranks.sensitivity_plan(costs, shapes, rank)):
        assert plan.budget == uniform.budget == uniform.parameters
        assert plan.parameters == sum(r * ranks.rank_cost(shapes[n]) for n, r in plan.ranks.items())
        assert 0 < plan.parameters <= plan.budget, plan.allocation
        assert all(1 <= r <= 4 * rank for r in plan.ranks.values())
    sensitivity = ranks.sensitivity_plan(costs, shapes, rank)
    top = max(costs, key=costs.get)
    assert sensitivity.ranks[top] >= max(sensitivity.ranks.get(n, 0) for n in costs if costs[n] < costs[top])
    with pytest.raises(ConfigError, match="positive cost"):
        ranks.sensitivity_plan({n: 0.0 for n in modules}, shapes, rank)


def test_gradient_ranks_spend_the_budget_where_the_gradient_is():
    generator = torch.Generator().manual_seed(0)
    grads = {"big": torch.randn(8, 8, generator=generator) * 10, "small": torch.randn(8, 8, generator=generator)}
    plan = ranks.gradient_plan(grads, 2)
    assert plan.ranks["big"] > plan.ranks.get("small", 0) and plan.parameters <= plan.budget


# ------------------------------------------------------------------------------------------------ CLI

CLI_ARGS = ["recover", "--model", "tiny-llama", "--calib", "news", "--corpus", "news", "--eval-corpora",
            "news,pydocs", "--calib-windows", "4", "--seqlen", "32", "--eval-seqlen", "32",
            "--eval-windows", "2", "--steps", "4", "--batch-size", "2", "--rank", "2", "--lr", "5e-3",
            "--dtype", "float32", "--no-store"]
SETTING = ["--method", "magnitude", "--sparsity", "0.5"]


def test_cli_recover_writes_adapter_merged_model_and_result(tmp_path, capsys):
    from pruning_core.cli.main import main

    out = tmp_path / "out"
    assert main([*CLI_ARGS, *SETTING, "--merged", "--out", str(out)]) == 0
    result = json.loads((out / "recovery.json").read_text())
    assert set(result["recovered_ppl"]) == {"news", "pydocs"}
    assert result["history"]["steps_done"] == 4 and result["spec"]["method"] == "magnitude"
    assert result["sparsity"]["pruned_weights_zero"]
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "merged-model" / "config.json").exists()
    report = (out / "report.md").read_text()  # the dashboard's report, written by the CLI too
    assert "Recovery" in report and "merged-model/config.json" in report
    printed = capsys.readouterr().out
    for text in ("news", "pydocs", "merged sparsity", "adapter"):
        assert text in printed, printed


def test_cli_recover_refuses_bad_input_in_one_sentence(tmp_path, capsys):
    from pruning_core.cli.main import EXIT_BAD_INPUT, main

    out = tmp_path / "out"
    out.mkdir()
    (out / "recovery.json").write_text("previous")
    args = [*CLI_ARGS, *SETTING, "--schedule", "0.6,0.3", "--out", str(out)]
    assert main(args) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if not line.startswith("[")]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "must rise" in errors[0], err
    assert (out / "recovery.json").read_text() == "previous"
    shutil.rmtree(out)
    assert main([*CLI_ARGS, "--mask", str(tmp_path / "none"), "--out", str(out)]) == EXIT_BAD_INPUT
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "mask").mkdir()
    assert main([*CLI_ARGS, *SETTING, "--mask", str(tmp_path / "mask"), "--out", str(out)]) == EXIT_BAD_INPUT
    assert "--mask" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ the catalog

@pytest.fixture(scope="module")
def two_recoveries(tmp_path_factory):
    """A store holding two real recoveries of the tiny model (magnitude 50 %, then step-wise to 40 %)."""
    home = tmp_path_factory.mktemp("catalog")
    store = Store(home / "prunescope.sqlite")
    loaded = tiny_model("llama", layers=2)
    first = run_recovery(_spec(eval_corpora=("news", "pydocs")), loaded=loaded, store=store)
    second = run_recovery(_spec(sparsity=0.4, schedule=(0.2,), train={**TRAIN, "steps": 4}), loaded=loaded,
                          store=store)
    return home, first, second, loaded.fingerprint


def test_list_adapters_lists_the_stored_recoveries_newest_first(two_recoveries, tmp_path):
    from pruning_core.recovery.catalog import list_adapters
    from pruning_core.recovery.run import adapter_folder

    home, first, second, fingerprint = two_recoveries
    store = Store(home / "prunescope.sqlite")
    rows = list_adapters(store)
    assert [r["key"] for r in rows] == [second["key"], first["key"]]
    newest, oldest = rows
    assert oldest["setting"] == first["pruned"]["description"] and "50%" in oldest["setting"]
    assert newest["schedule"] == [0.2] and newest["steps"] == 4 and oldest["steps"] == TRAIN["steps"]
    assert oldest["fingerprint"] == fingerprint and oldest["train_corpus"] == "news"
    assert oldest["recovered_ppl"] == first["recovered_ppl"] and set(oldest["recovered_ppl"]) == {"news", "pydocs"}
    assert oldest["pruned_ppl"] == first["pruned_ppl"] and oldest["dense_ppl"] == first["dense_ppl"]
    assert oldest["rank_allocation"].startswith("uniform, rank 2 on")
    assert oldest["folder"] == str(adapter_folder(store, first["key"])) and oldest["bytes"] == first["adapter"]["bytes"]
    assert oldest["created"] == first["created"] < newest["created"]
    assert list_adapters(store, model_fingerprint="another model") == []
    assert len(list_adapters(store, model_fingerprint=fingerprint)) == 2
    # A copy of the store whose newest adapter folder was deleted lists only the other one.
    copy = tmp_path / "copy"
    shutil.copytree(home, copy)
    shutil.rmtree(copy / "adapters" / second["key"])
    assert [r["key"] for r in list_adapters(Store(copy / "prunescope.sqlite"))] == [first["key"]]


def test_cli_recover_list_prints_the_adapters_without_out_or_setting(two_recoveries, tmp_path, monkeypatch, capsys):
    from pruning_core.cli.main import EXIT_BAD_INPUT, main

    home, first, second, _ = two_recoveries
    monkeypatch.setenv("PRUNESCOPE_HOME", str(home))
    assert main(["recover", "--list"]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].startswith("created (UTC)") and len(lines) == 5, printed
    assert second["key"][:12] in lines[1] and "step-wise 20% -> " in lines[1]  # newest first
    assert first["key"][:12] in lines[3] and first["pruned"]["description"] in lines[3]
    assert f"news {first['pruned_ppl']['news']:,.2f} -> {first['recovered_ppl']['news']:,.2f}" in lines[4]
    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path / "empty"))
    assert main(["recover", "--list"]) == 0
    assert "No recovery adapters in the store yet" in capsys.readouterr().out
    assert main(["recover", "--model", "tiny-llama"]) == EXIT_BAD_INPUT  # neither --out nor --list
    assert "--out DIR" in capsys.readouterr().err


def test_sensitivity_costs_follow_the_maps_curve_at_the_recovered_sparsity():
    from pruning_core.recovery.sensitivity_costs import module_costs

    lm = tiny_model("llama", layers=2)
    kinds = list(lm.adapter.module_kinds)

    def cell_map(sparsity, layers=(0, 1)):
        return {"layers": list(layers), "modules": kinds, "metric": "exact", "method": "wanda", "sparsity": sparsity,
                "values": [[(i + 1) * (j + 1) * sparsity ** 2 for j in range(len(kinds))] for i in layers]}

    costs = module_costs(lm, {"maps": [cell_map(0.4), cell_map(0.6)]}, 0.5)
    assert set(costs) == set(lm.adapter.prunable_modules(lm.model))
    # Cells grow as s^2: the power law through the two maps gives exactly (i + 1)(j + 1) 0.25 at 50 %.
    name = lm.adapter.qualified_name(1, kinds[-1])
    assert costs[name] == pytest.approx(2 * len(kinds) * 0.25) and max(costs, key=costs.get) == name
    with pytest.raises(ConfigError, match="no values for layers"):
        module_costs(lm, {"maps": [cell_map(0.4, (0,)), cell_map(0.6, (0,))]}, 0.5)
    with pytest.raises(ConfigError, match="two or more sparsities"):
        module_costs(lm, {"maps": [cell_map(0.4)]}, 0.5)


def test_the_share_of_the_gap_won_back_and_no_share_of_a_gap_within_noise():
    assert gap_won_back(20.0, 40.0, 26.0) == pytest.approx(0.7)
    assert gap_won_back(20.0, 40.0, 18.0) == pytest.approx(1.1)  # better than dense
    assert gap_won_back(20.0, 40.0, 44.0) == pytest.approx(-0.2)  # worse than pruned
    # pruning cost 0.05 % of dense: a 2 % recovery would read 4,000 %; no share is given
    assert gap_won_back(291.87, 291.94, 288.65) is None
    assert gap_won_back(20.0, 19.0, 18.0) is None


def test_a_checkpoint_that_would_run_code_is_refused_not_executed(tmp_path):
    from pruning_core.recovery.train import CHECKPOINT, _load_checkpoint

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):  # what a replaced checkpoint would carry: code run by a full unpickler
            return (marker.touch, ())

    torch.save({"key": "k", "payload": Payload()}, tmp_path / CHECKPOINT)
    with pytest.raises(ConfigError, match="cannot be read as plain tensors and values.*delete it"):
        _load_checkpoint(tmp_path, "k")
    assert not marker.exists()
