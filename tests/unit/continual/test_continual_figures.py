"""Continual figures on a hand-made result: the R heatmap (cells, text, diagonal outlined, one colour range for
every strategy), BWT / average bars with the sign convention in the axis title, mask overlap per step, the
strategies sorted by forgetting and the answer sentence computed from the numbers."""

from __future__ import annotations

import pytest

from pruning_core.continual import figures as cf


def hand_made() -> dict:
    """Three domains; latest forgets (BWT +3.5), copal little (+0.75), joint is the reference."""
    return {"domains": ["wiki", "news", "/tmp/uploads/abcdef123456-manuals.txt"],
            "dense_ppl": {"wiki": 10.0, "news": 12.0, "/tmp/uploads/abcdef123456-manuals.txt": 20.0},
            "bwt_note": "BWT = ...; positive = forgetting",
            "strategies": {
                "latest": {"continual": True, "R": [[11, 14, 25], [13, 13, 24], [15, 16, 21]], "bwt": 3.5,
                           "fwt": 2.0, "average": 52 / 3, "overlap": [0.5, 0.6], "rule": "newest only"},
                "copal": {"continual": True, "R": [[11, 14, 25], [11.5, 13, 24], [12, 13.5, 21]], "bwt": 0.75,
                          "fwt": 2.0, "average": 15.5, "overlap": [0.8, 0.9], "rule": "max rule"},
                "joint": {"continual": False, "R": [[12, 13, 22]] * 3, "bwt": 0.0, "fwt": 0.0, "average": 47 / 3,
                          "overlap": [1.0, 1.0], "rule": "all at once"}}}


def test_r_heatmap_has_steps_as_rows_domains_as_columns_text_and_the_diagonal_outlined():
    result = hand_made()
    fig = cf.r_matrix_figure(result, "copal", labels={"/tmp/uploads/abcdef123456-manuals.txt": "manuals.txt"})
    trace = fig["data"][0]
    assert trace["type"] == "heatmap" and trace["x"] == ["wiki", "news", "manuals.txt"]
    assert trace["y"] == ["after step 1 (wiki)", "after step 2 (news)", "after step 3 (manuals.txt)"]
    assert trace["z"] == [[11, 14, 25], [11.5, 13, 24], [12, 13.5, 21]]
    assert trace["text"][1][0] == "11.50" and trace["texttemplate"] == "%{text}"
    assert trace["meta"]["diagonal"] == [11, 13, 21]
    rects = [(s["x0"], s["y0"]) for s in fig["layout"]["shapes"]]
    assert rects == [(-0.5, -0.5), (0.5, 0.5), (1.5, 1.5)]  # one outline per diagonal cell
    assert "right after its own step" in trace["customdata"][2][2] and "before it arrived" in trace["customdata"][0][2]
    assert (trace["zmin"], trace["zmax"]) == (11, 25)  # the range of every strategy's R, not only copal's
    assert "BWT +0.75" in fig["layout"]["title"]["text"]
    assert "manuals.txt" in cf.r_matrix_figure(result, "latest")["data"][0]["x"][2]  # default: the file's name
    assert "reference, not continual" in cf.r_matrix_figure(result, "joint")["layout"]["title"]["text"]


def test_transfer_bars_state_the_sign_convention_and_carry_the_measured_values():
    fig = cf.transfer_figure(hand_made())
    bwt, average = fig["data"][0], fig["data"][1]
    assert bwt["y"] == [3.5, 0.75, 0.0] and bwt["x"][2] == "joint (reference)"
    assert average["y"] == pytest.approx([52 / 3, 15.5, 47 / 3]) and average["yaxis"] == "y2"
    assert "positive = forgetting" in fig["layout"]["yaxis"]["title"]["text"]
    assert fig["data"][2]["meta"]["value"] == pytest.approx(14.0)  # the dense average, dashed


def test_overlap_lines_per_strategy_per_step():
    fig = cf.overlap_figure(hand_made())
    assert [t["meta"]["strategy"] for t in fig["data"]] == ["latest", "copal", "joint"]
    assert fig["data"][1]["x"] == ["step 2 (news)", "step 3 (manuals.txt)"]
    assert fig["data"][1]["y"] == [0.8, 0.9] and fig["data"][2]["line"]["dash"] == "dot"


def test_every_figure_is_valid_plotly():
    go = pytest.importorskip("plotly.graph_objects")
    result = hand_made()
    for fig in (cf.r_matrix_figure(result, "latest"), cf.transfer_figure(result), cf.overlap_figure(result)):
        go.Figure(fig)  # validates every property


def test_rows_sort_by_forgetting_and_the_answer_follows_the_numbers():
    result = hand_made()
    assert [r["strategy"] for r in cf.strategy_rows(result)] == ["copal", "latest", "joint"]
    answer = cf.answer_sentence(result)
    assert answer.startswith("copal forgets least: BWT +0.75 perplexity points (positive = forgetting)")
    assert "latest forgets most (BWT +3.50" in answer and "joint" in answer and "15.67" in answer
    # Swap the figures: the sentence follows (never hard-coded).
    result["strategies"]["latest"]["bwt"], result["strategies"]["copal"]["bwt"] = -0.2, 4.0
    assert cf.answer_sentence(result).startswith("latest forgets least: BWT -0.20")
    one = {**result, "domains": ["wiki"]}
    assert "at least two domains" in cf.answer_sentence(one)


def test_report_tables():
    result = hand_made()
    headers, rows = cf.r_table(result, "latest", labels={})
    assert headers == ["perplexity on", "wiki", "news", "manuals.txt"]  # the upload by its own name
    assert rows[0] == ["dense model", "10.00", "12.00", "20.00"] and rows[3][0] == "after step 3 (manuals.txt)"
    summary = cf.summary_table(result)
    assert "positive = forgetting" in cf.SUMMARY_HEADERS[1]
    assert [r[0] for r in summary] == ["copal", "latest", "joint (reference, not continual)"]
    assert summary[1][1] == "+3.50" and summary[0][4] == "max rule"
