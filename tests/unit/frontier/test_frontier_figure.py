"""The frontier chart and report section: log axes, one trace per family with its own marker, the front drawn
through exactly the front's points, the dense baseline, the answer ringed; the section's table has a row per
point with its measured bytes."""

from __future__ import annotations

from pruning_core.frontier.build import build_frontier
from pruning_core.frontier.figures import FAMILY_MARKERS, frontier_figure
from pruning_core.frontier.points import dense_point, quantized_point, sweep_point
from pruning_core.frontier.report import frontier_section
from pruning_core.outputs.sections import Figure, Table

DENSE = {"weight_bytes": 269_060_552}


def _frontier():
    def q(bits, group, size, wiki):
        return quantized_point({"setting": {"method": "gptq", "bits": bits, "group_size": group, "symmetric": True,
                                            "scale_dtype": "float16", "actorder": "static", "start": "dense"},
                                "bytes": {"compressed-tensors": {"weight_bytes": size}}, "ppl": {"wiki": wiki}})

    points = [dense_point({"wiki": 17.0}, DENSE, name="m"), q(8, None, 140_000_000, 17.05), q(4, 64, 79_000_000, 18.2),
              q(3, 64, 62_000_000, 24.0),
              sweep_point({"method": "wanda", "structure": "2:4", "sparsity": 0.5, "ppl": {"wiki": 30.0}}, DENSE),
              dense_point({"wiki": 21.0}, {"weight_bytes": 120_000_000}, name="m-small", family="smaller dense")]
    return build_frontier(points, ["wiki"], max_increase=0.10)


def test_the_chart_draws_each_family_the_front_the_baselines_and_the_answer():
    frontier = _frontier()
    figure = frontier_figure(frontier)
    assert figure["layout"]["xaxis"]["type"] == "log" and figure["layout"]["yaxis"]["type"] == "log"
    families = {t["meta"]["family"]: t for t in figure["data"] if t["meta"]["role"] == "family"}
    assert set(families) == {"dense", "smaller dense", "quantized", "N:M"}
    assert len({families[f]["marker"]["symbol"] for f in families}) == 4
    assert all(families[f]["marker"]["symbol"] == FAMILY_MARKERS[f][0] for f in families)
    front = next(t for t in figure["data"] if t["meta"]["role"] == "front")
    assert front["meta"]["keys"] == frontier["front"]
    assert front["x"] == sorted(front["x"]) and front["x"][0] == 62.0  # MB, smallest first
    answer = next(t for t in figure["data"] if t["meta"]["role"] == "answer")
    assert answer["meta"]["key"] == frontier["answer"]["key"] and answer["x"] == [79.0]
    assert figure["layout"]["shapes"][0]["y0"] == 17.0  # the dense perplexity as a dashed baseline
    # A baseline is judged like any point: 4-bit (79 MB, 18.2) is smaller and better than the smaller model.
    small = next(r for r in frontier["points"] if r["family"] == "smaller dense")
    assert not small["on_front"]


def test_the_report_section_carries_the_sentence_the_chart_and_a_row_per_point():
    frontier = _frontier()
    section = frontier_section(frontier)
    texts = [b.text for b in section.blocks if hasattr(b, "text")]
    assert frontier["answer"]["sentence"] in texts
    assert any(isinstance(b, Figure) for b in section.blocks)
    table = next(b for b in section.blocks if isinstance(b, Table))
    assert len(table.rows) == len(frontier["points"])
    assert table.rows[0][2] == "62.0 MB (62,000,000 B)"
