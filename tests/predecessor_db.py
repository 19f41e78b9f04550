"""Build SQLite files with exactly the predecessor's schema (as SQLAlchemy wrote it)."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE prompts (
    id TEXT NOT NULL PRIMARY KEY,
    prompt_text TEXT NOT NULL,
    created_at DATETIME,
    inputs JSON NOT NULL,
    parameters JSON NOT NULL
);
CREATE TABLE runs (
    id TEXT NOT NULL PRIMARY KEY,
    prompt_id TEXT REFERENCES prompts (id),
    model_type TEXT,
    status TEXT,
    created_at DATETIME,
    updated_at DATETIME,
    started_at DATETIME,
    completed_at DATETIME,
    execution_config JSON,
    outputs JSON,
    metadata JSON,
    log_path VARCHAR(500),
    error_message TEXT,
    rating INTEGER
);
CREATE TABLE job_queue (
    id TEXT NOT NULL PRIMARY KEY,
    prompt_ids JSON,
    job_type TEXT,
    status TEXT,
    config JSON,
    created_at DATETIME,
    started_at DATETIME,
    completed_at DATETIME,
    result JSON,
    priority INTEGER
);
"""


def pid(n: int) -> str:
    return f"ps_{n:012x}"  # the predecessor's 12-hex ids


def rid(n: int) -> str:
    return f"rs_{n:012x}"


def create(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path)
    connection.executescript(SCHEMA)
    return connection


def add_prompt(
    db: sqlite3.Connection,
    prompt_id: str,
    text: str,
    created: Any,
    inputs: Any = None,
    parameters: Any = None,
) -> None:
    db.execute(
        "INSERT INTO prompts VALUES (?, ?, ?, ?, ?)",
        (
            prompt_id,
            text,
            created,
            inputs if isinstance(inputs, str) else json.dumps(inputs or {}),
            parameters if isinstance(parameters, str) else json.dumps(parameters or {}),
        ),
    )


def add_run(
    db: sqlite3.Connection,
    run_id: str,
    prompt_id: str,
    *,
    model_type: str = "transfer",
    status: str = "completed",
    created: Any = "2024-02-01 10:00:00",
    outputs: Any = None,
    config: Any = None,
    metadata: Any = None,
    rating: Any = None,
    **times: Any,
) -> None:
    def encode(value: Any) -> Any:
        return value if value is None or isinstance(value, str) else json.dumps(value)

    db.execute(
        "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            run_id,
            prompt_id,
            model_type,
            status,
            created,
            times.get("updated"),
            times.get("started"),
            times.get("completed"),
            encode(config),
            encode(outputs),
            encode(metadata),
            times.get("log_path"),
            times.get("error"),
            rating,
        ),
    )


def sample(path: Path, prompts: int = 6) -> Path:
    """A realistic file: good rows in several datetime styles, legacy enhancement keys, and
    broken rows of every kind the importer must survive."""
    db = create(path)
    styles = [
        "2024-01-0{d} 12:00:00",
        "2024-01-0{d} 12:00:00.123456",
        "2024-01-0{d}T12:00:00Z",
        "2024-01-0{d}T13:00:00+01:00",
    ]
    for n in range(1, prompts + 1):
        add_prompt(
            db,
            pid(n),
            f"A robot arm stacks block number {n}",
            styles[n % len(styles)].format(d=1 + n % 9),
            {"video": f"inputs/{n}.mp4"},
            {"name": f"p{n}"},
        )
    add_prompt(
        db,
        pid(100),
        "A robot arm carefully stacks the blocks",
        "2024-01-09 09:00:00",
        {"video": "inputs/1.mp4"},
        {
            "name": "p1_enhanced",
            "enhanced": True,
            "enhancement_model": "pixtral",
            "enhanced_at": "2024-01-09T09:00:00Z",
            "parent_prompt_id": pid(1),
            "last_enhancement_run_id": rid(100),
        },
    )
    add_prompt(db, pid(200), "Broken inputs", "2024-01-01 00:00:00", "{not json", {})
    add_prompt(db, pid(201), "Inputs not an object", "2024-01-01 00:00:00", "[1, 2]", {})
    add_prompt(db, "prompt-7", "Bad id", "2024-01-01 00:00:00", {}, {})
    add_prompt(db, pid(202), "   ", "2024-01-01 00:00:00", {}, {})
    add_prompt(db, pid(203), "Bad time", "yesterday-ish", {}, {})
    add_prompt(db, pid(204), "No time at all", None, {}, {})
    add_run(
        db,
        rid(1),
        pid(1),
        created="2024-02-01 10:00:00",
        started="2024-02-01 10:00:05",
        completed="2024-02-01T10:05:00Z",
        config={"num_steps": 35},
        outputs={"video": "out/1.mp4"},
        metadata=None,
        rating=4,
        log_path="logs/1.log",
    )
    add_run(
        db,
        rid(100),
        pid(1),
        model_type="enhance",
        created="2024-01-09 09:00:00",
        outputs={
            "enhanced_text": "A robot arm carefully stacks the blocks",
            "original_prompt_id": pid(1),
            "enhanced_prompt_id": pid(100),
            "duration_seconds": 3.5,
            "timestamp": "2024-01-09T09:00:00Z",
        },
        config={"model": "pixtral"},
    )
    add_run(db, rid(2), pid(999), created="2024-02-01 10:00:00")  # its prompt does not exist
    add_run(db, rid(3), pid(2), outputs="{broken", created="2024-02-01 10:00:00")
    add_run(db, rid(4), pid(2), created="2024-02-02 08:30:00", rating=9)  # out of range
    add_run(db, rid(5), pid(200), created="2024-02-02 08:30:00")  # prompt was invalid
    add_run(
        db,
        rid(6),
        pid(2),
        status="failed",
        created="2024-02-02 08:30:00",
        error="CUDA out of memory",
    )
    db.execute(
        "INSERT INTO job_queue (id, prompt_ids, job_type, status) VALUES ('j1', '[]', 'inference', 'queued')"
    )
    db.commit()
    db.close()
    return path


def _sqlite_time(value: Any) -> Any:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(value, datetime) else value


def from_documents(path: Path, prompts: list[dict[str, Any]], runs: list[dict[str, Any]]) -> Path:
    """A predecessor file holding these prompt and run documents as its rows (the legacy
    fixtures of tests/integration/legacy_data.py, written the way the predecessor stored them)."""
    db = create(path)
    for document in prompts:
        add_prompt(
            db,
            document["_id"],
            document["prompt_text"],
            _sqlite_time(document.get("created_at")),
            document.get("inputs"),
            document.get("parameters"),
        )
    for document in runs:
        add_run(
            db,
            document["_id"],
            document["prompt_id"],
            model_type=document["model_type"],
            status=document["status"],
            created=_sqlite_time(document.get("created_at")),
            outputs=document.get("outputs"),
            config=document.get("execution_config"),
            metadata=document.get("metadata"),
            updated=_sqlite_time(document.get("updated_at")),
            error=document.get("error_message"),
        )
    db.commit()
    db.close()
    return path
