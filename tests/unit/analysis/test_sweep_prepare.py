"""A large grid says what it does while its points are prepared (plans, keys, stored results), and a cancel
lands there, before any point is computed."""

from __future__ import annotations

import pytest

from pruning_core.analysis.sweep import PREPARE_REPORT_EVERY, SweepSpec, run_sweep
from pruning_core.errors import JobCancelled
from pruning_core.protocol import Protocol
from pruning_core.store import Store


def test_preparing_a_large_grid_reports_progress_and_can_be_cancelled(tmp_path):
    count = PREPARE_REPORT_EVERY + 5
    spec = SweepSpec(model="tiny-llama", methods=("magnitude",), structures=("unstructured",),
                     sparsities=tuple(round(0.001 * (i + 1), 6) for i in range(count)), eval_corpora=("news",),
                     protocol=Protocol(calib="news", nsamples=2, seqlen=16, eval_windows=1))
    messages = []

    def progress(fraction, message):
        messages.append(message)
        if message.startswith(f"preparing point {PREPARE_REPORT_EVERY + 1:,}/"):
            raise JobCancelled("cancelled while preparing")

    store = Store(tmp_path / "s.sqlite")
    with pytest.raises(JobCancelled):
        run_sweep(spec, store=store, progress=progress)
    assert f"preparing point 1/{count:,}: plans and stored results" in messages
    assert not any("pruning" in m for m in messages)  # cancelled before any point ran
