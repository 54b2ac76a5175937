"""The results store: one SQLite database plus content-addressed artifact files.

Everything PruneScope computes (a sweep point, a sensitivity map, a dense perplexity, a run summary, a job's
state and progress) is a row keyed by a content hash of everything that determines it, so a second request for
the same thing is a lookup. Large tensors (masks, statistics) are safetensors files beside the database,
named by the hash of their contents and referenced from the `artifacts` table.

Why SQLite: it is an embedded, real database that several processes (the dashboard, job workers, the CLI) can
write at once. We use WAL journaling (readers never block the writer), a busy timeout (a writer waits for the
lock instead of failing), `BEGIN IMMEDIATE` for read-modify-write (no lock-upgrade deadlocks) and autocommit
for single statements, so every write is committed the moment the call returns and a crash loses nothing that
was acknowledged.

Layout under `$PRUNESCOPE_HOME` (default `~/.cache/prunescope`):
    prunescope.sqlite (+ -wal, -shm)   the database
    artifacts/<sha256>.safetensors       tensor artifacts
    logs/job-<id>.log                    job worker output and tracebacks (written by `pruning_core.jobs.runner`)
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional

from pruning_core.errors import PruneScopeError
from pruning_core.home import home_dir

if TYPE_CHECKING:  # torch is imported lazily: the job worker must start (and heartbeat) before heavy imports
    import torch

#: Bump when the schema changes incompatibly; recorded in `PRAGMA user_version`.
SCHEMA_VERSION = 1

#: How long (seconds) a writer waits for another process's write lock before giving up. Writes are short
#: (one row), so 30 s only runs out when something is badly wrong (a process stuck inside a transaction).
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key      TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,
    payload  TEXT NOT NULL,          -- JSON object
    created  REAL NOT NULL           -- unix time, seconds
);
CREATE INDEX IF NOT EXISTS results_kind ON results(kind);

CREATE TABLE IF NOT EXISTS runs (
    key      TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,
    spec     TEXT NOT NULL,          -- JSON object
    created  REAL NOT NULL
);

-- A run groups result rows (its points); rowid order is insertion order, which results_for_run keeps.
CREATE TABLE IF NOT EXISTS run_points (
    run_key    TEXT NOT NULL,
    point_key  TEXT NOT NULL,
    PRIMARY KEY (run_key, point_key)
);

CREATE TABLE IF NOT EXISTS jobs (
    id                TEXT PRIMARY KEY,  -- uuid4 hex
    key               TEXT NOT NULL,     -- content_hash({"kind": kind, "spec": spec}); equal keys = same job
    kind              TEXT NOT NULL,
    spec              TEXT NOT NULL,     -- JSON object
    state             TEXT NOT NULL,     -- queued|running|done|failed|cancelled|interrupted
    fraction          REAL NOT NULL DEFAULT 0,   -- [0, 1]
    message           TEXT NOT NULL DEFAULT '',
    eta_seconds       REAL,              -- estimated seconds left, NULL when unknown
    created           REAL NOT NULL,     -- submitted (unix time, seconds)
    started           REAL,
    updated           REAL,
    finished          REAL,
    pid               INTEGER,           -- worker process id (on `host`)
    host              TEXT,              -- machine of the worker: a pid only means something there
    heartbeat         REAL,              -- last sign of life from the worker
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    error             TEXT,              -- one line for the user; the traceback is in the job's log file
    result            TEXT               -- JSON object returned by the job function
);
CREATE INDEX IF NOT EXISTS jobs_key ON jobs(key);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created);

CREATE TABLE IF NOT EXISTS artifacts (
    hash     TEXT PRIMARY KEY,       -- sha256 of the tensors' names, dtypes, shapes and bytes
    kind     TEXT NOT NULL,
    path     TEXT NOT NULL,          -- relative to the artifacts folder
    bytes    INTEGER NOT NULL,       -- file size
    created  REAL NOT NULL
);
"""

