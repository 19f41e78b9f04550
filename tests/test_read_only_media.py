"""A store on media nothing can write is read with ``COSMOS_MONGO_READ_ONLY=1``: SQLite opens
it ``immutable`` and makes no -wal or -shm file there (issue 22, item 7).

How read-only media is simulated, honestly: these tests run as root, and root ignores
permission bits, so a ``chmod 0555`` directory would still be writable here. The subprocess
test makes a real read-only mount instead: a bind mount of the data dir remounted ``ro`` in a
private mount namespace (``unshare -m``), where every write fails with EROFS as on a CD or a
read-only volume; it is skipped where the namespace cannot be made. The in-process tests stand
for a directory this (non-root) process cannot write by patching ``os.access`` to say so for
the data dir; the directory itself stays writable, so they also check that nothing was made.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cosmos_mongo import CosmosStore, ReadOnlyError, StorageError
from cosmos_mongo.config import Settings
from cosmos_mongo.embedded import open_embedded

ROOT = Path(__file__).resolve().parents[1]

READER = """
import json, sys
from cosmos_mongo import CosmosStore
from cosmos_mongo.config import Settings
try:
    store = CosmosStore.connect(settings=Settings(data_dir=sys.argv[1]))
    print(json.dumps({"ids": sorted(p.id for p in store.list_prompts(limit=100)),
                      "ok": store.verify().ok}))
    store.close()
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def _store(data_dir: Path, count: int = 5) -> set[str]:
    with open_embedded(data_dir) as database:
        store = CosmosStore(database)
        store.ensure_indexes()
        return {store.create_prompt(f"Prompt {i}", {}, {}).id for i in range(count)}


def _read_on_a_read_only_mount(data_dir: Path) -> dict[str, Any]:
    """Run READER on ``data_dir`` bind-mounted read-only in a private mount namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed: no read-only mount to test on")
    where = str(data_dir)
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount --bind '{where}' '{where}'"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here: {probe.stderr.decode().strip()}")
    script = (
        f"mount --bind '{where}' '{where}' && mount -o remount,bind,ro '{where}' && "
        f"! touch '{where}/probe' 2>/dev/null && exec \"$0\" -c \"$1\" '{where}'"
    )
    finished = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, sys.executable, READER],
        cwd=ROOT,
        env={
            **{key: value for key, value in os.environ.items() if key != "COSMOS_MONGO_URI"},
            "COSMOS_MONGO_READ_ONLY": "1",
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert finished.returncode == 0, finished.stderr
    result: dict[str, Any] = json.loads(finished.stdout.splitlines()[-1])
    return result


@pytest.mark.slow
def test_a_store_on_a_read_only_mount_reads_with_read_only_set(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ids = _store(data_dir)
    before = sorted(p.name for p in data_dir.iterdir())
    assert before == ["cosmos.sqlite3"]  # closed cleanly: no -wal, no -shm
    result = _read_on_a_read_only_mount(data_dir)
    assert result == {"ids": sorted(ids), "ok": True}
    assert sorted(p.name for p in data_dir.iterdir()) == before


@pytest.mark.slow
def test_a_read_only_mount_with_commits_left_in_the_wal_is_refused_not_read_stale(
    tmp_path: Path,
) -> None:
    source, data_dir = tmp_path / "source", tmp_path / "data"
    _store(source, 2)
    holder = open_embedded(source)  # a writer still open: its commits sit in the -wal
    CosmosStore(holder).create_prompt("Only in the WAL", {}, {})
    data_dir.mkdir()
    for name in ("cosmos.sqlite3", "cosmos.sqlite3-wal"):  # as copied to the media, no -shm
        shutil.copyfile(source / name, data_dir / name)
    holder.close()
    result = _read_on_a_read_only_mount(data_dir)
    assert result["error"] == "StorageError", result
    assert "cosmos.sqlite3-wal" in result["message"]
    assert "copy the directory to writable storage" in result["message"]


def _unwritable(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """Make ``os.access`` say this process cannot write ``directory`` (root could)."""
    real = os.access

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if Path(path) == directory and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def test_an_unwritable_data_dir_is_read_immutable_and_gets_no_wal_or_shm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    ids = _store(data_dir)
    _unwritable(monkeypatch, data_dir)
    with CosmosStore.connect(settings=Settings(data_dir=data_dir, read_only=True)) as store:
        assert {p.id for p in store.list_prompts(limit=100)} == ids
        assert store.verify().ok
        # An ordinary read-only open would have made both files in this (in truth writable)
        # directory by now.
        assert sorted(p.name for p in data_dir.iterdir()) == ["cosmos.sqlite3"]


def test_an_unwritable_data_dir_with_a_readable_wal_still_sees_its_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    _store(data_dir, 2)
    with open_embedded(data_dir) as holder:  # its commits sit in the -wal while it is open
        latest = CosmosStore(holder).create_prompt("Only in the WAL", {}, {})
        _unwritable(monkeypatch, data_dir)
        with open_embedded(data_dir, read_only=True) as database:
            assert CosmosStore(database).get_prompt(latest.id) == latest


def test_a_writable_data_dir_is_not_opened_immutable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cosmos_mongo.embedded as embedded

    _store(tmp_path)
    uris: list[str] = []
    real = embedded.EmbeddedEngine._connect

    def connect(uri: str) -> Any:
        uris.append(uri)
        return real(uri)

    monkeypatch.setattr(embedded.EmbeddedEngine, "_connect", staticmethod(connect))
    with open_embedded(tmp_path, read_only=True):
        pass
    assert uris and all("immutable" not in uri for uri in uris)


def test_a_read_only_store_whose_path_holds_uri_characters_opens(tmp_path: Path) -> None:
    data_dir = tmp_path / "a?b#c%20d"
    ids = _store(data_dir)
    with open_embedded(data_dir, read_only=True) as database:
        assert {p.id for p in CosmosStore(database).list_prompts(limit=100)} == ids
    assert not (tmp_path / "a").exists()
    with pytest.raises(StorageError):
        open_embedded(tmp_path / ("x" * 5000), read_only=True).close()


def test_read_only_mode_on_a_writable_dir_sees_writes_and_leaves_no_wal_or_shm(
    tmp_path: Path,
) -> None:
    ids = _store(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cosmos.sqlite3"]
    with CosmosStore.connect(settings=Settings(data_dir=tmp_path, read_only=True)) as reader:
        assert {p.id for p in reader.list_prompts(limit=100)} == ids
        with open_embedded(tmp_path) as writer:  # another process writing meanwhile
            latest = CosmosStore(writer).create_prompt("Written while read", {}, {})
        assert reader.get_prompt(latest.id) == latest  # seen at once, not a stale snapshot
        with pytest.raises(ReadOnlyError):
            reader.create_prompt("Refused", {}, {})
    # A mode=ro reader cannot remove the -wal and -shm it made; this one, closing last, did.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cosmos.sqlite3"]


def test_the_read_only_mcp_server_leaves_no_wal_or_shm(tmp_path: Path) -> None:
    import anyio
    from mcp import Client

    from mcp_server import ServerSettings, build_server

    ids = _store(tmp_path)

    async def browse() -> set[str]:
        server = build_server(
            ServerSettings(read_only=True), library_settings=Settings(data_dir=tmp_path)
        )
        async with Client(server) as session:
            answer = await session.call_tool("list_prompts", {})
            assert answer.structured_content is not None
            return {p["id"] for p in answer.structured_content["prompts"]}

    assert anyio.run(browse) == ids
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cosmos.sqlite3"]
