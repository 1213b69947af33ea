"""The tape front end (adapters/tape.py), the online storage and the stack's migration service
(unembargo.devstack.tape) on real folders: puts land in the cache, migrate after the delay,
never-migrating and corrupting patterns do what they say, removal takes every copy."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import pytest

from unembargo.adapters.online import OnlineStorage
from unembargo.adapters.tape import LocalTape, adler32_of
from unembargo.devstack import tape as migrator
from unembargo.models import rawintegrity as r

LFN = "LHCb/2026/RAW/run000123/run000123_0001.raw"


def write(root: Path, lfn: str, data: bytes) -> Path:
    path = root / lfn
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_put_then_migrate_after_the_delay(tmp_path: Path) -> None:
    data = b"raw event data " * 1000
    source = write(tmp_path / "online", LFN, data)
    tape = LocalTape(tmp_path / "tape")
    (tmp_path / "tape").mkdir()
    assert tape.put(LFN, source) == (len(data), f"{zlib.adler32(data):08x}")
    assert tape.in_cache(LFN) == adler32_of(source) and not tape.is_migrated(LFN)
    slow = migrator.Migration(delay_s=3600)
    assert migrator.migrate_once(tape, slow) == []
    assert migrator.migrate_once(tape, migrator.Migration(delay_s=0)) == [LFN]
    copy = tape.tape_checksum(LFN)
    assert copy is not None and (copy.size, copy.adler32) == adler32_of(source)
    assert copy.migration_s is not None and copy.migration_s >= 0
    assert tape.in_cache(LFN) is None and tape.is_migrated(LFN)
    assert tape.remove(LFN) and not tape.is_migrated(LFN) and not tape.remove(LFN)


def test_failure_injection_never_and_corrupt(tmp_path: Path) -> None:
    root = tmp_path / "tape"
    root.mkdir()
    tape = LocalTape(root)
    never, bad = "run9/never.raw", "run9/bad.raw"
    for lfn in (never, bad):
        tape.put(lfn, write(tmp_path / "online", lfn, b"x" * 100))
    migrator.write_config(root, migrator.Migration(0, never=["*/never.raw"], corrupt=["*/bad*"]))
    assert migrator.migrate_once(tape, migrator.read_config(root)) == [bad]
    assert tape.in_cache(never) is not None and not tape.is_migrated(never)
    copy = tape.tape_checksum(bad)
    assert copy is not None and copy.size == 100 and copy.adler32 != adler32_of(tmp_path / "online" / bad)[1]


def test_the_service_migrates_until_stopped(tmp_path: Path) -> None:
    root = tmp_path / "tape"
    tape = LocalTape(root)
    root.mkdir()
    tape.put(LFN, write(tmp_path / "online", LFN, b"abc"))
    migrator.write_config(root, migrator.Migration(delay_s=0))
    migrator.serve(root, stop_after=0.5)
    assert tape.is_migrated(LFN)


def test_online_storage_reads_and_removes(tmp_path: Path) -> None:
    online = OnlineStorage(tmp_path)
    write(tmp_path, LFN, b"abc")
    assert online.exists(LFN) and online.checksum(LFN) == (3, f"{zlib.adler32(b'abc'):08x}")
    online.remove(LFN)
    assert not online.exists(LFN)
    with pytest.raises(FileNotFoundError, match="not mounted"):
        OnlineStorage(tmp_path / "missing").path(LFN)


@pytest.mark.parametrize(
    "bad", ["/abs/path.raw", "a/../b.raw", "a//b.raw", "a/./b", ".hidden/x", "a/b c.raw", ""]
)
def test_unsafe_lfns_are_refused(bad: str) -> None:
    with pytest.raises(r.InvalidLfn):
        r.check_lfn(bad)


def test_states_never_regress_in_rank() -> None:
    order = [r.State.ACTIVE, r.State.COPIED, r.State.REGISTERED, r.State.DONE]
    assert [s.rank for s in order] == sorted(s.rank for s in order)
    assert r.State.FAILED.rank == r.State.DONE.rank


GOOD, OTHER = (3, "0024012d"), (3, "deadbeef")


@pytest.mark.parametrize(
    ("online", "tape", "catalogue", "expected"),
    [
        (None, GOOD, GOOD, r.DONE_CLASS),
        (GOOD, GOOD, GOOD, r.REMOVAL_PENDING),
        (GOOD, None, None, r.WAITING),
        (GOOD, GOOD, None, r.WAITING),
        (GOOD, OTHER, None, r.BAD_TAPE),
        (None, OTHER, GOOD, r.BAD_TAPE),
        (None, None, GOOD, r.LOST),
        (None, GOOD, None, r.LOST),
    ],
)
def test_reconcile_classes(online: Any, tape: Any, catalogue: Any, expected: str) -> None:
    assert r.classify(online, tape, catalogue) == expected
