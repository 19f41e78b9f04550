"""The docs describe what exists: every public method and every CLI command is documented."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

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


def test_readme_says_how_long_the_test_command_takes() -> None:
    after = README.split(".venv/bin/python -m pytest\n```", 1)[1]
    first = " ".join(after.strip().split("\n\n", 1)[0].split())
    assert first.startswith("The tests take about 6 minutes on two cores")
    assert "installs mongosh" in first


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


_FIELD = re.compile(r'"(\w+)": (true|false|null|-?\d+|"[^"]*")')
_BINDING = re.compile(r"^([A-Z]\w*)=(\S+)")


def _inspector_tool_calls() -> list[tuple[list[str], str, dict[str, str]]]:
    """(the words of each ``tools/call`` in MCP.md's Inspector session, its comment lines,
    the shell variables set from its answer: name -> the field shown with that value)."""
    section = (REPO / "docs" / "MCP.md").read_text().split("## Try it with the MCP Inspector")[1]
    script = section.split("```bash\n", 1)[1].split("\n```", 1)[0].replace("\\\n", " ")
    calls: list[tuple[list[str], str, dict[str, str]]] = []
    for line in script.splitlines():
        binding = _BINDING.match(line)
        if line.startswith("$MCP --method tools/call"):
            calls.append((shlex.split(line), "", {}))
        elif line.startswith("#") and calls:
            calls[-1] = (calls[-1][0], calls[-1][1] + line, calls[-1][2])
        elif binding and calls and calls[-1][0]:
            shown = {json.loads(value): field for field, value in _FIELD.findall(calls[-1][1])}
            assert binding[2] in shown, f"{binding[1]} is set to no value the call above shows"
            calls[-1][2][binding[1]] = shown[binding[2]]
        elif line.strip():
            calls.append(([], "", {}))  # another command: its comments are not a tool's answer
    return [call for call in calls if call[0]]


def _inspector_value(text: str) -> object:
    """A ``--tool-arg`` value as the Inspector CLI sends it for this server's schemas."""
    if text in ("true", "false"):
        return text == "true"
    return int(text) if text.isdigit() else text


def _shows(answer: object, field: str, value: object) -> bool:
    """Whether ``field`` has ``value`` somewhere in ``answer`` (nested objects included)."""
    if isinstance(answer, dict):
        return answer.get(field) == value or any(
            _shows(inner, field, value) for inner in answer.values()
        )
    if isinstance(answer, list):
        return any(_shows(inner, field, value) for inner in answer)
    return False


def test_the_inspector_session_in_mcp_md_shows_what_the_tools_answer() -> None:
    """Each ``"field": value`` a comment shows under a tool call is in the answer of that call,
    replayed on an empty server; values the session keeps in a shell variable ($P, $C, ...)
    are taken from the replay's own answers, for ids and cursors differ from run to run."""
    from mcp import Client

    from scripts.mcp_reference import fresh_server

    calls = _inspector_tool_calls()
    assert len(calls) >= 5, calls
    assert any("cursor=$" in " ".join(words) for words, _, _ in calls), "no cursor page"

    async def replay() -> None:
        variables: dict[str, str] = {}
        async with Client(fresh_server()) as session:
            for words, comment, bindings in calls:
                tool = words[words.index("--tool-name") + 1]
                arguments: dict[str, object] = {}
                for index, word in enumerate(words):
                    if word == "--tool-arg":
                        name, _, value = words[index + 1].partition("=")
                        for variable, real in variables.items():
                            value = value.replace(f"${variable}", real)
                        arguments[name] = _inspector_value(value)
                result = await session.call_tool(tool, arguments)
                answer = result.structured_content or {}
                for variable, field in bindings.items():
                    variables[variable] = str(answer[field])
                for field, text in _FIELD.findall(comment):
                    value = json.loads(text)
                    if field == "isError":
                        assert result.is_error is value, (tool, result.content)
                    elif field not in bindings.values() and not _ID.fullmatch(str(value)):
                        assert _shows(answer, field, value), (tool, field, answer)

    asyncio.run(replay())


def test_readme_gives_errors_and_usage_errors_their_real_shape_and_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COSMOS_MONGO_URI", raising=False)
    monkeypatch.setenv("COSMOS_MONGO_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    failed = runner.invoke(cli, ["prompt", "show", "ps_00000000"])
    assert failed.exit_code == 1 and failed.stderr.startswith("Error: "), failed.output
    assert len(failed.stderr.splitlines()) == 1, failed.stderr
    misused = runner.invoke(cli, ["run", "list", "--status", "finished"])
    lines = misused.stderr.splitlines()
    assert misused.exit_code == 2 and len(lines) == 4, misused.stderr
    assert lines[0].startswith("Usage: ") and lines[1].startswith("Try '") and not lines[2]
    assert lines[3].startswith("Error: ")
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "An error is one line on stderr (`Error: ...`) with exit code 1." in readme
    assert "a blank line and the `Error:` line, with exit code 2." in readme


def test_every_class_api_md_names_imports_from_cosmos_mongo() -> None:
    import cosmos_mongo
    from cosmos_mongo import embedded, enhancers, errors, importer, models

    ours = {
        name
        for module in (errors, models, importer, enhancers, embedded)
        for name, value in vars(module).items()
        if isinstance(value, type) and value.__module__.startswith(module.__name__)
    }
    named = set(re.findall(r"`([A-Z][A-Za-z]+)`", API)) & ours
    assert named, "API.md names no class?"
    missing = {name for name in named if not hasattr(cosmos_mongo, name)}
    assert not missing, missing
