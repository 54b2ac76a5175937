"""Shared dashboard widgets: page intro, error display, the settings line, and the live job panel.

The job panel is the one place long work is shown: a progress bar with the current step and time left, a
Cancel button, and a callback that draws partial results while the job runs. It refreshes itself with
`st.fragment(run_every=...)` (only the panel reruns, not the page) and reruns the whole page once the job
ends, so the page draws the final results.
"""

from __future__ import annotations

import sys
import time
import traceback
from typing import Any, Callable, Optional

import streamlit as st

from app import state
from app.formats import format_bytes, format_seconds
from app.services import allocation, corpora, jobs
from pruning_core.failures import explain

#: Seconds between refreshes of a running job's panel.
REFRESH_S = 1.0


def intro(title: str, lead: str) -> None:
    """Page title and a one-paragraph explanation in plain words."""
    st.title(title)
    st.markdown(f'<p class="ps-lead">{lead}</p>', unsafe_allow_html=True)


def page_start(title: str, lead: str, show_settings: bool = True) -> dict:
    """The opening of a task page: session keys, title and lead, and (by default) the shared settings line.

    Returns the shared settings (model, data, protocol) chosen on the Setup page.
    """
    state.init()
    settings = state.settings()
    intro(title, lead)
    if show_settings:
        settings_line(settings)
    return settings


def error_text(error: BaseException) -> str:
    """The one-paragraph message `show_error` shows for `error` (unexpected errors: traceback to the log)."""
    said = explain(error)  # ours, and the store's, the disk's and the file system's, in one sentence
    if said is not None:
        return said
    print("".join(traceback.format_exception(error)), file=sys.stderr)
    line = " ".join(str(error).split())[:300] or type(error).__name__
    return f"Something went wrong: {line}. Check the settings on the Setup page and try again."


def show_error(error: BaseException) -> None:
    """A short message, never a traceback: ours say what to do; anything else names the problem in one line
    (the traceback goes to the server log for developers)."""
    st.error(error_text(error), icon=":material/error:")


