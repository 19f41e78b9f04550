"""Benchmark the store's basic operations on the embedded default (a script, not a test).

    python benchmarks/bench_store.py                 # N = 1,000 and 10,000
    python benchmarks/bench_store.py --sizes 1000    # quicker

For each N it creates N prompts (10% flagged ``enhanced``) with one run each, then times
``create_prompt``, ``get_prompt``, ``list_prompts`` and the enhanced-flag query, on the
embedded default and, for comparison, on plain in-memory mongomock (no durability, no
indexes). It prints a Markdown table of median and p95 latencies in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mongomock

from cosmos_mongo import CosmosStore
from cosmos_mongo import queries as q
from cosmos_mongo.embedded import open_embedded


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def timed(call: Callable[[], Any], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def fill(store: CosmosStore, count: int) -> tuple[list[str], list[float]]:
    """Create ``count`` prompts with a run each; returns ids and create_prompt latencies."""
    ids, create_ms = [], []
    for i in range(count):
        parameters = (
            {"name": f"scene-{i}", "enhanced": True} if i % 10 == 0 else {"name": f"scene-{i}"}
        )
        start = time.perf_counter()
        prompt = store.create_prompt(
            f"A robot arm moves block {i} across a workbench", {}, parameters
        )
        create_ms.append((time.perf_counter() - start) * 1000)
        ids.append(prompt.id)
        store.create_run(prompt.id, {"steps": 35})
    return ids, create_ms


def measure(store: CosmosStore, count: int, repeat: int) -> dict[str, list[float]]:
    ids, create_ms = fill(store, count)
    rng = random.Random(7)
    return {
        "create_prompt": create_ms,
        "get_prompt": timed(lambda: store.get_prompt(rng.choice(ids)), repeat * 4),
        "list_prompts (50)": timed(lambda: store.list_prompts(limit=50), repeat),
        "enhanced-flag query (100)": timed(
            lambda: list(  # materialize: plain mongomock returns a lazy cursor
                store.db[q.PROMPTS].find(
                    q.enhanced_prompts_filter(), sort=list(q.NEWEST_FIRST), limit=100
                )
            ),
            repeat,
        ),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args(argv)

    print(
        f"Machine: {platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs. Command: python benchmarks/bench_store.py "
        f"--sizes {' '.join(map(str, args.sizes))} --repeat {args.repeat}\n"
    )
    print(
        "| N | operation | embedded median ms | embedded p95 ms | plain mongomock median ms "
        "| speed-up (median) |"
    )
    print("|---|---|---|---|---|---|")
    for count in args.sizes:
        with tempfile.TemporaryDirectory() as directory:
            database = open_embedded(Path(directory))
            embedded = CosmosStore(database)
            embedded.ensure_indexes()
            fast = measure(embedded, count, args.repeat)
            database.close()
        plain_store = CosmosStore(mongomock.MongoClient(tz_aware=True)["bench"])
        plain_store.ensure_indexes()
        # Plain mongomock scans everything: fewer repeats keep the run short.
        slow = measure(plain_store, count, max(5, args.repeat // 10))
        for operation, samples in fast.items():
            baseline = statistics.median(slow[operation])
            median = statistics.median(samples)
            print(
                f"| {count:,} | `{operation}` | {median:.3f} | {percentile(samples, 0.95):.3f} "
                f"| {baseline:.3f} | {baseline / median:.1f}x |"
            )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
