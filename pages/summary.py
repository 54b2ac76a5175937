"""Summary: one screen for a demo: the recommended setting for a quality budget, the headline, two charts.

The recommendation is the highest sparsity, among the points actually measured on the Curves page, whose
perplexity stays within the budget (e.g. at most +10 % over the dense model) on the chosen corpus. Below it,
"the most sparsity within +X %" per method is answered by a budget search (a job: step-wise, re-measuring each
step, reusing every measurement already stored) for the budget on the slider, with how it was found. Then the
newest structured run of the model (Structured page): parameters really removed and speed-ups measured on this
machine, beside the honest speed sentence of the recommended setting (zeros are not removed, so no speed-up).
Beside the recommendation, a way to the Recovery page with it preselected and, once a recovery of that setting
has finished, its merged model's perplexity and the share of the pruning gap won back.
"""

from __future__ import annotations

import sys
from html import escape
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable on its own: `streamlit run pages/summary.py`
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from app import charts, widgets  # noqa: E402
from app.charts import corpora_in  # noqa: E402
from app.formats import format_bytes  # noqa: E402
from app.services import budget as budget_search  # noqa: E402
from app.services import choices, jobs, navigation, sensitivity, structured, summary  # noqa: E402
from app.services import corpora as corpora_service  # noqa: E402

METHOD_NAMES = {"magnitude": "magnitude pruning", "wanda": "Wanda", "sparsegpt": "SparseGPT"}

settings = widgets.page_start(
    "Summary",
    "The answer in one screen: how far this model can be pruned for the quality you are "
    "willing to give up.",
    show_settings=False,
)



def form_of(point: dict) -> str:
    """A sweep point's structure, and its allocation when not uniform ("unstructured, owl plan")."""
    allocation = charts.point_allocation(point)
    return point["structure"] + ("" if allocation == "uniform" else f", {allocation} plan")


def recovery_line(recovered: dict, corpus: str) -> None:
    """One line: the recommended setting after a finished recovery (Recovery page): its merged model's
    perplexity and the share of the pruning gap won back, on the Summary's corpus when it was measured."""
    on = corpus if corpus in (recovered.get("recovered_ppl") or {}) else next(iter(recovered["recovered_ppl"]))
    after, dense = recovered["recovered_ppl"][on], recovered["dense_ppl"][on]
    share = (recovered.get("recovered_share") or {}).get(on)
    won = f", {share:.0%} of the gap won back" if share is not None else ""
    st.markdown(f":material/healing: **After recovery with an adapter**: perplexity on {on} "
                f"{recovered['pruned_ppl'][on]:,.2f} → **{after:,.2f}** "
                f"({charts.perplexity_change(after, dense)} vs dense{won}); the sparsity stays "
                f"{recovered['sparsity']['merged']:.1%}.")


