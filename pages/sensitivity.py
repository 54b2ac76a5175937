"""Sensitivity: which layers and modules can lose weights safely, as a layers x module-kinds heatmap.

A cell is how much the loss grows when that one module alone is pruned (exact metric), or a cheaper estimate
(second-order estimate, reconstruction error, Taylor score). The default, "Automatic", shows the second-order
estimate first and refines it to the exact map while the job runs; the page always says which refinement it
shows and its measured rank agreement with the exact metric, and gives its plain-language reading only for a
map that is exact or agrees well enough (`app.services.sensitivity.sensitivity_trust`). With several sparsities a
per-module view shows how sensitivity grows; with the exact metric and a proxy, a scatter shows how well the proxy ranks
modules (Spearman ρ).
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable on its own: `streamlit run pages/sensitivity.py`
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from app import charts, state, widgets  # noqa: E402
from app.charts import metric_unit  # noqa: E402
from app.services import choices, jobs, sensitivity  # noqa: E402
from app.services.sensitivity import SensitivityForm  # noqa: E402

#: Short names for the metric dropdowns (the unit goes to the help text and the chart axes: a long label
#: such as "reconstruction · relative output error" was cut off in the narrow column).
METRIC_LABELS = {"auto": "Automatic", "exact": "exact (Δ loss)",
                 "fisher": "second-order estimate", "reconstruction": "reconstruction error",
                 "taylor": "Taylor score"}
METRIC_HELP = ("Automatic (recommended): a fast second-order estimate first, then refined to the exact map while "
               "you watch; the page says which one it shows and how well the estimate agrees with the exact one. "
               "exact: the loss increase when the module alone is pruned (one evaluation per module, slowest). "
               "second-order estimate: predicts that loss increase from the loss's gradients (curvature) and the "
               "weights pruning removes, with a few backward passes instead of one evaluation per module. "
               "reconstruction: relative error of the module's output (cheapest, often ranks poorly). "
               "Taylor: first-order |W·∂L/∂W| (a few backward passes). Every estimate is shown with its measured "
               "agreement with the exact metric.")

#: The form's widgets and their first values (seeded by `state.seed_form`, so leaving the page keeps them).
FORM = SensitivityForm.widget_defaults()


settings = widgets.page_start(
    "Sensitivity",
    "Where does removing weights hurt? Each cell is one module of one layer, pruned <b>alone</b>: "
    "brighter means the model suffers more, darker means it is safer to prune.",
)
widgets.seed_form_from_job("sensitivity", FORM, SensitivityForm, settings["model"])

with st.container(border=True):
    c1, c2, c3, c4 = st.columns([2, 3, 3, 2])
    method = c1.selectbox("Method", choices.METHODS, key="sens_method")
    sparsities = c2.multiselect("Sparsities", sensitivity.SPARSITY_CHOICES, key="sens_sparsities",
                                format_func=lambda s: f"{s:.0%}",
                                help="Several sparsities add a sensitivity-vs-sparsity view per module.")
    metrics = c3.multiselect("Metrics", sensitivity.SENSITIVITY_METRICS, key="sens_metrics", help=METRIC_HELP,
                             format_func=lambda m: METRIC_LABELS.get(m, m))
    probe = c4.number_input("Probe windows", 1, 256, key="sens_probe",
                            help="Probe windows: held-out text windows (seqlen tokens each) on which the exact "
                                 "metric measures the loss before and after pruning one module. More windows: "
                                 "steadier values, proportionally slower.")
    # Bad choices: the error says what to fix, and the page stays.
    spec = widgets.guarded(lambda: SensitivityForm(method, sparsities, metrics, int(probe)).to_spec(settings))
    widgets.estimate_line("sensitivity", settings, spec)
    run = st.button("Compute map", key="sens_run", type="primary", icon=":material/play_arrow:",
                    disabled=spec is None)

state.remember_form("sensitivity", FORM)

if run and spec is not None:
    widgets.start_job("sensitivity", spec)

def draw_map(chosen: dict, correlations, prefix: str) -> None:
    """One map as the page shows it: which map (and refinement) it is, with its measured agreement with the
    exact metric; the plain-language reading only when the map can be trusted, else the sentence saying why
    not; the heatmap, the most sensitive modules and the per-layer bars. Widget keys start with `prefix`."""
    trust = sensitivity.sensitivity_trust(chosen, correlations)
    icon = ":material/verified:" if trust["trusted"] else ":material/help:"
    st.markdown(f"{icon} **{trust['label']}**",
                help="Agreement: Spearman rank correlation with the exact metric (1 = same order of modules). "
                     "A map that is not exact is read as advice only at "
                     f"{sensitivity.TRUSTED_AGREEMENT:.1f} or more.")
    if trust["trusted"]:
        st.markdown(f"**Reading:** {sensitivity.sensitivity_reading(chosen)}")
    else:
        st.warning(trust["withheld"], icon=":material/do_not_disturb_on:")
    left, right = st.columns([3, 2], gap="large")
    charts.show(charts.heatmap_chart(chosen), key=f"{prefix}_heatmap", container=left,
                alt="Sensitivity heatmap: decoder layers by module kinds")
    with right:
        st.markdown(f"**Most sensitive modules** · {metric_unit(chosen['metric'])}")
        st.dataframe(charts.top_cells_table(sensitivity.top_cells(chosen, 8)), hide_index=True, width="stretch",
                     key=f"{prefix}_top")
        if chosen.get("baseline_loss") is not None:
            # No duration here: the job panel above gives the run's one duration (a map-only time beside it was
            # read as a second, contradicting figure for the same map).
            st.caption(f"Dense calibration loss {float(chosen['baseline_loss']):.3f} nats/token.",
                       help="nats/token: the mean negative log-likelihood per predicted token, in natural-log "
                            "units (perplexity = e^loss). A cell of 0.01 nats/token raises perplexity by about "
                            "1 %.")
        if chosen["metric"] == "exact" and (chosen.get("protocol") or {}).get("probe_dtype") == "bfloat16":
            st.caption("The probes ran in bf16. On the embedded model, against fp32, the ranking held (Spearman "
                       "0.97) but cells came out about 0.001 nats/token lower (a pruned module also loses its "
                       "rounding error), so small negative cells may be rounding. Choose float32 on the Setup "
                       "page for values.")
        st.caption("Read the heatmap row by row: a bright cell is a module whose weights the model needs; a dark "
                   "row is a layer that can be pruned harder (set it on the What-if page).")
    charts.show(charts.layer_bar_chart(chosen), key=f"{prefix}_layers",
                alt="Sensitivity per decoder layer")


def on_progress(status: dict) -> None:
    """While an automatic map runs: its newest refinement, redrawn as each one arrives."""
    views = widgets.guarded(sensitivity.sensitivity_live_views, status.get("spec") or {}) or []
    if views:
        view = views[-1]  # the sparsity being refined now
        st.caption(f"Newest refinement so far, at {float(view['sparsity']):.0%} sparsity:")
        draw_map(view, (), "sens_live")


status = widgets.job_panel("sensitivity", widgets.attach_job("sensitivity", spec, settings["model"]), on_progress,
                           spec=spec)
result = status.get("result") if status and status.get("state") == "done" else None
if result is None and status is not None and status.get("state") in ("failed", "cancelled", "interrupted"):
    # The followed run stopped without a map: its last refinement, if it reached one, else the newest finished
    # map stays on the page (as after a reload).
    views = widgets.guarded(sensitivity.sensitivity_live_views, status.get("spec") or {}) or []
    newest = [] if views else widgets.guarded(jobs.recent_results, "sensitivity", settings["model"], 1) or []
    if views:
        result = {"maps": views, "correlations": [], "views": views}
        st.caption(":material/history: The last run did not finish: showing the last refinement it reached.")
    elif newest:
        result = newest[0]["result"]
        earlier = newest[0]["spec"] or {}
        what = " · ".join(filter(None, [str(earlier.get("method") or ""), ", ".join(
            f"{float(s):.0%}" for s in earlier.get("sparsities") or [])]))
        st.caption(f":material/history: Showing the newest finished map{f' ({what})' if what else ''}: the "
                   "last run did not finish.")
maps = (result or {}).get("maps") or []

if not maps:
    if status is None or not jobs.is_active(status):
        st.info("No map yet: choose a method, sparsity and metric above and press **Compute map**. 'Automatic' "
                "shows a first estimate quickly and refines it to the exact map; the estimate above is for this "
                "machine.", icon=":material/info:")
    st.stop()

# The exact metric first: it is the truth every other map is measured against.
metrics_present = sorted(dict.fromkeys(m["metric"] for m in maps), key=lambda m: m != "exact")
s1, s2, _ = st.columns([3, 2, 2])
metric = s1.selectbox("Show metric", metrics_present, key="sens_show_metric",
                      format_func=lambda m: METRIC_LABELS.get(m, m),
                      help="Values are: " + "; ".join(f"{METRIC_LABELS.get(m, m)} = {metric_unit(m)}"
                                                       for m in metrics_present) + ".")
# Only the sparsities this metric has (a stopped run may have reached different refinements per sparsity).
sparsities_present = sorted({float(m["sparsity"]) for m in maps if m["metric"] == metric})
sparsity = s2.selectbox("Show sparsity", sparsities_present, key="sens_show_sparsity",
                        format_func=lambda s: f"{s:.0%}")
# A refinement's view (the map with which refinement it is and its agreement) where the job made one.
chosen = next((v for v in (result.get("views") or [])
               if v["metric"] == metric and abs(float(v["sparsity"]) - sparsity) < 1e-9), None) or \
    next(m for m in maps if m["metric"] == metric and abs(float(m["sparsity"]) - sparsity) < 1e-9)
draw_map(chosen, result.get("correlations") or [], "sens")

same_metric = [m for m in maps if m["metric"] == metric]
if len(same_metric) > 1:
    st.subheader("Sensitivity vs sparsity")
    module = st.radio("Module kind", chosen["modules"], key="sens_module", horizontal=True,
                      index=len(chosen["modules"]) - 1)
    charts.show(charts.sensitivity_curves_chart(same_metric, module), key="sens_curves",
                alt=f"Sensitivity of {module} modules against sparsity")

exact = next((m for m in maps if m["metric"] == "exact" and abs(float(m["sparsity"]) - sparsity) < 1e-9), None)
proxies = [m for m in maps if m["metric"] != "exact" and abs(float(m["sparsity"]) - sparsity) < 1e-9]
if exact is not None and proxies:
    st.subheader("Do the cheap proxies rank modules like the exact metric?")
    correlations = {(round(float(c["sparsity"]), 6), c["proxy"]): c.get("spearman")
                    for c in (result.get("correlations") or [])}
    columns = st.columns(len(proxies))
    for column, proxy in zip(columns, proxies):
        rho = correlations.get((round(sparsity, 6), proxy["metric"]))
        charts.show(charts.proxy_scatter_chart(exact, proxy, rho), key=f"sens_proxy_{proxy['metric']}",
                    container=column, alt=f"{proxy['metric']} against the exact metric")
    st.caption("Spearman ρ near 1: the proxy orders modules like the exact loss increase, so it can stand in "
               "for it at a fraction of the cost.")
