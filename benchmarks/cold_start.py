"""Cold start: what one CLI command and an MCP server's first answer cost as the embedded
store grows (a script, not a test).

python -m benchmarks.cold_start --sizes 0 1000 10000 100000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mcp import Client, StdioServerParameters

from benchmarks.bench_store import build, load
from cosmos_mongo import CosmosStore
from cosmos_mongo.embedded import open_embedded

# The CLI as its console script runs it, reporting its own peak RSS when it ends: VmHWM
# (getrusage's ru_maxrss would count the parent's memory at fork, this process's included).
_CLI = """
import re, sys
from cosmos_mongo.cli import main
sys.argv = ["cosmos-mongo", "prompt", "list", "--limit", "1"]
try:
    main()
except SystemExit as exit:
    if exit.code:
        raise
status = open("/proc/self/status").read()
print(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1), file=sys.stderr)
"""


def _environment(data_dir: Path) -> dict[str, str]:
    kept = {k: v for k, v in os.environ.items() if not k.startswith("COSMOS_")}
    return {**kept, "COSMOS_MONGO_DATA_DIR": str(data_dir)}


def seed(data_dir: Path, count: int) -> None:
    """``count`` prompts (and a run each, a tenth enhanced), as bench_store builds them."""
    with open_embedded(data_dir) as database:
        store = CosmosStore(database)
        if count:
            load(store, build(count))
        else:
            store.ensure_indexes()


def cli_once(data_dir: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of `cosmos-mongo prompt list --limit 1`."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CLI],
        env=_environment(data_dir),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    wall = time.perf_counter() - start
    return wall, int(done.stderr.strip().splitlines()[-1]) / 1024


async def mcp_first_answer(data_dir: Path) -> float:
    """Seconds from starting `cosmos-mongo-mcp` (stdio) to its answer to the first tool call."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_server"], env=_environment(data_dir)
    )
    start = time.perf_counter()
    async with Client(params) as session:
        answer = await session.call_tool("list_prompts", {"limit": 1})
        elapsed = time.perf_counter() - start
        assert not answer.is_error, answer.content
    return elapsed


def measure(sizes: list[int], repeat: int) -> str:
    rows = []
    for count in sizes:
        with tempfile.TemporaryDirectory() as directory:
            data_dir = Path(directory)
            seed(data_dir, count)
            cli_runs = [cli_once(data_dir) for _ in range(repeat)]
            mcp_runs = [asyncio.run(mcp_first_answer(data_dir)) for _ in range(repeat)]
            size = (data_dir / "cosmos.sqlite3").stat().st_size
        rows.append(
            (
                count,
                statistics.median(wall for wall, _ in cli_runs),
                max(rss for _, rss in cli_runs),
                statistics.median(mcp_runs),
                size / 1e6,
            )
        )
        print(f"cold start measured at N={count:,}", file=sys.stderr, flush=True)
    _, empty_wall, empty_rss, empty_mcp, _ = rows[0]
    lines = [
        "| prompts | file MB | CLI wall s | vs empty | CLI peak RSS MB | vs empty "
        "| MCP first answer s | vs empty |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for count, wall, rss, mcp, megabytes in rows:
        lines.append(
            f"| {count:,} | {megabytes:.1f} | {wall:.2f} | {wall - empty_wall:+.2f} | {rss:.0f} "
            f"| {rss - empty_rss:+.0f} | {mcp:.2f} | {mcp - empty_mcp:+.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Cold-start cost of the embedded default.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 1000, 10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print(measure(args.sizes, args.repeat))


if __name__ == "__main__":
    main()