def budget_section(budget: int, corpus: str, default_methods: list[str]) -> None:
    """"The most sparsity within +budget %" per method, from budget-search jobs (one per method): the stored
    answer when this budget was searched before, else a button that runs the searches."""
    st.subheader(f"The most sparsity within +{budget} %")
    c1, c2 = st.columns([3, 2])
    if "summary_budget_methods" not in st.session_state:
        st.session_state["summary_budget_methods"] = default_methods
    methods = c1.multiselect("Methods", choices.METHODS, key="summary_budget_methods",
                             format_func=lambda m: METHOD_NAMES.get(m, m))
    allocation = c2.selectbox("Allocation", choices.ALLOCATIONS, key="summary_budget_allocation",
                              help="How each step's global sparsity is spread over layers and modules: "
                                   + choices.allocation_help())
    specs = {}
    for method in methods:
        spec = widgets.guarded(budget_search.budget_spec, settings, method, allocation, budget / 100.0, corpus)
        if spec is not None:
            specs[method] = spec
    statuses = {m: widgets.guarded(budget_search.budget_status, spec) for m, spec in specs.items()}
    lines, captions, missing = [], [], []
    for method, status in statuses.items():
        name = METHOD_NAMES.get(method, method)
        plan = "" if allocation == "uniform" else f" ({allocation} plan)"
        if status and status.get("state") == "done" and status.get("result"):
            said = budget_search.budget_answer_words(status["result"])
            dense = status["result"].get("dense_ppl")
            if said["found"]:
                lines.append(f"- **{name}**{plan}: at most **{said['sparsity']:.0%}** sparsity within +{budget} % "
                             f"on {corpora_service.corpus_label(corpus)}: perplexity {said['ppl']:,.2f} "
                             f"({charts.perplexity_change(said['ppl'], dense)} vs dense {dense:,.2f}).")
            else:
                lines.append(f"- **{name}**{plan}: no sparsity searched stays within +{budget} % on "
                             f"{corpora_service.corpus_label(corpus)}.")
            captions.append(f"{name}: {said['how']}" + (f" {said['caveat']}" if said["caveat"] else ""))
        elif status and jobs.is_active(status):
            lines.append(f"- **{name}**{plan}: searching…")
        else:
            if status and status.get("state") == "failed":
                lines.append(f"- **{name}**{plan}: the last search failed ({status.get('error') or 'unknown'}).")
            else:
                lines.append(f"- **{name}**{plan}: not searched for +{budget} % yet.")
            missing.append(method)
    if lines:
        st.markdown("\n".join(lines))
    for caption in captions:
        st.caption(caption)
    for method in missing:  # what the searches still to run will take, one line per method
        widgets.estimate_line("budget", settings, specs[method], key=f"budget_{method}_throughput",
                              what=METHOD_NAMES.get(method, method))
    if missing and st.button(f"Find the most sparsity within +{budget} %", key="summary_budget_run",
                             type="primary", icon=":material/search:",
                             help="A budget search per method: coarse steps up, then bisection near the edge, "
                                  "re-measuring each step; measurements stored by earlier searches are reused."):
        for method in missing:
            widgets.start_job("budget", specs[method])
        st.rerun()
    active = next((s for s in statuses.values() if s and jobs.is_active(s)), None)
    if active is not None:
        widgets.job_panel("budget", active["id"])


def structured_section(corpus: str, recommended: dict | None, recommended_speed: str | None) -> None:
    """"Really smaller and faster": the newest structured run of this model, per point (parameters removed, size,
    measured speed-ups or "not measured", perplexity), beside what the recommended unstructured setting gains in
    speed (the claims module's honest sentence). Without a structured run, one line pointing to its page.

    recommended: the recommended sweep point (None when nothing is recommended); recommended_speed: its speed
    sentence (`summary.point_claims`)."""
    st.subheader("Really smaller and faster: structured pruning")
    result = widgets.guarded(structured.latest_structured_result, settings["model"])
    if not result or not result.get("points"):
        st.info("Remove whole heads and MLP channels on the **Structured** page to see a model that is really "
                "smaller and faster, with its speed measured on this machine.", icon=":material/info:")
        return
    points = result["points"]
    # Its own evaluation may be on other corpora than the sweep's: the Summary's corpus when it has it.
    on = corpus if corpus in result["dense_ppl"] else next(iter(result["dense_ppl"]))
    dense_ppl = result["dense_ppl"][on]
    rows = []
    for point in points:
        row = {"decoder parameters removed": f"{point['measured_ratio']:.1%}",
               "parameters (whole model)": f"{point['parameters']['model_after']:,} "
                                           f"(−{point['model_removed_fraction']:.1%})",
               "16-bit size": format_bytes(point["sizes"]["structured_bytes"])}
        speedups = structured.structured_speedups(point)
        for phase, value in (speedups or {}).items():
            row[f"{phase} speed-up (fp32)"] = f"{value:.2f}x"
        if not speedups:
            row["speed-up"] = "not measured"
        row[f"perplexity ({on})"] = f"{point['ppl'][on]:,.2f}"
        row["change"] = charts.perplexity_change(point["ppl"][on], dense_ppl)
        rows.append(row)
    dense = {"decoder parameters removed": "0 % (dense)",
             "parameters (whole model)": f"{result['model']['parameters']:,}",
             "16-bit size": format_bytes(points[0]["sizes"]["dense_bytes"]),
             f"perplexity ({on})": f"{dense_ppl:,.2f}"}
    columns = list(dict.fromkeys(c for row in rows for c in row))  # the points' order: speed before perplexity
    st.dataframe([{c: dense.get(c, "–") for c in columns}, *rows], hide_index=True, key="summary_structured_table")
    left, right = st.columns(2, gap="medium")
    with left.container(border=True):
        st.markdown("**Structured: the matrices are smaller, at a quality cost**")
        # Gains never without their cost: the perplexity change sits in the same line as size and speed.
        st.markdown("\n".join(f"- **{p['measured_ratio']:.1%} removed**: "
                              + " ".join(s for s in structured.structured_claims(p).values() if s)
                              + f" Perplexity on {corpora_service.corpus_label(on)}: "
                                f"**{charts.perplexity_change(p['ppl'][on], dense_ppl)}** "
                                f"({dense_ppl:,.2f} → {p['ppl'][on]:,.2f})." for p in points))
        sampled = next(((p, p["samples"][0]) for p in reversed(points) if p.get("samples")), None)
        if sampled:  # what the most pruned point writes, beside the dense model (text, never Markdown)
            point, sample = sampled
            st.caption(f"Sample text at {point['measured_ratio']:.0%} removed:")
            st.text(f"Dense:  {sample['dense']}\nPruned: {sample['pruned']}")
    with right.container(border=True):
        if recommended is not None and recommended_speed:
            st.markdown(f"**The recommended setting ({METHOD_NAMES.get(recommended['method'], recommended['method'])}"
                        f", {form_of(recommended)}, {recommended['sparsity']:.0%}): zeros, not removed**")
            st.markdown(recommended_speed)
        else:
            st.markdown("**Unstructured pruning: zeros, not removed**")
            st.markdown(summary.unstructured_speed())
    st.caption("Speed-ups are measured on this machine, dense and pruned in the same run; open the **Structured** "
               "page for the charts, the widths per layer and the report.")


