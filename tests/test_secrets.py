"""Secrets stay secret: a different secret is planted in every setting and every echo path (the
enhancer URL's user:password@ and ?key=, the API key, a gateway that echoes the Authorization
header and the URL it was asked for), then every output, log line, repr, stored document,
export and file is searched for each one. Files the product creates are 0600, directories
0700."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import mongomock
import pytest
from click.testing import CliRunner
from mongomock_motor import AsyncMongoMockClient

from cosmos_mongo import AsyncCosmosStore, CosmosStore
from cosmos_mongo.cli import cli
from cosmos_mongo.config import Settings
from cosmos_mongo.enhancers import OpenAICompatibleEnhancer, enhancer_from_settings
from cosmos_mongo.errors import EnhancementError
from cosmos_mongo.files import create_private, private_directory
from cosmos_mongo.redaction import redact_text, redact_url, url_secrets
from mcp_server import ServerSettings, build_server

USER = "gwuser-u7"
PASSWORD = "pw-Secret-4f1e"
QUERY_KEY = "qkey-Secret-9c2e"
API_KEY = "apikey-Secret-5d1b"
SIGNATURE = "sig-Secret-0a77"
MONGO_PASSWORD = "mongo-Secret-31b8"
MCP_TOKEN = "mcp-Secret-77aa"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
PLANTED = [PASSWORD, QUERY_KEY, API_KEY, SIGNATURE, MONGO_PASSWORD, MCP_TOKEN, BASIC]


def base_url(host: str) -> str:
    return f"http://{USER}:{PASSWORD}@{host}/v1?key={QUERY_KEY}&sig={SIGNATURE}&api-version=2"


def leaks(text: str) -> list[str]:
    return [secret for secret in PLANTED if secret in text]


# -- a gateway that echoes what authenticates it ----------------------------------------------


def echo(authorization: str, target: str) -> str:
    """What a careless gateway answers: the credentials it was sent, then the URL."""
    return json.dumps({"error": f"denied {authorization} for {target}"})


class EchoGateway:
    """An OpenAI-compatible endpoint on 127.0.0.1 that refuses every call (HTTP 401) with the
    Authorization header and the request target in its body."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                authorization = self.headers.get("Authorization", "")
                gateway.requests.append((self.path, authorization))
                payload = echo(authorization, self.path).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def gateway() -> Iterator[EchoGateway]:
    served = EchoGateway()
    yield served
    served.close()


