"""A separate process that uses the embedded store, driven by tests/test_embedded_processes.py.

write-forever DIR          create prompts until killed; print each id once the call returned
write-then-count DIR N TAG create N prompts, print "written", wait for a line on stdin,
                           then print what this process sees, as JSON
write-cost DIR             print the WAL bytes one write adds at several collection sizes
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

from cosmos_mongo import CosmosStore
from cosmos_mongo.embedded import open_embedded


def write_forever(data_dir: Path) -> None:
    store = CosmosStore(open_embedded(data_dir))
    for i in range(1_000_000):
        prompt = store.create_prompt(f"durable prompt {i}", {}, {})
        print(prompt.id, flush=True)


def write_then_count(data_dir: Path, count: int, tag: str) -> None:
    database = open_embedded(data_dir)
    store = CosmosStore(database)
    for i in range(count):
        store.create_prompt(f"{tag} prompt {i}", {}, {"writer": tag})
    print("written", flush=True)
    sys.stdin.readline()
    seen = store.list_prompts(limit=1000)
    stats = database.engine.stats
    print(
        json.dumps(
            {
                "count": len(seen),
                "writers": sorted({p.parameters["writer"] for p in seen}),
                "documents_decoded": stats.documents_decoded,
            }
        ),
        flush=True,
    )


def write_cost(data_dir: Path) -> None:
    database = open_embedded(data_dir)
    store = CosmosStore(database)
    store.ensure_indexes()
    wal = database.engine.path.with_name(database.engine.path.name + "-wal")
    checkpoint = sqlite3.connect(database.engine.path)
    costs = {}
    written = 0
    for size in (100, 3000):
        while written < size:
            store.create_prompt(f"filler prompt number {written} " * 4, {}, {})
            written += 1
        checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        start = wal.stat().st_size
        for i in range(20):
            store.create_prompt(f"measured prompt number {i} " * 4, {}, {})
        written += 20
        costs[size] = (wal.stat().st_size - start) / 20
    print(
        json.dumps({"costs": costs, "file_bytes": database.engine.path.stat().st_size}), flush=True
    )


def import_slowly(data_dir: Path, source: Path) -> None:
    """Import in small batches, printing after each, so a test can kill it midway."""
    store = CosmosStore(open_embedded(data_dir))
    store.import_sqlite(
        source,
        batch_size=50,
        progress=lambda table, done, total: print(f"{table} {done} {total}", flush=True),
    )
    print("finished", flush=True)


if __name__ == "__main__":
    mode, directory = sys.argv[1], Path(sys.argv[2])
    if mode == "write-forever":
        write_forever(directory)
    elif mode == "write-then-count":
        write_then_count(directory, int(sys.argv[3]), sys.argv[4])
    elif mode == "write-cost":
        write_cost(directory)
    elif mode == "import-slowly":
        import_slowly(directory, Path(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode}")
