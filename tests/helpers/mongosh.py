"""The real mongosh for the tests: installed from npm into the repository's git-ignored
``.tools/mongosh/`` the first time a test needs it, reused by later runs, and run over a list of
statements with every answer written out as canonical Extended JSON.

An install goes into a staging folder beside the final one and is renamed into place when npm
succeeds, so an interrupted or concurrent install never leaves a half-installed mongosh where a
later run would take it for a good one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, Final

from bson import json_util

REPO: Final = Path(__file__).resolve().parent.parent.parent
INSTALL_DIR: Final = REPO / ".tools" / "mongosh"
MONGOSH_MAJOR: Final = 2
# An install (433 packages) took 50-80 s on two busy cores; CI's whole budget is 10 min.
INSTALL_TIMEOUT: Final = 300.0
RUN_TIMEOUT: Final = 120.0
_SHELL_COMMANDS: Final = ("use ",)
_JSON_OPTIONS: Final = json_util.CANONICAL_JSON_OPTIONS.with_options(tz_aware=True, tzinfo=UTC)


class MongoshUnavailable(Exception):
    """mongosh cannot be installed here because Node.js or npm is missing: the tests skip."""


def _bounded(command: Sequence[str], timeout: float, **options: Any) -> tuple[int, str]:
    """Run ``command`` in its own process group, killing the whole group if it outlives
    ``timeout``; its exit code and its output (stdout and stderr together)."""
    process = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        **options,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return process.returncode, output.decode(errors="replace")


def _binary(install_dir: Path) -> Path:
    return install_dir / "node_modules" / ".bin" / "mongosh"


def installed_version(install_dir: Path) -> str | None:
    """The version of the mongosh installed in ``install_dir``, if one of the pinned major
    runs there; None otherwise."""
    binary = _binary(install_dir)
    if not binary.exists():
        return None
    try:
        code, output = _bounded([str(binary), "--version"], 60.0)
    except (OSError, subprocess.TimeoutExpired):
        return None
    version = output.strip().splitlines()[-1] if output.strip() else ""
    if code != 0 or not re.fullmatch(rf"{MONGOSH_MAJOR}\.\d+\.\d+\S*", version):
        return None
    return version


def find_or_install(install_dir: Path = INSTALL_DIR, path: str | None = None) -> Path:
    """The mongosh binary in ``install_dir``, installed there with npm first if missing.

    Raises:
        MongoshUnavailable: it is not installed and ``node`` or ``npm`` is not on ``path``
            (default ``$PATH``).
        RuntimeError: npm failed or did not finish within the time limit.
    """
    if installed_version(install_dir) is not None:
        return _binary(install_dir)
    npm, node = shutil.which("npm", path=path), shutil.which("node", path=path)
    if npm is None or node is None:
        raise MongoshUnavailable(
            f"{'npm' if npm is None else 'node'} not found on PATH: the mongosh tests install "
            f"the real mongosh from npm (mongosh@{MONGOSH_MAJOR}) and need Node.js and npm"
        )
    install_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{install_dir.name}-staging-", dir=install_dir.parent))
    try:
        command = [
            npm,
            "install",
            "--prefix",
            str(staging),
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--loglevel=error",
            f"mongosh@{MONGOSH_MAJOR}",
        ]
        try:
            code, output = _bounded(command, INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"`{' '.join(command[1:])}` did not finish within {INSTALL_TIMEOUT:g} s "
                "(is the npm registry reachable?)"
            ) from None
        if code != 0 or installed_version(staging) is None:
            raise RuntimeError(
                f"`npm install mongosh@{MONGOSH_MAJOR}` into {install_dir} failed "
                f"(exit {code}):\n{output[-3000:]}"
            )
        _publish(staging, install_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _binary(install_dir)


def _publish(staging: Path, install_dir: Path) -> None:
    """Rename the finished install into place; a broken or outdated one there is replaced,
    and one that another run installed meanwhile is kept."""
    if install_dir.exists() and installed_version(install_dir) is None:
        shutil.rmtree(install_dir)
    try:
        staging.rename(install_dir)
    except OSError:
        if installed_version(install_dir) is None:
            raise


@dataclass(frozen=True)
class Answer:
    """What mongosh answered to one statement: a value (a cursor read to the end), an error,
    or for a shell command the database it left the shell in."""

    value: Any = None
    error: str | None = None


def run_statements(
    binary: Path, uri: str, database: str, statements: Sequence[str], workdir: Path
) -> list[Answer]:
    """Run ``statements`` in order in one mongosh session on ``uri``, starting in
    ``database``, and return what each answered.

    Each statement is one ``--eval`` (so shell commands such as ``use`` work as typed).
    Every other statement is evaluated as one expression and its value kept, read to the end
    if it is a cursor; an error is kept as text and the session goes on. ``workdir`` holds the
    shell's home (its logs; no ``.mongoshrc.js``, telemetry off) and the answers' file.
    """
    home = workdir / "home"
    (home / ".mongodb" / "mongosh").mkdir(parents=True, exist_ok=True)
    (home / ".mongodb" / "mongosh" / "config").write_text('{"enableTelemetry": false}')
    answers = workdir / "answers.json"
    evals = [f"use {database}", "globalThis.__answers = [];"]
    for statement in statements:
        if statement.startswith(_SHELL_COMMANDS):
            evals += [statement, "__answers.push({ shell: db.getName() });"]
        else:
            evals.append(_kept(statement))
    evals.append(
        f"require('fs').writeFileSync({json.dumps(str(answers))}, "
        "EJSON.stringify(__answers, { relaxed: false }));"
    )
    command = [str(binary), uri, "--quiet", "--norc"]
    for source in evals:
        command += ["--eval", source]
    env = {**os.environ, "HOME": str(home)}
    code, output = _bounded(command, RUN_TIMEOUT, env=env, cwd=workdir)
    if code != 0 or not answers.exists():
        raise RuntimeError(f"mongosh exited with {code}:\n{output[-3000:]}")
    decoded = json_util.loads(answers.read_text(), json_options=_JSON_OPTIONS)
    return [
        Answer(value=item.get("value", item.get("shell")), error=item.get("error"))
        for item in decoded
    ]


def _kept(statement: str) -> str:
    """The statement as an expression whose value (or error) is kept in ``__answers``."""
    return (
        "try {\n"
        f"  let __value = (\n{statement}\n  );\n"
        "  if (__value !== null && typeof __value === 'object'"
        " && typeof __value.toArray === 'function') {\n"
        "    __value = __value.toArray();\n"
        "  }\n"
        "  __answers.push({ value: __value });\n"
        "} catch (__error) {\n"
        "  __answers.push({ error: String(__error) });\n"
        "}"
    )
