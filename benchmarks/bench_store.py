"""Benchmark the store on the embedded default against plain mongomock (a script, not a test).

    python benchmarks/bench_store.py                      # N = 1,000 and 10,000 prompts
    python benchmarks/bench_store.py --sizes 1000 --repeat 20
    python benchmarks/bench_store.py --embedded-only --cpu-time  # the embedded default alone

For each N it loads the same data set into a fresh embedded database and into plain in-memory
mongomock: N prompts, one transfer run each, and 10% enhanced (each an enhanced prompt created
from an original by a completed enhance run; every 20th of those is enhanced again twice, so
lineages three generations deep exist). It then times each operation on the full collections
and prints a Markdown table: median and p95 on the embedded default, median on plain
mongomock, and the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import mongomock

from cosmos_mongo import CosmosStore
from cosmos_mongo import queries as q
from cosmos_mongo.embedded import open_embedded
from cosmos_mongo.embedded.storage import _STORED as STORED  # how the engine decodes what it stores
from cosmos_mongo.models import Prompt, new_prompt_id, new_run_id


@dataclass
class Dataset:
    prompts: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    originals: list[str] = field(default_factory=list)
    enhanced: list[str] = field(default_factory=list)
    chain_middles: list[str] = field(default_factory=list)


def build(count: int, seed: int = 7) -> Dataset:
    """``count`` prompts in all; a tenth are enhanced children, some three generations deep."""
    rng = random.Random(seed)
    data = Dataset()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    clock = iter(start + timedelta(seconds=i) for i in range(10 * count + 100))

    def add_prompt(text: str, parameters: dict[str, Any]) -> str:
        prompt_id = new_prompt_id()
        data.prompts.append(
            q.prompt_document(prompt_id, text, {"video": "in.mp4"}, parameters, next(clock))
        )
        data.runs.append(
            q.run_document(
                new_run_id(), prompt_id, "transfer", "completed", {"steps": 35}, {}, next(clock)
            )
        )
        return prompt_id

    def enhance(parent: str, parent_text: str) -> str:
        text = f"{parent_text}, in rich cinematic detail"
        child = add_prompt(text, {"name": "scene_enhanced", "enhanced": True})
        at = next(clock)
        run = q.run_document(
            new_run_id(), parent, "enhance", "completed", {"model": "bench"}, {}, at
        )
        run["outputs"] = q.enhancement_outputs(parent, child, text, "bench", at, 1.5)
        data.runs.append(run)
        data.enhanced.append(child)
        return child

    while len(data.prompts) < count:
        text = f"A robot arm moves block {rng.randrange(10**6)} across a workbench"
        original = add_prompt(text, {"name": "scene"})
        data.originals.append(original)
        if len(data.originals) % 10 == 0:
            child = enhance(original, text)
            if len(data.originals) % 200 == 0:
                middle = enhance(child, text)
                enhance(middle, text)
                data.chain_middles.append(middle)
    return data


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def timed(call: Callable[[], Any], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        begin = time.perf_counter()
        call()
        samples.append((time.perf_counter() - begin) * 1000)
    return samples


def best_of_rounds(
    call: Callable[[], Any], calls: int, rounds: int, clock: Callable[[], float]
) -> float:
    """The fastest of ``rounds`` rounds of ``calls`` calls, per call, in ms (as ``timeit``
    takes it: on a shared machine, what others' work adds is noise, and the least noisy
    round is the truest)."""
    best = float("inf")
    for _ in range(rounds):
        begin = clock()
        for _ in range(calls):
            call()
        best = min(best, (clock() - begin) / calls * 1000)
    return best


def operations(store: Any, data: Dataset) -> dict[str, Callable[[], Any]]:
    """Each timed operation on a store, or on anything answering the same method names."""
    rng = random.Random(11)
    pick = rng.choice
    transfer_runs = [run["_id"] for run in data.runs if run["model_type"] == "transfer"]
    return {
        "create_prompt": lambda: store.create_prompt("A new robot prompt", {}, {}),
        "get_prompt": lambda: store.get_prompt(pick(data.originals)),
        "list_prompts(50)": lambda: store.list_prompts(limit=50),
        "list_enhanced_prompts(100)": lambda: store.list_enhanced_prompts(100),
        "get_enhancement_details": lambda: store.get_enhancement_details(pick(data.enhanced)),
        "get_original_prompt": lambda: store.get_original_prompt(pick(data.enhanced)),
        "get_enhancement_history": lambda: store.get_enhancement_history(pick(data.enhanced)),
        "get_lineage (3 generations)": lambda: store.get_lineage(pick(data.chain_middles)),
        "enhance_prompt (agent text)": lambda: store.enhance_prompt(
            pick(data.originals), enhanced_text="A robot arm moves a block, in detail."
        ),
        "update_run_status": lambda: store.update_run_status(pick(transfer_runs), "running"),
    }


def measure(store: Any, data: Dataset, repeat: int) -> dict[str, list[float]]:
    """``repeat`` samples of each operation, in ms."""
    return {name: timed(call, repeat) for name, call in operations(store, data).items()}


def _sqlalchemy_text(value: datetime) -> str:
    """A datetime as the predecessor's SQLAlchemy stored it in SQLite."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


