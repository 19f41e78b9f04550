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


def test_the_mcp_tool_reference_is_real_calls_and_their_answers() -> None:
    from scripts.mcp_reference import examples

    documented = (REPO / "docs" / "MCP.md").read_text().split("## Tool reference", 1)[1]
    blocks = re.findall(
        r"### `(\w+)`\n\n```json\n(.*?)\n```\n\n.*?```json\n(.*?)\n```", documented, re.S
    )
    real = asyncio.run(examples())
    assert [(tool, json.loads(call)["arguments"].keys()) for tool, call, _ in blocks] == [
        (tool, arguments.keys()) for tool, arguments, _ in real
    ]
    for (tool, _, answer), (_, _, real_answer) in zip(blocks, real, strict=True):
        assert json.loads(answer).keys() == real_answer.keys(), tool


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