def echo_transport(seen: list[httpx.Request]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        authorization = request.headers.get("Authorization", "")
        return httpx.Response(401, text=echo(authorization, str(request.url)))

    return httpx.MockTransport(answer)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Modes must not depend on a strict umask: run with none."""
    previous = os.umask(0)
    yield
    os.umask(previous)


# -- settings ---------------------------------------------------------------------------------


def test_settings_never_show_the_base_urls_credentials_or_any_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COSMOS_MONGO_URI", f"mongodb://admin:{MONGO_PASSWORD}@db.example/")
    monkeypatch.setenv("COSMOS_MONGO_ENHANCER_BASE_URL", base_url("gw.example"))
    monkeypatch.setenv("COSMOS_MONGO_ENHANCER_API_KEY", API_KEY)
    monkeypatch.setenv("COSMOS_MCP_TOKEN", MCP_TOKEN)
    settings, server = Settings(), ServerSettings()
    for shown in (
        repr(settings),
        str(settings),
        repr(settings.model_dump()),
        settings.model_dump_json(),
        repr(server),
        str(server),
        server.model_dump_json(),
    ):
        assert leaks(shown) == [], shown
    assert settings.model_dump()["enhancer_base_url"] == (
        "http://***@gw.example/v1?key=***&sig=***&api-version=2"
    )
    # The attribute keeps the credentials, so the enhancer can use them.
    assert settings.enhancer_base_url == base_url("gw.example")


def test_redact_url_hides_userinfo_and_secret_query_values_only() -> None:
    url = "https://u:p@host:8/v1?api_key=A1&access_token=B2&signature=C3&password=D4&n=5#f"
    assert redact_url(url) == (
        "https://***@host:8/v1?api_key=***&access_token=***&signature=***&password=***&n=5#f"
    )
    assert redact_url("http://localhost:8000/v1") == "http://localhost:8000/v1"
    assert redact_text(f"GET {url} failed") == f"GET {redact_url(url)} failed"


def test_url_secrets_include_the_basic_authorization_value_and_decoded_forms() -> None:
    found = url_secrets("http://us%40r:p%2Fss@h/v1?token=t%2B123&page=22222")
    encoded = base64.b64encode(b"us@r:p/ss").decode()
    assert {"p%2Fss", "p/ss", encoded, "t%2B123", "t+123"} <= set(found)
    assert "22222" not in found  # not a secret-looking parameter


# -- the enhancer -----------------------------------------------------------------------------


def test_the_enhancer_sends_userinfo_as_basic_auth_and_keeps_the_query_on_every_request() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "A new text."}}]})

    enhancer = OpenAICompatibleEnhancer(
        base_url("gw.example"), "m", transport=httpx.MockTransport(answer)
    )
    assert enhancer.enhance("a prompt", {}) == "A new text."
    request = seen[0]
    assert str(request.url) == (
        f"http://gw.example/v1/chat/completions?key={QUERY_KEY}&sig={SIGNATURE}&api-version=2"
    )
    assert request.headers["Authorization"] == f"Basic {BASIC}"
    assert leaks(repr(enhancer)) == []


@pytest.mark.parametrize(
    ("url", "api_key"),
    [(base_url("gw.example"), API_KEY), ("http://gw.example/v1?key=" + QUERY_KEY, API_KEY)],
    ids=["userinfo-and-query", "bearer-and-query"],
)
def test_an_echoing_gateway_never_gets_a_secret_into_the_error_or_the_logs(
    url: str, api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[httpx.Request] = []
    enhancer = OpenAICompatibleEnhancer(
        url, "m", api_key=api_key, max_retries=0, transport=echo_transport(seen)
    )
    with pytest.raises(EnhancementError, match="HTTP 401") as caught:
        enhancer.enhance("a prompt", {})
    sent = seen[0].headers["Authorization"]
    assert sent in (f"Basic {BASIC}", f"Bearer {API_KEY}")  # the echo path was exercised
    assert leaks(str(caught.value)) == [], caught.value
    assert "HTTP Request: POST" in caplog.text  # httpx's own line, without the secrets
    assert leaks(caplog.text) == [], caplog.text


def test_a_secret_cut_by_the_error_texts_length_limit_leaves_no_part_behind() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text="x" * 180 + request.headers["Authorization"])

    enhancer = OpenAICompatibleEnhancer(
        base_url("gw.example"), "m", max_retries=0, transport=httpx.MockTransport(answer)
    )
    with pytest.raises(EnhancementError) as caught:
        enhancer.enhance("a prompt", {})
    assert "Basic ***" in str(caught.value) and BASIC[:10] not in str(caught.value)


def test_the_stored_run_of_a_failed_enhancement_holds_no_secret() -> None:
    seen: list[httpx.Request] = []
    enhancer = OpenAICompatibleEnhancer(
        base_url("gw.example"), "m", api_key=API_KEY, max_retries=0, transport=echo_transport(seen)
    )
    store = CosmosStore(mongomock.MongoClient(tz_aware=True)["cosmos"], enhancer=enhancer)
    prompt = store.create_prompt("A robot arm stacks blocks")
    with pytest.raises(EnhancementError) as caught:
        store.enhance_prompt(prompt.id)
    assert leaks(str(caught.value)) == []
    runs = list(store.db["runs"].find({}))
    assert runs and runs[0]["error_message"] and leaks(repr(runs)) == [], runs


@pytest.mark.anyio
async def test_the_mcp_enhance_tool_shows_the_agent_no_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from mcp import Client

    caplog.set_level(logging.DEBUG)
    seen: list[httpx.Request] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        authorization = request.headers.get("Authorization", "")
        return httpx.Response(401, text=echo(authorization, str(request.url)))

    enhancer = OpenAICompatibleEnhancer(
        base_url("gw.example"),
        "m",
        api_key=API_KEY,
        max_retries=0,
        async_transport=httpx.MockTransport(answer),
    )
    database: Any = AsyncMongoMockClient(mock_mongo_client=mongomock.MongoClient(tz_aware=True))
    store = AsyncCosmosStore(database["cosmos"], enhancer=enhancer)
    server = build_server(ServerSettings(), store=store)
    async with Client(server) as session:
        created = await session.call_tool("create_prompt", {"prompt_text": "A robot arm"})
        prompt_id = created.structured_content["id"]
        result = await session.call_tool("enhance_prompt", {"prompt_id": prompt_id})
        text = " ".join(getattr(part, "text", "") for part in result.content)
        assert result.is_error and "HTTP 401" in text
        shown = [text]
        runs = await session.call_tool("list_runs", {"prompt_id": prompt_id})
        shown.append(json.dumps(runs.structured_content))
    assert seen and "error_message" in shown[1]
    assert leaks(" ".join(shown)) == [], shown
    assert leaks(caplog.text) == [], caplog.text


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the CLI, end to end, and the files it leaves ---------------------------------------------


def test_the_cli_at_vv_leaks_no_secret_to_output_logs_store_or_export_and_its_files_are_private(
    tmp_path: Path,
    gateway: EchoGateway,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    permissive_umask: None,
) -> None:
    caplog.set_level(logging.DEBUG)
    data_dir = tmp_path / "home" / "data"
    monkeypatch.delenv("COSMOS_MONGO_URI", raising=False)
    monkeypatch.setenv("COSMOS_MONGO_DATA_DIR", str(data_dir))
    monkeypatch.setenv("COSMOS_MONGO_ENHANCER_BASE_URL", base_url(gateway.host))
    monkeypatch.setenv("COSMOS_MONGO_ENHANCER_MODEL", "gateway-model")
    monkeypatch.setenv("COSMOS_MONGO_ENHANCER_API_KEY", API_KEY)
    monkeypatch.setenv("COSMOS_MONGO_ENHANCER_MAX_RETRIES", "0")
    monkeypatch.setenv("COSMOS_MCP_TOKEN", MCP_TOKEN)
    runner = CliRunner()
    outputs: list[str] = []

    def run(*args: str) -> Any:
        result = runner.invoke(cli, ["-vv", *args], catch_exceptions=False)
        outputs.extend([result.output, getattr(result, "stderr", "")])
        return result

    created = run("prompt", "create", "A robot arm stacks blocks", "--json")
    prompt_id = json.loads(created.stdout)["id"]
    failed = run("enhance", prompt_id)
    assert failed.exit_code == 1 and "HTTP 401" in failed.output
    assert gateway.requests and gateway.requests[0][1] == f"Basic {BASIC}"
    assert QUERY_KEY in gateway.requests[0][0]  # the gateway got its key
    history = run("history", prompt_id, "--json")
    assert "error_message" in history.output
    exported = run("export", str(tmp_path / "out" / "nested"))
    assert exported.exit_code == 0, exported.output
    backed_up = run("backup", str(tmp_path / "out" / "copy.sqlite3"))
    assert backed_up.exit_code == 0, backed_up.output

    assert leaks(" ".join(outputs)) == [], outputs
    assert leaks(caplog.text) == [], caplog.text
    assert "HTTP Request: POST" in caplog.text
    assert leaks(repr(enhancer_from_settings(Settings()))) == []
    created_paths = [*(tmp_path / "home").rglob("*"), *(tmp_path / "out").rglob("*")]
    assert any(path.name.endswith(".json") for path in created_paths)
    for path in [tmp_path / "home", tmp_path / "out", *created_paths]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
        if path.is_file():
            content = path.read_bytes().decode("latin-1")
            assert leaks(content) == [], path
            assert "error_message" in content or not path.name.startswith("runs")


def test_the_embedded_store_its_wal_and_shm_are_0600_under_any_umask(
    tmp_path: Path, permissive_umask: None
) -> None:
    settings = Settings(data_dir=tmp_path / "a" / "b")
    with CosmosStore.connect(settings=settings) as store:
        store.create_prompt("A robot arm")
        made = list((tmp_path / "a").rglob("*"))
        assert any(path.name.endswith("-wal") for path in made), made
        for path in [tmp_path / "a", *made]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_private_files_and_directories_are_created_0600_and_0700(
    tmp_path: Path, permissive_umask: None
) -> None:
    directory = private_directory(tmp_path / "x" / "y")
    with create_private(directory / "f.json") as file:
        file.write("{}")
    assert stat.S_IMODE((tmp_path / "x").stat().st_mode) == 0o700
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "f.json").stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        create_private(directory / "f.json")
