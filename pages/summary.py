"""Summary: one screen for a demo: the recommended setting for a quality budget, the headline, two charts.

The recommendation is the highest sparsity, among the points actually measured on the Curves page, whose
perplexity stays within the budget (e.g. at most +10 % over the dense model) on the chosen corpus.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable on its own: `streamlit run pages/summary.py`
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from app import charts, export_service, services, widgets  # noqa: E402
from app.charts import corpora_in  # noqa: E402

METHOD_NAMES = {"magnitude": "magnitude pruning", "wanda": "Wanda", "sparsegpt": "SparseGPT"}

settings = widgets.page_start(
    "Summary",
    "The answer in one screen: how far this model can be pruned for the quality you are "
    "willing to give up.",
    show_settings=False,
)

sweeps = [r["result"] for r in (widgets.guarded(services.recent_results, "sweep", settings["model"]) or [])]
results = services.merge_sweeps(sweeps)
if not results or not results.get("points"):
    st.info("Nothing measured yet: run a sweep on the **Curves** page (and a map on **Sensitivity**); the "
            "summary is built from those numbers only.", icon=":material/info:")
    st.stop()

c1, c2 = st.columns([3, 2])
budget = c1.slider("Quality budget: at most this much worse perplexity than the dense model", 1, 100, 10,
                   key="summary_budget", format="+%d %%")
corpora = corpora_in(results)
corpus = c2.selectbox("Judged on", corpora, key="summary_corpus")

rec = services.recommend(results, corpus, budget / 100.0)
dense = rec["dense_ppl"]
with st.container(border=True):
    if rec["best"] is None:
        st.markdown(f"### No measured setting stays within +{budget} %")
        st.markdown(f"The mildest measured point loses more than that on **{corpus}**. Try lower sparsities on "
                    "the Curves page, or a larger budget.")
    else:
        p = rec["best"]
        change = charts.perplexity_change(p["ppl"][corpus], dense)
        st.markdown(f"### Recommended: **{METHOD_NAMES.get(p['method'], p['method'])}**, **{p['structure']}**, "
                    f"**{p['sparsity']:.0%}** sparsity")
        st.markdown(f'<p class="ps-lead">At {p["sparsity"]:.0%} sparsity with {METHOD_NAMES.get(p["method"], p["method"])} '
                    f"the model's perplexity on {corpus} goes from {dense:,.2f} to {p['ppl'][corpus]:,.2f} "
                    f"(<b>{change}</b>), within your +{budget} % budget."
                    + "</p>", unsafe_allow_html=True)
        # Size and speed in the claims module's words: the What-if page and the report say exactly the same.
        gains = services.point_claims(results, p)
        st.markdown(" ".join(sentence for sentence in (gains["size"], gains["speed"]) if sentence))
        if st.button("Export this setting", key="summary_export", icon=":material/download:",
                     help="Opens the Export page with this method, structure, sparsity and propagation filled in."):
            export_service.send_to_export(p)
    # Per method: first what is usable (its highest sparsity within the budget), then where it ends (its
    # highest measured point), said as a factor with a verdict when the model is broken there.
    lines = []
    for method, _change, point in rec["per_method"]:
        name = METHOD_NAMES.get(method, method)
        within = rec["per_method_within"].get(method)
        usable = (f"usable up to **{within[1]['sparsity']:.0%}** ({within[1]['structure']}, "
                  f"{charts.perplexity_change(within[1]['ppl'][corpus], dense)} perplexity)"
                  if within is not None else f"no measured point within +{budget} %")
        line = f"- **{name}**: {usable}"
        if within is None or within[1] is not point:
            line += (f"; at {point['sparsity']:.0%} ({point['structure']}) perplexity "
                     f"{charts.perplexity_change(point['ppl'][corpus], dense)}")
        lines.append(line)
    if lines:
        st.markdown(f"Per method, on {corpus}:\n" + "\n".join(lines))

left, right = st.columns(2, gap="medium")
charts.show(charts.curves_chart(results, corpus), key="summary_curves", container=left,
            alt="Perplexity against sparsity")
# Every finished map (a refinement's final view where there is one) with its result's measured agreements.
candidates = []
for age, r in enumerate(widgets.guarded(services.recent_results, "sensitivity", settings["model"]) or []):
    views = r["result"].get("views") or []
    for m in r["result"].get("maps") or []:
        shown = next((v for v in views if v["metric"] == m["metric"] and v["sparsity"] == m["sparsity"]), m)
        candidates.append((shown, r["result"].get("correlations") or [], age))
if candidates:
    # The same trust rule as the Sensitivity page: an exact map first, else a proxy whose measured agreement
    # with exact is high enough, else the newest map with its reading withheld; then near 50 %, then newest.
    trust = {id(m): services.sensitivity_trust(m, c) for m, c, _ in candidates}
    chosen, _, _ = max(candidates, key=lambda t: (trust[id(t[0])]["trusted"], t[0]["metric"] == "exact",
                                                  -abs(float(t[0]["sparsity"]) - 0.5), -t[2]))
    charts.show(charts.heatmap_chart(chosen), key="summary_heatmap", container=right,
                alt="Sensitivity heatmap")
    verdict = trust[id(chosen)]
    right.caption(verdict["label"])
    if verdict["trusted"]:
        right.caption(services.sensitivity_reading(chosen))
    else:
        right.warning(verdict["withheld"], icon=":material/do_not_disturb_on:")
else:
    right.info("Compute a sensitivity map on the **Sensitivity** page to see where the model is fragile.",
               icon=":material/info:")
