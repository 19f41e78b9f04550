"""Moving a whole store: `import-sqlite`, `export` and `copy` by size (a script, not a test).

    python -m benchmarks.bench_transfer --sizes 1000 10000 100000

For each N it writes a predecessor SQLite file of N prompts and N runs, then runs the CLI as a
user would, each command a fresh process on the embedded default: `import-sqlite` of that file
into an empty store, `export` of the store to a directory, and `copy --to-data-dir` of the
store into a second, empty embedded store (which checks every document as it writes it and
ends with a count and the quick `verify` of the target), then the full `verify` of that target
alone (a new process: what a user runs to check the copy's data in full). Prints a
Markdown table of wall times and each command's seconds per 1,000 documents, which stays level
when a command grows linearly.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from tests.predecessor_db import add_prompt, add_run, create, pid, rid

COMMANDS = ("import-sqlite", "export", "copy")
CHECK = "verify"  # the full checks of the copy's target, run on their own

# The CLI as its console script runs it.
_CLI = "import sys; from cosmos_mongo.cli import main; sys.argv[0] = 'cosmos-mongo'; main()"


@dataclass(frozen=True)
class Transfer:
    """Wall seconds of each command on N prompts and N runs."""

    count: int
    seconds: dict[str, float]

    @property
    def documents(self) -> int:
        return 2 * self.count

    def per_thousand(self, command: str) -> float:
        return self.seconds[command] / self.documents * 1000


def predecessor_file(path: Path, count: int) -> Path:
    """``count`` prompts, each with one run, in the predecessor's schema."""
    db = create(path)
    start = datetime(2024, 1, 1, 12)
    for n in range(1, count + 1):
        created = (start + timedelta(seconds=n)).strftime("%Y-%m-%d %H:%M:%S")
        add_prompt(
            db,
            pid(n),
            f"A robot arm stacks block {n} on a workbench",
            created,
            {"video": f"in/{n}.mp4"},
            {"name": f"p{n}", "guidance": 7},
        )
        add_run(
            db,
            rid(n),
            pid(n),
            created=created,
            config={"num_steps": 35},
            outputs={"video": f"out/{n}.mp4"},
        )
    db.commit()
    db.close()
    return path


def _cli(data_dir: Path, *arguments: str) -> float:
    """Wall seconds of one CLI command in a fresh process; raises if it fails."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("COSMOS_")}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CLI, "--data-dir", str(data_dir), *arguments],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"cosmos-mongo {' '.join(arguments)} failed: {done.stderr[-2000:]}")
    return seconds


def measure(count: int) -> Transfer:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        source = predecessor_file(root / "cosmos.db", count)
        store, target = root / "store", root / "target"
        seconds = {
            "import-sqlite": _cli(store, "import-sqlite", str(source)),
            "export": _cli(store, "export", str(root / "exported")),
            "copy": _cli(store, "copy", "--to-data-dir", str(target)),
            CHECK: _cli(target, "verify"),
        }
        for name in ("prompts", "runs"):
            with (root / "exported" / f"{name}.json").open(encoding="utf-8") as file:
                lines = sum(1 for _ in file)
            if lines != count:
                raise RuntimeError(f"export wrote {lines} {name}, expected {count}")
    return Transfer(count, seconds)


def table(results: list[Transfer]) -> str:
    """Wall seconds, seconds per 1,000 documents, and each command's time against the import."""
    lines = [
        "| N prompts + N runs | "
        + " | ".join(f"`{command}` s" for command in COMMANDS)
        + " | `verify` of the copy s | "
        + " | ".join(f"`{command}` s per 1k docs" for command in COMMANDS)
        + " | export / import | copy / import |",
        "|---|" + "---|" * (2 * len(COMMANDS) + 3),
    ]
    for result in results:
        walls = " | ".join(f"{result.seconds[command]:.2f}" for command in COMMANDS)
        rates = " | ".join(f"{result.per_thousand(command):.3f}" for command in COMMANDS)
        imported, copied = result.seconds["import-sqlite"], result.seconds["copy"]
        lines.append(
            f"| {result.count:,} + {result.count:,} | {walls} | {result.seconds[CHECK]:.2f} "
            f"| {rates} | {result.seconds['export'] / imported:.2f} | {copied / imported:.2f} |"
        )
    return "\n".join(lines)


def growth(results: list[Transfer]) -> list[str]:
    """How each command's time grows against the documents it moves, smallest N to largest,
    and where export and copy stand against the import at the largest."""
    small, large = results[0], results[-1]
    factor = large.documents / small.documents
    notes = [
        f"- `{command}`: {small.seconds[command]:.2f} s → {large.seconds[command]:.2f} s for "
        f"{factor:,.0f}x the documents (x{large.seconds[command] / small.seconds[command]:.1f}); "
        f"{small.per_thousand(command):.3f} → {large.per_thousand(command):.3f} s per 1,000."
        for command in COMMANDS
    ]
    imported = large.seconds["import-sqlite"]
    notes.append(
        f"- At {large.count:,} prompts and {large.count:,} runs, `export` takes "
        f"{large.seconds['export'] / imported:.2f}x and `copy` "
        f"{large.seconds['copy'] / imported:.2f}x the time of `import-sqlite`."
    )
    return notes


def transfer(sizes: list[int]) -> tuple[str, list[str]]:
    """The table and the growth notes for these sizes."""
    results = []
    for count in sizes:
        results.append(measure(count))
        print(f"transfer measured at N={count:,}", file=sys.stderr, flush=True)
    return table(results), growth(results)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="import-sqlite, export and copy by size.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    args = parser.parse_args(argv)
    rows, notes = transfer(args.sizes)
    print(rows)
    print()
    print("\n".join(notes))


if __name__ == "__main__":
    main()