def guarded(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a service; on failure show `show_error` and return None."""
    try:
        return fn(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - every failure becomes a short message on the page
        show_error(error)
        return None


def settings_line(settings: dict) -> None:
    """One caption with the shared model, data and protocol (changed on the Setup page)."""
    evals = ", ".join(corpora.corpus_label(c) for c in settings["eval_corpora"])
    calib = corpora.corpus_label(settings["calib"])
    calib = calib if len(calib) < 30 else "…" + calib[-28:]
    st.caption(f"Model **{settings['model']}** · calibration **{calib}** ({settings['nsamples']} windows × "
               f"{settings['seqlen']} tokens, seed {settings['seed']}) · evaluation **{evals}** "
               f"(up to {settings['eval_windows']} windows each: a shorter text gives fewer) · change these on the "
               "**Setup** page.")


def measured_estimate(estimate: Callable[[], Optional[dict]], key: str) -> Optional[dict]:
    """An estimate that reads this machine's measured speed: `estimate()`'s dict, or None. When it answers
    {"measure": spec} (the speed is not stored yet), the speed is measured in a short job and the estimate made
    again in the same run (no rerun: a page's one-shot state stays); None, with a note, while it runs."""
    made = estimate()
    if made and "measure" in made:
        if short_job_result("throughput", made["measure"], key=key) is None:
            st.caption(":material/speed: Measuring this machine's speed for the estimate (a few forward passes)…")
            return None
        made = estimate()
    return made if made and "measure" not in made else None


def estimate_line(kind: str, settings: dict, spec: Optional[dict], key: Optional[str] = None,
                  what: str = "") -> Optional[dict]:
    """THE estimate line of a run a page can start: the engine's time and memory for job `kind` with `spec`
    (`jobs.estimate`: every phase, results already stored cost nothing), or a short note when it cannot be made.
    A spinner shows while the model is read and this machine's speed looked up; a map names its first view's time
    beside the final one; a recovery names its training steps. Returns the estimate (None without one).
    key: names the speed measurement's panel (two estimate lines on one page need two keys); what: names the run
    when a page shows several lines (e.g. "Wanda")."""
    if spec is None:
        return None
    try:
        with st.spinner("Estimating the time: reading the model and this machine's measured speed…"):
            est = measured_estimate(lambda: jobs.estimate(kind, settings, spec), key=key or f"{kind}_throughput")
    except Exception as error:  # noqa: BLE001 - an estimate must never block a run
        st.caption(f"Time estimate unavailable: {' '.join(str(error).split())[:160]}")
        return None
    if est:
        text = estimate_text(kind, est)
        st.caption(text.replace(":material/schedule: ", f":material/schedule: {what}: ") if what else text,
                   help=est.get("assumptions"))  # what was counted, measured speed
        refusal = jobs.memory_refusal(kind, est, spec) if est.get("peak_memory_bytes") else None
        if refusal:  # said before the click: the run button would be refused with this sentence
            st.warning(refusal, icon=":material/memory:")
    return est


def estimate_text(kind: str, est: dict) -> str:
    """The estimate line's sentence for `est` (`jobs.estimate`'s dict)."""
    bound = "at most " if kind == "budget" else ""  # the search usually stops before its last step
    text = f":material/schedule: Estimated time {bound}**{format_seconds(est.get('seconds'))}**"
    if est.get("first_view_seconds") is not None:
        text = (f":material/schedule: First view (second-order estimate) in **{format_seconds(est['first_view_seconds'])}**"
                f", final map in **{format_seconds(est.get('seconds'))}**")
    text += f", peak memory **{format_bytes(est.get('peak_memory_bytes'))}** on this machine"
    if est.get("seconds_per_step") is not None:
        budget = ", the time budget stops it first" if est.get("capped") else ""
        text += (f"; of it training {format_seconds(est['breakdown'].get('training'))} "
                 f"({int(est.get('steps') or 0):,} steps × {est['seconds_per_step']:.2f} s per step{budget})")
    return text + "."


def attach_job(kind: str, spec: Optional[dict], model: Optional[str] = None) -> Optional[str]:
    """The job this page follows: the session's, else (after a reload, in a new tab) the newest of this kind
    in the store: the one of `spec` if there is one, else the newest running or done (of `model`, if given)."""
    job_id = state.job_id(kind)
    if job_id is None:
        job_id = guarded(jobs.latest_job, kind, spec, model)
        if job_id:
            state.set_job(kind, job_id)
    return job_id


def followed_spec(kind: str, model: Optional[str] = None) -> Optional[dict]:
    """The spec of the job a page follows (attaching first, see `attach_job`), to seed the page's form from it
    before the form is drawn; None when the page follows no job."""
    job_id = attach_job(kind, None, model)
    if not job_id:
        return None
    try:
        return jobs.job_status(job_id).get("spec")
    except Exception:  # noqa: BLE001 - a job gone from the store: the form keeps its defaults
        return None


def seed_form_from_job(kind: str, form: dict, form_cls: Any, model: str) -> None:
    """Seed a page's form (`state.seed_form`): from what it was left at, else from the spec of the job the page
    follows (`form_cls.from_spec`, the binding's reverse direction), else the defaults."""
    state.seed_form(kind, form, lambda: form_cls.from_spec(followed_spec(kind, model)))


def start_job(kind: str, spec: dict) -> Optional[str]:
    """Submit a job and make it the page's job; errors are shown, not raised."""
    job_id = guarded(jobs.submit_job, kind, spec)
    if job_id:
        state.set_job(kind, job_id)
    return job_id


def _eta_text(status: dict) -> str:
    eta = jobs.time_left(status)  # starts from the page's estimate, then follows the job's own rate
    started = status.get("started")
    elapsed = (f"running for {format_seconds(time.time() - started).removeprefix('about ')}" if started
               else "waiting for a worker")
    return f"{elapsed} · time left {format_seconds(eta)}" if eta is not None else elapsed


def rerun_page() -> None:
    """Rerun the whole page, unless a rerun is already on its way (the user opened another page or clicked).

    `st.rerun()` asks for a rerun of the page whose script is running, and Streamlit keeps the newest of two
    pending requests: a panel's fragment that calls it just after the user clicked another page in the menu
    would replace that page switch with a rerun of the page being left (the address bar shows the new page, the
    content stays the old one: seen as the Curves page never drawing after Setup's speed measurement ended). A
    pending rerun redraws the page anyway, so none is needed. Streamlit has no public way to ask whether one is
    pending: the script's request queue is read defensively, and without it the page reruns as before."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    requests = getattr(get_script_run_ctx(), "script_requests", None)
    pending = getattr(getattr(requests, "_state", None), "name", None)
    if pending in ("RERUN", "STOP"):
        return
    st.rerun()


@st.fragment(run_every=REFRESH_S)
def _live_panel(kind: str, job_id: str, on_progress: Optional[Callable[[dict], None]]) -> None:
    status = guarded(jobs.job_status, job_id)
    if status is None:
        return
    if not jobs.is_active(status):
        rerun_page()  # the whole page: it draws the final results
    with st.container(border=True):
        fraction = float(status.get("fraction") or 0.0)
        st.progress(min(max(fraction, 0.0), 1.0),
                    text=f"**{fraction:.0%}** · {status.get('message') or 'starting'}")
        left, right = st.columns([4, 1])
        left.caption(_eta_text(status))
        if right.button("Cancel", key=f"{kind}_cancel", icon=":material/stop_circle:", width="stretch"):
            guarded(jobs.cancel_job, job_id)
            st.toast("Cancelling: the job stops at its next step; finished points are kept.")
    if on_progress is not None:
        on_progress(status)


def job_panel(kind: str, job_id: Optional[str], on_progress: Optional[Callable[[dict], None]] = None,
              spec: Any = ...) -> Optional[dict]:
    """Show the job's state; while it runs, a self-refreshing progress panel. Returns its status (or None).

    With `spec` (the page's current choices; None when they are not valid), how an earlier run ended
    (failed, cancelled, interrupted) is shown only while the choices are still that run's: once the settings
    change, its message would be about a cause that may be fixed, so it is not drawn (the status is still
    returned). While a run started with other choices is going, a line says so above its progress."""
    if not job_id:
        return None
    status = guarded(jobs.job_status, job_id)
    if status is None:
        return None
    state_ = status["state"]
    current = spec is ... or jobs.same_job(status, spec)
    if jobs.is_active(status):
        if not current:
            st.caption(":material/info: The run below was started with other settings than those shown here.")
        _live_panel(kind, job_id, on_progress)
    elif not current and state_ != "done":
        pass  # an earlier run with other choices: how it ended says nothing about the current ones
    elif state_ == "done":
        took = (status.get("finished") or 0) - (status.get("started") or status.get("finished") or 0)
        st.caption(":material/check_circle: Finished" + (f" in {format_seconds(took)}." if took > 0 else "."))
    elif state_ == "failed":
        st.error(f"The run failed: {status.get('error') or 'unknown error'}. Change the settings and run again; "
                 "finished points are kept.", icon=":material/error:")
    elif state_ == "cancelled":
        st.warning("The run was cancelled. Finished points are kept: run again to resume where it stopped.",
                   icon=":material/stop_circle:")
    elif state_ == "interrupted":
        st.warning(status.get("error") or "The run stopped; run again to resume.", icon=":material/warning:")
    return status


def short_job_result(kind: str, spec: dict, key: str) -> Optional[dict]:
    """The result of a short job (a plan, this machine's speed, a generation) run outside the page's process.

    A job with the same spec that finished before returns at once (the job system keeps its result); otherwise
    the job starts and a progress panel with Cancel shows until it is done. Returns None until then. A run that
    failed with these very settings is shown once and not restarted on every rerun: a Retry button starts it.
    `key` names the panel's widgets (two panels on one page need two keys)."""
    job_id = guarded(jobs.latest_job, kind, spec)
    status = guarded(jobs.job_status, job_id) if job_id else None
    failed = status is not None and jobs.same_job(status, spec) and status.get("state") in ("failed", "interrupted")
    if failed and not st.button("Retry", key=f"{key}_retry", icon=":material/refresh:"):
        st.error(f"{status.get('error') or 'The run failed.'}", icon=":material/error:")
        return None
    if status is None or not jobs.same_job(status, spec) or failed or status.get("state") == "cancelled":
        job_id = guarded(jobs.submit_job, kind, spec)
    if not job_id:
        return None
    status = job_panel(key, job_id, spec=spec)
    return status.get("result") if status and status.get("state") == "done" else None


def allocation_plan(settings: dict, allocator: str, target: float, key: str) -> Optional[dict]:
    """An allocator's plan for the Setup model: at once when it needs no model forward, else from its short job
    (`allocation.plan_spec`) with a progress panel; None until it is made (a problem is shown, not raised)."""
    try:
        made = allocation.plan_now(settings, allocator, target)
    except Exception as error:  # noqa: BLE001 - shown as one sentence
        show_error(error)
        return None
    if made is not None:
        return made
    spec = guarded(allocation.plan_spec, settings, allocator, target)
    return short_job_result("plan", spec, key) if spec else None


def finished_result(kind: str, spec: Optional[dict], run: bool, model: Optional[str], hint: str) -> dict:
    """The page's one-job flow: start the job when `run` was pressed, show its panel, and return the finished
    result; until there is one, show `hint` (when nothing runs) and stop the page run there."""
    if run and spec is not None:
        start_job(kind, spec)
    status = job_panel(kind, attach_job(kind, spec, model), spec=spec)
    result = status.get("result") if status and status.get("state") == "done" else None
    if not result:
        if status is None or not jobs.is_active(status):
            st.info(hint, icon=":material/info:")
        st.stop()
    return result


def side_by_side(texts: dict, pruned_label: str) -> None:
    """The prompt, then the dense and the pruned model's texts in two bordered columns.

    texts: {"prompt", "dense", "pruned"} (one sample of `claims.compare_generations` / `compare_models`);
    pruned_label: the pruned column's heading, e.g. "Pruned model (50 % sparse)".
    """
    # Generated text is shown as text: "# Test the function" is a line a model wrote, not a heading, and code
    # keeps its line breaks and indentation.
    st.text(f"Prompt: “{texts['prompt']}”")
    dense_col, pruned_col = st.columns(2)
    with dense_col.container(border=True):
        st.markdown("**Dense model**")
        st.text(texts["dense"] or "(no text)")
    with pruned_col.container(border=True):
        st.markdown(pruned_label)
        st.text(texts["pruned"] or "(no text)")
