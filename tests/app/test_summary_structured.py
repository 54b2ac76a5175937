"""The Summary's "Really smaller and faster" section, driven by AppTest: with a finished structured run of the
model (a real `run_structured` on the tiny model, speed measured), a table per point with the measured speed-ups
and the claims' sentences, beside the recommended unstructured setting's honest "no speed-up"; a run without
speed says "not measured"; without any structured run, one line pointing to the Structured page."""

from __future__ import annotations

import pytest

pytest.importorskip("streamlit")
from tests.app.apptest_helpers import (  # noqa: E402
    SMALL, insert_job, ok, page, stored_sweep, summary_kinds, text_of)

pytestmark = pytest.mark.usefixtures("app_env")  # tiny model, a temporary PRUNESCOPE_HOME, inline jobs

SETTINGS = {**SMALL, "eval_corpora": ["wiki"]}  # stored_sweep's corpus; the structured run evaluates news
SPEED = {"prefill_tokens": 16, "decode_tokens": 3, "decode_batches": [1], "repeats": 1, "dtypes": ["float32"]}
TITLE = "Really smaller and faster: structured pruning"


def _structured_run(speed: bool) -> dict:
    """A finished structured job of the tiny model in the store: a real run at 20 and 30 % of decoder
    parameters (timed when `speed`), stored as the dashboard's job stores it. Returns its result."""
    from pruning_core.protocol import Protocol
    from pruning_core.structured.run import StructuredSpec, run_structured

    protocol = Protocol(**{k: SMALL[k] for k in ("calib", "nsamples", "seqlen", "eval_windows", "seed", "dtype")})
    spec = StructuredSpec(model="tiny-llama", protocol=protocol, ratios=(0.2, 0.3), score="magnitude",
                          compensate=False, eval_corpora=("news",), speed=speed,
                          speed_settings=SPEED if speed else {}, max_new_tokens=0)
    result = run_structured(spec)
    insert_job("structured", result["spec"], "done", result)
    return result


def test_summary_shows_measured_structured_savings_beside_the_unstructured_no_speed_up():
    from pruning_core import claims
    from pruning_core.outputs.figures import perplexity_change
    from pruning_core.units import format_bytes

    stored_sweep()  # recommends Wanda at 50 %, unstructured
    result = _structured_run(speed=True)
    at = ok(page("summary", SETTINGS))
    assert TITLE in [str(s.value) for s in at.subheader]
    table = next(d.value for d in at.dataframe if "decoder parameters removed" in d.value.columns)
    assert list(table["decoder parameters removed"]) == ["0 % (dense)"] + [
        f"{p['measured_ratio']:.1%}" for p in result["points"]]
    assert list(table["perplexity (news)"])[1] == f"{result['points'][0]['ppl']['news']:,.2f}"
    assert "speed-up" not in table.columns  # every point was timed: no "not measured" column
    for phase in ("prefill at 16 tokens", "decode at batch 1"):
        measured = [f"{p['speed']['ratios']['float32'][phase]:.2f}x" for p in result["points"]]
        assert list(table[f"{phase} speed-up (fp32)"])[1:] == measured
    prose = text_of(at)
    dense = result["dense_ppl"]["news"]
    for point in result["points"]:  # each point's size and measured speed, in the claims module's words
        said = claims.structured_claims(point["sizes"], point["speed"])
        line = next(line for line in prose.splitlines() if said["size"] in line)
        assert said["speed"] in line and "Measured on" in said["speed"] and "dense -> pruned in one run" in said["speed"]
        # ... never without the quality it costs, in the same line
        assert f"({dense:,.2f} → {point['ppl']['news']:,.2f})" in line
    # In the table of each kind of pruning, the structured row carries its quality cost beside size and measured
    # speed: the highest ratio within +10 % on the corpus it measured (news), else the closest one.
    kinds = summary_kinds(at)
    setting, cost, size, speed = kinds["Structured"]
    changes = [(p["measured_ratio"], p["ppl"]["news"] / dense - 1, p) for p in result["points"]]
    within = [c for c in changes if c[1] <= 0.10]
    ratio, _change, chosen = max(within, key=lambda c: c[0]) if within else min(changes, key=lambda c: c[1])
    assert setting.startswith(f"{ratio:.1%} of decoder parameters removed")
    assert ("within +10 %" if within else "over +10 %") in setting
    assert cost == (f"**{perplexity_change(chosen['ppl']['news'], dense)}** on news (the corpus it measured) "
                    f"({dense:,.2f} → {chosen['ppl']['news']:,.2f})")
    assert speed.endswith("(measured)") or "(measured; machine busy" in speed
    assert f"{chosen['speed']['ratios']['float32']['decode at batch 1']:.2f}x" in speed
    from pruning_core.sizes.records import STRUCTURED, measured

    assert size.startswith(format_bytes(measured(chosen["sizes"], STRUCTURED)["weight_bytes"]))  # the file written
    assert "16-bit safetensors" in size
    assert list(kinds)[0] == "Unstructured · Wanda"  # beside the sweep's kinds, in one table
    # Beside it, the recommended setting's own speed sentence: unstructured zeros gain nothing.
    assert "The recommended setting (Wanda, unstructured, 50%): zeros, not removed" in prose
    assert claims.speed_sentence("unstructured") in prose
    assert "Remove whole heads and MLP channels on the **Structured** page" not in prose


def test_unmeasured_structured_run_says_so_and_no_run_points_to_the_structured_page():
    pointer = "Remove whole heads and MLP channels on the **Structured** page"
    empty = ok(page("summary", SETTINGS))  # no sweep, no structured run: the pointer under the budget search
    assert pointer in text_of(empty) and TITLE in [str(s.value) for s in empty.subheader]
    stored_sweep()
    assert pointer in text_of(ok(page("summary", SETTINGS)))

    _structured_run(speed=False)
    at = ok(page("summary", SETTINGS))
    table = next(d.value for d in at.dataframe if "decoder parameters removed" in d.value.columns)
    assert list(table["speed-up"])[1:] == ["not measured", "not measured"]
    prose = text_of(at)
    assert pointer not in prose and "not measured here" in prose
    assert not any(c.endswith("speed-up (fp32)") for c in table.columns)  # nothing estimated in their place
    assert summary_kinds(at)["Structured"][3] == "smaller matrices; not measured"