results = widgets.guarded(summary.merged_sweeps, settings["model"])
has_sweep = bool(results and results.get("points"))

c1, c2 = st.columns([3, 2])
budget = c1.slider("Quality budget: at most this much worse perplexity than the dense model", 1, 100, 10,
                   key="summary_budget", format="+%d %%")
corpora = corpora_in(results) if has_sweep else list(settings["eval_corpora"])
labels = corpora_service.corpus_labels(corpora)  # an upload by its file name, never its stored path
corpus = c2.selectbox("Judged on", corpora, key="summary_corpus", format_func=lambda name: labels.get(name, name))
corpus_name = labels.get(corpus, corpus)
swept_methods = list(dict.fromkeys(p["method"] for p in results["points"])) if has_sweep else []
default_methods = [m for m in choices.METHODS if m in swept_methods] or ["wanda"]

if not has_sweep:
    st.info("Nothing measured yet for the recommendation: run a sweep on the **Curves** page (and a map on "
            "**Sensitivity**) for it, the curves and the heatmap; the budget search below answers on its own.",
            icon=":material/info:")
    budget_section(budget, corpus, default_methods)
    structured_section(corpus, None, None)
    st.stop()

# One answer: the budget searches' edges (this budget, corpus and allocation) are measured points too.
searched = widgets.guarded(summary.searched_points, settings, budget / 100.0, corpus,
                           st.session_state.get("summary_budget_methods") or default_methods,
                           st.session_state.get("summary_budget_allocation") or "uniform") or []