PREDECESSOR_SCHEMA = """
CREATE TABLE prompts (id TEXT PRIMARY KEY, prompt_text TEXT NOT NULL, created_at DATETIME,
                      inputs JSON NOT NULL, parameters JSON NOT NULL);
CREATE TABLE runs (id TEXT PRIMARY KEY, prompt_id TEXT REFERENCES prompts (id), model_type TEXT,
                   status TEXT, created_at DATETIME, updated_at DATETIME, started_at DATETIME,
                   completed_at DATETIME, execution_config JSON, outputs JSON, metadata JSON,
                   log_path VARCHAR(500), error_message TEXT, rating INTEGER);
"""


class PredecessorBaseline:
    """The same queries done the predecessor's way: SQLite, JSON text, ``json_extract``
    filters, no JSON indexes (the schema of ``outputs/cosmos.db``)."""

    def __init__(self, directory: Path, data: Dataset) -> None:
        self.db = sqlite3.connect(directory / "cosmos.db")
        self.db.executescript(PREDECESSOR_SCHEMA)
        self.db.executemany(
            "INSERT INTO prompts VALUES (?,?,?,?,?)",
            [
                (
                    d["_id"],
                    d["prompt_text"],
                    _sqlalchemy_text(d["created_at"]),
                    json.dumps(d["inputs"]),
                    json.dumps(d["parameters"]),
                )
                for d in data.prompts
            ],
        )
        self.db.executemany(
            "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    d["_id"],
                    d["prompt_id"],
                    d["model_type"],
                    d["status"],
                    _sqlalchemy_text(d["created_at"]),
                    _sqlalchemy_text(d["updated_at"]),
                    None,
                    None,
                    json.dumps(d["execution_config"]),
                    json.dumps(d["outputs"], default=str),
                    json.dumps(d["metadata"]),
                    None,
                    None,
                    None,
                )
                for d in data.runs
            ],
        )
        self.db.commit()

    def rows(self, sql: str, *args: Any) -> list[Any]:
        return self.db.execute(sql, args).fetchall()

    def get_prompt(self, prompt_id: str) -> Prompt | None:
        """The row read and validated into the same ``Prompt`` model the store returns (its
        JSON columns parsed): the baseline of a typed read by key."""
        row = self.db.execute(
            "SELECT id, prompt_text, created_at, inputs, parameters FROM prompts WHERE id = ?",
            (prompt_id,),
        ).fetchone()
        if row is None:
            return None
        document_id, text, created_at, inputs, parameters = row
        return Prompt.from_document(
            {
                "_id": document_id,
                "prompt_text": text,
                "created_at": created_at,
                "inputs": json.loads(inputs),
                "parameters": json.loads(parameters),
            }
        )

    def get_prompt_row(self, prompt_id: str) -> Any:
        """The row alone, a tuple of JSON text: what the predecessor's own read returned."""
        return self.rows("SELECT * FROM prompts WHERE id = ?", prompt_id)

    def list_prompts(self, limit: int = 50) -> Any:
        return self.rows("SELECT * FROM prompts ORDER BY created_at DESC LIMIT ?", limit)

    def list_enhanced_prompts(self, limit: int = 100) -> Any:
        return self.rows(
            "SELECT * FROM prompts WHERE json_extract(parameters, '$.enhanced') = 1 "
            "ORDER BY created_at DESC LIMIT ?",
            limit,
        )

    def get_enhancement_details(self, prompt_id: str) -> Any:
        return self.rows(
            "SELECT * FROM runs WHERE model_type = 'enhance' AND status = 'completed' "
            "AND json_extract(outputs, '$.enhanced_prompt_id') = ? "
            "ORDER BY created_at DESC LIMIT 1",
            prompt_id,
        )

    def get_original_prompt(self, prompt_id: str) -> Any:
        return self.rows(
            "SELECT p.* FROM runs r JOIN prompts p "
            "ON p.id = json_extract(r.outputs, '$.original_prompt_id') "
            "WHERE r.model_type = 'enhance' "
            "AND json_extract(r.outputs, '$.enhanced_prompt_id') = ?",
            prompt_id,
        )

    def get_enhancement_history(self, prompt_id: str) -> Any:
        return self.rows(
            "SELECT * FROM runs WHERE model_type = 'enhance' AND (prompt_id = ? OR "
            "json_extract(outputs, '$.original_prompt_id') = ? OR "
            "json_extract(outputs, '$.enhanced_prompt_id') = ?) ORDER BY created_at DESC",
            prompt_id,
            prompt_id,
            prompt_id,
        )

    def get_lineage(self, prompt_id: str) -> Any:
        edges = (
            "SELECT json_extract(outputs, '$.original_prompt_id') AS parent, "
            "json_extract(outputs, '$.enhanced_prompt_id') AS child FROM runs "
            "WHERE model_type = 'enhance' AND status = 'completed'"
        )
        up = self.rows(
            f"WITH RECURSIVE e AS ({edges}), up(id) AS (SELECT ? UNION SELECT e.parent "
            "FROM e JOIN up ON e.child = up.id AND e.parent != e.child) SELECT id FROM up",
            prompt_id,
        )
        down = self.rows(
            f"WITH RECURSIVE e AS ({edges}), down(id) AS (SELECT ? UNION SELECT e.child "
            "FROM e JOIN down ON e.parent = down.id AND e.parent != e.child) SELECT id FROM down",
            prompt_id,
        )
        return up, down

    def create_prompt(self, text: str, inputs: Any, parameters: Any) -> None:
        self.db.execute(
            "INSERT INTO prompts VALUES (?,?,?,?,?)",
            (
                new_prompt_id(),
                text,
                "2026-01-01 00:00:00",
                json.dumps(inputs),
                json.dumps(parameters),
            ),
        )
        self.db.commit()

    def enhance_prompt(self, prompt_id: str, enhanced_text: str) -> None:
        """The predecessor's enhancement: a new prompt and its run, in one transaction."""
        child, now = new_prompt_id(), "2026-01-01 00:00:00"
        outputs = {"original_prompt_id": prompt_id, "enhanced_prompt_id": child}
        self.db.execute(
            "INSERT INTO prompts VALUES (?,?,?,?,?)",
            (child, enhanced_text, now, "{}", json.dumps({"enhanced": True})),
        )
        self.db.execute(
            "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                new_run_id(),
                prompt_id,
                "enhance",
                "completed",
                now,
                now,
                None,
                None,
                "{}",
                json.dumps(outputs),
                "{}",
                None,
                None,
                None,
            ),
        )
        self.db.commit()

    def update_run_status(self, run_id: str, status: str) -> None:
        self.db.execute(
            "UPDATE runs SET status = ?, updated_at = ? WHERE id = ?",
            (status, "2026-01-01 00:00:00", run_id),
        )
        self.db.commit()


