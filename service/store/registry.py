"""The embedded SQLite registry: jobs and their event logs, model versions, and datasets.

One connection, guarded by a lock, serves every thread of the server process;
worker processes never write here (they report through the job runner).
"""

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from torchwire.service.core.jobstates import ACTIVE_STATES, QUEUED
from torchwire.service.core.records import (
    EventRecord,
    JobRecord,
    ModelVersionRecord,
    VersionMetadata,
)
from torchwire.service.core.spec import TrainSpec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    model_name TEXT NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    device TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    model_version INTEGER NOT NULL DEFAULT 0,
    best_epoch INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (created_at);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS model_names (
    name TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS model_versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    job_id TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    metadata TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS artifacts (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    format TEXT NOT NULL,
    created_at REAL NOT NULL,
    metadata TEXT NOT NULL,
    PRIMARY KEY (name, version, format)
);
CREATE TABLE IF NOT EXISTS batching (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT NOT NULL,
    split TEXT NOT NULL,
    created_at REAL NOT NULL,
    metadata TEXT NOT NULL,
    PRIMARY KEY (name, split)
);
"""


class Registry:
    """Thread-safe access to the SQLite registry at `path`."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Closes the connection."""
        with self._lock:
            self._db.close()

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _write(self, *statements: tuple[str, tuple]) -> None:
        """Runs statements in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------ jobs

    def create_job(self, job_id: str, spec: TrainSpec) -> None:
        """Records a new job in state QUEUED."""
        self._write(
            (
                "INSERT INTO jobs (id, model_name, state, request, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (job_id, spec.model_name, QUEUED, json.dumps(spec.to_dict()), time.time()),
            )
        )

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Sets columns of a job (state, started_at, finished_at, device, error, ...)."""
        columns = ", ".join(f"{name} = ?" for name in fields)
        self._write((f"UPDATE jobs SET {columns} WHERE id = ?", (*fields.values(), job_id)))

    def get_job(self, job_id: str) -> JobRecord | None:
        """The job, or None."""
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def list_jobs(self, state: str = "", model_name: str = "", limit: int = 100) -> list[JobRecord]:
        """Jobs newest first, optionally filtered by state and model."""
        where, args = [], []
        if state:
            where.append("state = ?")
            args.append(state)
        if model_name:
            where.append("model_name = ?")
            args.append(model_name)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._query(
            f"SELECT * FROM jobs {clause} ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (*args, limit),
        )
        return [_job(row) for row in rows]

    def count_jobs(self, state: str) -> int:
        """How many jobs are in `state`."""
        return int(self._query("SELECT COUNT(*) FROM jobs WHERE state = ?", (state,))[0][0])

    def active_jobs(self) -> list[JobRecord]:
        """Queued and running jobs, oldest first."""
        rows = self._query(
            "SELECT * FROM jobs WHERE state IN (?, ?) ORDER BY created_at, rowid", ACTIVE_STATES
        )
        return [_job(row) for row in rows]

    # ---------------------------------------------------------------- events

    def append_event(
        self, job_id: str, kind: str, payload: dict[str, Any], **job_fields: Any
    ) -> EventRecord:
        """Appends to a job's log (and updates the job's columns in the same transaction)."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (seq,) = self._db.execute(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?", (job_id,)
                ).fetchone()
                self._db.execute(
                    "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                    (job_id, seq, now, kind, json.dumps(payload)),
                )
                if job_fields:
                    columns = ", ".join(f"{name} = ?" for name in job_fields)
                    self._db.execute(
                        f"UPDATE jobs SET {columns} WHERE id = ?", (*job_fields.values(), job_id)
                    )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return EventRecord(job_id, seq, now, kind, payload)

    def events(self, job_id: str, after_seq: int = 0, kind: str = "") -> list[EventRecord]:
        """A job's events after `after_seq`, in order, optionally of one kind."""
        sql = "SELECT * FROM events WHERE job_id = ? AND seq > ?"
        args: tuple = (job_id, after_seq)
        if kind:
            sql += " AND kind = ?"
            args += (kind,)
        rows = self._query(sql + " ORDER BY seq", args)
        return [
            EventRecord(r["job_id"], r["seq"], r["time"], r["kind"], json.loads(r["payload"]))
            for r in rows
        ]

    # ---------------------------------------------------------------- models

    def next_model_version(self, name: str) -> int:
        """Reserves the next version number of `name`; numbers are never reused."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO model_names VALUES (?, 1) "
                "ON CONFLICT (name) DO UPDATE SET last_version = last_version + 1",
                (name,),
            )
            (version,) = self._db.execute(
                "SELECT last_version FROM model_names WHERE name = ?", (name,)
            ).fetchone()
            self._db.execute("COMMIT")
        return int(version)

    def latest_model_version(self, name: str) -> int:
        """The highest registered version of `name`, or 0 when it has none."""
        rows = self._query("SELECT MAX(version) FROM model_versions WHERE name = ?", (name,))
        return int(rows[0][0] or 0)

    def add_model_version(
        self, record: ModelVersionRecord, artifacts: dict[str, dict[str, Any]] | None = None
    ) -> None:
        """Registers a model version whose files are already in place, with its artifacts
        (format -> metadata), in one transaction."""
        self._write(
            (
                "INSERT INTO model_versions VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.name,
                    record.version,
                    record.created_at,
                    record.job_id,
                    record.checkpoint,
                    json.dumps(record.metadata.to_dict()),
                ),
            ),
            *(
                self._artifact_row(record.name, record.version, fmt, meta)
                for fmt, meta in (artifacts or {}).items()
            ),
        )

    def model_versions(self, name: str = "") -> list[ModelVersionRecord]:
        """Versions of one model (or of all), by name then version."""
        sql = "SELECT * FROM model_versions"
        args: tuple[str, ...] = ()
        if name:
            sql, args = sql + " WHERE name = ?", (name,)
        rows = self._query(sql + " ORDER BY name, version", args)
        return [
            ModelVersionRecord(
                r["name"],
                r["version"],
                r["created_at"],
                r["job_id"],
                r["checkpoint"],
                VersionMetadata.from_dict(json.loads(r["metadata"])),
            )
            for r in rows
        ]

    def delete_model_versions(self, name: str, versions: list[int]) -> None:
        """Removes versions and their artifacts from the registry (the files are the caller's)."""
        self._write(
            *(
                (f"DELETE FROM {table} WHERE name = ? AND version = ?", (name, v))
                for v in versions
                for table in ("model_versions", "artifacts")
            )
        )

    def put_artifact(self, name: str, version: int, fmt: str, metadata: dict[str, Any]) -> None:
        """Records (or replaces) an artifact of a model version."""
        self._write(self._artifact_row(name, version, fmt, metadata))

    @staticmethod
    def _artifact_row(
        name: str, version: int, fmt: str, metadata: dict[str, Any]
    ) -> tuple[str, tuple]:
        return (
            "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?)",
            (name, version, fmt, time.time(), json.dumps(metadata)),
        )

    def artifacts(self, name: str, version: int) -> dict[str, dict[str, Any]]:
        """A version's artifacts: format -> metadata (with `created_at`)."""
        rows = self._query(
            "SELECT * FROM artifacts WHERE name = ? AND version = ? ORDER BY format",
            (name, version),
        )
        return {
            r["format"]: {**json.loads(r["metadata"]), "created_at": r["created_at"]} for r in rows
        }

    def batching(self, name: str) -> dict[str, Any] | None:
        """A model's own batching setting, or None."""
        rows = self._query("SELECT config FROM batching WHERE name = ?", (name,))
        return json.loads(rows[0]["config"]) if rows else None

    def set_batching(self, name: str, config: dict[str, Any] | None) -> None:
        """Sets a model's batching, or clears it with None."""
        if config is None:
            self._write(("DELETE FROM batching WHERE name = ?", (name,)))
        else:
            self._write(
                ("INSERT OR REPLACE INTO batching VALUES (?, ?)", (name, json.dumps(config)))
            )

    # -------------------------------------------------------------- datasets

    def put_dataset_split(self, name: str, split: str, metadata: dict[str, Any]) -> None:
        """Records (or replaces) an uploaded dataset split."""
        self._write(
            (
                "INSERT OR REPLACE INTO datasets VALUES (?, ?, ?, ?)",
                (name, split, time.time(), json.dumps(metadata)),
            )
        )

    def dataset_splits(self, name: str = "") -> dict[str, dict[str, dict[str, Any]]]:
        """Uploaded datasets: name -> split -> metadata."""
        sql = "SELECT * FROM datasets"
        args: tuple[str, ...] = ()
        if name:
            sql, args = sql + " WHERE name = ?", (name,)
        result: dict[str, dict[str, dict[str, Any]]] = {}
        for row in self._query(sql + " ORDER BY name, split", args):
            result.setdefault(row["name"], {})[row["split"]] = json.loads(row["metadata"])
        return result


def _job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        model_name=row["model_name"],
        state=row["state"],
        spec=TrainSpec.from_dict(json.loads(row["request"])),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        device=row["device"],
        error=row["error"],
        model_version=row["model_version"],
        best_epoch=row["best_epoch"],
    )
