"""Continual adapters on a tiny random model and three synthetic domains with disjoint alphabets: the selector
routes held-out windows to their domain, per-domain adapters stay bit-identical after later steps while the shared
one moves, every adapter merges without filling a pruned zero, R is T x T, a resumed run skips finished steps,
the job kind and `prunescope continual --adapters`."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from pruning_core.continual.adapters import ContinualAdaptersSpec, replay_rows, run_continual_adapters
from pruning_core.continual.domains import Domain
from pruning_core.continual.metrics import backward_transfer
from pruning_core.continual.selector import DomainSelector, fit_selector, pooled_states, route_accuracy
from pruning_core.errors import ConfigError
from pruning_core.jobs.runner import JOB_KINDS, resolve_job_function
from pruning_core.store import Store
from pruning_core.models.tiny import tiny_model
from pruning_core.protocol import Protocol
from pruning_core.recovery import masked_lora
from pruning_core.recovery.run import RecoverySpec, pruned_copy

PROTOCOL = Protocol(nsamples=4, seqlen=32, eval_windows=4, batch_size=4)
TRAIN = {"steps": 4, "batch_size": 2, "seqlen": 32, "lr": 1e-2, "warmup": 1, "dtype": "float32", "eval_every": 0}
# Disjoint character sets, so each domain's tokens are its own (the tiny tokenizer is byte-level).
ALPHABETS = {"lower.txt": "abcdefghijklm", "digits.txt": "0123456789+-*", "upper.txt": "NOPQRSTUVWXYZ"}


@pytest.fixture(scope="module")
def domain_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("domains")
    paths = []
    for name, chars in ALPHABETS.items():
        rng = random.Random(name)
        # No spaces: a separator shared by every domain would blur their windows' mean states.
        documents = ["".join(rng.choice(chars) for _ in range(200)) for _ in range(20)]
        (folder / name).write_text("\n\n".join(documents))
        paths.append(str(folder / name))
    return paths


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", layers=2)


def _spec(files, **changes) -> ContinualAdaptersSpec:
    base = dict(model="tiny-llama", protocol=PROTOCOL, domains=tuple(files), method="wanda", sparsity=0.5,
                train=dict(TRAIN), rank=2, replay=2)
    return ContinualAdaptersSpec(**{**base, **changes})


@pytest.fixture(scope="module")
def run(tiny, domain_files, tmp_path_factory):
    """One three-domain run with a store and an output folder: (result, store, out folder)."""
    folder = tmp_path_factory.mktemp("run")
    store = Store(folder / "s.sqlite")
    result = run_continual_adapters(_spec(domain_files), loaded=tiny, store=store, out_dir=folder / "out")
    return result, store, folder / "out"


def test_selector_routes_tiny_synthetic_domains(tiny, domain_files):
    fit = {f: pooled_states(tiny.model, Domain(f).calibration_ids(tiny, PROTOCOL)) for f in domain_files}
    held = {f: pooled_states(tiny.model, Domain(f).evaluation_ids(tiny, PROTOCOL)) for f in domain_files}
    assert all(h.shape == (4, 64) for h in held.values())
    for kind in ("centroid", "logistic"):
        selector = fit_selector(fit, kind)
        assert selector.accuracy(held) == 1.0, kind
        assert [selector.predict(held[f]).tolist() for f in domain_files] == [[0] * 4, [1] * 4, [2] * 4]
    # A selector that knows two domains sends the third one's windows somewhere, but scores only known domains.
    two = fit_selector({f: fit[f] for f in domain_files[:2]})
    assert two.accuracy({f: held[f] for f in domain_files[:2]}) == 1.0
    with pytest.raises(ConfigError, match="does not know"):
        two.accuracy(held)
    with pytest.raises(ConfigError, match="Unknown selector"):
        fit_selector(fit, "forest")


def test_selector_round_trips_and_route_accuracy_counts_own_domain(tiny, domain_files, tmp_path):
    fit = {f: pooled_states(tiny.model, Domain(f).calibration_ids(tiny, PROTOCOL)) for f in domain_files}
    selector = fit_selector(fit, "logistic")
    selector.save(tmp_path / "selector")
    again = DomainSelector.load(tmp_path / "selector")
    features = torch.cat(list(fit.values()))
    assert again.domains == selector.domains and torch.equal(again.predict(features), selector.predict(features))
    routes = {"a": torch.tensor([0, 0, 1]), "b": torch.tensor([1, 1, 1]), "c": torch.tensor([0])}
    assert route_accuracy(routes, ["a", "b"]) == pytest.approx(5 / 6)  # c is not a known domain: not counted
    assert route_accuracy(routes, ["x"]) is None


def test_replay_rows_share_the_rows_equally_among_seen_domains():
    own = torch.full((6, 3), 9)
    first, second = torch.full((2, 3), 1), torch.full((2, 3), 2)
    assert torch.equal(replay_rows(own, []), own)
    rows = replay_rows(own, [first, second])
    assert rows[:, 0].tolist() == [1, 2, 9, 1, 2, 9]
    assert own[:, 0].tolist() == [9] * 6  # the domain's own windows are not changed in place


def test_r_matrices_are_t_by_t_and_the_selector_routes_every_held_out_window(run, domain_files):
    result, _, _ = run
    T = len(domain_files)
    assert result["domains"] == domain_files and set(result["modes"]) == {"per_domain", "shared"}
    for mode, figures in result["modes"].items():
        for matrix in ("R", "R_oracle") if mode == "per_domain" else ("R",):
            R = figures[matrix]
            assert len(R) == T and all(len(row) == T and all(v > 1 for v in row) for row in R), (mode, matrix)
        assert figures["bwt"] == pytest.approx(backward_transfer(figures["R"]))
        assert figures["average"] == pytest.approx(sum(figures["R"][-1]) / T)
        assert [s["step"] for s in figures["steps"]] == [1, 2, 3]
    per_domain = result["modes"]["per_domain"]
    assert result["selector"]["accuracy"] == 1.0 and result["selector"]["prefix_accuracy"] is not None
    for t, step in enumerate(per_domain["steps"]):
        assert step["selector_accuracy"] == 1.0
        for i in range(t + 1):  # every held-out window of a seen domain went to its own adapter
            assert step["routes"][domain_files[i]][i] == PROTOCOL.eval_windows
            assert per_domain["R"][t][i] == per_domain["R_oracle"][t][i]
    # A per-domain adapter is only trained on its own step, so an earlier domain's figure does not move.
    R = per_domain["R_oracle"]
    assert R[1][0] == R[0][0] and R[2][0] == R[0][0] and R[2][1] == R[1][1]
    assert result["replay_windows"] == 2 * T
    shared = result["modes"]["shared"]["bwt"]
    assert result["forgetting_ratio"] == (per_domain["bwt"] / shared if shared > 0 else None)


def test_earlier_adapters_are_bit_identical_after_later_steps(run, domain_files):
    result, store, out = run
    stored = {(row["mode"], row["step"]): row for row in
              (json.loads(r["payload"]) for r in store.execute(
                  "SELECT payload FROM results WHERE kind = 'continual_adapters_step'"))}
    assert len(stored) == 2 * len(domain_files)
    for t, path in enumerate(domain_files):  # saved after the last step == stored right after its own step
        final = load_file(str(out / "adapters" / path.split("/")[-1] / "adapter_model.safetensors"))
        at_its_step = store.load_tensors(stored[("per_domain", t)]["adapter"])
        assert set(final) == set(at_its_step) and all(torch.equal(final[k], at_its_step[k]) for k in final)
    # The shared adapter kept training: its weights after step 1 are not the final ones.
    final = load_file(str(out / "adapters" / "shared" / "adapter_model.safetensors"))
    first = store.load_tensors(stored[("shared", 0)]["adapter"])
    assert any(not torch.equal(final[k], first[k]) for k in final)


def test_every_adapter_merges_without_filling_a_pruned_zero(run, tiny):
    result, _, out = run
    assert all(info["pruned_weights_zero"] for info in result["adapters"].values())
    assert (out / "selector" / "selector.json").is_file() and (out / "mask" / "manifest.json").is_file()
    for info in result["adapters"].values():
        # A fresh pruned copy from the saved mask, the saved adapter loaded onto it, merged for real.
        pruned, _ = pruned_copy(tiny, RecoverySpec(model="tiny-llama", mask_dir=str(out / "mask")), PROTOCOL, None)
        zeros = {n: m.weight == 0 for n, m in pruned.adapter.prunable_modules(pruned.model).items()}
        peft_model = masked_lora.load_adapter(pruned.model, info["folder"])
        assert any(bool(p.abs().sum() > 0) for n, p in peft_model.named_parameters() if "lora_B" in n)
        merged = peft_model.merge_and_unload()
        for name, zero in zeros.items():
            weight = merged.get_submodule(name).weight
            assert bool((weight[zero] == 0).all()), (info["folder"], name)


def test_a_resumed_run_skips_finished_steps(run, tiny, domain_files):
    result, store, _ = run
    again = run_continual_adapters(_spec(domain_files), loaded=tiny, store=store)
    assert again["work"]["steps_from_store"] == 2 * len(domain_files)
    assert again["work"]["train_seconds"] == 0.0 and again["work"]["evaluations"] == 0
    assert all(s["from_store"] for figures in again["modes"].values() for s in figures["steps"])
    for mode, figures in result["modes"].items():
        assert again["modes"][mode]["R"] == figures["R"]
    # Another replay setting changes the per-domain adapters after the first; the shared adapter ignores it.
    other = run_continual_adapters(_spec(domain_files, replay=0), loaded=tiny, store=store)
    assert [s["from_store"] for s in other["modes"]["per_domain"]["steps"]] == [True, False, False]
    assert all(s["from_store"] for s in other["modes"]["shared"]["steps"]) and other["replay_windows"] == 0


def test_specs_are_checked_and_the_job_kind_runs(domain_files, tmp_path):
    for changes, message in (({"modes": ("per_domain", "mixed")}, "modes"), ({"router": "vote"}, "router"),
                             ({"replay": -1}, "replay"), ({"train": {"epochs": 2}}, "training settings"),
                             ({"domains": (domain_files[0], domain_files[0])}, "more than once")):
        with pytest.raises(ConfigError, match=message):
            _spec(domain_files, **changes).validate()
    assert JOB_KINDS["continual_adapters"] == "pruning_core.continual.adapters:run_continual_adapters_job"
    spec = _spec(domain_files[:1], modes=("shared",), router="prefix")
    assert ContinualAdaptersSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).to_dict() == spec.to_dict()
    messages = []
    result = resolve_job_function("continual_adapters")(spec.to_dict(), Store(tmp_path / "s.sqlite"),
                                                        lambda f, m: messages.append(f))
    assert list(result["modes"]) == ["shared"] and len(result["modes"]["shared"]["R"]) == 1
    assert messages[-1] == 1.0


def test_cli_continual_adapters_writes_json_and_prints_r_bwt_and_accuracies(domain_files, tmp_path, capsys):
    from pruning_core.cli import main

    out = tmp_path / "out"
    status = main(["continual", "--adapters", "--model", "tiny-llama", "--domains", ",".join(domain_files[:2]),
                   "--nsamples", "4", "--seqlen", "32", "--eval-windows", "2", "--batch-size", "2",
                   "--train-steps", "2", "--rank", "2", "--replay", "1", "--out", str(out)])
    assert status == 0
    result = json.loads((out / "continual_adapters.json").read_text())
    assert set(result["modes"]) == {"per_domain", "shared"} and result["spec"]["replay"] == 1
    assert (out / "adapters" / "lower.txt" / "adapter_config.json").is_file()
    assert (out / "adapters" / "shared" / "adapter_model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert "per_domain" in printed and "shared" in printed and "positive = forgetting" in printed
    assert f"{result['modes']['shared']['bwt']:+.3f}" in printed and "lowest-prefix-loss router" in printed
    assert main(["continual", "--adapters", "--model", "tiny-llama", "--domains", "news,news",
                 "--out", str(out)]) == 2


def test_a_new_selector_fit_reroutes_stored_steps_without_training_again(run, tiny, domain_files, monkeypatch):
    """Stored adapters do not depend on how the selector is fit; their routed rows do, so those are re-evaluated."""
    from pruning_core.continual import adapters as module

    result, store, _ = run
    monkeypatch.setattr(module, "SELECTOR_FIT", {**module.SELECTOR_FIT, "steps": 7})
    other = run_continual_adapters(_spec(domain_files), loaded=tiny, store=store)
    assert other["work"]["train_seconds"] == 0.0 and other["work"]["steps_from_store"] == 2 * len(domain_files)
    assert other["work"]["evaluations"] > 0  # the per-domain rows, routed again
    assert other["modes"]["shared"]["R"] == result["modes"]["shared"]["R"]
    again = run_continual_adapters(_spec(domain_files), loaded=tiny, store=store)
    assert again["work"]["evaluations"] == 0  # stored with the fit they were routed by
    monkeypatch.undo()
    back = run_continual_adapters(_spec(domain_files), loaded=tiny, store=store)
    assert back["modes"]["per_domain"]["R"] == result["modes"]["per_domain"]["R"]  # the real fit routes as before