rec = summary.recommend(results, corpus, budget / 100.0, searched)
dense = rec["dense_ppl"]
with st.container(border=True):
    if rec["best"] is None:
        mild = rec["mildest"]
        st.markdown(f"### No measured setting stays within +{budget} %")
        st.markdown(f"The closest is {METHOD_NAMES.get(mild['method'], mild['method'])} at {mild['sparsity']:.0%} "
                    f"({form_of(mild)}): perplexity on **{corpus_name}** "
                    f"{charts.perplexity_change(mild['ppl'][corpus], dense)}. Try lower sparsities on the Curves "
                    "page, let the search below find the edge, or allow a larger budget.")
    else:
        p = rec["best"]
        change = charts.perplexity_change(p["ppl"][corpus], dense)
        st.markdown(f"### Recommended: **{METHOD_NAMES.get(p['method'], p['method'])}**, **{form_of(p)}**, "
                    f"**{p['sparsity']:.0%}** sparsity")
        if p.get("source") == "search":
            st.caption(":material/search: Found by the budget search below: the highest sparsity that stays within "
                       "the budget, measured there (no sweep point came this close to the edge).")
        method_name = METHOD_NAMES.get(p["method"], p["method"])
        st.markdown(f'<p class="ps-lead">At {p["sparsity"]:.0%} sparsity with {escape(method_name)} '
                    f"the model's perplexity on {escape(corpus_name)} goes from {dense:,.2f} to "
                    f"{p['ppl'][corpus]:,.2f} (<b>{escape(change)}</b>), within your +{budget:d} % budget.</p>",
                    unsafe_allow_html=True)
        # Size and speed in the claims module's words: the What-if page and the report say exactly the same.
        gains = summary.point_claims(results, p)
        st.markdown(" ".join(sentence for sentence in (gains["size"], gains["speed"]) if sentence))
        b1, b2 = st.columns(2)
        if b1.button("Export this setting", key="summary_export", icon=":material/download:",
                     help="Opens the Export page with this method, structure, sparsity and propagation filled in."):
            navigation.send_to_export(p)
        if b2.button("Recover quality with an adapter", key="summary_recover", icon=":material/healing:",
                     help="Opens the Recovery page with this setting preselected: a short training of a small "
                          "masked adapter that wins back perplexity and keeps every pruned weight at zero."):
            navigation.send_to_recovery(p)
        recovered = widgets.guarded(summary.recovered, settings["model"], p)
        if recovered:
            recovery_line(recovered, corpus)
    # Per method: first what is usable (its highest sparsity within the budget), then where it ends (its
    # highest measured point), said as a factor with a verdict when the model is broken there.
    lines = []
    for method, _change, point in rec["per_method"]:
        name = METHOD_NAMES.get(method, method)
        within = rec["per_method_within"].get(method)
        usable = (f"usable up to **{within[1]['sparsity']:.0%}** ({form_of(within[1])}, "
                  f"{charts.perplexity_change(within[1]['ppl'][corpus], dense)} perplexity)"
                  if within is not None else f"no measured point within +{budget} %")
        line = f"- **{name}**: {usable}"
        if within is None or within[1] is not point:
            line += (f"; at {point['sparsity']:.0%} ({form_of(point)}) perplexity "
                     f"{charts.perplexity_change(point['ppl'][corpus], dense)}")
        lines.append(line)
    if lines:
        st.markdown(f"Per method, on {corpus}:\n" + "\n".join(lines))

budget_section(budget, corpus, default_methods)
# Beside the structured savings, what the recommended (unstructured or N:M) setting gains in speed: the same
# claims sentence as its headline above, so the two never disagree.
structured_section(corpus, rec["best"],
                   summary.point_claims(results, rec["best"])["speed"] if rec["best"] else None)

left, right = st.columns(2, gap="medium")
charts.show(charts.curves_chart(results, corpus), key="summary_curves", container=left,
            alt="Perplexity against sparsity")
# The map to read beside the curves: trusted first, exact before a proxy, near 50 %, newest (the library's rule).
found = widgets.guarded(sensitivity.map_to_show, settings["model"], 0.5)
if found:
    chosen, verdict = found
    charts.show(charts.heatmap_chart(chosen), key="summary_heatmap", container=right,
                alt="Sensitivity heatmap")
    right.caption(verdict["label"])
    if verdict["trusted"]:
        right.caption(sensitivity.sensitivity_reading(chosen))
    else:
        right.warning(verdict["withheld"], icon=":material/do_not_disturb_on:")
else:
    right.info("Compute a sensitivity map on the **Sensitivity** page to see where the model is fragile.",
               icon=":material/info:")
