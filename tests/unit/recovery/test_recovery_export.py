"""Recovery figures, words, estimate and export on the tiny model: the charts draw the measured history with the
dense / pruned references, a step-wise run's histories follow one another on one step axis, the estimate scales a
measurement, and `export_recovery` writes the adapter, a merged model whose pruned weights are still zero, and a
report with its Recovery section."""

from __future__ import annotations

import json

import pytest
import torch

from pruning_core.errors import ConfigError
from pruning_core.recovery import figures as rf
from pruning_core.protocol import Protocol
from pruning_core.recovery.run import RecoverySpec, run_recovery

TRAIN = {"steps": 4, "batch_size": 2, "seqlen": 32, "eval_every": 2}


def _spec(**extra) -> RecoverySpec:
    return RecoverySpec(model="tiny-llama", protocol=Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=4),
                        method="wanda", sparsity=0.5, train_corpus="news", train=TRAIN, rank=2,
                        eval_corpora=("news", "wiki"), curve_windows=2, max_new_tokens=4, **extra)


@pytest.fixture(scope="module")
def result() -> dict:
    return run_recovery(_spec())


def test_figures_draw_the_measured_history_and_the_references(result):
    loss = rf.loss_figure(result)
    assert [t["meta"]["role"] for t in loss["data"]] == ["loss"]
    assert loss["data"][0]["x"] == [s for s, _ in result["history"]["loss"]] == [1, 2, 3, 4]
    assert loss["data"][0]["y"] == pytest.approx([v for _, v in result["history"]["loss"]])

    ppl = rf.perplexity_figure(result)
    for corpus in ("news", "wiki"):
        traces = {t["meta"]["role"]: t for t in ppl["data"] if t["meta"]["corpus"] == corpus}
        assert set(traces) == {"curve", "dense", "pruned", "recovered"}
        assert traces["curve"]["x"] == [0, 2, 4]
        assert traces["curve"]["y"] == pytest.approx([e[corpus] for _, e in result["history"]["evals"]])
        assert traces["dense"]["y"] == pytest.approx([result["dense_ppl"][corpus]] * 2)
        assert traces["pruned"]["x"] == [0, 4] and traces["pruned"]["line"]["dash"] == "dot"
        assert traces["recovered"]["x"] == [4] and traces["recovered"]["y"] == [result["recovered_ppl"][corpus]]
        assert traces["curve"]["line"]["color"] == traces["dense"]["line"]["color"]  # one colour per corpus
    import plotly.graph_objects as go

    go.Figure(loss), go.Figure(ppl)  # plotly validates every property: a typo in a spec fails here

    rows = {r["corpus"]: r for r in rf.before_after(result)}
    assert set(rows) == {"news", "wiki"}
    news = rows["news"]
    assert news["recovered"] == pytest.approx(result["recovered_ppl"]["news"])
    if news["pruned"] > news["dense"]:
        from pruning_core.recovery.run import MIN_GAP

        gap = news["pruned"] - news["dense"]
        # a share of a gap within noise is not given (the tiny model barely loses anything at 50 %)
        assert news["share"] == (pytest.approx((news["pruned"] - news["recovered"]) / gap)
                                 if gap >= MIN_GAP * news["dense"] else None)


def test_words_say_the_measured_facts(result):
    assert rf.sparsity_sentence(result) == ("Sparsity is exactly 50.0 % before and after merging the adapter: every "
                                            "pruned weight is still 0.0.")
    broken = {**result, "sparsity": {"before": 0.5, "merged": 0.42, "pruned_weights_zero": False}}
    assert "42.00 % after" in rf.sparsity_sentence(broken) and "no longer zero" in rf.sparsity_sentence(broken)
    assert "not saved" in rf.adapter_sentence(result)  # no store, no out_dir: no file, no size claimed
    summary = rf.ranks_summary(result["ranks"])
    assert summary["modules"] == 14 and summary["min"] == summary["max"] == 2  # 2 layers x 7 linears
    sentences = rf.recovery_sentences(result)
    assert sentences[0].startswith("A masked LoRA adapter was trained for 4 steps")
    assert any(s.startswith("Perplexity on wiki: dense") for s in sentences)


