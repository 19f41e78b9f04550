"""Benchmark the store on the embedded default against plain mongomock (a script, not a test).

    python benchmarks/bench_store.py                      # N = 1,000 and 10,000 prompts
    python benchmarks/bench_store.py --sizes 1000 --repeat 20

For each N it loads the same data set into a fresh embedded database and into plain in-memory
mongomock: N prompts, one transfer run each, and 10% enhanced (each an enhanced prompt created
from an original by a completed enhance run; every 20th of those is enhanced again twice, so
lineages three generations deep exist). It then times each operation on the full collections
and prints a Markdown table: median and p95 on the embedded default, median on plain
mongomock, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mongomock

from cosmos_mongo import CosmosStore
from cosmos_mongo import queries as q
from cosmos_mongo.embedded import open_embedded
from cosmos_mongo.models import new_prompt_id, new_run_id


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


def measure(store: CosmosStore, data: Dataset, repeat: int) -> dict[str, list[float]]:
    rng = random.Random(11)
    pick = rng.choice
    return {
        "create_prompt": timed(lambda: store.create_prompt("A new robot prompt", {}, {}), repeat),
        "get_prompt": timed(lambda: store.get_prompt(pick(data.originals)), repeat),
        "list_prompts(50)": timed(lambda: store.list_prompts(limit=50), repeat),
        "list_enhanced_prompts(100)": timed(lambda: store.list_enhanced_prompts(100), repeat),
        "get_enhancement_details": timed(
            lambda: store.get_enhancement_details(pick(data.enhanced)), repeat
        ),
        "get_original_prompt": timed(
            lambda: store.get_original_prompt(pick(data.enhanced)), repeat
        ),
        "get_enhancement_history": timed(
            lambda: store.get_enhancement_history(pick(data.enhanced)), repeat
        ),
        "get_lineage (3 generations)": timed(
            lambda: store.get_lineage(pick(data.chain_middles)), repeat
        ),
    }


def load(store: CosmosStore, data: Dataset) -> None:
    store.ensure_indexes()
    store.db[q.PROMPTS].insert_many([dict(d) for d in data.prompts])
    store.db[q.RUNS].insert_many([dict(d) for d in data.runs])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark the cosmos-mongo store.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=100)
    args = parser.parse_args(argv)

    print(
        f"Machine: {platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs.\nCommand: python benchmarks/bench_store.py --sizes "
        f"{' '.join(map(str, args.sizes))} --repeat {args.repeat}\n"
    )
    print(
        "| N prompts | operation | embedded median ms | embedded p95 ms "
        "| plain mongomock median ms | plain / embedded |"
    )
    print("|---|---|---|---|---|---|")
    for count in args.sizes:
        data = build(count)
        with tempfile.TemporaryDirectory() as directory:
            database = open_embedded(Path(directory))
            embedded = CosmosStore(database)
            load(embedded, data)
            fast = measure(embedded, data, args.repeat)
            database.close()
        plain = CosmosStore(mongomock.MongoClient(tz_aware=True)["bench"])
        load(plain, data)
        slow = measure(plain, data, max(5, args.repeat // 20))  # it scans: fewer repeats
        for operation, samples in fast.items():
            median, baseline = statistics.median(samples), statistics.median(slow[operation])
            print(
                f"| {count:,} | `{operation}` | {median:.3f} | {percentile(samples, 0.95):.3f} "
                f"| {baseline:.3f} | {baseline / median:.1f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
