"""The real ``cosmos-mongo-mcp`` process: over stdio, and over HTTP with a bearer token."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
TIMEOUT = 60.0


def environment(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("COSMOS_MONGO_", "COSMOS_MCP_"))
    }
    return {**env, "COSMOS_MONGO_DATA_DIR": str(data_dir), **extra}


async def test_stdio_server_starts_with_zero_configuration_and_serves_tools(tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_server"], env=environment(tmp_path / "data")
    )
    async with Client(params) as session:
        assert session.server_info.name == "cosmos-mongo"
        tools = {tool.name for tool in (await session.list_tools()).tools}
        assert {"enhance_prompt", "get_lineage", "create_prompt"} <= tools
        created = await session.call_tool(
            "create_prompt", {"prompt_text": "A robot arm stacks blocks"}
        )
        prompt_id = created.structured_content["id"]
        enhanced = await session.call_tool("enhance_prompt", {"prompt_id": prompt_id})
        assert enhanced.structured_content["enhancement_model"] == "template-v1"
        lineage = await session.call_tool("get_lineage", {"prompt_id": prompt_id})
        assert len(lineage.structured_content["descendants"]) == 1
    assert (tmp_path / "data" / "cosmos.sqlite3").exists()  # the embedded default


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mcp_server", "--transport", "http", "--port", str(port)],
        env=environment(tmp_path / "data", COSMOS_MCP_TOKEN="s3cret-token"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        while True:  # each wait is bounded; the server says when it listens
            line = lines.get(timeout=TIMEOUT)
            assert line is not None, "the server exited before listening"
            if "Uvicorn running on" in line:
                break
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(TIMEOUT)
        assert process.stderr is not None
        process.stderr.close()


async def test_http_needs_the_token_and_works_with_it(http_server: str) -> None:
    async with httpx.AsyncClient(timeout=TIMEOUT) as plain:
        assert (await plain.get(f"{http_server}/health")).json()["status"] == "ok"
        refused = await plain.post(
            f"{http_server}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Accept": "application/json, text/event-stream"},
        )
        assert refused.status_code == 401
        wrong = await plain.post(
            f"{http_server}/mcp", json={}, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        rebinding = await plain.post(
            f"{http_server}/mcp",
            json={},
            headers={"Authorization": "Bearer s3cret-token", "Host": "evil.example"},
        )
        assert rebinding.status_code == 421
    authorized = httpx2.AsyncClient(
        headers={"Authorization": "Bearer s3cret-token"}, timeout=TIMEOUT
    )
    async with (
        authorized,
        Client(streamable_http_client(f"{http_server}/mcp", http_client=authorized)) as session,
    ):
        created = await session.call_tool("create_prompt", {"prompt_text": "Rain on a neon street"})
        assert not created.is_error
        found = await session.call_tool("search_prompts", {"query": "neon"})
        assert found.structured_content["returned"] == 1


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_server", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_binding_beyond_loopback_without_a_token_is_refused(tmp_path: Path) -> None:
    refused = run_cli(
        "--transport", "http", "--host", "0.0.0.0", COSMOS_MONGO_DATA_DIR=str(tmp_path)
    )
    assert refused.returncode == 2 and "COSMOS_MCP_TOKEN" in refused.stderr
    wildcard = run_cli(
        "--transport",
        "http",
        "--host",
        "0.0.0.0",
        COSMOS_MCP_TOKEN="t",
        COSMOS_MONGO_DATA_DIR=str(tmp_path),
    )
    assert wildcard.returncode == 2 and "COSMOS_MCP_ALLOWED_HOSTS" in wildcard.stderr
