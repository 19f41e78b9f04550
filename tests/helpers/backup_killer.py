"""Kills ``EmbeddedDatabase.backup`` at chosen points, driven by tests/test_backup.py.

    python -m tests.helpers.backup_killer DATA_DIR TARGET DONE_DIR KIND:N ...

Each ``KIND:N`` is one attempt, in a child forked from this process (which holds no
connection: each child opens the store itself), backing up DATA_DIR to TARGET:

- ``events:N``: the child SIGKILLs itself at the Nth profiler event (a Python call or return,
  or a call into C such as ``os.fsync`` or ``os.link``) inside ``backup``;
- ``bytes:N``: the child may write no file past N bytes (``RLIMIT_FSIZE``): the kernel kills
  it with SIGXFSZ when the copy grows past that, part way through SQLite's writes;
- ``count:0``: no kill; prints the number of profiler events a backup makes.

After each attempt a TARGET that exists is moved to DONE_DIR/<attempt>/cosmos.sqlite3 for the
test to open and verify, so the next attempt goes to the same path as the killed one. Prints
one JSON line per attempt: its index, whether the child was killed, and whether TARGET existed.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from cosmos_mongo.embedded import open_embedded


def _child(data_dir: Path, target: Path, kind: str, limit: int) -> None:
    database = open_embedded(data_dir)
    events = 0

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal events
        events += 1
        if kind == "events" and events == limit:
            os.kill(os.getpid(), signal.SIGKILL)

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if kind == "bytes":
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; let it kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.setprofile(profile)
    try:
        database.backup(target)
    finally:
        sys.setprofile(None)
    if kind == "count":
        print(json.dumps({"events": events}), flush=True)


def main(data_dir: Path, target: Path, done: Path, attempts: list[str]) -> None:
    for index, attempt in enumerate(attempts):
        kind, _, number = attempt.partition(":")
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the parent's code
            code = 1
            try:
                _child(data_dir, target, kind, int(number))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        existed = target.exists()
        if existed:
            (done / str(index)).mkdir()
            target.rename(done / str(index) / "cosmos.sqlite3")
        killed = os.WIFSIGNALED(status)
        if not killed and os.WEXITSTATUS(status) != 0:
            raise SystemExit(f"attempt {index} ({attempt}) failed without being killed")
        print(json.dumps({"attempt": index, "killed": killed, "existed": existed}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