def test_step_wise_histories_follow_one_another():
    stage = lambda sparsity, losses, evals: {"sparsity": sparsity, "steps": len(losses),  # noqa: E731
                                             "history": {"loss": list(enumerate(losses, 1)), "evals": evals,
                                                         "steps_done": len(losses)}}
    result = {"dense_ppl": {"wiki": 10.0}, "pruned_ppl": {"wiki": 30.0}, "recovered_ppl": {"wiki": 15.0},
              "stages": [stage(0.3, [3.0, 2.9], [(0, {"wiki": 12.0}), (2, {"wiki": 11.5})]),
                         stage(0.5, [3.5, 3.2, 3.1], [(0, {"wiki": 30.0}), (3, {"wiki": 16.0})])]}
    loss = rf.loss_figure(result)
    assert [t["x"] for t in loss["data"]] == [[1, 2], [3, 4, 5]]
    assert [t["name"] for t in loss["data"]] == ["step 1: 30 % sparse", "step 2: 50 % sparse"]
    curve = next(t for t in rf.perplexity_figure(result)["data"] if t["meta"]["role"] == "curve")
    assert curve["x"] == [0, 2, 2, 5] and curve["y"] == [12.0, 11.5, 30.0, 16.0]
    assert rf.total_steps(result) == 5


def test_estimate_scales_a_measurement_and_respects_the_time_budget(result):
    from pruning_core.recovery.estimate import estimate_training, measured_seconds_per_token

    per_token = measured_seconds_per_token(result)
    assert per_token == pytest.approx(result["train_seconds"] / (4 * 2 * 32))
    measured = estimate_training(100, 4, 64, measured=result)
    assert measured["basis"] == "measured" and measured["seconds"] == pytest.approx(per_token * 100 * 4 * 64)
    by_speed = estimate_training(10, 2, 100, forward_tokens_per_s=1000.0)
    assert by_speed["basis"] == "throughput" and by_speed["seconds"] == pytest.approx(10 * 2 * 100 * 3 / 1000)
    capped = estimate_training(10, 2, 100, forward_tokens_per_s=1000.0, max_seconds=1.0)
    assert capped["capped"] and capped["seconds"] == 1.0
    with pytest.raises(ValueError):
        estimate_training(10, 2, 100)


def test_export_writes_adapter_merged_model_and_a_report_with_a_recovery_section(tmp_path):
    from transformers import AutoModelForCausalLM

    from pruning_core.recovery.export import export_recovery

    out = tmp_path / "export"
    written = export_recovery(None, _spec(), out)
    result = written["result"]
    adapter = out / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert result["adapter"]["bytes"] > 0 and result["adapter"]["fraction_of_model"] > 0

    merged = AutoModelForCausalLM.from_pretrained(out / "merged-model")
    weights = [m.weight for n, m in merged.named_modules() if ".layers." in n and isinstance(m, torch.nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(result["sparsity"]["merged"]) and zeros == pytest.approx(0.5)

    names = {f["name"] for f in written["files"]}
    assert "adapter/adapter_model.safetensors" in names and any(n.startswith("merged-model/") for n in names)
    html = (out / "report.html").read_text()
    assert '<h2 id="recovery">Recovery</h2>' in html and "gap won back" in html
    assert f"{result['recovered_ppl']['wiki']:.2f}" in html and "exactly 50.0 %" in html
    markdown = (out / "report.md").read_text()
    assert "## Recovery" in markdown and "sparsity after merging | 50.00 %" in markdown
    assert "adapter / model size" in markdown and "rank allocation | uniform: 14 linears" in markdown
    report = json.loads((out / "report.json").read_text())
    assert report["recovery"]["sparsity"]["pruned_weights_zero"] is True
    assert any("masked LoRA adapter was trained" in s for s in report["summary"])
    assert html.count('class="chart"') >= 2  # the loss and perplexity charts in the Recovery section

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's notes")
    with pytest.raises(ConfigError, match="PruneScope did not write"):
        export_recovery(None, _spec(), tmp_path / "mine")  # a user's folder is never written into


def test_a_rising_training_loss_is_said_in_the_report_and_a_falling_one_is_not():
    from pruning_core.recovery.figures import loss_trend_sentence, recovery_sentences

    rising = {"history": {"loss": [(i + 1, 2.0 + 0.01 * i) for i in range(40)], "steps_done": 40}}
    said = loss_trend_sentence(rising)
    assert said and "rose (2.015 -> 2.375 nats" in said and "learned nothing useful" in said
    assert said in recovery_sentences({**rising, "spec": {}, "sparsity": {}, "adapter": {}})
    falling = {"history": {"loss": [(i + 1, 3.0 - 0.01 * i) for i in range(40)], "steps_done": 40}}
    assert loss_trend_sentence(falling) is None
