"""What the dashboard's AppTests share: the tiny-model settings, opening a page as a new browser session, the
checks every page test makes, an upload as a user drops it, and jobs written straight into the store.

The environment these need (tiny model by default, a fresh PRUNESCOPE_HOME, inline jobs) is the `app_env`
fixture of tests/app/conftest.py; a test module asks for it with `pytestmark = pytest.mark.usefixtures("app_env")`.
Import this module after `pytest.importorskip("streamlit")`: it imports Streamlit's AppTest.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO_ROOT = Path(__file__).resolve().parents[2]
MAIN = str(REPO_ROOT / "app" / "main.py")  # the multipage app (navigation, page switches)
# Settings small enough for a page's run to finish in seconds on the tiny random model.
SMALL = {"model": "tiny-llama", "calib": "news", "calib_column": None, "eval_corpora": ["news"],
         "nsamples": 4, "seqlen": 32, "eval_windows": 4, "seed": 0, "dtype": "float32"}
UPLOAD = "upload a file…"  # the Setup page's calibration choice that shows the uploader

# The element groups whose text a page check reads: prose and headings, or prose and status messages.
PAGE_TEXT = ("markdown", "caption", "info", "warning", "subheader")
STATUS_TEXT = ("markdown", "caption", "info", "warning", "success")


def page(name: str, settings: dict | None = SMALL, timeout: float = 120, **state) -> AppTest:
    """A new browser session (a reload or a second tab is one) on pages/<name>.py, run once.

    `settings`: the session's shared settings (copied; None: nothing preset, as in a fresh browser);
    `state`: further session-state keys preset before the run (e.g. jobs={...}, the job the session follows);
    `timeout`: seconds one run of the script may take.
    """
    at = AppTest.from_file(str(REPO_ROOT / "pages" / f"{name}.py"), default_timeout=timeout)
    if settings is not None:
        at.session_state["settings"] = dict(settings)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def multipage_app(settings: dict = SMALL) -> AppTest:
    """A new session on the multipage app (app/main.py, its home page shown), run once."""
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.session_state["settings"] = dict(settings)
    return at.run()


def no_exception(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def ok(at: AppTest) -> AppTest:
    """`at` after a run with neither an exception nor an error message."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def tables_show_no_none(at: AppTest) -> AppTest:
    """`at` after checking that no table on the page shows a missing value as "None" (or "nan"): a cell without a
    value must say so in words or with the dash (`app.formats.MISSING`)."""
    for table in at.dataframe:
        frame = table.value
        frame = frame.data if hasattr(frame, "data") else frame  # a Styler: its frame
        assert not frame.isna().any().any(), (table.key, frame)
        cells = {str(v) for v in frame.to_numpy().ravel()}
        assert not cells & {"None", "nan", "NaN"}, (table.key, frame)
    return at


def errors(at: AppTest) -> list[str]:
    return [str(e.value) for e in at.error]


def text_of(at: AppTest, groups: tuple[str, ...] = PAGE_TEXT) -> str:
    """The text of the page's elements of `groups` (attribute names of AppTest), one element a line."""
    return "\n".join(str(e.value) for group in groups for e in getattr(at, group))


def status_text_of(at: AppTest) -> str:
    """The page's prose and status messages, success included ("Settings saved", a finished run's panel)."""
    return text_of(at, STATUS_TEXT)


def paragraphs(n: int, topic: str) -> bytes:
    """A plain-text file of `n` paragraphs (about 20 tokens each), as a user uploads."""
    return "\n\n".join(f"Paragraph {i} of the {topic} notes: pruning removes weights from a language model, "
                       f"and the text says how much it costs." for i in range(n)).encode()


def upload(at: AppTest, name: str, content: bytes) -> AppTest:
    """Choose "Upload a file…" and drop `content` as `name` on the uploader, as a user does."""
    at.selectbox(key="setup_calib").set_value(UPLOAD).run()
    at.get("file_uploader")[0].set_value((name, content, "text/plain"))
    return no_exception(at.run())


def insert_job(kind: str, spec: dict, state: str, result: dict | None = None, *, error: str | None = None,
               fraction: float | None = None, age_s: float = 0.0) -> str:
    """A job row written straight into the store (no run), keyed by its content as a submitted job is.

    `fraction`: progress in [0, 1] (default: 1.0 when done, else 0.3); `age_s`: seconds since it was
    created and finished (the newest job of a kind is the one with the smallest age). Returns the job id.
    """
    from pruning_core.jobs.runner import job_key
    from pruning_core.store import Store

    job_id, now = uuid.uuid4().hex, time.time() - age_s
    if fraction is None:
        fraction = 1.0 if state == "done" else 0.3
    Store().insert_job({"id": job_id, "key": job_key(kind, spec), "kind": kind, "spec": spec, "state": state,
                        "fraction": fraction, "message": state, "created": now, "updated": now,
                        "started": now - 1, "finished": None if state == "running" else now, "result": result,
                        "error": error, "cancel_requested": 0})
    return job_id


LAYERS, MODULES = [0, 1], ["q", "k", "v", "o", "gate", "up", "down"]