#: Columns of `jobs` that `update_job` may set (guards the f-string SQL below against typos and injection).
JOB_COLUMNS = (
    "id", "key", "kind", "spec", "state", "fraction", "message", "eta_seconds", "created", "started",
    "updated", "finished", "pid", "host", "heartbeat", "cancel_requested", "error", "result",
)
_JSON_JOB_COLUMNS = ("spec", "result")


class ArtifactMissing(PruneScopeError):
    """An artifact hash is recorded (or asked for) but its file is not in the store's artifacts folder."""


# ----------------------------------------------------------------------------------------------- hashing


def _canonical(obj: Any) -> Any:
    """Turn `obj` into plain JSON values whose serialisation is the same for equal meanings.

    Tuples become lists, paths strings, dataclasses dicts, enums their value, numpy/torch scalars Python numbers.
    A float with an integral value is written as an int, so `sparsity=1` and `sparsity=1.0` (or `nsamples=128.0`
    from a UI slider) key the same result; other floats keep `repr`'s shortest round-trip digits.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)  # int subclasses (IntEnum aside) collapse to int
    if isinstance(obj, float):
        if math.isfinite(obj) and obj == int(obj) and abs(obj) < 2**53:  # exactly representable integers only
            return int(obj)
        return float(obj)
    if isinstance(obj, enum.Enum):
        return _canonical(obj.value)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"content_hash: dict keys must be strings, got {k!r} ({type(k).__name__})")
            out[k] = _canonical(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((_canonical(v) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, PurePath):
        return obj.as_posix()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _canonical(dataclasses.asdict(obj))
    if type(obj).__module__ == "torch" and type(obj).__name__ == "dtype":
        return str(obj)  # "torch.float32"
    item = getattr(obj, "item", None)  # numpy scalars and one-element tensors
    if callable(item) and getattr(obj, "ndim", 0) == 0:
        return _canonical(item())
    raise TypeError(f"content_hash: cannot hash a {type(obj).__name__} ({obj!r:.80}); pass plain JSON values")


def canonical_json(obj: Any) -> str:
    """The canonical JSON text of `obj` (sorted keys, no whitespace, see `_canonical`) that `content_hash` hashes."""
    return json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(obj: Any) -> str:
    """sha256 hex digest (64 chars) of the canonical JSON of `obj`: equal meaning gives an equal key."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def tensors_hash(tensors: Mapping[str, "torch.Tensor"]) -> str:
    """sha256 hex digest of tensors' names, dtypes, shapes and raw bytes (order of the mapping does not matter)."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode("utf-8"))
        # View as bytes without a copy; reshape first because a 0-dim tensor cannot change its element size.
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _dumps(obj: Any) -> str:
    # Payloads are stored as written (not canonicalised) so they come back identical; NaN/inf are allowed
    # because a perplexity can legitimately be inf, and Python's json round-trips them. Values json cannot
    # write (numpy scalars, paths, dtypes) go through the same conversion as content_hash.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=_canonical)


# ------------------------------------------------------------------------------------------------- store


class Store:
    """SQLite results store plus artifact files; safe to use from several threads and processes.

    Each thread and each process opens its own connection lazily (SQLite connections must not cross a fork
    or be shared between threads), so a `Store` can be passed to `multiprocessing` workers as is.
    """

    def __init__(self, path: Optional[Path | str] = None):
        """Open (or create on first use) the store at `path`, default `home_dir()/prunescope.sqlite`."""
        self.path = Path(path).expanduser().resolve() if path is not None else home_dir() / "prunescope.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.artifacts_dir = self.path.parent / "artifacts"
        self.logs_dir = self.path.parent / "logs"
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # A Store pickles as its path only: the receiving process opens its own connection.
    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    # --------------------------------------------------------------------------------------- connection

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection in this process, opened (and the schema ensured) on first use."""
        conn = getattr(self._local, "conn", None)
        # After a fork the child inherits the parent's thread-local connection; using it would corrupt the
        # parent's SQLite state, so a pid change means: leave it alone and open a fresh one.
        if conn is not None and self._local.pid == os.getpid():
            return conn
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=True)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        self._retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone())
        # FULL: each commit is fsynced, so an acknowledged write survives even an OS crash, not only ours.
        conn.execute("PRAGMA synchronous=FULL")
        self._local.conn, self._local.pid = conn, os.getpid()
        self._ensure_schema(conn)
        return conn

    @staticmethod
    def _retry_locked(fn, attempts: int = 50):
        # Switching to WAL takes an exclusive lock and SQLite reports a clash as an immediate "locked" error
        # rather than waiting on the busy timeout; it only happens while two processes create the file at once.
        for i in range(attempts):
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or i == attempts - 1:
                    raise
                time.sleep(0.05)

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise PruneScopeError(
                f"The store {self.path} was written by a newer PruneScope (schema {version} > {SCHEMA_VERSION}); "
                "upgrade PruneScope or set PRUNESCOPE_HOME to another folder."
            )
        # One script inside one immediate transaction: two processes creating the store at once serialise here,
        # and CREATE ... IF NOT EXISTS makes the second one a no-op.
        try:
            conn.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nPRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (`BEGIN IMMEDIATE`): committed on exit, rolled back on an exception.

        Take the write lock up front so that a read-then-write sequence (check for a duplicate, then insert)
        is atomic across processes and cannot fail halfway with SQLITE_BUSY.
        """
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def execute(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        """Run one statement (autocommitted) and return its rows; for queries the typed API does not cover."""
        return self._conn().execute(sql, params).fetchall()

    def close(self) -> None:
        """Close this thread's connection (others close when their thread or process ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    # ------------------------------------------------------------------------------------------ results

    def put_result(self, key: str, kind: str, payload: dict, run_key: Optional[str] = None) -> None:
        """Store `payload` (a JSON-able dict) under `key`, replacing an earlier payload; link it to `run_key`.

        Committed before returning. Re-putting a key keeps its original `created` time and its place in
        its runs' order.
        """
        text = _dumps(payload)
        now = time.time()
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO results(key, kind, payload, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET kind = excluded.kind, payload = excluded.payload",
                (key, kind, text, now),
            )
            if run_key is not None:
                conn.execute("INSERT OR IGNORE INTO run_points(run_key, point_key) VALUES (?, ?)", (run_key, key))

    def get_result(self, key: str) -> Optional[dict]:
        """The payload stored under `key`, or None."""
        row = self._conn().execute("SELECT payload FROM results WHERE key = ?", (key,)).fetchone()
        return json.loads(row["payload"]) if row else None

    def has_result(self, key: str) -> bool:
        """Whether a result is stored under `key` (cheaper than `get_result` for resume checks)."""
        return self._conn().execute("SELECT 1 FROM results WHERE key = ?", (key,)).fetchone() is not None

    def delete_result(self, key: str) -> None:
        """Forget the result stored under `key` (nothing happens when there is none), so it is computed again."""
        self._conn().execute("DELETE FROM results WHERE key = ?", (key,))

    def results_for_run(self, run_key: str) -> list[dict]:
        """Payloads of the results linked to `run_key`, in the order they were first linked."""
        rows = self._conn().execute(
            "SELECT r.payload FROM run_points p JOIN results r ON r.key = p.point_key "
            "WHERE p.run_key = ? ORDER BY p.rowid",
            (run_key,),
        ).fetchall()
        return [json.loads(row["payload"]) for row in rows]

    def results_of_kind(self, kind: str) -> list[dict]:
        """Every stored result payload of `kind` (e.g. "sensitivity_map"), oldest first."""
        rows = self._conn().execute("SELECT payload FROM results WHERE kind = ? ORDER BY created, rowid",
                                    (kind,)).fetchall()
        return [json.loads(row["payload"]) for row in rows]

    def put_run(self, key: str, kind: str, spec: dict) -> None:
        """Record a run (a group of points, e.g. one sweep grid) with the spec that defines it; idempotent."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO runs(key, kind, spec, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET kind = excluded.kind, spec = excluded.spec",
                (key, kind, _dumps(spec), time.time()),
            )

    def get_run(self, key: str) -> Optional[dict]:
        """`{"key", "kind", "spec", "created", "points"}` of a run (points = number of linked results), or None."""
        row = self._conn().execute(
            "SELECT r.*, (SELECT COUNT(*) FROM run_points p WHERE p.run_key = r.key) AS points "
            "FROM runs r WHERE r.key = ?",
            (key,),
        ).fetchone()
        return self._run_dict(row) if row else None

    def list_runs(self, kind: Optional[str] = None) -> list[dict]:
        """All runs (of `kind` if given), newest first, as `get_run` dicts."""
        sql = "SELECT r.*, (SELECT COUNT(*) FROM run_points p WHERE p.run_key = r.key) AS points FROM runs r"
        params: tuple = ()
        if kind is not None:
            sql += " WHERE r.kind = ?"
            params = (kind,)
        rows = self._conn().execute(sql + " ORDER BY r.created DESC, r.rowid DESC", params).fetchall()
        return [self._run_dict(row) for row in rows]

    @staticmethod
    def _run_dict(row: sqlite3.Row) -> dict:
        return {"key": row["key"], "kind": row["kind"], "spec": json.loads(row["spec"]),
                "created": row["created"], "points": row["points"]}

    # ---------------------------------------------------------------------------------------- artifacts

    def artifact_path(self, hash: str) -> Path:  # noqa: A002 - "hash" is the documented name
        """Where the artifact with this content hash lives (whether or not it exists yet)."""
        if len(hash) != 64 or any(c not in "0123456789abcdef" for c in hash):
            raise ArtifactMissing(f"{hash!r} is not an artifact hash (64 lowercase hex characters).")
        return self.artifacts_dir / f"{hash}.safetensors"

    def save_tensors(self, tensors: Mapping[str, "torch.Tensor"], kind: str,
                     metadata: Optional[dict[str, str]] = None) -> str:
        """Write `tensors` as a safetensors file named by their content hash and record it; return the hash.

        The hash covers names, dtypes, shapes and bytes (not `kind` or `metadata`), so saving the same tensors
        twice writes one file. The write is atomic (temporary file, fsync, rename): a crash leaves either
        no file or a complete one, never a truncated artifact under a valid name.
        """
        from safetensors.torch import save_file

        digest = tensors_hash(tensors)
        path = self.artifact_path(digest)
        if not path.exists():
            self.artifacts_dir.mkdir(parents=True, exist_ok=True)
            seen: set[int] = set()
            plain = {}
            for name, t in tensors.items():
                t = t.detach().to("cpu").contiguous()
                # safetensors refuses tensors that share memory (views of one buffer); give each its own.
                if t.numel() and t.untyped_storage().data_ptr() in seen:
                    t = t.clone()
                if t.numel():
                    seen.add(t.untyped_storage().data_ptr())
                plain[name] = t
            meta = {str(k): str(v) for k, v in (metadata or {}).items()}
            meta.setdefault("prunescope_kind", kind)
            tmp = path.with_name(f".{digest}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
            try:
                save_file(plain, str(tmp), metadata=meta)
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, path)  # atomic; a concurrent writer of the same hash wrote identical tensors
            finally:
                if tmp.exists():
                    tmp.unlink()
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO artifacts(hash, kind, path, bytes, created) VALUES (?, ?, ?, ?, ?)",
                (digest, kind, path.name, path.stat().st_size, time.time()),
            )
        return digest

    def load_tensors(self, hash: str) -> dict[str, "torch.Tensor"]:  # noqa: A002
        """The tensors saved under `hash` (on CPU, bit-exact); `ArtifactMissing` if the file is gone."""
        from safetensors.torch import load_file

        path = self.artifact_path(hash)
        if not path.exists():
            raise ArtifactMissing(
                f"Artifact {hash[:12]}... is not in {self.artifacts_dir}; it was deleted or never saved - "
                "recompute it (the run that made it will redo only the missing part)."
            )
        return load_file(str(path))

    def artifact_info(self, hash: str) -> Optional[dict]:  # noqa: A002
        """`{"hash", "kind", "path", "bytes", "created"}` of a recorded artifact (path absolute), or None."""
        row = self._conn().execute("SELECT * FROM artifacts WHERE hash = ?", (hash,)).fetchone()
        if row is None:
            return None
        info = dict(row)
        info["path"] = str(self.artifacts_dir / row["path"])
        return info

    # --------------------------------------------------------------------------------------------- jobs
    # Row access only; the job lifecycle (spawning, heartbeats, cancellation) lives in pruning_core.jobs.runner.

    def insert_job(self, row: dict, conn: Optional[sqlite3.Connection] = None) -> None:
        """Insert a job row (keys from `JOB_COLUMNS`; `spec`/`result` as dicts). Pass `conn` inside a transaction."""
        row = self._job_encode(row)
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        (conn or self._conn()).execute(f"INSERT INTO jobs({cols}) VALUES ({marks})", tuple(row.values()))

    def update_job(self, job_id: str, only_if_state: Optional[tuple[str, ...]] = None,
                   conn: Optional[sqlite3.Connection] = None, **fields: Any) -> bool:
        """Set `fields` of job `job_id`; with `only_if_state`, only while its state is one of those.

        Returns whether a row changed. The state guard makes transitions race-free: a worker that finishes
        at the moment someone marks it interrupted cannot be overwritten, and vice versa.
        """
        if not fields:
            return False
        fields = self._job_encode(fields)
        sets = ", ".join(f"{name} = ?" for name in fields)
        sql = f"UPDATE jobs SET {sets} WHERE id = ?"
        params: list = [*fields.values(), job_id]
        if only_if_state:
            sql += f" AND state IN ({', '.join('?' for _ in only_if_state)})"
            params.extend(only_if_state)
        cur = (conn or self._conn()).execute(sql, params)
        return cur.rowcount > 0

    def get_job(self, job_id: str, conn: Optional[sqlite3.Connection] = None) -> Optional[dict]:
        """The job row as a dict (`spec`/`result` decoded), or None."""
        row = (conn or self._conn()).execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job_decode(row) if row else None

    def jobs_with_key(self, key: str, conn: Optional[sqlite3.Connection] = None) -> list[dict]:
        """All jobs with this content key, newest first."""
        rows = (conn or self._conn()).execute(
            "SELECT * FROM jobs WHERE key = ? ORDER BY created DESC, rowid DESC", (key,)).fetchall()
        return [self._job_decode(r) for r in rows]

    def recent_jobs(self, limit: int = 50) -> list[dict]:
        """The `limit` most recently submitted jobs, newest first."""
        rows = self._conn().execute(
            "SELECT * FROM jobs ORDER BY created DESC, rowid DESC LIMIT ?", (int(limit),)).fetchall()
        return [self._job_decode(r) for r in rows]

    @staticmethod
    def _job_encode(fields: dict) -> dict:
        unknown = set(fields) - set(JOB_COLUMNS)
        assert not unknown, f"unknown job columns {sorted(unknown)}"
        return {k: (_dumps(v) if k in _JSON_JOB_COLUMNS and v is not None else v) for k, v in fields.items()}

    @staticmethod
    def _job_decode(row: sqlite3.Row) -> dict:
        out = dict(row)
        for k in _JSON_JOB_COLUMNS:
            if out.get(k) is not None:
                out[k] = json.loads(out[k])
        return out
