"""The docs describe what exists: every public method and every CLI command is documented."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import click
import pytest

from cosmos_mongo import CosmosStore
from cosmos_mongo.cli import cli
from cosmos_mongo.store import public_methods
from mcp_server import TOOLS

REPO = Path(__file__).parent.parent
API = (REPO / "docs" / "API.md").read_text()
README = (REPO / "README.md").read_text()


@pytest.mark.parametrize("method", sorted(public_methods(CosmosStore)))
def test_every_public_method_has_a_section_in_api_md(method: str) -> None:
    assert f"### `{method}`" in API


def _commands(group: click.Group, prefix: str = "") -> list[str]:
    found = []
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found += _commands(command, path + " ")
        else:
            found.append(path)
    return found


@pytest.mark.parametrize("command", _commands(cli))
def test_every_cli_command_is_in_the_readme(command: str) -> None:
    group, _, leaf = command.rpartition(" ")
    prefix = f"cosmos-mongo {group} " if group else "cosmos-mongo "
    pattern = rf"^{prefix}.*\b{leaf}\b"
    assert re.search(pattern, README, re.MULTILINE), command


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in README


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_every_mcp_tool_has_an_example_in_mcp_md(tool: str) -> None:
    mcp_doc = (REPO / "docs" / "MCP.md").read_text()
    assert f"### `{tool}`" in mcp_doc and f'"name": "{tool}"' in mcp_doc


def _reference_blocks() -> list[tuple[str, str, str]]:
    """(tool, call JSON, answer JSON) of each example in MCP.md's tool reference, in order."""
    documented = (REPO / "docs" / "MCP.md").read_text().split("## Tool reference", 1)[1]
    return re.findall(
        r"### `(\w+)`\n\n```json\n(.*?)\n```\n\n.*?```json\n(.*?)\n```", documented, re.S
    )


def test_the_mcp_tool_reference_is_real_calls_and_their_answers() -> None:
    from scripts.mcp_reference import examples

    blocks = _reference_blocks()
    real = asyncio.run(examples())
    assert [(tool, json.loads(call)["arguments"].keys()) for tool, call, _ in blocks] == [
        (tool, arguments.keys()) for tool, arguments, _ in real
    ]
    for (tool, _, answer), (_, _, real_answer) in zip(blocks, real, strict=True):
        assert json.loads(answer).keys() == real_answer.keys(), tool


_ID = re.compile(r"\b(?:ps|rs)_[0-9a-f]{8,64}\b")


def test_the_mcp_tool_reference_replays_through_the_tools_alone() -> None:
    """Every id a documented call names came in an earlier documented answer: the calls,
    replayed on an empty server with those ids swapped for the replay's own, all succeed."""
    from mcp import Client

    from scripts.mcp_reference import _shortened, fresh_server

    async def replay() -> None:
        replayed: dict[str, str] = {}  # documented id -> the id the replay got in its place
        async with Client(fresh_server()) as session:
            for tool, call, answer in _reference_blocks():
                unknown = [i for i in _ID.findall(call) if i not in replayed]
                assert not unknown, f"{tool} names {unknown}, which no earlier answer gave"
                arguments = json.loads(_ID.sub(lambda m: replayed[m[0]], call))["arguments"]
                result = await session.call_tool(tool, arguments)
                assert not result.is_error, (tool, result.content)
                got = json.dumps(_shortened(result.structured_content), indent=2)
                documented_ids, real_ids = _ID.findall(answer), _ID.findall(got)
                assert len(documented_ids) == len(real_ids), f"{tool} answers other documents"
                for documented, real in zip(documented_ids, real_ids, strict=True):
                    assert replayed.setdefault(documented, real) == real, (tool, documented)

    asyncio.run(replay())


def test_every_class_api_md_names_imports_from_cosmos_mongo() -> None:
    import cosmos_mongo
    from cosmos_mongo import embedded, enhancers, errors, importer, models

    ours = {
        name
        for module in (errors, models, importer, enhancers, embedded)
        for name, value in vars(module).items()
        if isinstance(value, type) and value.__module__ == module.__name__
    }
    named = set(re.findall(r"`([A-Z][A-Za-z]+)`", API)) & ours
    assert named, "API.md names no class?"
    missing = {name for name in named if not hasattr(cosmos_mongo, name)}
    assert not missing, missing
