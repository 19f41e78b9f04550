"""The real ``cosmos-mongo-mcp`` process: over stdio, and over HTTP with a bearer token."""

from __future__ import annotations

import json
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
        surrogate = await plain.post(
            f"{http_server}/mcp",
            content=b'{"jsonrpc":"2.0","id":2,"method":"ping","params":{"x":"\\ud800"}}',
            headers={
                "Authorization": "Bearer s3cret-token",
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
            },
        )
        assert surrogate.status_code == 400 and surrogate.json()["error"]["code"] == -32700
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


def test_an_empty_token_is_refused_not_half_applied(tmp_path: Path) -> None:
    refused = run_cli(
        "--transport", "http", COSMOS_MCP_TOKEN="", COSMOS_MONGO_DATA_DIR=str(tmp_path)
    )
    assert refused.returncode == 2 and "COSMOS_MCP_TOKEN is set but empty" in refused.stderr
    assert "token not required" not in refused.stderr


class RawStdio:
    """The server process spoken to line by line, each read bounded by a timeout."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mcp_server", *args],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, raw: str | bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((raw.encode() if isinstance(raw, str) else raw) + b"\n")
        self.process.stdin.flush()

    def request(self, raw: str | bytes, timeout: float = TIMEOUT) -> dict[str, object]:
        """Send one line and return the answer, skipping notifications (log messages)."""
        self.send(raw)
        while True:
            line = self.lines.get(timeout=timeout)
            assert line is not None, "the server exited"
            answer: dict[str, object] = json.loads(line)
            if "id" in answer:
                return answer

    def initialize(self) -> dict[str, object]:
        answer = self.request(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": "raw", "version": "1"},
                    },
                }
            )
        )
        self.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        return answer

    def call(self, request_id: int, tool: str, arguments: dict[str, object]) -> dict[str, object]:
        params = {"name": tool, "arguments": arguments}
        return self.request(
            json.dumps(
                {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
            )
        )

    def stop(self) -> str:
        process = self.process
        assert process.stdin and process.stdout and process.stderr
        process.stdin.close()
        process.wait(TIMEOUT)
        self.pump.join(TIMEOUT)
        process.stdout.close()
        with process.stderr:
            return process.stderr.read().decode()


def test_stdio_answers_undecodable_requests_with_json_rpc_errors(tmp_path: Path) -> None:
    server = RawStdio(env=environment(tmp_path))
    try:
        server.initialize()
        arguments = '{"prompt_id": "ps_\\ud800"}'
        surrogate = server.request(
            '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_prompt",'
            f'"arguments":{arguments}}}}}'
        )
        deep = server.request(
            '{"jsonrpc":"2.0","id":8,"method":"ping","params":{"x":'
            + "[" * 20_000
            + "]" * 20_000
            + "}}"
        )
        not_jsonrpc = server.request('{"id": 9, "hello": "world"}')
        alive = server.request('{"jsonrpc":"2.0","id":10,"method":"ping"}')
    finally:
        stderr = server.stop()
    assert surrogate["id"] == 7 and surrogate["error"]["code"] == -32700  # type: ignore[index]
    assert "lone surrogate" in surrogate["error"]["message"]  # type: ignore[index]
    assert deep["id"] == 8 and deep["error"]["code"] == -32700  # type: ignore[index]
    assert not_jsonrpc["id"] == 9 and not_jsonrpc["error"]["code"] == -32600  # type: ignore[index]
    assert alive == {"jsonrpc": "2.0", "id": 10, "result": {}}
    assert "Traceback" not in stderr


def test_stdio_answers_deep_nesting_with_its_id_and_unusable_ids_as_invalid_requests(
    tmp_path: Path,
) -> None:
    server = RawStdio(env=environment(tmp_path))
    nested = "[" * 2000 + "]" * 2000
    try:
        server.initialize()
        # Each answer within 5 s, naming the id wherever it stands, deep nesting around it.
        deep = [
            server.request(line, timeout=5.0)
            for line in (
                '{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":' + nested + "}}",
                '{"jsonrpc":"2.0","method":"ping","params":{"x":' + nested + '},"id":"late"}',
                '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"create_prompt",'
                '"arguments":{"prompt_text":"x","parameters":{"a":'
                + '{"b":' * 2000
                + "1"
                + "}" * 2000
                + "}}}}",
            )
        ]
        unusable = {
            given: server.request(
                '{"jsonrpc":"2.0","id":' + given + ',"method":"ping"}', timeout=5.0
            )
            for given in ('{"a":1}', "true", "false", "1.5", "null")
        }
        alive = server.request('{"jsonrpc":"2.0","id":10,"method":"ping"}', timeout=5.0)
    finally:
        stderr = server.stop()
    assert [answer["id"] for answer in deep] == [1, "late", 3]
    assert all(answer["error"]["code"] == -32700 for answer in deep)  # type: ignore[index]
    for given, answer in unusable.items():
        assert answer["id"] is None and answer["error"]["code"] == -32600, given  # type: ignore[index]
        assert "id must be a string or an integer" in answer["error"]["message"]  # type: ignore[index]
    assert alive == {"jsonrpc": "2.0", "id": 10, "result": {}}
    assert "Traceback" not in stderr


def test_stdio_prompt_template_errors_are_clear_and_log_no_traceback(tmp_path: Path) -> None:
    server = RawStdio(env=environment(tmp_path))
    try:
        server.initialize()
        answers = [
            server.request(
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": n,
                        "method": "prompts/get",
                        "params": {"name": "enhance_cosmos_prompt", "arguments": arguments},
                    }
                )
            )
            for n, arguments in enumerate([{"prompt_id": "ps_" + "0" * 32}, {"prompt_id": "x"}, {}])
        ]
    finally:
        stderr = server.stop()
    messages = [a["error"]["message"] for a in answers]  # type: ignore[index]
    assert "no prompt has the id" in messages[0] and "lowercase hex" in messages[1]
    assert "needs the argument prompt_id" in messages[2]
    assert all(a["error"]["code"] == -32602 for a in answers)  # type: ignore[index]
    assert "Traceback" not in stderr and "Internal server error" not in stderr


def test_stdio_starts_without_its_database_and_names_the_host(tmp_path: Path) -> None:
    env = environment(
        tmp_path,
        COSMOS_MONGO_URI="mongodb://admin:hunter2@127.0.0.1:1/?appname=x",
        COSMOS_MONGO_TIMEOUT_MS="300",
    )
    server = RawStdio(env=env)
    try:
        started = server.initialize()
        assert "result" in started, started  # at once: no wait for the database
        answer = server.call(1, "get_prompt", {"prompt_id": "ps_" + "0" * 32})
    finally:
        stderr = server.stop()
    text = answer["result"]["content"][0]["text"]  # type: ignore[index]
    assert answer["result"]["isError"] is True  # type: ignore[index]
    assert "unreachable: MongoDB at 127.0.0.1:1" in text
    assert "hunter2" not in text + stderr and "admin" not in text + stderr


def test_stdio_honours_the_database_flag_and_variable(tmp_path: Path) -> None:
    for args, extra, name in [
        (["--db", "studio"], {}, "studio"),
        ([], {"COSMOS_MONGO_DATABASE": "lab"}, "lab"),
    ]:
        server = RawStdio(*args, env=environment(tmp_path, **extra))
        try:
            server.initialize()
            answer = server.call(1, "create_prompt", {"prompt_text": "A robot arm stacks blocks"})
        finally:
            server.stop()
        assert "error" not in answer and (tmp_path / f"{name}.sqlite3").exists()
        command = [sys.executable, "-m", "cosmos_mongo.cli", "--data-dir", str(tmp_path)]
        listed = subprocess.run(
            [*command, "--db", name, "prompt", "list", "--json"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        )
        assert json.loads(listed.stdout)[0]["prompt_text"] == "A robot arm stacks blocks"
    assert not (tmp_path / "cosmos.sqlite3").exists()
