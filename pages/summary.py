"""Summary: one screen for a demo: the recommended setting for a quality budget, the headline, two charts.

The recommendation is the highest sparsity, among the points actually measured on the Curves page and the budget
searches' answers, whose perplexity stays within the budget (e.g. at most +10 % over the dense model) on every
corpus chosen (default: all the sweep measured): each setting is judged on the worst of them, and the page says
so ("judged on the worst of: wiki, news, GPL-3"). Beside it, one table of each kind of pruning (unstructured per
method, N:M, structured) with its quality cost, size and speed, and an export of exactly that setting. Below it,
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



def frontier_lead(frontier: dict, labels: dict) -> None:
    """The page's one answer when the frontier was measured: the smallest file within the budget across every
    technique (quantized, pruned, structured, combined), judged on the worst chosen corpus, in one sentence
    (`summary.frontier_answer`, the Frontier page's sentence), with the chart."""
    said = frontier["answer"]
    row = next((r for r in frontier["points"] if r["key"] == said["key"]), None)
    with st.container(border=True, key="summary_frontier"):
        if said["found"] and row is not None:
            st.markdown(f"### Recommended: **{row['technique']}**: **{format_bytes(row['bytes'])}** instead of "
                        f"{format_bytes(frontier['dense_bytes'])}")
        else:
            st.markdown(f"### {'No file fits the budget' if row is None else 'Keep the dense model'}")
        st.markdown(f'<p class="ps-lead">{escape(said["sentence"])}</p>', unsafe_allow_html=True)
        # Measured speed beside the bytes, with the runtime and the machine that measured it.
        st.markdown(summary.frontier_speed(frontier))
        if said.get("note"):
            st.caption(f":material/info: {said['note']}")
        shown = row["worst_corpus"] if row is not None else frontier["corpora"][0]
        charts.show(summary.frontier_chart(frontier, shown), key="summary_frontier_chart",
                    alt="Size on disk against perplexity, with the Pareto front")
        st.caption(f"Every technique measured for this model ({len(frontier['points'])} points, sizes measured on "
                   "the files a runtime loads); the **Frontier** page lists them and measures what is missing. "
                   "Pruning alone, below, keeps the file size: its zeros are stored.")


def form_of(point: dict) -> str:
    """A sweep point's structure, and its allocation when not uniform ("unstructured, owl plan")."""
    allocation = charts.point_allocation(point)
    return point["structure"] + ("" if allocation == "uniform" else f", {allocation} plan")


def judged_words(corpora: list[str], labels: dict) -> str:
    """"wiki" for one corpus, "the worst of: wiki, news, GPL-3" for several (uploads by their file name)."""
    names = [labels.get(c, c) for c in corpora]
    return names[0] if len(names) == 1 else "the worst of: " + ", ".join(names)


def change_on(point: dict, corpora: list[str], dense: dict, labels: dict) -> str:
    """A point's perplexity change on the worst of `corpora`, with that corpus named when there are several:
    "+9.7 %" or "+24.1 % on GPL-3"."""
    change, corpus = summary.worst_change(point, dense, corpora)
    words = charts.perplexity_change(point["ppl"][corpus], dense[corpus])
    return words if len(corpora) == 1 else f"{words} on {labels.get(corpus, corpus)}"


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


def budget_section(budget: int, corpora: list[str], labels: dict, default_methods: list[str]) -> None:
    """"The most sparsity within +budget %" per method, from budget-search jobs (one per method, each step
    judged on the worst of `corpora`): the stored answer when this budget was searched before, else a button
    that runs the searches."""
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
        spec = widgets.guarded(budget_search.budget_spec, settings, method, allocation, budget / 100.0, corpora)
        if spec is not None:
            specs[method] = spec
    statuses = {m: widgets.guarded(budget_search.budget_status, spec) for m, spec in specs.items()}
    lines, captions, missing = [], [], []
    for method, status in statuses.items():
        name = METHOD_NAMES.get(method, method)
        plan = "" if allocation == "uniform" else f" ({allocation} plan)"
        if status and status.get("state") == "done" and status.get("result"):
            said = budget_search.budget_answer_words(status["result"])
            dense, on = said["dense_ppl"], labels.get(said["corpus"], said["corpus"])
            if said["found"]:
                worst = f" (worst on {on})" if len(corpora) > 1 else ""
                where = f" on {on}" if len(corpora) > 1 else ""
                lines.append(f"- **{name}**{plan}: at most **{said['sparsity']:.0%}** sparsity within +{budget} % "
                             f"on {judged_words(corpora, labels)}: perplexity{where} {said['ppl']:,.2f} "
                             f"({charts.perplexity_change(said['ppl'], dense)} vs dense {dense:,.2f}){worst}.")
            else:
                lines.append(f"- **{name}**{plan}: no sparsity searched stays within +{budget} % on "
                             f"{judged_words(corpora, labels)}.")
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
        widgets.rerun_page()
    active = next((s for s in statuses.values() if s and jobs.is_active(s)), None)
    if active is not None:
        widgets.job_panel("budget", active["id"])


#: Relative widths of the table of kinds: kind, setting, quality cost, size, speed, export.
KIND_COLUMNS = [1.5, 1.5, 2.0, 1.7, 2.0, 1.4]


def kinds_section(rows: list[dict], budget: int, corpora: list[str], labels: dict, structured_result) -> None:
    """Quality, size and speed of each kind of pruning side by side, each with its quality cost on the worst of
    the chosen corpora (`summary.kinds_table`), and in its row an export of exactly that setting. A grid of
    columns, not a dataframe: its cells wrap, so no figure is cut, and each row holds its own export button."""
    st.subheader("Each kind of pruning: quality, size and speed")
    if not rows:
        st.info("Run a sweep on the **Curves** page (unstructured and 2:4) and a run on the **Structured** page to "
                "compare the kinds of pruning here.", icon=":material/info:")
        return
    st.caption(f"Each row: the highest setting of that kind within +{budget} % on {judged_words(corpora, labels)}, "
               "or the closest one measured when none is. Sizes and speed in the words of the What-if page and the "
               "report; speed measured where a run timed it (Structured page), otherwise what to expect.")
    for cell, title in zip(st.columns(KIND_COLUMNS), ("kind", "setting", "perplexity (worst corpus)",
                                                       "size (16-bit values)", "speed", "export")):
        cell.markdown(f"**{title}**")
    command = None
    for i, row in enumerate(rows):
        method = METHOD_NAMES.get(row["method"], row["method"]) if row["method"] else None
        if row["kind"] == "structured":
            name = "Structured"
            setting = f"{row['amount']:.1%} of decoder parameters removed"
        else:
            name = f"Unstructured · {method}" if row["kind"] == "unstructured" else f"{row['structure']} · {method}"
            setting = f"{row['amount']:.0%} sparsity" + ("" if row["allocation"] == "uniform"
                                                         else f", {row['allocation']} plan")
            setting += " (budget search)" if row["source"] == "search" else ""
        verdict = (f":green[within +{budget} %]" if row["within"]
                   else f":orange[over +{budget} %: the closest measured]")
        on = labels.get(row["corpus"], row["corpus"])
        if row["corpora"] != corpora:  # a structured run evaluated on other corpora: say which it was judged on
            on += " (the corpus it measured)" if len(row["corpora"]) == 1 else " (of the corpora it measured)"
        cost = (f"**{charts.perplexity_change(row['ppl'], row['dense_ppl'])}** on {on} "
                f"({row['dense_ppl']:,.2f} → {row['ppl']:,.2f})")
        cells = st.columns(KIND_COLUMNS, vertical_alignment="center")
        for cell, text in zip(cells, (f"**{name}**", f"{setting}  \n{verdict}", cost, row["size"] or "–", row["speed"])):
            cell.markdown(text)
        if row["kind"] == "structured":
            report = widgets.guarded(structured.structured_report_html, structured_result, row["index"])
            if report:
                cells[-1].download_button("Report", report, file_name="structured-report.html", mime="text/html",
                                          key=f"summary_kind_export_{i}", icon=":material/download:",
                                          help="The structured run's report of exactly this setting; the command "
                                               "below the table writes its smaller model.")
            command = structured.structured_save_command(structured_result, row["index"])
        elif cells[-1].button("Export", key=f"summary_kind_export_{i}", icon=":material/download:",
                              help=f"Opens the Export page with exactly this setting ({name}, {setting}) filled in."):
            navigation.send_to_export(row["point"])
    if command:
        st.caption("To write the structured row's smaller model as a Hugging Face folder with its report, run:")
        st.code(command, language="bash")


def structured_section(result: dict | None, corpora: list[str], labels: dict, recommended: dict | None,
                       recommended_speed: str | None) -> None:
    """"Really smaller and faster": the newest structured run of this model, per point (parameters removed, size,
    measured speed-ups or "not measured", perplexity and its change on the worst of the chosen corpora it
    measured), beside what the recommended unstructured setting gains in speed (the claims module's honest
    sentence). Without a structured run, one line pointing to its page.

    recommended: the recommended sweep point (None when nothing is recommended); recommended_speed: its speed
    sentence (`summary.point_claims`)."""
    st.subheader("Really smaller and faster: structured pruning")
    if not result or not result.get("points"):
        st.info("Remove whole heads and MLP channels on the **Structured** page to see a model that is really "
                "smaller and faster, with its speed measured on this machine.", icon=":material/info:")
        return
    points = result["points"]
    # Its own evaluation may be on other corpora than the sweep's: the chosen ones it has, else all of its own.
    on = [c for c in corpora if c in result["dense_ppl"]] or list(result["dense_ppl"])
    dense = {c: result["dense_ppl"][c] for c in on}
    rows = []
    for point in points:
        row = {"decoder parameters removed": f"{point['measured_ratio']:.1%}",
               "parameters (whole model)": f"{point['parameters']['model_after']:,} "
                                           f"(−{point['model_removed_fraction']:.1%})",
               "16-bit safetensors": format_bytes(structured.structured_file_sizes(point)["structured"])}
        speedups = structured.structured_speedups(point)
        for phase, value in (speedups or {}).items():
            row[f"{phase} speed-up (fp32)"] = f"{value:.2f}x"
        if not speedups:
            row["speed-up"] = "not measured"
        for corpus in on:
            row[f"perplexity ({labels.get(corpus, corpus)})"] = f"{point['ppl'][corpus]:,.2f}"
        row["change"] = change_on(point, on, dense, labels)
        rows.append(row)
    dense_row = {"decoder parameters removed": "0 % (dense)",
                 "parameters (whole model)": f"{result['model']['parameters']:,}",
                 "16-bit safetensors": format_bytes(structured.structured_file_sizes(points[0])["dense"]),
                 **{f"perplexity ({labels.get(c, c)})": f"{dense[c]:,.2f}" for c in on}}
    columns = list(dict.fromkeys(c for row in rows for c in row))  # the points' order: speed before perplexity
    st.dataframe([{c: dense_row.get(c, "–") for c in columns}, *rows], hide_index=True,
                 key="summary_structured_table")
    left, right = st.columns(2, gap="medium")
    with left.container(border=True):
        st.markdown("**Structured: the matrices are smaller, at a quality cost**")
        # Gains never without their cost: the perplexity change sits in the same line as size and speed.
        lines = []
        for p in points:
            _change, worst = summary.worst_change(p, dense, on)
            lines.append(f"- **{p['measured_ratio']:.1%} removed**: "
                         + " ".join(s for s in structured.structured_claims(p).values() if s)
                         + f" Perplexity on {labels.get(worst, worst)}: "
                           f"**{charts.perplexity_change(p['ppl'][worst], dense[worst])}** "
                           f"({dense[worst]:,.2f} → {p['ppl'][worst]:,.2f}).")
        st.markdown("\n".join(lines))
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
structured_result = widgets.guarded(structured.latest_structured_result, settings["model"])

c1, c2 = st.columns([3, 2])
budget = c1.slider("Quality budget: at most this much worse perplexity than the dense model", 1, 100, 10,
                   key="summary_budget", format="+%d %%")
available = corpora_in(results) if has_sweep else list(settings["eval_corpora"])
labels = corpora_service.corpus_labels(available)  # an upload by its file name, never its stored path
# Default: every corpus measured; a choice that names corpora no longer measured keeps those still there.
if "summary_corpora" not in st.session_state:
    st.session_state["summary_corpora"] = list(available)
else:
    st.session_state["summary_corpora"] = [c for c in st.session_state["summary_corpora"] if c in available]
chosen = c2.multiselect("Judged on the worst of", available, key="summary_corpora",
                        format_func=lambda name: labels.get(name, name),
                        help="Every setting must stay within the budget on each corpus chosen: the one where its "
                             "perplexity grows most decides.")
corpora = summary.judged_choice(available, chosen)
st.caption(f":material/balance: Judged on {judged_words(corpora, labels)}"
           + ("" if chosen else " (no corpus chosen: all of them)") + ".")
swept_methods = list(dict.fromkeys(p["method"] for p in results["points"])) if has_sweep else []
default_methods = [m for m in choices.METHODS if m in swept_methods] or ["wanda"]
# The budget searches' edges (this budget, these corpora and allocation) are measured points too.
searched = widgets.guarded(summary.searched_points, settings, budget / 100.0, corpora,
                           st.session_state.get("summary_budget_methods") or default_methods,
                           st.session_state.get("summary_budget_allocation") or "uniform") or []

# One answer: when the frontier (every technique, sizes measured on files) was measured it leads, and the
# pruning recommendation below becomes "pruning alone", judged on the same corpora and budget.
frontier = widgets.guarded(summary.frontier_answer, settings, corpora, budget / 100.0)
leads = frontier is not None
if leads:
    frontier_lead(frontier, labels)

if not has_sweep:
    st.info(("No pruning sweep yet for the pruning-alone recommendation" if leads else
             "Nothing measured yet for the recommendation")
            + ": run a sweep on the **Curves** page (and a map on **Sensitivity**) for it, the curves and the "
              "heatmap; the budget search below answers on its own.", icon=":material/info:")
    budget_section(budget, corpora, labels, default_methods)
    kinds = widgets.guarded(summary.kinds_table, None, corpora, budget / 100.0, (), structured_result)
    if kinds:
        kinds_section(kinds, budget, corpora, labels, structured_result)
    structured_section(structured_result, corpora, labels, None, None)
    st.stop()

# One answer: every figure below is judged on the worst of the chosen corpora, the search's edges included.
rec = summary.recommend(results, corpora, budget / 100.0, searched)
dense = rec["dense"]
with st.container(border=True):
    if rec["best"] is None:
        mild = rec["mildest"]
        st.markdown(f"{'#### Pruning alone: no' if leads else '### No'} measured setting stays within +{budget} %")
        if mild is None:
            st.markdown(f"No measured point was evaluated on {judged_words(corpora, labels)}; run a sweep with "
                        "these corpora on the Curves page, or choose the corpora it measured.")
        else:
            worst = labels.get(rec["mildest_corpus"], rec["mildest_corpus"])
            st.markdown(f"The closest is {METHOD_NAMES.get(mild['method'], mild['method'])} at "
                        f"{mild['sparsity']:.0%} ({form_of(mild)}): perplexity on **{worst}** "
                        f"{charts.perplexity_change(mild['ppl'][rec['mildest_corpus']], dense[rec['mildest_corpus']])}"
                        + (f" (the worst of {', '.join(labels.get(c, c) for c in corpora)})" if len(corpora) > 1
                           else "")
                        + ". Try lower sparsities on the Curves page, let the search below find the edge, or allow "
                          "a larger budget.")
    else:
        p, worst = rec["best"], rec["best_corpus"]
        worst_name = labels.get(worst, worst)
        change = charts.perplexity_change(p["ppl"][worst], dense[worst])
        st.markdown(f"{'#### Pruning alone' if leads else '### Recommended'}: "
                    f"**{METHOD_NAMES.get(p['method'], p['method'])}**, **{form_of(p)}**, **{p['sparsity']:.0%}** "
                    "sparsity")
        if p.get("source") == "search":
            st.caption(":material/search: Found by the budget search below: the highest sparsity that stays within "
                       "the budget, measured there (no sweep point came this close to the edge).")
        method_name = METHOD_NAMES.get(p["method"], p["method"])
        others = [c for c in corpora if c != worst]
        also = "".join(f" On {labels.get(c, c)}: {charts.perplexity_change(p['ppl'][c], dense[c])}."
                       for c in others)  # the other chosen corpora, where it costs less (escaped below)
        st.markdown(f'<p class="ps-lead">At {p["sparsity"]:.0%} sparsity with {escape(method_name)} '
                    f"the model's perplexity on {escape(worst_name)} goes from {dense[worst]:,.2f} to "
                    f"{p['ppl'][worst]:,.2f} (<b>{escape(change)}</b>), within your +{budget:d} % budget.{escape(also)}</p>",
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
            recovery_line(recovered, worst)
    # Per method: first what is usable (its highest sparsity within the budget), then where it ends (its
    # highest measured point), said as a factor with a verdict when the model is broken there; each change is
    # the worst over the chosen corpora, as in the headline.
    lines = []
    for method, _change, point in rec["per_method"]:
        name = METHOD_NAMES.get(method, method)
        within = rec["per_method_within"].get(method)
        usable = (f"usable up to **{within[1]['sparsity']:.0%}** ({form_of(within[1])}, perplexity "
                  f"{change_on(within[1], corpora, dense, labels)})"
                  if within is not None else f"no measured point within +{budget} %")
        line = f"- **{name}**: {usable}"
        if within is None or within[1] is not point:
            line += (f"; at {point['sparsity']:.0%} ({form_of(point)}) perplexity "
                     f"{change_on(point, corpora, dense, labels)}")
        lines.append(line)
    if lines:
        st.markdown(f"Per method, judged on {judged_words(corpora, labels)}:\n" + "\n".join(lines))
    if rec["unjudged"]:
        st.caption(f"Left out: {rec['unjudged']} measured point(s) not evaluated on every chosen corpus.")

kinds = widgets.guarded(summary.kinds_table, results, corpora, budget / 100.0, searched, structured_result)
if kinds is not None:
    kinds_section(kinds, budget, corpora, labels, structured_result)
budget_section(budget, corpora, labels, default_methods)
# Beside the structured savings, what the recommended (unstructured or N:M) setting gains in speed: the same
# claims sentence as its headline above, so the two never disagree.
structured_section(structured_result, corpora, labels, rec["best"],
                   summary.point_claims(results, rec["best"])["speed"] if rec["best"] else None)

left, right = st.columns(2, gap="medium")
shown = rec["best_corpus"] or rec["mildest_corpus"] or corpora[0]
charts.show(charts.curves_chart(results, shown), key="summary_curves", container=left,
            alt="Perplexity against sparsity")
left.caption(f"Perplexity on {labels.get(shown, shown)}"
             + (", where the recommended setting is worst." if len(corpora) > 1 else "."))
# The map to read beside the curves: trusted first, exact before a proxy, near 50 %, newest (the library's rule).
found = widgets.guarded(sensitivity.map_to_show, settings["model"], 0.5)
if found:
    chosen_map, verdict = found
    charts.show(charts.heatmap_chart(chosen_map), key="summary_heatmap", container=right,
                alt="Sensitivity heatmap")
    right.caption(verdict["label"])
    if verdict["trusted"]:
        right.caption(sensitivity.sensitivity_reading(chosen_map))
    else:
        right.warning(verdict["withheld"], icon=":material/do_not_disturb_on:")
else:
    right.info("Compute a sensitivity map on the **Sensitivity** page to see where the model is fragile.",
               icon=":material/info:")
