"""The SQLite results store: content keys, results and runs, concurrent writers, crash safety, tensor artifacts."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import sqlite3
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from pruning_core.store import ArtifactMissing, Store, content_hash, home_dir

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path / "home"))
    return Store()


def test_home_dir_follows_env_and_is_created(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path / "a" / "b"))
    assert home_dir() == tmp_path / "a" / "b"
    assert home_dir().is_dir()
    assert Store().path == tmp_path / "a" / "b" / "prunescope.sqlite"


def test_content_hash_is_canonical():
    # Exact canonical form: sorted keys, no whitespace.
    assert content_hash({"b": 1, "a": [1, 2]}) == hashlib.sha256(b'{"a":[1,2],"b":1}').hexdigest()
    assert content_hash({"x": 0.5, "y": (1, 2)}) == content_hash({"y": [1, 2], "x": float("0.50")})
    assert content_hash({"sparsity": 1}) == content_hash({"sparsity": 1.0})
    assert content_hash({"sparsity": 0.5}) != content_hash({"sparsity": 0.5000001})
    assert content_hash({"a": True}) != content_hash({"a": 1})
    assert content_hash({"path": Path("/x/y")}) == content_hash({"path": "/x/y"})
    with pytest.raises(TypeError, match="cannot hash"):
        content_hash({"f": object()})


def test_results_and_runs_round_trip(store):
    run = content_hash({"run": 1})
    store.put_run(run, "sweep", {"methods": ["wanda"], "sparsities": [0.3, 0.5]})
    payloads = [{"sparsity": s, "ppl": 10 + s, "inf": float("inf")} for s in (0.5, 0.1, 0.3)]
    for p in payloads:
        store.put_result(content_hash(p["sparsity"]), "point", p, run_key=run)
    assert store.results_for_run(run) == payloads  # insertion order, not key order
    # Re-putting a key replaces the payload but keeps its place in the run.
    store.put_result(content_hash(0.5), "point", {"sparsity": 0.5, "ppl": 99.0}, run_key=run)
    assert [p["ppl"] for p in store.results_for_run(run)] == [99.0, 10.1, 10.3]
    assert store.get_result(content_hash(0.1)) == payloads[1]
    assert store.get_result("missing") is None
    info = store.get_run(run)
    assert info["kind"] == "sweep" and info["spec"]["sparsities"] == [0.3, 0.5] and info["points"] == 3
    store.put_run("other", "sensitivity", {})
    assert [r["key"] for r in store.list_runs("sweep")] == [run]
    assert {r["key"] for r in store.list_runs()} == {run, "other"}
    # A second Store on the same file (another page, another process) sees the same data.
    assert Store(store.path).results_for_run(run)[1] == payloads[1]


def _write_points(store: Store, writer: int, n: int, barrier) -> None:
    barrier.wait()  # start both writers together so that they contend for the write lock
    start = time.time()
    for i in range(n):
        store.put_result(f"w{writer}-{i}", "point", {"writer": writer, "i": i}, run_key=f"run{writer}")
    store.put_result(f"span{writer}", "span", {"start": start, "end": time.time()})


def test_two_processes_write_concurrently(tmp_path, monkeypatch):
    # Spawned children re-import the parent's __main__; after an AppTest that can be a page script. A bare
    # __main__ keeps the children to this test's own code.
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    # The store file does not exist yet: both processes also race to create the schema and switch to WAL.
    store = Store(tmp_path / "db.sqlite")
    ctx = mp.get_context("spawn")  # a fresh interpreter, and the Store travels pickled (its path only)
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_write_points, args=(store, w, 200, barrier)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    spans = [store.get_result(f"span{w}") for w in (0, 1)]
    assert spans[0]["start"] < spans[1]["end"] and spans[1]["start"] < spans[0]["end"], "writers did not overlap"
    assert store.execute("SELECT COUNT(*) AS n FROM results WHERE kind = 'point'")[0]["n"] == 400
    assert store.execute("PRAGMA integrity_check")[0][0] == "ok"
    assert store.execute("PRAGMA journal_mode")[0][0] == "wal"
    for w in (0, 1):
        assert [p["i"] for p in store.results_for_run(f"run{w}")] == list(range(200))


def test_acknowledged_writes_survive_a_killed_process(tmp_path):
    db = tmp_path / "db.sqlite"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from pruning_core.store import Store
        s = Store({str(db)!r})
        for i in range(50):
            s.put_result(f"k{{i}}", "point", {{"i": i}})
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint, no cleanup
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert proc.returncode == -9
    store = Store(db)
    assert store.execute("SELECT COUNT(*) AS n FROM results")[0]["n"] == 50
    assert store.get_result("k49") == {"i": 49}
    assert store.execute("PRAGMA integrity_check")[0][0] == "ok"


def test_failed_transaction_rolls_back(store):
    with pytest.raises(RuntimeError):
        with store.transaction() as conn:
            conn.execute("INSERT INTO results(key, kind, payload, created) VALUES ('x', 'k', '{}', 0)")
            raise RuntimeError("boom")
    assert store.get_result("x") is None
    with pytest.raises(sqlite3.IntegrityError):  # the connection is usable again afterwards
        with store.transaction() as conn:
            conn.execute("INSERT INTO results(key, kind, payload, created) VALUES ('y', 'k', '{}', 0)")
            conn.execute("INSERT INTO results(key, kind, payload, created) VALUES ('y', 'k', '{}', 0)")
    assert store.get_result("y") is None


def test_tensor_artifacts_round_trip_bit_exactly(store):
    import torch

    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 48, generator=g)
    tensors = {
        "weight": base,
        "half": torch.randn(7, 5, generator=g).to(torch.bfloat16),
        "mask": torch.rand(64, 48, generator=g) > 0.5,
        "counts": torch.randint(-2**40, 2**40, (9,), generator=g),
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 4),
        "view": base[:, :8],  # a non-contiguous view sharing memory with "weight"
    }
    tensors["weight"][0, 0] = float("nan")  # NaN payload bits must survive too
    digest = store.save_tensors(tensors, "mask", metadata={"method": "wanda"})
    loaded = store.load_tensors(digest)
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        got = loaded[name]
        assert got.dtype == t.dtype and got.shape == t.shape, name
        assert got.contiguous().view(-1).view(torch.uint8).tolist() == \
            t.contiguous().view(-1).view(torch.uint8).tolist(), name

    # Same tensors (copies, other order) -> same hash and one file; one changed value -> another hash.
    again = {k: tensors[k].clone() for k in reversed(list(tensors))}
    assert store.save_tensors(again, "mask") == digest
    changed = dict(again, scalar=torch.tensor(3.2500002))
    assert store.save_tensors(changed, "mask") != digest
    files = sorted(p.name for p in store.artifacts_dir.iterdir())
    assert len(files) == 2 and not any(f.endswith(".tmp") for f in files)

    info = store.artifact_info(digest)
    assert info["kind"] == "mask" and info["bytes"] == store.artifact_path(digest).stat().st_size > 0
    with pytest.raises(ArtifactMissing, match="recompute"):
        store.load_tensors("0" * 64)


def test_a_deleted_result_is_gone_and_deleting_a_missing_one_is_harmless(tmp_path):
    from pruning_core.store import Store

    store = Store(tmp_path / "s.sqlite")
    store.put_result("k", "kind", {"x": 1})
    store.delete_result("k")
    assert store.get_result("k") is None and not store.has_result("k")
    store.delete_result("k")  # nothing there: no error
