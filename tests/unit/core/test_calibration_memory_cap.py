"""A memory case of the fault suite: a 20 MB calibration file must not cost much more memory than a 1 MB one with
the same protocol (the run reads and tokenizes only what its windows need). Each run is a real `prunescope sweep`
in its own process (peak resident memory from the child's ru_maxrss), the way `benchmarks/calibration_memory.py`
measures it; memory, unlike time, does not depend on how busy the machine is."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def _benchmark():
    spec = importlib.util.spec_from_file_location("calibration_memory", REPO / "benchmarks" / "calibration_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_20_mb_calibration_file_costs_at_most_1_5x_the_memory_of_a_1_mb_one(tmp_path):
    bench = _benchmark()
    peaks = {}
    for megabytes in (1, 20):
        file = tmp_path / f"calibration-{megabytes}mb.txt"
        assert bench.write_text_file(file, megabytes) >= megabytes * 1_000_000
        run = bench.run_one("tiny-llama", file, tmp_path / f"home-{megabytes}", tmp_path / f"out-{megabytes}")
        assert run["code"] == 0
        peaks[megabytes] = run["peak_rss_bytes"]
    assert peaks[20] <= bench.TARGET_RATIO * peaks[1], peaks
