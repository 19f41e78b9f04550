"""MCP tool-call latency over stdio and HTTP, and import throughput (a script, not a test).

python benchmarks/bench_mcp.py --calls 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters

from benchmarks.load_test import HttpServer, percentile
from cosmos_mongo import CosmosStore
from cosmos_mongo.embedded import open_embedded


async def _latencies(session: Any, prompt_id: str, calls: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"get_prompt": [], "enhance_prompt (agent text)": []}
    for i in range(calls):
        for tool, arguments in (
            ("get_prompt", {"prompt_id": prompt_id}),
            (
                "enhance_prompt (agent text)",
                {"prompt_id": prompt_id, "enhanced_text": f"Take {i}."},
            ),
        ):
            name = tool.split(" ")[0]
            start = time.perf_counter()
            answer = await session.call_tool(name, arguments)
            results[tool].append((time.perf_counter() - start) * 1000)
            assert not answer.is_error, answer.content[0].text
    return results


def _seed(data_dir: Path) -> str:
    with open_embedded(data_dir) as database:
        store = CosmosStore(database)
        store.ensure_indexes()
        return store.create_prompt("A robot arm stacks blocks", {}, {}).id


async def mcp_latency(calls: int) -> str:
    lines = ["| transport | tool | calls | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as directory:
        data_dir = Path(directory)
        prompt_id = _seed(data_dir)
        env = {k: v for k, v in os.environ.items() if not k.startswith("COSMOS_")}
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "mcp_server"],
            env={**env, "COSMOS_MONGO_DATA_DIR": str(data_dir)},
        )
        async with Client(params) as session:
            await session.call_tool("get_prompt", {"prompt_id": prompt_id})  # warm up
            stdio = await _latencies(session, prompt_id, calls)
        server = HttpServer(data_dir)
        try:
            http, client = server.session()
            async with http, client as session:
                await session.call_tool("get_prompt", {"prompt_id": prompt_id})
                over_http = await _latencies(session, prompt_id, calls)
        finally:
            server.stop()
    for transport, results in (("stdio", stdio), ("HTTP", over_http)):
        for tool, samples in results.items():
            lines.append(
                f"| {transport} | `{tool}` | {len(samples)} | {percentile(samples, 0.5):.2f} "
                f"| {percentile(samples, 0.99):.2f} |"
            )
    return "\n".join(lines)


def import_throughput(rows: int) -> str:
    from tests.predecessor_db import add_prompt, add_run, create, pid, rid

    with tempfile.TemporaryDirectory() as directory:
        source = Path(directory) / "cosmos.db"
        db = create(source)
        for n in range(1, rows + 1):
            add_prompt(
                db,
                pid(n),
                f"A robot arm stacks block {n}",
                "2024-01-01 12:00:00",
                {"video": f"in/{n}.mp4"},
                {"name": f"p{n}", "guidance": 7},
            )
            add_run(db, rid(n), pid(n), config={"num_steps": 35}, outputs={"video": f"out/{n}.mp4"})
        db.commit()
        db.close()
        with open_embedded(Path(directory) / "data") as database:
            store = CosmosStore(database)
            store.ensure_indexes()
            start = time.perf_counter()
            report = store.import_sqlite(source)
            seconds = time.perf_counter() - start
            assert report.prompts.imported == rows
            assert report.runs.imported == rows
            start = time.perf_counter()
            again = store.import_sqlite(source)
            rerun = time.perf_counter() - start
            assert again.prompts.imported == 0
    total = 2 * rows
    header = "| rows (prompts + runs) | first import | rows/s | re-run (all skipped) | rows/s |"
    row = (
        f"| {total:,} | {seconds:.1f} s | {total / seconds:,.0f} | {rerun:.1f} s "
        f"| {total / rerun:,.0f} |"
    )
    return f"{header}\n|---|---|---|---|---|\n{row}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="MCP latency and import throughput.")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--import-rows", type=int, default=10_000)
    args = parser.parse_args(argv)
    print(asyncio.run(mcp_latency(args.calls)))
    print()
    print(import_throughput(args.import_rows))


if __name__ == "__main__":
    main()
