"""Continual pruning on tiny random models: R matrix and BWT arithmetic, the strategies' masks (joint on one
domain is a plain prune, every strategy agrees at T = 1, sequential masks only grow, copal keeps the max of
normalised importances), what copal and accumulated hold (statistics only), resume from the store, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from pruning_core.continual import Domain, DomainSequence, get_strategy, mask_overlap
from pruning_core.continual.accumulate import RunningStatistics
from pruning_core.continual.copal import copal_scores
from pruning_core.continual.metrics import average_perplexity, backward_transfer, forward_transfer, r_matrix
from pruning_core.continual.run import ContinualSpec, run_continual
from pruning_core.continual.strategies import STRATEGIES
from pruning_core.data import load_corpus_text
from pruning_core.errors import ConfigError
from pruning_core.jobs.runner import JOB_KINDS, resolve_job_function
from pruning_core.store import Store
from pruning_core.methods.wanda import wanda_scores
from pruning_core.models.tiny import tiny_model
from pruning_core.protocol import Protocol, calibration_ids
from pruning_core.prune import PruneConfig, collect_statistics, prune_model

PROTOCOL = Protocol(nsamples=4, seqlen=32, eval_windows=4, batch_size=4)
DOMAINS = ("wiki", "news", "pydocs")


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", layers=2)


@pytest.fixture(scope="module")
def stats_by_domain(tiny):
    """Dense Hessian statistics of each domain (they also serve Wanda: diag(H) holds act_sq)."""
    return {d: collect_statistics(tiny, Domain(d).calibration_ids(tiny, PROTOCOL), "hessian") for d in DOMAINS}


def config(method: str = "wanda") -> PruneConfig:
    return PruneConfig(method, sparsity=0.5, propagation="dense")


def same_masks(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)


def test_r_matrix_bwt_fwt_average_and_overlap_on_hand_made_values():
    rows = [{"a": 10.0, "b": 20.0, "c": 30.0}, {"a": 12.0, "b": 18.0, "c": 29.0}, {"a": 15.0, "b": 19.0, "c": 25.0}]
    R = r_matrix(rows, ["a", "b", "c"])
    assert R == [[10.0, 20.0, 30.0], [12.0, 18.0, 29.0], [15.0, 19.0, 25.0]]
    # BWT = ((15 - 10) + (19 - 18)) / 2 = 3 (positive = forgetting); FWT = ((20 - 18) + (29 - 25)) / 2 = 3.
    assert backward_transfer(R) == pytest.approx(3.0)
    assert forward_transfer(R) == pytest.approx(3.0)
    assert average_perplexity(R) == pytest.approx((15 + 19 + 25) / 3)
    assert backward_transfer([[7.0]]) == 0.0 and forward_transfer([[7.0]]) is None
    with pytest.raises(ConfigError):
        r_matrix(rows[:2], ["a", "b", "c"])
    with pytest.raises(ConfigError):
        average_perplexity([[1.0, 2.0]])
    before = {"m": torch.tensor([[True, False, False, True]])}   # pruned {1, 2}
    after = {"m": torch.tensor([[True, True, False, False]])}    # pruned {2, 3}
    assert mask_overlap(before, after) == pytest.approx(1 / 3)
    assert mask_overlap(before, before) == 1.0


def test_copal_scores_are_the_max_of_row_normalised_wanda_importances():
    torch.manual_seed(0)
    W = torch.randn(3, 5)
    a1, a2 = torch.rand(5) + 0.1, torch.rand(5) * 100 + 0.1  # domain 2 has far larger activations
    assert torch.equal(copal_scores(W, [a1]), wanda_scores(W, a1))  # one domain: Wanda bit for bit
    n1 = wanda_scores(W, a1) / wanda_scores(W, a1).mean(dim=1, keepdim=True)
    n2 = wanda_scores(W, a2) / wanda_scores(W, a2).mean(dim=1, keepdim=True)
    expected = torch.maximum(n1, n2) * wanda_scores(W, a1).mean(dim=1, keepdim=True)
    assert torch.allclose(copal_scores(W, [a1, a2]), expected, rtol=1e-5)
    # A column only domain 1 uses stays important although domain 2's activations are 100x larger elsewhere.
    W = torch.ones(1, 4)
    only_first = torch.tensor([4.0, 1.0, 1.0, 1e-8])
    only_second = torch.tensor([1e-8, 100.0, 100.0, 400.0])
    scores = copal_scores(W, [only_first, only_second])
    assert scores[0].argsort().tolist()[:2] == [1, 2]  # the two columns neither domain needs most are lowest


def test_domain_sequence_is_checked_before_any_work(tmp_path):
    assert DomainSequence("wiki, news").names == ["wiki", "news"]
    with pytest.raises(ConfigError, match="at least one domain"):
        DomainSequence([])
    with pytest.raises(ConfigError, match="more than once"):
        DomainSequence(["news", "wiki", "news"])
    with pytest.raises(ConfigError, match="cannot be read"):
        DomainSequence(["wiki", str(tmp_path / "missing.txt")])
    with pytest.raises(ConfigError, match="strategy"):
        ContinualSpec(domains=("news",), strategies=("latest", "newest")).validate()
    with pytest.raises(ConfigError, match="no calibration data"):
        ContinualSpec(domains=("news",), method="magnitude").validate()
    spec = ContinualSpec(model="tiny-llama", protocol=PROTOCOL, domains="news,pydocs", strategies="copal,joint",
                         eval_windows=2).validate()
    assert ContinualSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).to_dict() == spec.to_dict()
    assert spec.effective_protocol().eval_windows == 2 and spec.effective_protocol().calib == "news"
    assert JOB_KINDS["continual"] == "pruning_core.continual.run:run_continual_job"
    job = resolve_job_function("continual")
    messages = []
    result = job(ContinualSpec(model="tiny-llama", protocol=PROTOCOL, domains=("news",), strategies=("latest",),
                               eval_windows=2).to_dict(), Store(tmp_path / "s.sqlite"), lambda f, m: messages.append(f))
    assert result["strategies"]["latest"]["R"][0][0] > 1 and messages[-1] == 1.0


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_joint_on_one_domain_is_a_plain_prune(tiny, method):
    ids = calibration_ids(tiny, Domain("news").protocol(PROTOCOL))
    plain = prune_model(tiny, ids, config(method))
    joint = get_strategy("joint", method)
    joint.observe(collect_statistics(tiny, ids, get_strategy("joint", method).method.needs))
    result = joint.prune(tiny, config(method), None)
    assert same_masks(plain.masks, result.masks)
    assert result.sparsity == pytest.approx(0.5, abs=0.01)
    if method == "sparsegpt":
        assert all(torch.equal(plain.weights[n], result.weights[n]) for n in plain.weights)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_with_one_domain_every_strategy_gives_the_same_mask(tiny, stats_by_domain, method):
    masks = {}
    for name in STRATEGIES:
        strategy = get_strategy(name, method)
        strategy.observe(stats_by_domain["pydocs"])
        masks[name] = strategy.prune(tiny, config(method), None).masks
    reference = masks["latest"]
    assert all(same_masks(reference, m) for m in masks.values()), [n for n, m in masks.items()
                                                                   if not same_masks(reference, m)]


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_sequential_masks_only_grow_and_the_others_move(tiny, stats_by_domain, method):
    sequences = {name: [] for name in ("sequential", "latest", "copal", "accumulated")}
    for name, results in sequences.items():
        strategy, previous = get_strategy(name, method), None
        for domain in DOMAINS:
            strategy.observe(stats_by_domain[domain])
            previous = strategy.prune(tiny, config(method), previous)
            results.append(previous)
    steps = sequences["sequential"]
    for before, after in zip(steps, steps[1:]):
        for name, keep in after.masks.items():
            assert not (keep & ~before.masks[name]).any(), name  # nothing pruned before is kept again
        assert after.sparsity >= before.sparsity - 1e-9
        if after.weights is not None:
            assert all(torch.equal(w[~after.masks[n]], torch.zeros_like(w[~after.masks[n]]))
                       for n, w in after.weights.items())
    # The strategies that re-prune the dense model do change their mask as domains arrive.
    for name in ("latest", "copal", "accumulated"):
        results = sequences[name]
        assert mask_overlap(results[0].masks, results[-1].masks) < 1.0, name
    assert not same_masks(sequences["copal"][-1].masks, sequences["accumulated"][-1].masks) or method == "sparsegpt"


def _reachable(root) -> list:
    """Every object reachable from `root` through attributes, dicts, lists and tuples."""
    seen, out, todo = set(), [], [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        out.append(obj)
        if isinstance(obj, dict):
            todo.extend(obj.keys())
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            todo.extend(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.Tensor)):
            todo.extend(vars(obj).values())
    return out


@pytest.mark.parametrize("name", ["copal", "accumulated"])
def test_copal_and_accumulated_hold_statistics_only(tiny, stats_by_domain, name):
    strategy = get_strategy(name, "wanda")
    for domain in DOMAINS[:2]:
        strategy.observe(stats_by_domain[domain])
    strategy.prune(tiny, config(), None)
    held = _reachable(strategy)
    texts = [load_corpus_text(d, "calibration")[:200] for d in DOMAINS[:2]]
    strings = [o for o in held if isinstance(o, str)]
    assert not any(t[:60] in s or s in t and len(s) > 60 for s in strings for t in texts)
    tensors = [o for o in held if isinstance(o, torch.Tensor)]
    assert tensors and all(t.is_floating_point() for t in tensors), "token ids (integer tensors) are kept"
    assert max(t.dim() for t in tensors) <= 2  # vectors (in,) and, for Hessians, (in, in); no (n, seqlen) windows
    # None of the domains' own statistics objects is kept: only sums (accumulated) or norm vectors (copal).
    observed = {id(o) for d in DOMAINS[:2] for o in [stats_by_domain[d], *stats_by_domain[d].by_module.values()]}
    assert not observed & {id(o) for o in held}
    if name == "accumulated":
        assert strategy.running.domains == 2 and strategy.running._single is None
    else:
        assert all(len(v) == 2 and v[0].dim() == 1 for v in strategy.act_sq.values())


def test_running_mean_is_the_token_weighted_mean_of_the_domains(tiny, stats_by_domain):
    running = RunningStatistics("hessian")
    for domain in DOMAINS[:2]:
        running.add(stats_by_domain[domain])
    mean = running.mean()
    name = next(iter(mean.by_module))
    a, b = (stats_by_domain[d].by_module[name] for d in DOMAINS[:2])
    expected = (a.act_sq * a.tokens + b.act_sq * b.tokens) / (a.tokens + b.tokens)
    assert torch.allclose(mean.by_module[name].act_sq, expected, rtol=1e-5)
    expected_h = (a.hessian * a.tokens + b.hessian * b.tokens) / (a.tokens + b.tokens)
    assert torch.allclose(mean.by_module[name].hessian, expected_h, rtol=1e-4, atol=1e-6)
    # q/k/v read one input: the mean keeps one shared object, so SparseGPT still prunes them as a group.
    assert len({id(s) for s in mean.by_module.values()}) == len({id(s) for s in
                                                                 stats_by_domain["wiki"].by_module.values()})


def test_run_continual_resumes_from_the_store_and_saves_every_mask(tiny, tmp_path):
    store = Store(tmp_path / "s.sqlite")
    spec = ContinualSpec(model="tiny", protocol=PROTOCOL, domains=("news", "pydocs"),
                         strategies=("latest", "sequential", "copal", "joint"))
    first = run_continual(spec, loaded=tiny, store=store, out_dir=tmp_path / "out")
    assert first["domains"] == ["news", "pydocs"] and set(first["dense_ppl"]) == {"news", "pydocs"}
    for name, figures in first["strategies"].items():
        R = figures["R"]
        assert len(R) == 2 and all(len(row) == 2 and all(v > 1 for v in row) for row in R)
        assert figures["bwt"] == pytest.approx(R[1][0] - R[0][0])
        assert figures["average"] == pytest.approx(sum(R[1]) / 2) and len(figures["overlap"]) == 1
        for step in figures["steps"]:
            assert step["sparsity"] == pytest.approx(0.5, abs=0.01)
            manifest = json.loads((tmp_path / "out" / name / f"step-{step['step']}" / "manifest.json").read_text())
            assert manifest["continual"]["strategy"] == name and manifest["method"] == "wanda"
    # Step 1 of latest, sequential and copal is one mask (D1 alone): evaluated once; joint repeats its row.
    assert first["work"]["evaluations_reused"] >= 2
    assert first["strategies"]["joint"]["R"][0] == first["strategies"]["joint"]["R"][1]
    assert first["strategies"]["sequential"]["overlap"] == [1.0]
    again = run_continual(spec, loaded=tiny, store=store)
    assert all(step["from_store"] for figures in again["strategies"].values() for step in figures["steps"]
               if step["step"] == 1 or figures["continual"])
    assert again["work"]["evaluations"] == 0 and again["work"]["prune_seconds"] == 0.0
    assert {n: f["R"] for n, f in again["strategies"].items()} == {n: f["R"] for n, f in first["strategies"].items()}
    # A new strategy in the same run computes only its own steps.
    more = run_continual(ContinualSpec(**{**spec.__dict__, "strategies": ("latest", "accumulated")}),
                         loaded=tiny, store=store)
    assert [s["from_store"] for s in more["strategies"]["latest"]["steps"]] == [True, True]
    assert [s["from_store"] for s in more["strategies"]["accumulated"]["steps"]] == [False, False]


def test_an_interrupted_sequential_sparsegpt_run_continues_from_the_stored_model(tiny, tmp_path):
    store = Store(tmp_path / "s.sqlite")
    spec = ContinualSpec(model="tiny", protocol=PROTOCOL, domains=("news", "pydocs"), method="sparsegpt",
                         strategies=("sequential",))
    first = run_continual(spec, loaded=tiny, store=store)
    # Lose step 2, as if the run had been cancelled after step 1.
    rows = [r for r in store.execute("SELECT key, payload FROM results WHERE kind = 'continual_step'")
            if json.loads(r["payload"])["step"] == 1]
    assert len(rows) == 1
    store.delete_result(rows[0]["key"])
    resumed = run_continual(spec, loaded=tiny, store=store)
    steps = resumed["strategies"]["sequential"]["steps"]
    assert [s["from_store"] for s in steps] == [True, False]
    assert resumed["strategies"]["sequential"]["R"] == first["strategies"]["sequential"]["R"]


def test_owl_allocation_per_step_and_sequential_keeps_its_first_plan(tiny):
    spec = ContinualSpec(model="tiny", protocol=PROTOCOL, domains=("news", "wiki"), allocation="owl",
                         strategies=("sequential", "copal"))
    result = run_continual(spec, loaded=tiny)
    for figures in result["strategies"].values():
        assert all(step["sparsity"] == pytest.approx(0.5, abs=0.02) for step in figures["steps"])


def test_cli_writes_continual_json_and_prints_r_and_bwt(tmp_path, capsys):
    from pruning_core.cli import main

    out = tmp_path / "out"
    status = main(["continual", "--model", "tiny-llama", "--domains", "news,pydocs", "--method", "wanda",
                   "--sparsity", "0.5", "--strategies", "latest,copal,joint", "--nsamples", "4", "--seqlen", "32",
                   "--eval-windows", "2", "--batch-size", "4", "--out", str(out)])
    assert status == 0
    result = json.loads((out / "continual.json").read_text())
    assert list(result["strategies"]) == ["latest", "copal", "joint"]
    assert (out / "copal" / "step-2" / "masks.safetensors").is_file()
    printed = capsys.readouterr().out
    assert "BWT" in printed and "positive = forgetting" in printed
    assert f"{result['strategies']['copal']['bwt']:+.3f}" in printed
    assert main(["continual", "--model", "tiny-llama", "--domains", "news,news", "--out", str(out)]) == 2
