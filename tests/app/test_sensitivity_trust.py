"""A heatmap that cannot mislead, driven by AppTest on a tiny model (jobs inline: PRUNESCOPE_INLINE_JOBS=1):

* the Sensitivity page's default metric is "Automatic": the map shown says which refinement it is and its
  measured agreement with the exact metric, and the plain-language reading is shown for it;
* while an automatic map runs, the page shows the newest refinement with its (sampled) agreement;
* a proxy map whose measured agreement is below the threshold shows no plain-language reading and says why,
  on the Sensitivity page and on the Summary.
"""

from __future__ import annotations

import re

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from tests.app.apptest_helpers import SMALL, fake_map, insert_job, ok, page, stored_sweep, text_of  # noqa: E402

pytestmark = pytest.mark.usefixtures("app_env")


def session(name: str, jobs: dict | None = None) -> AppTest:
    # The Summary judges the stored sweep's corpus (wiki); the sensitivity jobs' specs are made with SMALL.
    settings = {**SMALL, "eval_corpora": ["wiki"]} if name == "summary" else SMALL
    return page(name, settings, timeout=180, **({"jobs": jobs} if jobs else {}))


def readings(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("**Reading:**")] + \
        [c.value for c in at.caption if c.value.startswith("Pruned with ")]


def test_the_default_map_is_the_refinement_with_its_measured_agreement_and_reading():
    at = ok(session("sensitivity"))
    assert at.multiselect(key="sens_metrics").value == ["auto"]  # a first-time user gets the refinement
    at.number_input(key="sens_probe").set_value(2)
    at.button(key="sens_run").click().run()
    ok(at)
    text = text_of(at)
    # The final view: the exact map, with the agreement between the two refinements measured over every cell.
    found = re.search(r"Refinement 2 of 2: exact loss increase — agreement between the refinements: "
                      r"(-?\d\.\d\d) over all cells", text)
    assert found, text
    from app.services import sensitivity
    assert float(found.group(1)) >= sensitivity.TRUSTED_AGREEMENT  # on this model the estimate ranks as exact does
    assert readings(at), "an exact map is read in plain words"
    # The refinement's first map, picked by hand, shows its measured agreement and (trusted) its reading.
    assert at.selectbox(key="sens_show_metric").value == "exact"
    at.selectbox(key="sens_show_metric").set_value("fisher").run()
    text = text_of(ok(at))
    found = re.search(r"Second-order estimate — agreement with the exact metric (-?\d\.\d\d) over all cells", text)
    assert found and float(found.group(1)) >= sensitivity.TRUSTED_AGREEMENT, text
    assert readings(at)


def test_a_running_map_shows_the_newest_refinement_and_its_sampled_agreement():
    from app.services import sensitivity
    from pruning_core.analysis.refinement import view_of
    from pruning_core.analysis.refinement import live_views_key
    from pruning_core.store import Store

    spec = sensitivity.sensitivity_spec(SMALL, "wanda", [0.5], ["auto"], 8)
    running = insert_job("sensitivity", spec, "running", fraction=0.4)
    measured = {"spearman": 0.91, "cells": 21, "scope": "sample of 21 cells (layers 0, 15, 29)", "against": "exact"}
    Store().put_result(live_views_key(spec), "sensitivity_views",
                       {"views": {"0.5": view_of(fake_map("fisher"), 1, measured)}})
    at = ok(session("sensitivity", {"sensitivity": running}))
    text = text_of(at)
    assert ("Refinement 1 of 2: second-order estimate — agreement with the exact metric 0.91 over a sample of "
            "21 cells (layers 0, 15, 29)") in text, text
    assert readings(at) and at.get("plotly_chart")
    # The same estimate before its agreement is high enough: drawn, but not read as advice.
    Store().put_result(live_views_key(spec), "sensitivity_views",
                       {"views": {"0.5": view_of(fake_map("fisher"), 1, {**measured, "spearman": 0.42})}})
    at = ok(session("sensitivity", {"sensitivity": running}))
    assert not readings(at)
    assert any("agreement 0.42 with the exact metric is too low" in w.value for w in at.warning), text_of(at)


def test_a_proxy_below_the_threshold_gets_no_reading_and_says_why():
    from app.services import sensitivity
    spec = sensitivity.sensitivity_spec(SMALL, "wanda", [0.5], ["reconstruction"], 8)
    result = {"maps": [fake_map("reconstruction")],
              "correlations": [{"sparsity": 0.5, "proxy": "reconstruction", "spearman": 0.31, "cells": 14,
                                "scope": "sample of 14 cells (layers 0, 1)"}]}
    done = insert_job("sensitivity", spec, "done", result)
    at = ok(session("sensitivity", {"sensitivity": done}))
    text = text_of(at)
    assert "Reconstruction error — agreement with the exact metric 0.31 over a sample of 14 cells" in text, text
    assert not readings(at)
    assert any("agreement 0.31 with the exact metric is too low to read this map as advice" in w.value
               for w in at.warning)
    assert at.get("plotly_chart"), "the map itself is still drawn"
    # The Summary applies the same rule to the map it picks.
    stored_sweep()
    summary = ok(session("summary"))
    assert not readings(summary)
    assert any("too low to read this map as advice" in w.value for w in summary.warning), text_of(summary)


def test_the_summary_prefers_a_trusted_proxy_to_an_untrusted_one():
    from app.services import sensitivity
    spec = sensitivity.sensitivity_spec(SMALL, "wanda", [0.5], ["fisher", "reconstruction"], 8)
    result = {"maps": [fake_map("reconstruction"), fake_map("fisher")],
              "correlations": [{"sparsity": 0.5, "proxy": "reconstruction", "spearman": 0.31, "cells": 14,
                                "scope": "all cells"},
                               {"sparsity": 0.5, "proxy": "fisher", "spearman": 0.93, "cells": 14,
                                "scope": "all cells"}]}
    insert_job("sensitivity", spec, "done", result)
    stored_sweep()
    summary = ok(session("summary"))
    assert "Second-order estimate — agreement with the exact metric 0.93 over all cells" in text_of(summary)
    assert readings(summary) and not summary.warning


def test_automatic_is_chosen_alone():
    from app.services import sensitivity
    from pruning_core.errors import ConfigError

    with pytest.raises(ConfigError, match="Automatic"):
        sensitivity.sensitivity_spec(SMALL, "wanda", [0.5], ["auto", "exact"], 8)
    assert sensitivity.sensitivity_spec(SMALL, "wanda", [0.5], ["auto"], 8)["metrics"] == ["auto"]
    assert "fisher" in sensitivity.SENSITIVITY_METRICS and "auto" in sensitivity.SENSITIVITY_METRICS


def test_an_estimate_is_read_from_its_measured_cells_and_an_exact_map_from_its_layers():
    from app.services.sensitivity import sensitivity_reading

    estimate = {"metric": "fisher", "method": "wanda", "sparsity": 0.5, "layers": [0, 1, 2], "modules": ["q", "down"],
                "values": [[0.1, 0.5], [0.2, 0.9], [0.0, 0.3]],
                "layer_values": [9.0, 0.0, 5.0]}  # an aggregate whose agreement was never measured: not read
    said = sensitivity_reading(estimate)
    assert "layer 1 down" in said and "layer 2 q" in said and "layers" not in said.split("modules are")[0]
    assert "9.0" not in said and "layer 0 and" not in said
    exact = {**estimate, "metric": "exact"}
    assert "layers 0 and 2" in sensitivity_reading(exact).split("sensitive;")[0]  # exact whole layers are read
