"""The Summary's headline and charts, driven by AppTest on stored sweep results (no model run needed for the
numbers): it leads with the recommended setting, says a broken point's change as a factor with a verdict
(never "+341459.1 %"), and draws perplexity on a log axis."""

from __future__ import annotations

import json
import time
import uuid

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

# The pages' test environment (tiny model, a temporary PRUNESCOPE_HOME, inline jobs) and helpers.
from tests.app.test_pages import PAGE, SMALL, app_env, ok  # noqa: E402,F401 - app_env is an autouse fixture

SETTINGS = {**SMALL, "eval_corpora": ["wiki"]}


def _point(method: str, sparsity: float, ppl: float) -> dict:
    return {"method": method, "structure": "unstructured", "target_sparsity": sparsity, "sparsity": sparsity,
            "ppl": {"wiki": ppl}, "prune_seconds": 1.0, "eval_seconds": 1.0, "propagation": "pruned"}


def stored_sweep() -> None:
    """A finished sweep job in the store: Wanda usable at 50 %, magnitude broken at 90 % (×3,400)."""
    from pruning_core.execution.store import Store

    result = {"model": {"name": "tiny", "fingerprint": "f"}, "dense": {"ppl": {"wiki": 18.02}},
              "protocol": {"calib": "news", "nsamples": 4, "seqlen": 32, "seed": 0, "eval_windows": 4,
                           "dtype": "float32", "propagation": "pruned"},
              "points": [_point("wanda", 0.3, 18.5), _point("wanda", 0.5, 19.76), _point("wanda", 0.7, 40.1),
                         _point("magnitude", 0.3, 19.0), _point("magnitude", 0.9, 61_530.0)]}
    now = time.time()
    Store().insert_job({"id": uuid.uuid4().hex, "key": uuid.uuid4().hex, "kind": "sweep",
                        "spec": {"model": "tiny-llama"}, "state": "done", "fraction": 1.0, "message": "done",
                        "created": now, "updated": now, "started": now - 1, "finished": now, "result": result,
                        "cancel_requested": 0})


def test_summary_leads_with_the_recommendation_and_names_a_broken_point_plainly():
    stored_sweep()
    at = AppTest.from_file(PAGE["summary"], default_timeout=120)
    at.session_state["settings"] = dict(SETTINGS)
    ok(at.run())
    texts = [str(m.value) for m in at.markdown]
    headline = next(t for t in texts if t.startswith("### "))
    assert "Recommended" in headline and "Wanda" in headline and "50%" in headline
    lead = next(t for t in texts if "goes from 18.02 to 19.76" in t)
    assert "+9.7 %" in lead
    per_method = next(t for t in texts if t.startswith("Per method"))
    assert "usable up to **50%**" in per_method
    assert "×3,400 (model broken)" in per_method
    # No absurd percentages anywhere on the page (61,530 / 18.02 would read "+341,359.5 %").
    assert not any("341" in t for t in texts)
    charts = at.get("plotly_chart")
    curves = json.loads(charts[0].proto.spec)
    assert curves["layout"]["yaxis"]["type"] == "log"
    assert curves["layout"]["yaxis"]["title"]["text"] == "perplexity"
