"""The dashboard's doors into `pruning_core`: one module per page, plus the ones every page shares.

Pages import the modules they use (`from app.services import sweep, jobs`); nothing is re-exported here, so a
page's imports say which capabilities it touches.

Shared: `models` (cached models and their facts), `corpora` (previews, token counts, uploads), `settings`
(the Setup settings on disk and the protocol of every job spec), `jobs` (the job client: submit, follow,
cancel, estimates), `choices` (the registries' names every form offers), `forms` (the binding between a
page's form and its job spec). Per page: `sweep` (Curves), `sensitivity`, `allocation`, `budget`, `what_if`,
`structured`, `recovery`, `continual`, `export`, `summary`. `navigation` holds every hand-off between pages.

Rules kept here (see DESIGN.md): models are loaded once per (source, identity) with `st.cache_resource` and
never mutated; long work is a job of `pruning_core.jobs.runner.JobRunner` in a worker process (inline with
``PRUNESCOPE_INLINE_JOBS=1``, AppTest only); each job spec records the model's identity, so a changed model
file is never served a result computed for its old weights. Decisions that are not about the dashboard (which
stored map to show, merging sweeps, the recommendation) live in the library; these modules call them.
"""
