"""The zip step's pieces that need no service: member names, FITS checks, ordered fetches
within a byte budget, the write-behind buffer, a folder on disk and where an exposure's raws
are. (The step itself, on real S3 and butlers: tests/stack/test_zip.py; from a POSIX
datastore: tests/stack/test_posix_source.py.)"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
import zipfile
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from botocore.exceptions import FlexibleChecksumError
from lsst.resources import ResourcePath

from unembargo.adapters.disk_source import list_disk_folder, read_disk_verified, with_md5
from unembargo.adapters.headers import raw_metadata
from unembargo.adapters.s3 import S3Object, SourceChanged, read_verified
from unembargo.adapters.zipping import (
    ByteBudget,
    Folder,
    Member,
    WriteBehind,
    _artifact_member,
    add_member,
    disk_folder_of,
    folder_members,
    in_order,
    member_name,
)
from unembargo.devstack.lsstcam import DETECTORS
from unembargo.devstack.seed import plan_exposure, raw_file
from unembargo.models.errors import SourceMismatch, UnsafeKey
from unembargo.models.exposure import Exposure

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


def test_write_behind_feeds_every_consumer_the_same_bytes(tmp_path: Path) -> None:
    """The md5 taken in its own thread is the md5 of the bytes written."""
    path = tmp_path / "out"
    md5 = hashlib.md5()
    with open(path, "wb") as raw, WriteBehind(raw, md5.update) as behind:
        for i in range(200):
            behind.write(os.urandom(i * 97))
        behind.flush()
    assert md5.hexdigest() == hashlib.md5(path.read_bytes()).hexdigest()
    assert behind.tell() == path.stat().st_size


def test_members_with_a_known_crc_are_written_with_it(tmp_path: Path) -> None:
    """A stored member written with S3's CRC-32 reads back; the CRC guards its bytes (a CRC
    that is not theirs fails the read). Sidecars are DEFLATEd, FITS stored."""
    when = datetime(2025, 12, 31, tzinfo=UTC)
    fits, sidecar = os.urandom(100_000), b'{"a": 1}' * 100
    path = tmp_path / "z.zip"
    with open(path, "wb") as raw, WriteBehind(raw) as behind:
        with zipfile.ZipFile(behind, "w") as zf:
            add_member(zf, "a.fits", fits, when, zlib.crc32(fits))
            add_member(zf, "a.json", sidecar, when, zlib.crc32(sidecar))
            add_member(zf, "bad.fits", fits, when, zlib.crc32(fits) ^ 1)
            add_member(zf, "é.fits", fits, when)
        behind.flush()
    with zipfile.ZipFile(path) as zf:
        assert zf.read("a.fits") == fits == zf.read("é.fits")
        assert zf.read("a.json") == sidecar
        assert zf.getinfo("a.fits").compress_type == zipfile.ZIP_STORED
        assert zf.getinfo("a.json").compress_type == zipfile.ZIP_DEFLATED
        with pytest.raises(zipfile.BadZipFile, match="CRC"):
            zf.read("bad.fits")


def test_a_body_unlike_its_s3_checksum_is_refused() -> None:
    """A read whose bytes do not match S3's own checksum of the object, every time, is
    SourceMismatch naming the object."""

    class Body(io.BytesIO):
        def read(self, *_: Any) -> bytes:
            raise FlexibleChecksumError(error_msg="Expected checksum x did not match calculated checksum y")

    class Client:
        def get_object(self, **_: Any) -> dict[str, Any]:
            headers = {"x-amz-checksum-crc32": "AAAAAA=="}
            return {"Body": Body(), "ResponseMetadata": {"HTTPHeaders": headers}}

    obj = S3Object("p/a.fits", 10, "0" * 32, datetime(2025, 12, 31, tzinfo=UTC))
    with pytest.raises(SourceMismatch, match=r"s3://b/p/a\.fits reads back as a body that does not match"):
        read_verified(Client(), "b", obj)


PREFIX = "LSSTCam/20251231/MC_O_20251231_000001/"
EXP = Exposure("LSSTCam", DAY_OBS, "MC_O_20251231_000001", 2025123100001)


def _disk_folder(root: Path, files: dict[str, bytes]) -> Folder:
    for name, body in files.items():
        (root / PREFIX / name).parent.mkdir(parents=True, exist_ok=True)
        (root / PREFIX / name).write_bytes(body)
    folder = Folder("embargo", PREFIX, members={}, root=root)
    folder.members.update(folder_members(folder, list_disk_folder(root, PREFIX)))
    return folder


def test_a_disk_folder_lists_and_reads_like_a_bucket(tmp_path: Path) -> None:
    """Every file under the folder, by its relative name; reads checked against the listing."""
    files = {
        "a.fits": b"a" * 100,
        "sub dir/é.json": b"{}",
        "MC_O_20251231_000001_expectedSensors.json": b"[]",
    }
    folder = _disk_folder(tmp_path, files)
    assert folder.url == f"{(tmp_path / PREFIX).as_uri()}/"
    assert {name: obj.size for name, obj in folder.members.items()} == {n: len(b) for n, b in files.items()}
    assert all(obj.md5 is None for obj in folder.members.values())
    assert {n: folder.read(cast(Any, None), obj) for n, obj in folder.members.items()} == files
    checked = with_md5(tmp_path, folder.members)
    assert checked["a.fits"].md5 == hashlib.md5(files["a.fits"]).hexdigest()
    assert read_disk_verified(tmp_path, checked["a.fits"]) == files["a.fits"]
    assert list_disk_folder(tmp_path, "LSSTCam/20251231/MC_O_20251231_000002/") == []


def test_a_truncated_replaced_or_vanished_file_is_a_named_error(tmp_path: Path) -> None:
    folder = _disk_folder(tmp_path, {"a.fits": b"a" * 100})
    listed = folder.members["a.fits"]
    (tmp_path / PREFIX / "a.fits").write_bytes(b"a" * 60)
    with pytest.raises(SourceMismatch, match="60 bytes where the listing says 100.*truncated"):
        folder.read(cast(Any, None), listed)
    (tmp_path / PREFIX / "a.fits").write_bytes(b"b" * 100)
    with pytest.raises(SourceMismatch, match="md5"):
        read_disk_verified(
            tmp_path, S3Object(listed.key, 100, hashlib.md5(b"a" * 100).hexdigest(), listed.last_modified)
        )
    (tmp_path / PREFIX / "a.fits").unlink()
    with pytest.raises(SourceChanged, match="vanished"):
        folder.read(cast(Any, None), listed)
    with pytest.raises(SourceChanged, match="vanished"):
        with_md5(tmp_path, folder.members)


def test_nothing_under_a_disk_folder_goes_unlisted(tmp_path: Path) -> None:
    """A directory symlink is refused (it could lead out); a FIFO is no file."""
    _disk_folder(tmp_path, {"a.fits": b"a"})
    os.mkfifo(tmp_path / PREFIX / "pipe")
    assert [o.key for o in list_disk_folder(tmp_path, PREFIX)] == [PREFIX + "a.fits"]
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / PREFIX / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeKey, match="symlink to a directory"):
        list_disk_folder(tmp_path, PREFIX)


def test_an_unreadable_directory_in_a_disk_folder_is_refused(tmp_path: Path) -> None:
    _disk_folder(tmp_path, {"a.fits": b"a"})
    (tmp_path / PREFIX / "locked").mkdir(mode=0)
    try:
        if os.access(tmp_path / PREFIX / "locked", os.R_OK):
            pytest.skip("permissions do not apply to this user")
        with pytest.raises(SourceMismatch, match="cannot be listed"):
            list_disk_folder(tmp_path, PREFIX)
    finally:
        (tmp_path / PREFIX / "locked").chmod(0o755)


def test_unsafe_names_on_disk_name_the_embargo_disk(tmp_path: Path) -> None:
    folder = Folder("embargo", PREFIX, members={}, root=tmp_path)
    now = datetime.now(UTC)
    with pytest.raises(UnsafeKey, match="in the embargo disk"):
        folder_members(folder, [S3Object(PREFIX + "_metadata_index.json", 1, "", now)])


def test_butler_file_uris_are_members_of_the_disk_folder_only(tmp_path: Path) -> None:
    """A file:// raw is a member when listed under the root at its recorded size; an s3:// raw,
    a file elsewhere or of another size is a SourceMismatch."""
    folder = _disk_folder(tmp_path, {"a.fits": b"a" * 100})
    path = str(tmp_path / PREFIX / "a.fits")
    assert _artifact_member(folder, path, None, 100) == "a.fits"
    assert (
        _artifact_member(folder, "a.fits", ResourcePath(f"{tmp_path / PREFIX}/", forceDirectory=True), -1)
        == "a.fits"
    )
    with pytest.raises(SourceMismatch, match="100 bytes in the disk but 99"):
        _artifact_member(folder, path, None, 99)
    for elsewhere in [f"s3://embargo/{PREFIX}a.fits", str(tmp_path.parent / PREFIX / "a.fits")]:
        with pytest.raises(SourceMismatch, match="not a file of"):
            _artifact_member(folder, elsewhere, None, 100)
    in_s3 = Folder("embargo", PREFIX, members={"a.fits": folder.members["a.fits"]})
    with pytest.raises(SourceMismatch, match="not an object of s3://embargo/"):
        _artifact_member(in_s3, path, None, 100)


def test_the_raws_say_where_the_folder_is(tmp_path: Path) -> None:
    """All s3 (or none): the bucket. All file under one <instrument>/<day_obs>/<obs_id>/: that
    disk folder. A mix, a raw outside such a folder, or two folders: SourceMismatch."""
    raw = tmp_path / "embargo" / PREFIX / "r.fits"
    s3 = ResourcePath(f"s3://embargo/{PREFIX}r.fits")
    assert disk_folder_of([], EXP, "embargo") is None
    assert disk_folder_of([s3], EXP, "embargo") is None
    assert disk_folder_of([ResourcePath(raw)] * 2, EXP, "embargo") == (tmp_path / "embargo", PREFIX)
    with pytest.raises(SourceMismatch, match="on file and s3"):
        disk_folder_of([ResourcePath(raw), s3], EXP, "embargo")
    with pytest.raises(SourceMismatch, match="not in a LSSTCam/20251231/MC_O_20251231_000001/ folder"):
        disk_folder_of([ResourcePath(tmp_path / "r.fits")], EXP, "embargo")
    with pytest.raises(SourceMismatch, match="in 2 folders"):
        disk_folder_of(
            [ResourcePath(raw), ResourcePath(tmp_path / "copy" / PREFIX / "r.fits")], EXP, "embargo"
        )
