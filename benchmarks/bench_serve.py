"""Benchmark ``cosmos-mongo serve``: the same store calls through the library on the embedded
default, through pymongo to ``serve`` over the same file, and through pymongo to the
SecantusDB wire server of the real-server tests (a script, not a test).

    python -m benchmarks.bench_serve                      # N = 1,000 and 10,000 prompts
    python -m benchmarks.bench_serve --sizes 1000 --repeat 50

Each N loads the data set of :mod:`benchmarks.bench_store` (N prompts, a tenth enhanced) into
a fresh embedded database and into a fresh SecantusDB, then times ``get_prompt`` (a
``find_one`` by ``_id``) and ``list_enhanced_prompts(100)`` (the enhanced listing, served by
the partial index) on each, and prints a Markdown table of medians and p95s.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from benchmarks.bench_store import Dataset, build, load, percentile, timed
from cosmos_mongo import CosmosStore
from cosmos_mongo.embedded import open_embedded
from cosmos_mongo.wire.server import ServeOptions, running

DATABASE = "cosmos_bench"


def _calls(store: CosmosStore, data: Dataset, repeat: int) -> dict[str, list[float]]:
    pick = random.Random(3).choice
    return {
        "get_prompt (find_one by _id)": timed(
            lambda: store.get_prompt(pick(data.originals)), repeat
        ),
        "list_enhanced_prompts(100)": timed(lambda: store.list_enhanced_prompts(100), repeat),
    }


def _over_wire(uri: str, data: Dataset, repeat: int, *, seed: bool) -> dict[str, list[float]]:
    client: MongoClient[dict[str, Any]] = MongoClient(uri, tz_aware=True)
    try:
        store = CosmosStore(client[DATABASE])
        if seed:
            load(store, data)
        store.get_prompt(data.originals[0])  # the connection pool warmed up
        return _calls(store, data, repeat)
    finally:
        if seed:
            client.drop_database(DATABASE)
        client.close()


def serve_table(sizes: list[int], repeat: int, secantus_uri: str | None) -> str:
    """The Markdown table: per N and call, the median and p95 (ms) on each of the three."""
    lines = [
        "| N prompts | call | library median ms | serve median ms | serve p95 ms"
        + (" | SecantusDB median ms |" if secantus_uri else " |"),
        "|---|---|---|---|---" + ("|---|" if secantus_uri else "|"),
    ]
    for count in sizes:
        data = build(count)
        with tempfile.TemporaryDirectory() as directory:
            database = open_embedded(Path(directory), DATABASE)
            try:
                store = CosmosStore(database)
                load(store, data)
                library = _calls(store, data, repeat)
            finally:
                database.close()
            options = ServeOptions(data_dir=Path(directory), database=DATABASE, port=0)
            with running(options) as server:
                served = _over_wire(server.uri, data, repeat, seed=False)
        peer = _over_wire(secantus_uri, data, repeat, seed=True) if secantus_uri else {}
        for call in library:
            row = [
                f"{count:,}",
                f"`{call}`",
                f"{statistics.median(library[call]):.2f}",
                f"{statistics.median(served[call]):.2f}",
                f"{percentile(served[call], 0.95):.2f}",
            ]
            if peer:
                row.append(f"{statistics.median(peer[call]):.2f}")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def with_secantus(sizes: list[int], repeat: int) -> str:
    """:func:`serve_table` with the SecantusDB column, on a SecantusDB started for it (and
    without the column where SecantusDB is not installed)."""
    from tests.wire_server import start_secantus

    try:
        secantus = start_secantus()  # a fresh one, in a scratch directory
    except RuntimeError:
        return serve_table(sizes, repeat, None)
    try:
        return serve_table(sizes, repeat, secantus.uri)
    finally:
        secantus.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark cosmos-mongo serve.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument(
        "--no-secantus", action="store_true", help="Leave out the SecantusDB column."
    )
    args = parser.parse_args(argv)
    if args.no_secantus:
        print(serve_table(args.sizes, args.repeat, None))
    else:
        print(with_secantus(args.sizes, args.repeat))


if __name__ == "__main__":
    main()
