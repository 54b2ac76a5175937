"""The Frontier page and the Summary show the speed measured in llama.cpp that the store links to a point, naming
the runtime and the machine, and "not measured in a runtime" for a point without one (never an estimate)."""

from __future__ import annotations

import pytest

pytest.importorskip("streamlit")
from tests.app.apptest_helpers import (  # noqa: E402
    FRONTIER_PROTOCOL, SMALL, insert_job, ok, page, stored_frontier, text_of)
from tests.unit.gguf.test_runtime_speed import stored_measurement  # noqa: E402

pytestmark = pytest.mark.usefixtures("app_env")  # tiny model, a temporary PRUNESCOPE_HOME, inline jobs

MACHINE = "llama.cpp (llama-cpp-python 0.3.36) on Test CPU (2 cores, 2 threads; avx2)"


def frontier_with_speeds() -> dict:
    """The helpers' stored frontier, its model's fingerprint known, with the dense F16 file (100 tokens/s decode)
    and the RTN 4-bit groups-of-32 layout (Q4_1, 250 tokens/s) measured and linked in the store."""
    from pruning_core.gguf.runtime_speed import link_point
    from pruning_core.store import Store

    frontier = stored_frontier()
    spec = {"model": "tiny-llama", "techniques": ["dense", "rtn:4:32:asym"], "protocol": FRONTIER_PROTOCOL}
    insert_job("frontier", spec, "done", {"spec": spec, "model": {"name": "tiny", "fingerprint": "fp-tiny"},
                                          "protocol": FRONTIER_PROTOCOL, "frontier": frontier, "measured": []})
    store = Store()
    keys = {row["technique"]: row["key"] for row in frontier["points"]}
    link_point(store, "fp-tiny", keys["tiny (16-bit)"], stored_measurement(store, "k16", "Test CPU", 100.0),
               "the dense model written as F16")
    link_point(store, "fp-tiny", keys["RTN 4-bit, groups of 32, asymmetric"],
               stored_measurement(store, "kq4", "Test CPU", 250.0), "the dense model written as GGUF Q4_1")
    return frontier


def test_the_frontier_table_shows_measured_speeds_and_who_measured_them():
    frontier_with_speeds()
    at = ok(page("frontier", {**SMALL, "eval_corpora": ["wiki", "news"]}))
    table = next(d.value for d in at.dataframe if "on the front" in d.value.columns)
    speeds = dict(zip(table["technique"], table["speed in a runtime (prefill / decode)"]))
    assert speeds["tiny (16-bit)"] == "400 / 100 tokens/s"
    # Linked to a stand-in (the dense model written as Q4_1), not its own file: the cell says so.
    assert speeds["RTN 4-bit, groups of 32, asymmetric"] == "1,000 / 250 tokens/s (the dense model in this GGUF type)"
    assert speeds["GPTQ 4-bit, groups of 64, symmetric"] == "not measured in a runtime"
    assert f"Speed measured in {MACHINE}" in text_of(at)


def test_the_summary_names_the_runtime_and_machine_beside_the_answers_speed():
    frontier_with_speeds()
    at = ok(page("summary", {**SMALL, "eval_corpora": ["wiki"]}))
    # +10 %: GPTQ 4-bit in groups of 64 answers; GGUF has no such layout, so it was not measured.
    assert "Speed: not measured in a runtime." in [str(m.value) for m in at.markdown]
    at.slider(key="summary_budget").set_value(2).run()
    ok(at)
    said = next(str(m.value) for m in at.markdown if str(m.value).startswith("In llama.cpp"))
    assert said == (f"In {MACHINE}: decode 250 tokens/s at batch 1, prefill 1,000 tokens/s (2.50x the dense "
                    "model's decode, 2.50x its prefill); the file timed: the dense model written as GGUF Q4_1.")


def test_without_a_measurement_the_frontier_says_so():
    stored_frontier()
    at = ok(page("frontier", {**SMALL, "eval_corpora": ["wiki", "news"]}))
    table = next(d.value for d in at.dataframe if "on the front" in d.value.columns)
    assert set(table["speed in a runtime (prefill / decode)"]) == {"not measured in a runtime"}
    assert "Speed: not measured in a runtime yet for any point" in text_of(at)