def fake_map(metric: str, sparsity: float = 0.5, scale: float = 1.0) -> dict:
    """A sensitivity map of a 2-layer model, shaped like pruning_core.analysis.sensitivity's: cell (i, j) is
    (i + 1)(j + 1) * sparsity * scale, so layer 1's down projection is the most sensitive."""
    values = [[(i + 1) * (j + 1) * sparsity * scale for j in range(len(MODULES))] for i in range(len(LAYERS))]
    return {"layers": LAYERS, "modules": MODULES, "values": values, "metric": metric, "method": "wanda",
            "sparsity": sparsity, "baseline_loss": 5.6, "layer_values": None,
            "module_names": [[f"model.layers.{l}.{m}" for m in MODULES] for l in LAYERS],
            "module_sizes": [[4096] * len(MODULES) for _ in LAYERS], "protocol": {}, "seconds": 1.0}


def _point(method: str, sparsity: float, ppl: float) -> dict:
    return {"method": method, "structure": "unstructured", "target_sparsity": sparsity, "sparsity": sparsity,
            "ppl": {"wiki": ppl}, "prune_seconds": 1.0, "eval_seconds": 1.0, "propagation": "pruned"}


def stored_sweep() -> str:
    """A finished sweep job in the store (the Summary needs one): Wanda usable at 50 %, magnitude broken at
    90 % (×3,400), perplexity on wiki. Returns the job id."""
    result = {"model": {"name": "tiny", "fingerprint": "f"}, "dense": {"ppl": {"wiki": 18.02}},
              "protocol": {"calib": "news", "nsamples": 4, "seqlen": 32, "seed": 0, "eval_windows": 4,
                           "dtype": "float32", "propagation": "pruned"},
              "points": [_point("wanda", 0.3, 18.5), _point("wanda", 0.5, 19.76), _point("wanda", 0.7, 40.1),
                         _point("magnitude", 0.3, 19.0), _point("magnitude", 0.9, 61_530.0)]}
    return insert_job("sweep", {"model": "tiny-llama"}, "done", result)


_KIND_CELL = re.compile(r"^\*\*(Unstructured · .+|\d+:\d+ · .+|Structured)\*\*$")


def summary_kinds(at: AppTest) -> dict[str, list[str]]:
    """The Summary's table of each kind of pruning as {kind: [setting, perplexity, size, speed]}, read from its
    cells (markdown, a row after the header "**kind**", its kind cell bold), in the page's order."""
    texts = [str(m.value) for m in at.markdown]
    i, rows = texts.index("**kind**") + 6, {}  # six header cells, the export column's included
    while i + 4 < len(texts) and _KIND_CELL.match(texts[i]):
        rows[texts[i].strip("*")] = texts[i + 1:i + 5]
        i += 5
    return rows


FRONTIER_PROTOCOL = {"calib": "news", "nsamples": 4, "seqlen": 32, "seed": 0, "eval_windows": 4, "dtype": "float32"}
DENSE = {"weight_bytes": 269_060_552, "total_bytes": 269_061_587}
Q4_1_NOTE = "The embedded model's weights were themselves 4-bit (Q4_1)."


def _quantized(method, bits, group, symmetric, size, wiki, news, note=None):
    return {"setting": {"method": method, "bits": bits, "group_size": group, "symmetric": symmetric,
                        "scale_dtype": "float16", "actorder": "static" if method == "gptq" else "none",
                        "start": "dense"},
            "bytes": {"compressed-tensors": {"weight_bytes": size, "total_bytes": size + 5000},
                      "safetensors-16bit": DENSE},
            "ppl": {"wiki": wiki, "news": news}, "sparsity": 0.0, "note": note}


def stored_frontier(protocol: dict | None = None) -> dict:
    """A finished frontier job of the tiny model (under SMALL's protocol, or `protocol`: the settings' fields),
    built by the library from points: dense 269.1 MB, GPTQ 8-bit, 4-bit in groups of 64 (the smallest within
    +10 % on wiki and news), RTN 4-bit groups of 32 asymmetric (the Q4_1 layout, with its note), 3-bit, Wanda
    50 % (the dense size) and structured 20 %. Returns the frontier dict."""
    from pruning_core.frontier.build import build_frontier
    from pruning_core.frontier.points import dense_point, quantized_point, structured_point, sweep_point

    points = [dense_point({"wiki": 18.02, "news": 20.0}, DENSE, name="tiny"),
              quantized_point(_quantized("gptq", 8, None, True, 140_000_000, 18.4, 20.3)),
              quantized_point(_quantized("gptq", 4, 64, True, 79_000_000, 19.1, 21.3)),
              quantized_point(_quantized("rtn", 4, 32, False, 83_000_000, 18.3, 20.3, Q4_1_NOTE)),
              quantized_point(_quantized("gptq", 3, 64, True, 62_000_000, 25.0, 28.0)),
              sweep_point({"method": "wanda", "structure": "unstructured", "sparsity": 0.5, "target_sparsity": 0.5,
                           "ppl": {"wiki": 19.76, "news": 22.0}}, DENSE),
              structured_point({"ratio": 0.2, "measured_ratio": 0.2, "config": {"units": ["heads", "channels"]},
                                "ppl": {"wiki": 21.0, "news": 24.0}}, {"weight_bytes": 216_000_000})]
    frontier = build_frontier(points, ["wiki", "news"], max_increase=0.10)
    protocol = {k: v for k, v in (protocol or FRONTIER_PROTOCOL).items() if k in FRONTIER_PROTOCOL}
    spec = {"model": "tiny-llama", "techniques": ["dense"], "protocol": protocol}
    insert_job("frontier", spec, "done", {"spec": spec, "model": {"name": "tiny"}, "protocol": protocol,
                                          "frontier": frontier, "measured": []})
    return frontier
