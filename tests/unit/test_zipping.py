"""The zip step's pieces that need no service: member names, FITS checks, ordered fetches
within a byte budget, the write-behind buffer. (The step itself, on real S3 and butlers:
tests/stack/test_zip.py.)"""

from __future__ import annotations

import errno
import io
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from unembargo.adapters.headers import raw_metadata
from unembargo.adapters.s3 import S3Object
from unembargo.adapters.zipping import ByteBudget, Folder, Member, WriteBehind, in_order, member_name
from unembargo.devstack.lsstcam import DETECTORS
from unembargo.devstack.seed import plan_exposure, raw_file
from unembargo.models.errors import SourceMismatch, UnsafeKey

DAY_OBS = 20251231
FILE_SIZE = 8 * 1024


def test_truncated_or_empty_fits_is_refused() -> None:
    plan = plan_exposure(DAY_OBS, 1)
    data, _ = raw_file(plan, DETECTORS[0], FILE_SIZE, {"OBSID": plan.obs_id})
    assert raw_metadata("r.fits", data)["DETNAME"] == DETECTORS[0].full_name
    for bad, why in [(b"", "empty"), (data[:-2880], "truncated"), (data[:1000], "truncated")]:
        with pytest.raises(SourceMismatch, match=why):
            raw_metadata("r.fits", bad)


def test_member_names() -> None:
    folder = Folder("b", "LSSTCam/20251231/MC_O_20251231_000001/", members={})
    assert member_name(folder, folder.prefix + "sub dir/é.json") == "sub dir/é.json"
    for bad in ["/abs", "a/", "", "a/./b", "nul\x00byte", "_metadata_index.json"]:
        with pytest.raises(UnsafeKey):
            member_name(folder, folder.prefix + bad)
    with pytest.raises(UnsafeKey, match="not under"):
        member_name(folder, "elsewhere/x")


@pytest.mark.parametrize(
    "key", ["..\\..\\x", "/x", "sub/../../x", "sub/..", "x\x00.fits", "a\\b", "./x", "sub//x", ""]
)
def test_object_keys_that_could_escape_are_no_zip_members(key: str) -> None:
    folder = Folder("embargo", "LSSTCam/20251231/MC_O_20251231_000001/", members={})
    with pytest.raises(UnsafeKey, match="cannot be a zip member"):
        member_name(folder, folder.prefix + key)


@pytest.mark.parametrize(("window", "window_bytes", "ahead"), [(6, 10_000, 6), (6, 40, 4)])
def test_in_order_keeps_order_and_bounds_the_window(window: int, window_bytes: int, ahead: int) -> None:
    """Results come in member order; no fetch starts more than ``ahead`` past the consumer."""
    now = datetime.now(UTC)
    members = [Member(f"m{i:03d}", S3Object(f"k{i}", 10, "", now)) for i in range(60)]
    members.append(Member("m999", S3Object("big", 10 * window_bytes, "", now)))
    consumed = 0
    distance: list[int] = []
    lock = threading.Lock()

    def fetch(member: Member) -> str:
        with lock:
            distance.append(members.index(member) - consumed)
        return member.name

    got = []
    for _, name in in_order(fetch, members, workers=4, window=window, window_bytes=window_bytes):
        got.append(name)
        with lock:
            consumed += 1
    assert got == [m.name for m in members]
    assert max(distance) < ahead


def test_zips_of_one_process_share_one_byte_budget() -> None:
    """Two zips drawing on one budget both finish, in order, never holding more than it together."""
    now = datetime.now(UTC)
    budget = ByteBudget(100)
    lists = {z: [Member(f"{z}{i:03d}", S3Object(f"{z}{i}", 30, "", now)) for i in range(40)] for z in "ab"}
    lists["a"].append(Member("a999", S3Object("huge", 1000, "", now)))
    lowest = budget.free

    def fetch(member: Member) -> str:
        nonlocal lowest
        lowest = min(lowest, budget.free)
        return member.name

    def drain(zip_name: str, got: list[str]) -> None:
        fetched = in_order(fetch, lists[zip_name], workers=4, window=8, window_bytes=10_000, budget=budget)
        got.extend(name for _, name in fetched)

    got: dict[str, list[str]] = {"a": [], "b": []}
    threads = [threading.Thread(target=drain, args=(z, got[z])) for z in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "the zips waited on each other for ever"
    assert got == {z: [m.name for m in lists[z]] for z in "ab"}
    assert lowest >= 0
    assert budget.free == budget.total


def test_write_behind_keeps_order_and_hands_back_write_errors(tmp_path: Path) -> None:
    """Bytes land in order; a full disk in the side thread surfaces as the same OSError in the writer."""
    path = tmp_path / "out"
    with open(path, "wb") as raw, WriteBehind(raw) as behind:
        for i in range(100):
            behind.write(f"{i},".encode())
        behind.flush()
    assert path.read_bytes() == "".join(f"{i}," for i in range(100)).encode()

    class Full(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as caught, WriteBehind(cast(Any, Full())) as behind:
        for _ in range(10):
            behind.write(b"x" * 1000)
        behind.flush()
    assert caught.value.errno == errno.ENOSPC
