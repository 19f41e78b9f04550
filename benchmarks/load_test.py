"""Load test: the HTTP MCP server under concurrent clients mixing reads and enhancements.

    python benchmarks/load_test.py --clients 8 --seconds 30

Starts ``cosmos-mongo-mcp --transport http`` on 127.0.0.1 (a free port, a bearer token, a fresh
embedded database), lets ``--clients`` MCP sessions call tools for ``--seconds`` (70% reads,
30% ``enhance_prompt`` with agent-written text), then checks the data directly: every
enhancement that returned success must be a completed run, and there must be no other
enhance run. Prints throughput, latency, errors and the server's memory growth; exits 1 on any
error or mismatch. All traffic stays on loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from cosmos_mongo import CosmosStore
from cosmos_mongo.embedded import open_embedded

TOKEN = "load-test-token"


@dataclass
class LoadResult:
    clients: int
    seconds: float
    calls: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    enhancements: set[str] = field(default_factory=set)
    rss_start_kib: int = 0
    rss_end_kib: int = 0
    lost_writes: int = 0
    unexpected_runs: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors and self.lost_writes == 0 and self.unexpected_runs == 0

    def markdown(self) -> str:
        lines = [
            f"{self.clients} clients for {self.seconds:.0f} s: {self.calls} calls, "
            f"{self.calls / self.seconds:.0f} calls/s, {len(self.errors)} errors, "
            f"{len(self.enhancements)} enhancements (lost writes: {self.lost_writes}, "
            f"unexplained runs: {self.unexpected_runs}). Server memory (RSS) "
            f"{self.rss_start_kib / 1024:.0f} MiB after warm-up, "
            f"{self.rss_end_kib / 1024:.0f} MiB at the end "
            f"(+{(self.rss_end_kib - self.rss_start_kib) / 1024:.0f} MiB).",
            "",
            "| tool | calls | p50 ms | p99 ms |",
            "|---|---|---|---|",
        ]
        for tool, samples in sorted(self.latencies.items()):
            lines.append(
                f"| `{tool}` | {len(samples)} | {percentile(samples, 0.5):.1f} "
                f"| {percentile(samples, 0.99):.1f} |"
            )
        return "\n".join(lines)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] if ordered else 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class HttpServer:
    """``cosmos-mongo-mcp --transport http`` in a subprocess, ready when it says so."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("COSMOS_MONGO_", "COSMOS_MCP_"))
        }
        env.update(COSMOS_MONGO_DATA_DIR=str(data_dir), COSMOS_MCP_TOKEN=TOKEN)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mcp_server", "--transport", "http", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready = threading.Event()

        def watch() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                if "Uvicorn running on" in line:
                    ready.set()

        threading.Thread(target=watch, daemon=True).start()
        if not ready.wait(60):
            self.stop()
            raise RuntimeError("the MCP server did not start within 60 s")
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    def session(self) -> Any:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        return http, Client(streamable_http_client(self.url, http_client=http))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        if self.process.stderr:
            self.process.stderr.close()


async def _client(
    server: HttpServer, prompt_ids: list[str], deadline: float, result: LoadResult, seed: int
) -> None:
    rng = random.Random(seed)
    http, client = server.session()
    async with http, client as session:
        while time.monotonic() < deadline:
            prompt_id = rng.choice(prompt_ids)
            roll = rng.random()
            arguments: dict[str, Any]
            if roll < 0.3:
                tool, arguments = (
                    "enhance_prompt",
                    {
                        "prompt_id": prompt_id,
                        "enhancement_model": "load-agent",
                        "enhanced_text": f"A robot arm stacks blocks, take {rng.randrange(10**9)}.",
                    },
                )
            elif roll < 0.5:
                tool, arguments = "get_prompt", {"prompt_id": prompt_id}
            elif roll < 0.65:
                tool, arguments = "list_prompts", {"limit": 20}
            elif roll < 0.8:
                tool, arguments = "search_prompts", {"query": "robot", "limit": 10}
            elif roll < 0.9:
                tool, arguments = "get_lineage", {"prompt_id": prompt_id}
            else:
                tool, arguments = "get_enhancement_details", {"prompt_id": prompt_id}
            start = time.perf_counter()
            try:
                answer = await session.call_tool(tool, arguments)
            except Exception as exc:  # a transport failure is an error of the run, not a crash
                result.errors.append(f"{tool}: {type(exc).__name__}: {exc}")
                continue
            result.latencies[tool].append((time.perf_counter() - start) * 1000)
            result.calls += 1
            if answer.is_error:
                result.errors.append(f"{tool}: {answer.content[0].text[:200]}")
            elif tool == "enhance_prompt":
                result.enhancements.add(answer.structured_content["run_id"])


async def run_load(clients: int, seconds: float, prompts: int = 50) -> LoadResult:
    result = LoadResult(clients=clients, seconds=seconds)
    with tempfile.TemporaryDirectory() as directory:
        data_dir = Path(directory)
        with open_embedded(data_dir) as database:  # seed through the library, beside the server
            store = CosmosStore(database)
            store.ensure_indexes()
            prompt_ids = [
                store.create_prompt(f"A robot arm stacks block {i}", {}, {}).id
                for i in range(prompts)
            ]
        server = HttpServer(data_dir)
        try:
            warm_http, warm = server.session()
            async with warm_http, warm as session:
                await session.call_tool("get_prompt", {"prompt_id": prompt_ids[0]})
            result.rss_start_kib = rss_kib(server.process.pid)
            deadline = time.monotonic() + seconds
            await asyncio.gather(
                *(_client(server, prompt_ids, deadline, result, seed) for seed in range(clients))
            )
            result.rss_end_kib = rss_kib(server.process.pid)
        finally:
            server.stop()
        with open_embedded(data_dir) as database:  # every enhancement accounted for
            runs = CosmosStore(database).db["runs"].find({"model_type": "enhance"})
        completed = {run["_id"] for run in runs if run["status"] == "completed"}
        result.lost_writes = len(result.enhancements - completed)
        result.unexpected_runs = len({run["_id"] for run in runs} - result.enhancements)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Load-test the HTTP MCP server on loopback.")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    result = asyncio.run(run_load(args.clients, args.seconds))
    print(result.markdown())
    for error in result.errors[:10]:
        print("error:", error)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