def load(store: CosmosStore, data: Dataset) -> None:
    store.ensure_indexes()
    store.db[q.PROMPTS].insert_many([dict(d) for d in data.prompts])
    store.db[q.RUNS].insert_many([dict(d) for d in data.runs])


@contextlib.contextmanager
def embedded_store(directory: Path, data: Dataset) -> Iterator[CosmosStore]:
    """A store on the embedded default in ``directory``, holding ``data``, closed after."""
    database = open_embedded(directory)
    try:
        store = CosmosStore(database)
        load(store, data)
        yield store
    finally:
        database.close()


def compare(sizes: list[int], repeat: int, plain_up_to: int = 10_000) -> str:
    """The Markdown table: embedded vs the predecessor's SQLite vs plain mongomock."""
    lines = [
        "| N prompts | operation | embedded median ms | embedded p95 ms "
        "| predecessor SQLite median ms | SQLite / embedded | plain mongomock median ms "
        "| plain / embedded |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for count in sizes:
        data = build(count)
        with tempfile.TemporaryDirectory() as directory:
            with embedded_store(Path(directory), data) as embedded:
                fast = measure(embedded, data, repeat)
            baseline = measure(
                PredecessorBaseline(Path(directory), data), data, max(5, repeat // 4)
            )
        slow: dict[str, list[float]] = {}
        if count <= plain_up_to:  # plain mongomock scans: beyond 10k it takes minutes
            plain = CosmosStore(mongomock.MongoClient(tz_aware=True)["bench"])
            load(plain, data)
            slow = measure(plain, data, max(5, repeat // 20))
        for operation, samples in fast.items():
            median = statistics.median(samples)
            old = statistics.median(baseline[operation])
            mock = "not run | "
            if slow:
                plain_median = statistics.median(slow[operation])
                mock = f"{plain_median:.3f} | {plain_median / median:.1f}x"
            lines.append(
                f"| {count:,} | `{operation}` | {median:.3f} | {percentile(samples, 0.95):.3f} "
                f"| {old:.3f} | {old / median:.1f}x | {mock} |"
            )
        print(f"measured N={count:,}", file=sys.stderr, flush=True)
    return "\n".join(lines)


def embedded_only(
    sizes: list[int], repeat: int, clock: Callable[[], float] = time.perf_counter
) -> str:
    """The Markdown table of the same operations on the embedded default alone (no
    predecessor, no mongomock), each the best of 9 rounds of ``repeat`` calls: for comparing
    two versions of the engine, each run at its commit."""
    lines = ["| N prompts | operation | best round, ms per call |", "|---|---|---|"]
    for count in sizes:
        data = build(count)
        with (
            tempfile.TemporaryDirectory() as directory,
            embedded_store(Path(directory), data) as store,
        ):
            for operation, call in operations(store, data).items():
                best = best_of_rounds(call, repeat, 9, clock)
                lines.append(f"| {count:,} | `{operation}` | {best:.3f} |")
        print(f"measured N={count:,}", file=sys.stderr, flush=True)
    return "\n".join(lines)


def maintenance(sizes: list[int], repeat: int) -> str:
    """The Markdown table of the scheduled checks on the embedded default, by store size: what
    each call reads should not grow with N (the damaged-row scan of ``verify`` aside)."""
    lines = [
        "| N prompts | `repair(quick=True)` median ms | `verify(quick=True)` median ms |",
        "|---|---|---|",
    ]
    for count in sizes:
        with (
            tempfile.TemporaryDirectory() as directory,
            embedded_store(Path(directory), build(count)) as store,
        ):
            repair = timed(functools.partial(store.repair, quick=True), repeat)
            verify = timed(functools.partial(store.verify, quick=True), repeat)
        lines.append(
            f"| {count:,} | {statistics.median(repair):.2f} | {statistics.median(verify):.2f} |"
        )
        print(f"maintenance measured at N={count:,}", file=sys.stderr, flush=True)
    return "\n".join(lines)


def primary_key_read(
    sizes: list[int],
    repeat: int,
    rounds: int = 30,
    clock: Callable[[], float] = time.perf_counter,
) -> str:
    """The Markdown table of what a ``get_prompt`` costs, step by step, by store size, beside
    the baseline: the same row read from the predecessor's SQLite table and validated into the
    same ``Prompt`` model. Each step makes ``repeat`` calls in all, in ``rounds`` turns taken
    in turn with the others, so that a busy machine slows them alike; the last row is the
    median of the rounds' ratios of the whole ``get_prompt`` to the baseline."""
    medians: dict[str, list[float]] = {}
    ratios: list[float] = []
    for count in sizes:
        steps = _primary_key_steps(build(count), repeat, rounds, clock)
        for step, samples in steps.items():
            medians.setdefault(step, []).append(statistics.median(samples) * 1000)
        whole, baseline = steps[_WHOLE], steps[_BASELINE]
        ratios.append(statistics.median(w / b for w, b in zip(whole, baseline, strict=True)))
        print(f"primary-key read measured at N={count:,}", file=sys.stderr, flush=True)
    alone = [sum(column) for column in zip(*list(medians.values())[2:5], strict=True)]
    rows = [*medians.items(), ("embedded: the three steps alone, nothing around them", alone)]
    return "\n".join(
        [
            "| step | " + " | ".join(f"{count:,}: median µs" for count in sizes) + " |",
            "|---|" + "---|" * len(sizes),
            *(f"| {step} | " + " | ".join(f"{m:.1f}" for m in ms) + " |" for step, ms in rows),
            "| the whole `get_prompt` / the baseline (median of the rounds' ratios) | "
            + " | ".join(f"{ratio:.2f}x" for ratio in ratios)
            + " |",
        ]
    )


_BASELINE = "baseline: predecessor SQLite plus the same model (row, `json.loads`, `Prompt`)"
_WHOLE = "embedded: the whole `get_prompt`"


def interleaved(
    calls: dict[str, Callable[[], Any]],
    repeat: int,
    rounds: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Per call, in ms: each round times a batch of every call in turn, so calls compared are
    measured back to back. One sample per call and round (the batch's mean). ``clock``:
    ``time.process_time`` counts only this process's CPU time, which a busy machine disturbs
    less than the wall clock (the reads here wait on no disk: the file is in the page cache)."""
    rounds = max(1, min(rounds, repeat))
    batch = max(1, repeat // rounds)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            begin = clock()
            for _ in range(batch):
                call()
            samples[name].append((clock() - begin) * 1000 / batch)
    return samples


def _primary_key_steps(
    data: Dataset, repeat: int, rounds: int, clock: Callable[[], float]
) -> dict[str, list[float]]:
    rng = random.Random(5)
    with (
        tempfile.TemporaryDirectory() as embedded_directory,
        tempfile.TemporaryDirectory() as baseline_directory,
        embedded_store(Path(embedded_directory), data) as store,
    ):
        baseline = PredecessorBaseline(Path(baseline_directory), data)
        # The engine's own statement, on a second connection to its file: a document's key is
        # the BSON of {"_id": id} (docs/DEVELOPMENT.md, "The file").
        file = sqlite3.connect(next(Path(embedded_directory).glob("*.sqlite3")))
        select = (
            "SELECT body FROM documents WHERE collection = 'prompts' AND key = ? "
            "AND body IS NOT NULL"
        )
        body = file.execute(select, (bson.encode({"_id": data.originals[0]}),)).fetchone()[0]
        document = bson.decode(body, STORED)
        steps: dict[str, Callable[[], Any]] = {
            "predecessor SQLite: the row alone (`SELECT *`, a tuple)": lambda: (
                baseline.get_prompt_row(rng.choice(data.originals))
            ),
            _BASELINE: lambda: baseline.get_prompt(rng.choice(data.originals)),
            "embedded: its primary-key `SELECT` of the BSON, key encoded": lambda: file.execute(
                select, (bson.encode({"_id": rng.choice(data.originals)}),)
            ).fetchone(),
            "embedded: decoding that BSON (aware datetimes)": lambda: bson.decode(body, STORED),
            "embedded: validating the `Prompt` model": lambda: Prompt.from_document(document),
            _WHOLE: lambda: store.get_prompt(rng.choice(data.originals)),
        }
        try:
            return interleaved(steps, repeat, rounds, clock)
        finally:
            file.close()
            baseline.db.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark the cosmos-mongo store.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument(
        "--primary-key",
        action="store_true",
        help="only the steps of one get_prompt against its baseline (repeat: calls per step)",
    )
    parser.add_argument(
        "--embedded-only",
        action="store_true",
        help="only the embedded default, each operation (to compare two versions of it)",
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="with --primary-key or --embedded-only: time by this process's CPU time (a "
        "shared, busy machine)",
    )
    args = parser.parse_args(argv)
    clock = time.process_time if args.cpu_time else time.perf_counter
    if args.primary_key:
        print(primary_key_read(args.sizes, args.repeat, clock=clock))
    elif args.embedded_only:
        print(embedded_only(args.sizes, args.repeat, clock))
    else:
        print(compare(args.sizes, args.repeat))


if __name__ == "__main__":
    main()
